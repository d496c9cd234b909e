"""The input side of a session: appends -> 16 kHz -> VAD -> turns -> commits -> transcripts.

Everything here runs in the session's reader, in the order the client sent it, so positions in the input
stream (``audio_start_ms`` / ``audio_end_ms``) and the events they produce stay consistent: each append
is decoded once, resampled once, and only its new 32 ms windows go through silero; the
:class:`~.turn.TurnDetector` turns their probabilities into speech start/stop. A stop commits the
speech (with its prefix padding) as a user item and starts Whisper on it as a task; the response the
turn creates waits for that transcript before the LLM starts, so ``response.created`` is not delayed by
transcription. Speech that starts while the assistant is still generating cancels its response
(barge-in) before anything else is processed.

**Speculative transcription.** The silence that must pass before ``speech_stopped`` (500 ms by
default) is idle time. Once a silence inside speech has lasted ``SPECULATE_AFTER_MS``, Whisper starts on
the speech so far; if the user resumes, that work is dropped; if the silence completes the turn, the
committed item's transcript is that result (the audio after it is silence by the VAD's own verdict).
This takes most of Whisper's time off the path from the end of speech to the first reply audio. The
session goes further (:mod:`.speculation`): once that transcript is ready, the reply's LLM job and its
first clause's speech start too, held until the turn is confirmed and discarded with the transcript.

**Semantic VAD.** With ``semantic_vad`` and a turn model (Smart Turn), the silence window is the
eagerness' cap (4 s for ``auto``), and the model ends most turns long before it: see :mod:`.semantic`.

The idle timer (``idle_timeout_ms``) runs as a task, but it takes the same lock as the handlers, so it
never fires in the middle of an append.

**Bounds.** An append that would make the uncommitted buffer hold more than the session's
``realtime_max_buffer_bytes`` (as 16 kHz pcm16) is refused whole (``input_audio_buffer_too_large``)
before it is decoded. Appends are decoded piece by piece (no full-length float copy of a 15 MiB append);
large ones, and large commits, in a worker thread (:mod:`.offload`), awaited under the listener's lock,
so the input stream keeps its order. Transcription is :mod:`.transcriber`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from localrt.errors import InvalidRequest
from localrt.realtime.config import SessionConfig
from localrt.realtime.conversation import AudioClip, Content, Conversation, Item
from localrt.realtime.events import new_id
from localrt.realtime.formats import AudioFormat
from localrt.realtime.input_audio import RATE, SAMPLES_PER_MS, InputAudio
from localrt.realtime.offload import INLINE_MAX_CHARS, INLINE_MAX_SAMPLES, check, run_off_loop
from localrt.realtime.semantic import SemanticTurns
from localrt.realtime.speculation import ReplySpeculation
from localrt.realtime.transcriber import Transcriber, TranscriberHost
from localrt.realtime.turn import TurnDetector, TurnEvent
from localrt.settings import Settings

logger = logging.getLogger(__name__)

MIN_COMMIT_MS = 100
SPECULATE_AFTER_MS = 64  # silence inside speech after which the reply starts speculatively (2 windows)


class Host(TranscriberHost, Protocol):
    """What the listener needs from its session."""

    settings: Settings
    conversation: Conversation

    async def interrupt(self) -> None:
        """Barge-in: cancel the default conversation's response if it is still generating."""

    async def auto_response(
        self, marks: dict[str, float], speculation: ReplySpeculation | None = None
    ) -> None:
        """A response for a finished turn (server VAD or idle timeout), if one may start now;
        ``speculation``: its reply as computed in the pause (taken over if it matches)."""

    def speculate_reply(
        self, item_id: str, transcript: asyncio.Task[list[str] | None]
    ) -> ReplySpeculation | None:
        """Start the reply to a turn that may be ending, held until it is confirmed (or None)."""


