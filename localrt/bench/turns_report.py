"""The turn detection section of the bench's report (:mod:`localrt.bench.turns`): per mode, the voice turns'
latency split at the end of the turn, the incomplete set's false end-of-turn rate, speculative work."""

from __future__ import annotations

from typing import Any

from localrt.bench.stats import summary
from localrt.bench.turns import false_end_of_turn
from localrt.bench.voice import SERVER_VAD_SILENCE_S, STAGES, finished

TARGETS = {
    "server_vad_compute_after_stop_p50_ms": ("<=", 30.0),
    "server_vad_perceived_minus_silence_p50_ms": ("<=", 60.0),
    "semantic_vad_perceived_p50_ms": ("<=", 400.0),
    "semantic_vad_false_end_of_turn_rate": ("<=", 0.10),
    "speculation_discarded_llm_share": ("<=", 0.30),
}


def _mode(turn: dict[str, Any]) -> str:
    return str(turn.get("mode") or "server_vad")


def modes_of(turns: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(_mode(t) for t in turns))


def main_mode(turns: list[dict[str, Any]]) -> str:
    """The mode of the main voice series (with the floor): server_vad when it ran."""
    modes = modes_of(turns)
    return "server_vad" if "server_vad" in modes or not modes else modes[0]


def of_mode(turns: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    return [t for t in turns if _mode(t) == mode]


def speculation(turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Speculative work over ``turns``: responses used / discarded, discarded LLM seconds and their share
    of all the chat engines' run seconds over those turns; None when the server reports none."""
    counted = [t for t in turns if t.get("speculation") is not None]
    if not counted:
        return None
    used = sum(t["speculation"]["used"]["count"] for t in counted)
    discarded = sum(t["speculation"]["discarded"]["count"] for t in counted)
    discarded_llm = sum(t["speculation"]["discarded"]["llm_s"] for t in counted)
    llm = [t["llm_run_s"] for t in counted if t.get("llm_run_s") is not None]
    llm_s = sum(llm) if llm else None
    return {
        "turns": len(counted),
        "used": used,
        "discarded": discarded,
        "discarded_llm_s": discarded_llm,
        "llm_run_s": llm_s,
        "discarded_llm_share": discarded_llm / llm_s if llm_s else None,
    }


def _voice(turns: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in turns if finished(t)]
    return {
        "turns": len(turns),
        "completed": len(ok),
        "capped": sum(t["status"] == "incomplete" for t in ok),
        "user_perceived_s": summary([t["user_perceived_s"] for t in ok]),
        "end_of_turn_s": summary([t["end_of_turn_s"] for t in ok]),
        "after_stop_s": summary([t["after_stop_s"] for t in ok]),
        "server_compute_s": summary([t["server_compute_s"] for t in ok]),
        "stages_s": {name: summary([t["stages_s"].get(name) for t in ok]) for name, _, _ in STAGES},
        "speculation": speculation(turns),
    }


def _incomplete(turns: list[dict[str, Any]]) -> dict[str, Any]:
    cut = [t for t in turns if false_end_of_turn(t)]
    kept = [t for t in turns if not false_end_of_turn(t)]
    return {
        "utterances": len(turns),
        "false_end_of_turn": len(cut),
        "rate": len(cut) / len(turns) if turns else None,
        "end_of_turn_after_true_end_s": summary([t["end_of_turn_s"] for t in kept]),
        "speculation": speculation(turns),
    }


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Per mode (in the order they ran), its voice turns and its share of the incomplete set."""
    voice, incomplete = raw.get("voice_turns", []), raw.get("incomplete", [])
    pause_ms = (raw.get("config") or {}).get("pause_ms")
    out: dict[str, Any] = {"modes": {}, "incomplete_ran": "incomplete" in raw, "pause_ms": pause_ms}
    for mode in modes_of(voice + incomplete):
        entry = _voice(of_mode(voice, mode))
        if "incomplete" in raw:
            entry["incomplete"] = _incomplete(of_mode(incomplete, mode))
        out["modes"][mode] = entry
    out["speculation"] = speculation(voice)
    return out


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


def measures(td: dict[str, Any]) -> dict[str, Any]:
    """The targets this section judges, for the modes that ran (values in ms or ratios)."""
    out: dict[str, Any] = {}
    modes = td["modes"]
    if "server_vad" in modes and modes["server_vad"]["turns"]:
        s = modes["server_vad"]
        out["server_vad_compute_after_stop_p50_ms"] = _ms(s["after_stop_s"]["p50"])
        p50 = s["user_perceived_s"]["p50"]
        out["server_vad_perceived_minus_silence_p50_ms"] = _ms(
            None if p50 is None else p50 - SERVER_VAD_SILENCE_S
        )
    if "semantic_vad" in modes:
        s = modes["semantic_vad"]
        if s["turns"]:
            out["semantic_vad_perceived_p50_ms"] = _ms(s["user_perceived_s"]["p50"])
        if "incomplete" in s:
            out["semantic_vad_false_end_of_turn_rate"] = s["incomplete"]["rate"]
    if any(m["turns"] for m in modes.values()):
        spec = td["speculation"]
        out["speculation_discarded_llm_share"] = None if spec is None else spec["discarded_llm_share"]
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _speculation_line(spec: dict[str, Any] | None) -> str:
    if spec is None:
        return "n/a (the server reports no speculation)"
    share = spec["discarded_llm_share"]
    llm = spec["llm_run_s"]
    return (
        f"used {spec['used']}, discarded {spec['discarded']}; discarded LLM {spec['discarded_llm_s']:.2f} s of "
        f"{'-' if llm is None else f'{llm:.2f}'} s ({'-' if share is None else f'{share * 100:.0f}%'})"
    )


def table_lines(td: dict[str, Any]) -> list[str]:
    modes = td["modes"]
    if not modes:
        return []
    names = list(modes)
    done = ", ".join(f"{m} {modes[m]['completed']}/{modes[m]['turns']}" for m in names)
    lines = [f"Turn detection, the same utterances in each mode: turns completed {done} (ms; client clock)"]
    lines.append(f"  {'':<40}" + "".join(f"{m:>16}" for m in names))
    lines.append(f"  {'metric':<40}" + "".join(f"{'p50':>8}{'p95':>8}" for _ in names))

    def row(label: str, get: Any) -> None:
        cells = "".join(f"{_fmt(get(modes[m])['p50']):>8}{_fmt(get(modes[m])['p95']):>8}" for m in names)
        lines.append(f"  {label:<40}{cells}")

    row("user-perceived (last voiced -> audio)", lambda s: s["user_perceived_s"])
    row("  end-of-turn delay (-> speech_stopped)", lambda s: s["end_of_turn_s"])
    row("  compute after it (-> first audio)", lambda s: s["after_stop_s"])
    row("server compute (server clock)", lambda s: s["server_compute_s"])
    for name, _, _ in STAGES:
        row(f"  stage {name}", lambda s, name=name: s["stages_s"][name])
    if td.get("incomplete_ran"):
        pause = f"{td['pause_ms']} ms pause" if td.get("pause_ms") is not None else "a pause"
        lines.append(
            f"Incomplete utterances ({pause} inside): false end of turn, end-of-turn delay after the true end"
        )
        for m in names:
            inc = modes[m].get("incomplete")
            if inc is None or not inc["utterances"]:
                lines.append(f"  {m}: not run")
                continue
            after = inc["end_of_turn_after_true_end_s"]
            lines.append(
                f"  {m}: {inc['false_end_of_turn']}/{inc['utterances']} cut in the pause "
                f"({inc['rate'] * 100:.0f}%); the rest: p50 {_fmt(after['p50'])}, p95 {_fmt(after['p95'])}"
            )
    lines.append("Speculative work (the server's counts over the voice turns)")
    for m in names:
        lines.append(f"  {m}: {_speculation_line(modes[m]['speculation'])}")
        inc = modes[m].get("incomplete")
        if inc is not None and inc["speculation"] is not None:
            lines.append(f"    incomplete set: {_speculation_line(inc['speculation'])}")
    return lines


def chart(ax: Any, td: dict[str, Any]) -> None:
    """Per mode, the p50 end-of-turn delay with the p50 compute after it stacked on top."""
    names = list(td["modes"])
    eot = [(td["modes"][m]["end_of_turn_s"]["p50"] or 0) * 1000 for m in names]
    after = [(td["modes"][m]["after_stop_s"]["p50"] or 0) * 1000 for m in names]
    xs = list(range(len(names)))
    ax.bar(xs, eot, color="#8172b2", label="end-of-turn delay (p50)")
    ax.bar(xs, after, bottom=eot, color="#55a868", label="compute after speech_stopped (p50)")
    ax.set_xticks(xs, names)
    ax.set_ylabel("ms after the last voiced sample")
    ax.set_title("Turn detection: end of speech to first audio")
    ax.legend()
