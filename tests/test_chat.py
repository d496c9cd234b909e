"""/v1/chat/completions through the real openai client against the real server and SmolLM2."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
QUESTION = {"role": "user", "content": "What is the capital of France?"}


def test_chat_non_streaming(openai_client: openai.OpenAI) -> None:
    resp = openai_client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[SYSTEM, QUESTION], temperature=0, max_tokens=30
    )
    choice = resp.choices[0]
    assert resp.object == "chat.completion"
    assert resp.model == "smollm2-135m-instruct"
    assert choice.message.role == "assistant"
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 10
    assert 0 < resp.usage.completion_tokens <= 30
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_streaming_matches_non_streaming(openai_client: openai.OpenAI) -> None:
    kwargs = dict(model="gpt-4o-mini", messages=[SYSTEM, QUESTION], temperature=0, max_tokens=30)
    full = openai_client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(openai_client.chat.completions.create(stream=True, **kwargs))  # type: ignore[call-overload]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2  # really streamed
    assert text == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_stream_include_usage(openai_client: openai.OpenAI) -> None:
    chunks = list(
        openai_client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Tell me a long story about a dragon."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"


def test_max_tokens_gives_length(openai_client: openai.OpenAI) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        resp = openai_client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Tell me a long story about a dragon."}],
            **{field: 5},  # type: ignore[arg-type]
        )
        assert resp.choices[0].finish_reason == "length", field
        assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_stop_sequence(openai_client: openai.OpenAI) -> None:
    messages = [SYSTEM, {"role": "user", "content": "List the days of the week."}]
    full = (
        openai_client.chat.completions.create(
            model="gpt-4o",
            messages=messages,
            temperature=0,
            max_tokens=60,  # type: ignore[arg-type]
        )
        .choices[0]
        .message.content
    )
    assert full is not None
    words = full.split()
    stop_word = words[len(words) // 2]
    cut = openai_client.chat.completions.create(
        model="gpt-4o",
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=60,
        stop=[stop_word, "@@never@@"],
    )
    text = cut.choices[0].message.content or ""
    assert cut.choices[0].finish_reason == "stop"
    assert stop_word not in text
    assert full.startswith(text)
    assert len(text) < len(full)


def test_seed_temperature_top_p_penalties(openai_client: openai.OpenAI) -> None:
    kwargs = dict(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Say something about cats."}],
        temperature=1.3,
        top_p=0.9,
        seed=1234,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        max_tokens=20,
    )
    a = openai_client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    b = openai_client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    assert a.choices[0].message.content == b.choices[0].message.content
    c = openai_client.chat.completions.create(**{**kwargs, "seed": 99})  # type: ignore[call-overload]
    d = openai_client.chat.completions.create(**{**kwargs, "seed": 7})  # type: ignore[call-overload]
    outputs = {a.choices[0].message.content, c.choices[0].message.content, d.choices[0].message.content}
    assert len(outputs) > 1  # the seed really reaches the sampler


def test_n_must_be_one(openai_client: openai.OpenAI) -> None:
    resp = openai_client.chat.completions.create(model="gpt-4o", messages=[QUESTION], n=1, max_tokens=2)
    assert len(resp.choices) == 1
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model="gpt-4o", messages=[QUESTION], n=2, max_tokens=2)
    assert err.value.body["param"] == "n"  # type: ignore[index]


def test_text_parts_and_roles(openai_client: openai.OpenAI) -> None:
    resp = openai_client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "developer", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is the capital"},
                    {"type": "text", "text": " of France?"},
                ],
            },
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "Repeat the name of that city."},
        ],
        temperature=0,
        max_tokens=20,
    )
    assert resp.choices[0].message.content
    assert resp.usage is not None and resp.usage.prompt_tokens > 30


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}


def _check_weather_args(arguments: str) -> dict[str, str]:
    args = json.loads(arguments)
    assert set(args) == {"city", "unit"}
    assert isinstance(args["city"], str) and args["city"]
    assert args["unit"] in ("celsius", "fahrenheit")
    return args


@pytest.mark.parametrize(
    "tool_choice", [{"type": "function", "function": {"name": "get_weather"}}, "required"]
)
def test_forced_tool_call(openai_client: openai.OpenAI, tool_choice: object) -> None:
    resp = openai_client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "What's the weather like in Paris today?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice=tool_choice,  # type: ignore[arg-type]
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].type == "function" and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather"
    _check_weather_args(calls[0].function.arguments)


def test_forced_tool_call_streaming_and_follow_up(openai_client: openai.OpenAI) -> None:
    messages: list[dict[str, object]] = [
        SYSTEM,
        {"role": "user", "content": "What time is it in Tokyo?"},
    ]
    chunks = list(
        openai_client.chat.completions.create(
            model="gpt-4o",
            messages=messages,  # type: ignore[arg-type]
            tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            stream=True,
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "get_time"
    arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert set(json.loads(arguments)) == {"timezone"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": deltas[0].id,
                    "type": "function",
                    "function": {"name": "get_time", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": deltas[0].id, "content": '{"time": "14:05"}'},
    ]
    follow = openai_client.chat.completions.create(
        model="gpt-4o",
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
        tool_choice="none",
        max_tokens=40,
        temperature=0,
    )
    assert follow.choices[0].message.tool_calls is None
    assert follow.choices[0].message.content


def test_tool_choice_auto_runs(openai_client: openai.OpenAI) -> None:
    resp = openai_client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "What's the weather in Berlin in celsius?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        max_tokens=60,
        temperature=0,
    )
    choice = resp.choices[0]
    if choice.finish_reason == "tool_calls":  # the small model decides; either way it must be valid
        assert choice.message.tool_calls is not None
        _check_weather_args(choice.message.tool_calls[0].function.arguments)
    else:
        assert choice.message.content


def test_response_format_json_schema(openai_client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "hobbies": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "hobbies"],
        "additionalProperties": False,
    }
    resp = openai_client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Invent a person and describe them."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
        max_tokens=200,
    )
    data = json.loads(resp.choices[0].message.content or "")
    assert set(data) == {"name", "age", "hobbies"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int)
    assert all(isinstance(h, str) for h in data["hobbies"])


def test_response_format_json_object(openai_client: openai.OpenAI) -> None:
    resp = openai_client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Describe a cat as a JSON object with a name and a color."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        seed=1,  # the grammar keeps it JSON, but a tiny model may ramble inside a string past max_tokens
    )
    assert resp.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(resp.choices[0].message.content or ""), dict)


def test_client_disconnect_stops_generation(server_url: str, openai_client: openai.OpenAI) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Write a very long essay about the history of Rome."}],
        "max_tokens": 1500,
        "stream": True,
    }
    with httpx.Client(base_url=server_url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            lines = resp.iter_lines()
            got = [line for line, _ in zip(lines, range(6), strict=False) if line]
            assert got and got[0].startswith("data: ")
        # The client is gone: generation must stop (1500 tokens would take many seconds).
        deadline = time.monotonic() + 5
        while client.get("/health").json()["chat"]["busy"]:
            assert time.monotonic() < deadline, "generation kept running after the client left"
            time.sleep(0.05)
    resp2 = openai_client.chat.completions.create(model="gpt-4o", messages=[QUESTION], max_tokens=5)
    assert resp2.choices[0].finish_reason == "length"


def test_non_streaming_client_disconnect_stops_generation(server_url: str) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Write a very long essay about the history of Rome."}],
        "max_tokens": 1500,
    }
    with httpx.Client(base_url=server_url, timeout=60) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
        deadline = time.monotonic() + 5
        while client.get("/health").json()["chat"]["busy"]:
            assert time.monotonic() < deadline, "generation kept running after the client left"
            time.sleep(0.05)
        resp = client.post("/v1/chat/completions", json={**body, "max_tokens": 3})
        assert resp.status_code == 200 and resp.json()["choices"][0]["finish_reason"] == "length"
