"""The ``/v1/realtime`` WebSocket: the handshake, then one :class:`~.session.RealtimeSession`.

Handshake rules (protocol §1), all decided before the first event:

- **Shape**: a client that sends ``OpenAI-Beta: realtime=v1`` or offers the ``openai-beta.realtime-v1``
  subprotocol gets the beta event names and session shape; everyone else gets GA.
- **Subprotocol**: ``realtime`` is selected only when offered (browsers fail the handshake otherwise;
  the Python SDK offers none, and ``websockets`` rejects an unrequested one). The entry carrying a key
  is never echoed.
- **Key** (only when ``settings.api_key`` is set): ``Authorization: Bearer``, the
  ``openai-insecure-api-key.<key>`` subprotocol, or the ``api-key`` query parameter. Like OpenAI, the
  upgrade always succeeds and a bad key gets an ``error`` event and close code 3000.
- **Model**: ``?model=`` (OpenAI's realtime ids alias the default chat model); none means the default;
  an unknown one gets ``invalid_model`` and close 4000. ``?intent=transcription`` opens a
  transcription-only session, which needs no model.
- **Pipeline** (localrt's own, :mod:`localrt.pipeline`): ``?pipeline=<name>`` selects the session's
  custom stages (else the server's ``--pipeline``), with the pipeline's options as further query
  parameters (``&target=German``); an unknown name or a bad option gets ``invalid_request_error`` and
  close 4000. A query parameter, not a ``session.update`` field: OpenAI's session schema refuses
  unknown fields, and OpenAI clients pass extra query parameters through untouched.

- **Guard** (before any of the above, :mod:`.handshake_guard`): a browser ``Origin`` outside
  ``realtime_allowed_origins`` gets HTTP 403, and a client past ``realtime_max_sessions_per_ip`` or
  a server past ``realtime_max_sessions`` gets HTTP 503 with ``Retry-After``, both as OpenAI-shaped
  JSON before the upgrade (close code 1008 after accepting on a server without denial responses).

uvicorn answers pings and enforces the message size limit: run it with ``ws_max_size`` of at least
16 MiB (an append may carry 15 MiB of audio).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from localrt.api.common import error_response
from localrt.errors import APIError, AuthenticationError, InvalidRequest, ModelNotFound, ServerError
from localrt.pipeline.registry import pipelines_of
from localrt.realtime import handshake_guard
from localrt.realtime.events import Dialect
from localrt.realtime.server_events import ServerEvents
from localrt.realtime.session import RealtimeSession

logger = logging.getLogger(__name__)

KEY_SUBPROTOCOL = "openai-insecure-api-key."
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
CLOSE_AUTH = 3000
CLOSE_REQUEST = 4000
CLOSE_POLICY = 1008


def _dialect(ws: WebSocket, offered: list[str]) -> Dialect:
    beta_header = "realtime=v1" in ws.headers.get("openai-beta", "").replace(" ", "")
    return "beta" if beta_header or BETA_SUBPROTOCOL in offered else "ga"


def _client_key(ws: WebSocket, offered: list[str]) -> str | None:
    scheme, _, token = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for entry in offered:
        if entry.startswith(KEY_SUBPROTOCOL) and len(entry) > len(KEY_SUBPROTOCOL):
            return entry[len(KEY_SUBPROTOCOL) :]
    return ws.query_params.get("api-key") or None


async def _refuse(
    ws: WebSocket, events: ServerEvents, err: APIError, close_code: int, code: str | None = None
) -> None:
    """An ``error`` event, then the close OpenAI sends (reason ``<type>.<code>``)."""
    event = events.error(err)
    if event is not None:
        await ws.send_json(event)
    await ws.close(code=close_code, reason=f"{err.type}.{code or err.code}"[:120])


async def _deny(ws: WebSocket, events: ServerEvents, err: APIError) -> None:
    """Refuse before the upgrade: an HTTP error response (403, or 503 with ``Retry-After``) where the
    server supports ASGI's denial-response extension (uvicorn does), else close 1008 after accepting."""
    if "websocket.http.response" in (ws.scope.get("extensions") or {}):
        await ws.send_denial_response(error_response(err))
        return
    await ws.accept()
    await _refuse(ws, events, err, CLOSE_POLICY)


