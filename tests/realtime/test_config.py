"""The session configuration: GA/beta rendering, partial updates, per-response overrides."""

from __future__ import annotations

from typing import Any

import pytest

from localrt.errors import APIError
from localrt.realtime import config, formats, response_options


def test_ga_session_has_the_documented_shape() -> None:
    session = config.render(config.initial("realtime", "gpt-realtime"), "ga", session_id="sess_1")
    assert session["type"] == "realtime" and session["object"] == "realtime.session"
    assert session["id"] == "sess_1" and session["model"] == "gpt-realtime"
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    td = session["audio"]["input"]["turn_detection"]
    assert td["type"] == "server_vad" and td["threshold"] == 0.5 and td["prefix_padding_ms"] == 300
    assert td["create_response"] is True and td["interrupt_response"] is True
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "alloy",
        "speed": 1.0,
    }
    assert "temperature" not in session


def test_beta_session_is_flat() -> None:
    session = config.render(config.initial("realtime", "gpt-4o-realtime-preview"), "beta", session_id="s")
    assert "type" not in session and session["object"] == "realtime.session"
    assert session["modalities"] == ["text", "audio"]
    assert session["input_audio_format"] == session["output_audio_format"] == "pcm16"
    assert session["temperature"] == 0.8 and session["max_response_output_tokens"] == "inf"
    assert session["turn_detection"]["type"] == "server_vad"


def test_transcription_session_shapes() -> None:
    cfg = config.initial("transcription", "whisper")
    ga = config.render(cfg, "ga", session_id="s")
    assert ga["type"] == "transcription" and ga["object"] == "realtime.transcription_session"
    assert set(ga) == {"type", "object", "id", "expires_at", "audio", "include"}
    beta = config.render(cfg, "beta", session_id="s")
    assert "modalities" not in beta and beta["input_audio_format"] == "pcm16"


def test_partial_updates_merge_into_nested_objects() -> None:
    cfg = config.initial("realtime", "m")
    cfg = config.apply_update(
        cfg, {"type": "realtime", "audio": {"input": {"turn_detection": {"threshold": 0.7}}}}, "ga"
    )
    assert cfg.turn_detection is not None and cfg.turn_detection.threshold == 0.7
    assert cfg.turn_detection.prefix_padding_ms == 300  # untouched
    cfg = config.apply_update(
        cfg, {"type": "realtime", "output_modalities": ["text"], "instructions": ""}, "ga"
    )
    assert not cfg.audio_output and cfg.instructions == ""
    assert cfg.turn_detection is not None and cfg.turn_detection.threshold == 0.7


def test_null_clears_and_a_new_type_replaces() -> None:
    cfg = config.initial("realtime", "m")
    cfg = config.apply_update(cfg, {"type": "realtime", "audio": {"input": {"turn_detection": None}}}, "ga")
    assert cfg.turn_detection is None
    cfg = config.apply_update(
        cfg,
        {
            "type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}},
        },
        "ga",
    )
    assert cfg.turn_detection is not None and cfg.turn_detection.type == "semantic_vad"
    assert cfg.turn_detection.silence_ms == config.SEMANTIC_SILENCE_MS["high"]
    cfg = config.apply_update(
        cfg, {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}, "ga"
    )
    assert cfg.input_format is formats.G711_ULAW


def test_beta_update_names() -> None:
    cfg = config.apply_update(
        config.initial("realtime", "m"),
        {
            "modalities": ["text"],
            "voice": "ash",
            "input_audio_format": "g711_alaw",
            "output_audio_format": "g711_ulaw",
            "input_audio_transcription": {"model": "whisper-1"},
            "temperature": 0.7,
            "max_response_output_tokens": 50,
        },
        "beta",
    )
    assert not cfg.audio_output and cfg.voice == "ash" and cfg.temperature == 0.7
    assert cfg.input_format is formats.G711_ALAW and cfg.output_format is formats.G711_ULAW
    assert cfg.transcription is not None and cfg.max_output_tokens == 50
    rendered = config.render(cfg, "beta")
    assert rendered["input_audio_transcription"]["model"] == "whisper-1"


