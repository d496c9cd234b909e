"""A chat model's generation job as the event loop sees it: the stream of one reply, and its types.

A job (:data:`Work`) is a generator run by the model's :class:`~localrt.engines.scheduler.Scheduler` in
its worker thread: it prepares its prompt, yields :class:`Ready`, then events, then exactly one
:class:`ChatResult`. :class:`ChatStream` is how the event loop consumes it: entering it submits the job
(raising QueueFull at once when the model's queue is full) and waits for ``Ready``, so whatever preparing
the prompt raised is raised there, before any event (and a route can still answer with a plain 400).

Leaving the stream never waits: a job still queued leaves the queue at once, a running one is told to
stop (within a token) and the next job starts when it has. See :mod:`localrt.engines.llm`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from localrt.engines.chat_format import ToolPlan
from localrt.engines.llm_prompt import Cancelled
from localrt.engines.scheduler import Job, JobControl, Priority, Scheduler
from localrt.engines.types import (
    ChatResult,
    SamplingParams,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)

__all__ = [
    "ChatRequest",
    "ChatResult",
    "ChatStream",
    "Event",
    "Item",
    "Ready",
    "SamplingParams",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "Work",
]


@dataclass
class Ready:
    """The job's prompt is ready and generation starts (the first item of every job)."""

    prompt_text: str = ""  # a completions prompt as text (token-id prompts are detokenized)
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the model's context


@dataclass
class ChatRequest:
    """A chat job's input, as the worker gets it (``messages`` is rendered there, not on the loop)."""

    messages: list[dict[str, Any]]
    plan: ToolPlan
    params: SamplingParams
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    truncate_history: bool = False
    cache_key: str | None = None


Event = TextDelta | ToolCallDelta
Item = Ready | Event | ChatResult
# A job's body: runs in the worker thread, prepares the prompt, yields Ready, then events and finally
# exactly one ChatResult. The JobControl is its stop flag (set: stop) and its preemption point.
Work = Callable[[JobControl], Iterator[Item]]


class ChatStream:
    """One generation, consumed on the event loop: ``async with s: async for event in s: ...``.

    Entering queues the job (QueueFull or EngineClosed at once) and returns once its prompt is ready,
    raising what preparing it raised (ContextLengthExceeded, InvalidRequest). ``result`` is set once
    iteration ends (its prompt and cached token counts as soon as the prompt is ready, so a cancelled
    reply still reports them). Leaving early, or cancelling the task waiting in ``__aenter__``, cancels
    the job without waiting for anything.
    """

    def __init__(self, scheduler: Scheduler, work: Work, *, priority: Priority = Priority.HTTP) -> None:
        self._scheduler = scheduler
        self._work: Work | None = work
        self._priority = priority
        self._cancel = threading.Event()
        self._job: Job[Item] | None = None
        self._first: Event | None = None  # an event that came before Ready (a job without one)
        self.result = ChatResult()
        self.prompt_text = ""
        self._hold = False  # held before the job was queued: applied once it is

    @property
    def priority(self) -> Priority:
        return self._priority

    def cancel(self) -> None:
        """Stop generating at the next token, or leave the queue (thread safe, idempotent)."""
        self._cancel.set()
        job = self._job
        if job is not None:
            job.cancel()

    def hold(self) -> None:
        """Pause generating before the next token until :meth:`release` (see :meth:`Job.hold`)."""
        self._hold = True
        if self._job is not None:
            self._job.hold()

    def release(self) -> None:
        self._hold = False
        if self._job is not None:
            self._job.release()

    def promote(self, priority: Priority) -> None:
        """Raise the job's priority, queued or running (see :meth:`Job.promote`)."""
        if priority < self._priority:
            self._priority = priority
            if self._job is not None:
                self._job.promote(priority)

    async def __aenter__(self) -> ChatStream:
        work, self._work = self._work, None
        if work is None:
            raise RuntimeError("a ChatStream can be entered once")
        if self._cancel.is_set():  # cancelled before it was queued: iteration ends at once
            return self
        cancel = self._cancel  # the worker holds no reference to self

        def produce(control: JobControl) -> Iterator[Item]:
            if cancel.is_set():
                return
            try:
                yield from work(control)
            except Cancelled:
                return

        self._job = job = self._scheduler.submit(produce, priority=self._priority)
        if cancel.is_set():  # cancel() ran before the job existed
            job.cancel()
        if self._hold:  # hold() ran before the job existed
            job.hold()
        try:
            first = await job.__anext__()
        except StopAsyncIteration:  # stopped before it started: iteration ends at once
            return self
        except BaseException:  # a prompt error, cancelled while queued, or the engine closed
            job.cancel()
            raise
        self._take(first)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel without waiting: a queued job leaves the queue, a running one stops within a token."""
        self._cancel.set()
        if self._job is not None:
            await self._job.aclose()

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> Event:
        if self._work is not None:
            raise RuntimeError("enter the stream with `async with` before iterating it")
        if self._job is None:
            raise StopAsyncIteration
        if self._first is not None:
            event, self._first = self._first, None
            return event
        while True:
            item = await self._job.__anext__()
            if isinstance(item, (TextDelta, ToolCallDelta)):
                return item
            self._take(item)

    def _take(self, item: Item) -> None:
        if isinstance(item, (TextDelta, ToolCallDelta)):
            self._first = item
        elif isinstance(item, ChatResult):
            self.result = item
        elif isinstance(item, Ready):
            self.prompt_text = item.prompt_text
            self.result = ChatResult(prompt_tokens=item.prompt_tokens, cached_tokens=item.cached_tokens)
