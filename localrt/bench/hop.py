"""The extra hop of a thin front: voice turns through a front (``--url``, a localrt with remote engines)
and directly on the server behind it (``--hop-baseline-url``, the all-in-one server the front forwards
to), interleaved turn by turn on the same inputs, one session per turn as in the voice series.

Reported: user-perceived p50/p95 of each side and the p50 delta in ms (front minus all-in-one), which
is what the extra HTTP hop (chat, transcription and speech requests from the front to the back) costs a
voice turn. Interleaving puts a slow stretch of the machine on both sides.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from localrt.bench.inputs import Utterance
from localrt.bench.stats import summary
from localrt.bench.voice import TurnSample, finished

TurnFn = Callable[[Utterance], Awaitable[TurnSample]]


async def run(
    front: TurnFn,
    baseline: TurnFn,
    utts: list[Utterance],
    turns: int,
    progress: Callable[[int], object] = lambda n: None,
) -> dict[str, Any]:
    """``turns`` voice turns on each side, alternating which goes first."""
    out: dict[str, list[dict[str, Any]]] = {"front": [], "baseline": []}
    for i, utt in enumerate(itertools.islice(itertools.cycle(utts), turns)):
        order = [("front", front), ("baseline", baseline)]
        for name, turn in order if i % 2 == 0 else reversed(order):
            out[name].append((await turn(utt)).to_dict())
        progress(1)
    return {"turns": turns, **out}


def _series(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in samples if finished(t)]
    return {
        "turns": len(samples),
        "completed": len(ok),
        "user_perceived_s": summary([t["user_perceived_s"] for t in ok]),
    }


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    front, base = _series(raw["front"]), _series(raw["baseline"])
    p50_f, p50_b = front["user_perceived_s"]["p50"], base["user_perceived_s"]["p50"]
    delta = None if p50_f is None or p50_b is None else (p50_f - p50_b) * 1000
    return {
        "front": front,
        "baseline": base,
        "p50_delta_ms": delta,
        "all_turns_completed": front["completed"] == front["turns"] == base["completed"] == base["turns"],
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def table_lines(s: dict[str, Any]) -> list[str]:
    lines = ["Extra hop (user-perceived, ms): voice turns through the front against the all-in-one server"]
    for name, label in (("front", "front"), ("baseline", "all-in-one")):
        ser = s[name]
        up = ser["user_perceived_s"]
        lines.append(
            f"  {label}: {ser['completed']}/{ser['turns']} turns completed, "
            f"p50 {_ms(up['p50'])}, p95 {_ms(up['p95'])}"
        )
    d = s["p50_delta_ms"]
    lines.append(f"  p50 delta (front - all-in-one): {'-' if d is None else f'{d:+.0f} ms'}")
    return lines
