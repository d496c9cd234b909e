"""Hostile realtime clients (issue 11, items 6, 7, 11, 12): each test sends exactly the input the issue
names, checks the documented ``error`` event, that the socket is still open and a normal turn works
afterwards, and, where memory is the point, that the server's memory stays bounded.

The server runs in this process (``serve_in_thread``), so ``tracemalloc`` sees its allocations (numpy's
included); the bounds are generous, but far below what the unbounded server held.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import websockets
from rt_fakes import Client, FakeEngines, FakeSettings, FakeSTT, connect, make_app, tone, words_reply

from localrt.errors import APIError, ServerError
from localrt.realtime.conversation import AudioClip, Content, Conversation, Item, Limits
from localrt.realtime.server_events import MAX_EVENT_BYTES, ServerEvents, encode
from localrt.serving import serve_in_thread

pytestmark = pytest.mark.anyio

MiB = 1 << 20
Serve = Callable[..., str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(engines=None, **settings)`` -> the ws:// URL of a fake-engine server with those settings."""
    with contextlib.ExitStack() as stack:

        def start(engines: FakeEngines | None = None, **overrides: Any) -> str:
            app = make_app(engines or FakeEngines(), FakeSettings(**overrides))
            url = stack.enter_context(serve_in_thread(app))
            return url.replace("http://", "ws://") + "/v1/realtime"

        yield start


class _QuietSTT(FakeSTT):
    """FakeSTT without its record of every audio it got (the memory tests would measure that)."""

    def stream(self, audio: np.ndarray, **kwargs: Any) -> Any:
        out = super().stream(audio, **kwargs)
        self.calls.clear()
        return out


async def session(url: str, *, manual: bool = False, transcribe: bool = False, **kwargs: Any) -> Client:
    client = Client(await websockets.connect(url, **kwargs)) if kwargs else await connect(url)
    assert (await client.recv())["type"] == "session.created"
    update: dict[str, Any] = {"type": "realtime", "output_modalities": ["text"], "audio": {"input": {}}}
    if manual:
        update["audio"]["input"]["turn_detection"] = None
    if transcribe:
        update["audio"]["input"]["transcription"] = {"model": "whisper-1"}
    await client.send({"type": "session.update", "session": update})
    assert (await client.recv())["type"] == "session.updated"
    return client


def user_text(text: str, **fields: Any) -> dict[str, Any]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return {"type": "conversation.item.create", "item": item, **fields}


def user_audio(audio_b64: str, **fields: Any) -> dict[str, Any]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": audio_b64}]}
    return {"type": "conversation.item.create", "item": item, **fields}


def b64(samples: np.ndarray) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


async def error_of(client: Client, timeout: float = 10.0) -> dict[str, Any]:
    event = await client.recv(timeout)
    assert event["type"] == "error", event
    err: dict[str, Any] = event["error"]
    return err


async def normal_turn(client: Client) -> None:
    """The socket is open and the session works: a text item and a reply."""
    await client.send(user_text("Hello?"))
    await client.until("conversation.item.done")
    await client.send({"type": "response.create"})
    events = await client.until("rate_limits.updated")
    assert events[-2]["type"] == "response.done" and events[-2]["response"]["status"] == "completed"


async def sync(client: Client) -> None:
    """Wait until the server has handled everything sent so far (events are handled in order)."""
    await client.send({"type": "conversation.item.retrieve", "item_id": "sync", "event_id": "sync"})
    while True:
        event = (await client.until("error", timeout=60))[-1]
        if event["error"]["event_id"] == "sync":
            return


