"""Engine streams started before anyone asks for them: a speculative reply's LLM job and first clause of
speech (:mod:`.speculation`), held in a buffer until the turn's response claims them (it then replays what
was produced and follows the stream live) or they are discarded."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, Generic, TypeVar

from localrt.engines.scheduler import Priority
from localrt.engines.types import AudioChunk, ChatResult

__all__ = ["Held", "HeldChat", "HeldSpeech", "call"]

T = TypeVar("T")


class Held(Generic[T]):
    """An engine stream started before anyone asked for it: a task reads it into a buffer, which a
    claimant then replays and follows. Cancelling the task leaves the stream (never waits)."""

    def __init__(
        self,
        stream: Any,
        name: str,
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
        on_item: Callable[[T], None] | None = None,
    ) -> None:
        self.stream = stream
        self.items: list[T] = []
        self.error: BaseException | None = None
        self.done = False
        self.started_at: float | None = None  # the engine began (the job left its queue)
        self.first_at: float | None = None  # its first item
        self.ended_at: float | None = None
        self.entered = asyncio.Event()
        self._changed = asyncio.Event()
        self._on_item = on_item
        self.task = spawn(self._pump(), name)  # a task of the session: torn down with it

    async def _pump(self) -> None:
        try:
            await self.stream.__aenter__()
            self.started_at = time.monotonic()
            self.entered.set()
            async for item in self.stream:
                if self.first_at is None:
                    self.first_at = time.monotonic()
                self.items.append(item)
                self._changed.set()
                if self._on_item is not None:
                    self._on_item(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # raised to the claimant, where a response reports it
            self.error = exc
        finally:
            self.done = True
            self.ended_at = time.monotonic()
            self.entered.set()
            self._changed.set()
            with contextlib.suppress(Exception):
                await self.stream.__aexit__(None, None, None)  # cancels the job if it is still going

    async def started(self) -> None:
        """Wait until the stream was entered; raise what entering it raised (QueueFull, context length)."""
        await self.entered.wait()
        if self.started_at is None and self.error is not None:
            raise self.error

    def seconds(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.started_at

    def promote(self) -> None:
        promote = getattr(self.stream, "promote", None)
        if promote is not None:
            promote(Priority.REALTIME)

    def cancel(self) -> None:
        cancel = getattr(self.stream, "cancel", None)
        if cancel is not None:
            cancel()  # thread safe: the worker stops at its next token or chunk
        self.task.cancel()

    async def replay(self) -> AsyncIterator[T]:
        i = 0
        while True:
            if i < len(self.items):
                i += 1
                yield self.items[i - 1]
                continue
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            self._changed.clear()
            if i >= len(self.items) and not self.done:
                await self._changed.wait()


class HeldChat:
    """A held chat job as the response sees it (a :class:`~localrt.engines.interfaces.ChatJob`)."""

    def __init__(self, held: Held[Any]) -> None:
        self._held = held
        self._events = held.replay()

    @property
    def result(self) -> ChatResult:
        result: ChatResult = self._held.stream.result
        return result

    @result.setter
    def result(self, value: ChatResult) -> None:
        self._held.stream.result = value

    @property
    def prompt_text(self) -> str:
        return str(self._held.stream.prompt_text)

    @prompt_text.setter
    def prompt_text(self, value: str) -> None:
        self._held.stream.prompt_text = value

    def cancel(self) -> None:
        self._held.cancel()

    def hold(self) -> None:
        call(self._held.stream, "hold")

    def release(self) -> None:
        call(self._held.stream, "release")

    async def __aenter__(self) -> HeldChat:
        await self._held.started()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._held.done:
            self._held.cancel()

    def __aiter__(self) -> HeldChat:
        return self

    async def __anext__(self) -> Any:
        return await self._events.__anext__()


class HeldSpeech:
    """A held synthesis as the speech writer sees it (an :class:`ItemStream` of audio chunks)."""

    def __init__(self, held: Held[AudioChunk]) -> None:
        self._held = held
        self._chunks = held.replay()

    async def __aenter__(self) -> HeldSpeech:
        await self._held.started()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if not self._held.done:
            self._held.cancel()

    def __aiter__(self) -> HeldSpeech:
        return self

    async def __anext__(self) -> AudioChunk:
        return await self._chunks.__anext__()


def call(stream: Any, method: str) -> None:
    """``stream.<method>()`` where the engine's stream has it (a local chat job's hold / release)."""
    fn = getattr(stream, method, None)
    if fn is not None:
        fn()
