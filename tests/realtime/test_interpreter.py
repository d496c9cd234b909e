"""The built-in interpreter pipeline with the real models: spoken English comes back spoken translated.

Real Piper speech of an English question is streamed at real-time pace to a session opened with
``?pipeline=interpreter&target=French``; silero ends the turn, Whisper transcribes it, SmolLM2 translates
it with the interpreter's own prompt, Piper speaks it. The reply audio is transcribed back with Whisper:
it must differ from what the user said (a translation, not an echo), and no assistant item may have been
added to the conversation (the interpreter answers out of band).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import numpy as np
import pytest
from rt_fakes import Client, connect
from rt_speech import QUESTION, TIMEOUT, stream_speech, transcribe_24k, ws_url

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


def words(text: str) -> str:
    return " ".join(re.findall(r"[a-z']+", text.lower()))


async def until(client: Client, kind: str) -> list[dict[str, Any]]:
    events = await client.until(kind, TIMEOUT)
    errors = [e for e in events if e["type"] == "error"]
    assert not errors, errors
    return events


async def test_interpreter_speaks_the_translation(
    server_url: str, engines: Any, speech: dict[str, np.ndarray]
) -> None:
    url = ws_url(server_url) + "/realtime?model=gpt-realtime&pipeline=interpreter&target=French"
    async with await connect(url) as client:
        assert (await client.recv())["type"] == "session.created"
        transcription = {"model": "whisper-1"}
        session = {"type": "realtime", "audio": {"input": {"transcription": transcription}}}
        await client.send({"type": "session.update", "session": session})
        await until(client, "session.updated")

        async def send(audio: str) -> None:
            await client.send({"type": "input_audio_buffer.append", "audio": audio})

        await stream_speech(send, speech[QUESTION])
        events = await until(client, "response.done")
        response = events[-1]["response"]
        output_ids = [item["id"] for item in response["output"]]
        for item_id in output_ids:  # not in the conversation: retrieving it fails
            await client.send({"type": "conversation.item.retrieve", "item_id": item_id})
            refused = await client.until("error", TIMEOUT)
            assert refused[-1]["error"]["code"] == "item_not_found"

    heard_input = next(
        e["transcript"]
        for e in events
        if e["type"] == "conversation.item.input_audio_transcription.completed"
    )
    assert words(heard_input) == words(QUESTION), heard_input
    assert response["status"] == "completed", response
    assert response["conversation_id"] is None and response["metadata"] == {"pipeline": "interpreter"}
    assert output_ids, "no output item"
    added = [e["item"] for e in events if e["type"] == "conversation.item.added"]
    assert [item["role"] for item in added] == ["user"]  # the user's turn only: no assistant reply item

    pcm = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    samples = np.frombuffer(pcm, "<i2")
    assert samples.size > 24000 * 0.3 and np.abs(samples).max() > 1000, "the translation is not spoken"
    heard_output = await transcribe_24k(engines, pcm)
    spoken = next(e["transcript"] for e in events if e["type"] == "response.output_audio_transcript.done")
    assert words(heard_output) != words(heard_input), (spoken, heard_output)
    assert words(spoken) != words(heard_input), spoken
