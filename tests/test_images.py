"""Image input in ``/v1/chat/completions``: the checks and refusals (fast, over the HTTP fakes), the local
model's refusal and prompt path (slow, the real embedded text-only model), the local image path end to
end with a tiny random-weight projector (slow; chat and a realtime turn), and the pass-through to a
remote vision model, checked against a recording upstream (the request body it received)."""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from http_fakes import FakeChatModel, FakeChatModels, FakeEngines

from localrt import images
from localrt.app import create_app
from localrt.engines import Engines
from localrt.engines.chat_format import ToolPlan, normalize_messages
from localrt.errors import InvalidRequest
from localrt.serving import serve_in_thread
from tests.image_helpers import (
    GIF_START,
    JPEG_START,
    UPSTREAM_MODEL,
    UPSTREAM_REPLY,
    WEBP_START,
    data_url,
    image_part,
    png,
    recording_upstream,
)
from tests.servers import error_of, make_settings
from tests.tiny_mmproj import IMAGE_TOKENS, write_tiny_mmproj

PNG_URL = data_url(png())
TEXT_ONLY, LOCAL_VLM, REMOTE_VLM = "fake-llm", "fake-vlm", "fake-remote-vlm"


def ask(model: str, *parts: dict[str, Any], system: bool = True) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}] if system else []
    messages.append({"role": "user", "content": [{"type": "text", "text": "What is this?"}, *parts]})
    return {"model": model, "messages": messages, "max_tokens": 5}


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeEngines]:
    engines = FakeEngines(
        llm=FakeChatModels(
            FakeChatModel(TEXT_ONLY),
            FakeChatModel(LOCAL_VLM, vision=True),
            FakeChatModel(REMOTE_VLM, vision=True, image_urls=True),
        )
    )
    yield engines
    engines.close()


@pytest.fixture(scope="module")
def api(fakes: FakeEngines) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(create_app(make_settings(), fakes.engines())) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


# --- refusals ---------------------------------------------------------------------------------------------
def test_image_to_a_text_only_model_is_refused_naming_the_part(api: httpx.Client) -> None:
    err = error_of(api.post("/v1/chat/completions", json=ask(TEXT_ONLY, image_part(PNG_URL))), 400)
    assert err["code"] == "invalid_value"
    assert err["param"] == "messages[1].content[1]"
    assert "does not accept images" in err["message"] and TEXT_ONLY in err["message"]
    # the default model (an OpenAI alias) too, streamed or not
    body = {**ask("gpt-4o", image_part(PNG_URL), system=False), "stream": True}
    assert error_of(api.post("/v1/chat/completions", json=body), 400)["param"] == "messages[0].content[1]"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("data:image/png;base64,not base64!", "image_parse_error"),
        ("data:image/png;base64," + base64.b64encode(JPEG_START).decode(), "image_parse_error"),
        ("data:image/png," + "A" * 8, "invalid_image_url"),  # not base64-encoded
        ("data:image/bmp;base64,Qk0=", "invalid_image_format"),
        ("data:text/plain;base64,aGk=", "invalid_image_format"),
        ("ftp://example.com/cat.png", "invalid_image_url"),
        ("cat.png", "invalid_image_url"),
        ("", "invalid_image_url"),
        ("https://example.com/cat.png", "invalid_image_url"),  # a local model never fetches a URL
    ],
)
def test_bad_images_are_refused_naming_the_part(api: httpx.Client, url: str, code: str) -> None:
    err = error_of(api.post("/v1/chat/completions", json=ask(LOCAL_VLM, image_part(url))), 400)
    assert (err["code"], err["param"]) == (code, "messages[1].content[1]"), err


