"""The realtime loop against a real server with the real embedded models (issue 4's acceptance list).

The user's speech is synthesized with the real Piper engine, resampled to 24 kHz and streamed at real-time
pace, followed by a second of silence; server VAD (silero), Whisper, SmolLM2 and Piper do the rest. The
reply audio is transcribed back with Whisper and compared with the reply's transcript.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import openai
import pytest
import websockets
from audio_helpers import wer
from rt_fakes import Client
from rt_speech import (
    INSTRUCTIONS,
    QUESTION,
    QUESTION_2,
    TIMEOUT,
    b64,
    collect,
    stream_speech,
    transcribe_24k,
    ws_url,
)

from tests.servers import API_KEY

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


def reply_audio(events: list[dict[str, Any]], kind: str) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == kind)


def assert_voice_turn_order(kinds: list[str], ga: bool) -> None:
    """§6 (b): VAD, commit, the user item, then the response, in this order."""
    added = "conversation.item.added" if ga else "conversation.item.created"
    expected = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        added,
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio.done" if ga else "response.audio.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    positions = [kinds.index(k) for k in expected]
    assert positions == sorted(positions), list(zip(expected, positions, strict=True))
    assert kinds.count("input_audio_buffer.speech_started") == 1


async def check_reply_audio(engines: Any, events: list[dict[str, Any]], ga: bool) -> None:
    audio_kind = "response.output_audio.delta" if ga else "response.audio.delta"
    transcript_kind = "response.output_audio_transcript.done" if ga else "response.audio_transcript.done"
    pcm = reply_audio(events, audio_kind)
    samples = np.frombuffer(pcm, "<i2")
    assert samples.size > 24000 * 0.3, "reply audio is too short"
    assert np.abs(samples).max() > 1000, "reply audio is silent"
    transcript = next(e for e in events if e["type"] == transcript_kind)["transcript"]
    heard = await transcribe_24k(engines, pcm)
    assert wer(transcript, heard) < 0.3, (transcript, heard)


# --- the official SDK ---------------------------------------------------------------------------------------
async def test_sdk_ga_text_turn_and_text_in_audio_out(server_url: str, engines: Any) -> None:
    client = openai.AsyncOpenAI(base_url=server_url + "/v1", api_key="unused")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["text"],
                "max_output_tokens": 40,
                "instructions": INSTRUCTIONS,
            }
        )
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}
        )
        await conn.response.create(response={"output_modalities": ["audio"]})
        events = await collect(conn.recv)
        assert events[-1]["response"]["output_modalities"] == ["audio"]
        await check_reply_audio(engines, events, ga=True)

        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION_2}]}
        )
        await conn.response.create()
        events = await collect(conn.recv)
        done = events[-1]["response"]
        assert done["status"] in ("completed", "incomplete")
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text.strip() and done["output"][0]["content"][0]["text"] == text
        assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0
        # The second turn's prompt starts with the first turn's: llama.cpp reuses that prefix.
        assert done["usage"]["input_token_details"]["cached_tokens"] > 10
        assert not [e for e in events if e["type"] == "response.output_audio.delta"]
    await client.close()


async def test_sdk_beta_text_turn_and_text_in_audio_out(server_url: str, engines: Any) -> None:
    client = openai.AsyncOpenAI(
        base_url=server_url + "/v1", api_key="unused", websocket_base_url=ws_url(server_url)
    )
    async with client.beta.realtime.connect(model="gpt-4o-realtime-preview-2024-12-17") as conn:
        await conn.session.update(
            session={
                "modalities": ["text"],
                "max_response_output_tokens": 40,
                "temperature": 0.6,
                "instructions": INSTRUCTIONS,
            }
        )
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}
        )
        await conn.response.create(response={"modalities": ["text", "audio"]})
        events = await collect(conn.recv)
        await check_reply_audio(engines, events, ga=False)

        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION_2}]}
        )
        await conn.response.create()
        events = await collect(conn.recv)
        kinds = [e["type"] for e in events]
        assert "response.text.delta" in kinds and "conversation.item.created" in kinds
        assert "conversation.item.added" not in kinds and "response.audio.delta" not in kinds
    await client.close()


@pytest.mark.parametrize("shape", ["ga", "beta"])
async def test_sdk_voice_turn_with_server_vad(
    server_url: str, engines: Any, speech: dict[str, np.ndarray], shape: str
) -> None:
    ga = shape == "ga"
    client = openai.AsyncOpenAI(
        base_url=server_url + "/v1", api_key="unused", websocket_base_url=ws_url(server_url)
    )
    realtime = client.realtime if ga else client.beta.realtime
    model = "gpt-realtime" if ga else "gpt-4o-realtime-preview"
    async with realtime.connect(model=model) as conn:  # type: ignore[attr-defined]
        if ga:
            session: dict[str, Any] = {
                "type": "realtime",
                "instructions": INSTRUCTIONS,
                "max_output_tokens": 40,
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
            }
        else:
            session = {
                "instructions": INSTRUCTIONS,
                "input_audio_transcription": {"model": "whisper-1"},
                "max_response_output_tokens": 40,
            }
        await conn.session.update(session=session)
        await stream_speech(
            lambda audio: conn.input_audio_buffer.append(audio=audio),
            speech[QUESTION],
            chunk_ms=40 if ga else 100,
        )
        events = await collect(conn.recv)
    await client.close()
    kinds = [e["type"] for e in events]
    assert_voice_turn_order(kinds, ga)
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    speech_ms = speech[QUESTION].size // 24
    assert 0 <= started["audio_start_ms"] <= 200 + 150  # 200 ms of lead-in, 300 ms of padding
    assert abs(stopped["audio_end_ms"] - (200 + speech_ms)) < 400
    completed = next(
        e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"
    )
    assert wer(QUESTION, completed["transcript"]) < 0.2, completed["transcript"]
    assert completed["item_id"] == started["item_id"]
    await check_reply_audio(engines, events, ga)


# --- raw websockets -------------------------------------------------------------------------------------------
async def test_raw_websocket_manual_mode_with_subprotocol_key(
    keyed_server_url: str, engines: Any, speech: dict[str, np.ndarray]
) -> None:
    offered = ["realtime", f"openai-insecure-api-key.{API_KEY}"]
    url = ws_url(keyed_server_url) + "/realtime?model=gpt-realtime"
    async with websockets.connect(url, subprotocols=offered, max_size=None) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "realtime"
        client = Client(ws)
        assert (await client.recv(TIMEOUT))["type"] == "session.created"
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": INSTRUCTIONS,
                    "max_output_tokens": 40,
                    "audio": {"input": {"turn_detection": None}},
                },
            }
        )
        assert (await client.recv(TIMEOUT))["session"]["audio"]["input"]["turn_detection"] is None
        await client.send({"type": "input_audio_buffer.commit", "event_id": "empty"})
        err = await client.recv(TIMEOUT)
        assert (err["error"]["code"], err["error"]["event_id"]) == (
            "input_audio_buffer_commit_empty",
            "empty",
        )
        for i in range(0, speech[QUESTION].size, 2400):
            await client.send(
                {"type": "input_audio_buffer.append", "audio": b64(speech[QUESTION][i : i + 2400])}
            )
        await client.send({"type": "input_audio_buffer.commit"})
        await client.send({"type": "response.create"})
        events = await collect(lambda: client.recv(TIMEOUT), until="rate_limits.updated")
        kinds = [e["type"] for e in events]
        assert kinds[:3] == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        assert "input_audio_buffer.speech_started" not in kinds
        await check_reply_audio(engines, events, ga=True)
        user_id = events[0]["item_id"]
        await client.send({"type": "conversation.item.retrieve", "item_id": user_id})
        item = (await collect(lambda: client.recv(TIMEOUT), until="conversation.item.retrieved"))[-1]["item"]
        assert wer(QUESTION, item["content"][0]["transcript"]) < 0.2
        assert abs(len(base64.b64decode(item["content"][0]["audio"])) // 2 - speech[QUESTION].size) < 2400


async def test_raw_websocket_wrong_key(keyed_server_url: str) -> None:
    offered = ["realtime", "openai-insecure-api-key.sk-wrong"]
    url = ws_url(keyed_server_url) + "/realtime"
    async with websockets.connect(url, subprotocols=offered) as ws:  # type: ignore[list-item]
        err = json.loads(await ws.recv())
        assert err["error"]["code"] == "invalid_api_key"
        with pytest.raises(websockets.ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 3000


async def test_every_error_then_a_normal_turn(server_url: str) -> None:
    """§7: each error code on one socket, each echoing the client's event_id; the socket stays usable."""
    async with websockets.connect(ws_url(server_url) + "/realtime", max_size=None) as ws:
        client = Client(ws)
        await client.recv(TIMEOUT)
        cases: list[tuple[Any, str]] = [
            ("{oops", "invalid_json"),
            (b"\x00binary", "invalid_event"),
            ({"type": "nope", "event_id": "e1"}, "invalid_value"),
            (
                {"type": "session.update", "event_id": "e2", "session": {"type": "realtime", "bogus": 1}},
                "unknown_parameter",
            ),
            ({"type": "input_audio_buffer.append", "event_id": "e3", "audio": "***"}, "invalid_value"),
            ({"type": "input_audio_buffer.append", "event_id": "e4", "audio": 12}, "invalid_type"),
            (
                {"type": "conversation.item.create", "event_id": "e5", "item": {"role": "user"}},
                "missing_required_parameter",
            ),
            (
                {
                    "type": "session.update",
                    "event_id": "e6",
                    "session": {
                        "type": "realtime",
                        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
                    },
                },
                "integer_below_min_value",
            ),
            ({"type": "input_audio_buffer.commit", "event_id": "e7"}, "input_audio_buffer_commit_empty"),
            ({"type": "response.cancel", "event_id": "e8"}, "response_cancel_not_active"),
        ]
        for frame, code in cases:
            await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
            err = await client.recv(TIMEOUT)
            assert err["type"] == "error" and err["error"]["code"] == code, err
            assert err["error"]["event_id"] == (frame.get("event_id") if isinstance(frame, dict) else None)
        await client.send(
            {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
        )
        await client.recv(TIMEOUT)
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": QUESTION}],
                },
            }
        )
        await client.send({"type": "response.create", "response": {"max_output_tokens": 40}})
        await client.send({"type": "response.create", "event_id": "e9"})
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != "response.done":
            events.append(await client.recv(TIMEOUT))
        errors = [e for e in events if e["type"] == "error"]
        assert [(e["error"]["code"], e["error"]["event_id"]) for e in errors] == [
            ("conversation_already_has_active_response", "e9")
        ]
        assert events[-1]["response"]["status"] in ("completed", "incomplete")


async def test_two_sessions_at_once(server_url: str, engines: Any, speech: dict[str, np.ndarray]) -> None:
    async def voice_turn(question: str) -> list[dict[str, Any]]:
        async with websockets.connect(ws_url(server_url) + "/realtime", max_size=None) as ws:
            client = Client(ws)
            await client.recv(TIMEOUT)
            await client.send(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "max_output_tokens": 30,
                        "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                    },
                }
            )
            await client.recv(TIMEOUT)

            async def send(audio: str) -> None:
                await client.send({"type": "input_audio_buffer.append", "audio": audio})

            await stream_speech(send, speech[question])
            return await collect(lambda: client.recv(TIMEOUT))

    first, second = await asyncio.gather(voice_turn(QUESTION), voice_turn(QUESTION_2))
    for events, question in ((first, QUESTION), (second, QUESTION_2)):
        completed = next(
            e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"
        )
        assert wer(question, completed["transcript"]) < 0.2, completed["transcript"]
        assert events[-1]["response"]["status"] in ("completed", "incomplete")
        assert np.abs(np.frombuffer(reply_audio(events, "response.output_audio.delta"), "<i2")).max() > 1000
