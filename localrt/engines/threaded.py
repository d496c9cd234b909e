"""Consume a blocking iterator, run in an engine's worker thread, from asyncio.

Model libraries hand out lazy generators (faster-whisper segments, Piper sentence chunks) that do their
real work when iterated, so the iteration itself must happen in the worker thread. Each item is passed
to the event loop with ``loop.call_soon_threadsafe``. Closing the stream (``aclose``, leaving
``async with``, or dropping the object) sets a ``threading.Event`` that the worker checks between items;
``aclose`` then waits for the worker to finish (shielded from cancellation, with a timeout) so no thread
keeps computing for a client that went away.

The hand-off queue is unbounded on purpose: the inputs are capped (25 MB of audio, 4096 characters of
text), so memory is bounded, and a slow consumer must never park the engine's only worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from contextlib import suppress
from types import TracebackType
from typing import Generic, TypeVar

import anyio

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _End:
    pass


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ThreadedStream(Generic[T]):
    """An async iterator (and async context manager) over ``produce(stop)``, iterated in ``executor``.

    The worker starts at construction, so work begins before the first ``__anext__``. ``produce``
    receives the stop event for libraries that can check it themselves mid-item.
    """

    def __init__(
        self,
        executor: Executor,
        produce: Callable[[threading.Event], Iterable[T]],
        *,
        join_timeout: float = 30.0,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[T | _End | _Failure] = asyncio.Queue()
        self._stop = threading.Event()
        self._join_timeout = join_timeout
        self._finished = False
        # The worker must not hold a reference to `self`, or dropping the stream could not stop it.
        self._future = loop.run_in_executor(executor, _work, loop, self._queue, self._stop, produce)
        weakref.finalize(self, self._stop.set)

    @property
    def stopped(self) -> bool:
        """Whether the worker has been told to stop (the stream was closed or dropped)."""
        return self._stop.is_set()

    @property
    def worker_done(self) -> bool:
        """Whether the worker thread has finished (ran out of items, failed, or stopped)."""
        return self._future.done()

    def __aiter__(self) -> ThreadedStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _End):
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.exc
        return item

    async def aclose(self) -> None:
        """Stop the worker at its next item and wait for it (at most ``join_timeout`` seconds)."""
        self._stop.set()
        self._finished = True
        if self._future.done():
            return
        # The worker reports its own errors through the queue.
        with anyio.move_on_after(self._join_timeout, shield=True) as scope, suppress(Exception):
            await asyncio.shield(self._future)
        if scope.cancelled_caught:
            logger.warning("worker did not stop within %.1f s; leaving it to finish", self._join_timeout)

    async def __aenter__(self) -> ThreadedStream[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _work(
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[T | _End | _Failure],
    stop: threading.Event,
    produce: Callable[[threading.Event], Iterable[T]],
) -> None:
    def emit(item: T | _End | _Failure) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()
            return False
        return True

    try:
        iterator = iter(produce(stop))
        try:
            while not stop.is_set():
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                if not emit(item):
                    break
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
    except BaseException as exc:
        emit(_Failure(exc))
    else:
        emit(_End())
