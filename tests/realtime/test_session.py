"""The realtime loop over fake engines: handshake, event order (§6), errors (§7), cancellation."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
import websockets
from rt_fakes import FAKE_KEY, Client, FakeEngines, connect, silence, tone, tool_or_text, words_reply

from localrt.audio import g711

pytestmark = pytest.mark.anyio

LONG_REPLY = " ".join(f"Sentence number {i} is here." for i in range(40))


def b64(samples: np.ndarray) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def open_session(url: str, *, text: bool = False, manual: bool = False, **kwargs: Any) -> Client:
    client = await connect(url, **kwargs)
    created = await client.recv()
    assert created["type"] == "session.created"
    session: dict[str, Any] = {"type": "realtime"}
    if text:
        session["output_modalities"] = ["text"]
    if manual:
        session["audio"] = {"input": {"turn_detection": None}}
    if len(session) > 1:
        await client.send({"type": "session.update", "session": session})
        assert (await client.recv())["type"] == "session.updated"
    return client


async def say(client: Client, text: str) -> None:
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }
    )


async def stream_audio(client: Client, audio: np.ndarray, chunk_ms: int = 100, rate: int = 24000) -> None:
    step = rate * chunk_ms // 1000
    for start in range(0, audio.size, step):
        await client.send({"type": "input_audio_buffer.append", "audio": b64(audio[start : start + step])})


async def normal_turn(client: Client) -> list[dict[str, Any]]:
    await say(client, "Hello?")
    await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    events = await client.until("rate_limits.updated")
    done = next(e for e in events if e["type"] == "response.done")
    assert done["response"]["status"] == "completed"
    return events


# --- handshake ----------------------------------------------------------------------------------------------
async def test_ga_by_default_and_no_subprotocol_unless_offered(fake_ws_url: str) -> None:
    async with await connect(fake_ws_url + "?model=gpt-realtime") as client:
        assert client.conn.subprotocol is None
        created = await client.recv()
        assert created["type"] == "session.created" and created["event_id"].startswith("event_")
        assert created["session"]["type"] == "realtime" and created["session"]["model"] == "gpt-realtime"
        assert created["session"]["id"].startswith("sess_")


async def test_beta_by_header_or_subprotocol(fake_ws_url: str) -> None:
    async with await connect(fake_ws_url, additional_headers={"OpenAI-Beta": "realtime=v1"}) as client:
        session = (await client.recv())["session"]
        assert "type" not in session and session["modalities"] == ["text", "audio"]
    offered = ["realtime", "openai-beta.realtime-v1"]
    async with await connect(fake_ws_url, subprotocols=offered) as client:  # type: ignore[arg-type]
        assert client.conn.subprotocol == "realtime"
        assert "modalities" in (await client.recv())["session"]


async def test_api_key_sources(fake_keyed_ws_url: str) -> None:
    url = fake_keyed_ws_url
    async with await connect(url, additional_headers={"Authorization": f"Bearer {FAKE_KEY}"}) as client:
        assert (await client.recv())["type"] == "session.created"
    offered = ["realtime", f"openai-insecure-api-key.{FAKE_KEY}"]
    async with await connect(url, subprotocols=offered) as client:  # type: ignore[arg-type]
        assert client.conn.subprotocol == "realtime"  # never the entry carrying the key
        assert (await client.recv())["type"] == "session.created"
    async with await connect(url + f"?api-key={FAKE_KEY}") as client:
        assert (await client.recv())["type"] == "session.created"


@pytest.mark.parametrize(
    ("headers", "code"), [({}, None), ({"Authorization": "Bearer wrong"}, "invalid_api_key")]
)
async def test_bad_key_gets_error_and_close_3000(
    fake_keyed_ws_url: str, headers: dict[str, str], code: Any
) -> None:
    async with await connect(fake_keyed_ws_url, additional_headers=headers) as client:
        err = await client.recv()
        assert err["type"] == "error" and err["error"]["code"] == code
        with pytest.raises(websockets.ConnectionClosed) as info:
            await client.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 3000
        assert info.value.rcvd.reason == "invalid_request_error.invalid_api_key"


async def test_unknown_model_gets_error_and_close_4000(fake_ws_url: str) -> None:
    async with await connect(fake_ws_url + "?model=llama-99b") as client:
        err = await client.recv()
        assert err["error"]["code"] == "invalid_model" and err["error"]["param"] == "model"
        with pytest.raises(websockets.ConnectionClosed) as info:
            await client.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 4000


# --- §6 (a): text in, text out ------------------------------------------------------------------------------
async def test_text_turn_event_order_ga(fake_ws_url: str, fake_engines: FakeEngines) -> None:
    async with await open_session(fake_ws_url, text=True) as client:
        await say(client, "What is the capital of France?")
        await client.send({"type": "response.create"})
        events = await client.until("rate_limits.updated")
    kinds = [k for k in types(events) if k != "response.output_text.delta"]
    assert kinds == [
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
    ]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "Paris is the capital of France."
    done = events[-2]["response"]
    assert done["status"] == "completed" and done["status_details"] is None
    assert done["output"][0]["content"] == [
        {"type": "output_text", "text": "Paris is the capital of France."}
    ]
    assert done["usage"]["input_tokens"] == 10 and done["usage"]["output_tokens"] == 6
    assert done["conversation_id"].startswith("conv_")
    prompt = fake_engines.llm.engine.prompts[-1]
    assert prompt[0]["role"] == "system" and prompt[-1] == {
        "role": "user",
        "content": "What is the capital of France?",
    }


async def test_text_turn_beta_names(fake_ws_url: str) -> None:
    async with await connect(fake_ws_url, additional_headers={"OpenAI-Beta": "realtime=v1"}) as client:
        await client.recv()
        await client.send({"type": "session.update", "session": {"modalities": ["text"]}})
        assert (await client.recv())["session"]["modalities"] == ["text"]
        await say(client, "Hi")
        await client.send({"type": "response.create"})
        events = await client.until("rate_limits.updated")
    kinds = types(events)
    assert "conversation.item.done" not in kinds and "conversation.item.added" not in kinds
    assert kinds[:2] == ["conversation.item.created", "response.created"]
    assert "response.text.delta" in kinds and "response.text.done" in kinds
    assert events[-2]["response"]["output"][0]["content"][0]["type"] == "text"


# --- audio out ------------------------------------------------------------------------------------------------
async def test_audio_out_order_and_format(fake_ws_url: str) -> None:
    async with await open_session(fake_ws_url) as client:
        await say(client, "Hi")
        await client.send({"type": "response.create"})
        events = await client.until("rate_limits.updated")
    kinds = types(events)
    first_audio = kinds.index("response.output_audio.delta")
    assert kinds.index("response.output_audio_transcript.delta") < first_audio
    assert kinds.index("response.content_part.added") < first_audio
    tail = [k for k in kinds[first_audio:] if not k.endswith(".delta")]
    assert tail == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
    ]
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    samples = np.frombuffer(audio, "<i2")
    # 6 words x 60 ms of a 22.05 kHz tone, resampled to 24 kHz
    assert abs(samples.size - 24000 * 0.36) < 200
    assert np.abs(samples).max() > 5000
    transcript = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    assert transcript == "Paris is the capital of France."
    part = next(e for e in events if e["type"] == "response.content_part.done")["part"]
    assert part == {"type": "audio", "transcript": transcript}
    assert all(len(json.dumps(e)) < 1 << 20 for e in events)


async def test_g711_output(fake_ws_url: str) -> None:
    async with await open_session(fake_ws_url) as client:
        await client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}}}},
            }
        )
        assert (await client.recv())["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
        await say(client, "Hi")
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
    codes = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert abs(len(codes) - 8000 * 0.36) < 100  # one byte per sample at 8 kHz
    assert np.abs(g711.ulaw_decode(codes)).max() > 5000


# --- §6 (b): server VAD turn --------------------------------------------------------------------------------
async def test_voice_turn_with_server_vad(fake_ws_url: str, fake_engines: FakeEngines) -> None:
    async with await open_session(fake_ws_url) as client:
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                },
            }
        )
        await client.recv()
        await stream_audio(client, np.concatenate([silence(0.5), tone(1.0), silence(1.0)]))
        events = await client.until("rate_limits.updated")
    kinds = types(events)
    assert kinds[:5] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    started, stopped, committed = events[0], events[1], events[2]
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    assert abs(started["audio_start_ms"] - (500 - 300)) <= 40
    assert abs(stopped["audio_end_ms"] - 1500) <= 40
    user_item = events[3]["item"]
    assert user_item["content"] == [{"type": "input_audio", "transcript": None}]
    assert "response.created" in kinds and kinds.index("response.created") > 4
    completed = next(
        e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"
    )
    assert completed["transcript"] == "What is the capital of France?"
    assert completed["usage"]["type"] == "duration"
    deltas = [e["delta"] for e in events if e["type"] == "conversation.item.input_audio_transcription.delta"]
    assert "".join(deltas).strip() == completed["transcript"]
    # The LLM saw the transcript; Whisper got the speech plus padding (≈1.3 s + silence) at 16 kHz.
    assert fake_engines.llm.engine.prompts[-1][-1] == {
        "role": "user",
        "content": "What is the capital of France?",
    }
    # Whisper started speculatively 150 ms into the closing silence: one call, on speech + padding + 150 ms.
    assert fake_engines.stt is not None and len(fake_engines.stt.calls) == 1
    assert 1.3 * 16000 <= fake_engines.stt.calls[0].size <= 1.55 * 16000


async def test_speculative_transcription_is_dropped_when_speech_resumes(
    fake_ws_url: str, fake_engines: FakeEngines
) -> None:
    stt = fake_engines.stt
    assert stt is not None
    async with await open_session(fake_ws_url) as client:
        # A 300 ms pause: long enough to start Whisper, too short to end the turn.
        await stream_audio(client, np.concatenate([tone(0.5), silence(0.3), tone(0.5), silence(0.8)]))
        events = await client.until("response.done")
    assert types(events).count("input_audio_buffer.speech_started") == 1
    # The speculation started in the pause (if it got to run at all) was dropped: the transcript used
    # comes from audio covering both halves of the utterance.
    assert 1 <= len(stt.calls) <= 2
    assert stt.calls[-1].size > 1.3 * 16000
    assert fake_engines.llm.engine.prompts[-1][-1]["content"] == stt.transcript


async def test_vad_without_create_response(fake_ws_url: str) -> None:
    async with await open_session(fake_ws_url) as client:
        td = {"type": "server_vad", "create_response": False, "silence_duration_ms": 300}
        await client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": td}}},
            }
        )
        await client.recv()
        await stream_audio(client, np.concatenate([tone(0.5), silence(0.6)]))
        events = await client.until("conversation.item.done")
        assert types(events)[0] == "input_audio_buffer.speech_started"
        await client.expect_quiet(0.3)


# --- manual mode --------------------------------------------------------------------------------------------
async def test_manual_commit_then_response(fake_ws_url: str) -> None:
    async with await open_session(fake_ws_url, manual=True) as client:
        await stream_audio(client, tone(0.5))
        await client.expect_quiet(0.2)  # no VAD events, no response
        await client.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
        events = await client.until("conversation.item.done")
        assert types(events) == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        await client.expect_quiet(0.1)
        await client.send({"type": "response.create"})
        events = await client.until("rate_limits.updated")
        assert events[-2]["response"]["status"] == "completed"


async def test_large_appends_are_accepted(fake_ws_url: str) -> None:
    async with await open_session(fake_ws_url, manual=True) as client:
        big = b64(tone(60.0))  # 3.8 MB of base64: over the websockets default 1 MiB frame limit
        assert len(big) > 3 << 20
        await client.send({"type": "input_audio_buffer.append", "audio": big})
        await client.send({"type": "input_audio_buffer.commit"})
        assert (await client.recv())["type"] == "input_audio_buffer.committed"


@pytest.mark.parametrize("seconds", [0.0, 0.05])
async def test_commit_of_too_little_audio(fake_ws_url: str, seconds: float) -> None:
    async with await open_session(fake_ws_url, manual=True) as client:
        if seconds:
            await stream_audio(client, tone(seconds))
        await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
        err = await client.recv()
        assert err["error"]["code"] == "input_audio_buffer_commit_empty"
        assert err["error"]["event_id"] == "evt_commit"
        await normal_turn(client)


async def test_clear_empties_the_buffer(fake_ws_url: str) -> None:
    async with await open_session(fake_ws_url, manual=True) as client:
        await stream_audio(client, tone(0.3))
        await client.send({"type": "input_audio_buffer.clear"})
        assert (await client.recv())["type"] == "input_audio_buffer.cleared"
        await client.send({"type": "input_audio_buffer.commit"})
        assert (await client.recv())["error"]["code"] == "input_audio_buffer_commit_empty"


# --- one response at a time, cancel, barge-in -------------------------------------------------------------
async def test_second_response_while_active(fake_ws_url: str, fake_engines: FakeEngines) -> None:
    fake_engines.llm.engine.delay = 0.02
    async with await open_session(fake_ws_url, text=True) as client:
        await say(client, "Hi")
        await client.send({"type": "response.create"})
        await client.send({"type": "response.create", "event_id": "second"})
        events = await client.until("rate_limits.updated")
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["error"]["code"] == "conversation_already_has_active_response"
    assert errors[0]["error"]["event_id"] == "second"
    assert types(events).count("response.created") == 1


async def test_response_cancel(fake_ws_url: str, fake_engines: FakeEngines) -> None:
    llm = fake_engines.llm.engine
    llm.script, llm.delay = words_reply(LONG_REPLY), 0.01
    async with await open_session(fake_ws_url) as client:
        await client.send({"type": "response.cancel", "event_id": "idle"})
        err = await client.recv()
        assert (err["error"]["code"], err["error"]["event_id"]) == ("response_cancel_not_active", "idle")
        await say(client, "Talk")
        await client.send({"type": "response.create"})
        await client.until("response.output_audio.delta")
        await client.send({"type": "response.cancel"})
        events = await client.until("response.done")
        done = events[-1]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert done["output"][0]["status"] == "incomplete"
        item_done = next(e for e in events if e["type"] == "conversation.item.done")
        assert item_done["item"]["status"] == "incomplete"
        assert (await client.recv())["type"] == "rate_limits.updated"
        await asyncio.sleep(0.05)
        assert llm.open_streams == 0 and llm.tokens_generated < 100
        llm.script = words_reply("Done.")
        await normal_turn(client)


async def test_barge_in(fake_ws_url: str, fake_engines: FakeEngines) -> None:
    llm = fake_engines.llm.engine
    llm.script, llm.delay = words_reply(LONG_REPLY), 0.01
    async with await open_session(fake_ws_url) as client:
        await say(client, "Talk")
        await client.send({"type": "response.create"})
        first = await client.until("response.output_audio.delta")
        old_response = next(e for e in first if e["type"] == "response.created")["response"]["id"]
        llm.script, llm.delay = words_reply("Yes?"), 0.001
        await stream_audio(client, np.concatenate([tone(0.5), silence(0.8)]))
        events = await client.until("rate_limits.updated")
        while events[-2]["response"]["id"] == old_response:
            events += await client.until("rate_limits.updated")
    kinds = types(events)
    started = kinds.index("input_audio_buffer.speech_started")
    old_done = next(
        i
        for i, e in enumerate(events)
        if e["type"] == "response.done" and e["response"]["id"] == old_response
    )
    assert started < old_done < kinds.index("input_audio_buffer.speech_stopped")
    assert events[old_done]["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    late = [e for e in events[old_done:] if e.get("response_id") == old_response]
    assert late == []
    assert events[-2]["response"]["status"] == "completed"


async def test_truncate(fake_ws_url: str) -> None:
    async with await open_session(fake_ws_url) as client:
        await say(client, "Hi")
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
        item = events[-1]["response"]["output"][0]
        audio_ms = (
            sum(
                len(base64.b64decode(e["delta"]))
                for e in events
                if e["type"] == "response.output_audio.delta"
            )
            // 48
        )
        await client.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item["id"],
                "content_index": 0,
                "audio_end_ms": audio_ms // 2,
            }
        )
        events = await client.until("conversation.item.truncated")
        assert events[-1]["audio_end_ms"] == audio_ms // 2
        await client.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
        retrieved = (await client.until("conversation.item.retrieved"))[-1]["item"]
        transcript = retrieved["content"][0]["transcript"]
        assert 0 < len(transcript) < len("Paris is the capital of France.")
        assert "Paris is the capital of France.".startswith(transcript)
        assert abs(len(base64.b64decode(retrieved["content"][0]["audio"])) // 48 - audio_ms // 2) <= 1
        for bad, param in [
            ({"item_id": item["id"], "audio_end_ms": 10**6}, "audio_end_ms"),
            ({"item_id": "item_missing", "audio_end_ms": 1}, "item_id"),
        ]:
            await client.send(
                {"type": "conversation.item.truncate", "content_index": 0, "event_id": "t", **bad}
            )
            err = await client.recv()
            assert (
                err["type"] == "error" and err["error"]["param"] == param and err["error"]["event_id"] == "t"
            )
        await normal_turn(client)


# --- conversation items ------------------------------------------------------------------------------------
async def test_items_create_retrieve_delete(fake_ws_url: str, fake_engines: FakeEngines) -> None:
    async with await open_session(fake_ws_url, text=True) as client:
        await say(client, "second")
        first = (await client.until("conversation.item.done"))[-1]["item"]
        await client.send(
            {
                "type": "conversation.item.create",
                "previous_item_id": "root",
                "item": {
                    "id": "sys1",
                    "type": "message",
                    "role": "system",
                    "content": [{"type": "input_text", "text": "Be kind."}],
                },
            }
        )
        added = (await client.until("conversation.item.done"))[0]
        assert added["previous_item_id"] is None and added["item"]["id"] == "sys1"
        await client.send(
            {
                "type": "conversation.item.create",
                "previous_item_id": "nope",
                "event_id": "bad-prev",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]},
            }
        )
        err = await client.recv()
        assert err["error"]["param"] == "previous_item_id" and err["error"]["event_id"] == "bad-prev"
        await client.send({"type": "conversation.item.retrieve", "item_id": first["id"]})
        assert (await client.recv())["item"]["content"][0]["text"] == "second"
        await client.send({"type": "conversation.item.delete", "item_id": first["id"]})
        assert (await client.recv()) | {"event_id": None} == {
            "type": "conversation.item.deleted",
            "event_id": None,
            "item_id": first["id"],
        }
        await client.send({"type": "conversation.item.retrieve", "item_id": first["id"]})
        assert (await client.recv())["type"] == "error"
        await client.send({"type": "response.create"})
        await client.until("response.done")
    assert fake_engines.llm.engine.prompts[-1][1:] == [{"role": "system", "content": "Be kind."}]


async def test_function_calling(fake_ws_url: str, fake_engines: FakeEngines) -> None:
    fake_engines.llm.engine.script = tool_or_text
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object"},
    }
    async with await open_session(fake_ws_url, text=True) as client:
        await client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "tools": [tool], "tool_choice": "auto"},
            }
        )
        assert (await client.recv())["session"]["tools"][0]["name"] == "get_weather"
        await say(client, "Weather in Paris?")
        await client.send({"type": "response.create"})
        events = await client.until("rate_limits.updated")
        kinds = [k for k in types(events) if k != "response.function_call_arguments.delta"]
        assert kinds[2:] == [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.function_call_arguments.done",
            "conversation.item.done",
            "response.output_item.done",
            "response.done",
            "rate_limits.updated",
        ]
        added = next(e for e in events if e["type"] == "response.output_item.added")["item"]
        assert (
            added["type"] == "function_call" and added["status"] == "in_progress" and added["arguments"] == ""
        )
        args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert json.loads(args_done["arguments"]) == {"city": "Paris"} and args_done["name"] == "get_weather"
        deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
        assert deltas == args_done["arguments"]
        call_id = args_done["call_id"]
        await client.send(
            {
                "type": "conversation.item.create",
                "event_id": "orphan",
                "item": {"type": "function_call_output", "call_id": "call_nope", "output": "x"},
            }
        )
        err = await client.recv()
        assert err["error"]["param"] == "item.call_id" and err["error"]["event_id"] == "orphan"
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": call_id, "output": "sunny 21C"},
            }
        )
        await client.until("conversation.item.done")
        await client.expect_quiet(0.1)  # no automatic response after a tool output
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
        assert "sunny 21C" in events[-1]["response"]["output"][0]["content"][0]["text"]


async def test_out_of_band_response(fake_ws_url: str, fake_engines: FakeEngines) -> None:
    fake_engines.llm.engine.delay = 0.01
    async with await open_session(fake_ws_url, text=True) as client:
        await say(client, "Hello")
        item = (await client.until("conversation.item.done"))[-1]["item"]
        await client.send({"type": "response.create"})  # the default conversation's response
        await client.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "metadata": {"purpose": "summary"},
                    "input": [
                        {"type": "item_reference", "id": item["id"]},
                        {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": "Summarize."}],
                        },
                    ],
                },
            }
        )
        events: list[dict[str, Any]] = []
        while types(events).count("response.done") < 2:
            events.append(await client.recv())
    done = [e["response"] for e in events if e["type"] == "response.done"]
    oob = next(r for r in done if r["metadata"] == {"purpose": "summary"})
    assert oob["conversation_id"] is None and oob["status"] == "completed"
    oob_items = {o["id"] for o in oob["output"]}
    assert not any(e["type"].startswith("conversation.item") and e["item"]["id"] in oob_items for e in events)
    assert not [e for e in events if e["type"] == "error"]
    assert fake_engines.llm.engine.prompts[-1][-2:] == [
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": "Summarize."},
    ] or fake_engines.llm.engine.prompts[-2][-2:] == [
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": "Summarize."},
    ]


async def test_max_output_tokens_makes_the_response_incomplete(fake_ws_url: str) -> None:
    async with await open_session(fake_ws_url, text=True) as client:
        await say(client, "Hi")
        await client.send({"type": "response.create", "response": {"max_output_tokens": 2}})
        done = (await client.until("response.done"))[-1]["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert done["output"][0]["content"][0]["text"] == "Paris is"


async def test_engine_failure_fails_the_response_only(fake_ws_url: str, fake_engines: FakeEngines) -> None:
    from localrt.errors import ServerError

    fake_engines.llm.engine.fail_with = ServerError("llama.cpp exploded")
    async with await open_session(fake_ws_url, text=True) as client:
        await say(client, "Hi")
        await client.send({"type": "response.create"})
        done = (await client.until("rate_limits.updated"))[-2]["response"]
        assert done["status"] == "failed"
        assert done["status_details"]["error"] == {
            "type": "server_error",
            "code": "server_error",
            "message": "llama.cpp exploded",
        }
        fake_engines.llm.engine.fail_with = None
        await normal_turn(client)


# --- §7 errors: never fatal, event_id echoed ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        ("{not json", "invalid_json", None),
        (b"\x00\x01", "invalid_event", None),
        ({"type": "bogus.event", "event_id": "E"}, "invalid_value", "type"),
        (
            {"type": "session.update", "event_id": "E", "session": {"type": "realtime", "bogus_field": 1}},
            "unknown_parameter",
            "session.bogus_field",
        ),
        (
            {"type": "input_audio_buffer.append", "event_id": "E", "audio": "%%%not base64"},
            "invalid_value",
            "audio",
        ),
        ({"type": "input_audio_buffer.append", "event_id": "E", "audio": ["x"]}, "invalid_type", "audio"),
        (
            {"type": "conversation.item.create", "event_id": "E", "item": {"role": "user"}},
            "missing_required_parameter",
            "item.type",
        ),
        (
            {
                "type": "session.update",
                "event_id": "E",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}},
                },
            },
            "integer_below_min_value",
            "session.audio.input.format.rate",
        ),
        (
            {
                "type": "session.update",
                "event_id": "E",
                "session": {"type": "realtime", "audio": {"output": {"voice": "nobody"}}},
            },
            "invalid_value",
            "session.audio.output.voice",
        ),
    ],
)
async def test_errors_keep_the_socket_open(
    fake_ws_url: str, frame: Any, code: str, param: str | None
) -> None:
    async with await open_session(fake_ws_url) as client:
        await client.conn.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
        err = await client.recv()
        assert err["type"] == "error" and err["event_id"].startswith("event_")
        assert (err["error"]["code"], err["error"]["param"]) == (code, param)
        assert err["error"]["event_id"] == ("E" if isinstance(frame, dict) else None)
        await normal_turn(client)


async def test_invalid_update_is_dropped_whole(fake_ws_url: str) -> None:
    async with await open_session(fake_ws_url) as client:
        await client.send(
            {"type": "session.update", "session": {"type": "realtime", "instructions": "X", "bogus": 1}}
        )
        assert (await client.recv())["type"] == "error"
        await client.send(
            {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"speed": 1.2}}}}
        )
        session = (await client.recv())["session"]
        assert session["instructions"] != "X" and session["audio"]["output"]["speed"] == 1.2


async def test_voice_is_fixed_after_audio(fake_ws_url: str) -> None:
    async with await open_session(fake_ws_url) as client:
        update = {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"output": {"voice": "ash"}}},
        }
        await client.send(update)
        assert (await client.recv())["session"]["audio"]["output"]["voice"] == "ash"
        await say(client, "Hi")
        await client.send({"type": "response.create"})
        await client.until("response.done")
        update["session"]["audio"]["output"]["voice"] = "echo"  # type: ignore[index]
        await client.send(update)
        err = (await client.until("error"))[-1]
        assert err["error"]["code"] == "cannot_update_voice"


# --- sessions are independent; disconnects clean up -----------------------------------------------------------
async def test_two_sessions_have_their_own_conversations(fake_ws_url: str, fake_engines: FakeEngines) -> None:
    a = await open_session(fake_ws_url, text=True)
    b = await open_session(fake_ws_url, text=True)
    async with a, b:
        await say(a, "I am A")
        await say(b, "I am B")
        await a.send({"type": "response.create"})
        await b.send({"type": "response.create"})
        await asyncio.gather(a.until("response.done"), b.until("response.done"))
    prompts = [p[-1]["content"] for p in fake_engines.llm.engine.prompts[-2:]]
    assert sorted(prompts) == ["I am A", "I am B"]
    assert all(len(p) == 2 for p in fake_engines.llm.engine.prompts[-2:])


async def test_disconnect_mid_response_stops_generation(fake_ws_url: str, fake_engines: FakeEngines) -> None:
    llm, tts = fake_engines.llm.engine, fake_engines.tts
    llm.script, llm.delay = words_reply(LONG_REPLY), 0.01
    client = await open_session(fake_ws_url)
    await say(client, "Talk")
    await client.send({"type": "response.create"})
    await client.until("response.output_audio.delta")
    await client.conn.close()
    await asyncio.sleep(0.2)
    generated = llm.tokens_generated
    assert llm.open_streams == 0 and tts is not None and tts.open_streams == 0
    await asyncio.sleep(0.1)
    assert llm.tokens_generated == generated < 100


# --- transcription-only sessions ------------------------------------------------------------------------------
async def test_transcription_session_ga(fake_ws_url: str) -> None:
    async with await connect(fake_ws_url + "?intent=transcription") as client:
        created = await client.recv()
        assert created["session"]["type"] == "transcription"
        await client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
                },
            }
        )
        assert (await client.recv())["session"]["audio"]["input"]["transcription"][
            "model"
        ] == "gpt-4o-transcribe"
        await stream_audio(client, np.concatenate([tone(0.5), silence(0.7), tone(0.5), silence(0.7)]))
        first = await client.until("conversation.item.input_audio_transcription.completed")
        second = await client.until("conversation.item.input_audio_transcription.completed")
        assert first[-1]["item_id"] != second[-1]["item_id"]
        assert not [e for e in first + second if e["type"].startswith("response.")]
        await client.send({"type": "response.create", "event_id": "r"})
        assert (await client.until("error"))[-1]["error"]["event_id"] == "r"


async def test_transcription_session_beta(fake_ws_url: str) -> None:
    headers = {"OpenAI-Beta": "realtime=v1"}
    async with await connect(fake_ws_url + "?intent=transcription", additional_headers=headers) as client:
        assert (await client.recv())["type"] == "transcription_session.created"
        await client.send(
            {
                "type": "transcription_session.update",
                "session": {"input_audio_transcription": {"model": "whisper-1"}},
            }
        )
        updated = await client.recv()
        assert updated["type"] == "transcription_session.updated"
        await stream_audio(client, np.concatenate([tone(0.5), silence(0.7)]))
        events = await client.until("conversation.item.input_audio_transcription.completed")
        assert "conversation.item.created" in types(events)


# --- idle timeout ---------------------------------------------------------------------------------------------
async def test_idle_timeout_triggers_a_response(fake_ws_url: str) -> None:
    async with await open_session(fake_ws_url, text=True) as client:
        td = {"type": "server_vad", "idle_timeout_ms": 800}
        await client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": td}}},
            }
        )
        assert (await client.recv())["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 800
        await stream_audio(client, silence(0.2))
        events = await client.until("rate_limits.updated", timeout=3)
        kinds = types(events)
        assert kinds[:4] == [
            "input_audio_buffer.timeout_triggered",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        assert events[0]["item_id"] == events[1]["item_id"]
        assert events[-2]["response"]["status"] == "completed"
        # Speech disarms the timer: a long utterance that has not ended triggers nothing.
        await stream_audio(client, tone(1.0))
        assert (await client.recv())["type"] == "input_audio_buffer.speech_started"
        await client.expect_quiet(0.6)
