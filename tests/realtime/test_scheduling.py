"""Realtime responses and the engine schedulers: cancel never waits on another session; a full queue or a
closed engine fails the response (never a hang, never a response left active); priorities and cache keys.

The fake engines run behind the REAL scheduler with the real number of workers (rt_fakes), so session
B's response really queues behind session A's generation. ``engine`` runs the LLM through the real
engine's ChatStream (the path of the in-process model, minus llama.cpp); ``fake`` through FakeStream.
Time limits are generous (1 s for what takes milliseconds) next to A's ~3 s generation.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from rt_fakes import (
    Client,
    EngineStreamLLM,
    FakeEngines,
    FakeLLM,
    connect,
    silence,
    tone,
    words_reply,
)

from localrt.engines.scheduler import Job, JobControl, Priority, Scheduler

pytestmark = pytest.mark.anyio

A_WORDS = 30
A_DELAY = 0.1  # seconds per token: session A's reply keeps the one LLM worker busy for ~3 s
A_REPLY = " ".join(f"w{i}" for i in range(A_WORDS))
PROMPT_S = 1.0  # "promptly": what takes milliseconds, with a wide margin for a loaded machine
UPDATE = {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}}


# --- helpers ------------------------------------------------------------------------------------------------
def b64(samples: np.ndarray) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def use_llm(engines: FakeEngines, kind: str, scheduler: Scheduler | None = None) -> FakeLLM:
    """Put a fresh fake LLM of ``kind`` in the pool (closing the fixture's one)."""
    engines.llm.engine.scheduler.close(wait=1.0)
    llm = EngineStreamLLM(scheduler) if kind == "engine" else FakeLLM(scheduler)
    engines.llm.engine = llm
    return llm


async def open_session(url: str, *, text: bool = False, vad: bool = True) -> tuple[Client, str]:
    client = await connect(url)
    created = await client.recv()
    assert created["type"] == "session.created"
    session: dict[str, Any] = {"type": "realtime"}
    if text:
        session["output_modalities"] = ["text"]
    if not vad:
        session["audio"] = {"input": {"turn_detection": None}}
    if len(session) > 1:
        await client.send({"type": "session.update", "session": session})
        assert (await client.recv())["type"] == "session.updated"
    return client, str(created["session"]["id"])


async def say(client: Client, text: str) -> None:
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }
    )
    await client.until("conversation.item.done")


async def stream_audio(client: Client, audio: np.ndarray, chunk_ms: int = 100, rate: int = 24000) -> None:
    step = rate * chunk_ms // 1000
    for start in range(0, audio.size, step):
        await client.send({"type": "input_audio_buffer.append", "audio": b64(audio[start : start + step])})


async def eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def start_long_response(a: Client, llm: FakeLLM) -> None:
    """Session A's long generation, running on the LLM's one worker."""
    llm.script, llm.delay = words_reply(A_REPLY), A_DELAY
    await say(a, "Talk for a while.")
    await a.send({"type": "response.create"})
    await a.until("response.output_text.delta")


def still_generating(llm: FakeLLM) -> bool:
    """A's job still runs (and B's left the queue)."""
    stats = llm.scheduler.stats()
    return llm.tokens_generated < A_WORDS and stats.running == 1


def hold(scheduler: Scheduler, seconds: float, priority: Priority = Priority.HTTP) -> Job[None]:
    """A job that keeps one of ``scheduler``'s workers (or a queue place) busy until closed."""

    def produce(control: JobControl) -> Iterator[None]:
        control.wait(seconds)
        yield from ()

    return scheduler.submit(produce, priority=priority)


@pytest.fixture
def held() -> Iterator[list[Job[None]]]:
    jobs: list[Job[None]] = []
    yield jobs
    for job in jobs:
        job.cancel()


