"""The chat engine's scheduling, without a model: the REAL LLMEngine, ChatStream, LLMPool and Scheduler
over a fake backend (the part that would call llama.cpp), one worker, so queued jobs really queue.

Covers issue 13's failures: a cancelled response no longer waits for another session's generation, and
closing (evicting) a model ends its queued and running jobs with an error instead of leaving them hanging;
and the rest of the engine core: the queue bound (QueueFull from entering), priorities, busy models not
evicted, and the per-session state cache's bookkeeping.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from localrt.catalog import Catalog
from localrt.engines import llm_state
from localrt.engines.llm import LLMEngine, OnJobDone
from localrt.engines.llm_pool import LLMPool
from localrt.engines.llm_state import SavedState, SessionStates, StateCache, common_prefix
from localrt.engines.llm_stream import ChatRequest, ChatStream, Item, Ready
from localrt.engines.scheduler import EngineClosed, JobControl, JobRecord, Priority, QueueFull
from localrt.engines.types import ChatResult, SamplingParams, TextDelta
from localrt.settings import Settings
from tests.servers import make_settings

pytestmark = pytest.mark.anyio

LONG = 400  # tokens of a long reply: 400 x 10 ms = 4 s of the only worker


class FakeBackend:
    """A token every ``delay`` seconds of the worker; the reply is ``max_tokens`` words."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.closed = False
        self.started: list[str] = []  # the first user message of each job that started
        self.tokens = 0
        self.running = threading.Event()
        self.gate: threading.Event | None = None  # when set: each reply waits for it before it ends

    def chat(self, control: JobControl, req: ChatRequest) -> Iterator[Item]:
        name = str(req.messages[-1]["content"])
        self.started.append(name)
        yield Ready(prompt_tokens=7, cached_tokens=3)
        self.running.set()
        words = []
        for i in range(req.params.max_tokens or 20):
            if control.is_set():
                return
            time.sleep(self.delay)
            self.tokens += 1
            words.append(f"{name}{i} ")
            yield TextDelta(words[-1])
        while self.gate is not None and not self.gate.wait(0.01):
            if control.is_set():
                return
        yield ChatResult(text="".join(words), prompt_tokens=7, completion_tokens=len(words), cached_tokens=3)

    def complete(
        self, control: JobControl, prompt: str | list[int], params: SamplingParams
    ) -> Iterator[Item]:
        yield Ready(prompt_text=str(prompt))
        yield ChatResult(text="done")

    def close(self) -> None:
        self.closed = True


def make_engine(
    backend: FakeBackend | None = None, *, max_queue: int = 8, on_job_done: OnJobDone | None = None
) -> tuple[LLMEngine, FakeBackend]:
    backend = backend or FakeBackend()
    engine = LLMEngine("fake", backend, n_ctx=2048, max_queue=max_queue, on_job_done=on_job_done)
    return engine, backend


def chat(engine: LLMEngine, name: str, tokens: int, priority: Priority = Priority.HTTP) -> ChatStream:
    params = SamplingParams(max_tokens=tokens)
    return engine.chat([{"role": "user", "content": name}], params=params, priority=priority)


async def run(stream: ChatStream) -> ChatResult:
    async with stream:
        async for _ in stream:
            pass
    return stream.result


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


# --- one engine ------------------------------------------------------------------------------------------
async def test_a_reply_streams_and_reports_its_result() -> None:
    engine, _ = make_engine()
    try:
        stream = chat(engine, "a", 5)
        async with stream:
            assert stream.result.prompt_tokens == 7 and stream.result.cached_tokens == 3  # from Ready
            texts = [e.text async for e in stream if isinstance(e, TextDelta)]
        assert texts == [f"a{i} " for i in range(5)]
        assert stream.result.completion_tokens == 5
        [stats] = engine.stats()
        assert stats.engine == "llm:fake" and stats.slots == 1 and stats.max_queue == 8
    finally:
        engine.close()


