"""Helpers for the scheduler tests: producers whose pieces are logged in order, waits that do not
block the event loop, and a scheduler whose one slot a job holds until a gate opens."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from localrt.engines.scheduler import Job, JobControl, Produce, Scheduler

Log = list[tuple[str, int]]


def pieces(tag: str, n: int, piece_s: float, log: Log) -> Produce[int]:
    """``n`` items, each after a piece of ``piece_s`` seconds of "work", logged as ``(tag, i)``."""

    def produce(control: JobControl) -> Iterator[int]:
        for i in range(n):
            time.sleep(piece_s)
            log.append((tag, i))
            yield i

    return produce


def held(gate: threading.Event, tag: str, log: Log) -> Produce[int]:
    """Logs ``(tag, 0)`` when it starts, then holds its slot until ``gate`` is set (or it is stopped)."""

    def produce(control: JobControl) -> Iterator[int]:
        log.append((tag, 0))
        while not gate.wait(0.01):
            if control.is_set():
                return
        yield 0

    return produce


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.005)


async def drain(job: Job[Any], timeout: float = 10.0) -> list[Any]:
    async def collect() -> list[Any]:
        return [item async for item in job]

    return await asyncio.wait_for(collect(), timeout)


def tags(log: Log) -> list[str]:
    """The log's tags with consecutive repeats collapsed: the order in which jobs ran."""
    out: list[str] = []
    for tag, _ in log:
        if not out or out[-1] != tag:
            out.append(tag)
    return out


def pieces_between(log: Log, start: tuple[str, int], end: tuple[str, int], tag: str) -> int:
    window = log[log.index(start) : log.index(end)]
    return sum(1 for t, _ in window if t == tag)


class Schedulers:
    """Makes schedulers, and closes them (joining their workers) in :meth:`close_all`."""

    def __init__(self) -> None:
        self.made: list[Scheduler] = []

    def __call__(self, name: str = "test", **kwargs: Any) -> Scheduler:
        scheduler = Scheduler(name, **kwargs)
        self.made.append(scheduler)
        return scheduler

    def close_all(self) -> None:
        for scheduler in self.made:
            scheduler.close(wait=5)


class Blocked:
    """A one-slot scheduler whose slot a job holds, once :meth:`hold` ran, until ``gate`` is set."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.gate = threading.Event()
        self.log = Log()
        self.blocker: Job[int] | None = None  # kept: dropping a job cancels it

    async def hold(self) -> tuple[Scheduler, threading.Event, Log]:
        self.blocker = self.scheduler.submit(held(self.gate, "blocker", self.log))
        await until(lambda: self.scheduler.stats().running == 1)
        return self.scheduler, self.gate, self.log
