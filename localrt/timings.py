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


class TimingLog:
    """A bounded log of turn timings (thread safe; old entries fall off)."""

    def __init__(self, maxlen: int = 4096, observer: TurnObserver | None = None) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.observer = observer

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
    return JSONResponse({"data": log.entries(request.query_params.get("session_id"))})


routes: list[BaseRoute] = [Route("/debug/timings", timings_endpoint, methods=["GET"])]
