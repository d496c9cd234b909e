"""Voice turns over /v1/realtime as a real client makes them, and the same work done on the engines.

A turn: a raw WebSocket client streams a spoken question at real-time pace in 20 ms chunks, then silence,
with turn detection on (``server_vad`` by default, or ``semantic_vad``), until the reply's
``response.done``. The client clock gives the user-perceived latency (last voiced sample sent -> first
reply audio delta received), split at the ``speech_stopped`` that ended the turn into the end-of-turn
delay and the compute after it; the server's timing marks (``/debug/timings``) break the server's share
into stages. The floor is the same work on the engines in-process, through their interfaces and with no
server (HTTP, WebSocket, JSON) in between: speech to text on the same utterance, the chat model to its
first speakable clause, text to speech on that clause until its first chunk.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np
import websockets

from localrt.bench.inputs import INSTRUCTIONS, MAX_OUTPUT_TOKENS, Utterance
from localrt.engines import Engines
from localrt.engines.interfaces import Priority
from localrt.engines.types import SamplingParams, TextDelta
from localrt.text.chunker import ClauseChunker

CHUNK_MS = 20
SAMPLES_PER_CHUNK = 24000 * CHUNK_MS // 1000
TURN_TIMEOUT_S = 60.0
# Stage boundaries, in order; consecutive differences are the stages of the server's compute.
STAGES = (
    ("stt", "speech_stopped", "stt_done"),
    ("llm_first_clause", "stt_done", "first_clause"),
    ("tts_first_chunk", "first_clause", "tts_first_chunk"),
    ("rest", "tts_first_chunk", "first_audio_sent"),
)


# The turn detection of each mode, as the bench sets it with session.update (defaults otherwise:
# server_vad waits SERVER_VAD_SILENCE_S of silence).
TURN_DETECTION: dict[str, dict[str, Any]] = {
    "server_vad": {"type": "server_vad"},
    "semantic_vad": {"type": "semantic_vad", "eagerness": "auto"},
}
SERVER_VAD_SILENCE_S = 0.5


@dataclass
class TurnSample:
    question: str
    mode: str = "server_vad"  # the turn detection (a key of TURN_DETECTION)
    session_id: str = ""
    response_id: str = ""
    transcript: str = ""
    reply_transcript: str = ""
    user_perceived_s: float | None = None  # last voiced sample sent -> first audio delta received
    server_compute_s: float | None = None  # speech_stopped -> first audio delta sent (server clock)
    stages_s: dict[str, float] = field(default_factory=dict)
    end_of_turn_s: float | None = None  # last voiced sample sent -> the reply's speech_stopped received
    after_stop_s: float | None = None  # that speech_stopped received -> first audio delta received
    # Client clock, seconds after the first sample was sent: ``last_voiced_sent``, ``resume_sent`` (an
    # incomplete utterance's second part began), ``first_audio_recv`` (the reply's); every speech_stopped.
    clock_s: dict[str, float] = field(default_factory=dict)
    stops_s: list[float] = field(default_factory=list)
    committed: int = 0  # input_audio_buffer.committed events (user items)
    speculation: dict[str, Any] | None = None  # the server's speculative work over the turn (if it says)
    llm_run_s: float | None = None  # chat engine run seconds over the turn (/metrics)
    reply_audio_s: float = 0.0
    input_tokens: int = 0  # the reply's prompt, from response.done's usage
    cached_tokens: int = 0  # of which the model had already evaluated (its KV cache)
    status: str = ""
    reason: str = ""  # why an incomplete response stopped (its status_details.reason)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finished(turn: dict[str, Any]) -> bool:
    """Whether a recorded turn (``TurnSample.to_dict()``) ran to its end: the reply was done, or cut at
    the bench's own ``max_output_tokens`` (the small model sometimes rambles; the whole capped reply was
    still delivered). Anything else (cancelled, failed, timed out, no response) did not complete."""
    status = turn["status"]
    return status == "completed" or (status == "incomplete" and turn.get("reason") == "max_output_tokens")


@dataclass
class FloorSample:
    question: str
    stt_s: float
    llm_first_clause_s: float
    tts_first_chunk_s: float
    first_clause: str

    @property
    def total_s(self) -> float:
        return self.stt_s + self.llm_first_clause_s + self.tts_first_chunk_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_s": self.total_s}


def ws_url(base_url: str) -> str:
    return (
        base_url.replace("http://", "ws://").replace("https://", "wss://") + "/v1/realtime?model=gpt-realtime"
    )


SESSION: dict[str, Any] = {
    "type": "realtime",
    "instructions": INSTRUCTIONS,
    "output_modalities": ["audio"],
    "max_output_tokens": MAX_OUTPUT_TOKENS,
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "whisper-1"},
            "turn_detection": {"type": "server_vad"},
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}},
    },
}


def session_config(mode: str) -> dict[str, Any]:
    """The bench's session with the turn detection of ``mode``."""
    if mode not in TURN_DETECTION:
        raise ValueError(f"unknown turn detection {mode!r}; one of {', '.join(TURN_DETECTION)}")
    audio_input = {**SESSION["audio"]["input"], "turn_detection": dict(TURN_DETECTION[mode])}
    return {**SESSION, "audio": {**SESSION["audio"], "input": audio_input}}


