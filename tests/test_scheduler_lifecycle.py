"""The engine scheduler's lifecycle (:mod:`localrt.engines.scheduler`): closing, failing producers,
slots, stats, job records, threads; and a long transcription against a voice turn with a fake STT
behind the real scheduler. Helpers: ``sched_helpers.py``; priorities, the queue, cancellation and
preemption: ``test_scheduler.py``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sched_helpers import Blocked, Log, Schedulers, drain, held, pieces, pieces_between, tags, until

from localrt.engines.scheduler import (
    EngineClosed,
    Job,
    JobControl,
    JobRecord,
    Priority,
    QueueFull,
    Scheduler,
    add_job_observer,
    remove_job_observer,
)
from localrt.engines.types import Segment
from localrt.errors import InvalidRequest

pytestmark = pytest.mark.anyio


# --- closing, failures, slots --------------------------------------------------------------------------
async def test_close_ends_queued_and_running_jobs_for_their_consumers(make: Schedulers) -> None:
    records: list[JobRecord] = []
    scheduler = make(name="closing", slots=1, on_job_done=records.append)
    log = Log()
    running = scheduler.submit(pieces("running", 100_000, 0.02, log))
    await running.__anext__()
    queued = [scheduler.submit(pieces("queued", 1, 0.0, log), priority=p) for p in Priority]
    closing = asyncio.create_task(asyncio.to_thread(scheduler.close, wait=10))
    for job in (running, *queued):
        with pytest.raises(EngineClosed) as closed:
            await drain(job)
        assert closed.value.status == 503 and closed.value.code == "service_unavailable"
    await asyncio.wait_for(closing, 15)
    with pytest.raises(EngineClosed):
        scheduler.submit(pieces("late", 1, 0.0, log))
    assert not [t for t in threading.enumerate() if t.name.startswith("closing-")]
    assert "queued" not in tags(log)
    assert sorted(r.outcome for r in records) == ["closed"] * (1 + len(Priority))
    scheduler.close()  # again: harmless


async def test_a_failing_producer_reaches_its_consumer_and_the_worker_survives(
    make: Schedulers,
) -> None:
    records: list[JobRecord] = []
    scheduler = make(slots=1, on_job_done=records.append)

    def fails_midway(control: JobControl) -> Iterator[int]:
        yield 1
        raise ValueError("boom")

    def fails_at_once(control: JobControl) -> Iterator[int]:
        raise InvalidRequest("bad prompt", param="messages")

    items: list[int] = []
    with pytest.raises(ValueError, match="boom"):
        async for item in scheduler.submit(fails_midway):
            items.append(item)
    assert items == [1]
    with pytest.raises(InvalidRequest) as invalid:
        await drain(scheduler.submit(fails_at_once))
    assert (invalid.value.status, invalid.value.param) == (400, "messages")
    assert await drain(scheduler.submit(pieces("next", 2, 0.0, Log()))) == [0, 1]
    await until(lambda: len(records) == 3)
    assert [r.outcome for r in records] == ["error", "error", "ok"]


async def test_two_slots_run_two_jobs_at_once(make: Schedulers) -> None:
    scheduler = make(slots=2)
    barrier = threading.Barrier(2, timeout=10)  # broken unless both jobs are inside it together
    gate = threading.Event()

    def together(control: JobControl) -> Iterator[str]:
        barrier.wait()
        assert gate.wait(10)
        yield threading.current_thread().name

    jobs = [scheduler.submit(together) for _ in range(2)]
    third = scheduler.submit(pieces("third", 1, 0.0, Log()))
    await until(lambda: scheduler.stats().running == 2)
    assert scheduler.stats().queued == 1
    gate.set()
    names = [(await drain(job))[0] for job in jobs]
    assert sorted(names) == ["test-0", "test-1"]
    assert await drain(third) == [0]


async def test_stats_count_queued_running_completed_and_rejected(
    blocked: Blocked,
) -> None:
    scheduler, gate, log = await blocked.hold()
    jobs = [
        scheduler.submit(pieces("j", 1, 0.0, log), priority=p)
        for p in (Priority.BULK, Priority.HTTP, Priority.BULK, Priority.REALTIME)
    ]
    stats = scheduler.stats()
    assert (stats.engine, stats.slots, stats.max_queue) == ("test", 1, 8)
    assert (stats.queued, stats.running, stats.preempted, stats.completed, stats.rejected) == (4, 1, 0, 0, 0)
    assert stats.queued_by_priority == {"realtime": 1, "speculative": 0, "http": 1, "bulk": 2}
    jobs += [scheduler.submit(pieces("j", 1, 0.0, log)) for _ in range(4)]
    with pytest.raises(QueueFull):
        scheduler.submit(pieces("j", 1, 0.0, log))
    assert scheduler.busy and scheduler.stats().rejected == 1
    gate.set()
    for job in jobs:
        await drain(job)
    await until(lambda: not scheduler.busy)
    stats = scheduler.stats()
    assert (stats.queued, stats.running, stats.completed, stats.rejected) == (0, 0, 9, 1)


async def test_job_records_carry_each_outcome(make: Schedulers) -> None:
    records: list[JobRecord] = []
    scheduler = make(name="records", slots=1, on_job_done=records.append)
    observed: list[JobRecord] = []
    add_job_observer(observed.append)  # the process-wide hook (metrics) sees the same records
    try:
        log = Log()
        await drain(scheduler.submit(pieces("ok", 1, 0.0, log), priority=Priority.REALTIME))

        def boom(control: JobControl) -> Iterator[int]:
            raise RuntimeError("boom")
            yield 0

        with pytest.raises(RuntimeError):
            await drain(scheduler.submit(boom))
        running = scheduler.submit(pieces("long", 1000, 0.01, log))
        await running.__anext__()
        queued = scheduler.submit(pieces("queued", 1, 0.0, log), priority=Priority.BULK)
        await queued.aclose()
        await running.aclose()
        await until(lambda: len(records) == 4)
        gate = threading.Event()
        holder = scheduler.submit(held(gate, "held", log))  # kept: dropping a job cancels it
        await until(lambda: scheduler.stats().running == 1)
        never = scheduler.submit(pieces("never", 1, 0.0, log))
        await asyncio.to_thread(scheduler.close, wait=5)
        await until(lambda: len(records) == 6)
        assert holder.stopped and never.stopped
    finally:
        remove_job_observer(observed.append)
    outcomes = [(r.outcome, r.priority) for r in records]
    assert outcomes[:4] == [
        ("ok", Priority.REALTIME),
        ("error", Priority.HTTP),
        ("cancelled", Priority.BULK),  # left the queue: recorded at once
        ("cancelled", Priority.HTTP),
    ]
    assert sorted(o for o, _ in outcomes[4:]) == ["closed", "closed"]
    assert all(r.engine == "records" and r.waited_s >= 0 and r.ran_s >= 0 for r in records)
    assert records[2].ran_s == 0
    assert [r for r in observed if r.engine == "records"] == records


async def test_closing_leaks_no_threads(make: Schedulers) -> None:
    before = set(threading.enumerate())
    schedulers = [Scheduler(f"leak-{slots}", slots=slots) for slots in (1, 2, 4)]
    for scheduler in schedulers:
        assert await drain(scheduler.submit(pieces("x", 2, 0.0, Log()))) == [0, 1]
    assert len(set(threading.enumerate()) - before) >= 7
    for scheduler in schedulers:
        await asyncio.to_thread(scheduler.close, wait=5)
    left = [t for t in set(threading.enumerate()) - before if not t.name.startswith("asyncio")]
    assert left == []


async def test_a_heap_emptied_during_the_peek_is_not_an_error(make: Schedulers) -> None:
    # Another thread may pop the last queued job (a worker starting it, or the event loop cancelling
    # it) between should_yield's emptiness check and its peek; the peek must not raise then.
    scheduler = make(slots=1)

    class Vanishing(list[Any]):
        def __bool__(self) -> bool:  # "not empty" - and then another thread takes the entry
            full = len(self) > 0
            self.clear()
            return full

    gate = threading.Event()
    _blocker = scheduler.submit(held(gate, "blocker", Log()))  # kept: dropping a job cancels it
    await until(lambda: scheduler.stats().running == 1)
    queued = scheduler.submit(pieces("q", 1, 0.0, Log()), priority=Priority.REALTIME)
    with scheduler._cond:
        scheduler._heap = Vanishing(scheduler._heap)
    try:
        assert scheduler._waiting_above(Priority.BULK) is True  # the queued realtime job, seen
    finally:
        with scheduler._cond:
            scheduler._heap = list(scheduler._heap)
        await queued.aclose()
        gate.set()


# --- a long transcription vs a voice turn, with a fake STT behind the real scheduler -----------------------
class SegmentedSTT:
    """A fake speech-to-text engine: one segment per ``window_s`` of audio, each after ``piece_s`` of
    "decoding" in the one worker of a real scheduler; every job is preemptible between segments."""

    sample_rate = 16_000

    def __init__(self, piece_s: float = 0.1, window_s: float = 5.0) -> None:
        self.piece_s = piece_s
        self.window_s = window_s
        self.log = Log()
        self.scheduler = Scheduler("stt", slots=1, max_queue=8)

    def stream(self, audio: np.ndarray, *, tag: str, priority: Priority) -> Job[Segment]:
        windows = max(1, math.ceil(len(audio) / self.sample_rate / self.window_s))
        piece_s, window_s, log = self.piece_s, self.window_s, self.log

        def produce(control: JobControl) -> Iterator[Segment]:
            for i in range(windows):
                time.sleep(piece_s)
                log.append((tag, i))
                start = i * window_s
                yield Segment(i, 0, start, start + window_s, f" {tag} {i}.", [i], 0.0, -0.1, 1.0, 0.0, None)

        return self.scheduler.submit(produce, priority=priority, preemptible=True)


@pytest.fixture
def stt() -> Iterator[SegmentedSTT]:
    engine = SegmentedSTT()
    yield engine
    engine.scheduler.close(wait=5)


@pytest.mark.parametrize(
    ("low", "high"),
    [(Priority.BULK, Priority.REALTIME), (Priority.HTTP, Priority.REALTIME), (Priority.BULK, Priority.HTTP)],
)
async def test_a_long_transcription_delays_a_voice_turn_by_at_most_one_segment(
    stt: SegmentedSTT, low: Priority, high: Priority
) -> None:
    long_audio = np.zeros(200 * stt.sample_rate, np.float32)  # 40 segments: 4 s of decoding
    turn_audio = np.zeros(2 * stt.sample_rate, np.float32)  # one segment
    long = stt.stream(long_audio, tag="long", priority=low)
    got = [await long.__anext__() for _ in range(3)]
    stt.log.append(("submit", 0))
    started = time.monotonic()
    turn = await drain(stt.stream(turn_audio, tag="turn", priority=high))
    waited = time.monotonic() - started
    assert [s.text for s in turn] == [" turn 0."]
    assert pieces_between(stt.log, ("submit", 0), ("turn", 0), "long") <= 1
    assert waited < 2.0  # a piece or two (0.1 s each), far from the 3.7 s the long job had left
    got += await drain(long, 30)
    assert [s.id for s in got] == list(range(40))
