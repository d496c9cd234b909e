"""Turn detection in the bench (:mod:`localrt.bench.turns`): where an incomplete utterance is cut, what counts
as a false end of turn, the client clock's split of a turn at its ``speech_stopped``, and the server's
speculation and chat engine counters read around each turn, against a scripted realtime server."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from localrt.bench import turns
from localrt.bench.inputs import Utterance
from localrt.bench.voice import session_config
from localrt.engines.types import Word
from localrt.serving import serve_in_thread


def words(*spec: tuple[str, float, float]) -> list[Word]:
    return [Word(start=a, end=b, word=w, probability=1.0) for w, a, b in spec]


def test_the_cut_goes_in_the_gap_after_the_cut_word() -> None:
    heard = words((" Tell", 0.0, 0.3), (" me", 0.3, 0.5), (" about", 0.5, 0.8), (" the", 0.8, 0.9),
                  (" moon.", 1.1, 1.5))  # fmt: skip
    assert turns.boundary(heard, "Tell me about the") == pytest.approx(1.0)
    # The cut word's own occurrence, not an earlier one; punctuation and case do not matter.
    heard = words((" The", 0.0, 0.2), (" lights", 0.2, 0.5), (" in", 0.5, 0.6), (" THE,", 0.6, 0.7),
                  (" kitchen", 0.9, 1.2))  # fmt: skip
    assert turns.boundary(heard, "the lights in the") == pytest.approx(0.8)
    # Heard differently: by position; too few words: no cut.
    heard = words((" Set", 0.0, 0.2), (" a", 0.2, 0.3), (" timer", 0.3, 0.6), (" four", 0.6, 0.8),
                  (" 10", 1.0, 1.2), (" minutes", 1.2, 1.6))  # fmt: skip
    assert turns.boundary(heard, "Set a timer for") == pytest.approx(0.9)
    assert turns.boundary(heard[:4], "Set a timer for") is None


def test_the_cut_snaps_to_the_quietest_10_ms_nearby() -> None:
    pcm = np.full(24000, 5000, np.int16)
    pcm[12480:12720] = 0  # 10 ms of silence 20 ms after the estimate
    assert turns.quietest(pcm, 12000, 24000) == 12480
    assert turns.quietest(pcm, 1000, 24000) == 0  # nothing quieter nearby: the earliest window


def test_false_end_of_turn() -> None:
    def turn(stops: list[float], committed: int = 1, resume: float | None = 1.0) -> dict[str, Any]:
        clock = {} if resume is None else {"resume_sent": resume}
        return {"clock_s": clock, "stops_s": stops, "committed": committed}

    assert not turns.false_end_of_turn(turn([1.9]))
    assert turns.false_end_of_turn(turn([0.9, 1.9], committed=2))
    assert turns.false_end_of_turn(turn([1.9], committed=2))  # two user items
    assert turns.false_end_of_turn(turn([0.9], resume=None))  # the turn ended before speech resumed
    assert not turns.false_end_of_turn(turn([], committed=0, resume=None))


def test_modes_and_their_session_update() -> None:
    assert turns.parse_modes("server_vad, semantic_vad,server_vad") == ("server_vad", "semantic_vad")
    for bad in ("", "server_vad,near_field"):
        with pytest.raises(ValueError, match="turn detection modes"):
            turns.parse_modes(bad)
    semantic = session_config("semantic_vad")["audio"]["input"]
    assert semantic["turn_detection"] == {"type": "semantic_vad", "eagerness": "auto"}
    assert semantic["transcription"] == {"model": "whisper-1"}
    assert session_config("server_vad")["audio"]["input"]["turn_detection"] == {"type": "server_vad"}


METRICS = """# HELP localrt_engine_job_run_seconds Seconds a job ran in its engine's worker.
# TYPE localrt_engine_job_run_seconds histogram
localrt_engine_job_run_seconds_bucket{{engine="llm:tiny",priority="realtime",outcome="ok",le="+Inf"}} 3.0
localrt_engine_job_run_seconds_count{{engine="llm:tiny",priority="realtime",outcome="ok"}} 3.0
localrt_engine_job_run_seconds_sum{{engine="llm:tiny",priority="realtime",outcome="ok"}} {llm}
localrt_engine_job_run_seconds_sum{{engine="llm:tiny",priority="realtime",outcome="cancelled"}} 0.25
localrt_engine_job_run_seconds_sum{{engine="stt",priority="realtime",outcome="ok"}} 7.0
"""


def test_llm_run_seconds_sums_the_chat_engines_only() -> None:
    assert turns.llm_run_seconds(METRICS.format(llm=1.5)) == pytest.approx(1.75)
    assert turns.llm_run_seconds("") == 0.0


# A scripted realtime server. An utterance of 0.1 s speech, 0.3 s pause, 0.1 s speech (24 kHz samples):
FIRST, RESUME, END = 2400, 9600, 12000


def ev(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


def reply(rid: str, status: str = "completed", reason: str | None = None) -> list[dict[str, Any]]:
    audio = base64.b64encode(np.zeros(240, "<i2").tobytes()).decode()
    details = {"reason": reason} if reason else None
    return [
        ev("response.created", response={"id": rid}),
        ev("response.output_audio.delta", delta=audio),
        ev("response.done", response={"id": rid, "status": status, "status_details": details}),
    ]


def stop() -> list[dict[str, Any]]:
    return [ev("input_audio_buffer.speech_stopped"), ev("input_audio_buffer.committed")]


def script(cut: bool) -> list[tuple[int, list[dict[str, Any]]]]:
    """(samples received, events to send then): a turn cut 0.1 s into the pause and resumed (its first
    response cancelled by the resumed speech), or one that ends 0.2 s after the utterance."""
    early = [(FIRST + 2400, [*stop(), *reply("resp_0")[:2]]),
             (RESUME + 1440, [ev("input_audio_buffer.speech_started"), reply("resp_0", "cancelled", "turn_detected")[2]])]  # fmt: skip
    return [*(early if cut else []), (END + 4800, [*stop(), *reply("resp_1")])]


@contextmanager
def scripted_server(state: dict[str, Any]) -> Iterator[str]:
    """``state``: ``cut`` (the script), ``speculation`` (None: not reported) and ``llm`` (the metric), both
    advanced by each turn's final reply; ``modes`` records each session's turn detection."""

    async def realtime(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_json(ev("session.created", session={"id": "sess_1"}))
        pending, got = script(state["cut"]), 0
        try:
            while True:
                msg = await ws.receive_json()
                if msg["type"] == "session.update":
                    state["modes"].append(msg["session"]["audio"]["input"]["turn_detection"])
                    await ws.send_json(ev("session.updated"))
                    continue
                got += len(base64.b64decode(msg["audio"])) // 2
                while pending and got >= pending[0][0]:
                    for event in pending.pop(0)[1]:
                        if event["type"] == "response.done" and event["response"]["status"] == "completed":
                            state["llm"] += 0.5
                            if state["speculation"] is not None:
                                state["speculation"]["used"]["count"] += 1
                                state["speculation"]["discarded"]["count"] += int(state["cut"])
                                state["speculation"]["discarded"]["llm_s"] += 0.2 * state["cut"]
                        await ws.send_json(event)
        except WebSocketDisconnect:
            return

    async def timings(request: Request) -> Response:
        marks = {"speech_stopped": 10.0, "stt_done": 10.01, "first_clause": 10.02, "tts_first_chunk": 10.03,
                 "first_audio_sent": 10.035}  # fmt: skip
        body: dict[str, Any] = {"data": [{"session_id": "sess_1", "response_id": "resp_1", "marks": marks}]}
        if state["speculation"] is not None:
            body["speculation"] = state["speculation"]
        return JSONResponse(body)

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(METRICS.format(llm=state["llm"]))

    routes = [WebSocketRoute("/v1/realtime", realtime), Route("/debug/timings", timings),
              Route("/metrics", metrics)]  # fmt: skip
    with serve_in_thread(Starlette(routes=routes)) as url:
        yield url


def utterance() -> Utterance:
    pcm = np.zeros(END, np.int16)
    pcm[:FIRST] = pcm[RESUME:] = 8000
    return Utterance("Tell me about the ... moon.", pcm, np.zeros(8000, np.float32), END, RESUME)


@pytest.mark.anyio
async def test_a_turn_cut_in_its_pause_is_a_false_end_of_turn_with_its_speculation_counted() -> None:
    zero = {"count": 0, "stt_s": 0.0, "llm_s": 0.0, "tts_s": 0.0}
    state: dict[str, Any] = {"cut": True, "llm": 1.0, "modes": [],
                             "speculation": {"used": dict(zero), "discarded": dict(zero)}}  # fmt: skip
    steps: list[int] = []
    with scripted_server(state) as url:
        out = await turns.incomplete_stage(
            url, None, [utterance()], ("semantic_vad", "server_vad"), steps.append
        )
    assert state["modes"] == [{"type": "semantic_vad", "eagerness": "auto"}, {"type": "server_vad"}]
    assert [t["mode"] for t in out] == ["semantic_vad", "server_vad"] and steps == [1]
    for t in out:
        # The reply is the one after the resumed speech; the cancelled one is not taken for it.
        assert (t["status"], t["response_id"], t["committed"], len(t["stops_s"])) == (
            "completed",
            "resp_1",
            2,
            2,
        )
        assert turns.false_end_of_turn(t)
        clock = t["clock_s"]
        assert t["stops_s"][0] < clock["resume_sent"] < clock["last_voiced_sent"] < t["stops_s"][1]
        assert 0.38 < clock["resume_sent"] < 0.6  # 0.4 s of audio in, at real-time pace
        assert t["end_of_turn_s"] == pytest.approx(0.2, abs=0.15)
        assert t["user_perceived_s"] == pytest.approx(t["end_of_turn_s"] + t["after_stop_s"])
        assert 0 <= t["after_stop_s"] < 0.1
        assert t["stages_s"]["stt"] == pytest.approx(0.01)  # the server's marks of the reply
        assert t["speculation"]["used"]["count"] == 1 and t["speculation"]["discarded"] == {
            "count": 1, "stt_s": 0.0, "llm_s": pytest.approx(0.2), "tts_s": 0.0}  # fmt: skip
        assert t["llm_run_s"] == pytest.approx(0.5)


@pytest.mark.anyio
async def test_a_turn_not_cut_and_a_server_without_speculation() -> None:
    state: dict[str, Any] = {"cut": False, "llm": 1.0, "modes": [], "speculation": None}
    with scripted_server(state) as url:
        t = (await turns.measured_turn(url, utterance(), "server_vad")).to_dict()
    assert t["status"] == "completed" and t["committed"] == 1 and not turns.false_end_of_turn(t)
    assert t["end_of_turn_s"] == pytest.approx(0.2, abs=0.15)
    assert t["speculation"] is None and t["llm_run_s"] == pytest.approx(0.5)
