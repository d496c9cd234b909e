"""Client events: pydantic models in one discriminated union, parsed once by one ``TypeAdapter``.

A frame that fails to parse never closes the socket: :func:`parse_client_event` raises an
:class:`~localrt.errors.APIError` with the code and ``param`` of the protocol's §7 (mapped by
:mod:`.validation`), and the session sends it as an ``error`` event echoing the client's ``event_id``.
What a frame must be before it is an event (JSON, echoable, an object with a ``type``) is checked by
:mod:`.frames`; its functions (and :func:`~.validation.validation_error`) are re-exported here, so
callers read one module.

Nested objects whose shape depends on the GA/beta dialect (``session.update.session``,
``response.create.response``) are kept as plain dicts here and validated by :mod:`.config`, which
knows the dialect; items are dialect-neutral (both ``output_text`` and beta ``text`` are accepted).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from localrt.errors import InvalidRequest
from localrt.realtime.frames import MAX_DEPTH as MAX_DEPTH
from localrt.realtime.frames import MAX_ECHO_CHARS as MAX_ECHO_CHARS
from localrt.realtime.frames import check_frame as check_frame
from localrt.realtime.frames import decode_frame as decode_frame
from localrt.realtime.frames import event_id_of as event_id_of
from localrt.realtime.frames import load_json as load_json
from localrt.realtime.frames import safe_text as safe_text
from localrt.realtime.frames import shown as shown
from localrt.realtime.validation import MAX_PARAM_CHARS as MAX_PARAM_CHARS
from localrt.realtime.validation import validation_error as validation_error

Dialect = Literal["ga", "beta"]


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