class VoiceClient:
    """One realtime session driven like a microphone; several turns may run in it one after another."""

    def __init__(self, base_url: str, api_key: str | None = None, mode: str = "server_vad") -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.mode = mode
        self.session = session_config(mode)
        self.session_id = ""
        self._ws: Any = None

    async def __aenter__(self) -> VoiceClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._ws = await websockets.connect(
            ws_url(self.base_url), additional_headers=headers, max_size=16 * 1024 * 1024
        )
        created = json.loads(await self._ws.recv())
        if created.get("type") != "session.created":
            raise RuntimeError(f"expected session.created, got {created}")
        self.session_id = created["session"]["id"]
        await self._ws.send(json.dumps({"type": "session.update", "session": self.session}))
        while (event := json.loads(await self._ws.recv()))["type"] != "session.updated":
            if event["type"] == "error":
                raise RuntimeError(f"session.update failed: {event['error']}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ws.close()

    async def turn(
        self,
        utt: Utterance,
        trailing_silence_s: float = 10.0,
        timeout_s: float = TURN_TIMEOUT_S,
        cancel_at_first_audio: bool = False,
    ) -> TurnSample:
        """Stream ``utt`` then silence until the reply's ``response.done``, not counting a response
        cancelled because the user spoke again (the turn ended in a pause and the user went on: the
        reply to the whole utterance comes after). ``cancel_at_first_audio``: once the whole utterance
        was sent, cancel the reply at its first audio (``response.cancel``) instead of waiting for it."""
        sample = TurnSample(question=utt.text, mode=self.mode, session_id=self.session_id)
        clock = sample.clock_s
        done = asyncio.Event()
        start = time.perf_counter()

        async def send() -> None:
            audio = utt.pcm24
            n_speech = len(audio)
            silence = np.zeros(SAMPLES_PER_CHUNK, dtype=np.int16)
            k = 0
            pos = 0
            while not done.is_set():
                if pos < n_speech:
                    chunk = audio[pos : pos + SAMPLES_PER_CHUNK]
                else:
                    chunk = silence
                    if (pos - n_speech) / 24000 > trailing_silence_s:
                        return
                payload = base64.b64encode(chunk.astype("<i2").tobytes()).decode()
                await self._ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": payload}))
                sent = time.perf_counter() - start
                if pos < utt.voiced_end <= pos + len(chunk):
                    clock["last_voiced_sent"] = sent
                if utt.resume_at is not None and pos <= utt.resume_at < pos + len(chunk):
                    clock["resume_sent"] = sent
                pos += len(chunk)
                k += 1
                await asyncio.sleep(max(0.0, start + k * CHUNK_MS / 1000 - time.perf_counter()))

        async def receive() -> None:
            reply_samples = 0
            cancelling = False
            async for raw in self._ws:
                event = json.loads(raw)
                kind = event["type"]
                now = time.perf_counter() - start
                if kind == "input_audio_buffer.speech_stopped":
                    sample.stops_s.append(now)
                elif kind == "input_audio_buffer.committed":
                    sample.committed += 1
                elif kind == "conversation.item.input_audio_transcription.completed":
                    sample.transcript = event["transcript"]
                elif kind == "response.created":
                    sample.response_id = event["response"]["id"]
                    clock.pop("first_audio_recv", None)  # the reply is the last response
                    reply_samples = 0
                elif kind == "response.output_audio.delta":
                    clock.setdefault("first_audio_recv", now)
                    reply_samples += len(base64.b64decode(event["delta"])) // 2
                    if cancel_at_first_audio and not cancelling and "last_voiced_sent" in clock:
                        cancelling = True
                        await self._ws.send(json.dumps({"type": "response.cancel"}))
                elif kind == "response.output_audio_transcript.done":
                    sample.reply_transcript = event["transcript"]
                elif kind == "error":
                    sample.error = json.dumps(event["error"])
                elif kind == "response.done":
                    sample.status = event["response"]["status"]
                    sample.reason = (event["response"].get("status_details") or {}).get("reason") or ""
                    sample.reply_audio_s = reply_samples / 24000
                    usage = event["response"].get("usage") or {}
                    sample.input_tokens = usage.get("input_tokens") or 0
                    details = usage.get("input_token_details") or {}
                    sample.cached_tokens = details.get("cached_tokens") or 0
                    if not (sample.status == "cancelled" and sample.reason == "turn_detected"):
                        return

        sender = asyncio.create_task(send())
        try:
            await asyncio.wait_for(receive(), timeout_s)
        except asyncio.TimeoutError:
            sample.status = "timeout"
        finally:
            done.set()
            await sender
        split_turn(sample)
        return sample

    async def drain(self, timeout_s: float) -> bool:
        """Read events up to the next ``response.done`` (a timed-out turn's late reply), so the next turn
        does not take it for its own; False if none came within ``timeout_s``."""

        async def until_done() -> bool:
            async for raw in self._ws:
                if json.loads(raw)["type"] == "response.done":
                    return True
            return False

        try:
            return await asyncio.wait_for(until_done(), timeout_s)
        except asyncio.TimeoutError:
            return False

    async def server_marks(self, response_id: str) -> dict[str, float]:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            resp = await client.get("/debug/timings", params={"session_id": self.session_id}, headers=headers)
            resp.raise_for_status()
        for entry in resp.json()["data"]:
            if entry["response_id"] == response_id:
                marks: dict[str, float] = entry["marks"]
                return marks
        return {}


def split_turn(sample: TurnSample) -> None:
    """The client-clock latencies of a turn from its clock: user-perceived, and its split at the last
    ``speech_stopped`` before the reply's first audio (the one that ended the turn)."""
    clock = sample.clock_s
    voiced, audio = clock.get("last_voiced_sent"), clock.get("first_audio_recv")
    if voiced is None or audio is None:
        return
    sample.user_perceived_s = audio - voiced
    stops = [t for t in sample.stops_s if t <= audio]
    if stops:
        sample.end_of_turn_s = stops[-1] - voiced
        sample.after_stop_s = audio - stops[-1]


def apply_marks(sample: TurnSample, marks: dict[str, float]) -> None:
    """Fill the server-side numbers of ``sample`` from the server's timing marks."""
    if "speech_stopped" in marks and "first_audio_sent" in marks:
        sample.server_compute_s = marks["first_audio_sent"] - marks["speech_stopped"]
    for name, start, end in STAGES:
        if start in marks and end in marks:
            sample.stages_s[name] = marks[end] - marks[start]


async def run_turn(
    base_url: str, utt: Utterance, api_key: str | None = None, mode: str = "server_vad"
) -> TurnSample:
    async with VoiceClient(base_url, api_key, mode) as client:
        sample = await client.turn(utt)
        if sample.response_id:
            apply_marks(sample, await client.server_marks(sample.response_id))
    return sample


async def floor_turn(engines: Engines, utt: Utterance) -> FloorSample:
    """The same turn's work on the engines in-process, one after another, at a realtime turn's priority:
    speech to text, the chat model to its first clause, text to speech to its first chunk."""
    if engines.stt is None or engines.tts is None:
        raise RuntimeError("the voice floor needs the speech-to-text and text-to-speech engines")
    t0 = time.perf_counter()
    transcription = await engines.stt.transcribe(utt.pcm16k, priority=Priority.REALTIME, text_only=True)
    t1 = time.perf_counter()
    llm = await engines.llm.get(None)
    messages = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": transcription.text.strip()},
    ]
    chunker = ClauseChunker()
    clause = ""
    params = SamplingParams(max_tokens=MAX_OUTPUT_TOKENS)
    async with llm.chat(messages, params=params, priority=Priority.REALTIME) as job:
        async for event in job:
            if isinstance(event, TextDelta):
                clauses = chunker.push(event.text)
                if clauses:
                    clause = clauses[0]
                    break
    if not clause:
        clause = next(iter(chunker.flush()), "")
    t2 = time.perf_counter()
    tts_s = 0.0
    if clause:
        async with engines.tts.stream(clause, priority=Priority.REALTIME) as chunks:
            async for _ in chunks:
                break
        tts_s = time.perf_counter() - t2
    return FloorSample(utt.text, t1 - t0, t2 - t1, tts_s, clause)