async def realtime_endpoint(ws: WebSocket) -> None:
    state = ws.app.state
    settings: Any = getattr(state, "settings", None)
    offered: list[str] = list(ws.scope.get("subprotocols") or [])
    intent = ws.query_params.get("intent")
    events = ServerEvents(_dialect(ws, offered), transcription=intent == "transcription")
    refusal = handshake_guard.check_origin(ws.headers.get("origin"), ws.headers.get("host"), settings)
    if refusal is not None:
        logger.info("realtime handshake refused: %s", refusal.message)
        await _deny(ws, events, refusal)
        return
    slots = handshake_guard.slots_of(state)
    ip = ws.client.host if ws.client is not None else "unknown"
    full = slots.acquire(ip)
    if full is not None:
        logger.info("realtime handshake from %s refused: %s", ip, full.code)
        await _deny(ws, events, full)
        return
    try:
        await _open_session(ws, events, offered, intent)
    finally:
        slots.release(ip)


async def _open_session(ws: WebSocket, events: ServerEvents, offered: list[str], intent: str | None) -> None:
    state = ws.app.state
    settings: Any = getattr(state, "settings", None)
    engines: Any = getattr(state, "engines", None)
    dialect = events.dialect
    transcription = intent == "transcription"
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)

    expected = settings.api_key.get_secret_value() if settings is not None and settings.api_key else None
    if expected is not None:
        given = _client_key(ws, offered)
        if given is None or not hmac.compare_digest(expected.encode(), given.encode()):
            if given is None:
                err: APIError = AuthenticationError(
                    "You didn't provide an API key. Provide it in the Authorization header "
                    "(Authorization: Bearer YOUR_KEY) or the openai-insecure-api-key subprotocol."
                )
                err.code = None  # OpenAI's shape when no key was sent at all
                await _refuse(ws, events, err, CLOSE_AUTH, "invalid_api_key")
                return
            await _refuse(ws, events, AuthenticationError("Incorrect API key provided."), CLOSE_AUTH)
            return
    if engines is None:
        await _refuse(ws, events, ServerError("The server's engines are not loaded."), 1011)
        return
    if intent not in (None, "", "transcription", "conversation"):
        err = InvalidRequest(
            f"Invalid value: '{intent}'. Supported values are: 'transcription'.",
            param="intent",
            code="invalid_intent",
        )
        await _refuse(ws, events, err, CLOSE_REQUEST)
        return
    requested = ws.query_params.get("model") or ws.query_params.get("deployment") or None
    try:
        llm_model = engines.llm.resolve(None if transcription else requested)
    except ModelNotFound:
        err = InvalidRequest(
            f"Invalid model: '{requested}'. This server serves {', '.join(_known_models(engines))}.",
            param="model",
            code="invalid_model",
        )
        await _refuse(ws, events, err, CLOSE_REQUEST)
        return
    try:
        pipeline = pipelines_of(state).select(ws.query_params.get("pipeline"), ws.query_params)
    except APIError as err:
        await _refuse(ws, events, err, CLOSE_REQUEST)
        return
    session = RealtimeSession(
        ws,
        engines=engines,
        dialect=dialect,
        session_type="transcription" if transcription else "realtime",
        model=requested or llm_model,
        llm_model=llm_model,
        timing_log=getattr(state, "timings", None),
        settings=settings,
        pipeline=pipeline,
    )
    await session.run()


def _known_models(engines: Any) -> list[str]:
    try:
        return [*engines.llm.ids(), "gpt-realtime", "gpt-4o-realtime-preview"]
    except AttributeError:
        return ["gpt-realtime"]


routes: list[BaseRoute] = [
    WebSocketRoute("/v1/realtime", realtime_endpoint),
    WebSocketRoute("/ws/realtime", realtime_endpoint),
]
