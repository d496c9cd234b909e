"""HTTP request metrics: a pure ASGI middleware counting requests by route template, method and status.

The route label is the matched route's template (``/v1/models/{model_id:path}``), never the raw path, so
the number of series stays bounded; a path no route matches is ``other``, as is an unusual method.
WebSocket scopes (realtime sessions) are not counted here. The duration is from the request's arrival to
the end of its response, so a streamed response counts its whole stream.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localrt.metrics import Metrics

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"


def route_template(scope: Scope) -> str:
    """The template of the route that handled (or would handle) ``scope``; ``other`` if none."""
    route: Any = scope.get("route")  # set by Starlette's router when it matched one
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # Answered before routing (401 from the key check, 503 while draining): match it here.
    router = getattr(scope.get("app"), "router", None)
    for candidate in getattr(router, "routes", ()):
        match, _ = candidate.matches(scope)
        if match is not Match.NONE:
            path = getattr(candidate, "path", None)
            return path if isinstance(path, str) else OTHER
    return OTHER


class HTTPMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app fails before starting a response

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = scope.get("method", "")
            self.metrics.observe_request(
                route_template(scope),
                method if method in METHODS else OTHER,
                status,
                time.perf_counter() - start,
            )
