"""Summaries of latency samples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of non-empty ``values``."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, Any]:
    data = [v for v in values if v is not None and not math.isnan(v)]
    if not data:
        return {"n": 0, "p25": None, "p50": None, "p75": None, "p95": None, "max": None, "mean": None}
    return {
        "n": len(data),
        "p25": percentile(data, 25),
        "p50": percentile(data, 50),
        "p75": percentile(data, 75),
        "p95": percentile(data, 95),
        "max": max(data),
        "mean": sum(data) / len(data),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def paired(
    a: Sequence[dict[str, Any]],
    b: Sequence[dict[str, Any]],
    key: str,
    how: Literal["ratio", "difference"] = "ratio",
) -> dict[str, Any]:
    """Summary of ``a[i][key] / b[i][key]`` (or ``-`` with ``how="difference"``) over runs made side by
    side: run ``i`` of each side had the same input, back to back, so the machine's drift over the
    bench (other load, thermal state) cancels out of each pair instead of widening both sides' spread."""
    out = []
    for x, y in zip(a, b, strict=False):
        u, v = x.get(key), y.get(key)
        if u is None or v is None:
            continue
        if how == "difference":
            out.append(u - v)
        elif v:
            out.append(u / v)
    return summary(out)
