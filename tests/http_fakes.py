"""Fake engines for fast tests of the HTTP API: no model is loaded, but every job runs through the
REAL engine scheduler, so queued jobs really queue (a full queue is a real 429).

- :class:`FakeChatModels` / :class:`FakeChatModel` implement the ``ChatModels`` / ``ChatModel``
  protocols of :mod:`localrt.engines.interfaces`. A job prepares its "prompt" in the worker (a context
  check, token ids against a vocabulary), then streams ``reply`` one word per ``token_s`` seconds; a
  ``gate`` (a ``threading.Event``, open by default) can hold every job at its first token, so a test
  can keep the slot busy for as long as it likes. Every call is recorded (priority, cache key, ...).
- Speech: the real :class:`~localrt.engines.stt.WhisperEngine` and
  :class:`~localrt.engines.tts.PiperEngine` (their validation and schedulers are what the routes see)
  over stand-ins for the faster-whisper model and the Piper voice.
"""

from __future__ import annotations

import io
import threading
import time
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any

import numpy as np

from localrt.engines import Engines
from localrt.engines.chat_format import content_text, plan_tools
from localrt.engines.scheduler import Job, JobControl, Priority, Scheduler, SchedulerStats
from localrt.engines.stt import WhisperEngine
from localrt.engines.tts import PiperEngine
from localrt.engines.types import (
    ChatEvent,
    ChatResult,
    SamplingParams,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Voice,
)
from localrt.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound

CREATED = 1_700_000_000
VOCAB = 1000  # token ids 0..999 are "in the vocabulary"
ALIASES = ("gpt-4o", "gpt-4o-mini")


@dataclass
class Call:
    """One ``chat`` / ``complete`` call, as the model saw it."""

    kind: str
    prompt: Any
    params: SamplingParams
    priority: Priority
    cache_key: str | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


@dataclass
class _Ready:
    prompt_text: str
    prompt_tokens: int


_Item = _Ready | TextDelta | ToolCallDelta | ChatResult


class FakeChatJob:
    """A ``ChatJob`` over a real scheduler job: entering submits it (QueueFull / EngineClosed at once)
    and returns when the worker has "prepared the prompt", raising what preparing raised."""

    def __init__(
        self, scheduler: Scheduler, work: Callable[[JobControl], Iterator[_Item]], priority: Priority
    ) -> None:
        self._scheduler = scheduler
        self._work = work
        self._priority = priority
        self._job: Job[_Item] | None = None
        self._cancelled = threading.Event()
        self.result = ChatResult()
        self.prompt_text = ""

    def cancel(self) -> None:
        self._cancelled.set()
        if self._job is not None:
            self._job.cancel()

    async def __aenter__(self) -> FakeChatJob:
        if self._cancelled.is_set():
            return self
        self._job = job = self._scheduler.submit(self._work, priority=self._priority)
        try:
            first = await job.__anext__()
        except StopAsyncIteration:
            return self
        except BaseException:
            job.cancel()
            raise
        assert isinstance(first, _Ready)
        self.prompt_text = first.prompt_text
        self.result = ChatResult(prompt_tokens=first.prompt_tokens)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cancelled.set()
        if self._job is not None:
            await self._job.aclose()

    def __aiter__(self) -> AsyncIterator[ChatEvent]:
        return self

    async def __anext__(self) -> ChatEvent:
        if self._job is None:
            raise StopAsyncIteration
        while True:
            item = await self._job.__anext__()
            if isinstance(item, ChatResult):
                self.result = item
            elif isinstance(item, (TextDelta, ToolCallDelta)):
                return item


