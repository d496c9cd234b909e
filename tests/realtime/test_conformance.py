"""Realtime conformance (issue 12): the strict event harness itself, and one tour per dialect that makes
the server send every event it can build, each validated against OpenAI's types by the harness.

Every realtime test runs under the harness (``conftest.strict_server_events``); the tours add the
guarantee that nothing is left out: the set of event types they must see is read from
``ServerEvents`` itself, so an event builder added later fails here until a tour sends its event.
"""

from __future__ import annotations

import base64
import inspect
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
from rt_fakes import Client, FakeEngines, connect, silence, tone, tool_or_text, words_reply
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from strict_events import Recorder, StrictEventError, dialect_of, undeclared, validate

from localrt.realtime import server_events
from localrt.realtime.events import Dialect
from localrt.realtime.server_events import ServerEvents
from localrt.serving import serve_in_thread

pytestmark = pytest.mark.anyio

BETA = {"OpenAI-Beta": "realtime=v1"}
BETA_OFFER: Any = ["realtime", "openai-beta.realtime-v1"]
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
LONG_REPLY = " ".join(f"Sentence number {i} is here." for i in range(40))


def content_part_event(part_type: str, *, done: bool = False) -> str:
    kind = "response.content_part.done" if done else "response.content_part.added"
    return (
        f'{{"type":"{kind}","event_id":"event_1","response_id":"resp_1","item_id":"item_1",'
        f'"output_index":0,"content_index":0,"part":{{"type":"{part_type}","transcript":""}}}}'
    )


