"""Text to speech: Piper voices (VITS on onnxruntime).

Every ``*.onnx`` + ``.onnx.json`` voice in the catalog can be asked for by id; OpenAI's voice names map
to installed voices through ``settings.voice_map`` (unmapped ones use the default voice). Voices load on
first use (the default one at start-up), in the worker thread.

Text is split into sentences here so each :class:`AudioChunk` knows the text it speaks, and the first
sentence's audio is handed out while the next ones are still being synthesized.

Syntheses run through this engine's :class:`~localrt.engines.scheduler.Scheduler` (``tts_slots``
workers: Piper serialises its phonemizer itself; onnxruntime sessions are safe to run from several
threads). Each is preemptible between sentences: a waiting job of a higher priority (a realtime turn
behind a long ``/v1/audio/speech``) runs nested in the same worker, then the long one resumes.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from localrt.catalog import EMBEDDED_VOICE_ID, Catalog
from localrt.engines.scheduler import EngineClosed, Job, JobControl, Priority, Scheduler, SchedulerStats
from localrt.engines.types import AudioChunk, Voice
from localrt.errors import APIError, InvalidRequest, ServerError
from localrt.settings import Settings

logger = logging.getLogger(__name__)

OPENAI_VOICES: tuple[str, ...] = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
    "marin", "cedar",
)  # fmt: skip
MIN_SPEED, MAX_SPEED = 0.25, 4.0
# Sentences longer than this are cut at clause boundaries (then spaces) so one chunk never holds
# minutes of audio and the first bytes of a long unpunctuated input still come early.
MAX_SENTENCE_CHARS = 300

_SENTENCE = re.compile(r".+?(?:[.!?…。！？]+[\"'”’)\]]*(?=\s|$)|\n|$)", re.S)
_CLAUSE_END = re.compile(r"[,;:—–]\s")


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Sentences of ``text`` (stripped, non-empty), long ones cut at clause ends or spaces."""
    out: list[str] = []
    for match in _SENTENCE.finditer(text):
        sentence = match.group().strip()
        while len(sentence) > max_chars:
            cut = max((m.end() for m in _CLAUSE_END.finditer(sentence, 0, max_chars + 1)), default=0)
            if cut == 0:
                cut = sentence.rfind(" ", 0, max_chars) + 1 or max_chars
            out.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            out.append(sentence)
    return out


def read_voice(voice_id: str, path: Path) -> Voice:
    """Read a voice's sample rate and language from its ``.onnx.json`` (the model is not loaded)."""
    config = json.loads(Path(f"{path}.json").read_text(encoding="utf-8"))
    language = (config.get("language") or {}).get("code") or config.get("espeak", {}).get("voice", "")
    return Voice(id=voice_id, path=path, sample_rate=int(config["audio"]["sample_rate"]), language=language)


