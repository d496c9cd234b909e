"""The bench's concurrency and mixed-load stages, against fakes: sessions talk in rounds, the mixed case
measures its two series with the load off and on, and the background load keeps long requests going
in its own processes and stops with the stage."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from websockets.asyncio.server import ServerConnection, serve

from localrt.bench import mixed, report
from localrt.bench.inputs import Utterance, long_speech
from localrt.bench.load import BackgroundLoad, LoadFailed, coverage
from localrt.bench.runner import _concurrent_sessions
from localrt.bench.voice import TurnSample
from localrt.serving import serve_in_thread
from tests.test_bench_report import fake_mixed, fake_raw

UTT = Utterance("Hello?", np.zeros(2400, np.int16), np.zeros(1600, np.float32), 2400)


@contextlib.asynccontextmanager
async def talking_server(delays: list[float], log: list[tuple[str, int, int, float]]) -> AsyncIterator[str]:
    """A realtime server whose session s (in connection order) answers each turn ``delays[s]`` s after
    its audio starts, logging ("start" | "done", session, turn, time); a turn's ``response.done``
    reports 100 prompt tokens, 80 of them cached after the first turn."""
    loop = asyncio.get_running_loop()
    numbers = itertools.count()

    async def handler(ws: ServerConnection) -> None:
        s = next(numbers)
        await ws.send(json.dumps({"type": "session.created", "session": {"id": f"sess_{s}"}}))
        state: dict[str, Any] = {"n": 0, "responding": False, "quiet_until": 0.0}
        replies = []

        async def respond(k: int) -> None:
            log.append(("start", s, k, loop.time()))
            await ws.send(json.dumps({"type": "response.created", "response": {"id": f"resp_{s}_{k}"}}))
            await asyncio.sleep(delays[s])
            usage = {"input_tokens": 100, "input_token_details": {"cached_tokens": 80 if k else 0}}
            done = {"id": f"resp_{s}_{k}", "status": "completed", "usage": usage}
            log.append(("done", s, k, loop.time()))
            await ws.send(json.dumps({"type": "response.done", "response": done}))
            state.update(responding=False, quiet_until=loop.time() + 0.2)

        async for raw in ws:
            kind = json.loads(raw)["type"]
            if kind == "session.update":
                await ws.send(json.dumps({"type": "session.updated"}))
            elif (
                kind == "input_audio_buffer.append"
                and not state["responding"]
                and loop.time() > state["quiet_until"]
            ):
                state["responding"] = True
                replies.append(asyncio.create_task(respond(state["n"])))
                state["n"] += 1
        for task in replies:
            task.cancel()
        await asyncio.gather(*replies, return_exceptions=True)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}"


@pytest.mark.anyio
async def test_concurrent_sessions_talk_in_rounds() -> None:
    """A fast session does not run ahead of a slow one: every session's turn k ends before any turn
    k+1 starts, so their histories alternate in the engine. Usage is recorded per turn."""
    log: list[tuple[str, int, int, float]] = []
    async with talking_server([0.0, 0.6], log) as url:
        samples = await _concurrent_sessions(url, None, [[UTT] * 3, [UTT] * 3])
    assert [(t["session"], t["turn"]) for t in samples] == [(s, k) for s in range(2) for k in range(3)]
    assert all(t["status"] == "completed" for t in samples)
    for k in range(2):
        last_done = max(t for event, _, turn, t in log if event == "done" and turn == k)
        next_start = min(t for event, _, turn, t in log if event == "start" and turn == k + 1)
        assert last_done < next_start, log
    assert [t["cached_tokens"] for t in samples] == [0, 80, 80, 0, 80, 80]
    raw = fake_raw()
    raw["concurrency"] = {"2": samples}
    summ = report.summarize(raw)
    assert summ["concurrency"]["2"]["later_turns_cached"] == pytest.approx(0.8)
    assert "2 session(s): 6/6 turns completed, p50" in report.table(summ)
    assert "prompt tokens already evaluated on turns 2+ (cached_tokens): 2 session(s) 80%" in report.table(
        summ
    )


class FakeLoad:
    """A load that is on while entered and reports one chat request lasting exactly that long."""

    def __init__(self) -> None:
        self.on = False
        self.messages: list[dict[str, Any]] = []

    async def __aenter__(self) -> FakeLoad:
        self.on = True
        self.messages.append({"kind": "chat", "event": "begin", "n": 0, "t": time.monotonic()})
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.on = False
        self.messages.append(
            {"kind": "chat", "event": "end", "n": 0, "t": time.monotonic(), "status": 200, "finished": True}
        )

    def describe(self) -> dict[str, Any]:
        return {"kinds": ["chat"], "chat_max_tokens": 300}


@pytest.mark.anyio
async def test_mixed_case_measures_the_same_turns_alone_then_under_load() -> None:
    load = FakeLoad()
    seen: list[tuple[str, bool]] = []
    steps: list[int] = []

    async def turn(utt: Utterance) -> TurnSample:
        seen.append((utt.text, load.on))
        await asyncio.sleep(0.01)
        latency = 1.0 + len(seen) / 100 + (0.8 if load.on else 0.0)
        return TurnSample(question=utt.text, status="completed", user_perceived_s=latency)

    utts = [Utterance(q, UTT.pcm24, UTT.pcm16k, UTT.voiced_end) for q in ("a", "b")]
    raw = await mixed.run(turn, utts, 3, load, steps.append, transcription_audio_s=None)
    assert seen == [("a", False), ("b", False), ("a", False), ("a", True), ("b", True), ("a", True)]
    assert sum(steps) == 6 and not load.on
    assert len(raw["alone"]) == len(raw["mixed"]) == 3
    summ = mixed.summarize(json.loads(json.dumps(raw)))  # what results.json holds is enough
    assert summ["alone"]["user_perceived_s"]["p95"] == pytest.approx(1.0 + 0.029)
    assert summ["p95_mixed_over_alone"] == pytest.approx((1.8 + 0.059) / 1.029)
    assert summ["load"]["chat"]["requests"] == 1 and summ["load"]["chat"]["in_flight"] == pytest.approx(
        1.0, abs=0.05
    )
    judged = report.summarize({"mixed": raw})["targets"]
    assert judged["mixed_voice_p95_over_alone"]["met"] is False  # 1.81x against <= 1.5
    assert judged["mixed_all_turns_completed"]["met"] is True


class RefusedLoad(FakeLoad):
    async def __aenter__(self) -> FakeLoad:
        raise LoadFailed("background load: transcription refused with HTTP 404")


@pytest.mark.anyio
async def test_a_load_that_cannot_start_leaves_the_case_unmeasured_not_the_bench_failed() -> None:
    async def turn(utt: Utterance) -> TurnSample:
        return TurnSample(question=utt.text, status="completed", user_perceived_s=1.0)

    steps: list[int] = []
    raw = await mixed.run(turn, [UTT], 2, RefusedLoad(), steps.append)
    assert len(raw["alone"]) == 2 and raw["mixed"] == [] and "HTTP 404" in raw["error"]
    assert sum(steps) == 4  # the progress bar still comes to its end
    summ = report.summarize({"mixed": raw})
    assert summ["targets"]["mixed_voice_p95_over_alone"]["met"] is None
    assert summ["targets"]["mixed_all_turns_completed"]["met"] is False
    assert "not measured under load: background load: transcription refused with HTTP 404" in report.table(
        summ
    )


def test_mixed_report_section_and_targets() -> None:
    raw = {**fake_raw(), "mixed": fake_mixed()}
    summ = report.summarize(raw)
    m = summ["mixed"]
    assert m["alone"]["user_perceived_s"]["p50"] == pytest.approx(1.2)
    assert m["p95_mixed_over_alone"] == pytest.approx(
        summ["mixed"]["mixed"]["user_perceived_s"]["p95"] / summ["mixed"]["alone"]["user_perceived_s"]["p95"]
    )
    # transcription: 101..130 then 130.1..141 in flight; chats of 2.9 s every 3 s.
    t, c = m["load"]["transcription"], m["load"]["chat"]
    assert t["requests"] == 2 and t["finished"] == 1 and t["errors"] == 0
    assert t["in_flight"] == pytest.approx((29.0 + 10.9) / 40)
    assert c["in_flight"] == pytest.approx(0.96, abs=0.02) and c["finished_s"]["p50"] == pytest.approx(2.9)
    assert summ["targets"]["mixed_voice_p95_over_alone"]["met"] is True
    text = report.table(summ)
    assert "Mixed load (user-perceived, ms): voice turns alone, then while another client runs a 90 s" in text
    assert "  alone: 5/5 turns completed, p50 1200, p95 1380" in text
    assert f"  p95 mixed/alone: {m['p95_mixed_over_alone']:.2f}x (target <= 1.5x)" in text
    assert "transcription load over the 40 s window: 2 requests, 1 finished (p50 30.0 s), 0 errors" in text
    slow = report.summarize({**fake_raw(), "mixed": fake_mixed((2.0, 2.0, 2.0, 2.0, 3.0))})
    assert slow["targets"]["mixed_voice_p95_over_alone"]["met"] is False


def test_coverage_counts_only_the_window() -> None:
    msgs = [
        {"kind": "chat", "event": "begin", "n": 0, "t": 0.0},
        {"kind": "chat", "event": "end", "n": 0, "t": 5.0, "status": 200, "finished": True},
        {"kind": "chat", "event": "begin", "n": 1, "t": 6.0},
        {"kind": "chat", "event": "end", "n": 1, "t": 7.0, "status": 429, "finished": False, "error": "busy"},
        {"kind": "chat", "event": "begin", "n": 2, "t": 30.0},
    ]
    c = coverage(msgs, "chat", 10.0, 20.0)
    assert c["requests"] == 0 and c["in_flight"] == 0.0
    c = coverage(msgs, "chat", 4.0, 34.0)
    assert (c["requests"], c["finished"], c["errors"]) == (3, 1, 1) and c["first_errors"] == ["busy"]
    assert c["in_flight"] == pytest.approx((1 + 1 + 4) / 30)


def test_long_speech_repeats_the_inputs_to_length() -> None:
    utts = [Utterance("x", UTT.pcm24, np.full(16000, 0.5, np.float32), UTT.voiced_end)]
    audio = long_speech(utts, 5.5, gap_s=0.5)
    assert audio.dtype == np.float32 and len(audio) == 88000
    assert audio[:16000].min() == 0.5 and audio[16000:24000].max() == 0.0 and audio[24000] == 0.5


def fake_api(transcriptions: bool = True) -> Starlette:
    """Streamed transcriptions (3 segments, 0.1 s apart) and chats (5 tokens, 0.05 s apart)."""

    def sse(events: list[str], pause: float) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            for event in events:
                await asyncio.sleep(pause)
                yield f"data: {event}\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def transcribe(request: Request) -> Response:
        async with request.form() as form:
            stream = form["stream"]
        if not transcriptions:
            return JSONResponse({"error": {"message": "no STT"}}, status_code=404)
        assert stream == "true"
        deltas = [json.dumps({"type": "transcript.text.delta", "delta": "x"})] * 3
        return sse([*deltas, json.dumps({"type": "transcript.text.done", "text": "xxx"})], 0.1)

    async def chat(request: Request) -> Response:
        body = await request.json()
        assert body["stream"] is True and body["max_tokens"] == 300
        token = {"choices": [{"delta": {"content": "t"}, "finish_reason": None}]}
        last = {"choices": [{"delta": {}, "finish_reason": "length"}]}
        return sse([json.dumps(token)] * 5 + [json.dumps(last), "[DONE]"], 0.05)

    return Starlette(
        routes=[
            Route("/v1/audio/transcriptions", transcribe, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


@contextlib.contextmanager
def fake_server(transcriptions: bool = True) -> Iterator[str]:
    with serve_in_thread(fake_api(transcriptions)) as url:
        yield url


@pytest.mark.anyio
async def test_background_load_restarts_its_requests_until_stopped() -> None:
    with fake_server() as url:
        load = BackgroundLoad(url, wav=b"RIFF....", start_timeout_s=60)
        async with load:
            start = time.monotonic()
            await asyncio.sleep(2.0)
            end = time.monotonic()
        stopped_in = time.monotonic() - end
    assert stopped_in < 8.0
    assert all(not p.is_alive() for p in load._procs)
    assert {m["kind"] for m in load.messages if m["event"] == "exit"} == {"transcription", "chat"}
    for kind in ("transcription", "chat"):
        c = coverage(load.messages, kind, start, end)
        assert c["finished"] >= 2 and c["errors"] == 0, (kind, c)  # restarted when it ended
        assert c["in_flight"] > 0.5, (kind, c)
    ends = [m for m in load.messages if m["event"] == "end" and m["finished"]]
    assert {m["items"] for m in ends if m["kind"] == "chat"} == {5}
    assert {m["items"] for m in ends if m["kind"] == "transcription"} == {3}


@pytest.mark.anyio
async def test_a_load_the_server_refuses_fails_the_stage_at_once() -> None:
    with fake_server(transcriptions=False) as url:
        load = BackgroundLoad(url, wav=b"RIFF....", start_timeout_s=60)
        started = time.monotonic()
        with pytest.raises(LoadFailed, match="transcription refused with HTTP 404"):
            async with load:
                pytest.fail("entered a load that never started")
        assert time.monotonic() - started < 30
    assert all(not p.is_alive() for p in load._procs)