def test_an_image_over_the_size_limit_is_refused_before_decoding(api: httpx.Client) -> None:
    over = images.MAX_IMAGE_BYTES + 1024
    url = "data:image/png;base64," + "A" * (over * 4 // 3)  # what it decodes to is never looked at
    err = error_of(api.post("/v1/chat/completions", json=ask(REMOTE_VLM, image_part(url))), 400)
    assert (err["code"], err["param"]) == ("image_too_large", "messages[1].content[1]")
    assert str(images.MAX_IMAGE_BYTES) in err["message"]


def test_images_only_in_user_messages(api: httpx.Client) -> None:
    body = ask(LOCAL_VLM)
    body["messages"].insert(1, {"role": "assistant", "content": [image_part(PNG_URL)]})
    err = error_of(api.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == "messages[1].content[0].type"


def test_a_malformed_image_part_is_a_validation_error(api: httpx.Client) -> None:
    body = ask(LOCAL_VLM, {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "huge"}})
    err = error_of(api.post("/v1/chat/completions", json=body), 400)
    assert err["code"] == "invalid_type" or err["code"] == "invalid_value"
    assert err["param"].startswith("messages[1].content")


# --- accepted ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        PNG_URL,
        data_url(JPEG_START, "image/jpeg"),
        data_url(GIF_START, "image/gif"),
        data_url(WEBP_START, "image/webp"),
        data_url(png(), "IMAGE/PNG"),
    ],
)
def test_valid_images_reach_a_vision_model_unchanged(api: httpx.Client, fakes: FakeEngines, url: str) -> None:
    model = fakes.llm.models[LOCAL_VLM]
    body = ask(LOCAL_VLM, image_part(url, "low"))
    resp = api.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    sent = model.calls[-1].prompt
    assert sent[1]["content"] == body["messages"][1]["content"]  # the parts as the client sent them
    assert sent[0] == {"role": "system", "content": "Be brief."}  # text-only messages as before


def test_http_image_urls_pass_to_a_remote_style_model(api: httpx.Client, fakes: FakeEngines) -> None:
    body = ask(REMOTE_VLM, image_part("https://example.com/cat.png?size=large"))
    assert api.post("/v1/chat/completions", json=body).status_code == 200
    assert fakes.llm.models[REMOTE_VLM].calls[-1].prompt[1]["content"] == body["messages"][1]["content"]


def test_the_check_functions() -> None:
    class Bare:
        id = "bare"

    assert images.support_of(Bare()) == images.ImageSupport("bare", vision=False, image_urls=False)
    local = images.ImageSupport("m", vision=True, image_urls=False)
    assert images.decode_data_url(PNG_URL, "p") == png()
    with pytest.raises(InvalidRequest) as info:
        images.check_url("http://x/y.png", "p", local)
    assert info.value.code == "invalid_image_url"
    with pytest.raises(InvalidRequest) as info:
        images.decode_data_url("data:image/png;base64,iVBORw0K\nGgo=", "p")  # whitespace: strict base64
    assert info.value.code == "image_parse_error"


def test_the_prompt_writes_each_image_as_the_marker_or_refuses_it() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "A"}, image_part(PNG_URL)]}]
    turns = normalize_messages(copy.deepcopy(messages), ToolPlan(), "<__media__>")
    assert turns == [{"role": "user", "content": "A<__media__>"}]
    with pytest.raises(InvalidRequest) as info:
        normalize_messages(messages, ToolPlan())
    assert (info.value.code, info.value.param) == ("invalid_value", "messages[0].content[1]")


# --- the real local engine (text-only: the embedded model) -------------------------------------------------
@pytest.mark.slow
def test_the_embedded_model_refuses_images(http: httpx.Client, engines: Engines) -> None:
    err = error_of(http.post("/v1/chat/completions", json=ask("gpt-4o-mini", image_part(PNG_URL))), 400)
    assert (err["code"], err["param"]) == ("invalid_value", "messages[1].content[1]")


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_local_engine_guards_and_renders_images(engines: Engines) -> None:
    from localrt.engines.llm import LLMEngine
    from localrt.engines.llm_prompt import PromptBuilder

    engine = await engines.llm.get(None)
    assert isinstance(engine, LLMEngine) and engine.vision is False and engine.llama is not None
    messages = ask("x", image_part(PNG_URL))["messages"]
    with pytest.raises(InvalidRequest) as info:  # sent past the route's check: still refused
        async with engine.chat(copy.deepcopy(messages)) as job:
            async for _ in job:
                pass
    assert info.value.param == "messages[1].content[1]"
    # The prompt a model with a projector gets (text with one marker per image, and the decoded images).
    builder = engine._backend.prompts  # type: ignore[attr-defined]
    marked = PromptBuilder(engine.llama, builder.formatter, media_marker="<__media__>")
    prompt = marked.chat(
        messages,
        tools=None,
        plan=ToolPlan(),
        response_format=None,
        max_tokens=5,
        truncate=True,
        stopped=lambda: False,
    )
    assert prompt.images == [png()] and prompt.tokens == []
    assert prompt.text.count("<__media__>") == 1 and "What is this?<__media__>" in prompt.text


