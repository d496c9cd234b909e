"""The soak stage: concurrent sessions x voice turns through the real server, lost turns, the process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from localrt.bench import soak
from localrt.bench.inputs import Utterance
from localrt.bench.runner import BenchConfig, finish, run
from localrt.engines import Engines
from localrt.serving import free_port
from localrt.settings import Settings


def test_read_proc_reads_this_process_and_not_a_missing_one() -> None:
    me = soak.read_proc("self")
    assert me is not None and me["rss_mb"] > 1 and me["threads"] >= 1 and me["fds"] >= 3
    assert soak.read_proc(os.getpid()) is not None
    assert soak.read_proc(2**22 + 1) is None  # above Linux's largest pid


UTT = Utterance("Hello?", np.zeros(2400, np.int16), np.zeros(1600, np.float32), 2400)


@contextlib.asynccontextmanager
async def scripted_server(delays: list[float]) -> AsyncIterator[str]:
    """A realtime server that answers each turn's audio with a response done ``delays[n]`` s later."""
    loop = asyncio.get_running_loop()

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "session.created", "session": {"id": "sess_1"}}))
        state: dict[str, Any] = {"n": 0, "responding": False, "quiet_until": 0.0}
        replies = []

        async def respond(k: int) -> None:
            await ws.send(json.dumps({"type": "response.created", "response": {"id": f"resp_{k}"}}))
            await asyncio.sleep(delays[k])
            done = {"id": f"resp_{k}", "status": "completed"}
            await ws.send(json.dumps({"type": "response.done", "response": done}))
            # the appends the client sent before it saw response.done do not start another reply
            state.update(responding=False, quiet_until=loop.time() + 0.2)

        def idle() -> bool:
            return not state["responding"] and loop.time() > state["quiet_until"]

        async for raw in ws:
            kind = json.loads(raw)["type"]
            if kind == "session.update":
                await ws.send(json.dumps({"type": "session.updated"}))
            elif kind == "input_audio_buffer.append" and idle() and state["n"] < len(delays):
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
async def test_a_timed_out_turn_is_lost_and_its_session_goes_on() -> None:
    """The late reply is read off before the next turn, which completes on its own reply."""
    async with scripted_server([3.0, 0.0]) as url:
        raw = await soak.run(url, [UTT], sessions=1, turns=2, pid=None, timeout_s=2.0)
    assert [(t["status"], t["response_id"]) for t in raw["turns"]] == [
        ("timeout", "resp_0"),
        ("completed", "resp_1"),
    ]
    assert soak.summarize(raw)["lost_by_status"] == {"timeout": 1}


@pytest.mark.anyio
async def test_a_session_whose_late_reply_never_comes_loses_its_remaining_turns() -> None:
    async with scripted_server([30.0, 0.0, 0.0]) as url:
        raw = await soak.run(url, [UTT], sessions=1, turns=3, pid=None, timeout_s=1.0)
    assert [t["status"] for t in raw["turns"]] == ["timeout", soak.NOT_RUN, soak.NOT_RUN]
    assert "timed out" in raw["turns"][1]["error"]
    assert soak.summarize(raw)["lost"] == 3


@pytest.mark.anyio
async def test_a_session_that_cannot_connect_loses_all_its_turns() -> None:
    utt = UTT
    done: list[int] = []
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    raw = await soak.run(url, [utt], sessions=2, turns=3, pid=None, progress=done.append)
    assert len(raw["turns"]) == 6 and sum(done) == 6
    assert {(t["session"], t["turn"]) for t in raw["turns"]} == {(s, k) for s in range(2) for k in range(3)}
    assert all(t["status"] == soak.NOT_RUN and "session ended" in t["error"] for t in raw["turns"])
    summ = soak.summarize(raw)
    assert summ["lost"] == 6 and summ["completed"] == 0 and summ["rss_mb"]["before"] is None


@pytest.mark.slow
@pytest.mark.anyio
async def test_short_soak(tmp_path: Path, settings: Settings, engines: Engines) -> None:
    """``localrt bench --soak`` at 2 sessions x 2 turns: the in-process server loses no turn, and the
    report has every soak field."""
    cfg = BenchConfig(
        soak_only=True, soak_sessions=2, soak_turns=2, out=tmp_path, warmup=False, settings=settings
    )
    raw = await run(cfg, engines)
    summ, paths = finish(raw, tmp_path)

    s = summ["soak"]
    assert s["lost"] == 0, raw["soak"]["turns"]
    assert (s["sessions"], s["turns_per_session"], s["turns"], s["completed"]) == (2, 2, 4, 4)
    assert {(t["session"], t["turn"]) for t in raw["soak"]["turns"]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for key in ("before", "after", "peak"):
        assert s["rss_mb"][key] > 10, key
    assert s["rss_mb"]["peak"] >= max(s["rss_mb"]["before"], s["rss_mb"]["after"])
    for key in ("threads", "fds"):
        assert s[key]["before"] > 0 and s[key]["after"] > 0
    assert raw["soak"]["rss_timeline"]
    assert s["user_perceived_s"]["p50"] > 0 and s["user_perceived_s"]["p95"] > 0
    assert s["server_compute_s"]["p50"] > 0
    assert summ["targets"] == {"soak_lost_turns": {"value": 0, "target": "== 0", "met": True}}
    assert "Soak: 2 sessions x 2 turns" in paths["table"].read_text()
