"""Two localrt processes: a back serving chat, transcription and speech (the embedded models), and a
front with no local model at all (``--llm-base-url``, ``--stt-base-url``, ``--tts-base-url`` pointing at
the back; only silero VAD is local), as in README's "Scaling out".

A voice turn through the front completes; killing the back (SIGKILL) in the middle of a turn gives the
client an ``error`` event and a ``failed`` response while the session's socket stays open; a back
restarted on the same port serves the next turn of the same session.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from localrt.catalog import EMBEDDED_VOICE_ID, embedded_voice
from localrt.engines.tts import PiperEngine, read_voice
from localrt.serving import free_port
from tests.audio_helpers import wer
from tests.proc_server import ServerProcess
from tests.realtime.rt_speech import (
    INSTRUCTIONS,
    QUESTION,
    TIMEOUT,
    collect,
    stream_speech,
    synthesize,
    ws_url,
)

pytestmark = pytest.mark.slow

BACK: dict[str, Any] = {"load_stt": True, "load_tts": True, "load_vad": False}


def make_back(port: int | None = None) -> ServerProcess:
    back = ServerProcess(**BACK)
    if port is not None:  # a restart: the same address as before
        back.port = port
        back.url = f"http://127.0.0.1:{port}"
        back.env["LOCALRT_PORT"] = str(port)
    return back


def front_settings(back_url: str) -> dict[str, Any]:
    return {
        "llm_base_url": back_url + "/v1",
        "stt_base_url": back_url + "/v1",
        "tts_base_url": back_url + "/v1",
        "load_stt": True,
        "load_tts": True,
        "load_vad": True,
    }


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    """Piper speech of QUESTION (int16, 24 kHz), without Piper's noise: the same input every run."""
    path = embedded_voice()
    assert path is not None
    tts = PiperEngine(
        [read_voice(EMBEDDED_VOICE_ID, path)], EMBEDDED_VOICE_ID, noise_scale=0.0, noise_w_scale=0.0
    )
    try:
        return asyncio.run(synthesize(tts, (QUESTION,)))[QUESTION]
    finally:
        tts.close()


@pytest.fixture(scope="module")
def back() -> Iterator[ServerProcess]:
    with make_back() as server:
        yield server


def test_the_front_loads_no_local_model() -> None:
    """load_engines with the three base URLs imports none of llama.cpp, faster-whisper or Piper
    (only silero VAD stays local), even with the back not there (yet)."""
    down = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    heavy = ["llama_cpp", "faster_whisper", "ctranslate2", "piper"]
    code = (
        "import json, sys\n"
        "from localrt.engines import load_engines\n"
        "from localrt.settings import Settings\n"
        f"s = Settings(_env_file=None, models_dir='/nonexistent', **{front_settings(down)!r})\n"
        "e = load_engines(s)\n"
        "print(json.dumps([type(e.llm).__name__, type(e.stt).__name__, type(e.tts).__name__, type(e.vad).__name__,\n"
        f"                  [m for m in {heavy!r} if m in sys.modules]]))\n"
        "e.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    llm, stt, tts, vad, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert (llm, stt, tts) == ("RemoteChatModels", "RemoteSpeechToText", "RemoteTextToSpeech")
    assert vad == "SileroVAD"  # the one local model: 2 MB, on the CPU
    assert imported == []


async def _voice_turn(conn: Any, audio: np.ndarray) -> None:
    await stream_speech(lambda chunk: conn.input_audio_buffer.append(audio=chunk), audio, chunk_ms=100)


@pytest.mark.anyio
async def test_voice_turns_through_a_front_survive_a_back_restart(
    back: ServerProcess, question: np.ndarray
) -> None:
    with ServerProcess(**front_settings(back.url)) as front:
        health = (await asyncio.to_thread(httpx.get, front.url + "/health", timeout=10)).json()
        assert health["status"] == "ok", health
        assert {k: v["reachable"] for k, v in health["upstreams"].items()} == {
            "llm": True,
            "stt": True,
            "tts": True,
        }
        assert "loaded whisper" not in front.log_tail(100_000)  # no local model in the front

        client = openai.AsyncOpenAI(
            base_url=front.url + "/v1", api_key="unused", websocket_base_url=ws_url(front.url)
        )
        # the HTTP routes of the front: speech from the back, transcribed by the back
        wav = await client.audio.speech.create(
            model="tts-1", voice="alloy", input="Good morning.", response_format="wav"
        )
        assert len(wav.content) > 24_000  # half a second of 24 kHz s16
        text = await client.audio.transcriptions.create(
            model="whisper-1", file=("speech.wav", wav.content, "audio/wav")
        )
        assert wer("Good morning.", text.text) < 0.3, text.text
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(
                session={
                    "type": "realtime",
                    "instructions": INSTRUCTIONS,
                    "max_output_tokens": 24,
                    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                }
            )
            # 1. the back dies while the turn runs: an error event, a failed response, the socket stays
            await _voice_turn(conn, question)
            events: list[dict[str, Any]] = []
            killed_at = None
            while True:
                event = (await asyncio.wait_for(conn.recv(), TIMEOUT)).model_dump(exclude_unset=True)
                events.append(event)
                if event["type"] == "response.created" and killed_at is None:
                    assert back.proc is not None
                    back.proc.kill()  # SIGKILL: no goodbye to the front
                    back.proc.wait(10)
                    killed_at = time.monotonic()
                if event["type"] == "response.done":
                    break
            assert killed_at is not None
            assert time.monotonic() - killed_at < 15  # a clear error soon, never a hang
            errors = [e for e in events if e["type"] == "error"]
            assert errors, [e["type"] for e in events]
            assert errors[0]["error"]["code"] in ("upstream_unavailable", "upstream_error"), errors[0]
            done = events[-1]["response"]
            assert done["status"] == "failed", done
            assert front.alive(), front.log_tail()
            health = (await asyncio.to_thread(httpx.get, front.url + "/health", timeout=10)).json()
            assert health["status"] == "degraded" and not health["upstreams"]["llm"]["reachable"]

            # 2. the back comes back on the same port: the next turn of the same session works
            restarted = make_back(back.port)
            try:
                await asyncio.to_thread(restarted.start)  # the session's socket stays served meanwhile
                await _voice_turn(conn, question)
                events = await collect(conn.recv)
            finally:
                restarted.__exit__(None, None, None)
        await client.close()
    done = events[-1]["response"]
    assert done["status"] in ("completed", "incomplete"), done
    heard = next(e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert wer(QUESTION, heard["transcript"]) < 0.2, heard["transcript"]
    pcm = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    samples = np.frombuffer(pcm, "<i2")
    assert samples.size > 24000 * 0.3 and np.abs(samples).max() > 1000
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")["transcript"]
    assert transcript.strip()