@contextlib.contextmanager
def traced() -> Iterator[Callable[[], tuple[int, int]]]:
    """``usage()`` -> (now, peak) bytes allocated since the block began."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tuple(m - base for m in tracemalloc.get_traced_memory())  # type: ignore[return-value]
    finally:
        tracemalloc.stop()


# --- item 6: lone surrogates --------------------------------------------------------------------------------
SURROGATE_FRAMES = {
    "event_id": '{"type":"input_audio_buffer.clear","event_id":"ev\\ud800"}',
    "input_text": '{"type":"conversation.item.create","event_id":"e1","item":{"type":"message","role":"user",'
    '"content":[{"type":"input_text","text":"a\\ud800b"}]}}',
    "instructions": '{"type":"session.update","event_id":"e1","session":{"type":"realtime",'
    '"instructions":"\\udc00"}}',
    "metadata": '{"type":"response.create","event_id":"e1","response":{"metadata":{"k":"\\ud800"}}}',
}


async def test_no_permessage_deflate(serve: Serve) -> None:
    """Compressed frames would let a few KiB on the wire queue 16 MiB messages in the server."""
    async with await session(serve()) as client:
        assert client.conn.protocol.extensions == []


@pytest.mark.parametrize("field", list(SURROGATE_FRAMES))
async def test_lone_surrogate_is_refused_and_the_session_goes_on(serve: Serve, field: str) -> None:
    async with await session(serve()) as client:
        await client.conn.send(SURROGATE_FRAMES[field])
        err = await error_of(client)
        assert err["code"] == "invalid_json" and "surrogate" in err["message"]
        assert err["event_id"] == ("ev\\ud800" if field == "event_id" else "e1")
        await normal_turn(client)


async def test_a_surrogate_pair_is_text(serve: Serve) -> None:
    async with await session(serve()) as client:
        await client.conn.send(json.dumps(user_text("\U0001f600")))  # sent as "\ud83d\ude00"
        added = await client.recv()
        assert added["item"]["content"][0]["text"] == "\U0001f600"


def test_an_event_that_cannot_be_sent_becomes_an_error() -> None:
    events = ServerEvents("ga")
    text = encode({"type": "response.output_text.delta", "delta": "a\ud800"}, events)
    assert json.loads(text.encode("utf-8"))["delta"] == "a\ufffd"  # replaced, the event still goes out
    big = encode({"type": "conversation.item.retrieved", "item": {"x": "a" * MAX_EVENT_BYTES}}, events)
    assert len(big) < 4096 and json.loads(big)["error"]["code"] == "event_too_large"
    nan = encode({"type": "session.updated", "session": {"temperature": float("nan")}}, events)
    assert json.loads(nan)["error"]["type"] == ServerError.type


# --- item 11: deep nesting ----------------------------------------------------------------------------------
DEEP_FRAMES = {
    "100k_lists": '{"type":"session.update","session":' + "[" * 100_000 + "]" * 100_000 + "}",
    "1000_objects": '{"type":"response.create","response":{"metadata":' + '{"a":' * 1000 + "1" + "}" * 1002,
    "200_in_session": '{"type":"session.update","session":{"type":"realtime","tracing":{"metadata":'
    + '{"a":' * 200
    + "1"
    + "}" * 203,
    "nan": '{"type":"input_audio_buffer.clear","event_id":NaN}',
}


@pytest.mark.parametrize("frame", list(DEEP_FRAMES))
async def test_deep_or_non_json_frames_are_invalid_json(serve: Serve, frame: str) -> None:
    async with await session(serve()) as client:
        await client.conn.send(DEEP_FRAMES[frame])
        assert (await error_of(client))["code"] == "invalid_json"
        await normal_turn(client)


# --- item 12: every event fits in 1 MiB ---------------------------------------------------------------------
async def test_retrieve_of_a_20s_item_fits_a_default_websockets_client(serve: Serve) -> None:
    """The ``websockets`` default read limit is 1 MiB: the retrieve must not disconnect it."""
    async with await session(serve(), transcribe=True, max_size=MiB) as client:
        for seconds in (20, 5):
            await client.send(user_audio(b64(tone(seconds)), event_id=f"a{seconds}"))
            item = (await client.until("conversation.item.done"))[-1]["item"]
            await client.until("conversation.item.input_audio_transcription.completed")
            await client.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
            part = (await client.until("conversation.item.retrieved"))[-1]["item"]["content"][0]
            assert part["transcript"] == "What is the capital of France?"
            if seconds == 20:  # 1.28 MB of base64: left out, the transcript kept
                assert part.get("audio") is None
            else:
                assert abs(len(base64.b64decode(part["audio"])) - seconds * 48000) < 200
        await normal_turn(client)


async def test_huge_client_values_give_small_errors(serve: Serve) -> None:
    huge = "y" * (2 * MiB)
    async with await session(serve(), max_size=MiB) as client:
        await client.send({"type": huge})
        assert (await error_of(client))["code"] == "invalid_value"
        await client.send({"type": "conversation.item.retrieve", "item_id": huge, "event_id": huge})
        err = await error_of(client)
        assert err["code"] == "item_not_found" and err["event_id"] == huge[:512]
        await client.send({"type": "session.update", "session": {"type": "realtime", huge: 1}})
        assert (await error_of(client))["code"] == "unknown_parameter"
        await client.send({"type": "session.update", "session": {"type": "realtime", "instructions": huge}})
        assert (await error_of(client))["param"] in ("session", "session.instructions")
        await client.send({"type": "response.create", "response": {"metadata": {"k": huge}}})
        assert (await error_of(client))["param"].startswith("response.metadata")
        await normal_turn(client)


# --- item 7: what one session may hold ----------------------------------------------------------------------
async def test_appends_past_the_buffer_cap_are_refused_whole(serve: Serve) -> None:
    """20 appends of 15 MiB of base64 in manual mode: at most 32 MiB (16 kHz pcm16) is kept."""
    engines = FakeEngines()
    append = "A" * (15 * MiB)  # 11.25 MiB of pcm16 at 24 kHz: 7.5 MiB once at 16 kHz
    async with await session(serve(engines), manual=True, transcribe=True) as client:
        with traced() as usage:
            for n in range(20):
                await client.send({"type": "input_audio_buffer.append", "audio": append, "event_id": f"a{n}"})
            await sync(client)
            held, peak = usage()
        refused = [
            e["error"] for e in client.seen if e["type"] == "error" and e["error"]["event_id"] != "sync"
        ]
        assert len(refused) == 16
        assert {e["code"] for e in refused} == {"input_audio_buffer_too_large"}
        assert [e["event_id"] for e in refused] == [f"a{n}" for n in range(4, 20)]
        assert held < 64 * MiB, held  # 30 MiB of int16 kept (unbounded: 20 x 15 MiB of float32)
        assert peak < 256 * MiB, peak
        await client.send({"type": "input_audio_buffer.commit"})
        await client.until("input_audio_buffer.committed")
        await client.until("conversation.item.input_audio_transcription.completed", timeout=30)
        assert abs(engines.stt.calls[-1].size - 4 * 3_932_160) < 1000  # 4 appends of 3,932,160 samples
        await normal_turn(client)


async def test_20_text_items_of_15_mib_are_refused(serve: Serve) -> None:
    """Their echo (conversation.item.added) could not be sent in a 1 MiB event."""
    text = "x" * (15 * MiB)
    async with await session(serve()) as client:
        with traced() as usage:
            for n in range(20):
                await client.send(user_text(text, event_id=f"t{n}"))
                err = await error_of(client, timeout=30)
                assert (err["code"], err["param"], err["event_id"]) == ("item_too_large", "item", f"t{n}")
            held, _ = usage()
        assert held < 48 * MiB, held  # unbounded: +390 MB
        await normal_turn(client)


async def test_20_audio_items_of_15_mib_stay_within_the_session_bytes(serve: Serve) -> None:
    """Accepted (11.25 MiB each as received); the conversation forgets old audio past 128 MiB."""
    engines = FakeEngines(stt=_QuietSTT())
    audio = "A" * (15 * MiB)
    async with await session(serve(engines)) as client:
        with traced() as usage:
            for n in range(20):
                await client.send(user_audio(audio, event_id=f"i{n}"))
                await client.until("conversation.item.done", timeout=30)
            await sync(client)
            held, _ = usage()
        assert held < 160 * MiB, held  # 128 MiB of int16 at most (unbounded: 20 x 7.5 MiB + copies)
        await normal_turn(client)


async def test_item_size_count_and_total_bounds(serve: Serve) -> None:
    url = serve(realtime_max_items=8, realtime_max_item_bytes=4096, realtime_max_session_bytes=MiB)
    async with await session(url) as client:
        await client.send(user_text("x" * 5000, event_id="big"))
        err = await error_of(client)
        assert (err["code"], err["param"], err["event_id"]) == ("item_too_large", "item", "big")
        await client.send(user_audio("A" * 8000, event_id="big-audio"))  # 6000 bytes decoded
        assert (await error_of(client))["code"] == "item_too_large"
        ids = []
        for n in range(8):
            await client.send(user_text(f"item {n}"))
            ids.append((await client.until("conversation.item.done"))[-1]["item"]["id"])
        await client.send(user_text("one too many", event_id="ninth"))
        err = await error_of(client)
        assert (err["code"], err["param"], err["event_id"]) == (
            "conversation_too_many_items",
            "item",
            "ninth",
        )
        await client.send({"type": "conversation.item.delete", "item_id": ids.pop(0)})
        await client.until("conversation.item.deleted")
        await normal_turn(client)  # a text item and the assistant's reply: the oldest item makes room
        await client.send({"type": "conversation.item.retrieve", "item_id": ids[0]})
        assert (await error_of(client))["code"] == "item_not_found"
        await client.send({"type": "conversation.item.retrieve", "item_id": ids[1]})
        assert (await client.recv())["type"] == "conversation.item.retrieved"


async def test_total_conversation_bytes(serve: Serve) -> None:
    async with await session(serve(realtime_max_session_bytes=MiB)) as client:
        for _ in range(2):
            await client.send(user_text("z" * 400_000))
            await client.until("conversation.item.done")
        await client.send(user_text("z" * 400_000, event_id="third"))
        err = await error_of(client)
        assert (err["code"], err["param"], err["event_id"]) == ("conversation_too_large", "item", "third")
        await client.send({"type": "response.create", "response": {"conversation": "none"}})
        await client.until("response.done")


async def test_out_of_band_responses_are_capped(serve: Serve) -> None:
    """20 at once: the session's limit (2) run, the others get rate_limit_exceeded."""
    engines = FakeEngines()
    engines.llm.engine.script = words_reply("one two three four five six seven eight nine ten")
    engines.llm.engine.delay = 0.05
    async with await session(serve(engines)) as client:
        for n in range(20):
            await client.send(
                {"type": "response.create", "event_id": f"r{n}", "response": {"conversation": "none"}}
            )
        await sync(client)
        for _ in range(2):
            await client.until("response.done")
        created = [e for e in client.seen if e["type"] == "response.created"]
        refused = [
            e["error"] for e in client.seen if e["type"] == "error" and e["error"]["event_id"] != "sync"
        ]
        assert len(created) == 2 and len(refused) == 18
        assert {(e["type"], e["code"]) for e in refused} == {("rate_limit_error", "rate_limit_exceeded")}
        await normal_turn(client)


