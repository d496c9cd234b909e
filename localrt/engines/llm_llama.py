"""The llama.cpp side of a chat model: the body of every job, run in the model's worker thread.

:class:`LlamaBackend` owns the ``Llama`` object; only the scheduler's worker (one slot) calls into it.
A job prepares its prompt (template, tokens, context check, grammars: :mod:`.llm_prompt`), restores the
session's saved context when that saves work (:mod:`.llm_state`), yields ``Ready``, generates
(:mod:`.llm_generate`) and ends with one ``ChatResult``; a keyed job saves the context for its session
when it ends, however it ends.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from localrt.engines import chat_format
from localrt.engines.llm_generate import (
    Pieces,
    ToolCallWatcher,
    as_text_deltas,
    generate_text,
    run_to_end,
)
from localrt.engines.llm_prompt import ChatPrompt, PromptBuilder
from localrt.engines.llm_state import SessionStates
from localrt.engines.llm_stream import ChatRequest, Item, Ready
from localrt.engines.llm_vision import VisionEncoder
from localrt.engines.scheduler import CPU_JOBS, JobControl
from localrt.engines.types import ChatResult, SamplingParams, ToolCall, ToolCallDelta
from localrt.errors import ContextLengthExceeded, InvalidRequest, ServerError

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

logger = logging.getLogger(__name__)


class LlamaBackend:
    """Jobs over one ``Llama``. Construct where the model is loaded (blocking: a vocabulary pass)."""

    def __init__(
        self,
        llama: Llama,
        *,
        state_cache_bytes: int,
        vision: VisionEncoder | None = None,
        adaptive_threads: tuple[int, int] | None = None,
    ) -> None:
        """``adaptive_threads``: (threads, all cores) to evaluate prompts and tokens with all cores when
        no other engine is working on the CPU (None: the context's own setting, always)."""
        self.llama = llama
        self._adaptive_threads = adaptive_threads
        self._threads_now = adaptive_threads[0] if adaptive_threads is not None else 0
        self.n_ctx: int = llama.n_ctx()
        self.vision = vision  # the model's projector (--llm-mmproj): prompts may hold images
        marker = vision.marker if vision is not None else None
        self.prompts = PromptBuilder(llama, chat_format.ChatFormatter.from_llama(llama), media_marker=marker)
        self.sessions = SessionStates(state_cache_bytes)

    def close(self) -> None:
        self.sessions.clear()
        self.llama.close()

    def _choose_threads(self) -> None:
        """All cores when this job is the only one working on the CPU, else the usual threads; asked
        before the prompt and before every token. A voice turn's prompt (25 tokens: 140 ms on 2 threads,
        200-390 ms on 1, on 2 cores) and its first clause (a token: ~13 ms on 2 threads, ~20 on 1) are
        on its critical path, and while the reply's first clause is synthesized the job is held, so they
        mostly run alone. But llama.cpp's threads spin at every barrier: with another engine busy on
        the cores, more threads are slower, not faster, so the choice is made again at each token."""
        if self._adaptive_threads is None:
            return
        import llama_cpp

        threads, cores = self._adaptive_threads
        wanted = cores if CPU_JOBS.active <= 1 else threads  # 1: this job itself
        if wanted != self._threads_now:
            llama_cpp.llama_set_n_threads(self.llama._ctx.ctx, wanted, wanted)
            self._threads_now = wanted

    # -- job bodies (worker thread) -----------------------------------------------------------------------
    def chat(self, control: JobControl, req: ChatRequest) -> Iterator[Item]:
        prompt = self.prompts.chat(
            req.messages,
            tools=req.tools,
            plan=req.plan,
            response_format=req.response_format,
            max_tokens=req.params.max_tokens,
            truncate=req.truncate_history,
            stopped=control.is_set,
        )
        key = req.cache_key
        if prompt.images and self.vision is not None:  # evaluated from scratch, kept for no session
            key = None
            self.sessions.prepare(self.llama, None, [])  # the live context's owner keeps its state
            prompt.tokens = self.vision.evaluate(
                self.llama, prompt.text, prompt.images, add_special=prompt.add_special, stopped=control.is_set
            )
            prompt.images = []
            cached = 0
        else:
            cached = self.sessions.prepare(self.llama, key, prompt.tokens)
        try:
            yield Ready(prompt_tokens=len(prompt.tokens), cached_tokens=cached)
            result = ChatResult(prompt_tokens=len(prompt.tokens), cached_tokens=cached)
            yield from self._chat(control, prompt, req.plan, req.params, result)
        finally:
            self.sessions.finish(key)

    def complete(
        self, control: JobControl, prompt: str | list[int], params: SamplingParams
    ) -> Iterator[Item]:
        tokens, text = self.prompts.completion(prompt)
        cached = self.sessions.prepare(self.llama, None, tokens)
        try:
            yield Ready(prompt_text=text, prompt_tokens=len(tokens), cached_tokens=cached)
            end = yield from as_text_deltas(self._generate(control, tokens, params, params.stop))
        finally:
            self.sessions.finish(None)
        yield ChatResult(
            text=end.text,
            finish_reason=end.finish_reason,
            prompt_tokens=len(tokens),
            completion_tokens=end.tokens,
            cached_tokens=cached,
        )

    def _generate(
        self,
        control: JobControl,
        tokens: list[int],
        params: SamplingParams,
        stop: list[str],
        grammar: LlamaGrammar | None = None,
    ) -> Pieces:
        def resume() -> None:  # a preempted generation goes on: whatever ran meanwhile is kept first
            self.sessions.flush(self.llama)

        return generate_text(
            self.llama,
            control,
            tokens,
            params,
            stop,
            grammar,
            on_resume=resume,
            before_token=self._choose_threads,
        )

    def _chat(
        self,
        control: JobControl,
        prompt: ChatPrompt,
        plan: chat_format.ToolPlan,
        params: SamplingParams,
        result: ChatResult,
    ) -> Iterator[Item]:
        if plan.mode == "forced":
            yield from self._tool_call(control, prompt, params, result)
            return
        stop = [*params.stop, *prompt.stop]
        pieces = self._generate(control, prompt.tokens, params, stop, prompt.grammar)
        if plan.mode == "auto":
            # Generate freely, holding back the first characters; if the model opens a tool call, stop
            # and redo the call under the grammar so its arguments are valid JSON for the schema. Text
            # replies stream with no grammar cost.
            watcher = ToolCallWatcher()
            end = yield from as_text_deltas(watcher.watch(pieces))
            if watcher.is_call:
                yield from self._tool_call(control, prompt, params, result)
                return
        else:
            end = yield from as_text_deltas(pieces)
        result.text, result.finish_reason, result.completion_tokens = end.text, end.finish_reason, end.tokens
        yield result

    def _tool_call(
        self, control: JobControl, prompt: ChatPrompt, params: SamplingParams, result: ChatResult
    ) -> Iterator[Item]:
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
        end = run_to_end(
            generate_text(
                self.llama,
                control,
                call_tokens,
                call_params,
                [],
                prompt.call_grammar,
                before_token=self._choose_threads,
            )
        )
        if control.is_set():
            return
        result.completion_tokens = end.tokens
        text = end.text
        try:
            call = json.loads(text)
            name, arguments = call["name"], call["arguments"]
        except (ValueError, KeyError, TypeError) as exc:
            if end.finish_reason == "length":
                raise InvalidRequest(
                    "max_tokens was reached before the tool call was complete.", param="max_tokens"
                ) from exc
            raise ServerError(f"The model produced an invalid tool call: {text[:200]!r}") from exc
        call_id = "call_" + uuid.uuid4().hex[:24]
        args_text = json.dumps(arguments, ensure_ascii=False)
        # Announce the call, then its arguments in pieces, so clients see the usual delta sequence.
        yield ToolCallDelta(index=0, id=call_id, name=str(name), arguments="")
        for i in range(0, len(args_text), 32):
            yield ToolCallDelta(index=0, id=call_id, name=str(name), arguments=args_text[i : i + 32])
        result.tool_calls = [ToolCall(id=call_id, name=str(name), arguments=args_text)]
        result.finish_reason = "tool_calls"
        yield result
