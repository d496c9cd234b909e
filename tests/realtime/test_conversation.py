"""Conversation items: ordering, items -> chat messages, truncation by played audio."""

from __future__ import annotations

import numpy as np
import pytest

from localrt.errors import APIError
from localrt.realtime import events as ev
from localrt.realtime import formats
from localrt.realtime.client_items import item_from_param
from localrt.realtime.conversation import AudioClip, Content, Conversation, Item, to_messages


def user(text: str, item_id: str | None = None) -> Item:
    return Item(item_id or text, "message", role="user", content=[Content("input_text", text=text)])


def test_insert_after_previous_and_root() -> None:
    conv = Conversation()
    assert conv.insert(user("a")) is None
    assert conv.insert(user("b")) == "a"
    assert conv.insert(user("c"), "a") == "a"
    assert conv.insert(user("z"), "root") is None
    assert [i.id for i in conv] == ["z", "a", "c", "b"]
    with pytest.raises(APIError) as info:
        conv.insert(user("q"), "missing")
    assert info.value.param == "previous_item_id"
    with pytest.raises(APIError):
        conv.insert(user("a"))  # duplicate id
    conv.delete("c")
    assert [i.id for i in conv] == ["z", "a", "b"]
    with pytest.raises(APIError):
        conv.get("c")


def test_items_become_chat_messages() -> None:
    audio = Content("input_audio", transcript=" what is two plus two ")
    items = [
        Item("s", "message", role="system", content=[Content("input_text", text="Speak French.")]),
        Item("u", "message", role="user", content=[Content("input_text", text="Hi"), audio]),
        Item("a", "message", role="assistant", content=[Content("output_audio", transcript="Bonjour.")]),
        Item("f", "function_call", call_id="c1", name="add", arguments='{"a": 2}'),
        Item("o", "function_call_output", call_id="c1", output="4"),
        Item("silent", "message", role="user", content=[Content("input_audio", transcript="")]),
    ]
    assert to_messages("Be brief.", items) == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Speak French."},
        {"role": "user", "content": "Hi what is two plus two"},
        {
            "role": "assistant",
            "content": "Bonjour.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    ]
    assert to_messages("", [])[:1] == []


def test_item_rendering_per_dialect() -> None:
    item = Item("a", "message", role="assistant", content=[Content("output_text", text="hi")])
    assert item.to_wire("ga")["content"] == [{"type": "output_text", "text": "hi"}]
    assert item.to_wire("beta")["content"] == [{"type": "text", "text": "hi"}]


def test_truncation_keeps_what_was_heard() -> None:
    clip = AudioClip(24000)
    clip.append(np.ones(24000, np.int16), text="The capital is Paris.")  # 1 s
    clip.append(np.ones(24000, np.int16), text=" It is on the river Seine.")  # 1 s, 6 words
    clip.append(np.ones(24000, np.int16))  # the same clause goes on: 2 s in all
    assert clip.duration_ms == 3000
    heard = clip.truncate(2000)  # 1 s into a 2 s clause of 6 words -> 3 words
    assert heard == "The capital is Paris. It is on"
    assert clip.n_samples == 48000
    assert clip.truncate(500) == "The capital"
    assert clip.truncate(0) == ""


def test_items_from_client_params() -> None:
    conv = Conversation()
    param = ev.ITEM.validate_python(
        {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "AAAAAAAA"}]}
    )
    item = item_from_param(param, formats.PCM16, conv)
    assert item.content[0].transcribed is not None  # waits for Whisper
    assert item.content[0].audio is not None and item.content[0].audio.rate == 16000
    bad = ev.ITEM.validate_python(
        {"type": "message", "role": "assistant", "content": [{"type": "output_audio", "audio": "AAAA"}]}
    )
    with pytest.raises(APIError) as info:
        item_from_param(bad, formats.PCM16, conv)
    assert info.value.param == "item.content[0].type"
    orphan = ev.ITEM.validate_python({"type": "function_call_output", "call_id": "nope", "output": "x"})
    with pytest.raises(APIError) as info:
        item_from_param(orphan, formats.PCM16, conv)
    assert info.value.param == "item.call_id"
    badb64 = ev.ITEM.validate_python(
        {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "@@@"}]}
    )
    with pytest.raises(APIError) as info:
        item_from_param(badb64, formats.PCM16, conv)
    assert (info.value.code, info.value.param) == ("invalid_value", "item.content[0].audio")


def test_old_audio_is_forgotten_but_text_stays() -> None:
    from localrt.realtime.conversation import KEEP_AUDIO_ITEMS

    conv = Conversation()
    for n in range(KEEP_AUDIO_ITEMS + 3):
        clip = AudioClip(16000)
        clip.append(np.ones(160, np.int16))
        content = Content("input_audio", transcript=f"turn {n}", audio=clip)
        conv.insert(Item(f"i{n}", "message", role="user", content=[content]))
    items = list(conv)
    assert [i.content[0].audio is None for i in items[:4]] == [True, True, True, False]
    assert items[0].text() == "turn 0"
