"""Speaking one assistant audio part: clause -> Piper -> output rate -> ``output_audio`` deltas.

Each clause's transcript delta is sent together with its first audio, and the clause's text is recorded
with the sample range it occupies (an :class:`~.conversation.AudioClip` span), so the transcript always
matches the audio sent and ``conversation.item.truncate`` can later cut the text at the played position.
One streaming resampler per part carries the filter state across clauses (no clicks at clause joins);
:meth:`SpeechWriter.flush` pushes out its last few milliseconds when the part ends.

Each clause is one TTS job of priority ``REALTIME`` (before HTTP speech requests in the engine's queue).
Leaving its stream (the response was cancelled) never waits: a job still queued behind other sessions'
synthesis leaves the queue at once, a running one stops at its next chunk.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import numpy as np

from localrt.audio.resample import StreamResampler
from localrt.engines.interfaces import AudioChunk, ItemStream, TextToSpeech
from localrt.engines.scheduler import Priority
from localrt.realtime.conversation import AudioClip, Content
from localrt.realtime.formats import AudioFormat
from localrt.realtime.server_events import ContentRef, Event, ServerEvents
from localrt.text.chunker import speakable

MAX_DELTA_MS = 500  # audio per delta: small enough to stream smoothly, far below the 1 MiB event limit
Emit = Callable[..., Awaitable[None]]  # emit(event, on_sent=None)
# (text, voice, speed) -> the held synthesis of exactly that, or None
Prefetched = Callable[[str, str, float], ItemStream[AudioChunk] | None]


class SpeechWriter:
    def __init__(
        self,
        *,
        content: Content,
        ref: ContentRef,
        fmt: AudioFormat,
        voice: str,
        speed: float,
        tts: TextToSpeech | None,
        events: ServerEvents,
        emit: Emit,
        timings: dict[str, float],
        prefetched: Prefetched | None = None,
    ) -> None:
        """``prefetched``: held speech of the first clause (a speculative reply), asked once."""
        self.content = content
        self._prefetched = prefetched
        self.clip = content.audio if content.audio is not None else AudioClip(fmt.rate)
        content.audio = self.clip
        self._ref = ref
        self._fmt = fmt
        self._voice = voice
        self._speed = speed
        self._tts = tts
        self._events = events
        self._emit = emit
        self._timings = timings
        self._resampler: StreamResampler | None = None

    async def speak(self, clause: str) -> None:
        """Synthesize one clause (verbatim model text) and send its transcript and audio."""
        self._timings.setdefault("first_clause", time.monotonic())
        text = speakable(clause)
        started = False
        if text and self._tts is not None:
            prefetched, self._prefetched = self._prefetched, None
            held = prefetched(text, self._voice, self._speed) if prefetched is not None else None
            stream = held or self._tts.stream(
                text, voice=self._voice, speed=self._speed, priority=Priority.REALTIME
            )
            async with stream:  # queued here (QueueFull / EngineClosed raise); leaving never waits
                async for chunk in stream:
                    self._timings.setdefault("tts_first_chunk", time.monotonic())
                    if self._resampler is None:
                        self._resampler = StreamResampler(chunk.sample_rate, self._fmt.rate, dtype=np.int16)
                    samples = self._resampler.process(chunk.samples)
                    self.clip.append(samples, text=None if started else clause)
                    if not started:
                        await self._transcript(clause)
                        started = True
                    await self._send(samples)
        if not started:  # nothing to say aloud (markup, symbols): keep the text in the transcript
            self.clip.append(np.zeros(0, np.int16), text=clause)
            await self._transcript(clause)

    async def flush(self) -> None:
        """The end of the part: send what the resampler still holds."""
        if self._resampler is None:
            return
        tail = self._resampler.process(np.zeros(0, np.int16), last=True)
        self._resampler = None
        if tail.size:
            self.clip.append(tail)
            await self._send(tail)

    async def _transcript(self, text: str) -> None:
        self.content.transcript = (self.content.transcript or "") + text
        await self._emit(self._events.transcript_delta(self._ref, text))

    async def _send(self, samples: np.ndarray) -> None:
        step = self._fmt.rate * MAX_DELTA_MS // 1000
        for start in range(0, samples.size, step):
            event: Event | None = self._events.audio_delta(
                self._ref, self._fmt.encode(samples[start : start + step])
            )
            first = "first_audio_sent" not in self._timings
            await self._emit(event, self._mark_first_audio if first else None)

    def _mark_first_audio(self) -> None:
        self._timings.setdefault("first_audio_sent", time.monotonic())
