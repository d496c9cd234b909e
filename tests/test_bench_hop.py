"""The bench's extra-hop stage (:mod:`localrt.bench.hop`) with fake turns: the two sides alternate which
goes first on the same inputs, and the report gives their p50s and the front's extra p50 in ms."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from localrt.bench import hop, report
from localrt.bench.inputs import Utterance
from localrt.bench.voice import TurnSample

pytestmark = pytest.mark.anyio

PCM = np.zeros(160, np.int16)


async def test_the_sides_alternate_on_the_same_inputs_and_the_delta_is_front_minus_baseline() -> None:
    seen: list[tuple[str, str]] = []
    steps: list[int] = []

    def side(name: str, latency: float) -> hop.TurnFn:
        async def turn(utt: Utterance) -> TurnSample:
            seen.append((name, utt.text))
            await asyncio.sleep(0)
            return TurnSample(question=utt.text, status="completed", user_perceived_s=latency)

        return turn

    utts = [Utterance(q, PCM, PCM.astype(np.float32), 160) for q in ("a", "b")]
    raw = await hop.run(side("front", 1.25), side("base", 1.2), utts, 3, steps.append)
    assert seen == [
        ("front", "a"),
        ("base", "a"),
        ("base", "b"),
        ("front", "b"),
        ("front", "a"),
        ("base", "a"),
    ]
    assert sum(steps) == 3
    summ = hop.summarize(json.loads(json.dumps(raw)))
    assert summ["p50_delta_ms"] == pytest.approx(50.0)
    assert summ["all_turns_completed"] is True
    lines = report.table(report.summarize({"hop": raw}))
    assert "p50 delta (front - all-in-one): +50 ms" in lines


async def test_a_failed_turn_is_not_counted_and_marks_the_stage_incomplete() -> None:
    async def ok(utt: Utterance) -> TurnSample:
        return TurnSample(question=utt.text, status="completed", user_perceived_s=1.0)

    async def failing(utt: Utterance) -> TurnSample:
        return TurnSample(question=utt.text, status="failed", error="upstream down")

    utts = [Utterance("a", PCM, PCM.astype(np.float32), 160)]
    summ = hop.summarize(await hop.run(failing, ok, utts, 2))
    assert summ["front"]["completed"] == 0 and summ["all_turns_completed"] is False
    assert summ["p50_delta_ms"] is None
