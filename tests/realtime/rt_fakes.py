"""Small fake engines for the realtime loop's fast tests, and a client helper.

- ``FakeLLMPool`` / ``FakeLLM``: replies from a script (a function of the messages), one delta at a time
  with a small delay, so tests can cancel mid-reply; records every prompt and whether each stream was
  closed (a disconnect must close it).
- ``FakeTTS``: a 440 Hz tone per clause, 60 ms per word, at 22,050 Hz like Piper.
- ``FakeSTT``: returns ``transcript`` (settable) as two segments.
- ``FakeVAD``: speech probability from the RMS of each 32 ms window (tones are speech, zeros silence).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import websockets
from starlette.applications import Starlette

from localrt.engines.llm import ChatResult, SamplingParams, TextDelta, ToolCall, ToolCallDelta
from localrt.errors import InvalidRequest, ModelNotFound
from localrt.realtime import endpoint
from localrt.settings import Settings

FAKE_KEY = "sk-fake-realtime"

Script = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None, Any], list[TextDelta | ToolCallDelta]]


def words_reply(text: str) -> Script:
    def script(messages: Any, tools: Any, tool_choice: Any) -> list[TextDelta | ToolCallDelta]:
        return [TextDelta(piece) for piece in _pieces(text)]

    return script


def _pieces(text: str) -> list[str]:
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out.append(word if i == 0 else " " + word)
    return out


def tool_or_text(
    messages: list[dict[str, Any]], tools: Any, tool_choice: Any
) -> list[TextDelta | ToolCallDelta]:
    """Calls the first tool when one is offered and no tool output is in the history yet."""
    if tools and not any(m["role"] == "tool" for m in messages):
        name = tools[0]["function"]["name"]
        args = json.dumps({"city": "Paris"})
        return [
            ToolCallDelta(0, "call_fake1", name, ""),
            ToolCallDelta(0, "call_fake1", name, args[:8]),
            ToolCallDelta(0, "call_fake1", name, args[8:]),
        ]
    tool_out = next((m["content"] for m in messages if m["role"] == "tool"), "")
    return [TextDelta(p) for p in _pieces(f"The tool said {tool_out}.")]


class FakeStream:
    def __init__(self, llm: FakeLLM, events: list[TextDelta | ToolCallDelta], params: SamplingParams) -> None:
        self._llm = llm
        self._events = events
        self._params = params
        self.result = ChatResult()
        self.closed = False
        self._i = 0

    async def __aenter__(self) -> FakeStream:
        self._llm.open_streams += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True
        self._llm.open_streams -= 1

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> TextDelta | ToolCallDelta:
        limit = self._params.max_tokens
        if self._i >= len(self._events) or (limit is not None and self._i >= limit):
            self._finish()
            raise StopAsyncIteration
        await asyncio.sleep(self._llm.delay)
        if self._llm.fail_with is not None:
            raise self._llm.fail_with
        event = self._events[self._i]
        self._i += 1
        self._llm.tokens_generated += 1
        return event

    def _finish(self) -> None:
        texts = [e.text for e in self._events[: self._i] if isinstance(e, TextDelta)]
        calls = [e for e in self._events[: self._i] if isinstance(e, ToolCallDelta)]
        limit = self._params.max_tokens
        finish = (
            "length" if limit is not None and self._i >= limit and self._i < len(self._events) else "stop"
        )
        tool_calls = []
        if calls:
            finish = "tool_calls"
            tool_calls = [ToolCall(calls[0].id, calls[0].name, "".join(c.arguments for c in calls))]
        self.result = ChatResult("".join(texts), tool_calls, finish, 10, self._i, 4)


class FakeLLM:
    id = "fake-llm"
    n_ctx = 4096

    def __init__(self) -> None:
        self.script: Script = words_reply("Paris is the capital of France.")
        self.delay = 0.005
        self.prompts: list[list[dict[str, Any]]] = []
        self.open_streams = 0
        self.tokens_generated = 0
        self.fail_with: Exception | None = None

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Any = None,
        params: SamplingParams | None = None,
        truncate_history: bool = False,
    ) -> FakeStream:
        self.prompts.append(messages)
        return FakeStream(self, self.script(messages, tools, tool_choice), params or SamplingParams())


class FakeLLMPool:
    default_id = "fake-llm"

    def __init__(self) -> None:
        self.engine = FakeLLM()

    def resolve(self, model: str | None) -> str:
        if model is None or model in ("fake-llm",) or model.startswith(("gpt-realtime", "gpt-4o")):
            return self.default_id
        raise ModelNotFound(model)

    def ids(self) -> list[str]:
        return [self.default_id]

    async def get(self, model: str | None) -> FakeLLM:
        self.resolve(model)
        return self.engine


@dataclass
class Chunk:
    samples: np.ndarray
    sample_rate: int
    text: str


class _ChunkStream:
    def __init__(self, chunks: list[Chunk], tts: FakeTTS) -> None:
        self._chunks = chunks
        self._tts = tts
        self._tts.open_streams += 1
        self._closed = False

    def __aiter__(self) -> _ChunkStream:
        return self

    async def __anext__(self) -> Chunk:
        if not self._chunks:
            raise StopAsyncIteration
        await asyncio.sleep(self._tts.delay)
        return self._chunks.pop(0)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._tts.open_streams -= 1

    async def __aenter__(self) -> _ChunkStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class FakeTTS:
    rate = 22050
    voices_ok = ("alloy", "ash", "echo", "fake-voice")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.open_streams = 0
        self.delay = 0.0

    def resolve_voice(self, name: str | None) -> Any:
        if name is not None and name not in self.voices_ok:
            raise InvalidRequest(f"Unknown voice '{name}'.", param="voice")
        return name

    def stream(self, text: str, *, voice: str | None = None, speed: float = 1.0) -> _ChunkStream:
        self.resolve_voice(voice)
        self.texts.append(text)
        n = int(self.rate * 0.06 * max(1, len(text.split())) / speed)
        t = np.arange(n) / self.rate
        samples = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        return _ChunkStream([Chunk(samples, self.rate, text)], self)


@dataclass
class Seg:
    text: str


class _SegStream:
    def __init__(self, segments: list[Seg]) -> None:
        self._segments = segments

    async def __aenter__(self) -> _SegStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> AsyncIterator[Seg]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[Seg]:
        for seg in self._segments:
            await asyncio.sleep(0.001)
            yield seg


class FakeSTT:
    id = "fake-whisper"
    languages = ("en",)

    def __init__(self) -> None:
        self.transcript = "What is the capital of France?"
        self.calls: list[np.ndarray] = []

    def stream(
        self, audio: np.ndarray, *, language: str | None = None, prompt: str | None = None
    ) -> _SegStream:
        self.calls.append(audio)
        words = self.transcript.split(" ")
        half = len(words) // 2
        return _SegStream([Seg(" " + " ".join(words[:half])), Seg(" " + " ".join(words[half:]))])


class _VADStream:
    def __init__(self) -> None:
        self._pending = np.zeros(0, np.float32)

    async def process(self, samples: np.ndarray) -> list[float]:
        x = np.concatenate([self._pending, samples])
        n = x.size // 512
        probs = [0.95 if np.sqrt(np.mean(x[k * 512 : (k + 1) * 512] ** 2)) > 0.02 else 0.02 for k in range(n)]
        self._pending = x[n * 512 :]
        return probs


class FakeVAD:
    def stream(self) -> _VADStream:
        return _VADStream()


@dataclass
class FakeEngines:
    llm: FakeLLMPool = field(default_factory=FakeLLMPool)
    stt: FakeSTT | None = field(default_factory=FakeSTT)
    tts: FakeTTS | None = field(default_factory=FakeTTS)
    vad: FakeVAD | None = field(default_factory=FakeVAD)


def FakeSettings(**overrides: Any) -> Settings:
    """Real settings for the fake-engine servers: no .env file, no models folder."""
    return Settings(_env_file=None, models_dir="/nonexistent", **overrides)  # type: ignore[call-arg]


def make_app(engines: Any, settings: Any) -> Starlette:
    app = Starlette(routes=endpoint.routes)
    app.state.engines = engines
    app.state.settings = settings
    return app


# --- audio helpers ------------------------------------------------------------------------------------------
def tone(seconds: float, rate: int = 24000, freq: float = 300.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def silence(seconds: float, rate: int = 24000) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.int16)


# --- a raw client -------------------------------------------------------------------------------------------
class Client:
    """A raw ``websockets`` client with timeouts, for ordering assertions."""

    def __init__(self, conn: websockets.ClientConnection) -> None:
        self.conn = conn
        self.seen: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> None:
        await self.conn.send(json.dumps(event))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(self.conn.recv(), timeout))
        self.seen.append(event)
        return event

    async def until(self, kind: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every event up to and including the first of type ``kind``."""
        got: list[dict[str, Any]] = []
        while True:
            event = await self.recv(timeout)
            got.append(event)
            if event["type"] == kind:
                return got

    async def expect_quiet(self, seconds: float = 0.2) -> None:
        try:
            event = await asyncio.wait_for(self.conn.recv(), seconds)
        except (asyncio.TimeoutError, TimeoutError):
            return
        raise AssertionError(f"unexpected event {event!r}")

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.conn.close()


async def connect(url: str, **kwargs: Any) -> Client:
    conn = await websockets.connect(url, max_size=None, **kwargs)
    return Client(conn)
