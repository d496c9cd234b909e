"""Small fake engines for the realtime loop's fast tests, and a client helper.

Every fake runs its work through the REAL engine scheduler (:mod:`localrt.engines.scheduler`) with the
real engine's number of workers, so queued jobs really queue: a test can see priorities, a full queue, and
whether cancelling a queued job waits on another session's job.

- ``FakeLLMPool`` / ``FakeLLM``: replies from a script (a function of the messages), one delta per
  ``delay`` seconds of the single worker, so tests can cancel mid-reply; records every prompt, cache key
  and priority, and whether each stream was closed (a disconnect must close it).
- ``FakeTTS``: a 440 Hz tone per clause, 60 ms per word, at 22,050 Hz like Piper.
- ``FakeSTT``: returns ``transcript`` (settable) as two segments.
- ``FakeVAD``: speech probability from the RMS of each 32 ms window (tones are speech, zeros silence).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar

import numpy as np
import websockets
from starlette.applications import Starlette

from localrt.engines.scheduler import Job, JobControl, Priority, Scheduler, SchedulerStats
from localrt.engines.types import ChatResult, SamplingParams, TextDelta, ToolCall, ToolCallDelta
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
    """One fake generation, run by the pool's REAL scheduler (one worker, like llama.cpp): a job queued
    behind another session's job really waits, and cancelling it must not."""

    def __init__(
        self,
        llm: FakeLLM,
        events: list[TextDelta | ToolCallDelta],
        params: SamplingParams,
        priority: Priority,
    ) -> None:
        self._llm = llm
        self._events = events
        self._params = params
        self._priority = priority
        self.result = ChatResult()
        self.prompt_text = ""
        self.closed = False
        self._job: Job[TextDelta | ToolCallDelta] | None = None
        self._i = 0

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()

    async def __aenter__(self) -> FakeStream:
        llm, events, limit = self._llm, self._events, self._params.max_tokens

        def produce(stop: JobControl) -> Iterator[TextDelta | ToolCallDelta]:
            for i, event in enumerate(events):
                if limit is not None and i >= limit:
                    return
                time.sleep(llm.delay)  # "a token": the worker is busy, as llama.cpp's is
                if stop.is_set():
                    return
                if llm.fail_with is not None:
                    raise llm.fail_with
                llm.tokens_generated += 1
                yield event

        self._job = self._llm.scheduler.submit(produce, priority=self._priority)
        self._llm.open_streams += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.closed:
            self.closed = True
            self._llm.open_streams -= 1
        if self._job is not None:
            await self._job.aclose()

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> TextDelta | ToolCallDelta:
        if self._job is None:
            raise RuntimeError("enter the stream first")
        try:
            event = await self._job.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise
        self._i += 1
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
    vision = False  # ChatModel's image flags (a test may set them on an instance)
    image_urls = False

    def __init__(self, scheduler: Scheduler | None = None) -> None:
        self.script: Script = words_reply("Paris is the capital of France.")
        self.delay = 0.005
        self.prompts: list[list[dict[str, Any]]] = []
        self.cache_keys: list[str | None] = []
        self.priorities: list[Priority] = []
        self.open_streams = 0
        self.tokens_generated = 0
        self.fail_with: Exception | None = None
        self.scheduler = scheduler or Scheduler("llm:fake-llm", slots=1, max_queue=32)

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Any = None,
        params: SamplingParams | None = None,
        truncate_history: bool = False,
        priority: Priority = Priority.HTTP,
        cache_key: str | None = None,
    ) -> FakeStream:
        self.prompts.append(messages)
        self.cache_keys.append(cache_key)
        self.priorities.append(priority)
        events = self.script(messages, tools, tool_choice)
        return self._stream(events, params or SamplingParams(), priority)

    def _stream(
        self, events: list[TextDelta | ToolCallDelta], params: SamplingParams, priority: Priority
    ) -> Any:
        return FakeStream(self, events, params, priority)

    def stats(self) -> list[SchedulerStats]:
        return [self.scheduler.stats()]


class EngineStreamLLM(FakeLLM):
    """A :class:`FakeLLM` whose streams are the real engine's :class:`~localrt.engines.llm_stream.ChatStream`
    over the fake's scheduler: the path a response takes through the in-process LLM engine (queueing,
    the prompt-ready hand-off, cancelling), with a scripted generator in place of llama.cpp."""

    def _stream(
        self, events: list[TextDelta | ToolCallDelta], params: SamplingParams, priority: Priority
    ) -> Any:
        from localrt.engines.llm_stream import ChatStream, Item, Ready

        limit = params.max_tokens
        llm = self

        def work(control: JobControl) -> Iterator[Item]:
            yield Ready(prompt_tokens=10)
            n = 0
            for event in events:
                if limit is not None and n >= limit:
                    break
                time.sleep(llm.delay)
                if control.is_set():
                    return
                if llm.fail_with is not None:
                    raise llm.fail_with
                llm.tokens_generated += 1
                n += 1
                yield event
            finish = "length" if limit is not None and n < len(events) else "stop"
            yield ChatResult("", [], finish, 10, n, 0)

        return ChatStream(self.scheduler, work, priority=priority)


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

    def aliases(self) -> list[str]:
        return []

    def created(self, model_id: str) -> int:
        return 0

    @property
    def loaded_ids(self) -> list[str]:
        return [self.default_id]

    @property
    def busy(self) -> bool:
        return self.engine.scheduler.busy

    async def get(self, model: str | None) -> FakeLLM:
        self.resolve(model)
        return self.engine

    def stats(self) -> list[SchedulerStats]:
        return self.engine.stats()

    def close(self) -> None:
        self.engine.scheduler.close(wait=1.0)


