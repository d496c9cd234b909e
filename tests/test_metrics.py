"""``GET /metrics`` and ``/health``'s engine summary, over minimal fake engines and real schedulers (fast)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from localrt.app import create_app
from localrt.engines.scheduler import JobControl, Priority, QueueFull, Scheduler, SchedulerStats
from localrt.metrics import Metrics, stage_seconds
from localrt.metrics_http import HTTPMetricsMiddleware
from localrt.settings import Settings

KEY = "sk-metrics-test"


class FakePool:
    """Just enough of a chat model pool for /health and /v1/models."""

    default_id = "fake-llm"
    busy = False

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.loaded_ids = [self.default_id]

    def ids(self) -> list[str]:
        return [self.default_id]

    def aliases(self) -> list[str]:
        return []

    def info(self, model_id: str) -> tuple[str, int]:
        return model_id, 0

    def created(self, model_id: str) -> int:
        return 0

    def stats(self) -> list[SchedulerStats]:
        return [self.scheduler.stats()]


class FakeEngines:
    def __init__(self, scheduler: Scheduler, extra: list[SchedulerStats] | None = None) -> None:
        self.llm = FakePool(scheduler)
        self.stt = self.tts = self.vad = None
        self.extra = extra or []

    def stats(self) -> list[SchedulerStats]:
        return [*self.llm.stats(), *self.extra]

    def close(self) -> None:
        self.llm.scheduler.close(wait=1.0)


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, models_dir="/nonexistent", **overrides)


STT_STATS = SchedulerStats(
    engine="stt",
    slots=2,
    max_queue=8,
    queued=3,
    running=2,
    preempted=0,
    completed=41,
    rejected=5,
    queued_by_priority={"realtime": 1, "http": 0, "bulk": 2},
)


@pytest.fixture
def scheduler(request: pytest.FixtureRequest) -> Iterator[Scheduler]:
    # A unique engine name: the job observer is process-wide, other tests' jobs must not count here.
    sched = Scheduler(f"llm:{request.node.name}", slots=1, max_queue=4)
    yield sched
    sched.close(wait=2.0)


def scrape(client: TestClient, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by (name, sorted labels); the text must parse."""
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def run_jobs(sched: Scheduler, n: int) -> None:
    """Run ``n`` trivial jobs to the end on a fresh event loop."""

    async def main() -> None:
        for _ in range(n):
            async with sched.submit(lambda control: iter([1, 2, 3])) as job:
                assert [item async for item in job] == [1, 2, 3]

    asyncio.run(main())


def test_engine_gauges_read_at_scrape_time(scheduler: Scheduler) -> None:
    app = create_app(settings(), engines=FakeEngines(scheduler, [STT_STATS]))  # type: ignore[arg-type]
    with TestClient(app) as client:
        samples = scrape(client)
        llm = scheduler.name
        assert value(samples, "localrt_engine_slots", engine=llm) == 1
        assert value(samples, "localrt_engine_max_queue", engine=llm) == 4
        assert value(samples, "localrt_engine_running_jobs", engine=llm) == 0
        assert value(samples, "localrt_engine_queue_depth", engine="stt", priority="bulk") == 2
        assert value(samples, "localrt_engine_queue_depth", engine="stt", priority="realtime") == 1
        assert value(samples, "localrt_engine_running_jobs", engine="stt") == 2
        assert value(samples, "localrt_engine_jobs_rejected_total", engine="stt") == 5
        assert value(samples, "localrt_engine_jobs_completed_total", engine="stt") == 41
        assert value(samples, "localrt_realtime_sessions_open") == 0

        # Live: one job holds the only slot, two more wait; the gauges follow the scheduler.
        release = threading.Event()
        started = threading.Event()

        def blocking(control: JobControl) -> Iterator[int]:
            started.set()
            release.wait(10)
            yield 1

        async def main() -> None:
            holder = scheduler.submit(blocking)
            assert await asyncio.to_thread(started.wait, 10)
            waiting = [
                scheduler.submit(lambda c: iter([1]), priority=Priority.BULK),
                scheduler.submit(lambda c: iter([1]), priority=Priority.REALTIME),
            ]
            during = await asyncio.to_thread(scrape, client)
            assert value(during, "localrt_engine_running_jobs", engine=llm) == 1
            assert value(during, "localrt_engine_queue_depth", engine=llm, priority="realtime") == 1
            assert value(during, "localrt_engine_queue_depth", engine=llm, priority="bulk") == 1
            assert value(during, "localrt_engine_queue_depth", engine=llm, priority="http") == 0
            release.set()
            for job in (holder, *waiting):
                async with job:
                    assert [item async for item in job] == [1]

        asyncio.run(main())
        after = scrape(client)
        assert value(after, "localrt_engine_jobs_completed_total", engine=llm) == 3
        assert value(after, "localrt_engine_queue_depth", engine=llm, priority="realtime") == 0
        wait = "localrt_engine_job_wait_seconds_count"
        for priority in ("http", "realtime", "bulk"):
            assert value(after, wait, engine=llm, priority=priority, outcome="ok") == 1


