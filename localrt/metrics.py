"""``GET /metrics``: the server's state and latencies in the Prometheus text format.

Each app has its own :class:`Metrics` with its own ``CollectorRegistry`` (never the global default one:
tests build many apps in one process). Like every route but the liveness probe, ``/metrics`` needs the
API key when one is set. What it exposes (all names start with ``localrt_``):

- **Engines**, read from every engine's scheduler (``Engines.stats()``) at scrape time:
  ``engine_queue_depth{engine,priority}``, ``engine_running_jobs{engine}``,
  ``engine_preempted_jobs{engine}`` (running jobs suspended while a higher priority one runs),
  ``engine_slots{engine}``, ``engine_max_queue{engine}``, ``engine_jobs_completed_total{engine}``,
  ``engine_jobs_rejected_total{engine}`` (queue full: 429). Engine names are the schedulers' names
  (``llm:<model id>``, ``stt``, ...).
- **Job latency**, from every finished job (:func:`localrt.engines.scheduler.add_job_observer`, attached
  for the app's lifetime): ``engine_job_wait_seconds`` (queued) and ``engine_job_run_seconds`` (running),
  histograms by ``engine``, ``priority`` and ``outcome`` (ok, error, cancelled, closed).
- **Realtime**: ``realtime_sessions_open`` and ``realtime_sessions_max`` (gauges),
  ``realtime_turns_total{status}`` (every response a session finished, by its status), and per-turn
  stage histograms named after the conventions of voice frameworks, from each turn's timing marks
  (:class:`localrt.timings.TimingLog`): see :data:`TURN_STAGES`.
- **HTTP**: ``http_requests_total{route,method,status}`` and
  ``http_request_duration_seconds{route,method}`` (:mod:`localrt.metrics_http`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from localrt.engines.scheduler import (
    JobRecord,
    Priority,
    SchedulerStats,
    add_job_observer,
    remove_job_observer,
)
from localrt.errors import NotFound

# The classic text format: every Prometheus version reads it (the names here need no UTF-8 escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PRIORITIES = [p.name.lower() for p in Priority]
TURN_STATUSES = frozenset({"completed", "cancelled", "incomplete", "failed"})

# name -> (start marks, end mark, help): seconds from the first start mark present to the end mark; with
# "max:" first, from the latest of the marks present (the LLM starts once both the response and the
# transcript are there). "speech_ended" (when the voice stopped, before the detector's silence window)
# is used where the listener records it.
TURN_STAGES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "end_of_turn_delay": (
        ("speech_ended", "speech_stopped"),
        "response_created",
        "End of the user's speech (the turn detector's end of turn) to the start of the response.",
    ),
    "stt_delay": (
        ("speech_stopped",),
        "stt_done",
        "End of the user's turn to its final transcript.",
    ),
    "llm_ttft": (
        ("max:", "response_created", "stt_done"),
        "llm_first_token",
        "LLM time to first token: from when the request could start (response created and transcript "
        "ready) to its first token.",
    ),
    "tts_ttfb": (
        ("first_clause",),
        "tts_first_chunk",
        "TTS time to first byte: first clause handed to speech synthesis to its first audio chunk.",
    ),
    "turn_latency": (
        ("speech_stopped",),
        "first_audio_sent",
        "End-to-end turn latency: end of the user's turn to the first reply audio sent.",
    ),
}

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TURN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
RECENT_JOBS = 256  # per engine, for /health's p50/p95


class _HasStats(Protocol):
    def stats(self) -> list[SchedulerStats]: ...


class _HasTotal(Protocol):
    total: int
    max_total: int


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of non-empty ``values``."""
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