# --- (a) the reported bug: response.cancel of a response queued behind another session ----------------------
@pytest.mark.parametrize("kind", ["engine", "fake"])
async def test_cancel_of_a_queued_response_answers_while_another_session_generates(
    fake_ws_url: str, fake_engines: FakeEngines, kind: str
) -> None:
    llm = use_llm(fake_engines, kind)
    a, _ = await open_session(fake_ws_url, text=True)
    b, _ = await open_session(fake_ws_url, text=True)
    async with a, b:
        await start_long_response(a, llm)
        await say(b, "Hi")
        await b.send({"type": "response.create"})
        created = (await b.until("response.created"))[-1]["response"]
        await eventually(lambda: llm.scheduler.stats().queued == 1)  # B waits behind A
        t0 = time.monotonic()
        await b.send({"type": "response.cancel"})
        cancelled = await b.recv(timeout=10)
        cancel_s = time.monotonic() - t0
        after = [await b.recv(timeout=10)]
        await b.send(UPDATE)
        after += await b.until("session.updated", timeout=10)
        total_s = time.monotonic() - t0
        generating = still_generating(llm)
    assert cancelled["type"] == "response.done", cancelled
    done = cancelled["response"]
    assert done["id"] == created["id"] and done["status"] == "cancelled" and done["output"] == []
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert types(after) == ["rate_limits.updated", "session.updated"]
    assert cancel_s < PROMPT_S and total_s < PROMPT_S, f"B answered after {cancel_s:.2f} s / {total_s:.2f} s"
    assert generating, "A's generation ended before B was answered: the test proves nothing"


async def test_disconnect_with_a_queued_response_frees_its_queue_place_at_once(
    fake_ws_url: str, fake_engines: FakeEngines
) -> None:
    llm = use_llm(fake_engines, "engine")
    a, _ = await open_session(fake_ws_url, text=True)
    async with a:
        await start_long_response(a, llm)
        b, _ = await open_session(fake_ws_url, text=True)
        async with b:
            await say(b, "Hi")
            await b.send({"type": "response.create"})
            await b.until("response.created")
            await eventually(lambda: llm.scheduler.stats().queued == 1)
        t0 = time.monotonic()  # B is gone: its session's tasks are cancelled, its job leaves the queue
        await eventually(lambda: llm.scheduler.stats().queued == 0, timeout=10)
        gone_s = time.monotonic() - t0
        generating = still_generating(llm)
    assert gone_s < PROMPT_S, f"B's job left the queue after {gone_s:.2f} s"
    assert generating


# --- (b) barge-in while B's response is queued --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["engine", "fake"])
async def test_barge_in_on_a_queued_response_answers_while_another_session_generates(
    fake_ws_url: str, fake_engines: FakeEngines, kind: str
) -> None:
    llm = use_llm(fake_engines, kind)
    a, _ = await open_session(fake_ws_url, text=True)
    b, _ = await open_session(fake_ws_url)  # audio out, server VAD (interrupt_response on)
    async with a, b:
        await start_long_response(a, llm)
        await say(b, "Hi")
        await b.send({"type": "response.create"})
        created = (await b.until("response.created"))[-1]["response"]
        await eventually(lambda: llm.scheduler.stats().queued == 1)
        t0 = time.monotonic()
        await stream_audio(b, tone(0.4))  # speech starts: barge-in
        events = await b.until("response.done", timeout=10)
        cancel_s = time.monotonic() - t0
        await b.send(UPDATE)
        events += await b.until("session.updated", timeout=10)
        total_s = time.monotonic() - t0
        generating = still_generating(llm)
    kinds = types(events)
    assert kinds[0] == "input_audio_buffer.speech_started"
    done = events[kinds.index("response.done")]["response"]
    assert done["id"] == created["id"] and done["status"] == "cancelled" and done["output"] == []
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert kinds[kinds.index("response.done") + 1] == "rate_limits.updated"
    assert cancel_s < PROMPT_S and total_s < PROMPT_S, f"B answered after {cancel_s:.2f} s / {total_s:.2f} s"
    assert generating, "A's generation ended before B was answered: the test proves nothing"