@dataclass
class Chunk:
    samples: np.ndarray
    sample_rate: int
    text: str


class FakeTTS:
    """A 440 Hz tone per text, 60 ms per word, from a real scheduler with two workers (like Piper's)."""

    id = "fake-tts"
    default_voice = "fake-voice"
    rate = 22050
    voices_ok = ("alloy", "ash", "echo", "fake-voice")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.priorities: list[Priority] = []
        self.open_streams = 0
        self.delay = 0.0
        self.scheduler = Scheduler("tts", slots=2, max_queue=32)

    def resolve_voice(self, name: str | None) -> Any:
        if name is not None and name not in self.voices_ok:
            raise InvalidRequest(f"Unknown voice '{name}'.", param="voice")
        return name

    def stream(
        self, text: str, *, voice: str | None = None, speed: float = 1.0, priority: Priority = Priority.HTTP
    ) -> _Counted[Chunk]:
        self.resolve_voice(voice)
        self.texts.append(text)
        self.priorities.append(priority)
        n = int(self.rate * 0.06 * max(1, len(text.split())) / speed)
        t = np.arange(n) / self.rate
        samples = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        delay, chunk = self.delay, Chunk(samples, self.rate, text)

        def produce(stop: JobControl) -> Iterator[Chunk]:
            time.sleep(delay)
            if not stop.is_set():
                yield chunk

        return _Counted(self, self.scheduler.submit(produce, priority=priority, preemptible=True))

    def stats(self) -> list[SchedulerStats]:
        return [self.scheduler.stats()]

    def close(self) -> None:
        self.scheduler.close(wait=1.0)


T = TypeVar("T")


class _Counted(Generic[T]):
    """A job whose owner counts the streams left open (a disconnect must close them)."""

    def __init__(self, owner: Any, job: Job[T]) -> None:
        self._owner = owner
        self._job = job
        self._closed = False
        owner.open_streams += 1

    def __aiter__(self) -> _Counted[T]:
        return self

    async def __anext__(self) -> T:
        return await self._job.__anext__()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._owner.open_streams -= 1
        await self._job.aclose()

    async def __aenter__(self) -> _Counted[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass
class Seg:
    text: str


class FakeSTT:
    """Returns ``transcript`` (settable) as two segments, from a real one-worker scheduler."""

    id = "fake-whisper"
    languages = ("en",)
    sample_rate = 16000

    def __init__(self) -> None:
        self.transcript = "What is the capital of France?"
        self.calls: list[np.ndarray] = []
        self.priorities: list[Priority] = []
        self.open_streams = 0
        self.delay = 0.001
        self.scheduler = Scheduler("stt", slots=1, max_queue=32)

    def stream(
        self,
        audio: np.ndarray,
        *,
        language: str | None = None,
        prompt: str | None = None,
        priority: Priority = Priority.HTTP,
        **options: Any,
    ) -> _Counted[Seg]:
        self.calls.append(audio)
        self.priorities.append(priority)
        words = self.transcript.split(" ")
        half = len(words) // 2
        segments = [Seg(" " + " ".join(words[:half])), Seg(" " + " ".join(words[half:]))]
        delay = self.delay

        def produce(stop: JobControl) -> Iterator[Seg]:
            for seg in segments:
                time.sleep(delay)
                if stop.is_set():
                    return
                yield seg

        return _Counted(self, self.scheduler.submit(produce, priority=priority, preemptible=True))

    def stats(self) -> list[SchedulerStats]:
        return [self.scheduler.stats()]

    def close(self) -> None:
        self.scheduler.close(wait=1.0)


class _VADStream:
    def __init__(self) -> None:
        self._pending = np.zeros(0, np.float32)
        self.windows = 0

    async def process(self, samples: np.ndarray) -> list[float]:
        x = np.concatenate([self._pending, samples])
        n = x.size // 512
        probs = [0.95 if np.sqrt(np.mean(x[k * 512 : (k + 1) * 512] ** 2)) > 0.02 else 0.02 for k in range(n)]
        self._pending = x[n * 512 :]
        self.windows += n
        return probs


class FakeVAD:
    sample_rate = 16000
    window = 512

    def stream(self) -> _VADStream:
        return _VADStream()

    def stats(self) -> list[SchedulerStats]:
        return []

    def close(self) -> None:
        return None


@dataclass
class FakeEngines:
    llm: FakeLLMPool = field(default_factory=FakeLLMPool)
    stt: FakeSTT | None = field(default_factory=FakeSTT)
    tts: FakeTTS | None = field(default_factory=FakeTTS)
    vad: FakeVAD | None = field(default_factory=FakeVAD)

    def stats(self) -> list[SchedulerStats]:
        return [s for e in (self.llm, self.stt, self.tts, self.vad) if e is not None for s in e.stats()]

    def close(self) -> None:
        for e in (self.llm, self.stt, self.tts, self.vad):
            if e is not None:
                e.close()


def FakeSettings(**overrides: Any) -> Settings:
    """Real settings for the fake-engine servers: no .env file, no models folder."""
    return Settings(_env_file=None, models_dir="/nonexistent", **overrides)


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