@dataclass
class _Speech:
    """The user turn in progress under server VAD."""

    item_id: str
    start: int  # the committed audio starts here (padding included), 16 kHz samples
    marks: dict[str, float] = field(default_factory=dict)
    speculation: asyncio.Task[list[str] | None] | None = None  # Whisper started in the closing silence
    reply: ReplySpeculation | None = None  # the reply started on that transcript
    check: asyncio.Task[None] | None = None  # semantic VAD asking its turn model about this pause
    checked: tuple[int, int] = (-1, 0)  # (pause, stage): the last check started

    def drop_speculation(self) -> None:
        if self.speculation is not None:
            self.speculation.cancel()
            self.speculation = None
        if self.reply is not None:
            self.reply.discard()
            self.reply = None
        self.cancel_check()

    def cancel_check(self) -> None:
        if self.check is not None:
            self.check.cancel()
            self.check = None


class Listener(SemanticTurns):
    def __init__(self, host: Host) -> None:
        self._host = host
        self.audio = InputAudio(host.cfg.input_format)
        self._vad: Any | None = None
        self._turn: TurnDetector | None = None
        self._speech: _Speech | None = None
        self._lock = asyncio.Lock()
        self._idle_deadline: float | None = None
        self._idle_wakeup = asyncio.Event()
        self.transcriber = Transcriber(host)
        self.configure(host.cfg, host.cfg)

    # --- configuration ---------------------------------------------------------------------------------
    def configure(self, old: SessionConfig, new: SessionConfig) -> None:
        """Apply a new session config (called before ``host.cfg`` is replaced)."""
        if new.input_format != self.audio.format:
            self.audio.set_format(new.input_format)
        td = new.turn_detection
        if td is None or self._host.engines.vad is None:
            if self._speech is not None:
                self._speech.drop_speculation()
            self._vad = self._turn = self._speech = None
        elif self._turn is None:
            self._vad = self._host.engines.vad.stream()
            self._turn = TurnDetector(td, origin=self.audio.end, turn_model=self._turn_model(td))
        else:
            self._turn.configure(td, turn_model=self._turn_model(td))
        idle = td.idle_timeout_ms if td is not None else None
        old_idle = old.turn_detection.idle_timeout_ms if old.turn_detection is not None else None
        if idle is None:
            self._arm_idle(None)
        elif idle != old_idle or old is new:
            self._arm_idle(idle / 1000)

    def _turn_model(self, td: Any) -> bool:
        return bool(td.type == "semantic_vad" and getattr(self._host.engines, "turn", None) is not None)

    # --- client events ----------------------------------------------------------------------------------
    async def append(self, audio_b64: str) -> None:
        fmt = self._host.cfg.input_format
        async with self._lock:
            limit = self._host.settings.realtime_max_buffer_bytes
            after = self.audio.bytes_after(fmt.max_samples(len(audio_b64)))
            if after > limit:
                raise InvalidRequest(
                    f"Appending this audio would make the input audio buffer {after} bytes (as 16 kHz "
                    f"pcm16), over this server's limit of {limit} (--realtime-max-buffer-bytes). "
                    "Commit or clear the buffer first; this append was dropped.",
                    code="input_audio_buffer_too_large",
                    param="audio",
                )
            if len(audio_b64) <= INLINE_MAX_CHARS:  # the usual 20-100 ms: cheaper than a thread hop
                spans = self._decode_and_append(fmt, audio_b64)
            else:  # seconds of audio: decode and resample off the event loop (awaited: still in order)
                spans = await run_off_loop(lambda stop: self._decode_and_append(fmt, audio_b64, stop))
            for start, end in spans:
                if self._turn is None:  # no VAD: nothing reads the new samples
                    break
                await self._detect(self.audio.slice(start, end))

    def _decode_and_append(
        self, fmt: AudioFormat, audio_b64: str, stop: threading.Event | None = None
    ) -> list[tuple[int, int]]:
        """Append piece by piece; the 16 kHz span each piece added (VAD reads them back in order).

        Off the loop, it runs while the reader awaits it under the lock: nothing else touches the
        buffer meanwhile."""
        spans: list[tuple[int, int]] = []
        for samples in fmt.decode_chunks(audio_b64, param="audio"):
            check(stop)
            start = self.audio.end
            self.audio.append(samples)
            spans.append((start, self.audio.end))
        return spans

    async def commit(self) -> None:
        async with self._lock:
            buffered = self.audio.buffered_ms
            if buffered < MIN_COMMIT_MS:
                raise InvalidRequest(
                    "Error committing input audio buffer: buffer too small. Expected at least "
                    f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered:.2f}ms of audio.",
                    code="input_audio_buffer_commit_empty",
                )
            await self._detect(self.audio.flush(), act=False)
            speech, self._speech = self._speech, None
            if speech is not None:
                speech.drop_speculation()  # it covers only part of what is committed here
            if self._turn is not None:
                self._turn.reset()
            item_id = speech.item_id if speech is not None else new_id("item")
            if speech is not None:
                await self._host.emit(
                    self._host.events.speech_stopped(self.audio.end // SAMPLES_PER_MS, item_id)
                )
            audio = await self._take(self.audio.buffer_start, self.audio.end)
            await self._commit_audio(audio, item_id, speech.marks if speech is not None else {})

    async def clear(self) -> None:
        async with self._lock:
            self.audio.clear()
            if self._speech is not None:
                self._speech.drop_speculation()
            self._speech = None
            if self._turn is not None:
                self._turn.reset()
            await self._host.emit(self._host.events.cleared())

    # --- VAD and turns ----------------------------------------------------------------------------------
    async def _detect(self, new: np.ndarray, *, act: bool = True) -> None:
        """VAD over the new 16 kHz samples (each window once); act on the turn events."""
        if self._turn is None or self._vad is None or new.size == 0:
            return
        probabilities = await self._vad.process(new)
        for turn_event in self._turn.push(probabilities, floor=self.audio.buffer_start):
            if not act:
                continue
            if turn_event.kind == "speech_started":
                await self._speech_started(turn_event)
            elif turn_event.kind == "speech_stopped":
                await self._speech_stopped(turn_event)
            elif turn_event.kind == "resume" and self._speech is not None:
                self._speech.drop_speculation()
        if act:
            self._maybe_speculate()
            self._maybe_check_turn()
        td = self._host.cfg.turn_detection
        if not self._turn.speaking and td is not None:
            # Waiting for speech: keep only what the prefix padding may reach back to.
            self.audio.trim(self.audio.end - (td.prefix_padding_ms + 100) * SAMPLES_PER_MS)

    def _maybe_speculate(self) -> None:
        speech, turn, td = self._speech, self._turn, self._host.cfg.turn_detection
        if speech is None or turn is None or td is None or speech.speculation is not None:
            return
        if (
            turn.silence_start is None
            or self._host.engines.stt is None
            or turn.window_ms < SPECULATE_AFTER_MS + 100
        ):
            return
        if turn.silence_ms >= SPECULATE_AFTER_MS:
            audio = self.audio.slice(speech.start, self.audio.end, np.int16)  # a copy, at memcpy speed
            speech.speculation = self.transcriber.speculate(audio, f"stt-speculative-{speech.item_id}")
            speech.reply = self._host.speculate_reply(speech.item_id, speech.speculation)

    async def _speech_started(self, turn_event: TurnEvent) -> None:
        self._arm_idle(None)
        self._speech = _Speech(new_id("item"), turn_event.position, {"speech_started": time.monotonic()})
        event = self._host.events.speech_started(turn_event.position // SAMPLES_PER_MS, self._speech.item_id)
        await self._host.emit(event)
        td = self._host.cfg.turn_detection
        if td is not None and td.interrupt_response:
            await self._host.interrupt()  # response.done (cancelled) comes before speech_stopped

    async def _speech_stopped(self, turn_event: TurnEvent) -> None:
        speech, self._speech = self._speech, None
        if speech is None:
            return
        speech.cancel_check()
        speech.marks["speech_stopped"] = time.monotonic()
        self.transcriber.promote(speech.speculation)  # a confirmed turn's now: before other sessions' pauses
        await self._host.emit(
            self._host.events.speech_stopped(turn_event.position // SAMPLES_PER_MS, speech.item_id)
        )
        audio = await self._take(speech.start, turn_event.commit_end)
        await self._commit_audio(audio, speech.item_id, speech.marks, speech.speculation)
        td = self._host.cfg.turn_detection
        if td is not None and td.create_response:
            await self._host.auto_response(speech.marks, speech.reply)
        elif speech.reply is not None:
            speech.reply.discard()

    async def _commit_audio(
        self,
        audio: np.ndarray,
        item_id: str,
        marks: dict[str, float],
        speculation: asyncio.Task[list[str] | None] | None = None,
    ) -> None:
        """``audio``: int16 at 16 kHz, kept as the item's clip and transcribed from there."""
        host = self._host
        clip = AudioClip(RATE)
        clip.append(audio)
        content = Content("input_audio", audio=clip, transcribed=asyncio.Event())
        item = Item(item_id, "message", role="user", content=[content])
        prev = host.conversation.insert(item)
        marks["committed"] = time.monotonic()
        await host.emit(host.events.committed(item_id, prev))
        wire = item.to_wire(host.events.dialect)
        await host.emit(host.events.item_added(wire, prev))
        await host.emit(host.events.item_done(wire, prev))
        self.transcriber.transcribe(item, 0, [audio], marks, speculation)

    async def _take(self, start: int, end: int) -> np.ndarray:
        """:meth:`InputAudio.take` as int16, in a worker thread when long (a manual commit may hold
        minutes of audio). Called under the lock, so the buffer does not change meanwhile."""
        if end - start <= INLINE_MAX_SAMPLES:
            return self.audio.take(start, end, np.int16)
        return await run_off_loop(lambda _: self.audio.take(start, end, np.int16))

    # --- transcription (the transcriber's) ---------------------------------------------------------------
    def transcribe_item(self, item: Item) -> None:
        """Start Whisper on the audio parts of a client-created item that came without a transcript."""
        self.transcriber.transcribe_item(item)

    def forget(self, item: Item) -> None:
        """The item left the conversation (deleted, evicted, or its response ended): stop its Whisper."""
        self.transcriber.forget(item)

    # --- idle timeout -----------------------------------------------------------------------------------
    def response_started(self) -> None:
        self._arm_idle(None)

    def response_finished(self, audio_ms: int) -> None:
        """Count the idle time from when the reply's audio will have finished playing."""
        td = self._host.cfg.turn_detection
        if td is not None and td.idle_timeout_ms is not None and self._speech is None:
            self._arm_idle((audio_ms + td.idle_timeout_ms) / 1000)

    def _arm_idle(self, delay_s: float | None) -> None:
        self._idle_deadline = None if delay_s is None else time.monotonic() + delay_s
        self._idle_wakeup.set()

    async def idle_timer(self) -> None:
        """Runs for the whole session: fires ``input_audio_buffer.timeout_triggered`` when due."""
        while True:
            self._idle_wakeup.clear()
            if self._idle_deadline is None:
                await self._idle_wakeup.wait()
                continue
            remaining = self._idle_deadline - time.monotonic()
            if remaining > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._idle_wakeup.wait(), remaining)
                continue
            self._idle_deadline = None
            async with self._lock:
                if self._speech is None and self._turn is not None:
                    await self._idle_timeout()

    async def _idle_timeout(self) -> None:
        host = self._host
        start, end = self.audio.buffer_start, self.audio.end
        item_id = new_id("item")
        marks = {"speech_stopped": time.monotonic()}
        await host.emit(
            host.events.timeout_triggered(start // SAMPLES_PER_MS, end // SAMPLES_PER_MS, item_id)
        )
        await self._commit_audio(await self._take(start, end), item_id, marks)
        await host.auto_response(marks)
