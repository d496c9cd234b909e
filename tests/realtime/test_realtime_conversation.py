"""Real conversations against the real models (issue 5): barge-in, truncate, tools, G.711,
transcription sessions, out-of-band responses."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
import websockets
from audio_helpers import cer, wer
from rt_fakes import Client
from rt_speech import INSTRUCTIONS, QUESTION, QUESTION_2, TIMEOUT, b64, collect, stream_speech, ws_url

from localrt.audio import g711
from localrt.audio.resample import resample

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def open_client(server_url: str, query: str = "", **kwargs: Any) -> tuple[Any, Client]:
    ws = await websockets.connect(ws_url(server_url) + "/realtime" + query, max_size=None, **kwargs)
    client = Client(ws)
    created = await client.recv(TIMEOUT)
    assert created["type"] in ("session.created", "transcription_session.created")
    return ws, client


async def update(client: Client, session: dict[str, Any]) -> dict[str, Any]:
    await client.send({"type": "session.update", "session": session})
    event = await client.recv(TIMEOUT)
    assert event["type"] == "session.updated", event
    return event["session"]


async def say(client: Client, text: str) -> dict[str, Any]:
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }
    )
    return (await collect(lambda: client.recv(TIMEOUT), until="conversation.item.done"))[-1]["item"]


async def test_barge_in_then_truncate(server_url: str, speech: dict[str, np.ndarray]) -> None:
    ws, client = await open_client(server_url)
    async with ws:
        await update(
            client,
            {
                "type": "realtime",
                "instructions": "You are a storyteller. Tell long, detailed stories.",
                "max_output_tokens": 400,
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
            },
        )
        await say(client, "Tell me a long story about a dragon who loves to bake bread.")
        await client.send({"type": "response.create"})
        first = await collect(lambda: client.recv(TIMEOUT), until="response.output_audio.delta")
        old = next(e for e in first if e["type"] == "response.created")["response"]["id"]

        async def send(audio: str) -> None:
            await client.send({"type": "input_audio_buffer.append", "audio": audio})

        streaming = asyncio.create_task(stream_speech(send, speech[QUESTION]))
        events: list[dict[str, Any]] = []
        while not events or not (
            events[-1]["type"] == "response.done" and events[-1]["response"]["id"] != old
        ):
            events.append(await client.recv(TIMEOUT))
        await streaming
        kinds = [e["type"] for e in events]
        started = kinds.index("input_audio_buffer.speech_started")
        old_done = next(
            i for i, e in enumerate(events) if e["type"] == "response.done" and e["response"]["id"] == old
        )
        assert started < old_done < kinds.index("input_audio_buffer.speech_stopped"), "no barge-in happened"
        cancelled = events[old_done]["response"]
        assert cancelled["status"] == "cancelled" and cancelled["status_details"]["reason"] == "turn_detected"
        assert cancelled["output"][0]["status"] == "incomplete"
        assert not [e for e in events[old_done + 1 :] if e.get("response_id") == old]
        assert events[-1]["response"]["status"] in ("completed", "incomplete")
        completed = next(
            e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"
        )
        assert wer(QUESTION, completed["transcript"]) < 0.2

        # The client played only part of the interrupted answer: truncate it there.
        old_item = cancelled["output"][0]
        full = old_item["content"][0]["transcript"]
        audio = [
            e
            for e in first + events
            if e["type"] == "response.output_audio.delta" and e["response_id"] == old
        ]
        audio_ms = sum(len(base64.b64decode(e["delta"])) for e in audio) // 48
        played = audio_ms // 2
        await client.send(
            {
                "type": "conversation.item.truncate",
                "item_id": old_item["id"],
                "content_index": 0,
                "audio_end_ms": played,
            }
        )
        truncated = (await collect(lambda: client.recv(TIMEOUT), until="conversation.item.truncated"))[-1]
        assert truncated["audio_end_ms"] == played and truncated["item_id"] == old_item["id"]
        await client.send({"type": "conversation.item.retrieve", "item_id": old_item["id"]})
        retrieved = (await client.recv(TIMEOUT))["item"]["content"][0]
        assert 0 < len(retrieved["transcript"]) < len(full) and full.startswith(retrieved["transcript"])
        assert abs(len(base64.b64decode(retrieved["audio"])) // 48 - played) <= 1
        for bad in (
            {"audio_end_ms": audio_ms + 5000},
            {"item_id": "item_nope"},
            {"item_id": completed["item_id"]},
        ):
            await client.send(
                {
                    "type": "conversation.item.truncate",
                    "item_id": old_item["id"],
                    "content_index": 0,
                    "audio_end_ms": 10,
                    "event_id": "bad",
                    **bad,
                }
            )
            err = await client.recv(TIMEOUT)
            assert err["type"] == "error" and err["error"]["event_id"] == "bad"
        # After those errors the same socket still completes a normal turn.
        await say(client, QUESTION)
        await client.send(
            {"type": "response.create", "response": {"output_modalities": ["text"], "max_output_tokens": 20}}
        )
        after = await collect(lambda: client.recv(TIMEOUT))
        assert after[-1]["response"]["status"] in ("completed", "incomplete")
        assert "".join(e["delta"] for e in after if e["type"] == "response.output_text.delta")


async def test_forced_tool_call_and_its_output(server_url: str) -> None:
    ws, client = await open_client(server_url)
    async with ws:
        await update(
            client,
            {
                "type": "realtime",
                "output_modalities": ["text"],
                "max_output_tokens": 60,
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "name": "get_weather"},
            },
        )
        await say(client, "What is the weather like in Oslo?")
        await client.send({"type": "response.create"})
        events = await collect(lambda: client.recv(TIMEOUT))
        call = events[-1]["response"]["output"][0]
        assert (
            call["type"] == "function_call"
            and call["name"] == "get_weather"
            and call["status"] == "completed"
        )
        arguments = json.loads(call["arguments"])
        assert isinstance(arguments, dict) and isinstance(arguments["city"], str)
        done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert done["arguments"] == call["arguments"] and done["call_id"] == call["call_id"]
        assert (await client.recv(TIMEOUT))["type"] == "rate_limits.updated"

        await client.send(
            {
                "type": "conversation.item.create",
                "event_id": "orphan",
                "item": {"type": "function_call_output", "call_id": "call_unknown", "output": "{}"},
            }
        )
        err = await client.recv(TIMEOUT)
        assert err["type"] == "error" and err["error"]["event_id"] == "orphan"
        output = json.dumps({"city": arguments["city"], "condition": "heavy snow", "temperature_c": -7})
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": call["call_id"], "output": output},
            }
        )
        await collect(lambda: client.recv(TIMEOUT), until="conversation.item.done")
        # A 135M model paraphrases freely; the tool's fact ("snow") must reach the reply within a few tries.
        replies = []
        for _ in range(5):
            await client.send({"type": "response.create", "response": {"tool_choice": "none"}})
            events = await collect(lambda: client.recv(TIMEOUT), until="rate_limits.updated")
            reply = events[-2]["response"]["output"][0]
            replies.append(reply["content"][0]["text"])
            if "snow" in replies[-1].lower():
                break
            await client.send({"type": "conversation.item.delete", "item_id": reply["id"]})
            await client.recv(TIMEOUT)
        assert "snow" in replies[-1].lower(), replies


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
async def test_g711_in_and_out(
    server_url: str, engines: Any, speech: dict[str, np.ndarray], law: str
) -> None:
    encode, decode = (
        (g711.ulaw_encode, g711.ulaw_decode) if law == "pcmu" else (g711.alaw_encode, g711.alaw_decode)
    )
    ws, client = await open_client(server_url)
    async with ws:
        fmt = {"type": f"audio/{law}"}
        session = await update(
            client,
            {
                "type": "realtime",
                "instructions": INSTRUCTIONS,
                "max_output_tokens": 40,
                "audio": {
                    "input": {"format": fmt, "turn_detection": None, "transcription": {"model": "whisper-1"}},
                    "output": {"format": fmt},
                },
            },
        )
        assert session["audio"]["output"]["format"] == fmt
        codes = encode(resample(speech[QUESTION], 24000, 8000).astype(np.int16)).tobytes()
        for i in range(0, len(codes), 800):  # 100 ms per append
            await client.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(codes[i : i + 800]).decode()}
            )
        await client.send({"type": "input_audio_buffer.commit"})
        await client.send({"type": "response.create"})
        events = await collect(lambda: client.recv(TIMEOUT))
        completed = next(
            e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"
        )
        assert wer(QUESTION, completed["transcript"]) < 0.2, completed["transcript"]
        out = b"".join(
            base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
        )
        pcm8k = decode(out).astype(np.float32) / 32768
        assert pcm8k.size > 8000 * 0.3 and np.abs(pcm8k).max() > 0.05
        heard = (await engines.stt.transcribe(resample(pcm8k, 8000, 16000))).text
        transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")[
            "transcript"
        ]
        assert cer(transcript, heard) < 0.25, (transcript, heard)  # 8 kHz G.711, then whisper tiny.en


async def test_transcription_session_two_utterances(server_url: str, speech: dict[str, np.ndarray]) -> None:
    ws, client = await open_client(server_url, "?intent=transcription")
    async with ws:
        await update(
            client,
            {
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe", "language": "en"}}},
            },
        )
        gap = np.zeros(24000, np.int16)
        audio = np.concatenate([gap[:4800], speech[QUESTION], gap, speech[QUESTION_2], gap])
        for i in range(0, audio.size, 2400):
            await client.send({"type": "input_audio_buffer.append", "audio": b64(audio[i : i + 2400])})
        events: list[dict[str, Any]] = []
        while [e["type"] for e in events].count("conversation.item.input_audio_transcription.completed") < 2:
            events.append(await client.recv(TIMEOUT))
        await client.expect_quiet(0.3)
    committed = [e["item_id"] for e in events if e["type"] == "input_audio_buffer.committed"]
    assert len(committed) == 2
    transcripts = {
        e["item_id"]: e["transcript"] for e in events if e["type"].endswith("transcription.completed")
    }
    assert wer(QUESTION, transcripts[committed[0]]) < 0.2 and wer(QUESTION_2, transcripts[committed[1]]) < 0.2
    assert not [e for e in events if e["type"].startswith("response.")]


async def test_out_of_band_response_leaves_the_conversation_alone(server_url: str) -> None:
    ws, client = await open_client(server_url)
    async with ws:
        await update(client, {"type": "realtime", "output_modalities": ["text"], "max_output_tokens": 30})
        user = await say(client, QUESTION)
        await client.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "metadata": {"purpose": "classify"},
                    "instructions": "Answer with one word: is this a question about nature?",
                    "input": [{"type": "item_reference", "id": user["id"]}],
                },
            }
        )
        events = await collect(lambda: client.recv(TIMEOUT), until="rate_limits.updated")
        done = events[-2]["response"]
        assert done["conversation_id"] is None and done["metadata"] == {"purpose": "classify"}
        assert not [e for e in events if e["type"].startswith("conversation.item")]
        await client.send(
            {"type": "conversation.item.retrieve", "item_id": done["output"][0]["id"], "event_id": "r"}
        )
        err = await client.recv(TIMEOUT)
        assert err["type"] == "error" and err["error"]["event_id"] == "r"
        # The default conversation still holds just the user's item: its next response follows it.
        await client.send({"type": "response.create"})
        events = await collect(lambda: client.recv(TIMEOUT))
        added = next(e for e in events if e["type"] == "conversation.item.added")
        assert added["previous_item_id"] == user["id"]
