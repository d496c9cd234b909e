"""Issue 11, items 1, 2 and 4 (the LLM path): schemas that crashed llama.cpp, token ids outside the
vocabulary, prompts prepared on the event loop.

The crash tests send exactly the issue's inputs to a real ``localrt serve`` in a child process
(:mod:`tests.proc_server`) and assert the documented 400 and that the process is still alive and
serving afterwards. The schema bounds themselves (:mod:`localrt.engines.grammar`) and the streaming
error path are fast unit tests.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from localrt.app import create_app
from localrt.engines import Engines
from localrt.engines.grammar import (
    MAX_REPEAT,
    UnsafeSchema,
    check_schema,
    grammar_nesting,
    load_grammar,
    schema_grammar,
)
from localrt.engines.llm import ChatResult, TextDelta
from localrt.errors import ContextLengthExceeded, InvalidRequest
from tests.proc_server import ServerProcess, proc_server
from tests.servers import error_of, make_settings

__all__ = ["proc_server"]  # the fixture, imported for the tests below

MSG = [{"role": "user", "content": "x"}]
# Item 1's body, verbatim.
ISSUE_1_BODY = (
    '{"model":"gpt-4o","max_tokens":8,"messages":[{"role":"user","content":"x"}],"response_format":'
    '{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":'
    '{"a":{"type":"string","maxLength":2000}}}}}}'
)
# Item 2's body, verbatim.
ISSUE_2_BODY = '{"model":"gpt-4o","prompt":[999999999]}'
LONG_STRING = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 2000}}}
MANY_ITEMS = {"type": "array", "items": {"type": "integer"}, "maxItems": 50000}
JSON_HEADERS = {"Content-Type": "application/json"}


def _tool(parameters: dict[str, Any], name: str = "f") -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


# --- the bounds (fast) ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schema", "says"),
    [
        (LONG_STRING, "'maxLength' at 'properties.a' is 2000"),
        (MANY_ITEMS, "'maxItems' at the top level is 50000"),
        ({"type": "string", "minLength": 10**9}, "'minLength' at the top level"),
        ({"type": "array", "minItems": 1001}, "'minItems'"),
        ({"type": "string", "maxLength": 1.5}, "must be a non-negative integer"),
        ({"type": "string", "maxLength": True}, "must be a non-negative integer"),
        ({"type": "string", "maxLength": -1}, "must be a non-negative integer"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "greater than"),
        ({"type": "string", "pattern": "^a{0,50000}$"}, "A repetition in 'pattern'"),
        ({"type": "string", "pattern": "^a{" + "9" * 500 + "}$"}, "A repetition in 'pattern'"),
        ({"type": "string", "pattern": "a" * 1001}, "longer than"),
        ({"$ref": "https://example.com/schema.json"}, "only local references"),
        ({"type": "object", "properties": {f"p{i}": {} for i in range(129)}}, "optional properties"),
        (
            {"anyOf": [{"type": "object", "properties": {f"p{i}": {} for i in range(100)}}] * 7},
            "too many optional properties in total",
        ),
        ({"enum": list(range(1001))}, "enum values"),
        ({"enum": ["x" * 70_000]}, "too long"),
        ({"anyOf": [{"type": "string"}] * 50_001}, "too large"),
    ],
)
def test_unsafe_schemas_are_refused(schema: dict[str, Any], says: str) -> None:
    with pytest.raises(UnsafeSchema) as err:
        check_schema(schema)
    assert says in str(err.value)


def test_deep_schema_is_refused_without_recursion() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(100_000):  # far past Python's recursion limit: the walk is iterative
        deep = {"type": "array", "items": deep}
    with pytest.raises(UnsafeSchema, match="nested too deeply"):
        check_schema(deep)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "string", "maxLength": MAX_REPEAT}}},
        {"type": "array", "items": {"type": "integer"}, "maxItems": MAX_REPEAT, "minItems": 1},
        # Keyword names as property names, enum values and data are not keywords.
        {"type": "object", "properties": {"maxLength": {"type": "string"}, "pattern": {"enum": ["$ref"]}}},
        {"enum": [{"maxItems": 10**6}], "default": {"$ref": "https://x"}},
        {
            "type": "object",
            "properties": {f"p{i}": {} for i in range(500)},
            "required": [f"p{i}" for i in range(500)],
        },
    ],
)
def test_safe_schemas_pass(schema: dict[str, Any]) -> None:
    check_schema(schema)


def test_unconvertible_schemas_are_400s() -> None:
    for schema in ({"type": "string", "pattern": "a{x}"}, {"properties": {"a": True}}, {"$ref": "#/nope"}):
        with pytest.raises(InvalidRequest) as err:
            schema_grammar(schema, "response_format.json_schema.schema")
        assert err.value.param == "response_format.json_schema.schema"


def test_a_grammar_nested_too_deeply_for_the_parser_is_a_400() -> None:
    deep = {"type": "string", "pattern": "^" + "(" * 300 + "a{0,1000}" + ")" * 300 + "$"}
    check_schema(deep)  # each bound holds, but together they nest 1300 groups
    with pytest.raises(InvalidRequest, match="too large"):
        schema_grammar(deep, "p")


def test_a_grammar_llama_cpp_refuses_is_a_400_not_a_null_sampler() -> None:
    """The last line of defence: llama.cpp's own parser is asked first (no model needed for that)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    refused = json_schema_to_gbnf(json.dumps(LONG_STRING))  # what once reached the sampler
    for text in (refused, "root ::= ( [a-z"):
        with pytest.raises(InvalidRequest) as err:
            load_grammar(None, text, "tools[0].function.parameters")
        assert (err.value.code, err.value.param) == ("invalid_value", "tools[0].function.parameters")
    assert load_grammar(None, schema_grammar({"type": "object"}, "p"), "p") is not None