async def test_entering_raises_queue_full_when_the_queue_is_full() -> None:
    engine, backend = make_engine(max_queue=1)
    try:
        long = chat(engine, "long", LONG)
        async with long:  # running: the queue is empty
            queued = asyncio.create_task(run(chat(engine, "queued", 3)))
            await wait_for(lambda: engine.stats()[0].queued == 1)
            with pytest.raises(QueueFull) as refused:
                async with chat(engine, "refused", 3):
                    pass
            assert refused.value.status == 429
            assert engine.stats()[0].rejected == 1
        # leaving the long job lets the queued one run to its end
        result = await asyncio.wait_for(queued, 10)
        assert result.text.startswith("queued0 ")
        assert "refused" not in backend.started
    finally:
        engine.close()


async def test_cancelling_a_queued_reply_returns_at_once_while_another_generates() -> None:
    """Regression (issue 13): a response whose LLM job was still queued behind another session's
    generation waited for that generation to end before its cancel returned."""
    engine, backend = make_engine()
    try:
        long = chat(engine, "long", LONG)
        async with long:
            waiting = asyncio.create_task(run(chat(engine, "other", 3)))
            await wait_for(lambda: engine.stats()[0].queued == 1)
            started = time.monotonic()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            elapsed = time.monotonic() - started
            assert elapsed < 1.0  # the long generation has about 4 s left
            assert engine.stats()[0].queued == 0
            assert backend.tokens < LONG  # it was still generating
        assert "other" not in backend.started  # the cancelled job never ran
    finally:
        engine.close()


async def test_cancel_of_a_queued_stream_ends_its_iteration_without_running() -> None:
    engine, backend = make_engine()
    try:
        async with chat(engine, "long", LONG):
            queued = chat(engine, "queued", 3)
            entering = asyncio.create_task(queued.__aenter__())
            await wait_for(lambda: engine.stats()[0].queued == 1)
            started = time.monotonic()
            queued.cancel()  # thread safe: e.g. from a realtime session's reader
            await asyncio.wait_for(entering, 1.0)
            assert [e async for e in queued] == []
            await queued.__aexit__(None, None, None)
            assert time.monotonic() - started < 1.0
        assert "queued" not in backend.started
    finally:
        engine.close()


async def test_leaving_a_running_reply_does_not_wait_and_stops_it_within_a_token() -> None:
    backend = FakeBackend(delay=0.5)
    engine, _ = make_engine(backend)
    try:
        stream = chat(engine, "long", LONG)
        async with stream:
            async for _ in stream:
                break
            started = time.monotonic()
        assert time.monotonic() - started < 0.25  # well under the token the worker is in
        await wait_for(lambda: not engine.busy, timeout=5)
        assert backend.tokens < 5
        # the model is free for the next job
        assert (await run(chat(engine, "next", 2))).text == "next0 next1 "
    finally:
        engine.close()


async def test_realtime_jobs_run_before_queued_http_jobs() -> None:
    engine, backend = make_engine()
    try:
        async with chat(engine, "long", LONG):
            http = asyncio.create_task(run(chat(engine, "http", 2, Priority.HTTP)))
            await wait_for(lambda: engine.stats()[0].queued == 1)
            voice = asyncio.create_task(run(chat(engine, "voice", 2, Priority.REALTIME)))
            await wait_for(lambda: engine.stats()[0].queued == 2)
        await asyncio.wait_for(asyncio.gather(http, voice), 10)
        assert backend.started == ["long", "voice", "http"]
    finally:
        engine.close()


