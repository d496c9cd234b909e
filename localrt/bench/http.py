"""HTTP endpoints against localrt's own engines called in-process, side by side in one run.

The *engine* side is the same work through the engine interfaces (:mod:`localrt.engines.interfaces`)
with no HTTP, JSON or SSE in between: what the server adds is the difference. Each pair runs back to
back on the same input, alternating which goes first, so both see the same machine state and the same
KV-cache luck.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import numpy as np
import openai

from localrt.audio.codecs import decode, encode
from localrt.bench.inputs import Utterance
from localrt.engines.interfaces import ChatModel, SpeechToText, TextToSpeech
from localrt.engines.types import SamplingParams, TextDelta

# Throughput needs long generations: tokens/s over a one-sentence answer is a handful of intervals,
# mostly jitter. Both sides generate exactly CHAT_MAX_TOKENS tokens from the same prompt at temperature 0.
CHAT_MAX_TOKENS = 200
CHAT_SYSTEM = "You are a helpful assistant."
CHAT_PROMPTS = (
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain in detail how bread is made, step by step.",
    "Describe a journey across a desert on a camel, in many sentences.",
    "Tell a long tale about a robot who learns to paint.",
    "Write a detailed history of an imaginary mountain village.",
    "Describe a busy harbour at dawn in great detail.",
)
SPEECH_TEXT = (
    "Local speech synthesis starts quickly. The first sentence is sent while the rest is made. "
    "That keeps the wait short."
)
PRIME_QUESTION = "Say OK."


def chat_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": question}]


def prime_http(http: httpx.Client) -> None:
    """A one-token request with another question, through the server: leaves only the system prompt
    in the KV cache."""
    resp = http.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-4o",
            "messages": chat_messages(PRIME_QUESTION),
            "max_tokens": 1,
            "temperature": 0,
        },
    )
    resp.raise_for_status()


async def prime_engine(model: ChatModel) -> None:
    """``prime_http`` on the engine in-process."""
    async with model.chat(
        chat_messages(PRIME_QUESTION), params=SamplingParams(temperature=0, max_tokens=1)
    ) as job:
        async for _ in job:
            pass


def _rates(t0: float, first: float | None, end: float, n: int) -> dict[str, float | None]:
    ttft = None if first is None else first - t0
    tps = (n - 1) / (end - first) if first is not None and n > 1 and end > first else None
    return {"ttft_s": ttft, "tokens_per_s": tps, "tokens": n}


def chat_http_client_process(
    base_url: str, api_key: str, question: str, max_tokens: int = CHAT_MAX_TOKENS
) -> dict[str, Any]:
    """``chat_http`` from a client made here: the bench calls this in a child process.

    A real client is another process. Run in the server's own process, the openai client's per-chunk
    parsing would hold the server's interpreter lock and stall llama.cpp's worker between tokens,
    charging the client's cost to the server.
    """
    with openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=120) as client:
        return chat_http(client, question, max_tokens)


def chat_http(client: openai.OpenAI, question: str, max_tokens: int = CHAT_MAX_TOKENS) -> dict[str, Any]:
    t0 = time.perf_counter()
    first = None
    n = 0
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=chat_messages(question),  # type: ignore[arg-type]
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
    )
    for chunk in stream:
        if isinstance(chunk, tuple):
            continue
        if chunk.choices and chunk.choices[0].delta.content:
            n += 1
            if first is None:
                first = time.perf_counter()
    return _rates(t0, first, time.perf_counter(), n)


async def chat_engine(model: ChatModel, question: str, max_tokens: int = CHAT_MAX_TOKENS) -> dict[str, Any]:
    """localrt's chat engine in-process, same prompt and settings, no HTTP: splits the HTTP layer's
    cost from the engine's."""
    t0 = time.perf_counter()
    first = None
    n = 0
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    async with model.chat(chat_messages(question), params=params) as job:
        async for event in job:
            if isinstance(event, TextDelta) and event.text:
                n += 1
                if first is None:
                    first = time.perf_counter()
    return _rates(t0, first, time.perf_counter(), n)


def wav16k(pcm16k: np.ndarray) -> bytes:
    """Float32 16 kHz mono as the WAV file a client uploads."""
    return encode((np.clip(pcm16k, -1.0, 1.0) * 32767).astype(np.int16), 16000, "wav")


def transcription_http(http: httpx.Client, utt: Utterance) -> dict[str, Any]:
    wav = wav16k(utt.pcm16k)
    t0 = time.perf_counter()
    resp = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("q.wav", wav, "audio/wav")},
        data={"model": "whisper-1", "response_format": "json"},
    )
    elapsed = time.perf_counter() - t0
    resp.raise_for_status()
    duration = len(utt.pcm16k) / 16000
    return {"time_s": elapsed, "rtf": elapsed / duration, "text": resp.json()["text"]}


async def transcription_engine(stt: SpeechToText, utt: Utterance) -> dict[str, Any]:
    wav = wav16k(utt.pcm16k)
    t0 = time.perf_counter()
    # The endpoint decodes the upload too (in a worker thread): same work on both sides.
    audio = await asyncio.to_thread(decode, wav, stt.sample_rate)
    result = await stt.transcribe(audio)
    elapsed = time.perf_counter() - t0
    duration = len(utt.pcm16k) / 16000
    return {"time_s": elapsed, "rtf": elapsed / duration, "text": result.text}


def speech_http(http: httpx.Client) -> dict[str, Any]:
    t0 = time.perf_counter()
    first = None
    total = 0
    with http.stream(
        "POST",
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": SPEECH_TEXT, "response_format": "pcm"},
    ) as resp:
        resp.raise_for_status()
        for data in resp.iter_bytes():
            if data and first is None:
                first = time.perf_counter()
            total += len(data)
    return {
        "ttfb_s": None if first is None else first - t0,
        "total_s": time.perf_counter() - t0,
        "bytes": total,
    }


async def speech_engine(tts: TextToSpeech) -> dict[str, Any]:
    t0 = time.perf_counter()
    first = None
    async with tts.stream(SPEECH_TEXT) as chunks:
        async for _ in chunks:
            if first is None:
                first = time.perf_counter()
    return {"ttfb_s": None if first is None else first - t0, "total_s": time.perf_counter() - t0}
