"""Speech to text on a remote OpenAI-compatible server (``--stt-base-url``).

The audio (float32 mono at 16 kHz, as for the local Whisper engine) is sent as a 16-bit WAV upload to
the upstream's ``/audio/transcriptions`` (``/audio/translations`` for ``task="translate"``) with the
``openai`` client, async, on the event loop: speaches, vLLM's Whisper, another localrt. ``language``,
``prompt`` and ``temperature`` are passed through; the upstream validates them and its errors come back
as localrt's (:func:`~localrt.engines.remote_common.map_error`).

:meth:`RemoteSpeechToText.transcribe` asks for ``verbose_json`` (segments, and words with
``word_timestamps``: subtitles and ``verbose_json`` answers of the front need them);
:meth:`~RemoteSpeechToText.stream` (realtime turns, streamed HTTP transcripts, which read only the text)
asks for plain ``json`` and yields one segment spanning the audio.

Every request holds a slot of this engine's :class:`~localrt.engines.scheduler.Scheduler`
(``--stt-remote-slots``) through a :class:`~localrt.engines.remote_common.SlotLease`: the queue bound
(429), priorities (realtime first), ``/health`` and the job metrics are those of a local engine.
Cancelling the caller's task (a realtime response cancelled, a client gone) closes the HTTP request.
"""

from __future__ import annotations

import asyncio
import io
import logging
import wave
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import openai

from localrt.audio.pcm import float32_to_int16
from localrt.engines.remote_common import SlotLease, Upstream, map_error
from localrt.engines.scheduler import EngineClosed, Priority, QueueFull, Scheduler, SchedulerStats
from localrt.engines.stt import _LANGUAGE_NAMES
from localrt.engines.types import Segment, Task, Transcription, Word, check_transcription
from localrt.errors import APIError, InvalidRequest
from localrt.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

SAMPLE_RATE = 16_000
_LANGUAGE_CODES = {name: code for code, name in _LANGUAGE_NAMES.items()}


