"""The remote chat engine (``--llm-base-url``) against a real third-party OpenAI-compatible server.

The upstream is llama-cpp-python's own server (``python -m llama_cpp.server``) on the embedded SmolLM2,
in a child process; localrt serves the real Whisper, Piper and silero engines with the chat model
replaced by :class:`~localrt.engines.remote_llm.RemoteChatModels` pointed at it. What a real upstream
cannot be made to do on demand (429, 5xx, a context-length refusal) is played by a scripted upstream
(:func:`tests.remote_upstreams.scripted_upstream`), over real HTTP too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
import websockets

from localrt.app import create_app
from localrt.engines import Engines, engine_name, load_engines
from localrt.engines.remote_common import Upstream
from localrt.engines.remote_llm import RemoteChatModels
from localrt.engines.scheduler import Priority
from localrt.engines.types import TextDelta
from localrt.errors import ContextLengthExceeded
from localrt.serving import free_port, serve_in_thread
from tests.realtime.rt_speech import INSTRUCTIONS, QUESTION, stream_speech, synthesize
from tests.remote_upstreams import UPSTREAM_MODEL, LlamaCppServer, scripted_upstream
from tests.servers import error_of, make_settings

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[LlamaCppServer]:
    server = LlamaCppServer()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def _front(base_url: str, engines: Engines | None, **settings: Any) -> Iterator[str]:
    """A localrt server whose chat model is served by ``base_url`` (speech engines: the real ones, or
    none)."""
    cfg = make_settings(llm_base_url=base_url, **settings)
    assert engine_name(cfg, "llm") == "openai"
    llm = RemoteChatModels.from_settings(cfg)
    remote = Engines(llm=llm)
    if engines is not None:
        remote = Engines(llm=llm, stt=engines.stt, tts=engines.tts, vad=engines.vad)
    with serve_in_thread(create_app(cfg, remote)) as url:
        try:
            yield url
        finally:
            llm.close()  # while the server's loop runs: its upstream connections close on it


@pytest.fixture(scope="module")
def front(upstream: LlamaCppServer, engines: Engines) -> Iterator[str]:
    with _front(upstream.url, engines, llm_remote_slots=2) as url:
        yield url


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


async def _realtime(url: str, model: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send ``events`` on a fresh GA session; everything received until ``response.done`` (the
    ``session.created`` first)."""
    ws_url = url.replace("http://", "ws://") + f"/v1/realtime?model={model}"
    received: list[dict[str, Any]] = []
    async with websockets.connect(ws_url) as ws:
        for event in events:
            await ws.send(json.dumps(event))
        while not received or received[-1]["type"] != "response.done":
            received.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
    return received


def _text_turn(text: str) -> list[dict[str, Any]]:
    return [
        {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}},
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        },
        {"type": "response.create", "response": {"max_output_tokens": 16}},
    ]


# --- a real upstream -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_load_engines_picks_the_remote_engine_with_no_local_model(upstream: LlamaCppServer) -> None:
    cfg = make_settings(llm_base_url=upstream.url, load_stt=False, load_tts=False, load_vad=False)
    loaded = load_engines(cfg)
    try:
        assert isinstance(loaded.llm, RemoteChatModels)
        assert loaded.llm.default_id == UPSTREAM_MODEL  # the first model the upstream lists
        assert loaded.llm.upstream.base_url == upstream.url + "/v1"
    finally:
        loaded.close()


@pytest.mark.slow
def test_models_and_health(front: str) -> None:
    models = httpx.get(front + "/v1/models").json()["data"]
    ids = {m["id"]: m for m in models}
    assert ids[UPSTREAM_MODEL]["loaded"] is True and ids["gpt-4o"]["alias_of"] == UPSTREAM_MODEL
    health = httpx.get(front + "/health").json()
    assert health["status"] == "ok"
    assert health["upstreams"]["llm"]["reachable"] is True
    assert health["engines"]["llm:remote"]["slots"] == 2


@pytest.mark.slow
def test_streamed_chat(front: str) -> None:
    with _client(front) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 12


@pytest.mark.slow
def test_forced_tool_call(front: str) -> None:
    with _client(front) as client:
        out = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[TOOL],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
            temperature=0,
        )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and calls[0].type == "function" and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments), dict)