# --- the local image path, over a tiny random-weight projector (tests/tiny_mmproj.py) ----------------------
@pytest.fixture(scope="module")
def vision_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose default model is the embedded SmolLM2 loaded with ``llm_mmproj`` (a second copy of
    it: the session's ``engines`` stay text-only)."""
    from localrt import catalog
    from localrt.engines.llm_pool import LLMPool

    mmproj = write_tiny_mmproj(tmp_path_factory.mktemp("mmproj") / "tiny-mmproj.gguf")
    settings = make_settings(llm_mmproj=mmproj)
    pool = LLMPool(settings, catalog.scan(settings.models_dir))
    pool.load_default()
    try:
        with serve_in_thread(create_app(settings, Engines(llm=pool))) as url:
            yield url
    finally:
        pool.close()


@pytest.mark.slow
def test_a_local_model_with_a_projector_reads_images(vision_url: str) -> None:
    def chat(url: str, **extra: Any) -> httpx.Response:
        body = {**ask("gpt-4o", image_part(url), system=False), "temperature": 0, "max_tokens": 12, **extra}
        return httpx.post(vision_url + "/v1/chat/completions", json=body, timeout=60)

    red = chat(data_url(png(40, 30)))
    assert red.status_code == 200, red.text
    with_image = red.json()["usage"]["prompt_tokens"]
    text_only = httpx.post(
        vision_url + "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "What is this?"}], "max_tokens": 1},
        timeout=60,
    ).json()["usage"]["prompt_tokens"]
    assert with_image == text_only + IMAGE_TOKENS  # the image's positions are in the prompt
    blue = chat(data_url(png(3, 50, rgb=b"\x00\x00\xff")))
    assert blue.status_code == 200, blue.text
    assert chat(data_url(png(40, 30))).json()["choices"] == red.json()["choices"]  # same image: same reply
    assert blue.json()["choices"][0]["message"]["content"] != red.json()["choices"][0]["message"]["content"]
    streamed = chat(data_url(png()), stream=True)
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]"), streamed.text
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    called = chat(data_url(png()), tools=[tool], tool_choice="required", max_tokens=40).json()
    assert called["choices"][0]["finish_reason"] == "tool_calls", called
    err = error_of(chat("https://example.com/cat.png"), 400)
    assert (err["code"], err["param"]) == ("invalid_image_url", "messages[0].content[1]")
    marker = ask("gpt-4o", image_part(PNG_URL), system=False)
    marker["messages"][0]["content"][0]["text"] = "Say <__media__>"
    err = error_of(httpx.post(vision_url + "/v1/chat/completions", json=marker, timeout=60), 400)
    assert err["param"] == "messages" and "reserves for images" in err["message"]


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_realtime_image_item_reaches_a_local_vision_model(vision_url: str) -> None:
    import json

    import websockets

    async with websockets.connect(vision_url.replace("http://", "ws://") + "/v1/realtime") as ws:

        async def until(kind: str) -> dict[str, Any]:
            while True:
                event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 60))
                assert event["type"] != "error", event
                if event["type"] == kind:
                    return event

        await until("session.created")
        session = {
            "type": "realtime",
            "output_modalities": ["text"],
            "audio": {"input": {"turn_detection": None}},
        }
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        await until("session.updated")
        item = {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": PNG_URL},
            ],
        }
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await until("conversation.item.done")
        await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 8}}))
        done = await until("response.done")
    assert done["response"]["status"] in ("completed", "incomplete"), done
    assert done["response"]["output"][0]["content"][0]["text"]


# --- a remote vision model: what the upstream receives ----------------------------------------------------
def test_images_pass_unchanged_to_a_remote_engine() -> None:
    from localrt.engines.remote_llm import RemoteChatModels

    with recording_upstream() as upstream:
        settings = make_settings(llm_base_url=upstream.url, llm_model=UPSTREAM_MODEL)
        models = RemoteChatModels.from_settings(settings)
        try:
            with serve_in_thread(create_app(settings, Engines(llm=models))) as url:
                client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
                with client:
                    parts = [
                        {"type": "text", "text": "What is this?"},
                        image_part(PNG_URL, "high"),
                        image_part("https://example.com/cat.png"),
                    ]
                    stream = client.chat.completions.create(
                        model=UPSTREAM_MODEL,
                        messages=[{"role": "user", "content": parts}],  # type: ignore[list-item]
                        stream=True,
                        max_tokens=8,
                    )
                    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        finally:
            models.close()
    assert text == "".join(UPSTREAM_REPLY)
    (sent,) = upstream.chats
    assert sent["model"] == UPSTREAM_MODEL
    assert sent["messages"] == [{"role": "user", "content": parts}]  # byte for byte what the client sent
