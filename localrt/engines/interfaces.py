"""What the rest of localrt may know about an engine: the engine interfaces.

Routes, the realtime session and the bench depend on these protocols (and the data types of
:mod:`localrt.engines.types`) only; nothing outside ``localrt/engines`` touches a llama.cpp, Whisper,
Piper or onnxruntime object. An implementation is chosen by a setting (``llm_engine``, ``stt_engine``,
``tts_engine``, ``vad_engine``) through the registry in :mod:`localrt.engines`, so a second one (a
remote engine) is one class plus one registry entry.

Every implementation runs its work through a :class:`~localrt.engines.scheduler.Scheduler` (or
several): ``priority`` orders the work, a full queue raises
:class:`~localrt.engines.scheduler.QueueFull` (429) when the work is submitted, and closing an engine
ends its jobs with :class:`~localrt.engines.scheduler.EngineClosed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from localrt.engines.scheduler import Priority, SchedulerStats
from localrt.engines.types import (
    AudioChunk,
    ChatEvent,
    ChatResult,
    SamplingParams,
    Segment,
    Task,
    Transcription,
    Voice,
)

T_co = TypeVar("T_co", covariant=True)

__all__ = [
    "AudioChunk",
    "ChatEvent",
    "ChatJob",
    "ChatModel",
    "ChatModels",
    "ChatResult",
    "ItemStream",
    "Priority",
    "SamplingParams",
    "Segment",
    "SpeechToText",
    "Task",
    "TextToSpeech",
    "Transcription",
    "TurnCompletion",
    "VADStream",
    "Voice",
    "VoiceActivity",
]


@runtime_checkable
class ItemStream(Protocol[T_co]):
    """An engine job's output: ``async with stream: async for item in stream: ...``.

    Leaving the ``async with`` (or ``aclose``) cancels the job: a queued job leaves the queue at once, a
    running one stops within one item; it never waits on another job. Errors are raised from the
    iterator."""

    def __aiter__(self) -> AsyncIterator[T_co]: ...

    async def __anext__(self) -> T_co: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> ItemStream[T_co]: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class ChatJob(Protocol):
    """One generation. Entering it queues the job and returns once its prompt is ready, raising what
    preparing it raised (ContextLengthExceeded, InvalidRequest, QueueFull), so a route can still answer
    with a plain error status. Iterating yields :data:`ChatEvent` s; ``result`` is set when it ends."""

    result: ChatResult
    prompt_text: str

    def cancel(self) -> None:
        """Stop at the next token (thread safe, idempotent)."""

    async def __aenter__(self) -> ChatJob: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[ChatEvent]: ...

    async def __anext__(self) -> ChatEvent: ...


@runtime_checkable
class ChatModel(Protocol):
    """One loaded chat model.

    ``vision``: whether messages may carry images (OpenAI ``image_url`` content parts); a text-only
    model is sent none (callers refuse them first, :mod:`localrt.images`). ``image_urls``: with
    ``vision``, whether http(s) image URLs are accepted too (a remote engine passes parts on unchanged);
    False: data URLs only (a local model: localrt never fetches a URL). Both default to False, and
    callers read them with :func:`localrt.images.support_of`, so a model that declares neither is a
    text-only one."""

    id: str
    n_ctx: int
    vision: bool = False
    image_urls: bool = False

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
    ) -> ChatJob:
        """Stream a chat reply. ``cache_key`` names a conversation (a realtime session) whose evaluated
        prompt the engine may keep between its turns; ``messages`` must not change until entered."""
        ...

    def complete(
        self, prompt: str | list[int], params: SamplingParams, *, priority: Priority = Priority.HTTP
    ) -> ChatJob:
        """Stream a raw completion of ``prompt`` (text or token ids)."""
        ...


@runtime_checkable
class ChatModels(Protocol):
    """The chat models a server serves, by id (OpenAI's well-known ids alias the default)."""

    default_id: str

    def ids(self) -> list[str]: ...

    def aliases(self) -> list[str]: ...

    def resolve(self, model: str | None) -> str:
        """The canonical id for a requested id or alias; raises ModelNotFound."""
        ...

    async def get(self, model: str | None) -> ChatModel:
        """The model, loaded (off the event loop) if it is not yet."""
        ...

    def created(self, model_id: str) -> int:
        """When the model was made (Unix seconds; 0 if unknown), for ``/v1/models``."""
        ...

    @property
    def loaded_ids(self) -> list[str]: ...

    @property
    def busy(self) -> bool: ...

    def stats(self) -> list[SchedulerStats]:
        """One entry per loaded model's scheduler."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SpeechToText(Protocol):
    id: str
    sample_rate: int

    def model_ids(self) -> list[str]: ...

    @property
    def languages(self) -> list[str]: ...

    def stream(
        self,
        audio: np.ndarray,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        word_timestamps: bool = False,
        task: Task = "transcribe",
        priority: Priority = Priority.HTTP,
        text_only: bool = False,
    ) -> ItemStream[Segment]:
        """Segments as they are decoded (float32 mono at ``sample_rate``). ``text_only``: the caller
        reads only the segments' text (not their times), which lets an engine take a faster path."""
        ...

    async def transcribe(
        self,
        audio: np.ndarray,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        word_timestamps: bool = False,
        task: Task = "transcribe",
        priority: Priority = Priority.HTTP,
        text_only: bool = False,
    ) -> Transcription: ...

    def stats(self) -> list[SchedulerStats]: ...

    def close(self) -> None: ...


@runtime_checkable
class TextToSpeech(Protocol):
    id: str
    default_voice: str

    def model_ids(self) -> list[str]: ...

    def voices(self) -> list[Voice]: ...

    def voice(self, voice_id: str) -> Voice: ...

    def resolve_voice(self, name: str | None) -> Voice:
        """A voice by id, mapped name or OpenAI name; raises InvalidRequest."""
        ...

    def stream(
        self, text: str, *, voice: str | None = None, speed: float = 1.0, priority: Priority = Priority.HTTP
    ) -> ItemStream[AudioChunk]:
        """Audio sentence by sentence (int16 mono chunks)."""
        ...

    async def synthesize(
        self, text: str, *, voice: str | None = None, speed: float = 1.0, priority: Priority = Priority.HTTP
    ) -> AudioChunk: ...

    def stats(self) -> list[SchedulerStats]: ...

    def close(self) -> None: ...


@runtime_checkable
class VADStream(Protocol):
    """Speech probabilities of one continuous stream, one per window, each window computed once."""

    windows: int

    async def process(self, samples: np.ndarray) -> list[float]:
        """Add float32 samples at the engine's rate; the probability of each window completed.
        Calls for one stream must not overlap."""
        ...


@runtime_checkable
class VoiceActivity(Protocol):
    sample_rate: int
    window: int  # samples per probability

    def stream(self) -> VADStream: ...

    def stats(self) -> list[SchedulerStats]: ...

    def close(self) -> None: ...


@runtime_checkable
class TurnCompletion(Protocol):
    """A semantic end-of-turn model (Smart Turn): how likely the user has finished their turn, judged
    from the audio of it (intonation, rhythm, words), not from the length of the silence."""

    sample_rate: int  # the rate of the audio ``complete_probability`` takes (16 kHz)

    async def complete_probability(self, audio: np.ndarray) -> float:
        """P(turn complete) for the turn's float32 mono audio up to now (the model reads its last
        seconds). A REALTIME job of the engine's scheduler: raises QueueFull / EngineClosed."""
        ...

    def stats(self) -> list[SchedulerStats]: ...

    def close(self) -> None: ...
