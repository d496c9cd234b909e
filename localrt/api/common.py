"""Helpers shared by the HTTP routes: error rendering, bounded JSON body parsing into wire models,
ids, SSE framing."""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from localrt.engines import Engines
from localrt.errors import (
    APIError,
    InvalidRequest,
    MissingParameter,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
)
from localrt.lifecycle import SHUTTING_DOWN, Lifecycle
from localrt.settings import Settings

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before the answer was ready; there is nobody to answer."""


def lifecycle_of(app: Any) -> Lifecycle | None:
    lifecycle: Lifecycle | None = getattr(getattr(app, "state", None), "lifecycle", None)
    return lifecycle


async def unless_disconnected(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``, cancelling it if the client disconnects first (non-streaming responses get no
    disconnect detection from Starlette, so a vanished client would otherwise keep a model busy), or
    if the server starts draining for shutdown (then the answer is 503)."""
    outcome: list[T] = []
    drained = False

    async def watch(scope: anyio.CancelScope) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    def on_drain(scope: anyio.CancelScope) -> None:
        nonlocal drained
        drained = True
        scope.cancel()

    failure: list[Exception] = []
    lifecycle = lifecycle_of(request.app)
    async with anyio.create_task_group() as group:
        unregister = lifecycle.on_drain(lambda: on_drain(group.cancel_scope)) if lifecycle else None
        group.start_soon(watch, group.cancel_scope)
        try:
            outcome.append(await work())
        except Exception as exc:  # re-raised below as itself, not wrapped in an ExceptionGroup
            failure.append(exc)
        finally:
            if unregister is not None:
                unregister()
        group.cancel_scope.cancel()
    if failure:
        raise failure[0]
    if not outcome:
        if drained:
            raise ServiceUnavailable(SHUTTING_DOWN, code="server_shutting_down", retry_after=5)
        raise ClientDisconnected
    return outcome[0]


def engines_of(request: Request) -> Engines:
    engines: Engines = request.app.state.engines
    return engines


_UNION_LABELS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "literal"})


def param_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location -> OpenAI's param notation: ``messages[0].role``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or "(" in part or part in _UNION_LABELS:
            continue  # labels pydantic adds to locations inside unions, not field names
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_error(exc: ValidationError) -> InvalidRequest | MissingParameter:
    err = exc.errors(include_url=False)[0]
    param = param_path(tuple(err["loc"]))
    if err["type"] == "missing":
        return MissingParameter(f"Missing required parameter: '{param}'.", param=param)
    message = err["msg"]
    # "float_parsing", "list_type", "model_attributes_type"...: the value has the wrong JSON type.
    code = "invalid_type" if err["type"].endswith(("_type", "_parsing")) else "invalid_value"
    return InvalidRequest(f"Invalid value for '{param}': {message}.", param=param, code=code)


def error_response(exc: APIError) -> JSONResponse:
    """``{"error": {...}}`` with the error's status (and ``Retry-After`` when it carries one)."""
    headers = None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)


# --- JSON bodies: every byte is the client's, so type, size, encoding and shape are checked first ----

# Deeper than any real request (a JSON schema nested 30 levels is about 70 here), far below Python's
# recursion limit: whatever walks the body later (pydantic, grammar building, templates) stays bounded.
MAX_JSON_DEPTH = 100
# Bodies above this are decoded and validated in a worker thread (json.loads runs at a few hundred
# MB/s, so a 16 MB body would hold the event loop, and every realtime session, for tens of ms).
_THREAD_PARSE_BYTES = 256 * 1024
# A lone surrogate can only come from a \uD800-\uDFFF escape once the bytes decoded as strict UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _invalid_json(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_json")


async def read_json_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes: at once from
    ``Content-Length``, else while counting the chunks of a chunked body (nothing over is held)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _body_too_large(limit, int(declared))
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _body_too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnected from None
    return b"".join(chunks)


def _body_too_large(limit: int, size: int | None = None) -> PayloadTooLarge:
    got = f" (got {size} bytes)" if size is not None else ""
    return PayloadTooLarge(
        f"The request body is larger than the maximum of {limit} bytes{got} (max_body_bytes).",
        code="request_too_large",
    )


