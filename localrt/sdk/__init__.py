"""A Python voice SDK for the OpenAI Realtime protocol: localrt (default) or OpenAI, same code.

    from localrt.sdk import RealtimeVoice, RealtimeConfig

    voice = RealtimeVoice(RealtimeConfig(instructions="Be brief."))

    @voice.on_transcript
    async def show(text: str, is_final: bool) -> None:
        if is_final:
            print("Assistant:", text)

    async with voice.connect() as session:
        await session.send_text("Hello!")
        await session.wait_idle()

Public API (stable):

- ``RealtimeVoice(config=None, *, provider=None, url=None, api_key=None, connect_timeout=10.0)``: the
  facade. Decorators ``on_audio(bytes)``, ``on_transcript(text, is_final[, speaker])``,
  ``on_tool_call(ToolCallRequest) -> result | None``, ``on_error(RealtimeError)``, ``on_interrupted()``;
  ``connect()`` (async context manager giving a ``RealtimeSession``); ``run(audio, *, text=None)`` (async
  iterator of ``RealtimeEvent``); ``available_providers()`` / ``configured_providers()``.
- ``RealtimeSession``: ``send_audio(pcm16_24k)``, ``send_text(text, respond=True)``, ``commit()``,
  ``create_response(**overrides)``, ``cancel_response()``, ``interrupt()``, ``played(samples=|ms=)``,
  ``retrieve_item(item_id)``, ``wait_idle(timeout=None)``, ``send(event_dict)``, ``events()``,
  ``close()``; attributes ``session`` (the server's session object), ``session_id``.
- Events: ``AudioChunk``, ``TranscriptDelta``, ``ToolCallRequest``, ``ToolCallResult``, ``Interrupted``,
  ``UserSpeech``, ``ResponseDone``, ``RealtimeError``.
"""

from localrt.sdk.config import (
    PlaybackMode,
    RealtimeConfig,
    VADMode,
    available_providers,
    configured_providers,
    endpoint,
)
from localrt.sdk.models import (
    AudioChunk,
    Interrupted,
    RealtimeConnectionError,
    RealtimeError,
    RealtimeEvent,
    ResponseDone,
    ToolCallRequest,
    ToolCallResult,
    ToolDefinition,
    TranscriptDelta,
    UserSpeech,
)
from localrt.sdk.session import RealtimeSession
from localrt.sdk.tools import tool_definition
from localrt.sdk.voice import RealtimeVoice

__all__ = [
    "AudioChunk",
    "Interrupted",
    "PlaybackMode",
    "RealtimeConfig",
    "RealtimeConnectionError",
    "RealtimeError",
    "RealtimeEvent",
    "RealtimeSession",
    "RealtimeVoice",
    "ResponseDone",
    "ToolCallRequest",
    "ToolCallResult",
    "ToolDefinition",
    "TranscriptDelta",
    "UserSpeech",
    "VADMode",
    "available_providers",
    "configured_providers",
    "endpoint",
    "tool_definition",
]
