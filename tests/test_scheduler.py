"""The engine scheduler (:mod:`localrt.engines.scheduler`) with trivial producers: priorities, the
bounded queue, cancellation and preemption (closing, failures, slots, stats and records:
``test_scheduler_lifecycle.py``).

Producers are plain generators whose "pieces" are ``time.sleep`` calls or waits on a gate, logged in
order from the worker thread: "ran first" and "waited at most one piece" are orders of events; the few
timed bounds are "well under" bounds with wide margins (the machine is shared and slow).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator

import pytest
from sched_helpers import Blocked, Log, Schedulers, drain, held, pieces, pieces_between, tags, until

from localrt.engines.scheduler import (
    Job,
    JobControl,
    Priority,
    Produce,
    QueueFull,
)
from localrt.errors import RateLimited

pytestmark = pytest.mark.anyio


# --- priority and the bounded queue ---------------------------------------------------------------------
async def test_priority_order_then_arrival_order(blocked: Blocked) -> None:
    scheduler, gate, log = await blocked.hold()
    order = [
        ("b1", Priority.BULK),
        ("h1", Priority.HTTP),
        ("r1", Priority.REALTIME),
        ("b2", Priority.BULK),
        ("h2", Priority.HTTP),
        ("r2", Priority.REALTIME),
    ]
    jobs = [scheduler.submit(pieces(tag, 1, 0.0, log), priority=p) for tag, p in order]
    assert scheduler.stats().queued == 6
    gate.set()
    for job in jobs:
        assert await drain(job) == [0]
    assert tags(log) == ["blocker", "r1", "r2", "h1", "h2", "b1", "b2"]


async def test_a_full_queue_refuses_at_once(make: Schedulers) -> None:
    gate, log = threading.Event(), Log()
    scheduler = make(slots=1, max_queue=2, retry_after=2.5)
    running = scheduler.submit(held(gate, "blocker", log))
    await until(lambda: scheduler.stats().running == 1)
    queued = [
        scheduler.submit(pieces(f"q{i}", 1, 0.0, log)) for i in range(2)
    ]  # the running job is not counted
    started = time.monotonic()
    with pytest.raises(QueueFull) as full:
        scheduler.submit(pieces("refused", 1, 0.0, log), priority=Priority.REALTIME)
    assert time.monotonic() - started < 1.0
    err = full.value
    assert isinstance(err, RateLimited)
    assert (err.status, err.type, err.code, err.retry_after) == (
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
        2.5,
    )
    assert "queue is full" in err.message
    assert scheduler.stats().rejected == 1
    await queued[0].aclose()  # a cancelled queued job frees its place at once
    queued.append(scheduler.submit(pieces("fits", 1, 0.0, log)))
    gate.set()
    assert await drain(running) == [0]
    assert [await drain(job) for job in queued[1:]] == [[0], [0]]
    assert tags(log) == ["blocker", "q1", "fits"]


# --- cancellation ------------------------------------------------------------------------------------------
async def test_cancelling_a_queued_job_returns_at_once_and_it_never_runs(
    blocked: Blocked,
) -> None:
    scheduler, gate, log = await blocked.hold()  # the slot is held until the gate opens: "forever"
    ran = threading.Event()

    def never(control: JobControl) -> Iterator[int]:
        ran.set()
        yield 1

    queued = scheduler.submit(never, priority=Priority.REALTIME)
    waiter = asyncio.create_task(drain(queued))  # a consumer waiting for the queued job's first item
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await queued.aclose()
    assert time.monotonic() - started < 0.5  # not held by the running job
    assert await asyncio.wait_for(waiter, 2) == []  # the waiting consumer ends too
    assert queued.worker_done and scheduler.stats().queued == 0 and scheduler.stats().running == 1
    # cancel() (from any thread) and leaving `async with` do the same.
    other = scheduler.submit(never)
    await asyncio.to_thread(other.cancel)
    async with scheduler.submit(never) as third:
        assert scheduler.stats().queued == 1
    assert third.stopped and scheduler.stats().queued == 0
    gate.set()
    assert await drain(scheduler.submit(pieces("after", 1, 0.0, log))) == [0]
    assert not ran.is_set()  # the job behind them ran; the cancelled ones never did
    assert [await drain(j) for j in (queued, other)] == [[], []]


async def test_cancelling_the_consumer_task_removes_its_queued_job(
    blocked: Blocked,
) -> None:
    scheduler, _, log = await blocked.hold()

    async def consume(job: Job[int]) -> None:
        async with job:
            async for _ in job:
                pass

    task = asyncio.create_task(consume(scheduler.submit(pieces("q", 1, 0.0, log))))
    await until(lambda: scheduler.stats().queued == 1)
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scheduler.stats().queued == 0


async def test_cancelling_a_running_job_stops_it_within_one_piece_without_waiting(
    make: Schedulers,
) -> None:
    scheduler = make(slots=1)
    piece = threading.Event()  # each piece after the first lasts until the test sets this
    made: list[int] = []

    def produce(control: JobControl) -> Iterator[int]:
        for i in range(10_000):
            made.append(i)
            yield i
            assert piece.wait(10)

    job = scheduler.submit(produce)
    assert await job.__anext__() == 0
    started = time.monotonic()
    await job.aclose()  # the worker is inside a piece right now
    assert time.monotonic() - started < 0.5
    assert job.stopped and not job.worker_done  # told to stop; not waited for
    piece.set()  # the piece in hand ends; nothing after it
    assert await job.wait_done(10)
    assert len(made) <= 2
    with pytest.raises(StopAsyncIteration):
        await job.__anext__()


async def test_dropping_a_job_cancels_it(make: Schedulers) -> None:
    scheduler = make(slots=1)
    log = Log()
    job = scheduler.submit(pieces("dropped", 200, 0.01, log))
    await job.__anext__()
    del job
    gc.collect()
    await asyncio.sleep(0.5)
    assert len(log) < 10  # stopped within a piece of being dropped, not run to its 200th piece


async def test_dropping_a_queued_job_takes_it_out_of_the_queue(make: Schedulers) -> None:
    scheduler = make(slots=1)
    log = Log()
    running = scheduler.submit(pieces("running", 30, 0.01, log))
    await running.__anext__()
    queued = scheduler.submit(pieces("queued", 5, 0.01, log))
    assert scheduler.stats().queued == 1
    del queued
    gc.collect()
    assert scheduler.stats().queued == 0
    await running.aclose()


# --- preemption ---------------------------------------------------------------------------------------
async def test_a_realtime_job_waits_at_most_one_piece_of_a_preemptible_bulk_job(
    make: Schedulers,
) -> None:
    scheduler = make(slots=1)
    log = Log()
    bulk = scheduler.submit(pieces("bulk", 60, 0.05, log), priority=Priority.BULK, preemptible=True)
    first = [await bulk.__anext__() for _ in range(3)]
    seen: list[tuple[int, int]] = []

    def turn(control: JobControl) -> Iterator[int]:
        stats = scheduler.stats()
        seen.append((stats.running, stats.preempted))
        log.append(("turn", 0))
        yield 0

    log.append(("submit", 0))
    started = time.monotonic()
    assert await drain(scheduler.submit(turn, priority=Priority.REALTIME)) == [0]
    waited = time.monotonic() - started
    assert pieces_between(log, ("submit", 0), ("turn", 0), "bulk") <= 1
    assert waited < 1.5  # one piece is 0.05 s; the bulk job had more than 2.5 s left
    assert seen == [(1, 1)]  # it ran nested: the bulk job suspended, not running
    assert first + await drain(bulk, 20) == list(range(60))  # resumed where it was, nothing lost


@pytest.mark.parametrize(
    ("preemptible", "later"),
    [(False, Priority.REALTIME), (True, Priority.BULK)],
    ids=["not-preemptible", "same-priority"],
)
async def test_jobs_are_not_preempted_unless_preemptible_and_outranked(
    make: Schedulers, preemptible: bool, later: Priority
) -> None:
    scheduler = make(slots=1)
    log = Log()
    long = scheduler.submit(pieces("long", 10, 0.03, log), priority=Priority.BULK, preemptible=preemptible)
    await long.__anext__()
    assert await drain(scheduler.submit(pieces("later", 1, 0.0, log), priority=later)) == [0]
    assert tags(log) == ["long", "later"]
    assert len(await drain(long)) == 9


async def test_nested_preemption_keeps_stack_order(make: Schedulers) -> None:
    scheduler = make(name="nested", slots=1)
    log = Log()
    threads: set[str] = set()

    def job(tag: str, n: int) -> Produce[int]:
        inner = pieces(tag, n, 0.03, log)

        def produce(control: JobControl) -> Iterator[int]:
            threads.add(threading.current_thread().name)
            yield from inner(control)

        return produce

    bulk = scheduler.submit(job("bulk", 40), priority=Priority.BULK, preemptible=True)
    await bulk.__anext__()
    http = scheduler.submit(job("http", 20), priority=Priority.HTTP, preemptible=True)
    await http.__anext__()
    realtime = scheduler.submit(job("rt", 3), priority=Priority.REALTIME)
    assert await drain(realtime) == [0, 1, 2]
    assert len(await drain(http)) == 19 and len(await drain(bulk, 20)) == 39
    assert tags(log) == ["bulk", "http", "rt", "http", "bulk"]
    assert threads == {"nested-0"}  # nested in the one worker thread


async def test_a_producer_can_yield_its_slot_explicitly(make: Schedulers) -> None:
    scheduler = make(slots=1)
    log = Log()
    ran: list[int] = []

    def long(control: JobControl) -> Iterator[int]:  # not preemptible: yields only where it says
        for i in range(30):
            time.sleep(0.03)
            log.append(("long", i))
            if control.should_yield():
                ran.append(control.yield_now())
        yield 30

    job = scheduler.submit(long, priority=Priority.BULK)
    await until(lambda: len(log) >= 2)
    log.append(("submit", 0))
    assert await drain(scheduler.submit(pieces("turn", 1, 0.0, log), priority=Priority.REALTIME)) == [0]
    assert pieces_between(log, ("submit", 0), ("turn", 0), "long") <= 1
    assert await drain(job) == [30] and ran == [1]


# --- holding (a realtime reply's chat job while its first clause is spoken) -------------------------------
async def test_a_held_job_waits_at_its_next_piece_until_released_stopped_or_needed(make: Schedulers) -> None:
    """``hold`` pauses the producer at its next ``wait_released``; release, a stop, or another job
    waiting for the slot ends the pause (a held job never keeps the slot from anyone)."""
    scheduler = make(slots=1)
    made: list[int] = []

    def produce(control: JobControl) -> Iterator[int]:
        for i in range(1000):
            control.wait_released(30)
            made.append(i)
            yield i
            time.sleep(0.005)

    job = scheduler.submit(produce, priority=Priority.REALTIME)
    assert await job.__anext__() == 0
    job.hold()
    await asyncio.sleep(0.2)
    paused_at = len(made)
    await asyncio.sleep(0.3)
    assert len(made) == paused_at  # nothing made while held
    job.release()
    await until(lambda: len(made) > paused_at + 5)

    job.hold()
    await asyncio.sleep(0.2)
    paused_at = len(made)
    other = scheduler.submit(lambda control: iter([7]), priority=Priority.HTTP)  # waits for the slot
    await until(lambda: len(made) > paused_at)  # the hold ended: the holder goes on (and ends later)
    await job.aclose()
    assert [x async for x in other] == [7]

    held_job = scheduler.submit(produce, priority=Priority.REALTIME)
    assert await held_job.__anext__() == 0
    held_job.hold()
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await held_job.aclose()  # a stop ends the hold at once
    assert await held_job.wait_done(5) and time.monotonic() - started < 2
