"""The OpenAI Agents SDK for Python (``openai-agents``) as a test peer, against the real server and models.

The Agents SDK validates every server event against the ``openai`` types and turns a failure into an
``error`` session event (issue 12: the GA content-part type did exactly that). Here a ``RealtimeAgent``
with a function tool runs under ``RealtimeRunner``: the first response must call the tool
(``tool_choice: required``), the SDK executes it and asks for the next response itself, and that reply
is audio. No ``error`` event may appear anywhere.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from agents import function_tool, set_tracing_disabled
from agents.realtime import RealtimeAgent, RealtimeRunner, RealtimeSession
from agents.realtime.model_inputs import RealtimeModelSendRawMessage
from rt_speech import TIMEOUT, ws_url

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


async def test_agent_calls_a_tool_the_sdk_runs_then_speaks(server_url: str) -> None:
    set_tracing_disabled(True)  # the SDK's own traces go to api.openai.com
    calls: list[str] = []
    holder: dict[str, RealtimeSession] = {}

    @function_tool
    async def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        # Forced once is enough: the response the SDK asks for after this output may answer freely.
        # Sent before the SDK sends the output and its response.create, on the same socket.
        await holder["session"].model.send_event(
            RealtimeModelSendRawMessage(
                message={
                    "type": "session.update",
                    "other_data": {"session": {"type": "realtime", "tool_choice": "none"}},
                }
            )
        )
        return f"It is 21 degrees and sunny in {city}."

    agent = RealtimeAgent(
        name="Weather",
        instructions="You answer questions about the weather with the get_weather tool.",
        tools=[get_weather],
    )
    runner = RealtimeRunner(
        agent,
        config={
            "model_settings": {
                "model_name": "gpt-realtime",
                "tool_choice": "required",
                "output_modalities": ["audio"],
                "max_output_tokens": 24,
            }
        },
    )
    session = await runner.run(
        model_config={"url": ws_url(server_url) + "/realtime?model=gpt-realtime", "api_key": "unused"}
    )
    holder["session"] = session
    seen: list[str] = []
    errors: list[Any] = []
    audio = bytearray()

    async def converse() -> None:
        await session.send_message("What is the weather in Paris?")
        async for event in session:
            seen.append(event.type)
            if event.type == "error" or (
                event.type == "raw_model_event" and event.data.type in ("error", "exception")
            ):
                errors.append(event)
            elif event.type == "audio" and "tool_end" in seen:
                audio.extend(event.audio.data)
            elif event.type == "agent_end" and audio:
                return

    async with session:
        await asyncio.wait_for(converse(), TIMEOUT)
    assert not errors, errors
    assert len(calls) == 1 and calls[0].strip(), calls
    assert seen.index("tool_start") < seen.index("tool_end")
    samples = np.frombuffer(bytes(audio), "<i2")
    assert samples.size > 24000 * 0.3 and np.abs(samples).max() > 1000
