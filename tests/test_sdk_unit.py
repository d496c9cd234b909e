"""The Python voice SDK (``localrt.sdk``) without a model: tool schemas, settings, providers, playback
tracking, callbacks, and a connection to nothing. ``test_sdk.py`` runs it against the real server."""

from __future__ import annotations

import socket
from enum import Enum
from typing import Any, Literal

import pytest

from localrt.sdk import (
    Interrupted,
    RealtimeConfig,
    RealtimeConnectionError,
    RealtimeVoice,
    ToolDefinition,
    TranscriptDelta,
    VADMode,
    available_providers,
    configured_providers,
    endpoint,
    tool_definition,
)
from localrt.sdk.playback import PlaybackTracker


# --- tools: schema from the signature and docstring ------------------------------------------------------------
class Unit(Enum):
    C = "celsius"
    F = "fahrenheit"


def forecast(
    city: str, days: int = 1, unit: Unit = Unit.C, hourly: bool | None = None, tags: tuple[str, ...] = ()
) -> str:
    """Get the weather forecast for a city.

    Longer explanation that is not part of the description.

    Args:
        city: The city name,
            for example Oslo.
        days (int): How many days ahead.
        unit: Temperature unit.

    Returns:
        The forecast.
    """
    return city


def test_tool_schema_from_signature_and_docstring() -> None:
    tool = tool_definition(forecast)
    assert tool.name == "forecast"
    assert tool.description == "Get the weather forecast for a city."
    props = tool.parameters["properties"]
    assert props["city"] == {"type": "string", "description": "The city name, for example Oslo."}
    assert props["days"] == {"type": "integer", "description": "How many days ahead."}
    assert props["unit"] == {"enum": ["celsius", "fahrenheit"], "description": "Temperature unit."}
    assert props["hourly"] == {"type": "boolean"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert tool.parameters["required"] == ["city"]

    def pick(mode: Literal["a", "b"], *, note: str | None, **extra: Any) -> None:
        """:param mode: Which one."""

    picked = tool_definition(pick)
    assert picked.parameters["properties"] == {
        "mode": {"enum": ["a", "b"], "description": "Which one."},
        "note": {"type": "string"},
    }
    assert picked.parameters["required"] == ["mode"]
    with pytest.raises(ValueError):
        tool_definition(lambda x: x)


def test_config_session_update() -> None:
    config = RealtimeConfig(
        instructions="Hi.",
        voice="alloy",
        vad_silence_duration_ms=600,
        max_tokens=50,
        tools=[forecast, ToolDefinition("lookup", "Look up.")],
    )
    session = config.session_update()
    assert session["type"] == "realtime" and session["instructions"] == "Hi."
    turn = session["audio"]["input"]["turn_detection"]
    assert turn["type"] == "server_vad" and turn["silence_duration_ms"] == 600
    assert session["audio"]["output"]["voice"] == "alloy" and session["max_output_tokens"] == 50
    assert [t["name"] for t in session["tools"]] == ["forecast", "lookup"]
    assert list(config.tool_functions()) == ["forecast"]
    manual = RealtimeConfig(vad_mode=VADMode.MANUAL, input_transcription=None).session_update()
    assert manual["audio"]["input"]["turn_detection"] is None
    assert manual["audio"]["input"]["transcription"] is None and manual["max_output_tokens"] == "inf"
    for bad in ({"vad_threshold": 2.0}, {"max_tokens": 0}, {"output_modality": "video"}):
        with pytest.raises(ValueError):
            RealtimeConfig(**bad)


def test_providers_and_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    assert available_providers() == RealtimeVoice.available_providers() == ["localrt", "openai"]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("LOCALRT_API_KEY", raising=False)
    monkeypatch.delenv("LOCALRT_URL", raising=False)
    assert configured_providers() == RealtimeVoice.configured_providers() == ["localrt"]
    with pytest.raises(RealtimeConnectionError, match="OPENAI_API_KEY"):
        RealtimeVoice(provider="openai").endpoint()
    local = RealtimeVoice().endpoint()
    assert local.url == "ws://127.0.0.1:8000/v1/realtime" and local.headers == {}

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    assert configured_providers() == ["localrt", "openai"]
    remote = RealtimeVoice(provider="openai").endpoint()
    assert remote.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert remote.headers == {"Authorization": "Bearer sk-test-123"}
    assert "sk-test-123" not in repr(remote)
    custom = RealtimeVoice(RealtimeConfig(model="gpt-4o-realtime-preview"), provider="openai").endpoint()
    assert custom.url.endswith("?model=gpt-4o-realtime-preview")

    monkeypatch.setenv("LOCALRT_URL", "https://box.lan:8443")
    monkeypatch.setenv("LOCALRT_API_KEY", "sk-local")
    local = RealtimeVoice().endpoint()
    assert local.url == "wss://box.lan:8443/v1/realtime"
    assert local.headers == {"Authorization": "Bearer sk-local"}
    assert endpoint(url="http://h:1/v1").url == "ws://h:1/v1/realtime"
    with pytest.raises(ValueError):
        RealtimeVoice(provider="gemini")


def test_playback_tracker_cuts_at_what_was_played() -> None:
    tracker = PlaybackTracker()
    assert tracker.received("a", "r1", 24000) and tracker.received("a", "r1", 24000)
    tracker.played(12000)  # FIFO: half a second of item a
    assert tracker.playing() and tracker.unheard_ms() == 1500
    [cut] = tracker.cut()
    assert (cut.item_id, cut.played_ms, cut.received_ms) == ("a", 500, 2000)
    assert not tracker.received("a", "r1", 100)  # audio still arriving for a cut item is dropped
    assert not tracker.playing() and tracker.cut() == []

    tracker.received("b", "r2", 4800)
    tracker.played(4800, item_id="b")
    tracker.response_done("r2")
    assert not tracker.playing() and tracker.cut() == []  # fully heard: no interruption


@pytest.mark.anyio
async def test_callbacks_dispatch() -> None:
    voice = RealtimeVoice()
    got: list[Any] = []

    @voice.on_interrupted
    def stop() -> None:
        got.append("stop")

    @voice.on_interrupted
    async def stop_with(event: Interrupted) -> None:
        got.append(event.played_ms)

    @voice.on_transcript
    def broken(text: str, is_final: bool) -> None:
        raise RuntimeError("boom")

    @voice.on_error
    async def errors(error: Exception) -> None:
        got.append(str(error))

    await voice.handlers.dispatch(Interrupted("item_1", 120, 900))
    await voice.handlers.dispatch(TranscriptDelta("hi", True, "user"))  # not for 2-parameter callbacks
    await voice.handlers.dispatch(TranscriptDelta("hi", True))
    assert got[:2] == ["stop", 120] and len(got) == 3 and "boom" in got[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.anyio
async def test_nothing_listening_raises_connection_error() -> None:
    voice = RealtimeVoice(url=f"ws://127.0.0.1:{free_port()}", connect_timeout=5)
    with pytest.raises(RealtimeConnectionError, match="cannot connect"):
        async with voice.connect():
            pass
    with pytest.raises(RealtimeConnectionError):
        async for _ in voice.run(text="hi"):
            pass
