"""Client events: one TypeAdapter, and pydantic errors mapped to the protocol's codes and params."""

from __future__ import annotations

from typing import Any

import pytest

from localrt.errors import APIError
from localrt.realtime import events as ev


def error_of(raw: dict[str, Any], dialect: ev.Dialect = "ga") -> APIError:
    with pytest.raises(APIError) as info:
        ev.parse_client_event(raw, dialect)
    return info.value


def test_valid_events_parse_to_their_models() -> None:
    event = ev.parse_client_event(
        {
            "type": "conversation.item.create",
            "event_id": "e1",
            "previous_item_id": "root",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        },
        "ga",
    )
    assert isinstance(event, ev.ConversationItemCreate)
    assert isinstance(event.item, ev.MessageItem)
    part = event.item.content[0]
    assert isinstance(part, ev.InputText) and part.text == "hi"
    assert isinstance(ev.parse_client_event({"type": "response.cancel"}, "ga"), ev.ResponseCancel)


@pytest.mark.parametrize(
    ("text", "code"),
    [("not json", "invalid_json"), ("[1, 2]", "invalid_event"), ('{"event_id": "x"}', "invalid_event")],
)
def test_undecodable_frames(text: str, code: str) -> None:
    with pytest.raises(APIError) as info:
        ev.decode_frame(text)
    assert info.value.code == code


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        ({"type": "nope"}, "invalid_value", "type"),
        ({"type": "transcription_session.update", "session": {}}, "invalid_value", "type"),
        ({"type": "session.update"}, "missing_required_parameter", "session"),
        ({"type": "session.update", "session": "x"}, "invalid_type", "session"),
        ({"type": "input_audio_buffer.commit", "bogus": 1}, "unknown_parameter", "bogus"),
        ({"type": "input_audio_buffer.append", "audio": 5}, "invalid_type", "audio"),
        (
            {"type": "conversation.item.create", "item": {"role": "user"}},
            "missing_required_parameter",
            "item.type",
        ),
        ({"type": "conversation.item.create", "item": {"type": "bogus"}}, "invalid_value", "item.type"),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": "hi"},
            },
            "invalid_type",
            "item.content",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text"}]},
            },
            "missing_required_parameter",
            "item.content[0].text",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "text", "text": "a", "x": 1}],
                },
            },
            "unknown_parameter",
            "item.content[0].x",
        ),
        (
            {"type": "conversation.item.truncate", "item_id": "i", "audio_end_ms": -5},
            "integer_below_min_value",
            "audio_end_ms",
        ),
    ],
)
def test_errors_name_the_param(raw: dict[str, Any], code: str, param: str) -> None:
    err = error_of(raw)
    assert (err.code, err.param) == (code, param)
    assert err.type == "invalid_request_error"


def test_unknown_type_lists_the_supported_ones() -> None:
    err = error_of({"type": "nope"})
    assert "'session.update'" in err.message and "'response.cancel'" in err.message


def test_beta_accepts_transcription_session_update() -> None:
    event = ev.parse_client_event({"type": "transcription_session.update", "session": {}}, "beta")
    assert isinstance(event, ev.TranscriptionSessionUpdate)


def test_event_id_of() -> None:
    assert ev.event_id_of({"event_id": "abc"}) == "abc"
    assert ev.event_id_of({"event_id": 3}) is None
    assert ev.event_id_of(None) is None


def test_lone_surrogates_are_found_and_base64_is_not_scanned_for_them() -> None:
    text = '{"type": "session.update", "event_id": "\\ud800", "session": {}}'
    with pytest.raises(APIError) as info:
        ev.check_frame(ev.load_json(text), text)
    assert info.value.code == "invalid_json"
    pair = '{"type": "session.update", "event_id": "\\ud83d\\ude00", "session": {}}'
    assert ev.check_frame(ev.load_json(pair), pair)["event_id"] == "\U0001f600"
    audio = '{"type": "input_audio_buffer.append", "audio": "' + "uAAA" * 1000 + '"}'
    assert ev.check_frame(ev.load_json(audio), audio)["type"] == "input_audio_buffer.append"
