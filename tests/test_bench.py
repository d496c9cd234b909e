"""A short real bench run (in-process server over the test engines): every metric is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localrt.bench import report
from localrt.bench.runner import BenchConfig, finish, run
from localrt.bench.voice import STAGES, finished
from localrt.engines import Engines
from localrt.settings import Settings

pytestmark = pytest.mark.slow


@pytest.mark.anyio
async def test_short_bench_run(tmp_path: Path, settings: Settings, engines: Engines) -> None:
    cfg = BenchConfig(
        turns=1, http_runs=2, chat_tokens=24, concurrency=(2,), turns_per_session=2, out=tmp_path, warmup=False,
        settings=settings, mixed_turns=1, mixed_audio_s=6.0, soak_sessions=1, soak_turns=1,
    )  # fmt: skip
    raw = await run(cfg, engines)
    summ, paths = finish(raw, tmp_path)

    assert [finished(t) for t in raw["voice_turns"]] == [True]
    for turn, floor in zip(raw["voice_turns"], raw["floor"], strict=True):
        assert turn["user_perceived_s"] > 0 and turn["server_compute_s"] > 0
        assert set(turn["stages_s"]) == {name for name, _, _ in STAGES}
        # The stages partition the server's compute: they add up to it.
        assert sum(turn["stages_s"].values()) == pytest.approx(turn["server_compute_s"], abs=1e-6)
        assert floor["total_s"] > 0 and floor["first_clause"]
        assert turn["transcript"]
    assert summ["voice"]["compute_over_floor"]["p50"] is not None
    assert {side: len(runs) for side, runs in raw["chat"].items()} == {"http": 2, "engine": 2}
    assert summ["chat"]["engine"]["tokens_per_s"]["p50"] > 0
    assert {side: len(runs) for side, runs in raw["transcription"].items()} == {"http": 2, "engine": 2}
    assert {side: len(runs) for side, runs in raw["speech"].items()} == {"http": 2, "engine": 2}
    assert {"2"} == set(summ["concurrency"])
    assert all(c["completed"] == c["turns"] for c in summ["concurrency"].values())
    # The sessions' turns alternate; each session's second turn still found its whole first prompt
    # evaluated (per-session KV state), which the bench reports.
    turns = {(t["session"], t["turn"]): t for t in raw["concurrency"]["2"]}
    for s in (0, 1):
        assert turns[s, 1]["cached_tokens"] >= turns[s, 0]["input_tokens"] > 0, turns
    assert summ["concurrency"]["2"]["later_turns_cached"] > 0.5
    m = summ["mixed"]  # one turn alone, one under load; both loads ran through the whole window
    assert (m["alone"]["completed"], m["mixed"]["completed"]) == (1, 1)
    assert m["p95_mixed_over_alone"] is not None
    for kind in ("transcription", "chat"):
        assert m["load"][kind]["requests"] >= 1 and m["load"][kind]["in_flight"] > 0.5, (kind, m["load"])
    assert summ["soak"]["lost"] == 0 and summ["soak"]["turns"] == 1  # the soak is the last stage
    assert set(summ["targets"]) == set(report.TARGETS)
    for name, target in summ["targets"].items():
        assert target["value"] is not None, name
    assert json.loads(paths["json"].read_text())["raw"]["voice_turns"]
    assert paths["png"].stat().st_size > 1000