# --- (c) truncate while B's response waits for an engine busy with other work ---------------------------------
async def test_truncate_of_an_earlier_item_while_the_response_is_queued(
    fake_ws_url: str, fake_engines: FakeEngines
) -> None:
    llm = use_llm(fake_engines, "engine")
    llm.delay = 0.001
    a, _ = await open_session(fake_ws_url, text=True)
    b, _ = await open_session(fake_ws_url)
    async with a, b:
        await say(b, "Hi")
        await b.send({"type": "response.create"})
        first = (await b.until("rate_limits.updated"))[-2]["response"]
        assert first["status"] == "completed"
        item_id = first["output"][0]["id"]
        await start_long_response(a, llm)
        await b.send({"type": "response.create"})
        queued = (await b.until("response.created"))[-1]["response"]
        await eventually(lambda: llm.scheduler.stats().queued == 1)
        t0 = time.monotonic()
        truncate = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0}
        await b.send({**truncate, "audio_end_ms": 10})
        truncated = await b.recv(timeout=10)
        await b.send(UPDATE)
        updated = await b.recv(timeout=10)
        total_s = time.monotonic() - t0
        generating = still_generating(llm)
        still_queued = llm.scheduler.stats().queued  # B's response does not own the item: untouched
        await b.send({"type": "response.cancel"})
        done = (await b.until("response.done", timeout=10))[-1]["response"]
    assert (truncated["type"], truncated["item_id"], truncated["audio_end_ms"]) == (
        "conversation.item.truncated",
        item_id,
        10,
    )
    assert updated["type"] == "session.updated"
    assert done["id"] == queued["id"] and done["status"] == "cancelled"
    assert generating and still_queued == 1
    assert total_s < PROMPT_S, total_s


async def test_truncate_cancels_a_response_whose_speech_is_queued_behind_busy_tts(
    fake_ws_url: str, fake_engines: FakeEngines, held: list[Job[None]]
) -> None:
    """Both TTS workers busy with other (long, HTTP) synthesis: B's item exists, its first clause waits."""
    tts = fake_engines.tts
    assert tts is not None
    fake_engines.llm.engine.delay = 0.001
    b, _ = await open_session(fake_ws_url)
    async with b:
        held += [hold(tts.scheduler, 30.0), hold(tts.scheduler, 30.0)]
        await eventually(lambda: tts.scheduler.stats().running == 2)
        await say(b, "Hi")
        await b.send({"type": "response.create"})
        opened = await b.until("response.content_part.added")
        item_id = next(e for e in opened if e["type"] == "response.output_item.added")["item"]["id"]
        await eventually(lambda: tts.scheduler.stats().queued == 1)  # B's clause waits for a worker
        t0 = time.monotonic()
        truncate = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0}
        await b.send({**truncate, "audio_end_ms": 0})
        events = await b.until("conversation.item.truncated", timeout=10)
        await b.send(UPDATE)
        events += await b.until("session.updated", timeout=10)
        total_s = time.monotonic() - t0
        busy = tts.scheduler.stats()
    assert types(events) == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
        "conversation.item.truncated",
        "session.updated",
    ]
    done = events[5]["response"]
    assert done["status"] == "cancelled" and done["output"][0]["status"] == "incomplete"
    assert busy.running == 2 and busy.queued == 0  # the held jobs still run; B's left the queue
    assert total_s < PROMPT_S, total_s