async def test_closing_ends_queued_and_running_jobs_with_engine_closed() -> None:
    """Regression (issue 13): closing (evicting) a model cancelled its queued jobs without ever
    delivering their end, so an HTTP request hung forever."""
    records: list[JobRecord] = []
    engine, backend = make_engine(on_job_done=records.append)
    running = chat(engine, "running", LONG)
    await running.__aenter__()
    queued = asyncio.create_task(run(chat(engine, "queued", 3)))
    await wait_for(lambda: engine.stats()[0].queued == 1)

    async def consume() -> None:
        async for _ in running:
            pass

    consumer = asyncio.create_task(consume())
    await asyncio.to_thread(engine.close)
    with pytest.raises(EngineClosed) as closed:
        await asyncio.wait_for(consumer, 5)
    assert closed.value.status == 503
    with pytest.raises(EngineClosed):
        await asyncio.wait_for(queued, 5)
    await running.__aexit__(None, None, None)
    assert backend.closed  # freed once its worker had stopped
    assert backend.started == ["running"]
    assert sorted(r.outcome for r in records) == ["closed", "closed"]
    with pytest.raises(EngineClosed):  # and nothing new is accepted
        await run(chat(engine, "late", 1))


# --- the pool --------------------------------------------------------------------------------------------
def make_pool(tmp_path: Path, settings: Settings) -> tuple[LLMPool, dict[str, FakeBackend]]:
    paths = {}
    for name in ("m0", "m1", "m2", "m3"):
        paths[name] = tmp_path / f"{name}.gguf"
        paths[name].write_bytes(b"GGUF")
    backends: dict[str, FakeBackend] = {}

    def loader(model_id: str, path: Path, settings: Settings, on_job_done: OnJobDone | None) -> LLMEngine:
        assert path == paths[model_id]
        backends[model_id] = FakeBackend()
        return LLMEngine(model_id, backends[model_id], n_ctx=2048, on_job_done=on_job_done)

    pool = LLMPool(settings, Catalog(llms=paths), loader=loader)
    return pool, backends


async def test_eviction_skips_models_with_jobs_in_flight(tmp_path: Path) -> None:
    pool, backends = make_pool(tmp_path, make_settings(llm_model="m0", max_loaded_models=2))
    await asyncio.to_thread(pool.load_default)
    try:
        m1 = await pool.get("m1")
        assert pool.loaded_ids == ["m0", "m1"]
        gate = backends["m1"].gate = threading.Event()  # m1's reply does not end before we say so
        stream = chat(m1, "busy", 30)
        async with stream:
            await pool.get("m2")  # over the limit, but m1 is generating: nothing is evicted
            assert pool.loaded_ids == ["m0", "m1", "m2"]
            assert not backends["m1"].closed
            gate.set()
            texts = [e.text async for e in stream if isinstance(e, TextDelta)]
        assert len(texts) == 30 and stream.result.completion_tokens == 30  # it finished undisturbed
        await wait_for(lambda: not pool.busy)
        await pool.get("m3")  # a later load evicts the idle ones, least recently used first
        assert pool.loaded_ids == ["m0", "m3"]
        assert backends["m1"].closed and backends["m2"].closed and not backends["m0"].closed
        assert {s.engine for s in pool.stats()} == {"llm:m0", "llm:m3"}
        assert pool.created("m1") == int((tmp_path / "m1.gguf").stat().st_mtime) > 0
    finally:
        await asyncio.to_thread(pool.close)


async def test_closing_the_pool_ends_jobs_with_engine_closed(tmp_path: Path) -> None:
    pool, backends = make_pool(tmp_path, make_settings(llm_model="m0"))
    await asyncio.to_thread(pool.load_default)
    engine = await pool.get(None)
    running = asyncio.create_task(run(chat(engine, "running", LONG)))
    await wait_for(backends["m0"].running.is_set)
    queued = asyncio.create_task(run(chat(engine, "queued", 3)))
    await wait_for(lambda: pool.stats()[0].queued == 1)
    assert pool.busy
    await asyncio.to_thread(pool.close)
    for task in (running, queued):
        with pytest.raises(EngineClosed):
            await asyncio.wait_for(task, 5)
    assert backends["m0"].closed and pool.loaded_ids == []


