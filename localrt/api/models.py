"""``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` and ``GET /health/live``.

``/health`` reports the loaded models, whether the chat model is busy and, per engine, its queue, running
jobs, slots, refusals and recent job latency (the same numbers as ``/metrics``) and, for remote engines,
whether each upstream answers (``upstreams``; ``status`` is ``degraded`` while one does not), so it needs
the API key when one is set. ``/health/live`` is the liveness probe for container health checks and load
balancers: it needs no key, touches no engine and answers ``{"status": "ok"}`` while the server accepts
requests.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from localrt.api.common import engines_of
from localrt.engines import Engines
from localrt.engines.scheduler import SchedulerStats
from localrt.errors import ModelNotFound
from localrt.metrics import Metrics


def _model(model_id: str, created: int, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "localrt", **extra}


def model_cards(engines: Engines) -> dict[str, dict[str, Any]]:
    """Every model id this server answers to, with what it is."""
    cards: dict[str, dict[str, Any]] = {}
    pool = engines.llm
    for model_id in pool.ids():
        loaded = model_id in pool.loaded_ids
        cards[model_id] = _model(model_id, pool.created(model_id), kind="chat", loaded=loaded)
    default_created = cards[pool.default_id]["created"]
    for alias in pool.aliases():
        cards.setdefault(alias, _model(alias, default_created, kind="chat", alias_of=pool.default_id))
    if engines.stt is not None:
        for model_id in engines.stt.model_ids():
            extra = {"loaded": True} if model_id == engines.stt.id else {"alias_of": engines.stt.id}
            cards.setdefault(model_id, _model(model_id, default_created, kind="transcription", **extra))
    if engines.tts is not None:
        voices = {v.id for v in engines.tts.voices()}
        for model_id in engines.tts.model_ids():
            extra = {"voice": True} if model_id in voices else {"default_voice": engines.tts.default_voice}
            cards.setdefault(model_id, _model(model_id, default_created, kind="speech", **extra))
    return cards


async def list_models(request: Request) -> Response:
    cards = model_cards(engines_of(request))
    return JSONResponse({"object": "list", "data": list(cards.values())})


async def get_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    card = model_cards(engines_of(request)).get(model_id)
    if card is None:
        raise ModelNotFound(model_id, param="model")
    return JSONResponse(card)


def engine_health(stats: list[SchedulerStats], metrics: Metrics | None) -> dict[str, dict[str, Any]]:
    """Per engine: queued, running, slots, max_queue, completed, rejected; latency_ms when jobs ran."""
    out: dict[str, dict[str, Any]] = {}
    for s in stats:
        entry: dict[str, Any] = {
            "queued": s.queued,
            "running": s.running,
            "slots": s.slots,
            "max_queue": s.max_queue,
            "completed": s.completed,
            "rejected": s.rejected,
        }
        latency = metrics.recent_latency_ms(s.engine) if metrics is not None else None
        if latency is not None:
            entry["latency_ms"] = latency
        out.setdefault(s.engine, entry)
    return out


PROBE_TIMEOUT_S = 3.0


async def upstream_health(engines: Engines) -> dict[str, dict[str, Any]]:
    """Per remote engine (one with a ``probe()`` coroutine), whether its upstream answers; all probed at
    once, each for at most :data:`PROBE_TIMEOUT_S`."""
    kinds = {"llm": engines.llm, "stt": engines.stt, "tts": engines.tts, "vad": engines.vad}
    probes: dict[str, Any] = {}
    for kind, engine in kinds.items():
        probe = getattr(engine, "probe", None)
        if callable(probe):
            probes[kind] = probe

    async def one(probe: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await asyncio.wait_for(probe(), PROBE_TIMEOUT_S)
            return result
        except Exception as exc:
            return {"reachable": False, "error": str(exc) or type(exc).__name__}

    results = await asyncio.gather(*(one(p) for p in probes.values()))
    return dict(zip(probes, results, strict=True))


async def health(request: Request) -> Response:
    engines = engines_of(request)
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    upstreams = await upstream_health(engines)
    extra: dict[str, Any] = {}
    if upstreams:  # remote engines: "degraded" while an upstream does not answer
        extra["upstreams"] = upstreams
    reachable = all(u.get("reachable") for u in upstreams.values())
    return JSONResponse(
        {
            "status": "ok" if reachable else "degraded",
            **extra,
            "chat": {
                "default": engines.llm.default_id,
                "loaded": engines.llm.loaded_ids,
                "busy": engines.llm.busy,
            },
            "stt": engines.stt.id if engines.stt is not None else None,
            "tts": engines.tts.default_voice if engines.tts is not None else None,
            "vad": engines.vad is not None,
            "engines": engine_health(engines.stats(), metrics),
        }
    )


async def live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


LIVENESS_PATH = "/health/live"

routes: list[BaseRoute] = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route(LIVENESS_PATH, live, methods=["GET"]),
]
