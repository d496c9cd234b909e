"""A short real bench run (in-process server over the test engines): every metric is reported, in both
turn detection modes."""

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
        settings=settings, mixed_turns=0, soak_sessions=0, incomplete=1,
    )  # fmt: skip
    # The mixed-load and soak stages have tests of their own (test_bench_stages.py, test_bench_soak.py):
    # this run keeps the suite's time down by leaving them out.
    raw = await run(cfg, engines)
    summ, paths = finish(raw, tmp_path)

    # The utterance once per mode, server_vad first; one floor for it.
    assert [(t["mode"], finished(t)) for t in raw["voice_turns"]] == [
        ("server_vad", True),
        ("semantic_vad", True),
    ]
    for turn in raw["voice_turns"]:
        assert turn["end_of_turn_s"] > 0 and turn["after_stop_s"] > 0, turn
        assert turn["user_perceived_s"] == pytest.approx(turn["end_of_turn_s"] + turn["after_stop_s"])
        assert turn["llm_run_s"] > 0  # the chat engine's run seconds over the turn, from /metrics
    for turn, floor in zip(raw["voice_turns"][:1], raw["floor"], strict=True):
        assert turn["user_perceived_s"] > 0 and turn["server_compute_s"] > 0
        assert set(turn["stages_s"]) == {name for name, _, _ in STAGES}
        # The stages partition the server's compute: they add up to it.
        assert sum(turn["stages_s"].values()) == pytest.approx(turn["server_compute_s"], abs=1e-6)
        assert floor["total_s"] > 0 and floor["first_clause"]
        assert turn["transcript"]
    assert summ["voice"]["compute_over_floor"]["p50"] is not None
    # The incomplete sentence, cut after its cut word where Whisper heard it, once per mode.
    (made,) = raw["incomplete_inputs"]
    assert made["cut_after"] == "for" and 0.3 < made["cut_s"] < 1.5 and "error" not in made, made
    assert [t["mode"] for t in raw["incomplete"]] == ["server_vad", "semantic_vad"]
    for t in raw["incomplete"]:  # cancelled at the reply's first audio: what they measure is over
        assert "resume_sent" in t["clock_s"] and t["end_of_turn_s"] is not None, t
        assert t["status"] == "completed" or (t["status"], t["reason"]) == (
            "cancelled",
            "client_cancelled",
        ), t
    modes = summ["turn_detection"]["modes"]
    # server_vad's 500 ms of silence ends the turn inside a 700 ms pause.
    assert modes["server_vad"]["incomplete"]["false_end_of_turn"] == 1
    assert modes["semantic_vad"]["incomplete"]["utterances"] == 1
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
    assert not summ.get("mixed") and not summ.get("soak")
    skipped = {"mixed_voice_p95_over_alone", "mixed_all_turns_completed", "soak_lost_turns"}
    assert set(summ["targets"]) == set(report.TARGETS) - skipped
    for name, target in summ["targets"].items():
        # A server that does not speculate reports no speculation (n/a).
        assert target["value"] is not None or name == "speculation_discarded_llm_share", name
    assert json.loads(paths["json"].read_text())["raw"]["voice_turns"]
    assert paths["png"].stat().st_size > 1000