def test_job_records_reach_the_histograms_while_the_app_runs(scheduler: Scheduler) -> None:
    app = create_app(settings(), engines=FakeEngines(scheduler))  # type: ignore[arg-type]
    metrics: Metrics = app.state.metrics
    llm = scheduler.name
    with TestClient(app) as client:
        run_jobs(scheduler, 3)

        async def cancel_queued() -> None:
            release, started = threading.Event(), threading.Event()

            def blocking(control: JobControl) -> Iterator[int]:
                started.set()
                release.wait(10)
                yield 1

            async with scheduler.submit(blocking) as holder:
                assert await asyncio.to_thread(started.wait, 10)
                queued = [scheduler.submit(lambda c: iter([1]), priority=Priority.BULK) for _ in range(4)]
                with pytest.raises(QueueFull):
                    scheduler.submit(lambda c: iter([1]))
                for job in queued:
                    await job.aclose()  # leaves the queue at once: outcome "cancelled"
                release.set()
                assert [item async for item in holder] == [1]

        asyncio.run(cancel_queued())
        samples = scrape(client)
        ok = {"engine": llm, "priority": "http", "outcome": "ok"}
        assert value(samples, "localrt_engine_job_run_seconds_count", **ok) == 4
        assert value(samples, "localrt_engine_job_wait_seconds_count", **ok) == 4
        assert value(samples, "localrt_engine_job_run_seconds_sum", **ok) >= 0
        cancelled = {"engine": llm, "priority": "bulk", "outcome": "cancelled"}
        assert value(samples, "localrt_engine_job_wait_seconds_count", **cancelled) == 4
        assert value(samples, "localrt_engine_jobs_rejected_total", engine=llm) == 1

        health = client.get("/health").json()
        assert health["status"] == "ok" and health["chat"]["default"] == "fake-llm"  # existing fields
        summary = health["engines"][llm]
        assert summary["slots"] == 1 and summary["queued"] == 0 and summary["running"] == 0
        assert summary["completed"] == 4 and summary["rejected"] == 1  # cancelled while queued: not run
        latency = summary["latency_ms"]
        assert latency["jobs"] == 4  # successful jobs only
        assert 0 <= latency["wait_p50"] <= latency["wait_p95"]
        assert 0 <= latency["total_p50"] <= latency["total_p95"]

    # After shutdown the app stops observing: later jobs do not reach its histograms.
    run_jobs(scheduler, 2)
    after = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    assert value(after, "localrt_engine_job_run_seconds_count", **ok) == 4


def test_http_requests_counted_by_route_template(scheduler: Scheduler) -> None:
    app = create_app(settings(), engines=FakeEngines(scheduler))  # type: ignore[arg-type]
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health").status_code == 200
        assert client.get("/v1/models/no-such-model-123").status_code == 404
        assert client.get("/no/such/path/456").status_code == 404
        assert client.post("/health").status_code == 405
        samples = scrape(client)
        total = "localrt_http_requests_total"
        assert value(samples, total, route="/health", method="GET", status="200") == 2
        assert value(samples, total, route="/health", method="POST", status="405") == 1
        assert value(samples, total, route="/v1/models/{model_id:path}", method="GET", status="404") == 1
        assert value(samples, total, route="other", method="GET", status="404") == 1
        duration = "localrt_http_request_duration_seconds_count"
        assert value(samples, duration, route="/health", method="GET") == 2
        assert not any("no-such-model" in v or "456" in v for _, labels in samples for _, v in labels)

        # Each app has its own registry: another app's traffic does not show here.
        other = create_app(settings(), engines=FakeEngines(scheduler))  # type: ignore[arg-type]
        with TestClient(other) as other_client:
            fresh = scrape(other_client)
            assert (
                "localrt_http_requests_total",
                (("method", "GET"), ("route", "/health"), ("status", "200")),
            ) not in fresh