def decode_json(raw: bytes) -> Any:
    """Bytes -> JSON value, or ``invalid_json``: strict Unicode (no lone surrogates, escaped or raw,
    so everything we echo back can be encoded), no NaN / Infinity, and nesting bounded by
    :data:`MAX_JSON_DEPTH`."""
    try:
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError:
        raise _invalid_json("The request body is not valid UTF-8.") from None
    try:
        data = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise _invalid_json(f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.") from None
    except ValueError:
        raise _invalid_json(
            "We could not parse the JSON body of your request. The body must be a JSON object."
        ) from None
    # Both checks below walk the value; the cheap scans over the text skip the walk for most bodies.
    deep = text.count("[") + text.count("{") > MAX_JSON_DEPTH
    surrogates = _SURROGATE_ESCAPE.search(text) is not None
    if deep or surrogates:
        _check_value(data, surrogates)
    return data


def _not_json(constant: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and neither can be sent back.
    raise _invalid_json(f"'{constant}' is not a valid JSON value.")


def _check_value(data: Any, surrogates: bool) -> None:
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.items()
        elif isinstance(value, list):
            children = ((None, v) for v in value)
        else:
            if surrogates and isinstance(value, str):
                _check_text(value)
            continue
        if depth > MAX_JSON_DEPTH:
            raise _invalid_json(f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.")
        for key, child in children:
            if surrogates and key is not None:
                _check_text(key)
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif surrogates and isinstance(child, str):
                _check_text(child)


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid_json(
                "The JSON body contains a lone surrogate escape (\\ud800-\\udfff not part of a pair), "
                "which is not valid Unicode."
            ) from None


def _validate(raw: bytes, model: type[M]) -> M:
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise _invalid_json("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


async def parse_body(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``: a JSON content type (415), at most ``max_body_bytes`` (413), valid
    UTF-8 JSON without lone surrogates or absurd nesting (400 ``invalid_json``), then the model's
    validation (400 naming the param). Large bodies are decoded and validated in a worker thread."""
    content_type = request.headers.get("content-type", "")
    if not _is_json_type(content_type):
        shown = f"'{content_type[:100]}'" if content_type else "none"
        raise APIError(
            f"Unsupported content type: {shown}. This endpoint accepts 'application/json' "
            "request bodies; send the header 'Content-Type: application/json'.",
            status=415,
            code="unsupported_content_type",
        )
    settings = getattr(request.app.state, "settings", None)
    limit: int = (
        settings.max_body_bytes if settings is not None else Settings.model_fields["max_body_bytes"].default
    )
    raw = await read_json_body(request, limit)
    if len(raw) > _THREAD_PARSE_BYTES:
        return await anyio.to_thread.run_sync(_validate, raw, model)
    return _validate(raw, model)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(events: AsyncIterator[dict[str, Any]], *, done: bool = True) -> StreamingResponse:
    """An SSE response of ``data: {json}`` events; with ``done``, OpenAI's ``data: [DONE]`` closes it.

    A chat stream sends one event per token, so this path is kept lean: each frame is encoded here,
    once, as bytes, and sent by Starlette's ``StreamingResponse``. (sse-starlette, used before, wraps
    every send in a cancel scope and runs a ping task: about 50 µs of event-loop CPU per event, a quarter
    of the server's cost per token, which on a machine whose cores all run llama.cpp comes straight out
    of generation. OpenAI's streams carry no pings, comments or retry fields, so nothing else is needed.)
    Starlette watches for the client going away and cancels the iterator, which stops generation.
    """

    async def frames() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield _frame(event)
        except APIError as exc:
            # Headers are already sent: report it the way OpenAI does mid-stream, as an error frame.
            yield _frame({"error": exc.to_dict()})
            return
        except Exception:
            logger.exception("error while streaming")
            yield _frame({"error": ServerError("The server had an error while streaming.").to_dict()})
            return
        if done:
            yield b"data: [DONE]\n\n"

    final = _frame({"error": ServiceUnavailable(SHUTTING_DOWN, code="server_shutting_down").to_dict()})
    return DrainingStream(frames(), final=final, media_type="text/event-stream", headers=SSE_HEADERS)


class DrainingStream(StreamingResponse):
    """A streamed body that, when the server drains for shutdown, stops its producer (the engine stops
    within a token or an audio chunk, as for a vanished client) and ends with ``final`` (an SSE error
    frame for event streams; nothing for raw audio) instead of being cut off."""

    def __init__(self, content: AsyncIterator[bytes], *, final: bytes = b"", **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._final = final
        self._lifecycle: Lifecycle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._lifecycle = lifecycle_of(scope.get("app"))
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        if self._lifecycle is None:
            await super().stream_response(send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        with anyio.CancelScope() as scope, self._lifecycle.draining_calls(scope.cancel):
            await super().stream_response(tracked)
        if scope.cancelled_caught:
            if not started:
                await send({"type": "http.response.start", "status": 503, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self._final, "more_body": False})


def _frame(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