@pytest.mark.parametrize(
    ("update", "dialect", "code", "param"),
    [
        ({"output_modalities": ["text"]}, "ga", "missing_required_parameter", "session.type"),
        ({"type": "transcription"}, "ga", "invalid_value", "session.type"),
        ({"type": "realtime", "bogus_field": 1}, "ga", "unknown_parameter", "session.bogus_field"),
        ({"type": "realtime", "temperature": 0.7}, "ga", "unknown_parameter", "session.temperature"),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            "ga",
            "integer_below_min_value",
            "session.audio.input.format.rate",
        ),
        (
            {"type": "realtime", "max_output_tokens": 0},
            "ga",
            "integer_below_min_value",
            "session.max_output_tokens",
        ),
        (
            {"type": "realtime", "output_modalities": ["video"]},
            "ga",
            "invalid_value",
            "session.output_modalities[0]",
        ),
        (
            {"type": "realtime", "tool_choice": {"type": "function"}},
            "ga",
            "missing_required_parameter",
            "session.tool_choice.name",
        ),
        ({"type": "realtime", "tools": [{"type": "mcp"}]}, "ga", "invalid_value", "session.tools[0].type"),
        ({"type": "realtime", "instructions": 5}, "ga", "invalid_type", "session.instructions"),
        ({"temperature": 2.0}, "beta", "decimal_above_max_value", "session.temperature"),
        ({"input_audio_format": "mp3"}, "beta", "invalid_value", "session.input_audio_format"),
        (
            {"turn_detection": {"type": "server_vad", "threshold": 2}},
            "beta",
            "integer_above_max_value",
            "session.turn_detection.threshold",
        ),
        (  # semantic_vad's caps and settle times are looked up by eagerness: nothing else gets that far
            {"turn_detection": {"type": "semantic_vad", "eagerness": "__class__"}},
            "beta",
            "invalid_value",
            "session.turn_detection.eagerness",
        ),
    ],
)
def test_invalid_updates_are_rejected_whole(
    update: dict[str, Any], dialect: Any, code: str, param: str
) -> None:
    cfg = config.initial("realtime", "m")
    with pytest.raises(APIError) as info:
        config.apply_update(cfg, update, dialect)
    assert (info.value.code, info.value.param) == (code, param)


def test_an_invalid_update_changes_nothing() -> None:
    cfg = config.initial("realtime", "m")
    with pytest.raises(APIError):
        config.apply_update(cfg, {"type": "realtime", "instructions": "new", "bogus": 1}, "ga")
    assert cfg.instructions == config.initial("realtime", "m").instructions


def test_response_overrides() -> None:
    cfg = config.initial("realtime", "m")
    opts = response_options.response_options(
        cfg,
        {
            "output_modalities": ["text"],
            "instructions": "Be terse.",
            "max_output_tokens": 7,
            "metadata": {"topic": "x"},
            "conversation": "none",
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
        },
        "ga",
    )
    assert not opts.audio_output and opts.instructions == "Be terse." and opts.max_tokens == 7
    assert opts.metadata == {"topic": "x"} and opts.conversation == "none"
    assert opts.chat_tools() == [
        {"type": "function", "function": {"name": "f", "description": "", "parameters": {"type": "object"}}}
    ]
    assert opts.chat_tool_choice() == {"type": "function", "function": {"name": "f"}}
    assert response_options.response_options(cfg, None, "ga").max_tokens is None


def test_response_override_errors() -> None:
    cfg = config.initial("realtime", "m")
    with pytest.raises(APIError) as info:
        response_options.response_options(cfg, {"modalities": ["text"]}, "ga")  # the beta name on GA
    assert (info.value.code, info.value.param) == ("unknown_parameter", "response.modalities")
    beta = response_options.response_options(cfg, {"modalities": ["text"], "temperature": 1.0}, "beta")
    assert not beta.audio_output and beta.temperature == 1.0
