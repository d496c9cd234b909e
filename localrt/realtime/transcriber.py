"""Input transcription: Whisper over committed turns and client audio items, as session tasks.

Every transcription is a task of the session, tracked by its item, so deleting (or evicting) an item
stops its transcription and nothing keeps its audio alive. Its jobs go to the speech-to-text engine at
``Priority.REALTIME``: someone is waiting to hear the reply, so they run before HTTP and bulk
transcriptions (and preempt a long one between its segments).

The transcript is always kept on the item (it is what the LLM reads as the user's turn); the
``conversation.item.input_audio_transcription.*`` events are sent only when the session asked for
transcription. A failure (the engine's queue is full, the engine closed or is missing, Whisper failed)
ends that one transcription with ``…input_audio_transcription.failed`` and the error kept on the content
part; the session goes on, and the response waiting for the transcript runs without it.

Audio is handed over as int16 (how the conversation keeps it) and turned into Whisper's float32 here,
off the event loop when it is long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import numpy as np

from localrt.audio.pcm import int16_to_float32
from localrt.engines.interfaces import Priority, SpeechToText
from localrt.errors import APIError, EngineUnavailable, ServerError
from localrt.realtime.config import SessionConfig
from localrt.realtime.conversation import Item
from localrt.realtime.offload import INLINE_MAX_SAMPLES, run_off_loop
from localrt.realtime.server_events import Event, ServerEvents
from localrt.realtime.tasks import TaskSet

logger = logging.getLogger(__name__)

RATE = 16000  # what the conversation keeps user audio at, and what Whisper reads


class TranscriberHost(Protocol):
    """What transcription needs from its session."""

    id: str
    cfg: SessionConfig
    events: ServerEvents
    engines: Any
    tasks: TaskSet

    async def emit(self, event: Event | None) -> None: ...


async def float_audio(chunks: list[np.ndarray]) -> np.ndarray:
    """int16 chunks -> one float32 array for Whisper (in a worker thread when it is long)."""

    def join(_: object = None) -> np.ndarray:
        if not chunks:
            return np.zeros(0, np.float32)
        return int16_to_float32(chunks[0] if len(chunks) == 1 else np.concatenate(chunks))

    if sum(c.size for c in chunks) <= INLINE_MAX_SAMPLES:
        return join()
    return await run_off_loop(join)


class Transcriber:
    def __init__(self, host: TranscriberHost) -> None:
        self._host = host
        self._tasks: dict[int, set[asyncio.Task[Any]]] = {}  # id(item) -> its running transcriptions
        self._speculative: dict[asyncio.Task[Any], list[Any]] = {}  # speculation -> [its stream]

    def transcribe_item(self, item: Item) -> None:
        """Start Whisper on the audio parts of a client-created item that came without a transcript."""
        for index, content in enumerate(item.content):
            if content.transcribed is not None and content.audio is not None:
                chunks = list(content.audio.chunks)  # a snapshot: the clip itself is not touched
                self.transcribe(item, index, chunks, {})

    def transcribe(
        self,
        item: Item,
        index: int,
        audio: list[np.ndarray],
        marks: dict[str, float],
        speculation: asyncio.Task[list[str] | None] | None = None,
    ) -> None:
        """Start transcribing ``audio`` (int16 chunks at 16 kHz) as content part ``index`` of ``item``;
        ``speculation``: Whisper already started on this audio (its result is used if it succeeds)."""
        self._spawn(item, self._transcribe(item, index, audio, marks, speculation))

    def speculate(self, audio: np.ndarray, name: str) -> asyncio.Task[list[str] | None]:
        """Start Whisper on speech that may be about to end (int16): its segments' texts, or None if it
        failed (logged; the committed audio is transcribed again then). It runs at the SPECULATIVE
        priority until :meth:`promote` (the turn ended)."""
        holder: list[Any] = []
        task = self._host.tasks.spawn(self._speculation(audio, holder), name)
        self._speculative[task] = holder
        task.add_done_callback(lambda t: self._speculative.pop(t, None))
        return task

    def promote(self, speculation: asyncio.Task[list[str] | None] | None) -> None:
        """The turn ended: its speculative transcription is a voice turn's now (REALTIME)."""
        holder = self._speculative.get(speculation) if speculation is not None else None
        if holder:
            promote = getattr(holder[0], "promote", None)
            if promote is not None:
                promote(Priority.REALTIME)
        elif holder is not None:
            holder.append(None)  # not submitted yet: it will be at REALTIME

    def forget(self, item: Item) -> None:
        """The item left the conversation (deleted, evicted, or its response ended): stop its Whisper."""
        for task in list(self._tasks.get(id(item), ())):
            task.cancel()

    def _spawn(self, item: Item, coro: Coroutine[Any, Any, None]) -> None:
        task = self._host.tasks.spawn(coro, f"stt-{item.id}")
        key = id(item)  # not item.id: a response's input item may reuse a conversation item's id
        tasks = self._tasks.setdefault(key, set())
        tasks.add(task)

        def done(_: asyncio.Task[Any]) -> None:
            tasks.discard(task)
            if not tasks and self._tasks.get(key) is tasks:
                del self._tasks[key]

        task.add_done_callback(done)

    async def _speculation(self, audio: np.ndarray, holder: list[Any]) -> list[str] | None:
        try:
            return await self._recognize(await float_audio([audio]), holder=holder)
        except Exception as exc:
            logger.warning("session %s: speculative transcription failed: %r", self._host.id, exc)
            return None

    async def _recognize(
        self,
        audio: np.ndarray,
        on_segment: Callable[[str], Awaitable[None]] | None = None,
        holder: list[Any] | None = None,
    ) -> list[str]:
        """Whisper over float32 ``audio``: the segments' texts (``on_segment(text)`` is awaited for each).

        QueueFull / EngineClosed from the engine are raised from here (when the job is submitted, or
        from the stream)."""
        stt: SpeechToText | None = self._host.engines.stt
        if stt is None:
            raise EngineUnavailable("No speech-to-text engine is loaded.")
        settings = self._host.cfg.transcription
        parts: list[str] = []
        if audio.size:
            language = settings.language if settings else None
            prompt = settings.prompt if settings else None
            speculative = holder is not None and not holder  # not promoted before it started
            priority = Priority.SPECULATIVE if speculative else Priority.REALTIME
            stream = stt.stream(audio, language=language, prompt=prompt, priority=priority, text_only=True)
            if holder is not None:
                holder[:] = [stream]
            async with stream as segments:
                async for segment in segments:
                    parts.append(segment.text)
                    if on_segment is not None:
                        await on_segment(segment.text)
        return parts

    async def _transcribe(
        self,
        item: Item,
        index: int,
        audio: list[np.ndarray],
        marks: dict[str, float],
        speculation: asyncio.Task[list[str] | None] | None,
    ) -> None:
        """Whisper over one audio part; events only if the session asked for transcription."""
        host = self._host
        content = item.content[index]
        report = host.cfg.transcription is not None

        async def delta(text: str) -> None:
            if report:
                await host.emit(host.events.transcription_delta(item.id, index, text))

        try:
            parts = await speculation if speculation is not None else None
            if parts is not None:
                for text in parts:
                    await delta(text)
            else:
                parts = await self._recognize(await float_audio(audio), delta)
            content.transcript = "".join(parts).strip()
            marks["stt_done"] = time.monotonic()
            if report:
                seconds = sum(c.size for c in audio) / RATE
                await host.emit(
                    host.events.transcription_completed(item.id, index, content.transcript, seconds)
                )
        except APIError as exc:  # QueueFull, EngineClosed, EngineUnavailable, a client error
            logger.warning("session %s: transcription of %s failed: %r", host.id, item.id, exc)
            content.transcription_error = exc
            if report:
                await host.emit(host.events.transcription_failed(item.id, index, exc))
        except Exception:
            logger.exception("session %s: transcription of %s failed", host.id, item.id)
            content.transcription_error = ServerError("Transcription failed.")
            if report:
                await host.emit(host.events.transcription_failed(item.id, index, content.transcription_error))
        finally:
            if content.transcribed is not None:
                content.transcribed.set()
