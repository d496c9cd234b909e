"""The chat model engine: one GGUF model in llama.cpp, used by one worker thread.

Design:
- Each :class:`LLMEngine` owns a single-thread executor. llama.cpp contexts are not thread safe, and the
  executor's FIFO queue is also our fair scheduler: jobs from every HTTP request and realtime session run
  one at a time, in arrival order.
- A job is a :class:`ChatStream`: a generator run in the worker thread through
  :class:`~localrt.engines.threaded.ThreadedStream` (the same bridge the speech engines use), which hands
  each event to the event loop; the event loop never blocks on the model.
- Cancellation: the stream's stop event (set when the consumer leaves ``async with``, e.g. a
  disconnected client or a barge-in) and :meth:`ChatStream.cancel` are polled by a llama.cpp stopping
  criterion, so the model stops within one token; leaving the stream waits for the worker, so the model
  is free for the next job.
- Prompts are rendered with the model's own chat template (:mod:`localrt.engines.chat_format`) and
  tokenized once: that is where the context-length check and the cached-prefix count come from.
  llama.cpp reuses the KV cache for the longest common prefix with the previous job.
"""

from __future__ import annotations

import codecs
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from localrt.engines import chat_format
from localrt.engines.threaded import ThreadedStream
from localrt.errors import ContextLengthExceeded, InvalidRequest, ServerError
from localrt.settings import Settings
from localrt.text.stops import StopMatcher

logger = logging.getLogger(__name__)


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


Event = TextDelta | ToolCallDelta
Stopped = Callable[[], bool]
# A job's body: runs in the worker thread, yields events and finally exactly one ChatResult.
Work = Callable[[Stopped], Iterator["Event | ChatResult"]]


# --- the job --------------------------------------------------------------------------------------------
class ChatStream:
    """One generation, consumed on the event loop: ``async with s: async for event in s: ...``.

    ``result`` is set once iteration ends. The job starts when the ``async with`` is entered; leaving it
    early stops generation within a token and waits for the worker.
    """

    def __init__(self, engine: LLMEngine, work: Work) -> None:
        self._engine = engine
        self._work = work
        self._cancel = threading.Event()
        self._stream: ThreadedStream[Event | ChatResult] | None = None
        self.result = ChatResult()

    def cancel(self) -> None:
        """Stop generating at the next token (thread safe, idempotent)."""
        self._cancel.set()

    async def __aenter__(self) -> ChatStream:
        engine, work, cancel = self._engine, self._work, self._cancel  # no reference to self in the worker

        def produce(stop: threading.Event) -> Iterator[Event | ChatResult]:
            def stopped() -> bool:
                return stop.is_set() or cancel.is_set()

            if stopped():
                return
            engine.running = True
            try:
                yield from work(stopped)
            finally:
                engine.running = False

        self._stream = ThreadedStream(engine._executor, produce)
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
            return item