class RemoteStream(Generic[T]):
    """An :class:`~localrt.engines.interfaces.ItemStream` over an async generator: leaving the
    ``async with`` (or ``aclose``) closes the generator, and with it the upstream request it reads."""

    def __init__(self, items: AsyncGenerator[T, None]) -> None:
        self._items = items

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        await self._items.aclose()

    async def __aenter__(self) -> RemoteStream[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def check_admission(scheduler: Scheduler, closed: bool, what: str) -> None:
    """Refuse a job at once (EngineClosed, QueueFull) when the scheduler would refuse it, so callers that
    submit before answering (HTTP routes) still answer with a status; the lease's own submit decides."""
    stats = scheduler.stats()
    if closed:
        raise EngineClosed(f"The {what} engine is closed.")
    if stats.queued >= stats.max_queue:
        raise QueueFull(
            f"The {scheduler.name} engine's queue is full ({stats.max_queue} jobs waiting); retry shortly.",
            retry_after=scheduler.retry_after,
        )


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """float32 mono samples as a 16-bit PCM WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(float32_to_int16(audio).astype("<i2").tobytes())
    return out.getvalue()


class RemoteSpeechToText:
    """Transcriptions by an OpenAI-compatible server, shared by the HTTP routes and realtime sessions."""

    sample_rate: int = SAMPLE_RATE
    # OpenAI transcription model names a request to this server may use (all go to ``id`` upstream).
    aliases: ClassVar[tuple[str, ...]] = (
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-mini-transcribe-2025-12-15",
    )

    def __init__(self, upstream: Upstream, model: str = "whisper-1", *, slots: int = 8, max_queue: int = 32):
        """``model``: the name sent upstream; ``slots``: requests in flight at once; ``max_queue``:
        requests waiting beyond those, past which ``stream`` / ``transcribe`` raise QueueFull."""
        self.upstream = upstream
        self.id = model
        self._closed = False
        # Waiting on the network costs no CPU: local work does not pause for these jobs, nor they for it.
        self.scheduler = Scheduler("stt", slots=slots, max_queue=max_queue, shares_cpu=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteSpeechToText:
        if not settings.stt_base_url:
            raise InvalidRequest("stt_engine 'openai' needs --stt-base-url.", param="stt_base_url")
        key = settings.stt_api_key.get_secret_value() if settings.stt_api_key else None
        engine = cls(
            Upstream(settings.stt_base_url, key),
            settings.stt_remote_model,
            slots=settings.stt_remote_slots,
            max_queue=settings.stt_max_queue,
        )
        logger.info("speech to text: %s at %s", engine.id, engine.upstream.display)
        return engine

    def model_ids(self) -> list[str]:
        return list(dict.fromkeys([self.id, *self.aliases]))

    @property
    def languages(self) -> list[str]:
        return list(_LANGUAGE_NAMES)  # Whisper's; the upstream checks the one asked for

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
        text_only: bool = False,  # the upstream decides how it decodes
    ) -> RemoteStream[Segment]:
        """The transcription's segments (one spanning the audio unless ``word_timestamps``)."""
        options = self._options(audio, language, prompt, temperature, task)

        async def segments() -> AsyncGenerator[Segment, None]:
            result = await self._request(
                audio, options, priority, verbose=word_timestamps, words=word_timestamps
            )
            for segment in result.segments:
                yield segment

        return RemoteStream(segments())

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
        text_only: bool = False,  # the upstream decides how it decodes
    ) -> Transcription:
        options = self._options(audio, language, prompt, temperature, task)
        return await self._request(audio, options, priority, verbose=True, words=word_timestamps)

    async def probe(self) -> dict[str, Any]:
        """Whether the upstream answers (for ``/health``)."""
        return await self.upstream.probe()

    def stats(self) -> list[SchedulerStats]:
        return [self.scheduler.stats()]

    def close(self) -> None:
        """End every queued and in-flight transcription with EngineClosed (blocking, bounded)."""
        self._closed = True
        self.scheduler.close()
        self.upstream.close()

    # --- internals -----------------------------------------------------------------------------------
    def _options(
        self, audio: np.ndarray, language: str | None, prompt: str | None, temperature: float, task: Task
    ) -> dict[str, Any]:
        check_admission(self.scheduler, self._closed, "speech-to-text")
        check_transcription(audio, task, temperature)
        options: dict[str, Any] = {"task": task, "temperature": temperature}
        if language is not None and language.strip() and task == "transcribe":
            options["language"] = language.strip().lower()
        if prompt:
            options["prompt"] = prompt
        return options

    async def _request(
        self, audio: np.ndarray, options: dict[str, Any], priority: Priority, *, verbose: bool, words: bool
    ) -> Transcription:
        duration = len(audio) / self.sample_rate
        wav = await asyncio.to_thread(wav_bytes, audio, self.sample_rate)
        async with SlotLease(self.scheduler, priority):
            try:
                body = await self._post(wav, options, verbose=verbose, words=words)
            except APIError:
                raise
            except Exception as exc:
                raise map_error(exc, self.upstream.display, model=self.id) from exc
        return _transcription(body, options.get("language"), duration)

    async def _post(self, wav: bytes, options: dict[str, Any], *, verbose: bool, words: bool) -> Any:
        client = self.upstream.client()
        file = ("audio.wav", wav, "audio/wav")
        prompt = options.get("prompt", openai.omit)
        temperature = options["temperature"]
        fmt: Any = "verbose_json" if verbose else "json"
        if options["task"] == "translate":
            return await client.audio.translations.create(
                file=file, model=self.id, prompt=prompt, temperature=temperature, response_format=fmt
            )
        granularities: Any = ["segment", "word"] if words else openai.omit
        return await client.audio.transcriptions.create(
            file=file,
            model=self.id,
            language=options.get("language", openai.omit),
            prompt=prompt,
            temperature=temperature,
            response_format=fmt,
            timestamp_granularities=granularities,
        )


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """A field of an answer the client parsed (a model) or could not (a dict, a str)."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    value = getattr(obj, name, default)
    return default if value is None else value


def _transcription(body: Any, language: str | None, duration: float) -> Transcription:
    text = body if isinstance(body, str) else str(_field(body, "text", "") or "")  # str: plain text
    lang = str(_field(body, "language", "") or language or "en")
    lang = _LANGUAGE_CODES.get(lang.lower(), lang)
    duration = float(_field(body, "duration", duration) or duration)
    words = [
        Word(float(_field(w, "start", 0.0)), float(_field(w, "end", 0.0)), str(_field(w, "word", "")), 1.0)
        for w in _field(body, "words", None) or []
    ]
    raw_segments = _field(body, "segments", None) or []
    segments = [_segment(i, s, words) for i, s in enumerate(raw_segments)]
    if not segments and text.strip():
        segments = [_whole(text, duration, words or None)]
    elif words and segments and all(s.words == [] for s in segments):
        segments[0] = _replace_words(segments[0], words)  # words outside every segment's span
    return Transcription(text=text.strip(), language=lang, duration=duration, segments=segments)


def _segment(index: int, seg: Any, words: list[Word]) -> Segment:
    start, end = float(_field(seg, "start", 0.0)), float(_field(seg, "end", 0.0))
    mine = [w for w in words if start <= w.start < end] if words else None
    return Segment(
        id=int(_field(seg, "id", index)),
        seek=int(_field(seg, "seek", 0)),
        start=start,
        end=end,
        text=str(_field(seg, "text", "")),
        tokens=[int(t) for t in _field(seg, "tokens", []) or []],
        temperature=float(_field(seg, "temperature", 0.0)),
        avg_logprob=float(_field(seg, "avg_logprob", 0.0)),
        compression_ratio=float(_field(seg, "compression_ratio", 0.0)),
        no_speech_prob=float(_field(seg, "no_speech_prob", 0.0)),
        words=mine,
    )


def _whole(text: str, duration: float, words: list[Word] | None) -> Segment:
    """One segment for an answer without segments (``json``)."""
    return Segment(0, 0, 0.0, duration, text, [], 0.0, 0.0, 0.0, 0.0, words)


def _replace_words(seg: Segment, words: list[Word]) -> Segment:
    return Segment(
        seg.id, seg.seek, seg.start, seg.end, seg.text, seg.tokens, seg.temperature, seg.avg_logprob,
        seg.compression_ratio, seg.no_speech_prob, words,
    )  # fmt: skip
