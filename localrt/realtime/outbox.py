"""The sending side of a realtime socket: the single writer, and the closes the server decides.

- Every server event goes through one bounded queue drained by one writer task, so the order on the
  wire is the order events were emitted in, and a client that stops reading eventually blocks the
  producers instead of growing memory. Each event is encoded by :func:`~.server_events.encode`, which
  never fails and never produces more than 1 MiB, so one bad event cannot end the session.
- :meth:`Outbox.close` sends a last ``error`` after what is queued, then the close frame.
- :meth:`Outbox.watch` is the session's clock: no client event for ``idle_s`` seconds (the reader calls
  :meth:`Outbox.touch` on each) gives ``error`` ``session_idle_timeout`` then close 1008; reaching the
  session's ``expires_at`` gives ``error`` ``session_expired`` (OpenAI's code and message) then 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect

from localrt.errors import APIError, InvalidRequest
from localrt.realtime.server_events import Event, ServerEvents, encode

logger = logging.getLogger(__name__)

OUTBOUND_QUEUE = 1024  # events waiting for the writer
CLOSE_GRACE_S = 5.0  # for the last events to go out before a close the server decides
CLOSE_POLICY = 1008  # idle or expired


@dataclass
class _Outbound:
    event: Event | None  # None: close the socket with ``close`` (after what is queued before it)
    on_sent: Callable[[], None] | None = None
    close: tuple[int, str] | None = None


class Outbox:
    def __init__(self, ws: WebSocket, events: ServerEvents, session_id: str) -> None:
        self._ws = ws
        self._events = events
        self._id = session_id
        self._queue: asyncio.Queue[_Outbound] = asyncio.Queue(maxsize=OUTBOUND_QUEUE)
        self._done = asyncio.Event()
        self._last_event = time.monotonic()

    async def put(self, event: Event | None, on_sent: Callable[[], None] | None = None) -> None:
        """Queue a server event (None: an event this dialect does not have)."""
        if event is not None:
            await self._queue.put(_Outbound(event, on_sent))

    async def run(self) -> None:
        """The writer: returns when the client is gone or the socket has been closed."""
        try:
            while True:
                out = await self._queue.get()
                try:
                    if out.event is None:
                        if out.close is not None:
                            await self._ws.close(*out.close)
                        return
                    await self._ws.send_text(encode(out.event, self._events, self._id))
                except (OSError, RuntimeError, WebSocketDisconnect):  # the client is gone: the session ends
                    logger.debug("session %s: send failed, client gone", self._id)
                    return
                if out.on_sent is not None:
                    out.on_sent()
        finally:
            self._done.set()

    async def close(self, code: int, err: APIError | None = None) -> None:
        """Send ``err`` (if any) after the events already queued, then close the socket with ``code``.

        Returns once the writer has closed it, or after :data:`CLOSE_GRACE_S` when the client does not
        read (the close is then sent at once).
        """
        reason = (f"{err.type}.{err.code}" if err is not None else "")[:120]

        async def flush_and_close() -> None:
            if err is not None:
                await self.put(self._events.error(err))
            await self._queue.put(_Outbound(None, close=(code, reason)))
            await self._done.wait()

        try:
            await asyncio.wait_for(flush_and_close(), CLOSE_GRACE_S)
        except asyncio.TimeoutError:
            logger.info("session %s: client not reading; closing without the last events", self._id)
            with contextlib.suppress(OSError, RuntimeError, WebSocketDisconnect, asyncio.TimeoutError):
                await asyncio.wait_for(self._ws.close(code, reason), CLOSE_GRACE_S)

    # --- the clock -----------------------------------------------------------------------------------------
    def touch(self) -> None:
        """A client event arrived."""
        self._last_event = time.monotonic()

    async def watch(self, idle_s: float, lifetime_s: float) -> None:
        """Close the session after ``idle_s`` without a client event, or ``lifetime_s`` after now."""
        deadline = time.monotonic() + lifetime_s
        while True:
            now = time.monotonic()
            if now >= deadline:
                err = InvalidRequest(
                    f"Your session hit the maximum duration of {lifetime_s / 60:g} minutes.",
                    code="session_expired",
                )
                break
            if now >= self._last_event + idle_s:
                err = InvalidRequest(
                    f"The session was closed after {idle_s:g} seconds without a client event "
                    "(--realtime-idle-timeout-s).",
                    code="session_idle_timeout",
                )
                break
            await asyncio.sleep(min(deadline, self._last_event + idle_s) - now + 0.01)
        logger.info("session %s: %s", self._id, err.code)
        await self.close(CLOSE_POLICY, err)
