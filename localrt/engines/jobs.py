"""A job of an engine's :class:`~localrt.engines.scheduler.Scheduler`, as both sides see it.

:class:`Job` is the caller's handle on the event loop (an async iterator of the job's items);
:class:`JobState` is what the scheduler's queue and workers hold. The handle is the only owner of
itself: dropping it without closing it cancels the job (a finalizer), because the scheduler holds
only the state. :class:`JobControl` is the producer's view in the worker thread. The errors a job's
caller sees from its scheduler (:class:`QueueFull`, :class:`EngineClosed`) and the scheduler's
:class:`SchedulerStats` live here too; :mod:`.scheduler` exports them.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from localrt.errors import RateLimited, ServiceUnavailable

T = TypeVar("T")


class QueueFull(RateLimited):
    """429: the engine's queue is full."""


class EngineClosed(ServiceUnavailable):
    """503: the engine was closed (shut down or evicted) before or while the job ran."""


@dataclass(frozen=True)
class SchedulerStats:
    engine: str
    slots: int
    max_queue: int
    queued: int
    running: int
    preempted: int
    completed: int
    rejected: int
    queued_by_priority: dict[str, int] = field(default_factory=dict)


class Priority(IntEnum):
    """Lower runs first."""

    REALTIME = 0  # a voice turn someone is waiting to hear
    SPECULATIVE = 1  # a reply computed in a pause that may not end the turn (promoted if it does)
    HTTP = 2  # an API request
    BULK = 3  # long work nobody waits on interactively (long transcriptions)


Outcome = str  # "ok" | "error" | "cancelled" | "closed"


@dataclass(frozen=True)
class JobRecord:
    """What a finished job cost, for metrics: seconds queued and seconds run."""

    engine: str
    priority: Priority
    waited_s: float
    ran_s: float
    outcome: Outcome


JobObserver = Callable[[JobRecord], None]
_job_observers: tuple[JobObserver, ...] = ()  # process-wide (metrics); copy-on-write, read unlocked
_observers_lock = threading.Lock()


def add_job_observer(fn: JobObserver) -> None:
    """Call ``fn(record)`` (quick, thread safe, never raising into a job) for every finished job."""
    global _job_observers
    with _observers_lock:
        _job_observers = (*_job_observers, fn)


def remove_job_observer(fn: JobObserver) -> None:
    """Undo one :func:`add_job_observer` (by ``==``: a fresh bound method matches)."""
    global _job_observers
    with _observers_lock:
        observers = list(_job_observers)
        if fn in observers:
            observers.remove(fn)
        _job_observers = tuple(observers)


def job_observers() -> tuple[JobObserver, ...]:
    return _job_observers


class InteractiveBoard:
    """How many realtime jobs run right now in engines that share the CPU (process-wide)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0

    @property
    def active(self) -> int:
        return self._active  # a racy read is fine: pausing is advisory

    def enter(self) -> None:
        with self._cond:
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0:
                self._cond.notify_all()

    def wait_quiet(self, timeout: float) -> bool:
        """Wait until no interactive job runs (True) or ``timeout`` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._active == 0, timeout)


INTERACTIVE = InteractiveBoard()
# Every job running now in an engine that shares the CPU, whatever its priority, but for one suspended
# while others run in its place (the chat model reads it to choose its threads before each evaluation).
CPU_JOBS = InteractiveBoard()


class _Host(Protocol):
    """What a job needs of its scheduler."""

    def _should_yield(self, priority: Priority) -> bool: ...

    def _yield(self, control: JobControl) -> int: ...

    def _cancel_entry(self, control: JobControl) -> None: ...

    def _promote(self, control: JobControl, priority: Priority) -> None: ...

    def _queued(self) -> bool: ...


