"""The SDK's data: what ``RealtimeVoice.run()`` yields and what the callbacks receive, and its errors.

All events are frozen dataclasses; audio is always pcm16, mono, 24 kHz, little-endian (48 bytes a ms).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SAMPLE_RATE = 24000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # 48

Speaker = Literal["user", "assistant"]


class RealtimeError(Exception):
    """An error from the server (an ``error`` event, a failed response) or from the SDK itself.

    ``code`` and ``type`` are the server's (``invalid_value``, ``invalid_request_error``, ...) when it sent
    one; ``event_id`` is the id of the client event that failed, if the server echoed it.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        type: str = "realtime_error",
        param: str | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.type = type
        self.param = param
        self.event_id = event_id

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> RealtimeError:
        err = event.get("error") if isinstance(event.get("error"), dict) else {}
        assert isinstance(err, dict)
        return cls(
            str(err.get("message") or "unknown error"),
            code=_opt_str(err.get("code")),
            type=str(err.get("type") or "realtime_error"),
            param=_opt_str(err.get("param")),
            event_id=_opt_str(err.get("event_id")),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


class RealtimeConnectionError(RealtimeError):
    """Connecting failed (nothing listening, TLS, refused key or model) or the connection was lost."""


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class AudioChunk:
    """A piece of the assistant's reply audio (pcm16, 24 kHz mono)."""

    data: bytes
    duration_ms: float = 0.0
    is_final: bool = False
    item_id: str | None = None
    response_id: str | None = None
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if not self.duration_ms and self.data:
            object.__setattr__(self, "duration_ms", len(self.data) / BYTES_PER_MS)

    @property
    def samples(self) -> int:
        return len(self.data) // 2


@dataclass(frozen=True)
class TranscriptDelta:
    """Text of either side: a piece (``is_final=False``, ``text`` is the new piece only) or the whole
    transcript of an item (``is_final=True``)."""

    text: str
    is_final: bool = False
    speaker: Speaker = "assistant"
    item_id: str | None = None


@dataclass(frozen=True)
class ToolCallRequest:
    """The assistant called a function."""

    call_id: str
    function_name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    item_id: str | None = None


@dataclass(frozen=True)
class ToolCallResult:
    """The output the SDK sent back for a call (``error`` when the function raised or was unknown)."""

    call_id: str
    function_name: str
    output: str
    error: bool = False


@dataclass(frozen=True)
class ToolDefinition:
    """A function tool as the Realtime protocol declares it (``parameters`` is a JSON Schema)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}, "required": []}
    )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


@dataclass(frozen=True)
class Interrupted:
    """The user started speaking over a reply: ``item_id`` was cut at ``played_ms`` (of ``received_ms``)."""

    item_id: str | None
    played_ms: int
    received_ms: int


@dataclass(frozen=True)
class UserSpeech:
    """Server VAD: the user started (``started=True``) or stopped speaking."""

    started: bool
    item_id: str | None = None


@dataclass(frozen=True)
class ResponseDone:
    """A reply ended: ``status`` is ``completed``, ``cancelled``, ``incomplete`` or ``failed``."""

    response_id: str | None
    status: str
    transcript: str = ""


RealtimeEvent = (
    AudioChunk
    | TranscriptDelta
    | ToolCallRequest
    | ToolCallResult
    | Interrupted
    | UserSpeech
    | ResponseDone
    | RealtimeError
)
