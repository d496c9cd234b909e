"""The chat model engine: one GGUF model in llama.cpp, used by one worker thread.

Design:
- Each :class:`LLMEngine` owns a single-thread executor. llama.cpp contexts are not thread safe, and the
  executor's FIFO queue is also our fair scheduler: jobs from every HTTP request and realtime session run
  one at a time, in arrival order.
- A job is a :class:`ChatStream` (:mod:`localrt.engines.llm_stream`): a generator run in the worker
  thread through :class:`~localrt.engines.threaded.ThreadedStream` (the same bridge the speech engines
  use), which hands each event to the event loop; the event loop never blocks on the model.
- Cancellation: the stream's stop event (set when the consumer leaves ``async with``, e.g. a
  disconnected client or a barge-in) and :meth:`ChatStream.cancel` are polled by a llama.cpp stopping
  criterion, so the model stops within one token; leaving the stream waits for the worker, so the model
  is free for the next job.
- Prompts are rendered with the model's own chat template (:mod:`localrt.engines.chat_format`),
  tokenized once and checked against the context, and schemas become grammars, all in the job itself
  (:mod:`localrt.engines.llm_prompt`): nothing proportional to a request runs on the event loop.
  Entering the stream waits until the prompt is ready, so those errors (ContextLengthExceeded, an
  invalid schema) are raised there, before the first event: a route can still answer them with a
  plain 400. llama.cpp reuses the KV cache for the longest common prefix with the previous job.
"""

from __future__ import annotations

import codecs
import json
import logging
import random
import time
import uuid
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from localrt.engines import chat_format
from localrt.engines.llm_prompt import ChatPrompt, PromptBuilder
from localrt.engines.llm_stream import (
    ChatResult,
    ChatStream,
    Event,
    Ready,
    SamplingParams,
    Stopped,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from localrt.errors import ContextLengthExceeded, InvalidRequest, ServerError
from localrt.settings import Settings
from localrt.text.stops import StopMatcher

__all__ = [
    "ChatResult",
    "ChatStream",
    "LLMEngine",
    "SamplingParams",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
]

logger = logging.getLogger(__name__)


# --- the engine -----------------------------------------------------------------------------------------
class LLMEngine:
    """One loaded GGUF model. Construct with :meth:`load` (blocking: call it in a thread)."""

    def __init__(self, model_id: str, path: Path, llama: Any) -> None:
        self.id = model_id
        self.path = path
        self.llama = llama
        self.n_ctx: int = llama.n_ctx()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llm-{model_id}")
        self._prompts = PromptBuilder(llama, chat_format.ChatFormatter.from_llama(llama))
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
        truncate_history: bool = False,
    ) -> ChatStream:
        """Stream a chat reply. Entering the stream raises ContextLengthExceeded if the prompt does not
        fit, or InvalidRequest for a schema no grammar can be made of. With ``truncate_history`` the
        oldest whole turns are dropped instead until the conversation fits (the system prompt stays).
        ``messages`` must not change until the stream is entered: the worker renders it.
        """
        params = params or SamplingParams()
        plan = chat_format.plan_tools(tools, tool_choice)  # cheap, and its errors are the caller's

        def work(stopped: Stopped) -> Iterator[Ready | Event | ChatResult]:
            prompt = self._prompts.chat(
                messages,
                tools=tools,
                plan=plan,
                response_format=response_format,
                max_tokens=params.max_tokens,
                truncate=truncate_history,
                stopped=stopped,
            )
            yield Ready()
            yield from self._chat(stopped, prompt, plan, params)

        return ChatStream(self, work)

    def complete(self, prompt: str | list[int], params: SamplingParams) -> ChatStream:
        """Stream a raw completion of ``prompt``, text or token ids (the legacy completions API).

        Entering the stream raises ContextLengthExceeded, or InvalidRequest for a token id outside the
        vocabulary; then ``prompt_text`` is the prompt as text.
        """

        def work(stopped: Stopped) -> Iterator[Ready | Event | ChatResult]:
            tokens, text = self._prompts.completion(prompt)
            yield Ready(prompt_text=text)
            result = ChatResult(prompt_tokens=len(tokens), cached_tokens=self._cached_prefix(tokens))
            pieces = self._generate(tokens, params, params.stop, None, stopped)
            result.text, result.finish_reason, result.completion_tokens = yield from _as_text_deltas(pieces)
            yield result

        return ChatStream(self, work)

    # -- worker-thread internals --------------------------------------------------------------------------
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
        self, stopped: Stopped, prompt: ChatPrompt, plan: chat_format.ToolPlan, params: SamplingParams
    ) -> Iterator[Event | ChatResult]:
        tokens = prompt.tokens
        result = ChatResult(prompt_tokens=len(tokens), cached_tokens=self._cached_prefix(tokens))
        if plan.mode == "forced":
            yield from self._tool_call(stopped, prompt, params, result)
            return
        stop = [*params.stop, *prompt.stop]
        pieces = self._generate(tokens, params, stop, prompt.grammar, stopped)
        if plan.mode == "auto":
            # Generate freely, holding back the first characters; if the model opens a tool call, stop
            # and redo the call under the grammar so its arguments are valid JSON for the schema. Text
            # replies stream with no grammar cost.
            watcher = _ToolCallWatcher()
            pieces = watcher.watch(pieces)
            text, finish, n = yield from _as_text_deltas(pieces)
            if watcher.is_call:
                yield from self._tool_call(stopped, prompt, params, result)
                return
        else:
            text, finish, n = yield from _as_text_deltas(pieces)
        result.text, result.finish_reason, result.completion_tokens = text, finish, n
        yield result

    def _tool_call(
        self, stopped: Stopped, prompt: ChatPrompt, params: SamplingParams, result: ChatResult
    ) -> Iterator[Event | ChatResult]:
        """Generate one call after ``<tool_call>`` under the grammar of the callable functions."""
        prefix = self.llama.tokenize(chat_format.TOOL_CALL_OPEN.encode(), add_bos=False, special=True)
        call_tokens = prompt.tokens + prefix
        if len(call_tokens) >= self.n_ctx:
            raise ContextLengthExceeded("The conversation leaves no room for a tool call.", param="messages")
        call_params = SamplingParams(
            max_tokens=params.max_tokens,
            temperature=min(params.temperature, 0.7),
            top_p=params.top_p,
            seed=params.seed,
        )
        pieces = self._generate(call_tokens, call_params, [], prompt.call_grammar, stopped)
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