def test_metrics_needs_the_key(scheduler: Scheduler) -> None:
    app = create_app(settings(api_key=SecretStr(KEY)), engines=FakeEngines(scheduler))  # type: ignore[arg-type]
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        samples = scrape(client, Authorization=f"Bearer {KEY}")
        # The refusals were counted, under the route they were for.
        assert (
            value(samples, "localrt_http_requests_total", route="/metrics", method="GET", status="401") == 2
        )
        assert client.get("/health/live").status_code == 200  # the liveness probe stays open


def test_turn_marks_feed_the_stage_histograms(scheduler: Scheduler) -> None:
    app = create_app(settings(), engines=FakeEngines(scheduler))  # type: ignore[arg-type]
    with TestClient(app) as client:
        t = 1000.0
        marks = {
            "speech_started": t - 2.0,
            "speech_stopped": t,
            "committed": t + 0.001,
            "response_created": t + 0.002,
            "stt_done": t + 0.150,
            "llm_first_token": t + 0.350,
            "first_clause": t + 0.500,
            "tts_first_chunk": t + 0.580,
            "first_audio_sent": t + 0.600,
            "done": t + 2.0,
        }
        app.state.timings.record("sess_1", "resp_1", marks, status="completed")
        # A text-only response started by the client: no speech marks, so no turn latency.
        app.state.timings.record(
            "sess_1", "resp_2", {"response_created": t, "llm_first_token": t + 0.2}, status="cancelled"
        )
        app.state.realtime_slots.acquire("127.0.0.1")
        samples = scrape(client)
        assert value(samples, "localrt_realtime_turns_total", status="completed") == 1
        assert value(samples, "localrt_realtime_turns_total", status="cancelled") == 1
        assert value(samples, "localrt_realtime_sessions_open") == 1

        def stage(name: str) -> tuple[float, float]:
            base = f"localrt_realtime_{name}_seconds"
            return value(samples, base + "_count"), value(samples, base + "_sum")

        assert stage("end_of_turn_delay") == pytest.approx((1, 0.002), abs=1e-6)
        assert stage("stt_delay") == pytest.approx((1, 0.150), abs=1e-6)
        # From the later of response created / transcript ready; plus the text-only turn's 0.2 s.
        assert stage("llm_ttft") == pytest.approx((2, 0.200 + 0.200), abs=1e-6)
        assert stage("tts_ttfb") == pytest.approx((1, 0.080), abs=1e-6)
        assert stage("turn_latency") == pytest.approx((1, 0.600), abs=1e-6)
        assert value(samples, "localrt_realtime_turn_latency_seconds_bucket", le="0.75") == 1
        assert value(samples, "localrt_realtime_turn_latency_seconds_bucket", le="0.5") == 0


def test_stage_seconds_skips_missing_or_backwards_marks() -> None:
    assert stage_seconds({"a": 1.0}, ("a",), "b") is None
    assert stage_seconds({"b": 1.0}, ("a",), "b") is None
    assert stage_seconds({"a": 2.0, "b": 1.0}, ("a",), "b") is None
    assert stage_seconds({"x": 0.5, "a": 0.0, "b": 1.0}, ("x", "a"), "b") == 0.5
    assert stage_seconds({"x": 0.5, "a": 0.7, "b": 1.0}, ("max:", "x", "a"), "b") == pytest.approx(0.3)


@pytest.mark.anyio
async def test_middleware_skips_websockets() -> None:
    metrics = Metrics()
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        pass

    middleware = HTTPMetricsMiddleware(inner, metrics)
    await middleware({"type": "websocket", "path": "/v1/realtime", "headers": []}, receive, send)
    assert seen == ["websocket"]
    assert "localrt_http_requests_total{" not in metrics.render().decode()
