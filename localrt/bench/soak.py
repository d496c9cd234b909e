"""The soak: many realtime sessions talking at once, turn after turn, through the real server.

Each of ``sessions`` clients opens one session and runs ``turns`` voice turns in it back to back, the
same turns as the voice series (speech streamed at real-time pace, server VAD, the reply up to
``response.done``). All sessions start together, so every turn competes with the others for the
engines. A turn is lost unless it finished (``voice.finished``: completed, or cut at the bench's own
``max_output_tokens``): it ended otherwise, timed out, or its session died. A session whose handshake is
refused or whose socket drops loses every turn it had left. After a timed-out turn the client waits (as
long again) for that turn's late ``response.done`` before its next turn, which would otherwise take it
for its own; if none comes, the session is left and its remaining turns are lost too.

The server process (this one when the bench serves in-process) is read from ``/proc`` before and after:
RSS, OS threads and open file descriptors, the leak signal; RSS is also sampled during the soak for its
peak. With ``--url`` that is only possible for a local server whose pid is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from localrt.bench.inputs import Utterance
from localrt.bench.stats import summary
from localrt.bench.voice import TurnSample, VoiceClient, apply_marks, finished

# A voice reply not begun within two minutes is lost by any measure; the soak's load makes turns
# queue for the engines, so the single-turn series' bound would be tight on a small machine.
TURN_TIMEOUT_S = 120.0
RSS_INTERVAL_S = 0.5
# Closed sessions finish their teardown (tasks, sockets, engine work) shortly after the client leaves.
SETTLE_S = 10.0
NOT_RUN = "not_run"


def read_proc(pid: int | str = "self") -> dict[str, float] | None:
    """RSS (MB), OS threads and open file descriptors of process ``pid`` (``"self"``: this one), from
    ``/proc``; None where that cannot be read (not Linux, no such process, not ours)."""
    base = Path("/proc", str(pid))
    try:
        status = (base / "status").read_text()
        fds = len(os.listdir(base / "fd"))
    except OSError:
        return None
    fields = {key: value.split() for key, _, value in (line.partition(":") for line in status.splitlines())}
    try:
        return {"rss_mb": int(fields["VmRSS"][0]) / 1024, "threads": int(fields["Threads"][0]), "fds": fds}
    except (KeyError, IndexError, ValueError):
        return None


async def _settled(pid: int | str, before: dict[str, float] | None) -> dict[str, float] | None:
    """The process once threads and fds are back to ``before`` (or after ``SETTLE_S``, as they are)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        now = read_proc(pid)
        if now is None or before is None or time.monotonic() > deadline:
            return now
        if now["threads"] <= before["threads"] and now["fds"] <= before["fds"]:
            return now
        await asyncio.sleep(RSS_INTERVAL_S)


def _record(sample: TurnSample, session: int, turn: int) -> dict[str, Any]:
    return {**sample.to_dict(), "session": session, "turn": turn}


async def _session(
    url: str,
    api_key: str | None,
    index: int,
    utts: list[Utterance],
    timeout_s: float,
    progress: Callable[[int], object],
) -> list[dict[str, Any]]:
    """One client's turns; those it never got to run are recorded as lost, with why."""
    out: list[dict[str, Any]] = []
    why = ""
    try:
        async with VoiceClient(url, api_key) as client:
            for k, utt in enumerate(utts):
                sample = await client.turn(utt, timeout_s=timeout_s)
                if sample.response_id:
                    with contextlib.suppress(httpx.HTTPError):  # the latency split is a bonus
                        apply_marks(sample, await client.server_marks(sample.response_id))
                out.append(_record(sample, index, k))
                progress(1)
                if sample.status == "timeout" and not await client.drain(timeout_s):
                    why = f"session left: turn {k} timed out and its reply did not come in {timeout_s:.0f} s more"
                    break
    except Exception as exc:  # whatever ended the session, its turns are lost
        why = f"session ended: {type(exc).__name__}: {exc}"
    for k in range(len(out), len(utts)):
        out.append(_record(TurnSample(question=utts[k].text, status=NOT_RUN, error=why), index, k))
        progress(1)
    return out


