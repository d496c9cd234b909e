"""A chat model's generation job as the event loop sees it: the stream of one reply, and its types.

A job (:data:`Work`) is a generator run in the model's single worker thread through
:class:`~localrt.engines.threaded.ThreadedStream`: it prepares its prompt, yields :class:`Ready`, then
events, then exactly one :class:`ChatResult`. :class:`ChatStream` is how the event loop consumes it;
entering it waits for ``Ready``, so whatever preparing the prompt raised is raised there, before any
event (and a route can still answer with a plain 400). See :mod:`localrt.engines.llm`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from localrt.engines.llm_prompt import Cancelled
from localrt.engines.threaded import ThreadedStream

if TYPE_CHECKING:
    from localrt.engines.llm import LLMEngine


# --- public data types ----------------------------------------------------------------------------------
@dataclass
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass
class TextDelta:
    text: str


@dataclass
class ToolCallDelta:
    index: int
    id: str
    name: str
    arguments: str  # the next piece of the JSON text


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # the whole JSON text


@dataclass
class ChatResult:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class Ready:
    """The job's prompt is ready and generation starts (the first item of every job)."""

    prompt_text: str = ""  # a completions prompt as text (token-id prompts are detokenized)


Event = TextDelta | ToolCallDelta
Stopped = Callable[[], bool]
# A job's body: runs in the worker thread, prepares the prompt, yields Ready, then events and finally
# exactly one ChatResult.
Work = Callable[[Stopped], Iterator["Ready | Event | ChatResult"]]


# --- the job --------------------------------------------------------------------------------------------
class ChatStream:
    """One generation, consumed on the event loop: ``async with s: async for event in s: ...``.

    The job is queued when the ``async with`` is entered, which returns once its prompt is ready (and
    raises what preparing it raised: ContextLengthExceeded, InvalidRequest). ``result`` is set once
    iteration ends. Leaving early stops generation within a token and waits for the worker.
    """

    def __init__(self, engine: LLMEngine, work: Work) -> None:
        self._engine = engine
        self._work = work
        self._cancel = threading.Event()
        self._stream: ThreadedStream[Ready | Event | ChatResult] | None = None
        self.result = ChatResult()
        self.prompt_text = ""

    def cancel(self) -> None:
        """Stop generating at the next token (thread safe, idempotent)."""
        self._cancel.set()

    async def __aenter__(self) -> ChatStream:
        engine, work, cancel = self._engine, self._work, self._cancel  # no reference to self in the worker

        def produce(stop: threading.Event) -> Iterator[Ready | Event | ChatResult]:
            def stopped() -> bool:
                return stop.is_set() or cancel.is_set()

            if stopped():
                return
            engine.running = True
            try:
                yield from work(stopped)
            except Cancelled:
                return
            finally:
                engine.running = False

        self._stream = stream = ThreadedStream(engine._executor, produce)
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:  # stopped before it started: iteration ends at once
            return self
        except BaseException:  # a prompt error, or cancelled while queued: the job is over
            await stream.aclose()
            raise
        if isinstance(first, Ready):
            self.prompt_text = first.prompt_text
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cancel.set()
        if self._stream is not None:
            await self._stream.aclose()

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> Event:
        if self._stream is None:
            raise RuntimeError("enter the stream with `async with` before iterating it")
        while True:
            item = await self._stream.__anext__()
            if isinstance(item, ChatResult):
                self.result = item
                continue
            if isinstance(item, Ready):
                continue
            return item
