"""The bench's report from synthetic samples: every metric present, stages add up, targets judged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localrt.bench import report
from localrt.bench.stats import percentile, summary
from localrt.bench.voice import STAGES, TurnSample, apply_marks


def marks(offset: float) -> dict[str, float]:
    return {
        "speech_stopped": 100.0 + offset,
        "stt_done": 100.3 + offset,
        "first_clause": 100.5 + offset,
        "tts_first_chunk": 100.56 + offset,
        "first_audio_sent": 100.57 + offset,
    }


def spec(used: int = 0, discarded: int = 0, discarded_llm_s: float = 0.0) -> dict[str, Any]:
    """One turn's speculative work as :func:`localrt.bench.turns.speculation_delta` gives it."""
    return {
        "used": {"count": used, "stt_s": 0.1 * used, "llm_s": 0.3 * used, "tts_s": 0.05 * used},
        "discarded": {"count": discarded, "stt_s": 0.0, "llm_s": discarded_llm_s, "tts_s": 0.0},
    }


def fake_turn(i: int, mode: str, perceived: float, end_of_turn: float, **extra: Any) -> dict[str, Any]:
    t = TurnSample(question=f"q{i}", mode=mode, status="completed", user_perceived_s=perceived,
                   end_of_turn_s=end_of_turn, after_stop_s=perceived - end_of_turn, **extra)  # fmt: skip
    apply_marks(t, marks(i))
    return t.to_dict()


def fake_incomplete(mode: str, stops: list[list[float]]) -> list[dict[str, Any]]:
    """Turns of incomplete utterances whose second part began 1.0 s and ended 1.5 s into the stream,
    with their speech_stopped times; one whose first stop comes before 1.0 s was cut in the pause."""
    out = []
    for i, times in enumerate(stops):
        t = TurnSample(question=f"i{i}", mode=mode, status="completed", stops_s=times,
                       clock_s={"resume_sent": 1.0, "last_voiced_sent": 1.5}, committed=len(times),
                       end_of_turn_s=times[-1] - 1.5, speculation=spec(discarded=int(times[0] < 1.0)))  # fmt: skip
        out.append(t.to_dict())
    return out


