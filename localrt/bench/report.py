"""The bench's outputs: summaries with targets, a table on stdout, ``results.json`` and ``latency.png``."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from localrt.bench import hop, mixed, soak, turns_report
from localrt.bench.stats import paired, ratio, summary
from localrt.bench.voice import STAGES, finished

# "engine": the same work on localrt's engines in-process, through their interfaces, with no server.
TARGETS = {
    "voice_compute_over_floor_p50": ("<=", 1.15),
    "chat_tokens_per_s_http_over_engine": (">=", 0.95),
    "chat_ttft_overhead_ms": ("<=", 15.0),
    "transcription_http_over_engine": ("<=", 1.10),
    "speech_ttfb_http_over_engine": ("<=", 1.10),
    "concurrency_all_turns_completed": ("==", True),
    "mixed_voice_p95_over_alone": ("<=", mixed.P95_TARGET),
    "mixed_all_turns_completed": ("==", True),
    "soak_lost_turns": ("==", 0),
    **turns_report.TARGETS,
}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.system(),
    }


def _met(op: str, value: Any, target: Any) -> bool | None:
    if value is None:
        return None
    met: bool = {"<=": value <= target, ">=": value >= target, "==": value == target}[op]
    return met


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """The summary of each stage that ran (``localrt bench --soak`` runs only the soak), with the
    targets those stages measure."""
    out: dict[str, Any] = _summarize_main(raw) if "voice_turns" in raw else {"targets": {}}
    if "voice_turns" in raw:
        out["turn_detection"] = td = turns_report.summarize(raw)
        for name, value in turns_report.measures(td).items():
            out["targets"][name] = _judge(name, value)
    if "mixed" in raw:
        out["mixed"] = m = mixed.summarize(raw["mixed"])
        out["targets"]["mixed_voice_p95_over_alone"] = _judge(
            "mixed_voice_p95_over_alone", m["p95_mixed_over_alone"]
        )
        out["targets"]["mixed_all_turns_completed"] = _judge(
            "mixed_all_turns_completed", m["all_turns_completed"]
        )
    if "hop" in raw:
        out["hop"] = hop.summarize(raw["hop"])
    if "soak" in raw:
        out["soak"] = soak.summarize(raw["soak"])
        out["targets"]["soak_lost_turns"] = _judge("soak_lost_turns", out["soak"]["lost"])
    return out


def _judge(name: str, value: Any) -> dict[str, Any]:
    op, target = TARGETS[name]
    return {"value": value, "target": f"{op} {target}", "met": _met(op, value, target)}


def _summarize_main(raw: dict[str, Any]) -> dict[str, Any]:
    # The main series: the voice turns of one mode (server_vad when it ran), one per floor.
    mode = turns_report.main_mode(raw["voice_turns"])
    series = turns_report.of_mode(raw["voice_turns"], mode)
    turns = [t for t in series if finished(t)]
    floors = raw["floor"]
    per_turn_ratio = [
        t["server_compute_s"] / f["total_s"]
        for t, f in zip(series, floors, strict=False)
        if finished(t) and t["server_compute_s"] and f["total_s"]
    ]
    voice: dict[str, Any] = {
        "mode": mode,
        "turns": len(series),
        "completed": len(turns),
        "capped": sum(t["status"] == "incomplete" for t in turns),
        "user_perceived_s": summary([t["user_perceived_s"] for t in turns]),
        "server_compute_s": summary([t["server_compute_s"] for t in turns]),
        "stages_s": {name: summary([t["stages_s"].get(name) for t in turns]) for name, _, _ in STAGES},
        "floor_s": {
            "total": summary([f["total_s"] for f in floors]),
            "stt": summary([f["stt_s"] for f in floors]),
            "llm_first_clause": summary([f["llm_first_clause_s"] for f in floors]),
            "tts_first_chunk": summary([f["tts_first_chunk_s"] for f in floors]),
        },
        "compute_over_floor": summary(per_turn_ratio),
    }
    chat: dict[str, Any] = {
        side: {
            "ttft_s": summary([r["ttft_s"] for r in runs]),
            "tokens_per_s": summary([r["tokens_per_s"] for r in runs]),
        }
        for side, runs in raw["chat"].items()
    }
    # Per round, the two sides (same prompt, back to back): what the targets judge.
    http_runs, engine_runs = raw["chat"]["http"], raw["chat"]["engine"]
    chat["paired"] = {
        "tokens_per_s_http_over_engine": paired(http_runs, engine_runs, "tokens_per_s"),
        "ttft_http_minus_engine_s": paired(http_runs, engine_runs, "ttft_s", "difference"),
    }
    stt_h, stt_e = raw["transcription"]["http"], raw["transcription"]["engine"]
    transcription: dict[str, Any] = {
        side: {"time_s": summary([r["time_s"] for r in runs]), "rtf": summary([r["rtf"] for r in runs])}
        for side, runs in (("http", stt_h), ("engine", stt_e))
    }
    transcription["paired"] = {"time_http_over_engine": paired(stt_h, stt_e, "time_s")}
    tts_h, tts_e = raw["speech"]["http"], raw["speech"]["engine"]
    speech: dict[str, Any] = {
        "http": {"ttfb_s": summary([r["ttfb_s"] for r in tts_h])},
        "engine": {"ttfb_s": summary([r["ttfb_s"] for r in tts_e])},
        "paired": {"ttfb_http_over_engine": paired(tts_h, tts_e, "ttfb_s")},
    }
    concurrency: dict[str, Any] = {}
    for level, samples in raw["concurrency"].items():
        ok = [s for s in samples if finished(s)]
        concurrency[level] = {
            "turns": len(samples),
            "completed": len(ok),
            "capped": sum(t["status"] == "incomplete" for t in ok),
            "user_perceived_s": summary([s["user_perceived_s"] for s in ok]),
            "server_compute_s": summary([s["server_compute_s"] for s in ok]),
            "later_turns_cached": _later_turns_cached(samples),
        }
    ttft_overhead = chat["paired"]["ttft_http_minus_engine_s"]["p50"]
    measures = {
        "voice_compute_over_floor_p50": voice["compute_over_floor"]["p50"],
        "chat_tokens_per_s_http_over_engine": chat["paired"]["tokens_per_s_http_over_engine"]["p50"],
        "chat_ttft_overhead_ms": None if ttft_overhead is None else ttft_overhead * 1000,
        "transcription_http_over_engine": transcription["paired"]["time_http_over_engine"]["p50"],
        "speech_ttfb_http_over_engine": speech["paired"]["ttfb_http_over_engine"]["p50"],
        "concurrency_all_turns_completed": all(c["completed"] == c["turns"] for c in concurrency.values())
        if concurrency
        else None,
    }
    targets = {name: _judge(name, value) for name, value in measures.items()}
    return {
        "voice": voice,
        "chat": chat,
        "transcription": transcription,
        "speech": speech,
        "concurrency": concurrency,
        "targets": targets,
    }


def _later_turns_cached(samples: list[dict[str, Any]]) -> float | None:
    """The share of the prompt tokens of each session's second and later turns that the model had
    already evaluated (``cached_tokens`` over ``input_tokens`` from ``response.done``)."""
    later = [s for s in samples if s.get("turn", 0) > 0 and s.get("input_tokens")]
    total = sum(s["input_tokens"] for s in later)
    return sum(s.get("cached_tokens", 0) for s in later) / total if total else None


def _capped(counts: dict[str, Any]) -> str:
    n = counts.get("capped", 0)
    return f" ({n} cut at max_output_tokens)" if n else ""


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def table(summ: dict[str, Any]) -> str:
    lines = _main_lines(summ) if "voice" in summ else []
    if "turn_detection" in summ:
        lines += turns_report.table_lines(summ["turn_detection"])
    if "mixed" in summ:
        lines += mixed.table_lines(summ["mixed"])
    if "hop" in summ:
        lines += hop.table_lines(summ["hop"])
    if "soak" in summ:
        lines += soak.table_lines(summ["soak"])
    lines.append("Targets (HTTP ones: the median over rounds of each round's side-by-side ratio)")
    for name, tgt in summ["targets"].items():
        value = tgt["value"]
        shown = "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
        verdict = {True: "met", False: "MISSED", None: "n/a"}[tgt["met"]]
        lines.append(f"  {name:<42}{shown:>10}  (target {tgt['target']}) {verdict}")
    return "\n".join(lines)


def _main_lines(summ: dict[str, Any]) -> list[str]:
    lines = []
    v = summ["voice"]
    lines.append(
        f"Voice turns: {v['completed']}/{v['turns']} completed{_capped(v)} ({v.get('mode', 'server_vad')}; times in ms)"
    )
    lines.append(f"  {'metric':<34}{'p50':>8}{'p95':>8}{'max':>8}")

    def row(label: str, s: dict[str, Any]) -> None:
        lines.append(f"  {label:<34}{_ms(s['p50']):>8}{_ms(s['p95']):>8}{_ms(s['max']):>8}")

    row("user-perceived (client clock)", v["user_perceived_s"])
    row("server compute (speech_stopped->audio)", v["server_compute_s"])
    for name, s in v["stages_s"].items():
        row(f"  stage {name}", s)
    row("floor (engines in-process)", v["floor_s"]["total"])
    for name in ("stt", "llm_first_clause", "tts_first_chunk"):
        row(f"  floor {name}", v["floor_s"][name])
    c = summ["chat"]
    lines.append("HTTP against the same engines in-process (engine: no HTTP, JSON or SSE)")
    lines.append(
        f"  chat TTFT p50: http {_ms(c['http']['ttft_s']['p50'])} ms, engine {_ms(c['engine']['ttft_s']['p50'])} ms; "
        f"tokens/s p50: http {c['http']['tokens_per_s']['p50'] or 0:.1f}, engine {c['engine']['tokens_per_s']['p50'] or 0:.1f}"
    )
    pc = c["paired"]

    def spread(stat: dict[str, Any]) -> str:
        if stat["p50"] is None:
            return "-"
        return f"{stat['p50']:.3f} (middle half {stat['p25']:.3f} to {stat['p75']:.3f}, {stat['n']} rounds)"

    of_p50s = ratio(c["http"]["tokens_per_s"]["p50"], c["engine"]["tokens_per_s"]["p50"])
    lines.append(
        f"  chat tokens/s per round, http/engine: {spread(pc['tokens_per_s_http_over_engine'])}; "
        f"ratio of the p50s {of_p50s or 0:.3f}"
    )
    t = summ["transcription"]
    lines.append(
        f"  transcription p50: http {_ms(t['http']['time_s']['p50'])} ms (RTF {t['http']['rtf']['p50'] or 0:.3f}), "
        f"engine {_ms(t['engine']['time_s']['p50'])} ms (RTF {t['engine']['rtf']['p50'] or 0:.3f})"
    )
    s = summ["speech"]
    lines.append(
        f"  speech TTFB p50: http {_ms(s['http']['ttfb_s']['p50'])} ms, engine {_ms(s['engine']['ttfb_s']['p50'])} ms"
    )
    lines.append("Concurrent sessions, alternating turns (user-perceived, ms)")
    cached = []
    for level, cs in summ["concurrency"].items():
        up = cs["user_perceived_s"]
        lines.append(
            f"  {level} session(s): {cs['completed']}/{cs['turns']} turns completed{_capped(cs)}, "
            f"p50 {_ms(up['p50'])}, p95 {_ms(up['p95'])}"
        )
        if cs.get("later_turns_cached") is not None:
            cached.append(f"{level} session(s) {cs['later_turns_cached'] * 100:.0f}%")
    if cached:
        lines.append(f"  prompt tokens already evaluated on turns 2+ (cached_tokens): {', '.join(cached)}")
    return lines


def chart(summ: dict[str, Any], raw: dict[str, Any], path: Path) -> None:
    """One panel per view of the stages that ran: the voice turn's stages and the concurrency levels
    (main run), voice turns alone and under mixed load, the server's RSS over the soak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main, mixed_ran, soaked = "voice" in summ, "mixed" in raw, "soak" in raw
    td = summ.get("turn_detection") if main else None
    panels = 2 * main + bool(td and td["modes"]) + mixed_ran + soaked
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5), squeeze=False)
    ax = iter(axes[0])
    if main:
        _voice_panel(next(ax), summ["voice"])
        _concurrency_panel(next(ax), raw["concurrency"])
    if td and td["modes"]:
        turns_report.chart(next(ax), td)
    if mixed_ran:
        mixed.chart(next(ax), raw["mixed"])
    if soaked:
        soak.chart(next(ax), raw["soak"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _voice_panel(ax: Any, v: dict[str, Any]) -> None:
    server = [(v["stages_s"][n]["p50"] or 0) * 1000 for n, _, _ in STAGES]
    floor = [
        (v["floor_s"]["stt"]["p50"] or 0) * 1000,
        (v["floor_s"]["llm_first_clause"]["p50"] or 0) * 1000,
        (v["floor_s"]["tts_first_chunk"]["p50"] or 0) * 1000,
        0.0,
    ]
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for col, values in enumerate((server, floor)):
        bottom = 0.0
        for (name, _, _), value, color in zip(STAGES, values, colors, strict=False):
            ax.bar(col, value, bottom=bottom, color=color, label=name if col == 0 else None)
            bottom += value
    ax.set_xticks([0, 1], ["server (p50 stages)", "floor (engines in-process)"])
    ax.set_ylabel("ms after speech_stopped")
    ax.set_title("Voice turn: time to first reply audio")
    ax.legend()


def _concurrency_panel(ax: Any, concurrency: dict[str, Any]) -> None:
    levels = list(concurrency)
    data = [
        [s["user_perceived_s"] * 1000 for s in concurrency[lvl] if s["user_perceived_s"] is not None]
        for lvl in levels
    ]
    if levels:
        ax.boxplot(data, tick_labels=[f"{lvl} session(s)" for lvl in levels])
    ax.set_ylabel("user-perceived latency, ms")
    ax.set_title("Latency by concurrent sessions")


def write(raw: dict[str, Any], summ: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "png": out / "latency.png", "table": out / "table.txt"}
    paths["json"].write_text(json.dumps({"summary": summ, "raw": raw}, indent=2))
    paths["table"].write_text(table(summ) + "\n")
    chart(summ, raw, paths["png"])
    return paths