# --- (d) a full queue fails the response; the session goes on ------------------------------------------------
async def test_a_full_llm_queue_fails_the_automatic_response_and_the_next_turn_works(
    fake_ws_url: str, fake_engines: FakeEngines, held: list[Job[None]]
) -> None:
    llm = use_llm(fake_engines, "engine", Scheduler("llm:fake-llm", slots=1, max_queue=1))
    llm.delay = 0.001
    b, _ = await open_session(fake_ws_url, text=True)  # server VAD: responses start on their own
    async with b:
        held.append(hold(llm.scheduler, 30.0))
        await eventually(lambda: llm.scheduler.stats().running == 1)
        held.append(hold(llm.scheduler, 30.0))  # the queue's one place
        t0 = time.monotonic()
        await stream_audio(b, np.concatenate([tone(0.5), silence(0.8)]))
        events = await b.until("rate_limits.updated", timeout=10)
        failed_s = time.monotonic() - t0
        for job in held:
            await job.aclose()
        await stream_audio(b, np.concatenate([tone(0.5), silence(0.8)]))
        later = await b.until("rate_limits.updated", timeout=10)
    kinds = types(events)
    assert kinds[kinds.index("response.created") :] == [
        "response.created",
        "error",
        "response.done",
        "rate_limits.updated",
    ]
    error = events[kinds.index("error")]["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "queue is full" in error["message"]
    done = events[kinds.index("response.done")]["response"]
    assert done["status"] == "failed"
    assert done["status_details"] == {
        "type": "failed",
        "error": {"type": error["type"], "code": error["code"], "message": error["message"]},
    }
    assert failed_s < 5.0  # the audio itself, then at once: no wait for the queue
    assert "error" not in types(later)
    assert later[-2]["type"] == "response.done" and later[-2]["response"]["status"] == "completed"


# --- (e) a closed (evicted) engine fails the running response; later ones are not blocked ----------------------
@pytest.mark.parametrize("kind", ["engine", "fake"])
async def test_closing_the_llm_fails_the_running_response_and_never_leaves_it_active(
    fake_ws_url: str, fake_engines: FakeEngines, kind: str
) -> None:
    llm = use_llm(fake_engines, kind)
    b, _ = await open_session(fake_ws_url, text=True, vad=False)
    async with b:
        await start_long_response(b, llm)
        await asyncio.to_thread(llm.scheduler.close, wait=5.0)
        events = await b.until("rate_limits.updated", timeout=5)
        await b.send({"type": "response.create", "event_id": "again"})  # not blocked by an active one
        again = await b.until("rate_limits.updated", timeout=5)
        fake_engines.llm.engine = fresh = FakeLLM()  # the model loaded again
        fresh.script = words_reply("Back.")
        await b.send({"type": "response.create"})
        later = await b.until("rate_limits.updated", timeout=5)
    kinds = types(events)
    assert kinds[-3:] == ["error", "response.done", "rate_limits.updated"]
    error = events[-3]["error"]
    assert (error["type"], error["code"], error["event_id"]) == ("server_error", "service_unavailable", None)
    done = events[-2]["response"]
    assert done["status"] == "failed" and done["status_details"]["error"]["code"] == "service_unavailable"
    assert done["output"][0]["status"] == "incomplete"
    assert types(again) == ["response.created", "error", "response.done", "rate_limits.updated"]
    assert again[1]["error"]["code"] == "service_unavailable" and again[1]["error"]["event_id"] == "again"
    assert again[2]["response"]["status"] == "failed"
    assert later[-2]["response"]["status"] == "completed"
    assert later[-2]["response"]["output"][0]["content"][0]["text"] == "Back."


# --- (f) priorities and cache keys ------------------------------------------------------------------------------
async def test_realtime_jobs_are_realtime_priority_and_keyed_by_session(
    fake_ws_url: str, fake_engines: FakeEngines
) -> None:
    llm, tts = fake_engines.llm.engine, fake_engines.tts
    assert tts is not None
    a, a_id = await open_session(fake_ws_url)
    b, b_id = await open_session(fake_ws_url, text=True)
    async with a, b:
        for client in (a, b):
            await say(client, "Hi")
            await client.send({"type": "response.create"})
            assert (await client.until("rate_limits.updated"))[-2]["response"]["status"] == "completed"
        user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Summarize."}]}
        await b.send({"type": "response.create", "response": {"conversation": "none", "input": [user]}})
        assert (await b.until("rate_limits.updated"))[-2]["response"]["status"] == "completed"
    assert a_id != b_id
    assert llm.priorities == [Priority.REALTIME] * 3
    # the conversation's turns are keyed by their session; a response with its own input keeps no state
    assert llm.cache_keys == [a_id, b_id, None]
    assert tts.priorities and set(tts.priorities) == {Priority.REALTIME}