class _StateCollector(Collector):
    """Engine and session gauges, read from the app's state at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        engines: _HasStats | None = getattr(self._metrics.state, "engines", None)
        yield from engine_families(engines.stats() if engines is not None else [])
        slots: _HasTotal | None = getattr(self._metrics.state, "realtime_slots", None)
        open_ = GaugeMetricFamily("localrt_realtime_sessions_open", "Realtime sessions open now.")
        cap = GaugeMetricFamily("localrt_realtime_sessions_max", "Most realtime sessions allowed at once.")
        if slots is not None:
            open_.add_metric([], slots.total)
            cap.add_metric([], slots.max_total)
        yield open_
        yield cap


def engine_families(stats: Iterable[SchedulerStats]) -> list[Metric]:
    """The per-engine gauges and counters of one scrape."""
    g = GaugeMetricFamily
    depth = g(
        "localrt_engine_queue_depth", "Jobs waiting in the engine's queue.", labels=["engine", "priority"]
    )
    running = g("localrt_engine_running_jobs", "Jobs running now (not suspended).", labels=["engine"])
    preempted = g(
        "localrt_engine_preempted_jobs",
        "Running jobs suspended while a higher-priority job runs in their slot.",
        labels=["engine"],
    )
    slots = g("localrt_engine_slots", "Jobs the engine runs at once.", labels=["engine"])
    max_queue = g(
        "localrt_engine_max_queue", "Queue bound; over it jobs are refused (429).", labels=["engine"]
    )
    completed = CounterMetricFamily(
        "localrt_engine_jobs_completed", "Jobs the engine's workers finished.", labels=["engine"]
    )
    rejected = CounterMetricFamily(
        "localrt_engine_jobs_rejected", "Jobs refused because the queue was full.", labels=["engine"]
    )
    seen: set[str] = set()
    for s in stats:
        if s.engine in seen:  # one series per engine, whatever a fake or pool reports twice
            continue
        seen.add(s.engine)
        for priority in PRIORITIES:
            depth.add_metric([s.engine, priority], s.queued_by_priority.get(priority, 0))
        running.add_metric([s.engine], s.running)
        preempted.add_metric([s.engine], s.preempted)
        slots.add_metric([s.engine], s.slots)
        max_queue.add_metric([s.engine], s.max_queue)
        completed.add_metric([s.engine], s.completed)
        rejected.add_metric([s.engine], s.rejected)
    return [depth, running, preempted, slots, max_queue, completed, rejected]


def stage_seconds(marks: Mapping[str, float], starts: tuple[str, ...], end: str) -> float | None:
    """Seconds from the start mark(s) to ``end``; None when a mark is missing (or time ran backwards)."""
    if end not in marks:
        return None
    if starts and starts[0] == "max:":
        present = [marks[m] for m in starts[1:] if m in marks]
        start = max(present) if present else None
    else:
        start = next((marks[m] for m in starts if m in marks), None)
    if start is None or marks[end] < start:
        return None
    return marks[end] - start


class Metrics:
    """One app's metrics: a private registry, the observers that feed it, and ``/health``'s summary."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.state: Any = None  # the app's state (engines, realtime_slots), set by watch()
        reg = self.registry
        job_labels = ["engine", "priority", "outcome"]
        self.job_wait = Histogram(
            "localrt_engine_job_wait_seconds",
            "Seconds a job waited in its engine's queue.",
            job_labels,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.job_run = Histogram(
            "localrt_engine_job_run_seconds",
            "Seconds a job ran in its engine's worker.",
            job_labels,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.turns = Counter(
            "localrt_realtime_turns", "Realtime responses finished, by status.", ["status"], registry=reg
        )
        self.stages = {
            name: Histogram(f"localrt_realtime_{name}_seconds", doc, buckets=TURN_BUCKETS, registry=reg)
            for name, (_, _, doc) in TURN_STAGES.items()
        }
        self.speculations = Counter(
            "localrt_realtime_speculations",
            "Speculative replies (computed in the user's pause) by outcome: used or discarded.",
            ["outcome"],
            registry=reg,
        )
        self.speculation_seconds = Counter(
            "localrt_realtime_speculation_seconds",
            "Engine seconds spent on speculative replies, by engine (stt, llm, tts) and outcome.",
            ["engine", "outcome"],
            registry=reg,
        )
        self.http_requests = Counter(
            "localrt_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=reg,
        )
        self.http_duration = Histogram(
            "localrt_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response (streams included).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        reg.register(_StateCollector(self))
        self._recent: dict[str, deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def watch(self, state: Any) -> None:
        """Read ``state.engines`` and ``state.realtime_slots`` at each scrape (either may be missing)."""
        self.state = state

    # -- observers ---------------------------------------------------------------------------------------
    def observe_job(self, record: JobRecord) -> None:
        """A scheduler's job observer (any thread)."""
        labels = (record.engine, record.priority.name.lower(), record.outcome)
        self.job_wait.labels(*labels).observe(max(0.0, record.waited_s))
        self.job_run.labels(*labels).observe(max(0.0, record.ran_s))
        if record.outcome == "ok":
            with self._lock:
                recent = self._recent.setdefault(record.engine, deque(maxlen=RECENT_JOBS))
                recent.append((record.waited_s, record.waited_s + record.ran_s))

    @contextlib.contextmanager
    def observing_jobs(self) -> Iterator[None]:
        """Feed the job histograms from every scheduler for the duration of a ``with`` block."""
        add_job_observer(self.observe_job)
        try:
            yield
        finally:
            remove_job_observer(self.observe_job)

    def observe_turn(self, marks: Mapping[str, float], extra: Mapping[str, Any]) -> None:
        """A :class:`~localrt.timings.TimingLog` observer: one finished realtime response."""
        status = str(extra.get("status", "other"))
        self.turns.labels(status if status in TURN_STATUSES else "other").inc()
        for name, (starts, end, _) in TURN_STAGES.items():
            seconds = stage_seconds(marks, starts, end)
            if seconds is not None:
                self.stages[name].observe(seconds)

    def observe_speculation(self, outcome: str, seconds: Mapping[str, float]) -> None:
        """A :class:`~localrt.timings.SpeculationTotals` observer: one speculative reply settled."""
        self.speculations.labels(outcome).inc()
        for engine, value in seconds.items():
            self.speculation_seconds.labels(engine, outcome).inc(max(0.0, value))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_duration.labels(route, method).observe(seconds)

    # -- reading -----------------------------------------------------------------------------------------
    def recent_latency_ms(self, engine: str) -> dict[str, float] | None:
        """p50/p95 (ms) of the engine's recent successful jobs: queue wait and total (wait + run)."""
        with self._lock:
            recent = list(self._recent.get(engine, ()))
        if not recent:
            return None
        waits = [w for w, _ in recent]
        totals = [t for _, t in recent]
        return {
            "jobs": len(recent),
            "wait_p50": round(percentile(waits, 50) * 1000, 1),
            "wait_p95": round(percentile(waits, 95) * 1000, 1),
            "total_p50": round(percentile(totals, 50) * 1000, 1),
            "total_p95": round(percentile(totals, 95) * 1000, 1),
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is None:
        raise NotFound("This server keeps no metrics.", code="unknown_url")
    # Cheap (a few hundred lines); reads the session counts, which live on the event loop.
    return Response(metrics.render(), media_type=CONTENT_TYPE)


routes: list[BaseRoute] = [Route("/metrics", metrics_endpoint, methods=["GET"])]
