"""Client events: pydantic models in one discriminated union, parsed once by one ``TypeAdapter``.

A frame that fails to parse never closes the socket: :func:`parse_client_event` raises an
:class:`~localrt.errors.APIError` with the code and ``param`` of the protocol's §7, and the session
sends it as an ``error`` event echoing the client's ``event_id``. Pydantic's error locations are turned
into OpenAI's dotted parameter names (``session.bogus_field``, ``item.content[0].text``) by walking the
location alongside the input, which also drops the union tags pydantic inserts into the location.

Nested objects whose shape depends on the GA/beta dialect (``session.update.session``,
``response.create.response``) are kept as plain dicts here and validated by :mod:`.config`, which
knows the dialect; items are dialect-neutral (both ``output_text`` and beta ``text`` are accepted).

Everything a client sends may be echoed back (ids, texts, instructions, metadata), so a frame is refused
whole, as ``invalid_json``, when it could not be echoed safely: a lone UTF-16 surrogate (``"\\ud800"`` is
valid JSON but not encodable text), ``NaN``/``Infinity`` (not JSON for other parsers), or nesting deeper
than :data:`MAX_DEPTH`. Client values quoted in error messages are clipped (:func:`shown`), so an error
event stays small whatever the client sent.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from localrt.errors import APIError, InvalidRequest, MissingParameter

Dialect = Literal["ga", "beta"]

MAX_DEPTH = 128  # nesting of a client frame: far above any real event, far below the recursion limit
MAX_ECHO_CHARS = 512  # of a client's event_id, when it is echoed in an error
MAX_PARAM_CHARS = 256  # of a param path built from the client's keys


def new_id(prefix: str) -> str:
    """A server-chosen id: ``item_…``, ``resp_…``, ``sess_…``, ``call_…``, ``event_…``."""
    return f"{prefix}_{secrets.token_hex(10)}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- items (conversation.item.create, response.create input) ----------------------------------------------
class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class InputAudio(_Strict):
    type: Literal["input_audio"]
    audio: str | None = None
    transcript: str | None = None


class InputImage(_Strict):
    type: Literal["input_image"]
    image_url: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class OutputText(_Strict):
    type: Literal["output_text", "text"]
    text: str


class OutputAudio(_Strict):
    type: Literal["output_audio", "audio"]
    audio: str | None = None
    transcript: str | None = None


class ContentReference(_Strict):
    type: Literal["item_reference"]
    id: str


Content = Annotated[
    InputText | InputAudio | InputImage | OutputText | OutputAudio | ContentReference,
    Field(discriminator="type"),
]


class _ItemBase(_Strict):
    id: str | None = Field(None, max_length=64)
    object: Literal["realtime.item"] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None


class MessageItem(_ItemBase):
    type: Literal["message"]
    role: Literal["user", "assistant", "system"]
    content: list[Content]


class FunctionCallItem(_ItemBase):
    type: Literal["function_call"]
    call_id: str | None = None
    name: str
    arguments: str = ""


class FunctionCallOutputItem(_ItemBase):
    type: Literal["function_call_output"]
    call_id: str
    output: str


class ItemReference(_Strict):
    type: Literal["item_reference"]
    id: str


ItemParam = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem, Field(discriminator="type")]
InputItemParam = Annotated[
    MessageItem | FunctionCallItem | FunctionCallOutputItem | ItemReference, Field(discriminator="type")
]


# --- client events ------------------------------------------------------------------------------------------
class _Event(_Strict):
    event_id: str | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: dict[str, Any]


class TranscriptionSessionUpdate(_Event):
    type: Literal["transcription_session.update"]
    session: dict[str, Any]


class InputAudioBufferAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class InputAudioBufferCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class InputAudioBufferClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class ConversationItemCreate(_Event):
    type: Literal["conversation.item.create"]
    item: ItemParam
    previous_item_id: str | None = None


class ConversationItemRetrieve(_Event):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ConversationItemDelete(_Event):
    type: Literal["conversation.item.delete"]
    item_id: str


class ConversationItemTruncate(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(0, ge=0)
    audio_end_ms: int = Field(ge=0)


class ResponseCreate(_Event):
    type: Literal["response.create"]
    response: dict[str, Any] | None = None


class ResponseCancel(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


ClientEvent = Annotated[
    SessionUpdate
    | TranscriptionSessionUpdate
    | InputAudioBufferAppend
    | InputAudioBufferCommit
    | InputAudioBufferClear
    | ConversationItemCreate
    | ConversationItemRetrieve
    | ConversationItemDelete
    | ConversationItemTruncate
    | ResponseCreate
    | ResponseCancel,
    Field(discriminator="type"),
]

CLIENT_EVENTS: TypeAdapter[Any] = TypeAdapter(ClientEvent)
ITEM: TypeAdapter[Any] = TypeAdapter(ItemParam)
INPUT_ITEMS: TypeAdapter[Any] = TypeAdapter(list[InputItemParam])

# Which client events each dialect accepts (transcription_session.update is beta only).
_ALL_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
)
SUPPORTED_TYPES: dict[Dialect, tuple[str, ...]] = {
    "ga": _ALL_TYPES,
    "beta": (*_ALL_TYPES, "transcription_session.update"),
}


# --- parsing ------------------------------------------------------------------------------------------------
def event_id_of(raw: Any) -> str | None:
    """The client's ``event_id``, if it sent a usable one, made safe to echo in an error."""
    if isinstance(raw, dict) and isinstance(raw.get("event_id"), str):
        return safe_text(raw["event_id"], MAX_ECHO_CHARS)
    return None