# --- the engine -----------------------------------------------------------------------------------------
class LLMEngine:
    """One loaded GGUF model. Construct with :meth:`load` (blocking: call it in a thread)."""

    def __init__(self, model_id: str, path: Path, llama: Any) -> None:
        self.id = model_id
        self.path = path
        self.llama = llama
        self.n_ctx: int = llama.n_ctx()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llm-{model_id}")
        self._formatter = chat_format.ChatFormatter.from_llama(llama)
        self.running = False  # a job is generating right now (read by /health and tests)

    @classmethod
    def load(cls, model_id: str, path: Path, settings: Settings) -> LLMEngine:
        import llama_cpp

        n_gpu_layers = settings.n_gpu_layers
        if n_gpu_layers is None:
            n_gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
        started = time.monotonic()
        llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=settings.n_ctx,
            n_gpu_layers=n_gpu_layers,
            n_threads=settings.resolved_n_threads(),
            n_threads_batch=settings.resolved_n_threads(),
            n_batch=settings.n_batch,
            verbose=False,
        )
        logger.info(
            "loaded chat model %s from %s in %.2fs (n_ctx=%d, gpu_layers=%d)",
            model_id,
            path,
            time.monotonic() - started,
            llama.n_ctx(),
            n_gpu_layers,
        )
        return cls(model_id, path, llama)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        close = getattr(self.llama, "close", None)
        if close is not None:
            close()

    # -- public API ---------------------------------------------------------------------------------------
    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
        params: SamplingParams | None = None,
    ) -> ChatStream:
        """Stream a chat reply. Raises ContextLengthExceeded (at once) if the prompt does not fit."""
        params = params or SamplingParams()
        plan = chat_format.plan_tools(tools, tool_choice)
        prompt = self._formatter.render(messages, plan)
        tokens = self._tokenize_prompt(prompt.text, prompt.added_special)
        grammar = chat_format.response_grammar(response_format) if plan.mode == "off" else None
        stop = [*params.stop, *prompt.stop]
        return ChatStream(self, lambda stopped: self._chat(stopped, tokens, stop, plan, grammar, params))

    def complete(self, prompt: str, params: SamplingParams) -> ChatStream:
        """Stream a raw completion of ``prompt`` (the legacy completions API)."""
        tokens = self._tokenize_prompt(prompt, added_special=False)

        def work(stopped: Stopped) -> Iterator[Event | ChatResult]:
            result = ChatResult(prompt_tokens=len(tokens), cached_tokens=self._cached_prefix(tokens))
            pieces = self._generate(tokens, params, params.stop, None, stopped)
            text, result.finish_reason, result.completion_tokens = yield from _as_text_deltas(pieces)
            result.text = text
            yield result

        return ChatStream(self, work)

    # -- worker-thread internals --------------------------------------------------------------------------
    def _tokenize_prompt(self, text: str, added_special: bool) -> list[int]:
        tokens: list[int] = self.llama.tokenize(text.encode("utf-8"), add_bos=not added_special, special=True)
        if len(tokens) >= self.n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.n_ctx} tokens. However, your messages "
                f"resulted in {len(tokens)} tokens. Please reduce the length of the messages.",
                param="messages",
            )
        return tokens

    def _cached_prefix(self, tokens: list[int]) -> int:
        """How many leading prompt tokens llama.cpp will reuse from its KV cache."""
        n = 0
        for a, b in zip(self.llama.input_ids[: self.llama.n_tokens], tokens[:-1], strict=False):
            if a != b:
                break
            n += 1
        return n

    def _generate(
        self, tokens: list[int], params: SamplingParams, stop: list[str], grammar: Any, stopped: Stopped
    ) -> Generator[str, None, tuple[str, str, int]]:
        """Yield text pieces as llama.cpp makes them; return (text, finish_reason, completion_tokens).

        The token loop is our own, over llama-cpp-python's ``generate`` (which samples and keeps the KV
        cache's common prefix), rather than ``create_completion``: that one detokenizes the whole reply
        again at every token to find stop sequences and split UTF-8, so its cost per token grows with the
        reply. Here each token is turned into text once, through an incremental UTF-8 decoder, and stop
        sequences are matched against the new piece and a short held tail (:class:`StopMatcher`).
        Sampling defaults are ``create_completion``'s (top_k 40, min_p 0.05, no repeat penalty), so the
        same request gives the same tokens either way. ``stopped`` is checked before every token.
        """
        import llama_cpp

        llama = self.llama
        vocab = llama._model.vocab
        budget = self.n_ctx - len(tokens)
        max_tokens = min(params.max_tokens, budget) if params.max_tokens else budget
        # Without a seed, the next one follows from the last, as in create_completion: replies vary from
        # call to call, and a server that gets the same requests in the same order answers the same way.
        llama.set_seed(
            params.seed
            if params.seed is not None
            else random.Random(getattr(llama, "_seed", None)).randint(0, 2**32)
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        matcher = StopMatcher(stop)
        parts: list[str] = []
        finish = "length"
        generated = 0
        token_stream = llama.generate(
            tokens,
            top_k=40,
            top_p=params.top_p,
            min_p=0.05,
            temp=params.temperature,
            repeat_penalty=1.0,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            grammar=grammar,
        )
        try:
            while generated < max_tokens and not stopped():
                token = next(token_stream)
                generated += 1
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                piece = matcher.feed(decoder.decode(llama.detokenize([token])))
                if piece:
                    parts.append(piece)
                    yield piece
                if matcher.stopped:
                    finish = "stop"
                    break
            if stopped():
                finish = "stop"
            else:
                tail = matcher.feed(decoder.decode(b"", final=True)) + matcher.flush()
                if tail:
                    parts.append(tail)
                    yield tail
        finally:
            token_stream.close()
        return "".join(parts), finish, generated

    def _chat(
        self,
        stopped: Stopped,
        tokens: list[int],
        stop: list[str],
        plan: chat_format.ToolPlan,
        grammar: Any,
        params: SamplingParams,
    ) -> Iterator[Event | ChatResult]:
        result = ChatResult(prompt_tokens=len(tokens), cached_tokens=self._cached_prefix(tokens))
        if plan.mode == "forced":
            yield from self._tool_call(stopped, tokens, plan, params, result)
            return
        pieces = self._generate(tokens, params, stop, grammar, stopped)
        if plan.mode == "auto":
            # Generate freely, holding back the first characters; if the model opens a tool call, stop
            # and redo the call under the grammar so its arguments are valid JSON for the schema. Text
            # replies stream with no grammar cost.
            watcher = _ToolCallWatcher()
            pieces = watcher.watch(pieces)
            text, finish, n = yield from _as_text_deltas(pieces)
            if watcher.is_call:
                yield from self._tool_call(stopped, tokens, plan, params, result)
                return
        else:
            text, finish, n = yield from _as_text_deltas(pieces)
        result.text, result.finish_reason, result.completion_tokens = text, finish, n
        yield result

    def _tool_call(
        self,
        stopped: Stopped,
        tokens: list[int],
        plan: chat_format.ToolPlan,
        params: SamplingParams,
        result: ChatResult,
    ) -> Iterator[Event | ChatResult]:
        """Generate one call after ``<tool_call>`` under the grammar of the callable functions."""
        import llama_cpp

        prefix = self.llama.tokenize(chat_format.TOOL_CALL_OPEN.encode(), add_bos=False, special=True)
        call_tokens = tokens + prefix
        if len(call_tokens) >= self.n_ctx:
            raise ContextLengthExceeded("The conversation leaves no room for a tool call.", param="messages")
        grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(plan.call_schema()), verbose=False)
        call_params = SamplingParams(
            max_tokens=params.max_tokens,
            temperature=min(params.temperature, 0.7),
            top_p=params.top_p,
            seed=params.seed,
        )
        pieces = self._generate(call_tokens, call_params, [], grammar, stopped)
        text, finish, n = _run_to_end(pieces)
        if stopped():
            return
        result.completion_tokens = n
        try:
            call = json.loads(text)
            name, arguments = call["name"], call["arguments"]
        except (ValueError, KeyError, TypeError) as exc:
            if finish == "length":
                raise InvalidRequest(
                    "max_tokens was reached before the tool call was complete.", param="max_tokens"
                ) from exc
            raise ServerError(f"The model produced an invalid tool call: {text[:200]!r}") from exc
        call_id = "call_" + uuid.uuid4().hex[:24]
        args_text = json.dumps(arguments, ensure_ascii=False)
        # Announce the call, then its arguments in pieces, so clients see the usual delta sequence.
        yield ToolCallDelta(index=0, id=call_id, name=name, arguments="")
        for i in range(0, len(args_text), 32):
            yield ToolCallDelta(index=0, id=call_id, name=name, arguments=args_text[i : i + 32])
        result.tool_calls = [ToolCall(id=call_id, name=name, arguments=args_text)]
        result.finish_reason = "tool_calls"
        yield result