async def run(
    url: str,
    utts: list[Utterance],
    *,
    sessions: int,
    turns: int,
    api_key: str | None = None,
    pid: int | str | None = "self",
    timeout_s: float = TURN_TIMEOUT_S,
    progress: Callable[[int], object] = lambda n: None,
) -> dict[str, Any]:
    """``sessions`` concurrent sessions x ``turns`` turns against ``url``; ``pid`` is the server's
    process to read (None: not measured)."""
    await asyncio.sleep(1.0)  # sessions of an earlier stage finish closing on the server
    before = None if pid is None else read_proc(pid)
    timeline: list[list[float]] = []
    stop = asyncio.Event()
    started = time.monotonic()

    async def sample_rss() -> None:
        while pid is not None and not stop.is_set():
            now = read_proc(pid)
            if now is None:
                return
            timeline.append([round(time.monotonic() - started, 2), round(now["rss_mb"], 1)])
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), RSS_INTERVAL_S)

    async def all_sessions() -> list[list[dict[str, Any]]]:
        try:
            return await asyncio.gather(
                *(
                    _session(
                        url,
                        api_key,
                        i,
                        [utts[(i + k) % len(utts)] for k in range(turns)],
                        timeout_s,
                        progress,
                    )
                    for i in range(sessions)
                )
            )
        finally:
            stop.set()

    results, _ = await asyncio.gather(all_sessions(), sample_rss())
    wall_s = time.monotonic() - started
    after = None if pid is None else await _settled(pid, before)
    return {
        "sessions": sessions,
        "turns_per_session": turns,
        "turn_timeout_s": timeout_s,
        "wall_s": wall_s,
        "process": None if pid is None else str(pid),
        "before": before,
        "after": after,
        "rss_timeline": timeline,
        "turns": [t for session in results for t in session],
    }


def summarize(soak: dict[str, Any]) -> dict[str, Any]:
    turns = soak["turns"]
    ok = [t for t in turns if finished(t)]
    lost = [t for t in turns if not finished(t)]
    before, after = soak["before"], soak["after"]
    rss = [mb for _, mb in soak["rss_timeline"]] + [p["rss_mb"] for p in (before, after) if p]

    def both(key: str) -> dict[str, float | None]:
        return {"before": before[key] if before else None, "after": after[key] if after else None}

    return {
        "sessions": soak["sessions"],
        "turns_per_session": soak["turns_per_session"],
        "turns": len(turns),
        "completed": len(ok),
        "capped": sum(t["status"] == "incomplete" for t in ok),
        "lost": len(lost),
        "lost_by_status": dict(Counter(t["status"] or "no response.done" for t in lost)),
        "wall_s": soak["wall_s"],
        "process": soak["process"],
        "rss_mb": {**both("rss_mb"), "peak": max(rss) if rss else None},
        "threads": both("threads"),
        "fds": both("fds"),
        "user_perceived_s": summary([t["user_perceived_s"] for t in ok]),
        "server_compute_s": summary([t["server_compute_s"] for t in ok]),
    }


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def table_lines(s: dict[str, Any]) -> list[str]:
    capped = f" ({s['capped']} cut at max_output_tokens)" if s["capped"] else ""
    lost = ", ".join(f"{n} {status}" for status, n in s["lost_by_status"].items())
    lines = [
        f"Soak: {s['sessions']} sessions x {s['turns_per_session']} turns in {s['wall_s']:.0f} s: "
        f"{s['completed']}/{s['turns']} turns completed{capped}, {s['lost']} lost"
        + (f" ({lost})" if lost else "")
    ]
    up, sc = s["user_perceived_s"], s["server_compute_s"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f}"

    lines.append(
        f"  latency under load, ms: user-perceived p50 {ms(up['p50'])}, p95 {ms(up['p95'])}; "
        f"server compute p50 {ms(sc['p50'])}, p95 {ms(sc['p95'])}"
    )
    if s["rss_mb"]["before"] is None:
        lines.append("  server process: not measured (--url without --server-pid, or no /proc)")
    else:
        who = "this process (in-process server)" if s["process"] == "self" else f"pid {s['process']}"
        r, th, fd = s["rss_mb"], s["threads"], s["fds"]
        lines.append(
            f"  server process, {who}: RSS before {_mb(r['before'])} MB, after {_mb(r['after'])} MB, "
            f"peak {_mb(r['peak'])} MB; threads {th['before']} -> {th['after']}; fds {fd['before']} -> {fd['after']}"
        )
    return lines


def chart(ax: Any, soak: dict[str, Any]) -> None:
    """RSS of the server process over the soak."""
    if soak["rss_timeline"]:
        t, mb = zip(*soak["rss_timeline"], strict=True)
        ax.plot(t, mb, color="#4c72b0")
    ax.set_xlabel("s into the soak")
    ax.set_ylabel("server RSS, MB")
    ax.set_title(f"Soak: {soak['sessions']} sessions x {soak['turns_per_session']} turns")
