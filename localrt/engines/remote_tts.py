"""Text to speech on a remote OpenAI-compatible server (``--tts-base-url``).

The text is split into sentences here (:func:`~localrt.engines.tts.split_sentences`, as for Piper) and
each sentence is one ``POST /audio/speech`` with ``response_format="pcm"`` (OpenAI's raw s16le at
24 kHz; localrt answers the same), streamed with the ``openai`` client's ``with_streaming_response``,
async, on the event loop. The bytes are cut into :class:`~localrt.engines.types.AudioChunk` s of
100-200 ms as they arrive, each carrying its sentence's text, so the realtime transcript stays aligned
with the audio and the first audio leaves before the upstream has finished the sentence.

A synthesis holds a slot of this engine's :class:`~localrt.engines.scheduler.Scheduler`
(``--tts-remote-slots``) through a :class:`~localrt.engines.remote_common.SlotLease` for its
sentences. Leaving the stream (a response cancelled, barge-in, a client gone) closes the HTTP response
being read and releases the slot at once.

Voices: OpenAI's names, plus the voices the upstream lists at ``GET /audio/voices`` (localrt, and
servers like it) when it has that route; with such a list, other names are refused here, without one
they are passed on for the upstream to judge.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from localrt.engines.remote_common import SlotLease, Upstream, map_error
from localrt.engines.remote_stt import RemoteStream, check_admission
from localrt.engines.scheduler import Priority, Scheduler, SchedulerStats
from localrt.engines.tts import MAX_SPEED, MIN_SPEED, OPENAI_VOICES, split_sentences
from localrt.engines.types import AudioChunk, Voice
from localrt.errors import APIError, InvalidRequest, ServiceUnavailable
from localrt.settings import Settings

logger = logging.getLogger(__name__)

PCM_RATE = 24_000  # OpenAI's (and localrt's) response_format "pcm"
MIN_CHUNK_BYTES = PCM_RATE * 2 // 10  # 100 ms: hand audio on once this much has arrived...
MAX_CHUNK_BYTES = PCM_RATE * 2 // 5  # ...in pieces of at most 200 ms
_NO_PATH = Path()  # a remote voice has no file here


class RemoteTextToSpeech:
    """Speech streamed from an OpenAI-compatible server, shared by the HTTP routes and realtime."""

    # OpenAI speech model names a request to this server may use (all go to ``id`` upstream).
    aliases: ClassVar[tuple[str, ...]] = (
        "tts-1",
        "tts-1-hd",
        "gpt-4o-mini-tts",
        "gpt-4o-mini-tts-2025-12-15",
    )

    def __init__(
        self,
        upstream: Upstream,
        model: str = "tts-1",
        *,
        default_voice: str | None = None,
        upstream_voices: list[Voice] | None = None,
        slots: int = 8,
        max_queue: int = 32,
    ) -> None:
        """``upstream_voices``: what the upstream lists (None: it lists none, any name is passed on)."""
        self.upstream = upstream
        self.id = model
        self._listed = upstream_voices is not None
        voices = [Voice(name, _NO_PATH, PCM_RATE, "") for name in OPENAI_VOICES]
        voices += upstream_voices or []
        self._voices = {v.id: v for v in voices}
        self.default_voice = default_voice or "alloy"
        if self.default_voice not in self._voices:
            if self._listed:
                raise InvalidRequest(
                    f"Unknown default voice '{self.default_voice}' (the upstream has "
                    f"{', '.join(self._voices)}).",
                    param="tts_voice",
                )
            self._voices[self.default_voice] = Voice(self.default_voice, _NO_PATH, PCM_RATE, "")
        self._closed = False
        self.scheduler = Scheduler("tts", slots=slots, max_queue=max_queue, shares_cpu=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteTextToSpeech:
        """Ask the upstream for its voices (blocking, a few seconds at most; start-up only)."""
        if not settings.tts_base_url:
            raise InvalidRequest("tts_engine 'openai' needs --tts-base-url.", param="tts_base_url")
        key = settings.tts_api_key.get_secret_value() if settings.tts_api_key else None
        upstream = Upstream(settings.tts_base_url, key)
        engine = cls(
            upstream,
            settings.tts_remote_model,
            default_voice=settings.tts_voice,
            upstream_voices=list_voices(upstream),
            slots=settings.tts_remote_slots,
            max_queue=settings.tts_max_queue,
        )
        logger.info("text to speech: %s at %s, %d voices", engine.id, upstream.display, len(engine._voices))
        return engine

    def model_ids(self) -> list[str]:
        return list(dict.fromkeys([self.id, *self.aliases]))

    def voices(self) -> list[Voice]:
        return sorted(self._voices.values(), key=lambda v: v.id)

    def voice(self, voice_id: str) -> Voice:
        return self._voices[voice_id]

    def resolve_voice(self, name: str | None) -> Voice:
        if name is None or not name.strip():
            return self._voices[self.default_voice]
        name = name.strip()
        if name in self._voices:
            return self._voices[name]
        if name.lower() in OPENAI_VOICES:
            return self._voices[name.lower()]
        if not self._listed and len(name) <= 128 and name.isprintable():
            return Voice(name, _NO_PATH, PCM_RATE, "")  # the upstream lists none: it decides
        raise InvalidRequest(
            f"Unknown voice '{name[:128]}'. Available voices: {', '.join(sorted(self._voices))}.",
            param="voice",
        )

    def stream(
        self, text: str, *, voice: str | None = None, speed: float = 1.0, priority: Priority = Priority.HTTP
    ) -> RemoteStream[AudioChunk]:
        """Audio sentence by sentence, in chunks of at most 200 ms as the upstream sends them."""
        check_admission(self.scheduler, self._closed, "text-to-speech")
        if not text or not text.strip():
            raise InvalidRequest("The input text is empty.", param="input")
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise InvalidRequest(
                f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}.", param="speed"
            )
        chosen = self.resolve_voice(voice).id
        return RemoteStream(self._chunks(split_sentences(text), chosen, speed, priority))

    async def synthesize(
        self, text: str, *, voice: str | None = None, speed: float = 1.0, priority: Priority = Priority.HTTP
    ) -> AudioChunk:
        """The whole text as one chunk (``text`` is the input)."""
        parts: list[np.ndarray] = []
        async with self.stream(text, voice=voice, speed=speed, priority=priority) as chunks:
            async for chunk in chunks:
                parts.append(chunk.samples)
        samples = np.concatenate(parts) if parts else np.zeros(0, np.int16)
        return AudioChunk(samples=samples, sample_rate=PCM_RATE, text=text)

    async def probe(self) -> dict[str, Any]:
        """Whether the upstream answers (for ``/health``)."""
        return await self.upstream.probe()

    def stats(self) -> list[SchedulerStats]:
        return [self.scheduler.stats()]

    def close(self) -> None:
        """End every queued and in-flight synthesis with EngineClosed (blocking, bounded)."""
        self._closed = True
        self.scheduler.close()
        self.upstream.close()

    # --- internals -----------------------------------------------------------------------------------
    async def _chunks(
        self, sentences: list[str], voice: str, speed: float, priority: Priority
    ) -> AsyncGenerator[AudioChunk, None]:
        lease = SlotLease(self.scheduler, priority)
        async with lease:
            try:
                for sentence in sentences:
                    # aclosing: leaving closes this sentence's HTTP response now, not when collected.
                    async with aclosing(self._sentence(sentence, voice, speed)) as pieces:
                        async for samples in pieces:
                            yield AudioChunk(samples, PCM_RATE, sentence)
            except GeneratorExit:  # the caller left the stream: a cancellation, not a failure
                lease.release(cancelled=True)
                raise

    async def _sentence(self, sentence: str, voice: str, speed: float) -> AsyncGenerator[np.ndarray, None]:
        """One upstream request: its pcm as int16 pieces of 100-200 ms."""
        client = self.upstream.client()
        try:
            async with client.audio.speech.with_streaming_response.create(
                model=self.id, input=sentence, voice=voice, response_format="pcm", speed=speed
            ) as response:
                pending = bytearray()
                async for data in response.iter_bytes():
                    pending += data
                    if len(pending) >= MIN_CHUNK_BYTES:
                        for piece in _pieces(pending, len(pending) & ~1):
                            yield piece
                        del pending[: len(pending) & ~1]
                if len(pending) >= 2:
                    for piece in _pieces(pending, len(pending) & ~1):
                        yield piece
        except (APIError, GeneratorExit):
            raise
        except Exception as exc:
            if _transport_error(exc):  # the body was cut (the upstream died mid-sentence)
                raise ServiceUnavailable(
                    f"upstream {self.upstream.display} closed the connection: {exc!r}",
                    retry_after=1.0,
                    code="upstream_unavailable",
                ) from exc
            raise map_error(exc, self.upstream.display, model=self.id) from exc


def _transport_error(exc: BaseException) -> bool:
    """A network failure while a body is read: the openai client's httpx (``httpx2`` in openai 3) raises
    its own TransportError there, not an openai error."""
    return any(
        c.__name__ == "TransportError" and c.__module__.split(".")[0] in ("httpx", "httpx2")
        for c in type(exc).__mro__
    )


def _pieces(data: bytearray, size: int) -> list[np.ndarray]:
    """``data[:size]`` (even) as int16 arrays of at most MAX_CHUNK_BYTES each."""
    samples = np.frombuffer(bytes(data[:size]), dtype="<i2").astype(np.int16)
    step = MAX_CHUNK_BYTES // 2
    return [samples[i : i + step] for i in range(0, samples.size, step)]


def list_voices(upstream: Upstream) -> list[Voice] | None:
    """The upstream's ``GET /audio/voices`` (localrt's shape: ``{"data": [{"id", "language"}]}``), None
    when it has no such route or does not answer (blocking)."""
    try:
        with upstream.sync_client(timeout=3.0) as client:
            body = client.get("/audio/voices", cast_to=object)
    except Exception as exc:
        logger.info(
            "tts upstream %s lists no voices (%s): any voice name is passed on", upstream.display, exc
        )
        return None
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return None
    voices = []
    for entry in entries[:1000]:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"]:
            language = entry.get("language")
            voices.append(
                Voice(entry["id"][:128], _NO_PATH, PCM_RATE, language if isinstance(language, str) else "")
            )
    return voices
