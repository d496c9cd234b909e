"""Realtime ``input_image`` content: refused with an ``error`` naming the part (and the item not added)
when the session's model reads no images or cannot read this one, the socket staying open; accepted for
a vision model, whose chat messages then carry the image; and passed unchanged to a remote vision
model (a recording upstream)."""

from __future__ import annotations

from typing import Any

import pytest
from rt_fakes import Client, FakeEngines, connect

from localrt.app import create_app
from localrt.engines import Engines
from localrt.serving import serve_in_thread
from tests.image_helpers import UPSTREAM_MODEL, UPSTREAM_REPLY, data_url, png, recording_upstream
from tests.servers import make_settings

pytestmark = pytest.mark.anyio

PNG_URL = data_url(png())


def image_item(url: str | None, *, item_id: str | None = None, detail: str = "high") -> dict[str, Any]:
    image: dict[str, Any] = {"type": "input_image", "detail": detail}
    if url is not None:
        image["image_url"] = url
    item: dict[str, Any] = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "What is this?"}, image],
    }
    if item_id is not None:
        item["id"] = item_id
    return item


async def text_session(url: str) -> Client:
    client = await connect(url)
    assert (await client.recv())["type"] == "session.created"
    session = {
        "type": "realtime",
        "output_modalities": ["text"],
        "audio": {"input": {"turn_detection": None}},
    }
    await client.send({"type": "session.update", "session": session})
    assert (await client.recv())["type"] == "session.updated"
    return client


async def create(client: Client, item: dict[str, Any], event_id: str) -> dict[str, Any]:
    """Send ``conversation.item.create``; the first event back."""
    await client.send({"type": "conversation.item.create", "event_id": event_id, "item": item})
    return await client.recv()


async def test_an_image_for_a_text_only_model_is_an_error_and_the_item_is_not_added(
    fake_ws_url: str, fake_engines: FakeEngines
) -> None:
    async with await text_session(fake_ws_url) as client:
        err = await create(client, image_item(PNG_URL, item_id="img1"), "evt_img")
        assert err["type"] == "error", err
        assert err["error"]["code"] == "invalid_value"
        assert err["error"]["param"] == "item.content[1]"
        assert err["error"]["event_id"] == "evt_img"
        assert "does not accept images" in err["error"]["message"]
        # not added, and the session goes on
        await client.send({"type": "conversation.item.retrieve", "event_id": "r", "item_id": "img1"})
        assert (await client.recv())["error"]["code"] == "item_not_found"
        text = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
        assert (await create(client, text, "evt_text"))["type"] == "conversation.item.added"
        assert (await client.recv())["type"] == "conversation.item.done"
        # an out-of-band response's input is checked the same way
        response = {"conversation": "none", "output_modalities": ["text"], "input": [image_item(PNG_URL)]}
        await client.send({"type": "response.create", "event_id": "evt_oob", "response": response})
        err = await client.recv()
        assert err["type"] == "error", err
        assert (err["error"]["param"], err["error"]["event_id"]) == (
            "response.input[0].content[1]",
            "evt_oob",
        )
    assert fake_engines.llm.engine.prompts == []


@pytest.mark.parametrize(
    ("url", "code", "param"),
    [
        ("https://example.com/cat.png", "invalid_image_url", "item.content[1]"),
        ("data:image/png;base64,@@@@", "image_parse_error", "item.content[1]"),
        ("data:image/tiff;base64,SUkqAA==", "invalid_image_format", "item.content[1]"),
        (None, "missing_required_parameter", "item.content[1].image_url"),
    ],
)
async def test_bad_images_for_a_local_vision_model(
    fake_ws_url: str, fake_engines: FakeEngines, url: str | None, code: str, param: str
) -> None:
    fake_engines.llm.engine.vision = True  # a local model with its projector: data URLs only
    async with await text_session(fake_ws_url) as client:
        err = await create(client, image_item(url), "evt_bad")
        assert err["type"] == "error", err
        assert (err["error"]["code"], err["error"]["param"]) == (code, param)
        assert (await create(client, image_item(PNG_URL), "evt_ok"))["type"] == "conversation.item.added"


async def test_a_vision_model_gets_the_image_in_its_messages(
    fake_ws_url: str, fake_engines: FakeEngines
) -> None:
    llm = fake_engines.llm.engine
    llm.vision = True
    async with await text_session(fake_ws_url) as client:
        added = await create(client, image_item(PNG_URL, item_id="img1", detail="low"), "evt_img")
        assert added["type"] == "conversation.item.added", added
        assert added["item"]["content"][1] == {"type": "input_image", "image_url": PNG_URL, "detail": "low"}
        await client.send({"type": "response.create"})
        await client.until("response.done")
    user = llm.prompts[-1][-1]
    assert user == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
        ],
    }


async def test_an_image_item_reaches_a_remote_vision_model_unchanged() -> None:
    from localrt.engines.remote_llm import RemoteChatModels

    with recording_upstream() as upstream:
        settings = make_settings(llm_base_url=upstream.url, llm_model=UPSTREAM_MODEL)
        models = RemoteChatModels.from_settings(settings)
        try:
            with serve_in_thread(create_app(settings, Engines(llm=models))) as url:
                ws_url = url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
                async with await text_session(ws_url) as client:
                    added = await create(client, image_item(PNG_URL, detail="high"), "evt_img")
                    assert added["type"] == "conversation.item.added", added
                    await client.send({"type": "response.create"})
                    done = (await client.until("response.done"))[-1]
        finally:
            models.close()
    assert done["response"]["status"] == "completed", done
    assert done["response"]["output"][0]["content"][0]["text"] == "".join(UPSTREAM_REPLY)
    (sent,) = upstream.chats
    assert sent["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "high"}},
        ],
    }