# --- the per-session state cache ------------------------------------------------------------------------
def state(n_tokens: int, n_bytes: int) -> SavedState:
    data = (ctypes.c_uint8 * n_bytes)()
    return SavedState(tokens=np.arange(n_tokens, dtype=np.intc), data=data, size=n_bytes)


def test_state_cache_evicts_least_recently_used_within_its_budget() -> None:
    one = state(10, 1000).nbytes
    cache = StateCache(budget=3 * one)
    for key in ("a", "b", "c"):
        cache.put(key, state(10, 1000))
    assert cache.used == 3 * one and len(cache) == 3
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", state(10, 1000))
    assert "b" not in cache and {"a", "c", "d"} <= {k for k in ("a", "b", "c", "d") if k in cache}
    cache.put("a", state(10, 2000))  # replacing a key frees its old state first
    assert "a" in cache and cache.used <= cache.budget
    cache.put("huge", state(10, 10 * one))  # larger than the whole budget: not kept, nothing evicted
    assert "huge" not in cache and "a" in cache
    assert not StateCache(budget=0).enabled


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix(np.array([1, 2, 3], dtype=np.intc), [1, 2, 3]) == 3
    assert common_prefix([], [1]) == 0
    assert common_prefix([9], [1, 2]) == 0


class ContextStub:
    """What SessionStates reads of a Llama: the tokens its context holds."""

    def __init__(self) -> None:
        self.input_ids = np.zeros(64, dtype=np.intc)
        self.n_tokens = 0

    def run(self, tokens: list[int]) -> None:  # a job evaluated these
        self.input_ids[: len(tokens)] = tokens
        self.n_tokens = len(tokens)


def test_session_states_save_lazily_and_restore_the_longer_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    saves: list[list[int]] = []
    restores: list[list[int]] = []

    def fake_save(llama: ContextStub) -> SavedState:
        saves.append(llama.input_ids[: llama.n_tokens].tolist())
        return SavedState(llama.input_ids[: llama.n_tokens].copy(), (ctypes.c_uint8 * 8)(), 8)

    def fake_restore(llama: ContextStub, saved: SavedState) -> bool:
        restores.append(saved.tokens.tolist())
        llama.run(saved.tokens.tolist())
        return True

    monkeypatch.setattr(llm_state, "save", fake_save)
    monkeypatch.setattr(llm_state, "restore", fake_restore)
    states, llama = SessionStates(budget=1 << 20), ContextStub()

    def job(key: str | None, prompt: list[int], reply: list[int]) -> int:
        cached = states.prepare(llama, key, prompt)  # type: ignore[arg-type]
        llama.run(prompt + reply)
        states.finish(key)
        return cached

    # a session alone: each turn reuses the last, and nothing is copied
    assert job("a", [1, 2], [3]) == 0
    assert job("a", [1, 2, 3, 4], [5]) == 3
    assert saves == [] and restores == []
    # another session takes the model: a's context is saved once, on the switch
    assert job("b", [1, 9], [8]) == 1
    assert saves == [[1, 2, 3, 4, 5]]
    # a comes back: b's is saved, a's restored, and a's whole history is reused
    assert job("a", [1, 2, 3, 4, 5, 6], [7]) == 5
    assert saves[-1] == [1, 9, 8] and restores == [[1, 2, 3, 4, 5]]
    # an unkeyed job saves the live session's context and restores nothing
    job(None, [1, 2, 3], [4])
    assert saves[-1] == [1, 2, 3, 4, 5, 6, 7] and len(restores) == 1
    # a preempted generation coming back keeps what the nested job left (flush), once
    job("b", [1, 9, 8, 6], [5])
    states.flush(llama)  # type: ignore[arg-type]
    states.flush(llama)  # type: ignore[arg-type]
    assert saves[-1] == [1, 9, 8, 6, 5] and saves.count([1, 9, 8, 6, 5]) == 1