# --- item 7: time ---------------------------------------------------------------------------------------------
async def test_an_idle_session_is_closed(serve: Serve) -> None:
    url = serve(realtime_idle_timeout_s=0.6)
    async with await session(url) as client:
        for _ in range(6):  # events keep it open
            await asyncio.sleep(0.2)
            await client.send({"type": "input_audio_buffer.clear"})
            assert (await client.recv())["type"] == "input_audio_buffer.cleared"
        err = await error_of(client, timeout=3)
        assert err["code"] == "session_idle_timeout" and err["type"] == "invalid_request_error"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.recv(3)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            1008,
            "invalid_request_error.session_idle_timeout",
        )
    async with await session(url) as client:
        await normal_turn(client)


async def test_a_session_is_closed_at_its_expires_at(serve: Serve) -> None:
    url = serve(realtime_max_session_s=1.5)
    client = await connect(url)
    async with client:
        opened = time.time()
        created = await client.recv()
        assert abs(created["session"]["expires_at"] - (opened + 1.5)) <= 1.1
        await client.send({"type": "input_audio_buffer.clear"})
        await client.recv()
        err = await error_of(client, timeout=3)
        assert err["code"] == "session_expired" and "maximum duration" in err["message"]
        assert time.time() - opened >= 1.3
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.recv(3)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