class FakeChatModel:
    """A ``ChatModel`` that answers ``reply`` (one word a token) from a one-slot real scheduler."""

    def __init__(
        self,
        model_id: str = "fake-llm",
        *,
        reply: str = "Hello from the fake model.",
        n_ctx: int = 64,
        token_s: float = 0.0,
        max_queue: int = 32,
        vision: bool = False,
        image_urls: bool = False,
    ) -> None:
        self.id = model_id
        self.n_ctx = n_ctx  # in "tokens": words of the prompt
        self.vision = vision  # accepts image_url parts (ChatModel's flags)
        self.image_urls = image_urls
        self.reply = reply
        self.token_s = token_s
        self.gate = threading.Event()  # cleared: every job holds its slot before its first token
        self.gate.set()
        self.calls: list[Call] = []
        self.scheduler = Scheduler(f"llm:{model_id}", slots=1, max_queue=max_queue)

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
        params: SamplingParams | None = None,
        truncate_history: bool = False,
        priority: Priority = Priority.HTTP,
        cache_key: str | None = None,
    ) -> FakeChatJob:
        plan = plan_tools(tools, tool_choice)  # the real engine checks this on the caller's side too
        params = params or SamplingParams()
        self.calls.append(Call("chat", messages, params, priority, cache_key, tools, response_format))
        text = "\n".join(f"{m['role']}: {content_text(m.get('content'))}" for m in messages)
        call = plan.functions[0]["name"] if plan.mode == "forced" else None
        return FakeChatJob(self.scheduler, self._work(text, params, call, "messages"), priority)

    def complete(
        self, prompt: str | list[int], params: SamplingParams, *, priority: Priority = Priority.HTTP
    ) -> FakeChatJob:
        self.calls.append(Call("complete", prompt, params, priority))
        return FakeChatJob(self.scheduler, self._work(prompt, params, None, "prompt"), priority)

    def stats(self) -> list[SchedulerStats]:
        return [self.scheduler.stats()]

    def close(self) -> None:
        self.gate.set()
        self.scheduler.close(wait=5)

    def _work(
        self, prompt: str | list[int], params: SamplingParams, call: str | None, param: str
    ) -> Callable[[JobControl], Iterator[_Item]]:
        words = self.reply.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        gate, token_s, n_ctx = self.gate, self.token_s, self.n_ctx

        def work(control: JobControl) -> Iterator[_Item]:
            # "Preparing the prompt", in the worker as the real engine does.
            if isinstance(prompt, list):
                bad = [t for t in prompt if not 0 <= t < VOCAB]
                if bad:
                    raise InvalidRequest(f"Token id {bad[0]} is out of the vocabulary.", param=param)
                text, tokens = " ".join(f"t{t}" for t in prompt), len(prompt)
            else:
                text, tokens = prompt, len(prompt.split())
            if tokens >= n_ctx:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {n_ctx} tokens; the prompt has {tokens}.",
                    param=param,
                )
            yield _Ready(text, tokens)
            while not gate.wait(0.01):  # held by the test
                if control.is_set():
                    return
            if call is not None:
                args = '{"city": "Paris"}'
                yield ToolCallDelta(0, "call_fake", call, args)
                yield ChatResult("", [ToolCall("call_fake", call, args)], "tool_calls", tokens, 1)
                return
            limit = params.max_tokens if params.max_tokens is not None else len(pieces)
            sent = pieces[:limit]
            for piece in sent:
                if token_s:
                    time.sleep(token_s)
                yield TextDelta(piece)
            finish = "length" if len(sent) < len(pieces) else "stop"
            yield ChatResult("".join(sent), [], finish, tokens, len(sent))

        return work


