"""Fast tests of the chat route's framing and failure paths, with a small fake engine (no model)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from localrt.app import create_app
from localrt.engines import Engines
from localrt.engines.llm import ChatResult, TextDelta
from localrt.errors import ModelNotFound, ServerError
from tests.servers import make_settings


class FakeStream:
    def __init__(self, pieces: list[str], fail_after: int | None) -> None:
        self.pieces = pieces
        self.fail_after = fail_after
        self.result = ChatResult(text="".join(pieces), prompt_tokens=3, completion_tokens=len(pieces))
        self.exited = False

    async def __aenter__(self) -> FakeStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited = True

    def __aiter__(self) -> AsyncIterator[TextDelta]:
        return self._events()

    async def _events(self) -> AsyncIterator[TextDelta]:
        for i, piece in enumerate(self.pieces):
            if self.fail_after is not None and i == self.fail_after:
                raise ServerError("the model crashed")
            yield TextDelta(piece)


class FakeLLM:
    id = "fake"

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.streams: list[FakeStream] = []

    def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> FakeStream:
        stream = FakeStream(["Hello", ",", " world"], self.fail_after)
        self.streams.append(stream)
        return stream


class FakePool:
    default_id = "fake"

    def __init__(self, llm: FakeLLM) -> None:
        self.llm = llm

    async def get(self, model: str | None) -> FakeLLM:
        if model not in (None, "fake", "gpt-4o"):
            raise ModelNotFound(str(model))
        return self.llm


def client_for(llm: FakeLLM) -> httpx.AsyncClient:
    app = create_app(make_settings(), Engines(llm=FakePool(llm)))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def sse_data(body: str) -> list[str]:
    return [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]


@pytest.mark.anyio
async def test_stream_framing() -> None:
    llm = FakeLLM()
    async with client_for(llm) as client:
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        )
    assert resp.headers["content-type"].startswith("text/event-stream")
    data = sse_data(resp.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello, world"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert llm.streams[0].exited


@pytest.mark.anyio
async def test_error_mid_stream_becomes_error_frame() -> None:
    llm = FakeLLM(fail_after=2)
    async with client_for(llm) as client:
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        )
        data = sse_data(resp.text)
        assert json.loads(data[-1]) == {
            "error": {
                "message": "the model crashed",
                "type": "server_error",
                "param": None,
                "code": "server_error",
            }
        }
        assert "[DONE]" not in data
        assert llm.streams[0].exited  # the engine job was closed
        # Non-streaming: the same failure is a 500 in OpenAI's shape.
        resp = await client.post(
            "/v1/chat/completions", json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert resp.status_code == 500
        assert resp.json()["error"]["type"] == "server_error"