def safe_text(text: str, limit: int) -> str:
    """``text`` clipped to ``limit`` characters, any lone surrogate written as its ``\\uXXXX`` escape."""
    text = text[:limit]
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def shown(value: Any, limit: int = 120) -> str:
    """``repr(value)`` for an error message, clipped: client values can be megabytes long."""
    if isinstance(value, str):
        value = value[: limit + 1]  # the repr of the whole would copy megabytes
    text = repr(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return safe_text(text, limit + 1)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_frame(text: str) -> dict[str, Any]:
    """JSON text -> an object with a ``type``; raises ``invalid_json`` / ``invalid_event``."""
    return check_frame(load_json(text), text)


def load_json(text: str) -> Any:
    """JSON text -> a value; ``invalid_json`` for bad syntax, ``NaN``/``Infinity`` or extreme depth."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidRequest(
            f"The server failed to parse the event as JSON: nested more than {MAX_DEPTH} levels deep.",
            code="invalid_json",
        ) from None
    except ValueError as exc:
        raise InvalidRequest(
            f"The server failed to parse the event as JSON: {exc}.", code="invalid_json"
        ) from exc


def check_frame(raw: Any, text: str) -> dict[str, Any]:
    """A decoded frame (``text``: its JSON) that is safe to echo and an object with a ``type``."""
    _check_echoable(raw, surrogates="\\u" in text)
    if not isinstance(raw, dict):
        raise InvalidRequest("The event must be a JSON object.", code="invalid_event")
    if "type" not in raw:
        raise InvalidRequest("The event is missing the 'type' field.", code="invalid_event", param="type")
    return raw


def _check_echoable(raw: Any, *, surrogates: bool) -> None:
    """Refuse nesting past :data:`MAX_DEPTH` and (when the text had ``\\u`` escapes) lone surrogates.

    Iterative, so no depth of client data can exhaust the stack here.
    """
    stack: list[tuple[Any, int]] = [(raw, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                raise InvalidRequest(
                    f"The server failed to parse the event as JSON: nested more than {MAX_DEPTH} levels "
                    "deep.",
                    code="invalid_json",
                )
            values = node.values() if isinstance(node, dict) else node
            stack.extend((v, depth + 1) for v in values)
            if surrogates and isinstance(node, dict):
                stack.extend((k, depth) for k in node)
        elif surrogates and isinstance(node, str) and not node.isascii() and not _encodable(node):
            raise InvalidRequest(
                "The server failed to parse the event as JSON: it contains a lone UTF-16 surrogate "
                "(an unpaired \\ud800-\\udfff escape), which is not valid Unicode text.",
                code="invalid_json",
            )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_client_event(raw: dict[str, Any], dialect: Dialect) -> Any:
    """Validate one decoded client event; raises an APIError naming the offending ``param``."""
    kind = raw.get("type")
    supported = SUPPORTED_TYPES[dialect]
    if not isinstance(kind, str) or kind not in supported:
        listed = ", ".join(f"'{t}'" for t in supported)
        raise InvalidRequest(
            f"Invalid value: {shown(kind)}. Supported values are: {listed}.",
            code="invalid_value",
            param="type",
        )
    try:
        return CLIENT_EVENTS.validate_python(raw)
    except ValidationError as exc:
        raise validation_error(exc, raw) from None


def validation_error(exc: ValidationError, data: Any, prefix: str = "") -> APIError:
    """The first pydantic error as the OpenAI-shaped error a client expects."""
    # Of a union's alternatives, report the one that got furthest into the client's data.
    candidates = [(*_param_path(e["loc"], data, prefix), e) for e in exc.errors(include_url=False)]
    param, _, err = max(candidates, key=lambda c: c[1])
    param = safe_text(param, MAX_PARAM_CHARS)
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param)
    if kind == "missing":
        return MissingParameter(f"Missing required parameter: '{param}'.", param=param)
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = str(ctx.get("discriminator", "'type'")).strip("'")
        param = f"{param}.{tag}" if param else tag
        return InvalidRequest(
            f"Invalid value: {shown(ctx.get('tag'))}. Supported values are: {ctx.get('expected_tags', '')}.",
            code="invalid_value",
            param=param,
        )
    if kind in ("literal_error", "enum"):
        expected = err.get("ctx", {}).get("expected", "")
        return InvalidRequest(
            f"Invalid value: {shown(value)}. Supported values are: {expected}.",
            code="invalid_value",
            param=param,
        )
    if kind == "union_tag_not_found":
        tag = err.get("ctx", {}).get("discriminator", "'type'").strip("'")
        param = f"{param}.{tag}" if param else tag
        return MissingParameter(f"Missing required parameter: '{param}'.", param=param)
    if kind in ("greater_than_equal", "greater_than"):
        limit = err.get("ctx", {}).get("ge", err.get("ctx", {}).get("gt"))
        code = "integer_below_min_value" if isinstance(value, int) else "decimal_below_min_value"
        return InvalidRequest(
            f"Invalid '{param}': {shown(value)} is below the minimum value of {limit}.",
            code=code,
            param=param,
        )
    if kind in ("less_than_equal", "less_than"):
        limit = err.get("ctx", {}).get("le", err.get("ctx", {}).get("lt"))
        code = "integer_above_max_value" if isinstance(value, int) else "decimal_above_max_value"
        return InvalidRequest(
            f"Invalid '{param}': {shown(value)} is above the maximum value of {limit}.",
            code=code,
            param=param,
        )
    if kind in ("string_too_long", "too_long"):
        return InvalidRequest(
            f"Invalid '{param}': {err['msg']}.", code="string_above_max_length", param=param
        )
    if kind.endswith("_type") or kind.endswith("_parsing") or kind in ("model_type", "dict_type"):
        return InvalidRequest(
            f"Invalid type for '{param}': {err['msg'].lower()}, got {type(value).__name__}.",
            code="invalid_type",
            param=param,
        )
    return InvalidRequest(f"Invalid value for '{param}': {err['msg']}.", code="invalid_value", param=param)


_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _param_path(loc: tuple[int | str, ...], data: Any, prefix: str) -> tuple[str, int]:
    """Pydantic's location -> (``a.b[0].c``, how many segments matched the client's data).

    A segment is part of the client's path if it is a key of (or an index into) the input at that depth;
    the last segment may also name a missing or unknown field. Union tags that pydantic inserts (a
    discriminator value, ``int``, ``literal['inf']``, a model class name) are skipped.
    """
    parts: list[str] = [prefix] if prefix else []
    node = data
    depth = 0
    for n, seg in enumerate(loc):
        last = n == len(loc) - 1
        if isinstance(node, list) and isinstance(seg, int):
            if parts:
                parts[-1] += f"[{seg}]"
            else:
                parts.append(f"[{seg}]")
            node = node[seg] if 0 <= seg < len(node) else None
            depth += 1
        elif isinstance(node, dict) and isinstance(seg, str):
            if seg == node.get("type") and not last:
                continue
            if seg in node:
                parts.append(seg)
                node = node[seg]
                depth += 1
            elif last and _FIELD.fullmatch(seg) and seg not in _TYPE_TAGS:
                parts.append(seg)
                depth += 1
    return ".".join(parts), depth
