"""The mixed-load case: voice turns alone, then the same voice turns while another client keeps long
HTTP work going (a long streamed transcription and a long streamed chat, each restarted as soon as it
ends: :mod:`localrt.bench.load`).

The engines' schedulers should put a voice turn's work before HTTP requests and before bulk work (a
long transcription yields between segments), so a turn waits at most one piece of the others' work:
the target is a voice-turn p95 under the mixed load at most 1.5x its p95 alone. Turns are
user-perceived latency (client clock), one session per turn as in the voice series, so the two series
differ only in the load.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from localrt.bench.inputs import Utterance
from localrt.bench.load import LoadFailed, coverage
from localrt.bench.stats import ratio, summary
from localrt.bench.voice import TurnSample, finished

P95_TARGET = 1.5
TurnFn = Callable[[Utterance], Awaitable[TurnSample]]


class Load(Protocol):
    """What the case needs of its background load (:class:`~localrt.bench.load.BackgroundLoad`):
    running while entered, its clients' reports in ``messages``."""

    messages: list[dict[str, Any]]

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def describe(self) -> dict[str, Any]:
        """What the load is (``kinds`` and sizes), for the results."""
        ...


async def run(
    turn: TurnFn,
    utts: list[Utterance],
    turns: int,
    load: Load,
    progress: Callable[[int], object] = lambda n: None,
    **details: Any,
) -> dict[str, Any]:
    """``turns`` voice turns alone, then the same ones while ``load`` runs; ``details`` are recorded.
    A load that cannot start (:class:`LoadFailed`) leaves the mixed series empty, with the reason."""
    questions = list(itertools.islice(itertools.cycle(utts), turns))
    alone = []
    for utt in questions:
        alone.append((await turn(utt)).to_dict())
        progress(1)
    mixed: list[dict[str, Any]] = []
    error = ""
    start = end = time.monotonic()
    try:
        async with load:
            start = time.monotonic()
            for utt in questions:
                mixed.append((await turn(utt)).to_dict())
                progress(1)
            end = time.monotonic()
    except LoadFailed as exc:
        error = str(exc)
        progress(turns)
    return {
        "turns": turns,
        "alone": alone,
        "mixed": mixed,
        "error": error,
        "window": [start, end],
        "load": {**load.describe(), **details, "messages": load.messages},
    }


def _series(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in samples if finished(t)]
    return {
        "turns": len(samples),
        "completed": len(ok),
        "capped": sum(t["status"] == "incomplete" for t in ok),
        "user_perceived_s": summary([t["user_perceived_s"] for t in ok]),
        "server_compute_s": summary([t["server_compute_s"] for t in ok]),
    }


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    alone, mixed = _series(raw["alone"]), _series(raw["mixed"])
    start, end = raw["window"]
    load = raw["load"]
    kinds = {}
    for kind in load["kinds"]:
        cov = coverage(load["messages"], kind, start, end)
        kinds[kind] = {**cov, "finished_s": summary(cov["finished_s"])}
    up_a, up_m = alone["user_perceived_s"], mixed["user_perceived_s"]
    return {
        "alone": alone,
        "mixed": mixed,
        "p50_mixed_over_alone": ratio(up_m["p50"], up_a["p50"]),
        "p95_mixed_over_alone": ratio(up_m["p95"], up_a["p95"]),
        "p95_target": f"<= {P95_TARGET}x",
        "window_s": end - start,
        "load": kinds,
        "transcription_audio_s": load.get("transcription_audio_s"),
        "chat_max_tokens": load.get("chat_max_tokens"),
        "all_turns_completed": alone["completed"] == alone["turns"] == mixed["completed"] == mixed["turns"],
        "error": raw.get("error", ""),
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def table_lines(s: dict[str, Any]) -> list[str]:
    what = []
    if "transcription" in s["load"]:
        what.append(f"a {s['transcription_audio_s'] or 0:.0f} s streamed transcription")
    if "chat" in s["load"]:
        what.append(f"{s['chat_max_tokens']}-token streamed chats")
    lines = [
        f"Mixed load (user-perceived, ms): voice turns alone, then while another client runs {' and '.join(what)}"
    ]
    for name in ("alone", "mixed"):
        ser = s[name]
        up = ser["user_perceived_s"]
        capped = f" ({ser['capped']} cut at max_output_tokens)" if ser["capped"] else ""
        lines.append(
            f"  {name}: {ser['completed']}/{ser['turns']} turns completed{capped}, "
            f"p50 {_ms(up['p50'])}, p95 {_ms(up['p95'])}"
        )
    if s["error"]:
        lines.append(f"  not measured under load: {s['error']}")
    r = s["p95_mixed_over_alone"]
    lines.append(f"  p95 mixed/alone: {'-' if r is None else f'{r:.2f}x'} (target {s['p95_target']})")
    for kind, c in s["load"].items():
        busy = "-" if c["in_flight"] is None else f"{c['in_flight'] * 100:.0f}%"
        took = c["finished_s"]["p50"]
        lines.append(
            f"  {kind} load over the {s['window_s']:.0f} s window: {c['requests']} requests, "
            f"{c['finished']} finished (p50 {'-' if took is None else f'{took:.1f} s'}), {c['errors']} errors, "
            f"in flight {busy} of the window"
            + (f"; first error: {c['first_errors'][0]}" if c["first_errors"] else "")
        )
    return lines


def chart(ax: Any, raw: dict[str, Any]) -> None:
    """User-perceived latency of the voice turns alone and under the mixed load."""
    data = [
        [t["user_perceived_s"] * 1000 for t in raw[name] if finished(t) and t["user_perceived_s"] is not None]
        for name in ("alone", "mixed")
    ]
    ax.boxplot(data, tick_labels=["alone", "mixed load"])
    ax.set_ylabel("user-perceived latency, ms")
    ax.set_title("Voice turns alone and under mixed HTTP load")
