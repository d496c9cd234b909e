"""The HTTP API over fake engines (no models; :mod:`tests.http_fakes`): validation and OpenAI's error
shape on every route, the happy paths through the real ``openai`` client, and a full chat queue
refused with 429 + ``Retry-After`` while the jobs before it really run and wait in the real scheduler.

Served by uvicorn in a thread (``serve_in_thread``), as users run it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from http_fakes import FakeChatModel, FakeChatModels, FakeEngines, wav_bytes
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from localrt.app import create_app
from localrt.engines.scheduler import Priority
from localrt.serving import serve_in_thread
from tests.servers import error_of, make_settings

HI = [{"role": "user", "content": "Hi"}]
REPLY = "Hello from the fake model."
TOOL: Any = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeEngines]:
    engines = FakeEngines()
    yield engines
    engines.close()


@pytest.fixture(scope="module")
def url(fakes: FakeEngines) -> Iterator[str]:
    with serve_in_thread(create_app(make_settings(), fakes.engines())) as base:
        yield base


@pytest.fixture(scope="module")
def api(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as oai:
        yield oai


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        time.sleep(0.01)


def invalid(resp: httpx.Response, code: str, param: str | None, status: int = 400) -> dict[str, Any]:
    err = error_of(resp, status)
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param), err
    return err


def sse_events(body: str) -> list[Any]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]


# --- chat completions ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"messages": HI}, "missing_required_parameter", "model"),
        ({"model": "", "messages": HI}, "invalid_value", "model"),
        ({"model": 4, "messages": HI}, "invalid_type", "model"),
        ({"model": "gpt-4o"}, "missing_required_parameter", "messages"),
        ({"model": "gpt-4o", "messages": []}, "invalid_value", "messages"),
        ({"model": "gpt-4o", "messages": "hello"}, "invalid_type", "messages"),
        ({"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]}, "invalid_value", "messages[0].role"),
        ({"model": "gpt-4o", "messages": [{"content": "x"}]}, "missing_required_parameter", "messages[0].role"),
        ({"model": "gpt-4o", "messages": HI, "temperature": 3}, "invalid_value", "temperature"),
        ({"model": "gpt-4o", "messages": HI, "temperature": "hot"}, "invalid_type", "temperature"),
        ({"model": "gpt-4o", "messages": HI, "top_p": 0}, "invalid_value", "top_p"),
        ({"model": "gpt-4o", "messages": HI, "max_tokens": 0}, "invalid_value", "max_tokens"),
        ({"model": "gpt-4o", "messages": HI, "max_completion_tokens": -1}, "invalid_value", "max_completion_tokens"),
        ({"model": "gpt-4o", "messages": HI, "presence_penalty": 5}, "invalid_value", "presence_penalty"),
        ({"model": "gpt-4o", "messages": HI, "n": 3}, "invalid_value", "n"),
        ({"model": "gpt-4o", "messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "invalid_value", "stop"),
        ({"model": "gpt-4o", "messages": HI, "stream": "maybe"}, "invalid_type", "stream"),
        ({"model": "gpt-4o", "messages": HI, "response_format": {"type": "xml"}}, "invalid_value", "response_format.type"),
        ({"model": "gpt-4o", "messages": HI, "tool_choice": "required"}, "invalid_value", "tool_choice"),
        (
            {"model": "gpt-4o", "messages": HI, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "b"}}},
            "invalid_value",
            "tool_choice",
        ),
        (
            {"model": "gpt-4o", "messages": HI, "tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "invalid_value",
            "tools[0].function.name",
        ),
        ({"model": "gpt-4o", "messages": [{"role": "tool", "content": "x"}]}, "missing_required_parameter", "messages[0].tool_call_id"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("stream", [False, True])
def test_chat_rejects_bad_requests(
    api: httpx.Client, body: dict[str, Any], code: str, param: str, stream: bool
) -> None:
    if stream and "stream" not in body:
        body = {**body, "stream": True}
    invalid(api.post("/v1/chat/completions", json=body), code, param)


def test_unknown_chat_model_is_a_404(api: httpx.Client, client: openai.OpenAI) -> None:
    body = {"model": "no-such-model", "messages": HI}
    err = error_of(api.post("/v1/chat/completions", json=body), 404)
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "model_not_found", "model")
    assert "no-such-model" in err["message"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.code == "model_not_found"


def test_bodies_that_are_not_json_objects(api: httpx.Client) -> None:
    for raw in (b'{"model": "gpt-4o", "messages": [', b"[1, 2]", b'"text"', b'{"model": NaN}'):
        resp = api.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        invalid(resp, "invalid_json", None)
    resp = api.post("/v1/chat/completions", content=b"model=gpt-4o", headers={"content-type": "text/plain"})
    assert error_of(resp, 415)["code"] == "unsupported_content_type"
    assert error_of(api.get("/v1/nothing-here"), 404)["code"] == "unknown_url"
    assert error_of(api.get("/v1/chat/completions"), 405)["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_the_context_is_a_plain_400(api: httpx.Client, stream: bool) -> None:
    # The fake checks the prompt in its worker, as the real engine does: entered before the response.
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "word " * 100}], "stream": stream}
    invalid(api.post("/v1/chat/completions", json=body), "context_length_exceeded", "messages")


def test_chat_through_the_openai_client(client: openai.OpenAI, fakes: FakeEngines) -> None:
    messages: Any = [{"role": "user", "content": "Hi"}]
    done = client.chat.completions.create(model="gpt-4o", messages=messages)
    assert done.choices[0].message.content == REPLY and done.choices[0].finish_reason == "stop"
    assert done.model == "gpt-4o" and done.usage is not None and done.usage.completion_tokens == 5
    call = fakes.llm.default.calls[-1]
    assert (call.kind, call.priority, call.prompt) == ("chat", Priority.HTTP, messages)
    deltas = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="fake-llm", messages=messages, stream=True)
        if c.choices
    ]
    assert "".join(deltas) == REPLY
    short = client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=2)
    assert (short.choices[0].message.content, short.choices[0].finish_reason) == ("Hello from", "length")
    tool = client.chat.completions.create(
        model="gpt-4o",
        messages=messages,
        tools=[TOOL],
        tool_choice="required",
    )
    calls = tool.choices[0].message.tool_calls
    assert tool.choices[0].finish_reason == "tool_calls" and calls is not None
    tool_call = calls[0]
    assert isinstance(tool_call, ChatCompletionMessageFunctionToolCall)
    assert (tool_call.function.name, json.loads(tool_call.function.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )


# --- completions ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model": "gpt-4o"}, "missing_required_parameter", "prompt"),
        ({"model": "gpt-4o", "prompt": ""}, "invalid_value", "prompt"),
        ({"model": "gpt-4o", "prompt": []}, "invalid_value", "prompt"),
        ({"model": "gpt-4o", "prompt": ["one", "two"]}, "invalid_value", "prompt"),
        ({"model": "gpt-4o", "prompt": {"text": "x"}}, "invalid_type", "prompt"),
        ({"model": "gpt-4o", "prompt": "x", "max_tokens": 0}, "invalid_value", "max_tokens"),
        ({"model": "gpt-4o", "prompt": "x", "best_of": 2}, "invalid_value", "best_of"),
        ({"model": "gpt-4o", "prompt": [5000]}, "invalid_value", "prompt"),  # out of the vocabulary
        ({"model": "gpt-4o", "prompt": "word " * 100}, "context_length_exceeded", "prompt"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_completions_reject_bad_requests(
    api: httpx.Client, body: dict[str, Any], code: str, param: str, stream: bool
) -> None:
    invalid(api.post("/v1/completions", json={**body, "stream": stream}), code, param)


def test_completions_through_the_openai_client(client: openai.OpenAI, api: httpx.Client) -> None:
    done = client.completions.create(model="gpt-4o", prompt="Say hi")
    assert done.choices[0].text == REPLY and done.object == "text_completion"
    echoed = client.completions.create(model="gpt-4o", prompt=[1, 2, 3], echo=True, max_tokens=1)
    assert (echoed.choices[0].text, echoed.choices[0].finish_reason) == ("t1 t2 t3Hello", "length")
    text = "".join(
        c.choices[0].text for c in client.completions.create(model="gpt-4o", prompt="x", stream=True)
    )
    assert text == REPLY
    err = error_of(api.post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404)
    assert (err["code"], err["param"]) == ("model_not_found", "model")


# --- a full queue ---------------------------------------------------------------------------------------
def test_a_full_chat_queue_is_a_429_with_retry_after() -> None:
    model = FakeChatModel(max_queue=1)
    fakes = FakeEngines(llm=FakeChatModels(model))
    model.gate.clear()  # every job holds the one slot at its first token until the gate opens
    body: dict[str, Any] = {"model": "gpt-4o", "messages": HI}
    try:
        with (
            serve_in_thread(create_app(make_settings(), fakes.engines())) as url,
            ThreadPoolExecutor(2) as pool,
        ):
            running = pool.submit(httpx.post, url + "/v1/chat/completions", json=body, timeout=30)
            wait_for(lambda: model.scheduler.stats().running == 1)
            queued = pool.submit(
                httpx.post, url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30
            )
            wait_for(lambda: model.scheduler.stats().queued == 1)
            with httpx.Client(base_url=url, timeout=30) as api:
                refused: list[tuple[str, dict[str, Any]]] = [
                    ("/v1/chat/completions", {}),
                    ("/v1/chat/completions", {"stream": True}),  # refused before the stream starts
                    ("/v1/completions", {"prompt": "x"}),
                ]
                for path, extra in refused:
                    resp = api.post(path, json={**body, **extra})
                    err = error_of(resp, 429)
                    assert (err["type"], err["code"], err["param"]) == (
                        "rate_limit_error",
                        "rate_limit_exceeded",
                        None,
                    )
                    assert int(resp.headers["retry-after"]) >= 1
            with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as oai:
                with pytest.raises(openai.RateLimitError) as limited:
                    oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
                assert limited.value.code == "rate_limit_exceeded"
                assert limited.value.response.headers["retry-after"]
            assert model.scheduler.stats().rejected == 4
            assert not running.done() and not queued.done()  # the refusals did not disturb them
            model.gate.set()
            first, second = running.result(10), queued.result(10)
        assert first.status_code == 200 and first.json()["choices"][0]["message"]["content"] == REPLY
        chunks = sse_events(second.text)
        assert second.status_code == 200 and second.text.endswith("data: [DONE]\n\n")
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == REPLY
    finally:
        fakes.close()


def test_a_queued_request_whose_client_leaves_leaves_the_queue() -> None:
    model = FakeChatModel(max_queue=4)
    fakes = FakeEngines(llm=FakeChatModels(model))
    model.gate.clear()
    body: dict[str, Any] = {"model": "gpt-4o", "messages": HI}
    try:
        with (
            serve_in_thread(create_app(make_settings(), fakes.engines())) as url,
            ThreadPoolExecutor(1) as pool,
        ):
            running = pool.submit(httpx.post, url + "/v1/chat/completions", json=body, timeout=30)
            wait_for(lambda: model.scheduler.stats().running == 1)
            for extra in ({}, {"stream": True}):
                with pytest.raises(httpx.ReadTimeout):  # the client gives up while its job is queued
                    httpx.post(url + "/v1/chat/completions", json={**body, **extra}, timeout=0.5)
                wait_for(lambda: model.scheduler.stats().queued == 0)  # not held until the slot frees
                assert model.scheduler.stats().running == 1
            model.gate.set()
            assert running.result(10).status_code == 200
    finally:
        fakes.close()


# --- models and health ---------------------------------------------------------------------------------
def test_models_and_health(client: openai.OpenAI, api: httpx.Client) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"fake-llm", "gpt-4o", "whisper-fake", "whisper-1", "piper", "tts-1", "en_US-fake-medium"} <= ids
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    assert api.get("/v1/models/gpt-4o").json()["alias_of"] == "fake-llm"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found"
    invalid(api.get("/v1/models/no-such-model"), "model_not_found", "model", status=404)
    health = api.get("/health").json()
    assert (health["status"], health["chat"]["default"], health["stt"]) == ("ok", "fake-llm", "whisper-fake")
    assert {"llm:fake-llm", "stt", "tts"} <= set(health.get("engines", {}))


# --- speech ----------------------------------------------------------------------------------------------
SAY = {"model": "tts-1", "input": "Hello there."}


@pytest.mark.parametrize(
    ("body", "code", "param", "status"),
    [
        ({"input": "Hi"}, "missing_required_parameter", "model", 400),
        ({"model": "tts-1"}, "missing_required_parameter", "input", 400),
        ({"model": "no-such-voice-model", "input": "Hi"}, "model_not_found", "model", 404),
        ({**SAY, "input": "   "}, "invalid_value", "input", 400),
        ({**SAY, "input": 42}, "invalid_type", "input", 400),
        ({**SAY, "input": "x" * 4097}, "invalid_value", "input", 400),
        ({**SAY, "speed": 10}, "invalid_value", "speed", 400),
        ({**SAY, "speed": 0.1}, "invalid_value", "speed", 400),
        ({**SAY, "speed": "fast"}, "invalid_type", "speed", 400),
        ({**SAY, "voice": "nobody"}, "invalid_value", "voice", 400),
        ({**SAY, "response_format": "xyz"}, "invalid_value", "response_format", 400),
        ({**SAY, "stream_format": "bogus"}, "invalid_value", "stream_format", 400),
    ],
)
def test_speech_rejects_bad_requests(
    api: httpx.Client, body: dict[str, Any], code: str, param: str, status: int
) -> None:
    invalid(api.post("/v1/audio/speech", json=body), code, param, status)


def test_speech_through_the_openai_client(
    client: openai.OpenAI, api: httpx.Client, fakes: FakeEngines
) -> None:
    wav = client.audio.speech.create(
        model="tts-1", voice="alloy", input="Hello there. How are you?", response_format="wav"
    )
    assert wav.content[:4] == b"RIFF" and len(wav.content) > 1000
    assert fakes.voice.texts[-2:] == ["Hello there.", "How are you?"]  # sentence by sentence
    resp = api.post(
        "/v1/audio/speech", json={**SAY, "voice": {"id": "en_US-fake-medium"}, "stream_format": "sse"}
    )
    events = sse_events(resp.text)
    assert [e["type"] for e in events][-1] == "speech.audio.done" and events[0][
        "type"
    ] == "speech.audio.delta"
    voices = api.get("/v1/audio/voices").json()
    assert [v["id"] for v in voices["data"]] == ["en_US-fake-medium"] and voices["data"][0]["default"]


# --- transcriptions --------------------------------------------------------------------------------------
WAV = wav_bytes(1.0)


@pytest.mark.parametrize(
    ("data", "file", "code", "param", "status"),
    [
        ({"model": "whisper-1"}, None, "missing_required_parameter", "file", 400),
        ({}, WAV, "missing_required_parameter", "model", 400),
        ({"model": "no-such-model"}, WAV, "model_not_found", "model", 404),
        ({"model": "whisper-1"}, b"", "invalid_value", "file", 400),
        ({"model": "whisper-1"}, b"not audio at all" * 20, "invalid_value", "file", 400),
        ({"model": "whisper-1", "response_format": "xml"}, WAV, "invalid_value", "response_format", 400),
        ({"model": "whisper-1", "temperature": "hot"}, WAV, "invalid_value", "temperature", 400),
        ({"model": "whisper-1", "temperature": "2"}, WAV, "invalid_value", "temperature", 400),
        ({"model": "whisper-1", "language": "xx"}, WAV, "invalid_value", "language", 400),
        (
            {
                "model": "whisper-1",
                "response_format": "verbose_json",
                "timestamp_granularities[]": "sentence",
            },
            WAV,
            "invalid_value",
            "timestamp_granularities",
            400,
        ),
    ],
)
def test_transcriptions_reject_bad_requests(
    api: httpx.Client, data: dict[str, str], file: bytes | None, code: str, param: str, status: int
) -> None:
    files = {"file": ("speech.wav", file, "audio/wav")} if file is not None else None
    invalid(api.post("/v1/audio/transcriptions", data=data, files=files), code, param, status)


def test_a_text_field_is_not_a_file(api: httpx.Client) -> None:
    resp = api.post("/v1/audio/transcriptions", data={"model": "whisper-1", "file": "hello"})
    invalid(resp, "invalid_value", "file")


def test_transcriptions_through_the_openai_client(client: openai.OpenAI, api: httpx.Client) -> None:
    text = "Hello from the fake whisper."
    assert client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV)).text == text
    verbose = client.audio.transcriptions.create(
        model="gpt-4o-transcribe",
        file=("a.wav", WAV),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert (verbose.language, verbose.duration, verbose.text) == ("english", 1.0, text)
    assert verbose.words is not None and verbose.words[0].word == "Hello"
    assert verbose.segments is not None and len(verbose.segments) == 1
    srt = api.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1", "response_format": "srt"},
        files={"file": ("a.wav", WAV)},
    )
    assert srt.text.startswith("1\n00:00:00,000 --> 00:00:01,000\nHello")
    translated = api.post(
        "/v1/audio/translations", data={"model": "whisper-1"}, files={"file": ("a.wav", WAV)}
    )
    assert translated.json() == {"text": text}  # (the openai client's translations are deprecated)
    streamed = api.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1", "stream": "true"},
        files={"file": ("a.wav", WAV)},
    )
    events = sse_events(streamed.text)
    assert [e["type"] for e in events] == ["transcript.text.delta", "transcript.text.done"]
    assert events[-1]["text"] == text