class FakeChatModels:
    """``ChatModels`` over :class:`FakeChatModel` s: the first is the default; OpenAI's well-known
    ids (:data:`ALIASES`) alias it."""

    def __init__(self, *models: FakeChatModel) -> None:
        self.models = {m.id: m for m in (models or (FakeChatModel(),))}
        self.default_id = next(iter(self.models))

    def ids(self) -> list[str]:
        return list(self.models)

    def aliases(self) -> list[str]:
        return list(ALIASES)

    def resolve(self, model: str | None) -> str:
        if model is None or model in ALIASES:
            return self.default_id
        if model in self.models:
            return model
        raise ModelNotFound(model)

    async def get(self, model: str | None) -> FakeChatModel:
        return self.models[self.resolve(model)]

    def created(self, model_id: str) -> int:
        return CREATED

    def info(self, model_id: str) -> tuple[Path, int]:
        """The older pool's spelling of :meth:`created` (still used by ``/v1/models``)."""
        return Path(f"/fake/{model_id}.gguf"), CREATED

    @property
    def default(self) -> FakeChatModel:
        return self.models[self.default_id]

    @property
    def loaded_ids(self) -> list[str]:
        return list(self.models)

    @property
    def busy(self) -> bool:
        return any(m.scheduler.busy for m in self.models.values())

    def stats(self) -> list[SchedulerStats]:
        return [s for m in self.models.values() for s in m.stats()]

    def close(self) -> None:
        for model in self.models.values():
            model.close()


# --- speech: the real engines over stand-in models ---------------------------------------------------
class StandInWhisper:
    """faster-whisper's ``WhisperModel`` shape: one segment of ``text`` per started 10 s of audio."""

    supported_languages = ("en", "fr")
    max_length = 448

    def __init__(self, text: str = "Hello from the fake whisper.") -> None:
        self.text = text
        self.calls: list[dict[str, Any]] = []

    def transcribe(self, audio: np.ndarray, **options: Any) -> tuple[Iterator[Any], Any]:
        self.calls.append(options)
        duration = len(audio) / WhisperEngine.sample_rate
        count = max(1, -(-int(duration) // 10))
        words = options.get("word_timestamps", False)
        text = self.text

        def segments() -> Iterator[Any]:
            for i in range(count):
                start, end = 10.0 * i, min(duration, 10.0 * (i + 1))
                word = SimpleNamespace(start=start, end=end, word=" " + text.split()[0], probability=0.9)
                yield SimpleNamespace(
                    id=i, seek=0, start=start, end=end, text=" " + text, tokens=[1, 2], temperature=0.0,
                    avg_logprob=-0.2, compression_ratio=1.2, no_speech_prob=0.01,
                    words=[word] if words else None,
                )  # fmt: skip

        language = options.get("language") or "en"
        return segments(), SimpleNamespace(language=language, duration=duration)


VOICE = Voice("en_US-fake-medium", Path("/fake/en_US-fake-medium.onnx"), 22050, "en_US")


class StandInVoice:
    """``piper.PiperVoice``: a 440 Hz tone, 50 ms a word, at 22,050 Hz."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(sample_rate=VOICE.sample_rate, length_scale=1.0)
        self.texts: list[str] = []

    def synthesize(self, text: str, syn_config: Any = None) -> Iterator[Any]:
        self.texts.append(text)
        n = int(self.config.sample_rate * 0.05 * max(1, len(text.split())))
        t = np.arange(n) / self.config.sample_rate
        yield SimpleNamespace(audio_int16_array=(8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16))


@dataclass
class FakeEngines:
    """The fakes together, and :meth:`engines` as the app takes them."""

    llm: FakeChatModels = field(default_factory=FakeChatModels)
    whisper: StandInWhisper = field(default_factory=StandInWhisper)
    voice: StandInVoice = field(default_factory=StandInVoice)

    def __post_init__(self) -> None:
        self.stt = WhisperEngine("whisper-fake", self.whisper, device="cpu", compute_type="int8")
        voice = self.voice
        self.tts = PiperEngine([VOICE], VOICE.id, load_voice=lambda _: voice, slots=1)

    def engines(self) -> Engines:
        return Engines(llm=self.llm, stt=self.stt, tts=self.tts)

    def close(self) -> None:
        self.engines().close()


def wav_bytes(seconds: float, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV file of a 300 Hz tone."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buf.getvalue()
