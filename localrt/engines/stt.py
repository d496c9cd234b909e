"""Speech to text: Whisper on faster-whisper (CTranslate2).

The model is always a LOCAL CTranslate2 folder (the embedded tiny.en, a folder under ``models_dir`` or
a path): given anything else faster-whisper would try to download from a hub, which we never do.
Decoding happens while faster-whisper's lazy ``segments`` generator is iterated, so both the call to
``transcribe`` and the iteration run in a worker of this engine's
:class:`~localrt.engines.scheduler.Scheduler`. Closing a stream stops the job within one native call,
even inside a 30 s window (see :mod:`.stt_bounds`).

Every job is preemptible: between segments, and before each native call (encoder pass, ``generate``,
``align``), a waiting job of a higher priority (a realtime voice turn waiting behind a long HTTP or
bulk transcription) runs first, nested in the same worker thread; the long job then resumes where it
was. faster-whisper keeps a transcription's state in its generator, so nesting is safe; the per-thread
stop signal is restored when a nested job ends (see :class:`.stt_bounds.StopSignal`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from localrt.catalog import EMBEDDED_STT_ID, Catalog
from localrt.engines.scheduler import EngineClosed, Job, JobControl, Priority, Scheduler, SchedulerStats
from localrt.engines.stt_bounds import Stopped, StopSignal, bound, max_new_tokens
from localrt.engines.stt_window import short_window
from localrt.engines.types import Segment, Task, Transcription, Word, check_transcription
from localrt.errors import APIError, InvalidRequest, ModelNotFound, ServerError
from localrt.settings import Settings

logger = logging.getLogger(__name__)

# Whisper's language codes and the English names OpenAI reports in verbose_json.
# fmt: off
_LANGUAGE_NAMES: dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish",
    "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian",
    "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese", "he": "hebrew",
    "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech", "ro": "romanian", "da": "danish",
    "hu": "hungarian", "ta": "tamil", "no": "norwegian", "th": "thai", "ur": "urdu", "hr": "croatian",
    "bg": "bulgarian", "lt": "lithuanian", "la": "latin", "mi": "maori", "ml": "malayalam",
    "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali",
    "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian",
    "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian",
    "sw": "swahili", "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala",
    "km": "khmer", "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan",
    "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati",
    "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese",
    "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese",
    "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala",
    "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}
# fmt: on


def language_name(code: str) -> str:
    """``en`` -> ``english`` (OpenAI's verbose_json spelling); unknown codes are returned as given."""
    return _LANGUAGE_NAMES.get(code, code)


@dataclass(frozen=True)
class _Info:
    language: str
    duration: float


def _resolve_device(setting: str) -> str:
    if setting != "auto":
        return setting
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def _resolve_model(settings: Settings, catalog: Catalog) -> tuple[str, Path]:
    name = settings.stt_model
    if name is None:
        if EMBEDDED_STT_ID not in catalog.whispers:
            raise ModelNotFound(EMBEDDED_STT_ID, param="stt_model")
        return EMBEDDED_STT_ID, catalog.whispers[EMBEDDED_STT_ID]
    if name in catalog.whispers:
        return name, catalog.whispers[name]
    path = Path(name).expanduser()
    if (path / "model.bin").is_file():
        return path.resolve().name, path.resolve()
    raise ModelNotFound(name, param="stt_model")


class WhisperEngine:
    """One loaded Whisper model, shared by the HTTP routes and realtime sessions."""

    sample_rate: int = 16_000
    # OpenAI transcription model names that route to the loaded model.
    aliases: ClassVar[tuple[str, ...]] = (
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-mini-transcribe-2025-12-15",
    )

    def __init__(
        self,
        model_id: str,
        model: Any,
        *,
        device: str,
        compute_type: str,
        slots: int = 1,
        max_queue: int = 32,
        use_short_window: bool = True,
    ) -> None:
        """``slots``: transcriptions run at once (give the CTranslate2 model as many workers);
        ``max_queue``: transcriptions waiting beyond those, past which ``stream`` / ``transcribe``
        raise :class:`~localrt.engines.scheduler.QueueFull`."""
        self.id = model_id
        self.device = device
        self.compute_type = compute_type
        self._model = model
        # The running job's stop event, checked before each native call of a faster-whisper model
        # (stand-ins without its CTranslate2 model and feature extractor are left as they are).
        self._stop_signal = StopSignal()
        if hasattr(model, "model") and hasattr(model, "feature_extractor"):
            bound(model, self._stop_signal)
        self.scheduler = Scheduler("stt", slots=slots, max_queue=max_queue)
        # text_only clips of at most 9 s in a 12 s window (stt_window)
        self.use_short_window = use_short_window

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Catalog) -> WhisperEngine:
        """Load the configured model (blocking; call at start-up, before serving)."""
        from faster_whisper import WhisperModel

        model_id, path = _resolve_model(settings, catalog)
        if not (path / "tokenizer.json").is_file():
            # Without it faster-whisper fetches a tokenizer from the network.
            raise InvalidRequest(f"Whisper folder {path} has no tokenizer.json.", param="stt_model")
        device = _resolve_device(settings.stt_device)
        compute_type = settings.stt_compute_type
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        model = WhisperModel(
            str(path),
            device=device,
            compute_type=compute_type,
            cpu_threads=settings.stt_threads,
            num_workers=settings.stt_slots,  # CTranslate2 runs one call per worker at a time
        )
        logger.info("loaded whisper %s from %s on %s/%s", model_id, path, device, compute_type)
        return cls(
            model_id,
            model,
            device=device,
            compute_type=compute_type,
            slots=settings.stt_slots,
            max_queue=settings.stt_max_queue,
            use_short_window=settings.stt_short_window,
        )

    def model_ids(self) -> list[str]:
        """Every model name a request may use for this engine (its id first)."""
        return [self.id, *self.aliases]

    @property
    def languages(self) -> list[str]:
        return list(self._model.supported_languages)

    def stream(
        self,
        audio: np.ndarray,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        word_timestamps: bool = False,
        task: Task = "transcribe",
        priority: Priority = Priority.HTTP,
        text_only: bool = False,
    ) -> Job[Segment]:
        """Segments as Whisper decodes them. Close the stream (``async with``) to stop early.
        ``text_only``: the caller reads only the text, so a short clip may be decoded in a short window
        (:mod:`.stt_window`; one segment spanning the clip).

        The job is queued at once: raises QueueFull / EngineClosed here, not from the iterator."""
        produce = self._producer(audio, language, prompt, temperature, word_timestamps, task, text_only)

        def segments_only(control: JobControl) -> Iterator[Segment]:
            for item in produce(control):
                if isinstance(item, Segment):
                    yield item

        return self.scheduler.submit(segments_only, priority=priority, preemptible=True)

    async def transcribe(
        self,
        audio: np.ndarray,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        word_timestamps: bool = False,
        task: Task = "transcribe",
        priority: Priority = Priority.HTTP,
        text_only: bool = False,
    ) -> Transcription:
        produce = self._producer(audio, language, prompt, temperature, word_timestamps, task, text_only)
        info = _Info(language or "en", len(audio) / self.sample_rate)
        segments: list[Segment] = []
        job = self.scheduler.submit(produce, priority=priority, preemptible=True)
        async with job as items:
            async for item in items:
                if isinstance(item, _Info):
                    info = item
                else:
                    segments.append(item)
        text = "".join(s.text for s in segments).strip()
        return Transcription(text=text, language=info.language, duration=info.duration, segments=segments)

    def stats(self) -> list[SchedulerStats]:
        return [self.scheduler.stats()]

    def close(self) -> None:
        """End every queued and running transcription with EngineClosed (blocking, bounded)."""
        self.scheduler.close()
        self._model = None

    def _producer(
        self,
        audio: np.ndarray,
        language: str | None,
        prompt: str | None,
        temperature: float,
        word_timestamps: bool,
        task: Task,
        text_only: bool = False,
    ) -> Callable[[JobControl], Iterator[_Info | Segment]]:
        if self._model is None:
            raise EngineClosed("The speech-to-text engine is closed.")
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        check_transcription(audio, task, temperature)
        if language is not None:
            language = language.strip().lower() or None
        if language is not None and language not in self.languages:
            raise InvalidRequest(
                f"Unsupported language '{language}' for model {self.id}; supported: "
                f"{', '.join(self.languages)}.",
                param="language",
            )
        # OpenAI: temperature 0 means "start greedy, raise the temperature on failure".
        # (Closing the stream stops the fallback between two tries: see stt_bounds.)
        temperatures: Any = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) if temperature == 0 else temperature
        model = self._model
        signal = self._stop_signal
        quick = (
            self.use_short_window
            and text_only
            and temperature == 0
            and not prompt
            and not word_timestamps
            and task == "transcribe"
        )

        def produce(control: JobControl) -> Iterator[_Info | Segment]:
            try:
                # Before each native call: stop if closed, run waiting higher-priority jobs first.
                with signal.watching(control):
                    short = short_window(model, audio, language) if quick else None
                    if short is not None:
                        yield _Info(language or "en", audio.shape[0] / self.sample_rate)
                        yield from short
                        return
                    segments, info = model.transcribe(
                        audio,
                        language=language,
                        task=task,
                        initial_prompt=prompt or None,
                        temperature=temperatures,
                        word_timestamps=word_timestamps,
                        max_new_tokens=max_new_tokens(model),
                    )
                    yield _Info(info.language, float(info.duration))
                    for seg in segments:  # decoding happens here, in the worker thread
                        yield _segment(seg)
            except Stopped:
                return  # the stream was closed: nobody is waiting for the rest
            except APIError:
                raise
            except Exception as exc:
                logger.exception("whisper failed")
                raise ServerError(f"Transcription failed: {exc}") from exc

        return produce


def _segment(seg: Any) -> Segment:
    words = None
    if seg.words is not None:
        words = [Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in seg.words]
    return Segment(
        id=int(seg.id),
        seek=int(seg.seek),
        start=float(seg.start),
        end=float(seg.end),
        text=seg.text,
        tokens=list(seg.tokens),
        temperature=float(seg.temperature or 0.0),
        avg_logprob=float(seg.avg_logprob),
        compression_ratio=float(seg.compression_ratio),
        no_speech_prob=float(seg.no_speech_prob),
        words=words,
    )