def test_grammar_nesting_skips_literals_and_classes() -> None:
    assert grammar_nesting('root ::= ("(" [()] (a (b)?)?)?\n# ((((( comment\n') == 3


# --- prompt errors before the first chunk are plain 400s, also when streaming (fast) ----------------------
class _RefusingStream:
    """A chat stream whose prompt fails while it is being prepared (as the engine's does)."""

    def __init__(self) -> None:
        self.result = ChatResult()

    async def __aenter__(self) -> _RefusingStream:
        raise ContextLengthExceeded("too long", param="messages")

    async def __aexit__(self, *exc: object) -> None:
        raise AssertionError("never entered")

    def __aiter__(self) -> AsyncIterator[TextDelta]:
        raise AssertionError("never iterated")


class _RefusingLLM:
    id = "fake"

    def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> _RefusingStream:
        return _RefusingStream()

    def complete(self, prompt: Any, params: Any, **kwargs: Any) -> _RefusingStream:
        return _RefusingStream()


class _Pool:
    default_id = "fake"

    async def get(self, model: str | None) -> _RefusingLLM:
        return _RefusingLLM()


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", {"messages": MSG}), ("/v1/completions", {"prompt": "x"})],
)
async def test_prompt_error_is_a_plain_400_even_streaming(
    path: str, body: dict[str, Any], stream: bool
) -> None:
    app = create_app(make_settings(), Engines(llm=_Pool()))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        resp = await client.post(path, json={"model": "gpt-4o", "stream": stream, **body})
    assert resp.headers["content-type"].startswith("application/json")
    err = error_of(resp, 400)
    assert (err["code"], err["param"]) == ("context_length_exceeded", "messages")


# --- the crash inputs, against a real server process (slow) -----------------------------------------------
def _post(server: ServerProcess, path: str, body: dict[str, Any] | str) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers=JSON_HEADERS, timeout=120)


def _assert_alive(server: ServerProcess) -> None:
    assert server.alive(), f"the server died:\n{server.log_tail()}"
    resp = _post(server, "/v1/chat/completions", {"model": "gpt-4o", "max_tokens": 2, "messages": MSG})
    assert resp.status_code == 200, resp.text


@pytest.mark.slow
def test_issue_1_curl_is_a_400_and_the_server_lives(proc_server: ServerProcess) -> None:
    err = error_of(_post(proc_server, "/v1/chat/completions", ISSUE_1_BODY), 400)
    assert (err["type"], err["code"]) == ("invalid_request_error", "invalid_value")
    assert err["param"] == "response_format.json_schema.schema"
    assert "maxLength" in err["message"]
    _assert_alive(proc_server)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": _schema_format(MANY_ITEMS)}, "response_format.json_schema.schema"),
        ({"tools": [_tool(LONG_STRING)], "tool_choice": "required"}, "tools[0].function.parameters"),
        ({"tools": [_tool(MANY_ITEMS)], "tool_choice": "required"}, "tools[0].function.parameters"),
        (
            {
                "tools": [_tool({"type": "object"}, "ok"), _tool(MANY_ITEMS, "bad")],
                "tool_choice": {"type": "function", "function": {"name": "bad"}},
            },
            "tools[1].function.parameters",
        ),
        ({"tools": [_tool(LONG_STRING)], "tool_choice": "auto"}, "tools[0].function.parameters"),
    ],
    ids=["response_format-maxItems", "required-maxLength", "required-maxItems", "named-maxItems", "auto"],
)
def test_crashing_schemas_are_400s(
    proc_server: ServerProcess, extra: dict[str, Any], param: str, stream: bool
) -> None:
    body = {"model": "gpt-4o", "max_tokens": 8, "messages": MSG, "stream": stream, **extra}
    resp = _post(proc_server, "/v1/chat/completions", body)
    assert resp.headers["content-type"].startswith("application/json")  # not an SSE error frame
    err = error_of(resp, 400)
    assert (err["code"], err["param"]) == ("invalid_value", param)
    assert proc_server.alive(), proc_server.log_tail()


@pytest.mark.slow
def test_a_schema_at_the_bounds_still_works(proc_server: ServerProcess) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": MAX_REPEAT}}}
    body = {"model": "gpt-4o", "max_tokens": 4, "messages": MSG, "response_format": _schema_format(schema)}
    resp = _post(proc_server, "/v1/chat/completions", body)
    assert resp.status_code == 200, resp.text
    _assert_alive(proc_server)


