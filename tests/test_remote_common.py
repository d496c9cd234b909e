"""The remote engines' shared parts, without any model: base URLs, the mapping of upstream failures,
and the scheduler slot held by async work (:class:`~localrt.engines.remote_common.SlotLease`)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import openai
import pytest

from localrt.engines.remote_common import SlotLease, map_error, normalize_base_url
from localrt.engines.scheduler import EngineClosed, JobRecord, Priority, QueueFull, Scheduler
from localrt.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    ServiceUnavailable,
)

UP = "http://up:8000/v1"


def test_normalize_base_url() -> None:
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/") == "http://h:8000/v1"
    assert normalize_base_url("https://h/openai/v1/") == "https://h/openai/v1"
    for bad in ("ftp://h", "h:8000", "http://", "http://h:8000/v1?x=1"):
        with pytest.raises(ValueError):
            normalize_base_url(bad)


def _status_error(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> openai.APIStatusError:
    """The error the client raises for an upstream answer (built by the client itself)."""
    import httpx2  # the client's HTTP library

    request = httpx2.Request("POST", UP + "/chat/completions")
    response = httpx2.Response(status, json=body, headers=headers or {}, request=request)
    client = openai.OpenAI(base_url=UP, api_key="x")
    try:
        err = client._make_status_error_from_response(response)
    finally:
        client.close()
    assert isinstance(err, openai.APIStatusError)
    return err


def test_map_error() -> None:
    err = map_error(_status_error(429, {"error": {"message": "slow down"}}, {"retry-after": "7"}), UP)
    assert isinstance(err, RateLimited) and err.retry_after == 7 and "slow down" in err.message
    assert err.code == "rate_limit_exceeded"
    ctx = {"error": {"message": "This model's maximum context length is 512 tokens", "code": None}}
    assert isinstance(map_error(_status_error(400, ctx), UP), ContextLengthExceeded)
    gone = map_error(
        _status_error(404, {"error": {"code": "model_not_found", "message": "no"}}), UP, model="m"
    )
    assert isinstance(gone, ModelNotFound) and "'m'" in gone.message
    path = map_error(_status_error(404, {"detail": "Not Found"}), UP)
    assert path.status == 502 and "/v1/chat/completions" in path.message
    bad = map_error(_status_error(422, {"detail": "temperature too high"}), UP)
    assert isinstance(bad, InvalidRequest) and bad.message == "temperature too high"
    auth = map_error(_status_error(401, {"error": {"message": "bad key"}}), UP)
    assert auth.status == 502 and auth.code == "upstream_auth_failed"  # not the client's key
    down = map_error(_status_error(503, {"error": {"message": "loading"}}, {"retry-after": "3"}), UP)
    assert isinstance(down, ServiceUnavailable) and down.retry_after == 3
    boom = map_error(_status_error(500, {"error": {"message": "CUDA OOM"}}), UP)
    assert (
        boom.status == 502
        and boom.code == "upstream_error"
        and UP in boom.message
        and "CUDA OOM" in boom.message
    )
    refused = map_error(ConnectionRefusedError(111, "Connection refused"), UP)
    assert isinstance(refused, ServiceUnavailable) and refused.message.startswith(f"upstream {UP} ")


# --- SlotLease --------------------------------------------------------------------------------------------------


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_lease_queue_bound_priority_and_outcomes() -> None:
    records: list[JobRecord] = []
    sched = Scheduler("t:lease", slots=1, max_queue=2, on_job_done=records.append, shares_cpu=False)
    order: list[str] = []

    async def take(priority: Priority, tag: str) -> None:
        async with SlotLease(sched, priority):
            order.append(tag)

    try:
        async with SlotLease(sched, Priority.BULK):
            http = asyncio.create_task(take(Priority.HTTP, "http"))
            await _settle()
            realtime = asyncio.create_task(take(Priority.REALTIME, "realtime"))
            await _settle()
            stats = sched.stats()
            assert (stats.running, stats.queued) == (1, 2)
            with pytest.raises(QueueFull):
                async with SlotLease(sched, Priority.HTTP):
                    pass
        await asyncio.wait_for(asyncio.gather(http, realtime), 5)
        assert order == ["realtime", "http"]  # the realtime job went first
        with pytest.raises(RuntimeError):
            async with SlotLease(sched):
                raise RuntimeError("the upstream failed")
        await _settle()
        outcomes = [r.outcome for r in records]
        assert outcomes[:3] == ["ok", "ok", "ok"] and outcomes[-1] == "error"
    finally:
        sched.close(wait=5)


@pytest.mark.anyio
async def test_lease_cancel_while_queued_and_while_running() -> None:
    sched = Scheduler("t:lease2", slots=1, max_queue=4, shares_cpu=False)
    started = asyncio.Event()

    async def hold() -> None:
        async with SlotLease(sched):
            started.set()
            await asyncio.sleep(30)

    try:
        running = asyncio.create_task(hold())
        await asyncio.wait_for(started.wait(), 5)
        waiting = asyncio.create_task(hold())
        await _settle()
        assert sched.stats().queued == 1
        waiting.cancel()
        await _settle()
        assert sched.stats().queued == 0  # left the queue at once
        running.cancel()
        await _settle()
        assert await _released(sched)  # the worker saw the release
        started.clear()
        again = asyncio.create_task(hold())
        await asyncio.wait_for(started.wait(), 5)  # the slot is free for the next job
        threading.Thread(target=sched.close).start()  # closing the engine ends the running body
        with pytest.raises(EngineClosed):
            await asyncio.wait_for(again, 5)
    finally:
        sched.close(wait=5)


async def _released(sched: Scheduler) -> bool:
    for _ in range(50):
        if sched.stats().running == 0:
            return True
        await asyncio.sleep(0.01)
    return False
