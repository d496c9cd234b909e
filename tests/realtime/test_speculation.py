"""Issue 16 against the real server and models: speculative replies and semantic_vad with Smart Turn.

- server_vad: a pause inside the turn discards the reply held in it, and nothing of it reaches the client;
  the reply computed in the final silence is the one the client gets (the turn's timing marks say it was
  held), with the usual event order.
- semantic_vad: a complete question ends well before the silence cap (the turn model said so), and a
  sentence paused after "for" is not cut there: one turn, one transcript with both parts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from rt_fakes import Client
from rt_speech import COMPLETE, HALF, INSTRUCTIONS, QUESTION, QUESTION_2, REST, TIMEOUT, b64, ws_url

from localrt.bench.inputs import last_voiced

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CHUNK_MS = 100


class Talk:
    """One realtime session: audio sent at real-time pace while a task records every server event."""

    def __init__(self, ws: Any) -> None:
        self.client = Client(ws)
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())
        self.session_id = ""

    async def _read(self) -> None:
        while True:
            event = await self.client.recv(TIMEOUT)
            assert event["type"] != "error", event
            if event["type"] == "session.created":
                self.session_id = event["session"]["id"]
            self.events.append(event)

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def update(self, session: dict[str, Any]) -> None:
        n = len(self.events)
        await self.client.send({"type": "session.update", "session": {"type": "realtime", **session}})
        await self.wait_for("session.updated", after=n)

    async def say(self, *parts: np.ndarray) -> None:
        for part in parts:
            for i in range(0, part.size, 24 * CHUNK_MS):
                await self.client.send(
                    {"type": "input_audio_buffer.append", "audio": b64(part[i : i + 24 * CHUNK_MS])}
                )
                await asyncio.sleep(CHUNK_MS / 1000)

    async def silence_until(self, kind: str, max_ms: int) -> int:
        """Silence at real-time pace until ``kind`` arrives; the ms of silence it took."""
        n, sent = len(self.events), 0
        chunk = np.zeros(24 * CHUNK_MS, np.int16)
        while kind not in self.kinds()[n:]:
            assert sent <= max_ms, f"no {kind} after {sent} ms of silence"
            await self.say(chunk)
            sent += CHUNK_MS
        return sent

    async def wait_for(self, kind: str, after: int = 0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            found = [e for e in self.events[after:] if e["type"] == kind]
            if found:
                return found[0]
            assert asyncio.get_running_loop().time() < deadline, f"no {kind}"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._reader.cancel()


async def speculation_totals(server_url: str, session_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    async with httpx.AsyncClient(base_url=server_url) as http:
        body = (await http.get("/debug/timings", params={"session_id": session_id})).json()
    return body["speculation"], body["data"]


async def open_talk(server_url: str, session: dict[str, Any]) -> tuple[Any, Talk]:
    ws = await websockets.connect(ws_url(server_url) + "/realtime?model=gpt-realtime", max_size=None)
    talk = Talk(ws)
    await talk.wait_for("session.created")
    await talk.update(session)
    return ws, talk


SERVER_VAD = {
    "instructions": INSTRUCTIONS,
    "max_output_tokens": 30,
    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
}


async def test_a_pause_inside_the_turn_discards_the_held_reply(
    server_url: str, speech: dict[str, np.ndarray]
) -> None:
    ws, talk = await open_talk(server_url, SERVER_VAD)
    try:
        before, _ = await speculation_totals(server_url, talk.session_id)
        first = speech[QUESTION][: last_voiced(speech[QUESTION], 24000)]  # without Piper's trailing silence
        pause = np.zeros(24 * 300, np.int16)  # past the start of speculation, short of the 500 ms window
        await talk.say(first, pause, speech[QUESTION_2])
        await talk.silence_until("response.done", max_ms=30_000)
    finally:
        await talk.close()
        await ws.close()
    kinds = talk.kinds()
    for kind in ("input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "response.created"):
        assert kinds.count(kind) == 1, kinds
    order = [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "response.created",
        "response.output_audio.delta",
        "response.done",
    ]
    assert [kinds.index(k) for k in order] == sorted(kinds.index(k) for k in order)  # the usual order
    transcript = next(
        e for e in talk.events if e["type"] == "conversation.item.input_audio_transcription.completed"
    )["transcript"].lower()
    assert "sky" in transcript and "legs" in transcript  # one turn, both questions
    after, entries = await speculation_totals(server_url, talk.session_id)
    assert after["discarded"]["count"] > before["discarded"]["count"]  # the reply held in the pause
    assert after["used"]["count"] == before["used"]["count"] + 1  # the reply held at the turn's end
    assert "reply_held" in entries[-1]["marks"]  # the response took over the held LLM job


async def test_semantic_vad_ends_complete_turns_early_and_waits_through_a_halfway_pause(
    server_url: str, speech: dict[str, np.ndarray]
) -> None:
    semantic = {
        "audio": {
            "input": {
                "transcription": {"model": "whisper-1"},
                "turn_detection": {"type": "semantic_vad", "eagerness": "auto", "create_response": False},
            }
        }
    }
    ws, talk = await open_talk(server_url, semantic)
    try:
        await talk.say(speech[COMPLETE])
        waited = await talk.silence_until("input_audio_buffer.speech_stopped", max_ms=5_000)
        assert waited < 1000, waited  # the turn model ended it, not the 4 s cap (nor the 1 s settle)
        n = len(talk.events)
        await talk.say(speech[HALF], np.zeros(24 * 700, np.int16), speech[REST])
        await talk.silence_until("input_audio_buffer.speech_stopped", max_ms=5_000)
        done = await talk.wait_for("conversation.item.input_audio_transcription.completed", after=n)
    finally:
        await talk.close()
        await ws.close()
    assert talk.kinds()[n:].count("input_audio_buffer.speech_stopped") == 1  # not cut after "for"
    assert "two people" in done["transcript"].lower(), done["transcript"]