# --- the conversation's bounds, unit by unit ----------------------------------------------------------------
def _audio_item(item_id: str, samples: int, transcript: str = "heard") -> Item:
    clip = AudioClip(16000)
    clip.append(np.ones(samples, np.int16))
    return Item(
        item_id, "message", role="user", content=[Content("input_audio", transcript=transcript, audio=clip)]
    )


def test_server_items_make_room_oldest_audio_first_then_oldest_items() -> None:
    removed: list[str] = []
    conv = Conversation(Limits(items=4, total_bytes=10_000), on_remove=lambda item: removed.append(item.id))
    for n in range(3):
        conv.insert(_audio_item(f"a{n}", 2000))  # 4,005 bytes each
    items = list(conv)
    assert [i.content[0].audio is None for i in items] == [True, False, False]  # audio forgotten, text kept
    assert removed == [] and conv.nbytes() <= 10_000
    for n in range(3):
        conv.insert(Item(f"t{n}", "message", role="assistant", content=[Content("output_text", text="ok")]))
    assert [i.id for i in conv] == ["a2", "t0", "t1", "t2"] and removed == ["a0", "a1"]


def test_client_items_past_a_bound_are_refused_without_side_effects() -> None:
    conv = Conversation(Limits(items=8, total_bytes=10_000))
    pending = _audio_item("p", 4000)
    pending.content[0].transcribed = asyncio.Event()  # still being transcribed: its audio is kept
    conv.add(pending)
    with pytest.raises(APIError) as info:
        conv.add(Item("big", "message", role="user", content=[Content("input_text", text="x" * 3000)]))
    assert (info.value.code, info.value.param) == ("conversation_too_large", "item")
    assert [i.id for i in conv] == ["p"] and pending.content[0].audio is not None
    for n in range(7):
        conv.add(Item(f"s{n}", "message", role="user", content=[Content("input_text", text="s")]))
    with pytest.raises(APIError) as info:
        conv.add(Item("ninth", "message", role="user", content=[Content("input_text", text="s")]))
    assert info.value.code == "conversation_too_many_items" and len(conv) == 8