class JobControl(threading.Event):
    """A job's stop flag (set: stop) and its preemption points, used by the producer in the worker."""

    def __init__(self, scheduler: _Host, priority: Priority) -> None:
        super().__init__()
        self._scheduler = scheduler
        self.priority = priority
        self._released = threading.Event()  # cleared while the job is held (hold / release)
        self._released.set()

    def set(self) -> None:
        """Stop (also ends a hold)."""
        super().set()
        self._released.set()

    def hold(self) -> None:
        """Ask the producer to pause at its next piece until :meth:`release` (thread safe): a realtime
        response holds its chat job while the first clause's speech is synthesized, so that speech gets
        the CPU instead of sharing it with the rest of the reply's tokens."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    @property
    def held(self) -> bool:
        return not self._released.is_set()

    def wait_released(self, timeout: float) -> None:
        """In the worker, at a piece boundary: wait while the job is held, for at most ``timeout``.
        Returns early when it is released or stopped, or when another job waits for this engine (a
        held job never keeps a slot from anyone)."""
        deadline = time.monotonic() + timeout
        while self.held and not self.is_set() and not self._scheduler._queued():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._released.set()  # a hold nobody released costs one wait, not one per piece
                return
            self._released.wait(min(0.01, remaining))

    def stopped(self) -> bool:
        return self.is_set()

    def should_yield(self) -> bool:
        """Whether a job of a strictly higher priority is waiting for this job's slot, or (for work
        below realtime priority) an interactive job is running in another engine on the same CPU."""
        return self._scheduler._should_yield(self.priority)

    def yield_now(self) -> int:
        """Run every waiting job of a strictly higher priority here, now, then pause while interactive
        work runs elsewhere (at most a few seconds); return how many jobs ran here.

        The caller's own state must be saved first if those jobs can change it (an LLM's context)."""
        return self._scheduler._yield(self)


class End:
    """The job's last item: it ended normally (or was cancelled)."""


class Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


Produce = Callable[[JobControl], Iterable[T]]


class JobState(Generic[T]):
    """The worker side of a job: its producer, stop flag and the hand-off to the event loop."""

    def __init__(
        self,
        host: _Host,
        produce: Produce[T],
        priority: Priority,
        preemptible: bool,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.priority = priority
        self.preemptible = preemptible
        self.control = JobControl(host, priority)
        self.submitted = time.monotonic()
        self.started: float | None = None
        self.interactive = False  # counted on the INTERACTIVE board while it runs (scheduler's lock)
        self.finished = False
        self.produce: Produce[T] | None = produce
        self.queue: asyncio.Queue[T | End | Failure] = asyncio.Queue()
        self.done = threading.Event()  # the worker is finished with it (or it never started)
        self._loop = loop

    def emit(self, item: T | End | Failure) -> bool:
        """Hand ``item`` to the event loop (thread safe); False when nobody can listen any more."""
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            self.control.set()
            return False
        return True


class Job(Generic[T]):
    """A submitted job as the event loop sees it: an async iterator of its items.

    ``async with job: async for item in job: ...``; leaving early, ``aclose`` or dropping the handle
    cancels it without waiting. A failure in the producer is raised from the iterator, as is
    :class:`~localrt.engines.scheduler.EngineClosed`.
    """

    def __init__(self, host: _Host, state: JobState[T]) -> None:
        self._host = host
        self._state = state
        self.priority = state.priority
        self.control = state.control
        self._finished = False  # the consumer saw the end (or cancelled)
        weakref.finalize(self, host._cancel_entry, state.control)

    @property
    def stopped(self) -> bool:
        """Whether the job was told to stop (closed, dropped or its engine closed)."""
        return self.control.is_set()

    @property
    def worker_done(self) -> bool:
        """Whether no worker is (or will be) running this job any more."""
        return self._state.done.is_set()

    def __aiter__(self) -> Job[T]:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        item = await self._state.queue.get()
        if isinstance(item, End):
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, Failure):
            self._finished = True
            raise item.exc
        return item

    async def aclose(self) -> None:
        """Cancel: a queued job leaves the queue now; a running one stops at its next item. No wait."""
        self._finished = True
        self._host._cancel_entry(self.control)

    def cancel(self) -> None:
        """Like :meth:`aclose`, callable from anywhere (thread safe, idempotent)."""
        self._host._cancel_entry(self.control)

    def hold(self) -> None:
        """Pause the producer at its next piece until :meth:`release` (see :meth:`JobControl.hold`)."""
        self.control.hold()

    def release(self) -> None:
        self.control.release()

    def promote(self, priority: Priority) -> None:
        """Raise the job's priority (a speculative reply whose turn was confirmed): a queued job moves
        up the queue, a running one is preempted only by jobs above its new priority."""
        if priority < self.priority:
            self.priority = priority
            self._host._promote(self.control, priority)

    async def wait_done(self, timeout: float | None = None) -> bool:
        """Wait (without blocking the loop) until no worker runs this job; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._state.done.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def __aenter__(self) -> Job[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
