"""A connected Realtime session: sending input, reading server events, tools and barge-in.

One reader task turns server events into SDK events (``models.py``) on an ``EventQueue``; the app drains
it through ``events()`` (``run()``, or the facade's dispatcher that calls the callbacks). The reader acts
at once on what cannot wait for the app:

- **Interruption.** ``input_audio_buffer.speech_started`` while a reply is playing (audio not yet heard,
  or still being produced): the reply's undelivered audio is dropped, each cut item gets
  ``conversation.item.truncate`` with ``audio_end_ms`` = what was played, and only then ``Interrupted``
  (``on_interrupted``) is queued. Later audio of a cut item is dropped.
- **Tools.** When a response ends with function calls, a task runs them (``on_tool_call`` first, then the
  configured Python function; sync functions in a worker thread), sends each ``function_call_output`` and
  asks for the reply with ``response.create``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from localrt.sdk.callbacks import Handlers
from localrt.sdk.config import Endpoint, PlaybackMode, RealtimeConfig, VADMode
from localrt.sdk.models import (
    BYTES_PER_MS,
    SAMPLE_RATE,
    AudioChunk,
    RealtimeConnectionError,
    RealtimeError,
    RealtimeEvent,
    ResponseDone,
    UserSpeech,
)
from localrt.sdk.playback import EventQueue, PlaybackTracker
from localrt.sdk.session_events import ToolRunner, interrupt, translate

logger = logging.getLogger(__name__)

_PROBES = itertools.count()
SETTLE_S = 0.4  # how long the session must stay idle before run()/exit consider the exchange over


class RealtimeSession:
    """Use through ``RealtimeVoice.connect()``; ``open()`` is the low-level constructor."""

    def __init__(
        self, ws: ClientConnection, config: RealtimeConfig, handlers: Handlers, session: dict[str, Any]
    ) -> None:
        self.ws = ws
        self.config = config
        self.handlers = handlers
        self.session = session
        self.session_id: str | None = session.get("id")
        self.queue = EventQueue()
        self.tracker = PlaybackTracker()
        self.tools = ToolRunner(self)
        self.active_responses: set[str] = set()
        self.expect_response = False
        self.speaking = False
        self.audio_since_turn = 0  # bytes appended since the last commit
        self.transcripts: dict[str, str] = {}  # response_id -> assistant transcript so far
        self.retrievals: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._probes: dict[str, asyncio.Future[None]] = {}
        self.closed = False
        self._idle = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._reader = asyncio.create_task(self._read_loop(), name="realtime-sdk-reader")
        self.update_idle()

    # --- opening -----------------------------------------------------------------------------------------
    @classmethod
    async def open(
        cls, where: Endpoint, config: RealtimeConfig, handlers: Handlers, timeout: float = 10.0
    ) -> RealtimeSession:
        """Connect, wait for ``session.created``, apply ``config`` and wait for ``session.updated``.
        Raises ``RealtimeConnectionError`` when the server cannot be reached or refuses the connection,
        ``RealtimeError`` when it refuses the settings."""
        try:
            ws = await connect(
                where.url, additional_headers=where.headers, max_size=None, open_timeout=timeout
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise RealtimeConnectionError(f"cannot connect to {where.url}: {exc}") from exc
        try:
            await _expect(ws, "session.created", timeout, RealtimeConnectionError)
            await ws.send(json.dumps({"type": "session.update", "session": config.session_update()}))
            updated = await _expect(ws, "session.updated", timeout, RealtimeError)
        except BaseException:
            await ws.close()
            raise
        return cls(ws, config, handlers, updated["session"])

    # --- sending -----------------------------------------------------------------------------------------
    async def send(self, event: dict[str, Any]) -> None:
        """Send one client event as it is."""
        if self.closed:
            raise RealtimeConnectionError("the session is closed")
        try:
            await self.ws.send(json.dumps(event))
        except ConnectionClosed as exc:
            raise RealtimeConnectionError(f"connection closed: {exc}") from exc

    async def send_audio(self, audio: bytes) -> None:
        """Append microphone audio: pcm16, mono, 24 kHz, little-endian (an even number of bytes)."""
        if len(audio) % 2:
            raise ValueError("pcm16 audio needs an even number of bytes")
        if not audio:
            return
        self.audio_since_turn += len(audio)
        await self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()})

    async def send_text(self, text: str, *, respond: bool = True) -> None:
        """Add a user message and (``respond``) ask for a reply."""
        self.tools.new_turn()
        content = [{"type": "input_text", "text": text}]
        await self.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": content},
            }
        )
        if respond:
            await self.create_response()

    async def commit(self) -> None:
        """End the user's turn by hand (``VADMode.MANUAL``): the appended audio becomes a user item."""
        self.audio_since_turn = 0
        await self.send({"type": "input_audio_buffer.commit"})

    async def create_response(self, **overrides: Any) -> None:
        """Ask for a reply; ``overrides`` are ``response.create``'s ``response`` fields."""
        self.expect_response = True
        self.update_idle()
        event: dict[str, Any] = {"type": "response.create"}
        if overrides:
            event["response"] = overrides
        await self.send(event)

    async def cancel_response(self) -> None:
        if self.active_responses:
            await self.send({"type": "response.cancel"})

    async def interrupt(self) -> bool:
        """Barge in by hand (push-to-talk): cancel the reply, truncate it to what was played and call
        ``on_interrupted``. False when nothing was playing."""
        await self.cancel_response()
        return await interrupt(self)

    def played(
        self, samples: int | None = None, *, ms: float | None = None, item_id: str | None = None
    ) -> None:
        """Report playback (``PlaybackMode.MANUAL``): ``samples`` (24 kHz) or ``ms`` more of the reply were
        heard, of ``item_id`` (an ``AudioChunk.item_id``) or of the oldest unheard audio. Safe to call from
        another thread (a sound card's callback)."""
        if (samples is None) == (ms is None):
            raise ValueError("pass samples= or ms=")
        count = samples if samples is not None else round((ms or 0.0) * SAMPLE_RATE / 1000)
        if count < 0:
            raise ValueError("played audio must be >= 0")
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self.tracker.played(count, item_id)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.tracker.played, count, item_id)

    async def retrieve_item(self, item_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The server's copy of an item (``conversation.item.retrieve``), audio included."""
        future = self.retrievals.get(item_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self.retrievals[item_id] = future
            await self.send({"type": "conversation.item.retrieve", "item_id": item_id, "event_id": item_id})
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            if future.done():
                self.retrievals.pop(item_id, None)

    # --- waiting -----------------------------------------------------------------------------------------
    def busy(self) -> bool:
        return bool(
            self.active_responses
            or self.expect_response
            or self.speaking
            or self.tools.running
            or len(self.queue)
        )

    def update_idle(self) -> None:
        if self.busy() and not self.closed:
            self._idle.clear()
        else:
            self._idle.set()

    async def wait_idle(self, timeout: float | None = None, settle: float = SETTLE_S) -> None:
        """Wait until nothing is pending (no reply, tool call, user speech or undelivered event) and it
        stayed so for ``settle`` seconds. Raises ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout):
            while True:
                await self._idle.wait()
                if self.closed:
                    return
                await asyncio.sleep(settle)
                if not self.busy():
                    return

    async def finish(self, timeout: float | None = 60.0) -> None:
        """End the input and wait for the exchange to finish. ``MANUAL``: commit the appended audio and
        ask for a reply. ``SERVER``: append enough silence for the VAD to close an open turn."""
        if self.closed:
            return
        if self.config.vad_mode is VADMode.MANUAL:
            if self.audio_since_turn >= 100 * BYTES_PER_MS:
                await self.commit()
                await self.create_response()
        elif self.audio_since_turn:
            silence_ms = self.config.vad_silence_duration_ms + 300
            await self.send_audio(bytes(silence_ms * BYTES_PER_MS))
            self.audio_since_turn = 0
        async with asyncio.timeout(timeout):
            await self._round_trip()
            await self.wait_idle()

    async def _round_trip(self) -> None:
        """Wait until the server answered an event sent after everything so far (a retrieve of an item
        that does not exist; its ``error`` is not reported). A server that handles events in order (localrt)
        has then run its VAD over all the audio sent: input sent faster than real time is not cut short."""
        probe = f"sdk_probe_{next(_PROBES)}"
        future: asyncio.Future[None] = self._loop.create_future()
        self._probes[probe] = future
        try:
            await self.send({"type": "conversation.item.retrieve", "item_id": probe, "event_id": probe})
            await future
        finally:
            self._probes.pop(probe, None)

    # --- receiving ---------------------------------------------------------------------------------------
    async def events(self) -> AsyncGenerator[RealtimeEvent, None]:
        """Every SDK event, once its callbacks ran; in ``PlaybackMode.AUTO`` a chunk counts as played when
        the loop comes back for the next event."""
        while True:
            event = await self.queue.get()
            if event is None:
                return
            await self.handlers.dispatch(event)
            yield event
            if isinstance(event, AudioChunk) and event.item_id and self.config.playback is PlaybackMode.AUTO:
                self.tracker.played(event.samples, event.item_id)
            self.update_idle()

    async def _read_loop(self) -> None:
        try:
            async for raw in self.ws:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    await self._handle(event)
                    self.update_idle()
        except ConnectionClosed:
            pass
        except Exception as exc:  # a bug here must not hang the app: report it and end the session
            logger.exception("realtime reader failed")
            self.queue.put(RealtimeError(f"SDK reader failed: {exc!r}"))
        finally:
            if not self.closed:
                code, reason = self.ws.close_code, self.ws.close_reason
                self.queue.put(RealtimeConnectionError(f"connection closed by the server ({code} {reason})"))
            self.closed = True
            for future in self.retrievals.values():
                if not future.done():
                    future.set_exception(RealtimeConnectionError("connection closed"))
            for probe in self._probes.values():
                if not probe.done():
                    probe.set_result(None)
            self.queue.close()
            self.update_idle()

    async def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "error":
            err = RealtimeError.from_event(event)
            probe = self._probes.get(err.event_id or "")
            if probe is not None:
                if not probe.done():
                    probe.set_result(None)
                return
            self.expect_response = False
            future = self.retrievals.get(err.event_id or "")
            if future is not None and not future.done():
                future.set_exception(err)
            self.queue.put(err)
        elif kind == "conversation.item.retrieved":
            item = event.get("item") or {}
            future = self.retrievals.get(str(item.get("id")))
            if future is not None and not future.done():
                future.set_result(item)
        elif kind == "session.updated":
            self.session = event.get("session") or self.session
        elif kind == "input_audio_buffer.speech_started":
            self.speaking = True
            self.tools.new_turn()
            if self.config.interrupt_response:
                await interrupt(self)
            self.queue.put(UserSpeech(True, event.get("item_id")))
        elif kind == "input_audio_buffer.speech_stopped":
            self.speaking = False
            self.queue.put(UserSpeech(False, event.get("item_id")))
        elif kind == "input_audio_buffer.committed":
            self.audio_since_turn = 0
            if self.config.vad_mode is VADMode.SERVER:
                self.expect_response = True
        elif kind == "response.created":
            self.expect_response = False
            self.active_responses.add(str(event.get("response", {}).get("id")))
        elif kind == "response.done":
            self._response_done(event.get("response") or {})
        else:
            for out in translate(self, event):
                self.queue.put(out)

    def _response_done(self, response: dict[str, Any]) -> None:
        rid = str(response.get("id"))
        self.active_responses.discard(rid)
        self.tracker.response_done(rid)
        status = str(response.get("status") or "completed")
        details = response.get("status_details") or {}
        if status == "failed" and isinstance(details.get("error"), dict):
            self.queue.put(RealtimeError.from_event(details))
        self.queue.put(ResponseDone(rid, status, self.transcripts.pop(rid, "")))
        calls = [o for o in response.get("output") or [] if o.get("type") == "function_call"]
        if calls and status == "completed":
            self.tools.start(calls)

    # --- closing -----------------------------------------------------------------------------------------
    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.ws.close()
        await self.tools.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self.queue.close()
        self.update_idle()


async def _expect(
    ws: ClientConnection, kind: str, timeout: float, error: type[RealtimeError]
) -> dict[str, Any]:
    """The next event of type ``kind`` (others before it are skipped); an ``error`` raises ``error``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = json.loads(await ws.recv())
                if event.get("type") == "error":
                    raise error.from_event(event)
                if event.get("type") == kind:
                    return dict(event)
    except TimeoutError as exc:
        raise RealtimeConnectionError(f"no {kind} within {timeout} s") from exc
    except ConnectionClosed as exc:
        raise RealtimeConnectionError(f"connection closed before {kind}: {exc}") from exc
