"""The ASGI application: routes, middleware, error rendering and the engines' lifetime.

``create_app(settings, engines=None)`` builds everything explicitly; there is no module-level state.
Without ``engines`` the lifespan loads them from the settings in a worker thread (the models are loaded
at start-up, never on the first request) and closes them at shutdown; tests may pass their own.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from localrt.api import audio as audio_api
from localrt.api import chat as chat_api
from localrt.api import models as models_api
from localrt.api import status as status_api
from localrt.api import talk as talk_api
from localrt.api.common import ClientDisconnected, error_response
from localrt.api.models import LIVENESS_PATH
from localrt.engines import Engines, load_engines
from localrt.errors import APIError, AuthenticationError, NotFound, ServerError, ServiceUnavailable
from localrt.lifecycle import DrainMiddleware, Lifecycle
from localrt.metrics import Metrics
from localrt.metrics import routes as metrics_routes
from localrt.metrics_http import HTTPMetricsMiddleware
from localrt.pipeline import load_pipelines
from localrt.realtime import endpoint as realtime_api
from localrt.realtime.handshake_guard import SessionSlots
from localrt.settings import Settings
from localrt.timings import TimingLog
from localrt.timings import routes as timing_routes

logger = logging.getLogger(__name__)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    if isinstance(exc, ServiceUnavailable):  # full or shutting down: expected, and said to the client
        logger.info("%s %s -> %r", request.method, request.url.path, exc)
    elif exc.status >= 500:
        logger.error("%s %s -> %r", request.method, request.url.path, exc)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err: APIError = NotFound(
            f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url"
        )
    else:
        err = APIError(str(exc.detail), status=exc.status_code, code=None)
    return error_response(err)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody is listening; uvicorn drops whatever we send.
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(ServerError("The server had an error while processing your request."))


def bearer_key(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def key_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def _keyless(path: str) -> bool:
    """Paths served without the key: the liveness probe and the talk page's static files."""
    return path == LIVENESS_PATH or talk_api.is_public(path)


class APIKeyMiddleware:
    """401 for HTTP requests without the configured key (WebSockets check it at the handshake).

    Every route needs it, ``/health`` and ``/debug/timings`` included, except the liveness probe
    (:data:`LIVENESS_PATH`, which says nothing but "ok"), the talk page's static files (which carry no
    secret; its WebSocket sends the key) and CORS preflights (which carry no key).
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and not _keyless(scope["path"]):
            headers = dict(scope["headers"])
            given = bearer_key(headers.get(b"authorization", b"").decode("latin-1"))
            if given is None:  # /status and /status.json only: ?key= (a browser's navigation has no header)
                given = status_api.query_key(scope)
            if not key_matches(self.api_key, given):
                if given is None:
                    # OpenAI's shape when no key was sent at all: code null.
                    err = AuthenticationError(
                        "You didn't provide an API key. Provide it in the Authorization header "
                        "(Authorization: Bearer YOUR_KEY).",
                        code=None,
                    )
                else:
                    err = AuthenticationError("Incorrect API key provided.")
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, engines: Engines | None = None) -> Starlette:
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        owned = engines is None
        with metrics.observing_jobs():  # every engine's finished jobs feed /metrics' histograms
            loaded = (
                engines if engines is not None else await anyio.to_thread.run_sync(load_engines, settings)
            )
            app.state.engines = loaded
            try:
                yield {}
            finally:
                if owned:
                    await anyio.to_thread.run_sync(loaded.close)

    lifecycle = Lifecycle()
    middleware = [
        Middleware(DrainMiddleware, lifecycle=lifecycle),  # outermost: counts everything
        Middleware(HTTPMetricsMiddleware, metrics=metrics),  # before the key check: counts 401s too
    ]
    if settings.cors_allow_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_allow_origins,
                allow_methods=["*"],
                allow_headers=["*"],
            )
        )
    if settings.api_key is not None:
        middleware.append(Middleware(APIKeyMiddleware, api_key=settings.api_key.get_secret_value()))

    app = Starlette(
        routes=[
            *chat_api.routes,
            *audio_api.routes,
            *models_api.routes,
            *status_api.routes,
            *talk_api.routes,
            *realtime_api.routes,
            *timing_routes,
            *metrics_routes,
        ],
        middleware=middleware,
        exception_handlers={
            APIError: _api_error,
            ClientDisconnected: _client_gone,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.started = time.time()  # for /status's uptime
    app.state.timings = TimingLog(observer=metrics.observe_turn)
    app.state.timings.speculation.observer = metrics.observe_speculation
    app.state.metrics = metrics
    metrics.watch(app.state)
    app.state.lifecycle = lifecycle
    app.state.realtime_slots = SessionSlots.from_settings(settings)
    app.state.pipelines = load_pipelines(settings)  # imported and built now: a bad one stops start-up
    if engines is not None:
        app.state.engines = engines
    return app
