"""``GET /status`` (an operator's page) and ``GET /status.json`` (what the page polls every 2 s).

The page shows the loaded models and their engines (local, or remote with the upstream's URL and whether
it answers), queue depth and running jobs per engine, open realtime sessions, recent turn latencies (end
of the user's speech to the first reply audio, as a small chart), the version, and the settings with every
secret shown only as ``"set"`` / ``"unset"``. It is one self-contained HTML file (``localrt/web/status.*``
inlined into one response: no build step, no CDN, works offline) under a strict Content-Security-Policy.

Like every route it needs the API key when one is set. A browser cannot send a bearer header when it
navigates, so these two paths (:data:`QUERY_KEY_PATHS`, and only these) also take the key as a ``?key=``
(or ``?api-key=``) query parameter, compared in constant time by ``localrt.app.APIKeyMiddleware``; the
page never contains it (its script reads it from the address bar and sends it as a bearer header to
``/status.json``) and the access log redacts it (:mod:`localrt.log_redaction`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import importlib.resources
import time
from typing import Any
from urllib.parse import parse_qsl

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

from localrt.api.common import engines_of
from localrt.api.models import engine_health, upstream_health
from localrt.engines import Engines, engine_name
from localrt.engines.remote_common import display_url
from localrt.metrics import TURN_STAGES, Metrics, percentile, stage_seconds
from localrt.settings import Settings
from localrt.timings import TimingLog

STATUS_PATH = "/status"
STATUS_JSON_PATH = "/status.json"
QUERY_KEY_PATHS = frozenset({STATUS_PATH, STATUS_JSON_PATH})
QUERY_KEY_NAMES = ("key", "api-key")
MAX_TURNS = 50  # turns in the chart
UPSTREAM_TTL_S = 10.0  # a remote upstream is probed at most this often, however many pages poll
_SECRET_SUFFIXES = ("api_key", "_token", "password", "secret")


def query_key(scope: Scope) -> str | None:
    """The key given as ``?key=`` / ``?api-key=`` on a status path; None elsewhere or when absent."""
    if scope.get("path") not in QUERY_KEY_PATHS:
        return None
    raw: bytes = scope.get("query_string", b"")
    if not raw:
        return None
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if name in QUERY_KEY_NAMES:
            return value
    return None


def version() -> str:
    try:
        return importlib.metadata.version("localrt")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- settings, secrets hidden ------------------------------------------------------------------------------
def is_secret(name: str, value: Any) -> bool:
    return isinstance(value, SecretStr) or name.endswith(_SECRET_SUFFIXES)


def public_settings(settings: Settings) -> dict[str, Any]:
    """Every setting; a secret as ``"set"`` / ``"unset"``, URLs without credentials."""
    dumped = settings.model_dump(mode="json")
    out: dict[str, Any] = {}
    for name in sorted(dumped):
        value = getattr(settings, name, None)
        if is_secret(name, value):
            out[name] = "unset" if value is None or value == "" else "set"
        elif name.endswith("_base_url") and isinstance(value, str):
            out[name] = display_url(value)
        else:
            out[name] = dumped[name]
    return out


# --- models and engines ------------------------------------------------------------------------------------
def _where(engine: Any, settings: Settings, kind: str) -> dict[str, Any]:
    """Which implementation runs ``kind``, and where (remote engines have an upstream and ``probe()``)."""
    name = {"vad": settings.vad_engine, "turn": settings.turn_engine}.get(kind) or engine_name(settings, kind)
    remote = callable(getattr(engine, "probe", None))
    out: dict[str, Any] = {"engine": name, "location": "remote" if remote else "local"}
    upstream = getattr(engine, "upstream", None)
    if remote and upstream is not None:
        out["upstream"] = getattr(upstream, "display", None) or display_url(str(upstream.base_url))
    return out


def models(engines: Engines, settings: Settings) -> list[dict[str, Any]]:
    pool = engines.llm
    out: list[dict[str, Any]] = []
    where = _where(pool, settings, "llm")
    loaded = set(pool.loaded_ids)
    for model_id in pool.ids():
        out.append(
            {
                "kind": "chat",
                "id": model_id,
                "loaded": model_id in loaded,
                "default": model_id == pool.default_id,
                **where,
            }
        )
    if engines.stt is not None:
        out.append(
            {"kind": "stt", "id": engines.stt.id, "loaded": True, **_where(engines.stt, settings, "stt")}
        )
    if engines.tts is not None:
        tts = engines.tts
        out.append(
            {
                "kind": "tts",
                "id": tts.id,
                "loaded": True,
                "voice": tts.default_voice,
                **_where(tts, settings, "tts"),
            }
        )
    if engines.vad is not None:
        vad_id = getattr(engines.vad, "id", None) or settings.vad_engine
        out.append({"kind": "vad", "id": vad_id, "loaded": True, **_where(engines.vad, settings, "vad")})
    turn = getattr(engines, "turn", None)
    if turn is not None:
        turn_id = getattr(turn, "id", None) or settings.turn_engine
        out.append({"kind": "turn", "id": turn_id, "loaded": True, **_where(turn, settings, "turn")})
    return out


async def cached_upstreams(request: Request, engines: Engines) -> dict[str, dict[str, Any]]:
    """:func:`localrt.api.models.upstream_health`, at most once per :data:`UPSTREAM_TTL_S` per app."""
    state = request.app.state
    cached: tuple[float, dict[str, dict[str, Any]]] | None = getattr(state, "status_upstreams", None)
    now = time.monotonic()
    if cached is not None and now - cached[0] < UPSTREAM_TTL_S:
        return cached[1]
    result = await upstream_health(engines)
    state.status_upstreams = (time.monotonic(), result)
    return result


# --- turns -------------------------------------------------------------------------------------------------
def turns(log: TimingLog | None, now: float, limit: int = MAX_TURNS) -> dict[str, Any]:
    """The last ``limit`` realtime responses: latency (end of speech, or the response's start for a turn
    without speech, to the first audio sent), stage times, status and age; p50/p95 of the latencies."""
    entries = log.entries()[-limit:] if log is not None else []
    items: list[dict[str, Any]] = []
    for entry in entries:
        marks: dict[str, float] = entry.get("marks", {})
        origin = "speech_stopped" if "speech_stopped" in marks else "response_created"
        latency = stage_seconds(marks, (origin,), "first_audio_sent")
        stages: dict[str, float] = {}
        for stage, (starts, end, _help) in TURN_STAGES.items():
            seconds = stage_seconds(marks, starts, end)
            if seconds is not None:
                stages[stage] = round(seconds * 1000, 1)
        last = max(marks.values(), default=now)
        items.append(
            {
                "session_id": entry.get("session_id"),
                "response_id": entry.get("response_id"),
                "status": entry.get("status"),
                "from": "speech" if origin == "speech_stopped" else "response",
                "latency_ms": round(latency * 1000, 1) if latency is not None else None,
                "stages_ms": stages,
                "age_s": round(max(0.0, now - last), 1),
            }
        )
    latencies = [t["latency_ms"] for t in items if t["latency_ms"] is not None]
    summary: dict[str, Any] = {"count": len(latencies)}
    if latencies:
        summary |= {
            "p50_ms": round(percentile(latencies, 50), 1),
            "p95_ms": round(percentile(latencies, 95), 1),
        }
    return {"recent": items, "latency": summary}


# --- routes ------------------------------------------------------------------------------------------------
async def status_json(request: Request) -> Response:
    state = request.app.state
    engines = engines_of(request)
    settings: Settings = state.settings
    metrics: Metrics | None = getattr(state, "metrics", None)
    upstreams = await cached_upstreams(request, engines)
    slots = getattr(state, "realtime_slots", None)
    lifecycle = getattr(state, "lifecycle", None)
    started: float | None = getattr(state, "started", None)
    draining = bool(getattr(lifecycle, "draining", False))
    reachable = all(u.get("reachable") for u in upstreams.values())
    payload = {
        "object": "status",
        "status": "draining" if draining else "ok" if reachable else "degraded",
        "version": version(),
        "uptime_s": round(time.time() - started, 1) if started is not None else None,
        "models": models(engines, settings),
        "chat_busy": engines.llm.busy,
        "engines": engine_health(engines.stats(), metrics),
        "upstreams": upstreams,
        "sessions": {
            "open": getattr(slots, "total", 0),
            "max": getattr(slots, "max_total", settings.realtime_max_sessions),
            "max_per_client": getattr(slots, "max_per_ip", settings.realtime_max_sessions_per_ip),
        },
        "http_in_flight": getattr(lifecycle, "active", None),
        "turns": turns(getattr(state, "timings", None), time.monotonic()),
        "settings": public_settings(settings),
    }
    return JSONResponse(payload, headers={"Cache-Control": "no-store"})


def _asset(name: str) -> str:
    return (importlib.resources.files("localrt") / "web" / name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.cache
def page() -> tuple[str, str]:
    """The page (``status.html`` with ``status.css`` and ``status.js`` inlined) and its CSP."""
    css, js = _asset("status.css"), _asset("status.js")
    html = _asset("status.html").replace("/*STATUS_CSS*/", css).replace("/*STATUS_JS*/", js)
    csp = (
        f"default-src 'none'; script-src {_sha256(js)}; style-src {_sha256(css)}; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html, csp


async def status_page(request: Request) -> Response:
    html, csp = page()
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": csp,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


routes: list[BaseRoute] = [
    Route(STATUS_PATH, status_page, methods=["GET"]),
    Route(STATUS_JSON_PATH, status_json, methods=["GET"]),
]