def fake_raw() -> dict[str, Any]:
    turns, floors = [], []
    for i in range(5):
        turns.append(fake_turn(i, "server_vad", 0.8 + i / 100, 0.55, speculation=spec(used=1), llm_run_s=1.0))
        floors.append({"question": f"q{i}", "stt_s": 0.28, "llm_first_clause_s": 0.19,
                       "tts_first_chunk_s": 0.05, "first_clause": "Hi.", "total_s": 0.52})  # fmt: skip
    conc = {str(n): [dict(turns[0], session=k % n, turn=k // n) for k in range(n * 2)] for n in (1, 2, 4)}
    semantic = [
        fake_turn(i, "semantic_vad", 0.35 + i / 100, 0.2, speculation=spec(1, 1, 0.2), llm_run_s=1.2)
        for i in range(5)
    ]
    return {
        "voice_turns": turns + semantic,
        "incomplete": fake_incomplete("server_vad", [[0.8, 2.0]] * 4)
        + fake_incomplete("semantic_vad", [[0.9, 2.0], [1.7], [1.8], [1.9]]),
        "config": {"pause_ms": 700},
        "floor": floors,
        "chat": {
            "http": [{"ttft_s": 0.020, "tokens_per_s": 150.0}] * 3,
            "engine": [{"ttft_s": 0.012, "tokens_per_s": 152.0}] * 3,
        },
        "transcription": {
            "http": [{"time_s": 0.33, "rtf": 0.15}] * 3,
            "engine": [{"time_s": 0.31, "rtf": 0.14}] * 3,
        },
        "speech": {"http": [{"ttfb_s": 0.07}] * 3, "engine": [{"ttfb_s": 0.06}] * 3},
        "concurrency": conc,
    }


def load_messages() -> list[dict[str, Any]]:
    """A transcription that runs 100..130 s then one still in flight; chats of 3 s back to back."""
    out: list[dict[str, Any]] = [
        {"kind": "transcription", "event": "begin", "n": 0, "t": 100.0},
        {"kind": "transcription", "event": "open", "n": 0, "t": 100.1},
        {"kind": "transcription", "event": "end", "n": 0, "t": 130.0, "status": 200, "items": 9, "finished": True},
        {"kind": "transcription", "event": "begin", "n": 1, "t": 130.1},
    ]  # fmt: skip
    for n in range(14):
        out.append({"kind": "chat", "event": "begin", "n": n, "t": 99.0 + 3 * n})
        out.append({"kind": "chat", "event": "end", "n": n, "t": 99.0 + 3 * n + 2.9, "status": 200,
                    "items": 300, "finished": True})  # fmt: skip
    return out


def fake_mixed(mixed_s: tuple[float, ...] = (1.1, 1.2, 1.3, 1.4, 2.0)) -> dict[str, Any]:
    def turns(values: tuple[float, ...]) -> list[dict[str, Any]]:
        out = []
        for i, v in enumerate(values):
            t = TurnSample(question=f"q{i}", status="completed", user_perceived_s=v)
            apply_marks(t, marks(i))
            out.append(t.to_dict())
        return out

    return {
        "turns": 5,
        "alone": turns((1.0, 1.1, 1.2, 1.3, 1.4)),
        "mixed": turns(mixed_s),
        "window": [101.0, 141.0],
        "load": {"kinds": ["transcription", "chat"], "transcription_audio_s": 90.0, "chat_max_tokens": 300,
                 "messages": load_messages()},
    }  # fmt: skip


def test_percentiles() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    s = summary([0.1, 0.2, None, 0.3])  # type: ignore[list-item]
    assert s["n"] == 3 and s["max"] == 0.3


def test_stages_add_up_to_server_compute() -> None:
    t = TurnSample(question="q")
    apply_marks(t, marks(0))
    assert set(t.stages_s) == {name for name, _, _ in STAGES}
    assert t.server_compute_s == pytest.approx(sum(t.stages_s.values()))


def test_summary_has_every_metric_and_judges_targets(tmp_path: Path) -> None:
    raw = fake_raw()
    summ = report.summarize(raw)
    assert summ["voice"]["completed"] == 5
    for key in ("user_perceived_s", "server_compute_s", "compute_over_floor"):
        assert {"p50", "p95", "max"} <= set(summ["voice"][key])
    assert set(summ["voice"]["stages_s"]) == {name for name, _, _ in STAGES}
    t = summ["targets"]
    assert t["voice_compute_over_floor_p50"]["value"] == pytest.approx(0.57 / 0.52)
    assert t["voice_compute_over_floor_p50"]["met"] is True
    assert t["chat_ttft_overhead_ms"]["value"] == pytest.approx(8.0)
    assert t["chat_tokens_per_s_http_over_engine"]["met"] is True
    assert t["transcription_http_over_engine"]["value"] == pytest.approx(0.33 / 0.31)
    assert t["speech_ttfb_http_over_engine"]["met"] is False  # 0.07 / 0.06 > 1.10
    assert t["concurrency_all_turns_completed"]["value"] is True
    assert set(summ["concurrency"]) == {"1", "2", "4"}

    raw["machine"] = report.machine()
    paths = report.write(raw, summ, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["summary"]["targets"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = paths["table"].read_text()
    assert "user-perceived" in text and "MISSED" in text and "floor (engines in-process)" in text
    assert "http/engine: 0.987 (middle half 0.987 to 0.987, 3 rounds); ratio of the p50s 0.987" in text
    assert "direct" not in text
    assert "mixed" not in t and "Mixed load" not in text  # the stage did not run: no section, no target


def test_turn_detection_per_mode_false_end_of_turn_and_speculation(tmp_path: Path) -> None:
    raw = fake_raw()
    summ = report.summarize(raw)
    modes = summ["turn_detection"]["modes"]
    assert list(modes) == ["server_vad", "semantic_vad"]
    s, m = modes["server_vad"], modes["semantic_vad"]
    assert s["turns"] == m["turns"] == 5
    assert s["end_of_turn_s"]["p50"] == pytest.approx(0.55) and s["after_stop_s"]["p50"] == pytest.approx(
        0.27
    )
    assert m["user_perceived_s"]["p50"] == pytest.approx(0.37) and m["end_of_turn_s"]["p95"] == pytest.approx(
        0.2
    )
    assert set(m["stages_s"]) == {name for name, _, _ in STAGES}
    assert (s["incomplete"]["false_end_of_turn"], s["incomplete"]["rate"]) == (4, 1.0)
    assert s["incomplete"]["end_of_turn_after_true_end_s"]["n"] == 0  # every one was cut
    assert (m["incomplete"]["false_end_of_turn"], m["incomplete"]["rate"]) == (1, 0.25)
    assert m["incomplete"]["end_of_turn_after_true_end_s"]["p50"] == pytest.approx(0.3)  # 1.8 - 1.5
    assert m["speculation"] == {"turns": 5, "used": 5, "discarded": 5, "discarded_llm_s": pytest.approx(1.0),
                                "llm_run_s": pytest.approx(6.0), "discarded_llm_share": pytest.approx(1 / 6)}  # fmt: skip
    t = summ["targets"]
    assert t["server_vad_compute_after_stop_p50_ms"]["value"] == pytest.approx(270.0)
    assert t["server_vad_compute_after_stop_p50_ms"]["met"] is False
    assert t["server_vad_perceived_minus_silence_p50_ms"]["value"] == pytest.approx(320.0)
    assert t["semantic_vad_perceived_p50_ms"] == {
        "value": pytest.approx(370.0),
        "target": "<= 400.0",
        "met": True,
    }
    assert t["semantic_vad_false_end_of_turn_rate"]["met"] is False  # 0.25 > 0.10
    # Over both modes' voice turns: 1.0 s discarded of 11.0 s of LLM time.
    assert t["speculation_discarded_llm_share"]["value"] == pytest.approx(1.0 / 11.0)
    assert t["speculation_discarded_llm_share"]["met"] is True
    assert set(t) == set(report.TARGETS) - {"mixed_voice_p95_over_alone", "mixed_all_turns_completed",
                                            "soak_lost_turns"}  # fmt: skip
    text = report.table(summ)
    assert (
        "Turn detection, the same utterances in each mode: turns completed server_vad 5/5, semantic_vad 5/5"
        in text
    )
    assert "Incomplete utterances (700 ms pause inside)" in text
    assert "  server_vad: 4/4 cut in the pause (100%); the rest: p50 -, p95 -" in text
    assert "  semantic_vad: 1/4 cut in the pause (25%); the rest: p50 300, p95" in text
    assert "  semantic_vad: used 5, discarded 5; discarded LLM 1.00 s of 6.00 s (17%)" in text
    assert "    incomplete set: used 0, discarded 1; discarded LLM 0.00 s of - s (-)" in text
    paths = report.write(raw, summ, tmp_path)
    assert paths["png"].stat().st_size > 1000
    saved = json.loads(paths["json"].read_text())["raw"]
    assert saved["incomplete"][0]["stops_s"] == [0.8, 2.0]  # the raw samples, to recompute from


def test_a_server_without_speculation_or_a_second_mode_reports_na() -> None:
    raw = fake_raw()
    raw["voice_turns"] = [dict(t, speculation=None, llm_run_s=None) for t in raw["voice_turns"][:5]]
    del raw["incomplete"]
    summ = report.summarize(raw)
    assert list(summ["turn_detection"]["modes"]) == ["server_vad"]
    t = summ["targets"]
    assert t["speculation_discarded_llm_share"] == {"value": None, "target": "<= 0.3", "met": None}
    assert not any(name.startswith("semantic_vad") for name in t)
    text = report.table(summ)
    assert "  server_vad: n/a (the server reports no speculation)" in text
    assert "Incomplete utterances" not in text
    assert "speculation_discarded_llm_share" in text and "n/a" in text


def test_turns_cut_at_the_token_cap_complete_and_others_do_not() -> None:
    raw = fake_raw()
    raw["voice_turns"][0].update(status="incomplete", reason="max_output_tokens")
    raw["concurrency"]["2"][0] = dict(raw["voice_turns"][0])
    raw["concurrency"]["4"][0] = dict(raw["voice_turns"][0], reason="content_filter")
    raw["concurrency"]["4"][1] = dict(raw["voice_turns"][0], status="cancelled", reason="turn_detected")
    summ = report.summarize(raw)
    assert summ["voice"]["completed"] == 5 and summ["voice"]["capped"] == 1
    assert summ["concurrency"]["2"]["completed"] == 4 and summ["concurrency"]["2"]["capped"] == 1
    assert summ["concurrency"]["4"]["completed"] == 6
    assert summ["targets"]["concurrency_all_turns_completed"]["met"] is False
    text = report.table(summ)
    assert "Voice turns: 5/5 completed (1 cut at max_output_tokens)" in text
    assert "4 session(s): 6/8 turns completed," in text


def test_http_targets_judge_rounds_side_by_side() -> None:
    """Drift across the run (a slow stretch hitting both sides of some rounds) cancels within each pair;
    the target is the median of the per-round ratios, not a ratio of the sides' medians."""
    raw = fake_raw()
    direct = [100.0, 100.0, 80.0, 80.0, 80.0]  # the machine slows down for the last three rounds
    http = [97.0, 97.0, 77.6, 77.6, 77.6]  # 0.97 of direct in every round
    raw["chat"] = {
        "http": [{"ttft_s": 0.020 + i / 100, "tokens_per_s": v} for i, v in enumerate(http)],
        "engine": [{"ttft_s": 0.012 + i / 100, "tokens_per_s": v} for i, v in enumerate(direct)],
    }
    raw["speech"] = {
        "http": [{"ttfb_s": 0.10}, {"ttfb_s": 0.20}],
        "engine": [{"ttfb_s": 0.1}, {"ttfb_s": None}],
    }
    summ = report.summarize(raw)
    t = summ["targets"]
    assert t["chat_tokens_per_s_http_over_engine"]["value"] == pytest.approx(0.97)
    assert t["chat_ttft_overhead_ms"]["value"] == pytest.approx(8.0)
    assert summ["chat"]["paired"]["tokens_per_s_http_over_engine"]["n"] == 5
    assert t["speech_ttfb_http_over_engine"]["value"] == pytest.approx(1.0)  # the unpaired run is left out


def fake_soak(lost: int = 0) -> dict[str, Any]:
    turns = []
    for i in range(8):
        t = TurnSample(question=f"q{i}", status="completed", user_perceived_s=1.0 + i / 10)
        apply_marks(t, marks(i))
        turns.append({**t.to_dict(), "session": i // 4, "turn": i % 4})
    turns[0].update(status="incomplete", reason="max_output_tokens")  # capped: still completed
    for lost_turn in turns[8 - lost :]:
        lost_turn.update(status="timeout", user_perceived_s=None)
    return {
        "sessions": 2,
        "turns_per_session": 4,
        "turn_timeout_s": 120.0,
        "wall_s": 42.0,
        "process": "self",
        "before": {"rss_mb": 800.0, "threads": 40, "fds": 30},
        "after": {"rss_mb": 812.5, "threads": 40, "fds": 31},
        "rss_timeline": [[0.0, 801.0], [0.5, 850.0], [1.0, 820.0]],
        "turns": turns,
    }


def test_soak_section_and_target(tmp_path: Path) -> None:
    raw = {**fake_raw(), "mixed": fake_mixed(), "soak": fake_soak()}
    summ = report.summarize(raw)
    s = summ["soak"]
    assert (s["turns"], s["completed"], s["capped"], s["lost"]) == (8, 8, 1, 0)
    assert s["rss_mb"] == {"before": 800.0, "after": 812.5, "peak": 850.0}
    assert s["threads"] == {"before": 40, "after": 40} and s["fds"] == {"before": 30, "after": 31}
    assert s["user_perceived_s"]["p50"] == pytest.approx(1.35) and s["user_perceived_s"]["p95"] is not None
    assert s["server_compute_s"]["p50"] == pytest.approx(0.57)
    assert summ["targets"]["soak_lost_turns"] == {"value": 0, "target": "== 0", "met": True}
    assert len(summ["targets"]) == len(report.TARGETS)  # the full run judges every target
    text = report.table(summ)
    assert (
        "Soak: 2 sessions x 4 turns in 42 s: 8/8 turns completed (1 cut at max_output_tokens), 0 lost" in text
    )
    assert "user-perceived p50 1350, p95" in text and "server compute p50 570" in text
    assert "RSS before 800 MB, after 812 MB, peak 850 MB; threads 40 -> 40; fds 30 -> 31" in text
    assert text.index("Mixed load") < text.index("Soak:") < text.index("Targets")
    paths = report.write(raw, summ, tmp_path)
    assert json.loads(paths["json"].read_text())["summary"]["soak"]["lost"] == 0
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_soak_lost_turns_miss_the_target() -> None:
    soak = fake_soak(lost=2)
    soak["turns"][1].update(status="not_run", error="session ended: ConnectionClosedError")
    summ = report.summarize({"soak": soak})
    assert summ["soak"]["lost"] == 3
    assert summ["soak"]["lost_by_status"] == {"not_run": 1, "timeout": 2}
    assert summ["targets"]["soak_lost_turns"]["met"] is False
    assert "5/8 turns completed (1 cut at max_output_tokens), 3 lost (1 not_run, 2 timeout)" in report.table(
        summ
    )


def test_soak_alone_reports_only_the_soak(tmp_path: Path) -> None:
    """``localrt bench --soak``: no other stage ran, so no other section or target; a server measured
    over ``--url`` without a pid says its process was not measured."""
    soak = dict(fake_soak(), process=None, before=None, after=None, rss_timeline=[])
    summ = report.summarize({"soak": soak, "machine": report.machine()})
    assert set(summ) == {"soak", "targets"} and set(summ["targets"]) == {"soak_lost_turns"}
    assert summ["soak"]["rss_mb"] == {"before": None, "after": None, "peak": None}
    text = report.table(summ)
    assert "Voice turns" not in text and "server process: not measured" in text
    paths = report.write({"soak": soak}, summ, tmp_path)
    assert paths["png"].stat().st_size > 1000