def _as_text_deltas(pieces: Generator[str, None, Any]) -> Generator[TextDelta, None, Any]:
    """Re-yield text pieces as TextDelta events; return what ``pieces`` returns."""
    while True:
        try:
            piece = next(pieces)
        except StopIteration as end:
            return end.value
        yield TextDelta(piece)


def _run_to_end(pieces: Generator[str, None, Any]) -> Any:
    """Consume ``pieces`` silently; return what it returns."""
    while True:
        try:
            next(pieces)
        except StopIteration as end:
            return end.value


class _ToolCallWatcher:
    """Holds back the start of a free reply until it is clear whether it opens a tool call."""

    _OPENERS = (chat_format.TOOL_CALL_OPEN.strip(), '{"name"')

    def __init__(self) -> None:
        self.is_call = False

    def watch(self, pieces: Generator[str, None, Any]) -> Generator[str, None, Any]:
        held = ""
        decided = False
        while True:
            try:
                piece = next(pieces)
            except StopIteration as end:
                if held and not self.is_call:
                    yield held
                return end.value
            if decided:
                yield piece
                continue
            held += piece
            start = held.lstrip()
            if not start:
                continue
            if any(start.startswith(o) for o in self._OPENERS):
                self.is_call = True
                pieces.close()  # stop generating: the call is redone under the grammar
                return "", "tool_calls", 0
            if any(o.startswith(start) for o in self._OPENERS):
                continue  # still ambiguous
            decided = True
            yield held
            held = ""