@pytest.mark.slow
def test_completions_and_a_failure_after_the_upstream_said_200(front: str) -> None:
    with _client(front) as client:
        out = client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="The sky is", max_tokens=5, temperature=0
        )
    assert out.choices[0].text.strip() and out.usage is not None
    assert 0 < out.usage.completion_tokens <= 5
    # llama-cpp-python's server says 200, then fails a prompt over its context: an error, not an empty reply.
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "word " * 1500}], "max_tokens": 5}
    err = error_of(httpx.post(front + "/v1/chat/completions", json=body, timeout=30), 502)
    assert err["code"] == "upstream_error" and "without any output" in err["message"]


@pytest.mark.slow
@pytest.mark.anyio
async def test_realtime_voice_turn(front: str, engines: Engines) -> None:
    """Speech in (server VAD, Whisper here), the reply from the upstream, Piper's audio out."""
    speech = (await synthesize(engines.tts, (QUESTION,)))[QUESTION]
    ws_url = front.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    async with websockets.connect(ws_url) as ws:
        session = {"type": "realtime", "instructions": INSTRUCTIONS, "max_output_tokens": 30}
        await ws.send(json.dumps({"type": "session.update", "session": session}))

        async def send(b64: str) -> None:
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64}))

        await stream_speech(send, speech)
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "response.done":
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 90)))
    kinds = [e["type"] for e in events]
    assert "error" not in kinds, [e for e in events if e["type"] == "error"]
    done = events[-1]["response"]
    assert done["status"] in ("completed", "incomplete"), done
    audio = sum(len(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    assert audio > 24000 * 2 * 0.3 * 4 / 3, "reply audio is too short"  # 0.3 s of base64 pcm16
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
    assert transcript["transcript"].strip()
    assert done["usage"]["output_tokens"] > 0


@pytest.mark.slow
def test_cancelled_stream_stops_the_upstream(front: str, upstream: LlamaCppServer) -> None:
    """Closing the client's stream mid-generation closes localrt's upstream request: the upstream logs
    the disconnect and its process stops using CPU (it generated at one core's pace until then)."""
    seen = len(upstream.log())
    with _client(front) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
            max_tokens=700,
            temperature=0,
            stream=True,
        )
        pieces = 0
        cpu0 = t0 = 0.0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces += 1
            if pieces == 5 and not t0:
                cpu0, t0 = upstream.cpu_seconds(), time.monotonic()
            if pieces == 40:
                break
        assert pieces == 40, "the upstream stopped on its own: the test needs a longer generation"
        busy = (upstream.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        stream.close()
    deadline = time.monotonic() + 10
    while "Disconnected from client" not in upstream.log()[seen:]:
        assert time.monotonic() < deadline, upstream.log()[seen:][-3000:]
        time.sleep(0.05)
    time.sleep(0.3)
    cpu1, t1 = upstream.cpu_seconds(), time.monotonic()
    time.sleep(1.5)
    idle = (upstream.cpu_seconds() - cpu1) / (time.monotonic() - t1)
    assert idle < 0.2 and idle < busy / 2, (idle, busy)
    # The slot is free again and the upstream answers the next request at once.
    health = httpx.get(front + "/health").json()["engines"]["llm:remote"]
    assert health["running"] == 0 and health["queued"] == 0
    with _client(front) as client:
        out = client.chat.completions.create(
            model=UPSTREAM_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert out.choices[0].message.content is not None


# --- an upstream that is down -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.anyio
async def test_upstream_down_is_a_prompt_clear_error(engines: Engines) -> None:
    port = free_port()  # nothing listens there
    with _front(f"http://127.0.0.1:{port}", engines, llm_model="m") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for stream in (False, True):
                started = time.monotonic()
                body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                err = error_of(await http.post("/v1/chat/completions", json=body), 503)
                assert time.monotonic() - started < 5
                assert err["code"] == "upstream_unavailable"
                assert f"upstream http://127.0.0.1:{port}/v1 " in err["message"]
            health = (await http.get("/health")).json()
            assert health["status"] == "degraded" and health["upstreams"]["llm"]["reachable"] is False
        events = await _realtime(url, "gpt-realtime", _text_turn("Hello?"))
        errors = [e for e in events if e["type"] == "error"]
        assert errors and errors[0]["error"]["code"] == "upstream_unavailable"
        assert events[-1]["response"]["status"] == "failed"


# --- upstream refusals, pass-through of tool calls, usage and the session header ------------------------------
@pytest.fixture(scope="module")
def scripted_upstream_url() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    requests: list[dict[str, Any]] = []
    with serve_in_thread(scripted_upstream(requests)) as url:
        yield url, requests


@pytest.fixture(scope="module")
def scripted(
    scripted_upstream_url: tuple[str, list[dict[str, Any]]],
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A front with no local model at all (chat only), over the scripted upstream."""
    upstream_url, requests = scripted_upstream_url
    with _front(upstream_url, None, llm_model="echo") as url:
        yield url, requests


def test_upstream_refusals_are_mapped(scripted: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = scripted
    with httpx.Client(base_url=url, timeout=30) as http:

        def ask(model: str) -> httpx.Response:
            return http.post(
                "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
            )

        resp = ask("busy")
        err = error_of(resp, 429)
        assert "slow down" in err["message"] and err["code"] == "rate_limit_exceeded"
        assert resp.headers["retry-after"] == "7"
        err = error_of(ask("small"), 400)
        assert err["code"] == "context_length_exceeded" and "maximum context length" in err["message"]
        err = error_of(ask("broken"), 502)
        assert err["code"] == "upstream_error" and "out of memory" in err["message"]
        assert error_of(ask("gone"), 404)["code"] == "model_not_found"
        assert error_of(ask("not-listed"), 404)["code"] == "model_not_found"  # known before asking


def test_tool_call_pieces_usage_and_cached_tokens(scripted: tuple[str, list[dict[str, Any]]]) -> None:
    url, requests = scripted
    with _client(url) as client:
        out = client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[TOOL],  # type: ignore[list-item]
            tool_choice="required",
            response_format={"type": "json_object"},
            max_tokens=20,
        )
    call = out.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_abc",
        "lookup",
        '{"city": "Paris"}',
    )
    assert out.usage is not None and out.usage.prompt_tokens == 40
    assert out.usage.prompt_tokens_details.cached_tokens == 32  # type: ignore[union-attr]
    sent = requests[-1]["body"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["tool_choice"] == "required" and sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["response_format"] == {"type": "json_object"} and sent["max_tokens"] == 20


@pytest.mark.slow
@pytest.mark.anyio
async def test_realtime_session_id_header(
    scripted_upstream_url: tuple[str, list[dict[str, Any]]], engines: Engines
) -> None:
    upstream_url, requests = scripted_upstream_url
    with _front(upstream_url, engines, llm_model="echo") as url:
        events = await _realtime(url, "echo", _text_turn("Hello?"))
    session_id = events[0]["session"]["id"]
    assert requests[-1]["headers"]["x-session-id"] == session_id
    done = events[-1]["response"]
    assert done["status"] == "completed", done
    assert done["output"][0]["content"][0]["text"] == "Hello there."
    assert done["usage"]["input_token_details"]["cached_tokens"] == 16


@pytest.mark.anyio
async def test_truncate_history_retries_without_the_oldest_turns(
    scripted_upstream_url: tuple[str, list[dict[str, Any]]],
) -> None:
    upstream_url, requests = scripted_upstream_url
    models = RemoteChatModels(Upstream(upstream_url), model="trim", slots=1)
    try:
        model = await models.get("gpt-realtime")
        turns = [{"role": r, "content": f"{r} {i}"} for i in range(4) for r in ("user", "assistant")]
        messages = [{"role": "system", "content": "Be brief."}, *turns, {"role": "user", "content": "last"}]
        with pytest.raises(ContextLengthExceeded):  # without truncate_history: the refusal
            async with model.chat(messages) as job:
                pass
        async with model.chat(messages, truncate_history=True, priority=Priority.REALTIME) as job:
            text = "".join([e.text async for e in job if isinstance(e, TextDelta)])
        assert text == "Hello there."
        sent = requests[-1]["body"]["messages"]
        assert sent[0]["role"] == "system" and sent[1]["role"] == "user" and sent[-1]["content"] == "last"
        assert len(sent) <= 3
    finally:
        await models.upstream.aclose()
        models.close()
