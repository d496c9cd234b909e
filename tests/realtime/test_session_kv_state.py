"""Per-session KV state through the real server and model (issue 13): two realtime sessions take turns
on the one llama.cpp context, and from its second turn on each session's reply reuses its own history
(``usage.input_token_details.cached_tokens``) although the other session's turn ran in between."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from rt_speech import TIMEOUT, collect
from test_realtime_conversation import open_client, say, update

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

QUESTIONS = [
    ["What is the capital of France?", "And what river runs through it?", "Name a famous museum there."],
    ["Which planet is the largest?", "How many moons does it have?", "Is it made of gas?"],
]


async def turn(client: Any, text: str) -> dict[str, Any]:
    await say(client, text)
    await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    done = (await collect(lambda: client.recv(TIMEOUT), until="response.done"))[-1]["response"]
    assert done["status"] in ("completed", "incomplete"), done  # incomplete: cut at max_output_tokens
    usage: dict[str, Any] = done["usage"]
    return usage


async def test_alternating_sessions_reuse_their_own_history(server_url: str) -> None:
    a_ws, a = await open_client(server_url)
    b_ws, b = await open_client(server_url)
    async with a_ws, b_ws:
        for client in (a, b):
            await update(client, {"type": "realtime", "output_modalities": ["text"], "max_output_tokens": 40})
        usages: list[list[dict[str, Any]]] = [[], []]
        for round_ in range(3):
            for i, client in enumerate((a, b)):  # a, b, a, b, ...: each turn follows the other session's
                usages[i].append(await turn(client, QUESTIONS[i][round_]))
    for session in usages:
        for previous, usage in itertools.pairwise(session):
            cached = usage["input_token_details"]["cached_tokens"]
            # The whole previous prompt is reused (the previous reply too, where the chat template
            # renders it the same way), not just the shared system prompt.
            assert cached >= previous["input_tokens"], (previous, usage)
            assert cached < usage["input_tokens"]
