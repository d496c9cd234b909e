"""Speculative replies and semantic turn ends, piece by piece, with faithful fakes (real schedulers).

- A held reply is claimed only for the exact request its response makes, replays what it produced and
  goes on live, promoted to REALTIME; its first clause's speech is claimed the same way.
- Any other request, a discard or a response that never claims it cancels the held work and counts it
  as discarded.
- The scheduler's promote moves a queued job up; the turn detector's window and ``end_now``; the text
  check for sentences that stop halfway.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from rt_fakes import EngineStreamLLM, FakeLLMPool, FakeTTS, words_reply
from sched_helpers import Blocked, drain, pieces, tags

from localrt.engines.scheduler import Priority
from localrt.engines.types import SamplingParams
from localrt.realtime.config import TurnDetection
from localrt.realtime.response_options import ChatCall
from localrt.realtime.speculation import ReplyPlan, ReplySpeculation
from localrt.realtime.turn import RATE, WINDOW, TurnDetector
from localrt.text.endings import sounds_unfinished
from localrt.timings import SpeculationTotals

pytestmark = pytest.mark.anyio

QUESTION = "What color is the sky?"
REPLY = "The sky is blue on a clear day, and grey when it rains."
PARAMS = SamplingParams(max_tokens=60, temperature=0.8)


def messages(text: str = QUESTION) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def setup(
    reply: str = REPLY, delay: float = 0.002
) -> tuple[ReplySpeculation, EngineStreamLLM, FakeTTS, SpeculationTotals]:
    pool = FakeLLMPool()
    llm = pool.engine = EngineStreamLLM()
    llm.script = words_reply(reply)
    llm.delay = delay
    tts = FakeTTS()
    totals = SpeculationTotals()

    async def heard() -> list[str]:
        return [" What color", " is the sky?"]

    plan = ReplyPlan(
        session_id="sess_1",
        llm=pool,  # type: ignore[arg-type]
        model="gpt-realtime",
        tts=tts,  # type: ignore[arg-type]
        instructions="Be brief.",
        items=[],
        tools=None,
        tool_choice=None,
        params=PARAMS,
        audio_output=True,
        voice="alloy",
        speed=1.0,
        spawn=lambda coro, name: asyncio.get_running_loop().create_task(coro, name=name),
        totals=totals,
    )
    return ReplySpeculation(plan, "item_1", asyncio.ensure_future(heard())), llm, tts, totals


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_a_held_reply_is_claimed_replayed_and_continued() -> None:
    spec, llm, tts, totals = setup()
    await until(lambda: tts.texts)  # the first clause is being spoken while the turn is unconfirmed
    assert llm.prompts == [messages()] and llm.priorities == [Priority.SPECULATIVE]
    assert tts.priorities == [Priority.SPECULATIVE]
    held = await spec.claim_chat(ChatCall(messages(), None, None, PARAMS, "sess_1"))
    assert held is not None
    async with held:
        text = "".join([e.text async for e in held])
    assert text == REPLY and held.result.completion_tokens > 0
    speech = spec.claim_speech(tts.texts[0], "alloy", 1.0)
    assert speech is not None
    async with speech:
        chunks = [c async for c in speech]
    assert chunks and chunks[0].text == tts.texts[0]
    spec.finish()
    snap = totals.snapshot()
    assert snap["used"]["count"] == 1 and snap["discarded"]["count"] == 0
    assert snap["used"]["llm_s"] > 0 and snap["used"]["tts_s"] > 0
    assert llm.cache_keys == ["sess_1"] and len(llm.prompts) == 1  # nothing was asked twice


async def test_another_request_gets_nothing_and_the_held_work_stops() -> None:
    spec, llm, tts, totals = setup(reply=" ".join(["word"] * 400), delay=0.01)
    await until(lambda: llm.tokens_generated > 2)
    assert await spec.claim_chat(ChatCall(messages("Something else?"), None, None, PARAMS, "sess_1")) is None
    await until(lambda: not llm.scheduler.busy and not tts.scheduler.busy)  # cancelled within a token
    assert llm.tokens_generated < 100
    assert spec.claim_speech("word word", "alloy", 1.0) is None
    spec.finish()  # the response ended: counted once
    snap = totals.snapshot()
    assert snap["discarded"]["count"] == 1 and snap["used"]["count"] == 0 and snap["discarded"]["llm_s"] > 0


async def test_a_discarded_reply_stops_and_a_later_claim_gets_nothing() -> None:
    spec, llm, _tts, totals = setup(reply=" ".join(["word"] * 400), delay=0.01)
    await until(lambda: llm.tokens_generated > 0)
    spec.discard()  # the user went on speaking
    await until(lambda: not llm.scheduler.busy)
    assert await spec.claim_chat(ChatCall(messages(), None, None, PARAMS, "sess_1")) is None
    spec.discard()
    spec.finish()
    assert totals.snapshot()["discarded"]["count"] == 1


async def test_speech_of_another_clause_is_not_claimed() -> None:
    spec, _llm, tts, totals = setup()
    await until(lambda: tts.texts)
    held = await spec.claim_chat(ChatCall(messages(), None, None, PARAMS, "sess_1"))
    assert held is not None
    assert spec.claim_speech("A different first clause", "alloy", 1.0) is None
    assert spec.claim_speech(tts.texts[0], "alloy", 1.0) is None  # asked once: the first clause only
    async with held:
        pass
    spec.finish()
    assert totals.snapshot()["used"]["count"] == 1


async def test_promote_moves_a_queued_job_up(blocked: Blocked) -> None:
    scheduler, gate, log = await blocked.hold()
    first = scheduler.submit(pieces("http", 1, 0.0, log), priority=Priority.HTTP)
    held = scheduler.submit(pieces("speculative", 1, 0.0, log), priority=Priority.SPECULATIVE)
    late = scheduler.submit(pieces("realtime", 1, 0.0, log), priority=Priority.REALTIME)
    first.promote(Priority.REALTIME)  # same as `late` now, and queued before it
    held.promote(Priority.HTTP)  # never lowers
    gate.set()
    for job in (first, held, late):
        await drain(job)
    assert tags(log) == ["blocker", "http", "realtime", "speculative"]


def test_semantic_vad_ends_a_turn_at_a_pause_or_at_its_cap() -> None:
    td = TurnDetection(type="semantic_vad", eagerness="high")
    detector = TurnDetector(td, origin=0, turn_model=True)
    assert detector.window_ms == 2000 and TurnDetector(td, 0).window_ms == td.silence_ms == 400
    events = detector.push([0.9] * 20 + [0.05] * 10)
    assert [e.kind for e in events] == ["speech_started", "pause"] and detector.silence_ms == 10 * 32
    stop = detector.end_now()
    assert stop is not None and stop.position == 20 * WINDOW and stop.commit_end == 30 * WINDOW
    assert not detector.speaking and detector.end_now() is None
    events = detector.push([0.9] * 5 + [0.05] * (2 * RATE // WINDOW + 1))  # 2 s of silence: the cap
    assert [e.kind for e in events] == ["speech_started", "pause", "speech_stopped"]


@pytest.mark.parametrize(
    ("text", "unfinished"),
    [
        ("I would like to book a table for", True),
        ("I would like to book a table for.", True),
        ("I need to buy some milk and...", True),
        ("So what I was thinking is,", True),
        ("Um", True),
        ("I would like to book a table for two people.", False),
        ("Which planet do we live on?", False),
        ("What do bees make?", False),
        ("Hi.", False),
        ("", False),
    ],
)
def test_sentences_that_stop_halfway(text: str, unfinished: bool) -> None:
    assert sounds_unfinished(text) is unfinished
    assert sounds_unfinished(text, "fr") is False  # English only
