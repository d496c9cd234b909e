"""One scheduler per engine: priorities, a bounded queue, slots, and cancellation of queued work.

Every job an engine runs (an LLM generation, a transcription, a synthesis, a VAD window batch) goes
through the engine's :class:`Scheduler`:

- A job carries a :class:`Priority`: interactive realtime turns before HTTP requests, before bulk work
  (long transcriptions). Within a priority, jobs run in arrival order.
- The queue of waiting jobs is bounded (``max_queue``). Over it, :meth:`Scheduler.submit` raises
  :class:`QueueFull` (HTTP 429 with ``Retry-After``; a realtime ``error`` event) at once: never a hang.
- ``slots`` worker threads run jobs; at most ``slots`` jobs run at once (1 for in-process llama.cpp).
- A job is produced by ``produce(control)``, a blocking iterator run in a worker thread; each item is
  handed to the event loop. :class:`JobControl` is a ``threading.Event`` (set: stop) that the producer
  checks between items and native calls.
- Cancelling (``aclose`` or dropping the :class:`Job`) removes a queued job from the queue at once; a
  running job is told to stop and ends within one item (a token, an audio chunk). Cancelling never
  waits: the slot is released by the worker when it has stopped, and the next job in the queue starts
  then; a cancelled caller is never held by somebody else's job.
- Preemption: long work is cut into pieces. After each item of a ``preemptible`` job (and wherever a
  producer calls :meth:`JobControl.yield_now`), waiting jobs of a strictly higher priority run first,
  in the same worker thread, nested: so a voice turn waits at most one piece of a long transcription.
  Nesting keeps per-thread state (stop signals, a model's context) strictly stack-ordered.
- Across engines: the engines share the machine's cores, so a voice turn's LLM stage would still compete
  with a bulk transcription running in the Whisper engine. While any realtime or speculative job (a voice
  turn's reply computed in the user's pause) runs in an engine that shares the CPU (every one but the VAD
  and the turn model, whose jobs are a few milliseconds), HTTP and bulk work pauses at its next
  preemption point (:data:`INTERACTIVE`), for at most :data:`MAX_PAUSE_S` at a time so that a stream of
  voice turns cannot starve it completely.
- Closing the scheduler (an engine closed or evicted) ends every queued and running job with
  :class:`EngineClosed`, which its caller sees as the stream's error.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from localrt.engines.jobs import (
    CPU_JOBS,
    INTERACTIVE,
    End,
    EngineClosed,
    Failure,
    InteractiveBoard,
    Job,
    JobControl,
    JobRecord,
    JobState,
    Outcome,
    Priority,
    Produce,
    QueueFull,
    SchedulerStats,
    add_job_observer,
    job_observers,
    remove_job_observer,
)

__all__ = [
    "CPU_JOBS",
    "INTERACTIVE",
    "EngineClosed",
    "InteractiveBoard",
    "Job",
    "JobControl",
    "JobRecord",
    "Priority",
    "Produce",
    "QueueFull",
    "Scheduler",
    "SchedulerStats",
    "add_job_observer",
    "remove_job_observer",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(order=True)
class _Entry:
    priority: int
    seq: int
    job: JobState[object] = field(compare=False)


# Longest a lower-priority job pauses for interactive work in other engines before it takes one more piece.
MAX_PAUSE_S = 5.0


class Scheduler:
    """The queue and workers of one engine. Thread safe; ``submit`` is called on the event loop."""

    def __init__(
        self,
        name: str,
        *,
        slots: int = 1,
        max_queue: int = 64,
        retry_after: float = 1.0,
        on_job_done: Callable[[JobRecord], None] | None = None,
        shares_cpu: bool = True,
    ) -> None:
        """``shares_cpu``: this engine's realtime jobs make other engines' lower-priority work pause,
        and its own lower-priority work pauses for theirs (see the module docstring)."""
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.name = name
        self.slots = slots
        self.max_queue = max_queue
        self.retry_after = retry_after
        self.on_job_done = on_job_done
        self.shares_cpu = shares_cpu
        self._cond = threading.Condition()
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._closed = False
        self._running: set[JobState[object]] = set()  # started and not finished (suspended ones too)
        self._preempted = 0
        self._completed = 0
        self._rejected = 0
        self._threads = [
            threading.Thread(target=self._worker_main, name=f"{name}-{i}", daemon=True) for i in range(slots)
        ]
        for thread in self._threads:
            thread.start()

    # -- public --------------------------------------------------------------------------------------
    def submit(
        self, produce: Produce[T], *, priority: Priority = Priority.HTTP, preemptible: bool = False
    ) -> Job[T]:
        """Queue a job (on the event loop). Raises QueueFull or EngineClosed at once."""
        loop = asyncio.get_running_loop()
        job: JobState[T] = JobState(self, produce, priority, preemptible, loop)
        with self._cond:
            if self._closed:
                job.done.set()
                raise EngineClosed(f"The {self.name} engine is closed.", retry_after=self.retry_after)
            if len(self._heap) >= self.max_queue:
                self._rejected += 1
                job.done.set()
                raise QueueFull(
                    f"The {self.name} engine's queue is full ({self.max_queue} jobs waiting); retry shortly.",
                    retry_after=self.retry_after,
                )
            heapq.heappush(self._heap, _Entry(int(priority), next(self._seq), job))  # type: ignore[arg-type]
            self._cond.notify()
        return Job(self, job)

    @property
    def busy(self) -> bool:
        """Whether any job is queued or running."""
        with self._cond:
            return bool(self._heap or self._running)

    def stats(self) -> SchedulerStats:
        with self._cond:
            by_priority: dict[str, int] = {p.name.lower(): 0 for p in Priority}
            for entry in self._heap:
                by_priority[Priority(entry.priority).name.lower()] += 1
            return SchedulerStats(
                engine=self.name,
                slots=self.slots,
                max_queue=self.max_queue,
                queued=len(self._heap),
                running=len(self._running) - self._preempted,
                preempted=self._preempted,
                completed=self._completed,
                rejected=self._rejected,
                queued_by_priority=by_priority,
            )

    def close(self, *, wait: float | None = 10.0) -> None:
        """End every queued and running job with EngineClosed; stop the workers (blocking).

        Safe to call from any thread, more than once. ``wait``: seconds to wait for running jobs."""
        error = EngineClosed(f"The {self.name} engine was closed.", retry_after=self.retry_after)
        with self._cond:
            self._closed = True
            queued = [entry.job for entry in self._heap]
            self._heap.clear()
            running = list(self._running)
            self._cond.notify_all()
        for job in queued:
            job.control.set()
            job.emit(Failure(error))
            job.done.set()
            self._record(job, "closed")
        for job in running:
            # The error is queued before the stop flag is set, so the caller sees it before the End the
            # worker emits once it notices the flag (the other order lets that End win the race).
            job.emit(Failure(error))
            job.control.set()
        if wait is not None:
            deadline = time.monotonic() + wait
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))

    # -- internals ------------------------------------------------------------------------------------
    def _cancel_entry(self, control: JobControl) -> None:
        control.set()
        with self._cond:
            for i, entry in enumerate(self._heap):
                if entry.job.control is control:
                    job = entry.job
                    self._heap.pop(i)
                    heapq.heapify(self._heap)
                    break
            else:
                return
        job.emit(End())
        job.done.set()
        self._record(job, "cancelled")

    def _promote(self, control: JobControl, priority: Priority) -> None:
        with self._cond:
            control.priority = priority
            for entry in self._heap:
                if entry.job.control is control:
                    entry.priority = int(priority)
                    entry.job.priority = priority
                    heapq.heapify(self._heap)
                    self._cond.notify()
                    return
            for job in self._running:
                if job.control is control:
                    job.priority = priority
                    if (
                        self.shares_cpu
                        and priority <= Priority.SPECULATIVE
                        and not job.interactive
                        and not job.finished
                    ):
                        job.interactive = True  # now work in other engines pauses for it too
                        INTERACTIVE.enter()

    def _waiting_above(self, priority: Priority) -> bool:
        # A racy peek is fine (yield_now takes the lock), but one that cannot fail: another thread may
        # pop the last entry between an emptiness check and the index.
        try:
            return self._heap[0].priority < priority
        except IndexError:
            return False

    def _queued(self) -> bool:
        return bool(self._heap)  # a racy peek: holding is advisory

    def _should_yield(self, priority: Priority) -> bool:
        if self._waiting_above(priority):
            return True
        return self.shares_cpu and priority > Priority.SPECULATIVE and INTERACTIVE.active > 0

    def _yield(self, control: JobControl) -> int:
        # While it is suspended (jobs run nested in its place, or it pauses for interactive work) the
        # job uses no CPU: it leaves CPU_JOBS, so the job that runs meanwhile may take every core.
        if not self.shares_cpu:
            return self._run_waiting_above(control.priority)
        CPU_JOBS.leave()
        try:
            return self._suspend(control)
        finally:
            CPU_JOBS.enter()

    def _suspend(self, control: JobControl) -> int:
        priority = control.priority
        ran = self._run_waiting_above(priority)
        if priority <= Priority.SPECULATIVE:
            return ran
        deadline = time.monotonic() + MAX_PAUSE_S
        while INTERACTIVE.active > 0 and not control.is_set() and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            INTERACTIVE.wait_quiet(min(0.02, remaining))
            ran += self._run_waiting_above(priority)  # a realtime job for this engine meanwhile
        return ran

    def _run_waiting_above(self, priority: Priority) -> int:
        ran = 0
        while True:
            with self._cond:
                if not self._heap or self._heap[0].priority >= priority:
                    return ran
                job = heapq.heappop(self._heap).job
                self._running.add(job)
                self._preempted += 1
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running.discard(job)
                    self._preempted -= 1
            ran += 1

    def _worker_main(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = heapq.heappop(self._heap).job
                self._running.add(job)
            try:
                self._run(job)
            except BaseException:  # _run reports to the job; nothing may kill a worker
                logger.exception("scheduler %s: worker error", self.name)
            finally:
                with self._cond:
                    self._running.discard(job)

    def _run(self, job: JobState[T]) -> None:
        with self._cond:  # under the lock: a promotion (another thread) sees a consistent job
            job.interactive = self.shares_cpu and job.priority <= Priority.SPECULATIVE
            if job.interactive:
                INTERACTIVE.enter()
        if self.shares_cpu:
            CPU_JOBS.enter()
        try:
            self._run_job(job)
        finally:
            if self.shares_cpu:
                CPU_JOBS.leave()
            with self._cond:
                job.finished = True
                if job.interactive:
                    job.interactive = False
                    INTERACTIVE.leave()

    def _run_job(self, job: JobState[T]) -> None:
        job.started = time.monotonic()
        control = job.control
        produce, job.produce = job.produce, None  # the job keeps no reference to its work
        outcome: Outcome = "ok"
        try:
            if control.is_set() or produce is None:
                outcome = "cancelled"
                job.emit(End())
                return
            iterator: Iterator[T] = iter(produce(control))
            try:
                while not control.is_set():
                    try:
                        item = next(iterator)
                    except StopIteration:
                        break
                    if not job.emit(item):
                        break
                    if job.preemptible and self._should_yield(job.priority):
                        control.yield_now()
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            if control.is_set():
                outcome = "closed" if self._closed else "cancelled"
        except BaseException as exc:
            outcome = "error"
            job.emit(Failure(exc))
        else:
            job.emit(End())
        finally:
            with self._cond:
                self._completed += 1
            job.done.set()
            self._record(job, outcome)

    def _record(self, job: JobState[T], outcome: Outcome) -> None:
        observers = job_observers()
        if self.on_job_done is not None:
            observers = (self.on_job_done, *observers)
        if not observers:
            return
        now = time.monotonic()
        started = job.started if job.started is not None else now
        record = JobRecord(self.name, job.priority, started - job.submitted, now - started, outcome)
        for observe in observers:
            try:
                observe(record)
            except Exception:  # metrics must never break a job
                logger.exception("scheduler %s: job observer failed", self.name)
