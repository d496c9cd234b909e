"""Graceful shutdown: drain in-flight work with proper endings, then let uvicorn stop.

uvicorn's own shutdown, on SIGTERM, closes every WebSocket at once with code 1012 and gives HTTP requests
``timeout_graceful_shutdown`` seconds before cancelling them (a chat stream is cut with no final frame,
a transcription gets a 500 and a traceback). localrt drains first instead:

1. :class:`Server` (a ``uvicorn.Server``) stops listening and sets the app's :class:`Lifecycle` to
   draining, before uvicorn's shutdown runs.
2. Everything in flight has registered what to do then (:meth:`Lifecycle.on_drain`): a realtime session
   cancels its responses (each ends with ``response.done``, status ``cancelled``) and closes with 1001; a
   streamed chat or speech stops its engine within a token or a chunk and ends with a final error frame;
   a request waiting for a whole answer (a transcription, a non-streamed chat) is answered 503.
3. :class:`DrainMiddleware` answers requests that arrive meanwhile (on a kept-alive connection) with 503
   and counts what is in flight; the server waits until that count is zero, at most
   ``settings.shutdown_timeout_s``, then hands over to uvicorn's shutdown, which has little left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

SHUTTING_DOWN = "The server is shutting down; retry on another instance or after it restarts."
# uvicorn's own graceful window, after localrt's drain: only connections that ignored the drain are left.
UVICORN_GRACE_S = 1


class Lifecycle:
    """Whether the server is draining, what to do when it starts, and how much is still in flight.

    Used from the event loop only (``begin_drain`` is called by :class:`Server` on the loop).
    """

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._drained = asyncio.Event()  # set when draining starts
        self._idle = asyncio.Event()
        self._idle.set()

    def on_drain(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (sync, on the loop) when draining starts, at once if it already has.

        Returns a function that unregisters it; call it when the work is done.
        """
        if self.draining:
            callback()
            return lambda: None
        key = self._next
        self._next += 1
        self._callbacks[key] = callback

        def unregister() -> None:
            self._callbacks.pop(key, None)

        return unregister

    @contextlib.contextmanager
    def draining_calls(self, callback: Callable[[], None]) -> Iterator[None]:
        """``on_drain(callback)`` for the duration of a ``with`` block."""
        unregister = self.on_drain(callback)
        try:
            yield
        finally:
            unregister()

    async def wait_draining(self) -> None:
        await self._drained.wait()

    def begin_drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        self._drained.set()
        callbacks, self._callbacks = list(self._callbacks.values()), {}
        logger.info("draining: %d requests and sessions in flight", self.active)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one bad callback must not stop the others
                logger.exception("drain callback failed")

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count one request or session in flight."""
        self.active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight (at most ``timeout`` s); whether it got there."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


class DrainMiddleware:
    """Counts requests and sessions in flight; while draining, answers new ones with 503."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.lifecycle.draining:
            await _refuse(scope, receive, send)
            return
        with self.lifecycle.track():
            await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    body = json.dumps(
        {
            "error": {
                "message": SHUTTING_DOWN,
                "type": "server_error",
                "param": None,
                "code": "server_shutting_down",
            }
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"5"), (b"connection", b"close")]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    message: Message = await receive()  # websocket.connect
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": 503, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1001, "reason": "server shutting down"})


class Server(uvicorn.Server):
    """uvicorn's server, draining the app's :class:`Lifecycle` before its own shutdown."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle | None, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_timeout_s = drain_timeout_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.lifecycle is not None:
            started = time.monotonic()
            for server in getattr(self, "servers", []):
                server.close()  # stop accepting; uvicorn's shutdown closes them again harmlessly
            self.lifecycle.begin_drain()
            if not await self.lifecycle.wait_idle(self.drain_timeout_s):
                logger.warning(
                    "%d requests or sessions still in flight after %.1f s; closing them",
                    self.lifecycle.active,
                    self.drain_timeout_s,
                )
            logger.info("drained in %.2f s", time.monotonic() - started)
        await super().shutdown(sockets)