# --- the harness ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", ["ga", "beta"])
@pytest.mark.parametrize("bad", ["output_audio", "output_text"])
def test_harness_rejects_the_old_ga_content_part_type(dialect: Dialect, bad: str) -> None:
    """What the server sent in GA before issue 12, and what the Python Agents SDK turned into errors."""
    with pytest.raises(StrictEventError) as info:
        validate(content_part_event(bad), dialect)
    message = str(info.value)
    assert f"{dialect} event 'response.content_part.added'" in message
    assert f'part.type = "{bad}"' in message and "'text' or 'audio'" in message
    for good in ("audio", "text"):
        validate(content_part_event(good, done=True), dialect)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"type":"response.output_text.delta","event_id":"e"}', "response_id"),  # missing fields
        ('{"type":"input_audio_buffer.cleared","event_id":7}', "event_id = 7"),  # no int -> str in strict
        ('{"type":"response.magic","event_id":"e"}', "does not match any of the expected tags"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_harness_names_type_field_and_value(raw: str, field: str) -> None:
    with pytest.raises(StrictEventError, match=re.escape(field)):
        validate(raw, "ga")


def test_harness_knows_the_dialects_apart() -> None:
    # GA-only and beta-only names are refused by the other dialect's union.
    added = (
        '{"type":"conversation.item.added","event_id":"e","previous_item_id":null,'
        '"item":{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}}'
    )
    validate(added, "ga")
    with pytest.raises(StrictEventError, match="does not match any of the expected tags"):
        validate(added, "beta")
    with pytest.raises(StrictEventError):
        validate('{"type":"response.text.done","event_id":"e"}', "ga")


def test_undeclared_fields_are_listed() -> None:
    model = validate('{"type":"input_audio_buffer.cleared","event_id":"e","padding":"xx"}', "ga")
    assert list(undeclared(model)) == ["padding"]


@pytest.fixture
def old_server_url() -> Iterator[str]:
    """A server that answers every realtime client with the GA content part localrt sent before issue 12."""

    async def realtime(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(content_part_event("output_audio"))
        await ws.receive_text()

    app = Starlette(routes=[WebSocketRoute("/v1/realtime", realtime)])
    with serve_in_thread(app) as url:
        yield url


async def test_harness_checks_what_every_client_receives(
    fake_ws_url: str, old_server_url: str, strict_server_events: Recorder
) -> None:
    """The raw client (fast tests) and the openai SDK (slow tests) both fail at the ``recv`` of a bad event."""
    for headers, offered, dialect in (({}, None, "ga"), (BETA, None, "beta"), ({}, BETA_OFFER, "beta")):
        async with await connect(fake_ws_url, additional_headers=headers, subprotocols=offered) as client:
            assert dialect_of(client.conn) == dialect
            await client.recv()
    checked = strict_server_events.checked
    async with await connect(old_server_url.replace("http", "ws") + "/v1/realtime") as client:
        with pytest.raises(StrictEventError, match=r"part\.type"):
            await client.recv()
    sdk = openai.AsyncOpenAI(base_url=old_server_url + "/v1", api_key="unused")
    async with sdk.realtime.connect(model="gpt-realtime") as conn:
        with pytest.raises(StrictEventError, match=r"part\.type"):
            await conn.recv()
    await sdk.close()
    assert strict_server_events.checked == checked + 2
    assert len(strict_server_events.failures) == 2
    strict_server_events.failures.clear()  # expected here: do not fail the test at teardown


# --- fields echoed without being acted on ---------------------------------------------------------------------
ECHOED = {
    "tracing": {"workflow_name": "support", "group_id": "g1", "metadata": {"k": "v"}},
    "truncation": {
        "type": "retention_ratio",
        "retention_ratio": 0.5,
        "token_limits": {"post_instructions": 9},
    },
    "prompt": {"id": "pmpt_1", "version": "2", "variables": {"city": "Paris"}},
    "include": ["item.input_audio_transcription.logprobs"],
}


@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_echoed_session_fields_are_typed(fake_ws_url: str, dialect: Dialect) -> None:
    """Found by the harness under fuzzing: these were echoed whatever they held (``truncation: [null]``)."""
    async with await connect(fake_ws_url, additional_headers=BETA if dialect == "beta" else {}) as client:
        tour = Tour(client, dialect)
        await client.recv()
        session = (await tour.update(ECHOED, ECHOED))["session"]
        assert {k: session[k] for k in ECHOED} == ECHOED
        for field, bad in (
            ("truncation", [None, "x"]),
            ("truncation", {"type": "retention_ratio", "retention_ratio": 2}),
            ("tracing", {"workflow": 1}),
            ("prompt", {"id": 5}),
            ("include", ["everything"]),
        ):
            update = {field: bad} if dialect == "beta" else {"type": "realtime", field: bad}
            await client.send({"type": "session.update", "event_id": "bad", "session": update})
            err = (await client.until("error"))[-1]["error"]
            assert err["event_id"] == "bad" and err["param"].startswith(f"session.{field}"), err


async def test_beta_gets_a_custom_voice_by_name(fake_ws_url: str) -> None:
    """Found by the harness under fuzzing: GA's ``{"id": ...}`` voice was echoed to beta clients, whose
    types take a string (in ``session`` and in ``response``)."""
    async with await connect(fake_ws_url, additional_headers=BETA) as client:
        tour = Tour(client, "beta")
        await client.recv()
        assert (await tour.update({}, {"voice": {"id": "fake-voice"}}))["session"]["voice"] == "fake-voice"
        await tour.say("Hi")
        assert (await tour.respond(audio=True))[-1]["response"]["voice"] == "fake-voice"


# --- every event the server builds, in both dialects ----------------------------------------------------------
def events_the_server_builds(dialect: Dialect) -> set[str]:
    """Event types named in ``ServerEvents``, renamed (or dropped) for beta as the class does."""
    source = inspect.getsource(ServerEvents)
    names = set(re.findall(r'"((?:[a-z_]+\.)+[a-z_]+)"', source)) | {"error", "session.created"}
    names |= {"session.updated"}
    if dialect == "ga":
        return names
    beta = {server_events._BETA_NAMES.get(n, n) for n in names if n not in server_events._GA_ONLY}
    return beta | {"transcription_session.created", "transcription_session.updated"}


class Tour:
    """One dialect's client: the same steps, written in GA or beta shape."""

    def __init__(self, client: Client, dialect: Dialect) -> None:
        self.client = client
        self.beta = dialect == "beta"

    def name(self, ga: str) -> str:
        return server_events._BETA_NAMES.get(ga, ga) if self.beta else ga

    async def update(self, ga: dict[str, Any], beta: dict[str, Any]) -> dict[str, Any]:
        session = beta if self.beta else {"type": "realtime", **ga}
        await self.client.send({"type": "session.update", "session": session})
        return (await self.client.until("session.updated"))[-1]

    async def say(self, text: str) -> None:
        await self.client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )
        await self.client.until(self.name("conversation.item.added"))

    async def respond(self, *, audio: bool, **extra: Any) -> list[dict[str, Any]]:
        modalities = (["audio", "text"] if self.beta else ["audio"]) if audio else ["text"]
        key = "modalities" if self.beta else "output_modalities"
        await self.client.send({"type": "response.create", "response": {key: modalities, **extra}})
        return await self.client.until("response.done")

    async def stream(self, audio: np.ndarray) -> None:
        for start in range(0, audio.size, 2400):
            chunk = base64.b64encode(audio[start : start + 2400].astype("<i2").tobytes()).decode()
            await self.client.send({"type": "input_audio_buffer.append", "audio": chunk})


def vad(**fields: Any) -> dict[str, Any]:
    return {"type": "server_vad", "silence_duration_ms": 300, **fields}


@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_every_server_event_validates(
    fake_ws_url: str, fake_engines: FakeEngines, strict_server_events: Recorder, dialect: Dialect
) -> None:
    headers = BETA if dialect == "beta" else {}
    llm, stt = fake_engines.llm.engine, fake_engines.stt
    assert stt is not None

    # Refused at the handshake: an error, then the close.
    async with await connect(fake_ws_url + "?model=llama-99b", additional_headers=headers) as client:
        assert (await client.recv())["error"]["code"] == "invalid_model"

    async with await connect(fake_ws_url + "?model=gpt-realtime", additional_headers=headers) as client:
        tour = Tour(client, dialect)
        await client.until("session.created")
        await client.send({"type": "nope", "event_id": "e1"})
        assert (await client.until("error"))[-1]["error"]["event_id"] == "e1"

        # A function call the client answers, G.711 output, transcription on, manual turns.
        await tour.update(
            {
                "output_modalities": ["text"],
                "tools": [WEATHER_TOOL],
                "tool_choice": "required",
                "audio": {
                    "input": {"transcription": {"model": "whisper-1"}, "turn_detection": None},
                    "output": {"format": {"type": "audio/pcmu"}},
                },
            },
            {
                "modalities": ["text"],
                "tools": [WEATHER_TOOL],
                "tool_choice": "required",
                "input_audio_transcription": {"model": "whisper-1"},
                "turn_detection": None,
                "output_audio_format": "g711_ulaw",
            },
        )
        llm.script = tool_or_text
        await tour.say("What is the weather in Paris?")
        events = await tour.respond(audio=False)
        call = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": call["call_id"], "output": '{"c": 21}'},
            }
        )
        await client.until(tour.name("conversation.item.added"))
        await tour.update({"tool_choice": "auto"}, {"tool_choice": "auto"})
        assert (
            "The tool said"
            in (await tour.respond(audio=False))[-1]["response"]["output"][0]["content"][0]["text"]
        )

        # An audio reply, then truncate, retrieve and delete it.
        llm.script = words_reply("Paris is lovely in the spring.")
        item = (await tour.respond(audio=True))[-1]["response"]["output"][0]
        await client.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item["id"],
                "content_index": 0,
                "audio_end_ms": 100,
            }
        )
        await client.until("conversation.item.truncated")
        await client.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
        await client.until("conversation.item.retrieved")
        await client.send({"type": "conversation.item.delete", "item_id": item["id"]})
        await client.until("conversation.item.deleted")

        # Out of band, then a cancelled response.
        done = (await tour.respond(audio=False, conversation="none", metadata={"topic": "x"}))[-1]
        assert done["response"]["conversation_id"] is None
        llm.script, llm.delay = words_reply(LONG_REPLY), 0.01
        await client.send({"type": "response.create"})
        await client.until(tour.name("response.output_text.delta"))
        await client.send({"type": "response.cancel"})
        assert (await client.until("response.done"))[-1]["response"]["status"] == "cancelled"

        # Manual commit whose transcription fails; a cleared buffer.
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("whisper exploded")

        stt.stream = broken  # type: ignore[method-assign]
        await tour.stream(tone(0.3))
        await client.send({"type": "input_audio_buffer.commit"})
        await client.until("conversation.item.input_audio_transcription.failed")
        del stt.stream
        await tour.stream(tone(0.2))
        await client.send({"type": "input_audio_buffer.clear"})
        await client.until("input_audio_buffer.cleared")

        # A voice turn with server VAD, barged in on by the next one.
        llm.script, llm.delay = words_reply(LONG_REPLY), 0.01
        await tour.update(
            {"output_modalities": ["audio"], "audio": {"input": {"turn_detection": vad()}}},
            {"modalities": ["audio", "text"], "turn_detection": vad()},
        )
        await tour.stream(np.concatenate([tone(0.5), silence(0.6)]))
        await client.until("conversation.item.input_audio_transcription.completed")
        await client.until(tour.name("response.output_audio.delta"))
        llm.script, llm.delay = words_reply("Yes?"), 0.001
        await tour.stream(np.concatenate([tone(0.5), silence(0.6)]))
        events = await client.until("input_audio_buffer.speech_stopped")
        assert any(e["type"] == "response.done" and e["response"]["status"] == "cancelled" for e in events)
        await client.until("rate_limits.updated")

        # The idle timeout (GA announces it; beta just gets the commit and the response).
        await tour.update(
            {"audio": {"input": {"turn_detection": vad(idle_timeout_ms=500)}}},
            {"turn_detection": vad(idle_timeout_ms=500)},
        )
        await tour.stream(silence(0.2))
        await client.until("input_audio_buffer.committed")
        await client.until("response.done")

    # A transcription-only session.
    async with await connect(fake_ws_url + "?intent=transcription", additional_headers=headers) as client:
        created = (await client.recv())["type"]
        assert created == ("transcription_session.created" if dialect == "beta" else "session.created")
        if dialect == "beta":
            update: dict[str, Any] = {
                "type": "transcription_session.update",
                "session": {"input_audio_transcription": {"model": "whisper-1"}},
            }
        else:
            update = {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                },
            }
        await client.send(update)
        await Tour(client, dialect).stream(np.concatenate([tone(0.5), silence(0.7)]))
        await client.until("conversation.item.input_audio_transcription.completed")

    seen = {kind for d, kind in strict_server_events.kinds if d == dialect}
    missing = events_the_server_builds(dialect) - seen
    assert not missing, f"the {dialect} tour never received: {sorted(missing)}"
    assert not strict_server_events.failures
