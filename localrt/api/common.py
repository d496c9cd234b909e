"""Helpers shared by the HTTP routes: body parsing into wire models, ids, SSE framing."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import Request

from localrt.engines import Engines
from localrt.errors import APIError, InvalidRequest, MissingParameter, ServerError

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


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


def sse(events: AsyncIterator[dict[str, Any]]) -> EventSourceResponse:
    """An SSE response of JSON chunks followed by OpenAI's ``data: [DONE]``.

    sse-starlette watches for the client going away and cancels the iterator, which stops generation.
    """

    async def frames() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        except APIError as exc:
            # Headers are already sent: report it the way OpenAI does mid-stream, as an error frame.
            yield json.dumps({"error": exc.to_dict()})
            return
        except Exception:
            logger.exception("error while streaming")
            yield json.dumps({"error": ServerError("The server had an error while streaming.").to_dict()})
            return
        yield "[DONE]"

    return EventSourceResponse(frames(), ping=15, sep="\n")
