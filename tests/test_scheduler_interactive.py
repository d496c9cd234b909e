"""Interactive work across engines (:data:`localrt.engines.scheduler.INTERACTIVE`): the engines share the
CPU, so while a realtime job runs in one engine, lower-priority preemptible work in another pauses at its
next piece (at most ``MAX_PAUSE_S`` at a time); engines that do not share the CPU are left alone."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sched_helpers import Log, Schedulers, drain, held, pieces, until

from localrt.engines import scheduler as scheduler_mod
from localrt.engines.scheduler import INTERACTIVE, Priority

pytestmark = pytest.mark.anyio


def count(log: Log, tag: str) -> int:
    return sum(1 for t, _ in log if t == tag)


async def test_bulk_work_pauses_while_a_realtime_job_runs_in_another_engine(make: Schedulers) -> None:
    stt, llm = make(name="stt-x", slots=1), make(name="llm-x", slots=1)
    log = Log()
    bulk = stt.submit(pieces("bulk", 400, 0.02, log), priority=Priority.BULK, preemptible=True)
    await bulk.__anext__()
    gate = threading.Event()
    turn = llm.submit(held(gate, "turn", log), priority=Priority.REALTIME)
    await until(lambda: INTERACTIVE.active == 1)
    await asyncio.sleep(0.1)  # the bulk job reaches its next piece and pauses there
    before = count(log, "bulk")
    await asyncio.sleep(0.6)
    assert count(log, "bulk") <= before + 1  # paused (not 30 more pieces)
    gate.set()
    assert await drain(turn) == [0]
    await until(lambda: count(log, "bulk") > before + 5)  # and goes on once the turn is over
    await bulk.aclose()


async def test_a_pause_is_bounded(make: Schedulers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_mod, "MAX_PAUSE_S", 0.2)
    stt, llm = make(name="stt-y", slots=1), make(name="llm-y", slots=1)
    log = Log()
    gate = threading.Event()
    turn = llm.submit(held(gate, "turn", log), priority=Priority.REALTIME)
    await until(lambda: INTERACTIVE.active == 1)
    started = time.monotonic()
    bulk = stt.submit(pieces("bulk", 4, 0.01, log), priority=Priority.BULK, preemptible=True)
    assert len(await drain(bulk)) == 4  # one piece, then at most 0.2 s of pause, per piece
    assert time.monotonic() - started < 5.0
    gate.set()
    await drain(turn)


async def test_engines_that_do_not_share_the_cpu_neither_pause_nor_make_others_pause(
    make: Schedulers,
) -> None:
    vad = make(name="vad-z", slots=1, shares_cpu=False)
    stt = make(name="stt-z", slots=1)
    log = Log()
    gate = threading.Event()
    turn = vad.submit(held(gate, "vad", log), priority=Priority.REALTIME)
    await until(lambda: count(log, "vad") == 1)
    assert INTERACTIVE.active == 0
    bulk = stt.submit(pieces("bulk", 20, 0.005, log), priority=Priority.BULK, preemptible=True)
    assert len(await drain(bulk)) == 20
    gate.set()
    await drain(turn)


async def test_a_cancelled_job_does_not_stay_paused(make: Schedulers) -> None:
    stt, llm = make(name="stt-w", slots=1), make(name="llm-w", slots=1)
    log = Log()
    gate = threading.Event()
    bulk = stt.submit(pieces("bulk", 400, 0.01, log), priority=Priority.BULK, preemptible=True)
    await bulk.__anext__()
    turn = llm.submit(held(gate, "turn", log), priority=Priority.REALTIME)
    await until(lambda: INTERACTIVE.active == 1)
    await bulk.aclose()
    await until(lambda: stt.stats().running == 0, timeout=2.0)  # not held for MAX_PAUSE_S
    gate.set()
    await drain(turn)
