"""Issue 11, item 5: a conversation past the context is cut once, in O(what is kept), off the event loop.

The cut logic is tested with a stand-in tokenizer (a token per word) and the real ChatML template; the
slow test drives a real server process through 1000 items and ``response.create`` while another client
checks that the server's event loop keeps answering, and that a client leaving stops the work.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import websockets

from localrt.engines.chat_format import CHATML_TEMPLATE, ChatFormatter, ToolPlan
from localrt.engines.llm_prompt import Cancelled, PromptBuilder, keep_from
from localrt.errors import ContextLengthExceeded
from tests.proc_server import ServerProcess


# --- the cut point ----------------------------------------------------------------------------------------
def test_keep_from_everything_when_it_fits() -> None:
    assert keep_from(["user", "assistant"] * 3, lambda i: 10, 60) == 0


def test_keep_from_cuts_before_a_user_turn() -> None:
    roles = ["user", "assistant", "tool", "assistant", "user", "assistant", "user"]
    # The newest 4 fit (budget 40); the kept part must start at a user turn: index 4.
    assert keep_from(roles, lambda i: 10, 40) == 4
    assert keep_from(roles, lambda i: 10, 45) == 4
    assert keep_from(roles, lambda i: 10, 25) == 6


def test_keep_from_keeps_the_last_turn_even_over_budget() -> None:
    roles = ["user", "assistant", "user", "assistant", "tool"]
    assert keep_from(roles, lambda i: 100, 50) == 2


def test_keep_from_asks_only_for_what_it_keeps() -> None:
    asked: list[int] = []

    def cost(i: int) -> int:
        asked.append(i)
        return 10

    assert keep_from(["user", "assistant"] * 50_000, cost, 100) == 99_990
    assert len(asked) == 11  # the 10 kept and the one that did not fit


# --- the cut, with a stand-in tokenizer -------------------------------------------------------------------
class WordLlama:
    """A token per whitespace-separated word; counts the text it was asked to tokenize."""

    def __init__(self, n_ctx: int) -> None:
        self._n_ctx = n_ctx
        self.calls = 0
        self.chars = 0

    def n_ctx(self) -> int:
        return self._n_ctx

    def tokenize(self, data: bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        self.calls += 1
        self.chars += len(data)
        return [1] * len(data.split())


def _builder(n_ctx: int) -> tuple[PromptBuilder, WordLlama]:
    llama = WordLlama(n_ctx)
    return PromptBuilder(llama, ChatFormatter(CHATML_TEMPLATE, "", ""), max_token_chars=64), llama


def _history(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief and kind."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "word " * 10})
        messages.append({"role": "assistant", "content": f"answer {i} " + "word " * 10})
    messages.append({"role": "user", "content": "the last question"})
    return messages


def _fit(builder: PromptBuilder, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    options: dict[str, Any] = {"max_tokens": None, "stopped": lambda: False, **kwargs}
    return builder.chat(messages, tools=None, plan=ToolPlan(), response_format=None, truncate=True, **options)


def test_a_history_that_fits_is_not_cut() -> None:
    builder, _ = _builder(4096)
    prompt = _fit(builder, _history(20))
    assert prompt.dropped == 0
    assert len(prompt.tokens) < 4096


def test_a_long_history_is_cut_once_keeping_the_system_prompt_and_whole_turns() -> None:
    builder, llama = _builder(1024)
    messages = _history(10_000)
    prompt = _fit(builder, messages)
    kept = messages[1 + prompt.dropped :]
    assert kept[0]["role"] == "user" and kept[-1]["content"] == "the last question"
    assert len(prompt.tokens) <= 1024 - 1024 // 4  # room for the reply
    assert len(prompt.tokens) > 1024 // 2  # and not much more was dropped than needed
    # O(what is kept): the 20,000 older messages were never tokenized.
    assert llama.calls < 200
    assert llama.chars < 40 * 1024


def test_the_cut_leaves_room_for_max_tokens() -> None:
    builder, _ = _builder(1024)
    prompt = _fit(builder, _history(1000), max_tokens=300)
    assert len(prompt.tokens) <= 1024 - 300


def test_a_last_turn_longer_than_the_context_is_an_error() -> None:
    builder, _ = _builder(512)
    messages = [*_history(3), {"role": "user", "content": "word " * 600}]
    with pytest.raises(ContextLengthExceeded):
        _fit(builder, messages)
    # A huge one is refused from its length alone.
    builder, llama = _builder(512)
    with pytest.raises(ContextLengthExceeded):
        _fit(builder, [{"role": "user", "content": "word " * 1_000_000}])
    assert llama.chars < 1_000_000


def test_tool_results_stay_with_their_turn() -> None:
    builder, _ = _builder(256)
    messages: list[dict[str, Any]] = []
    for i in range(200):
        call = {"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        messages += [
            {"role": "user", "content": f"call {i} " + "word " * 5},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": "result " + "word " * 5},
            {"role": "assistant", "content": "done " + "word " * 5},
        ]
    prompt = _fit(builder, messages)
    assert messages[prompt.dropped]["role"] == "user"


def test_the_cut_stops_when_the_job_is_cancelled() -> None:
    builder, _ = _builder(1024)
    with pytest.raises(Cancelled):
        _fit(builder, _history(10_000), stopped=lambda: True)


# --- the real thing (slow) --------------------------------------------------------------------------------
TIMEOUT = 120


async def _recv(ws: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return event


async def _fill(ws: Any, items: int) -> None:
    """Create ``items`` text messages (alternately user and assistant) and wait for all of them."""
    assert (await _recv(ws))["type"] == "session.created"
    await ws.send(
        json.dumps({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}})
    )
    assert (await _recv(ws))["type"] == "session.updated"
    for i in range(items):
        role = "user" if i % 2 == 0 else "assistant"
        kind = "input_text" if role == "user" else "output_text"
        text = f"Message {i}: tell me something about the number {i}, please, in one sentence."
        item = {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
    done = 0
    while done < items:
        event = await _recv(ws)
        assert event["type"] != "error", event
        done += event["type"] == "conversation.item.done"


async def _watch_health(url: str, stop: asyncio.Event) -> float:
    """Poll /health until ``stop``; the longest wait for an answer."""
    worst = 0.0
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        while not stop.is_set():
            started = time.monotonic()
            assert (await client.get(url + "/health")).status_code == 200
            worst = max(worst, time.monotonic() - started)
            await asyncio.sleep(0.05)
    return worst


@pytest.mark.slow
@pytest.mark.anyio
async def test_1000_items_then_response_create_keeps_the_server_responsive() -> None:
    with ServerProcess(n_ctx=512) as server:
        url = server.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
        async with websockets.connect(url, max_size=None) as ws:
            await _fill(ws, 1000)
            stop = asyncio.Event()
            watcher = asyncio.create_task(_watch_health(server.url, stop))
            started = time.monotonic()
            await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 8}}))
            while (event := await _recv(ws))["type"] != "response.done":
                assert event["type"] != "error", event
            elapsed = time.monotonic() - started
            stop.set()
            worst = await watcher
        response = event["response"]
        assert response["status"] in ("completed", "incomplete"), response
        assert 0 < response["usage"]["input_tokens"] < 512
        # Was 51.5 s of a frozen event loop; now the loop is free throughout (generous bounds: the
        # reply itself is a few hundred tokens of prompt on a shared CPU).
        assert worst < 2.0, worst
        assert elapsed < 90, elapsed
        assert server.alive(), server.log_tail()


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_client_leaving_stops_the_work() -> None:
    with ServerProcess(n_ctx=512) as server:
        url = server.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
        async with websockets.connect(url, max_size=None) as ws:
            await _fill(ws, 1000)
            await ws.send(json.dumps({"type": "response.create"}))
            assert (await _recv(ws))["type"] == "response.created"
        # Gone: the model is free again well before a reply to the whole context could have run.
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            while (await client.get(server.url + "/health")).json()["chat"]["busy"]:
                assert time.monotonic() < deadline, "the model kept working for a client that left"
                await asyncio.sleep(0.1)
        assert server.alive(), server.log_tail()