@pytest.mark.slow
def test_issue_2_curl_is_a_400_and_the_server_lives(proc_server: ServerProcess) -> None:
    err = error_of(_post(proc_server, "/v1/completions", ISSUE_2_BODY), 400)
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "invalid_value", "prompt")
    _assert_alive(proc_server)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("prompt", "code"),
    [
        ([-1], "invalid_value"),
        ([1, 2, -5], "invalid_value"),
        ([2**31], "invalid_value"),
        ([[999999999]], "invalid_value"),  # a list of lists: one prompt of token ids
        ([[1, 2], [3]], "invalid_value"),  # two prompts
        ([[]], "invalid_value"),
        ([999999999] * 1_000_000, "invalid_value"),  # huge, and outside the vocabulary
        ([1] * 1_000_000, "context_length_exceeded"),  # huge, inside it
    ],
    ids=[
        "negative",
        "negative-late",
        "int32",
        "list-of-lists",
        "two-prompts",
        "empty",
        "huge-bad",
        "huge-ok",
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_bad_token_prompts_are_400s(
    proc_server: ServerProcess, prompt: list[Any], code: str, stream: bool
) -> None:
    resp = _post(proc_server, "/v1/completions", {"model": "gpt-4o", "prompt": prompt, "stream": stream})
    err = error_of(resp, 400)
    assert (err["code"], err["param"]) == (code, "prompt")
    assert proc_server.alive(), proc_server.log_tail()


@pytest.mark.slow
def test_token_prompt_in_the_vocabulary_still_works(proc_server: ServerProcess) -> None:
    resp = _post(
        proc_server,
        "/v1/completions",
        {"model": "gpt-4o", "prompt": [[504, 3458]], "max_tokens": 2, "echo": True},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"]


@pytest.mark.slow
@pytest.mark.anyio
async def test_realtime_tools_that_crashed_are_error_events(proc_server: ServerProcess) -> None:
    url = proc_server.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    async with websockets.connect(url, max_size=None) as ws:

        async def recv() -> dict[str, Any]:
            event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 60))
            return event

        assert (await recv())["type"] == "session.created"
        for i, schema in enumerate([LONG_STRING, MANY_ITEMS]):
            tool = {"type": "function", "name": "f", "parameters": schema}
            await ws.send(
                json.dumps(
                    {
                        "type": "session.update",
                        "event_id": f"ev{i}",
                        "session": {"type": "realtime", "tools": [tool], "tool_choice": "required"},
                    }
                )
            )
            event = await recv()
            assert event["type"] == "error", event
            assert event["error"]["param"] == "session.tools[0].parameters"
            assert event["error"]["code"] == "invalid_value"
            assert event["error"]["event_id"] == f"ev{i}"
            await ws.send(
                json.dumps(
                    {
                        "type": "response.create",
                        "response": {
                            "output_modalities": ["text"],
                            "tools": [tool],
                            "tool_choice": "required",
                        },
                    }
                )
            )
            event = await recv()
            assert event["type"] == "error", event
            assert event["error"]["param"] == "response.tools[0].parameters"
        # The session goes on: a good update, and a response.
        await ws.send(
            json.dumps(
                {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
            )
        )
        assert (await recv())["type"] == "session.updated"
        await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 4}}))
        while (event := await recv())["type"] != "response.done":
            assert event["type"] != "error", event
        assert event["response"]["status"] in ("completed", "incomplete")
    _assert_alive(proc_server)


@pytest.mark.slow
def test_huge_prompt_is_refused_without_freezing_the_server(proc_server: ServerProcess) -> None:
    """Item 4 (the engine's half): a 10 MB message is refused without tokenizing it, off the event
    loop, while /health keeps answering."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "word " * 2_000_000}]}
    rss_before = proc_server.rss_bytes()
    worst = 0.0
    with httpx.Client(timeout=120) as client:
        sent = client.build_request("POST", proc_server.url + "/v1/chat/completions", json=body)
        with httpx.Client(timeout=120) as other:
            started = time.monotonic()
            answer: list[httpx.Response] = []
            thread = threading.Thread(target=lambda: answer.append(client.send(sent)))
            thread.start()
            while thread.is_alive():
                t0 = time.monotonic()
                assert other.get(proc_server.url + "/health").status_code == 200
                worst = max(worst, time.monotonic() - t0)
                time.sleep(0.05)
            thread.join()
    elapsed = time.monotonic() - started
    err = error_of(answer[0], 400)
    assert err["code"] == "context_length_exceeded" and "at least" in err["message"]
    assert elapsed < 60  # was a 46 s freeze for 100 MB; tokenizing 10 MB alone takes half a minute here
    assert worst < 5, worst  # the JSON parse of the body is the only work on the event loop
    assert proc_server.rss_bytes() - rss_before < 500 * 2**20
    _assert_alive(proc_server)
