"""Per-turn timing marks of the realtime loop, kept for the benchmark and for operators.

Each realtime response records monotonic timestamps of its stages (``speech_stopped``, ``stt_done``,
``llm_first_token``, ``first_clause``, ``tts_first_chunk``, ``first_audio_sent``, ...). They are logged
with the session id and kept in a bounded in-memory log that ``GET /debug/timings`` serves, so
``localrt bench`` can break a turn into stages against a server in another process. The route lists
every session's ids, so when an API key is set it needs the key like every route but the liveness probe
(``localrt.app.APIKeyMiddleware``).

An optional observer sees every recorded turn (``observer(marks, extra)``, on the caller's thread): the
app's :class:`localrt.metrics.Metrics` turns the marks into stage histograms, so this module stays
independent of Prometheus.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

logger = logging.getLogger("localrt.realtime.timing")

TurnObserver = Callable[[Mapping[str, float], Mapping[str, Any]], None]
SPECULATION_ENGINES = ("stt", "llm", "tts")


class SpeculationTotals:
    """Speculations by outcome, and the engine seconds each outcome cost (thread safe, cumulative)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = {
            o: {"count": 0, **{f"{e}_s": 0.0 for e in SPECULATION_ENGINES}} for o in ("used", "discarded")
        }
        self.observer: Callable[[str, dict[str, float]], None] | None = None

    def record(self, outcome: str, seconds: dict[str, float]) -> None:
        with self._lock:
            row = self._totals[outcome]
            row["count"] += 1
            for engine, value in seconds.items():
                row[f"{engine}_s"] += value
        if self.observer is not None:
            try:
                self.observer(outcome, seconds)
            except Exception:  # metrics never break a turn
                logger.exception("speculation observer failed")

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {o: {k: round(v, 4) for k, v in row.items()} for o, row in self._totals.items()}


class TimingLog:
    """A bounded log of turn timings (thread safe; old entries fall off)."""

    def __init__(self, maxlen: int = 4096, observer: TurnObserver | None = None) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.observer = observer
        self.speculation = SpeculationTotals()  # speculative replies (realtime.speculation)

    def record(self, session_id: str, response_id: str | None, marks: dict[str, float], **extra: Any) -> None:
        entry = {"session_id": session_id, "response_id": response_id, "marks": dict(marks), **extra}
        with self._lock:
            self._entries.append(entry)
        if self.observer is not None:
            try:
                self.observer(entry["marks"], extra)
            except Exception:  # metrics must never break a turn
                logger.exception("timing observer failed")
        base = marks.get("speech_stopped")
        if base is not None:
            rel = {k: round((v - base) * 1000, 1) for k, v in marks.items()}
            logger.info("timing session=%s response=%s %s", session_id, response_id, json.dumps(rel))

    def entries(self, session_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._entries if session_id is None or e["session_id"] == session_id]


async def timings_endpoint(request: Request) -> Response:
    log: TimingLog = request.app.state.timings
    return JSONResponse(
        {
            "data": log.entries(request.query_params.get("session_id")),
            "speculation": log.speculation.snapshot(),
        }
    )


routes: list[BaseRoute] = [Route("/debug/timings", timings_endpoint, methods=["GET"])]
