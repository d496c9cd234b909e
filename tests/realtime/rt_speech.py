"""Helpers for the realtime tests that run against the real models (speech in, events out)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np

from localrt.audio.resample import resample

# Questions the 135M model answers in plain English (anything about France tempts it into French, which
# the English-only Whisper cannot check).
QUESTION = "What color is the sky?"
QUESTION_2 = "How many legs does a dog have?"
INSTRUCTIONS = "You are a helpful assistant. Answer in English, in one short sentence."
# Semantic turn detection: a question the turn model hears as complete, and a sentence said in two parts
# with a pause after a word no sentence ends on.
COMPLETE = "What color is the sky on a clear day?"
HALF, REST = "I would like to book a table for", "two people."

TIMEOUT = 90.0


async def synthesize(
    tts: Any, texts: tuple[str, ...] = (QUESTION, QUESTION_2, COMPLETE, HALF, REST)
) -> dict[str, np.ndarray]:
    """Piper speech of ``texts``, as int16 at 24 kHz."""
    out = {}
    for text in texts:
        chunk = await tts.synthesize(text)
        out[text] = resample(chunk.samples, chunk.sample_rate, 24000).astype(np.int16)
    return out


def ws_url(server_url: str) -> str:
    return server_url.replace("http://", "ws://") + "/v1"


def b64(samples: np.ndarray) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


async def stream_speech(send: Any, audio: np.ndarray, chunk_ms: int = 100) -> None:
    """At real-time pace: ``chunk_ms`` of audio every ``chunk_ms``, then one second of silence."""
    audio = np.concatenate([np.zeros(4800, np.int16), audio, np.zeros(24000, np.int16)])
    step = 24 * chunk_ms
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, i in enumerate(range(0, audio.size, step)):
        await send(b64(audio[i : i + step]))
        await asyncio.sleep(max(0.0, start + (n + 1) * chunk_ms / 1000 - loop.time()))


async def transcribe_24k(engines: Any, pcm: bytes) -> str:
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    result = await engines.stt.transcribe(resample(samples, 24000, 16000))
    return str(result.text)


async def collect(recv: Any, until: str = "response.done") -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        event = await asyncio.wait_for(recv(), TIMEOUT)
        data = event if isinstance(event, dict) else event.model_dump(exclude_unset=True)
        if data["type"] == "error":
            raise AssertionError(f"unexpected error event {data}")
        events.append(data)
        if data["type"] == until:
            return events