class PiperEngine:
    """Piper voices, shared by the HTTP routes and realtime sessions."""

    id: str = "piper"
    # OpenAI speech model names that route to this engine.
    aliases: ClassVar[tuple[str, ...]] = (
        "tts-1",
        "tts-1-hd",
        "gpt-4o-mini-tts",
        "gpt-4o-mini-tts-2025-12-15",
    )

    def __init__(
        self,
        voices: list[Voice],
        default_voice: str,
        *,
        voice_map: dict[str, str] | None = None,
        use_cuda: bool = False,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        load_voice: Callable[[Voice], Any] | None = None,
        slots: int = 2,
        max_queue: int = 32,
    ) -> None:
        """``noise_scale`` / ``noise_w_scale`` override the voices' audio and phoneme-duration noise
        (None keeps each voice's own; 0 for both makes the audio for a text deterministic, 0 for
        ``noise_w_scale`` alone makes its length deterministic); ``load_voice`` replaces
        ``PiperVoice.load`` (tests). ``slots``: syntheses run at once; ``max_queue``: syntheses waiting
        beyond those, past which ``stream`` raises QueueFull."""
        self._voices = {v.id: v for v in voices}
        if default_voice not in self._voices:
            raise InvalidRequest(f"Unknown default voice '{default_voice}'.", param="tts_voice")
        self.default_voice = default_voice
        self._voice_map = {k.lower(): v for k, v in (voice_map or {}).items()}
        for name, target in self._voice_map.items():
            if target not in self._voices:
                raise InvalidRequest(
                    f"voice_map maps '{name}' to '{target}', which is not an installed voice "
                    f"({', '.join(self._voices)}).",
                    param="voice_map",
                )
        self._use_cuda = use_cuda
        self._noise_scale = noise_scale
        self._noise_w_scale = noise_w_scale
        self._load_voice = load_voice or self._piper_load
        self._loaded: dict[str, Any] = {}
        # Reentrant: a job may run nested inside another one's suspended synthesis on the same thread.
        self._load_lock = threading.RLock()
        self._closed = False
        self.scheduler = Scheduler("tts", slots=slots, max_queue=max_queue)

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Catalog, **kwargs: Any) -> PiperEngine:
        """Read every catalog voice's config and load the default voice (blocking)."""
        voices = []
        for voice_id, path in catalog.voices.items():
            try:
                voices.append(read_voice(voice_id, path))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("skipping voice %s (%s): unreadable config: %s", voice_id, path, exc)
        engine = cls(
            voices,
            settings.tts_voice or EMBEDDED_VOICE_ID,
            voice_map=settings.voice_map,
            use_cuda=settings.tts_use_cuda,
            slots=settings.tts_slots,
            max_queue=settings.tts_max_queue,
            **kwargs,
        )
        engine._voice_model(engine.voice(engine.default_voice))
        logger.info("piper ready: default voice %s, %d voices", engine.default_voice, len(voices))
        return engine

    def model_ids(self) -> list[str]:
        """Every model name a speech request may use (the engine, its aliases and each voice id)."""
        return [self.id, *self.aliases, *self._voices]

    def voices(self) -> list[Voice]:
        return sorted(self._voices.values(), key=lambda v: v.id)

    def voice(self, voice_id: str) -> Voice:
        return self._voices[voice_id]

    def resolve_voice(self, name: str | None) -> Voice:
        """A voice by Piper id, by ``voice_map`` name, or by OpenAI name (-> the default voice)."""
        if name is None or not name.strip():
            return self._voices[self.default_voice]
        if name in self._voices:
            return self._voices[name]
        key = name.strip().lower()
        if key in self._voice_map:
            return self._voices[self._voice_map[key]]
        if key in OPENAI_VOICES:
            return self._voices[self.default_voice]
        raise InvalidRequest(
            f"Unknown voice '{name}'. Available voices: {', '.join(self._voices)} "
            f"(or the OpenAI names {', '.join(OPENAI_VOICES)}).",
            param="voice",
        )

    def stream(
        self, text: str, *, voice: str | None = None, speed: float = 1.0, priority: Priority = Priority.HTTP
    ) -> Job[AudioChunk]:
        """Audio sentence by sentence. Close the stream (``async with``) to stop synthesis early.

        The job is queued at once: raises QueueFull / EngineClosed here, not from the iterator."""
        if self._closed:
            raise EngineClosed("The text-to-speech engine is closed.")
        if not text or not text.strip():
            raise InvalidRequest("The input text is empty.", param="input")
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise InvalidRequest(
                f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}.", param="speed"
            )
        chosen = self.resolve_voice(voice)
        sentences = split_sentences(text)

        def produce(control: JobControl) -> Iterator[AudioChunk]:
            try:
                yield from self._synthesize(chosen, sentences, speed, control)
            except APIError:
                raise
            except Exception as exc:
                logger.exception("piper failed")
                raise ServerError(f"Speech synthesis failed: {exc}") from exc

        return self.scheduler.submit(produce, priority=priority, preemptible=True)

    async def synthesize(
        self, text: str, *, voice: str | None = None, speed: float = 1.0, priority: Priority = Priority.HTTP
    ) -> AudioChunk:
        """The whole text as one chunk (``text`` is the input)."""
        sample_rate = self.resolve_voice(voice).sample_rate
        parts: list[np.ndarray] = []
        async with self.stream(text, voice=voice, speed=speed, priority=priority) as chunks:
            async for chunk in chunks:
                parts.append(chunk.samples)
        samples = np.concatenate(parts) if parts else np.zeros(0, np.int16)
        return AudioChunk(samples=samples, sample_rate=sample_rate, text=text)

    def stats(self) -> list[SchedulerStats]:
        return [self.scheduler.stats()]

    def close(self) -> None:
        """End every queued and running synthesis with EngineClosed (blocking, bounded)."""
        self._closed = True
        self.scheduler.close()
        self._loaded.clear()

    # --- worker-thread side --------------------------------------------------------------------------

    def _piper_load(self, voice: Voice) -> Any:
        from piper import PiperVoice

        return PiperVoice.load(voice.path, use_cuda=self._use_cuda)

    def _voice_model(self, voice: Voice) -> Any:
        with self._load_lock:
            model = self._loaded.get(voice.id)
            if model is None:
                logger.info("loading piper voice %s from %s", voice.id, voice.path)
                model = self._loaded[voice.id] = self._load_voice(voice)
            return model

    def _synthesize(
        self, voice: Voice, sentences: list[str], speed: float, stop: threading.Event
    ) -> Iterator[AudioChunk]:
        from piper import SynthesisConfig

        model = self._voice_model(voice)
        config = SynthesisConfig(
            length_scale=model.config.length_scale / speed,
            noise_scale=self._noise_scale,
            noise_w_scale=self._noise_w_scale,
        )
        for sentence in sentences:
            if stop.is_set():
                return
            # Piper may split a sentence further (espeak's own clause rules); keep one chunk per ours.
            parts = [c.audio_int16_array for c in model.synthesize(sentence, syn_config=config)]
            if parts:
                yield AudioChunk(np.concatenate(parts), model.config.sample_rate, sentence)
