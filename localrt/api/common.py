"""Helpers shared by the HTTP routes: body parsing into wire models, ids, SSE framing."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import StreamingResponse

from localrt.engines import Engines
from localrt.errors import APIError, InvalidRequest, MissingParameter, ServerError

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before the answer was ready; there is nobody to answer."""


async def unless_disconnected(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``, cancelling it if the client disconnects first (non-streaming responses get no
    disconnect detection from Starlette, so a vanished client would otherwise keep a model busy)."""
    outcome: list[T] = []

    async def watch(scope: anyio.CancelScope) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    failure: list[Exception] = []
    async with anyio.create_task_group() as group:
        group.start_soon(watch, group.cancel_scope)
        try:
            outcome.append(await work())
        except Exception as exc:  # re-raised below as itself, not wrapped in an ExceptionGroup
            failure.append(exc)
        group.cancel_scope.cancel()
    if failure:
        raise failure[0]
    if not outcome:
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


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            code="invalid_json",
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


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

    return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)


def _frame(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
