"""The chat model engine: one GGUF model in llama.cpp, used by one worker thread.

Design:
- Each :class:`LLMEngine` owns a single-thread executor. llama.cpp contexts are not thread safe, and the
  executor's FIFO queue is also our fair scheduler: jobs from every HTTP request and realtime session run
  one at a time, in arrival order.
- A job is a :class:`ChatStream` (or :class:`CompletionStream`): the worker thread iterates llama.cpp's
  token generator and hands each piece to the event loop with ``call_soon_threadsafe``; the event loop
  never blocks on the model.
- Cancellation: a ``threading.Event`` per job, checked by a llama.cpp stopping criterion (so the model
  stops within one token) and between chunks. Leaving the stream's ``async with`` early (a disconnected
  client, a barge-in) sets it and waits for the worker, so the model is free for the next job.
- Prompts are rendered with the model's own chat template (:mod:`localrt.engines.chat_format`), then
  tokenized once: that is where the context-length check and the cached-prefix count come from.
  llama.cpp reuses the KV cache for the longest common prefix with the previous job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from localrt import catalog as catalog_mod
from localrt.engines import chat_format
from localrt.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound, ServerError
from localrt.settings import Settings

logger = logging.getLogger(__name__)

# OpenAI's well-known ids, served by the default chat model so that unmodified apps work.
OPENAI_CHAT_ALIASES = frozenset(
    {
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-4",
        "gpt-4-turbo",
        "gpt-3.5-turbo",
        "gpt-3.5-turbo-instruct",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "o1",
        "o1-mini",
        "o3",
        "o3-mini",
        "o4-mini",
        "chatgpt-4o-latest",
        "davinci-002",
        "babbage-002",
    }
)
# Realtime model ids also alias the default chat model (the realtime loop asks for them).
OPENAI_REALTIME_ALIASES = frozenset(
    {
        "gpt-realtime",
        "gpt-realtime-mini",
        "gpt-realtime-2",
        "gpt-4o-realtime-preview",
        "gpt-4o-mini-realtime-preview",
    }
)

_STOP_JOIN_TIMEOUT_S = 30.0


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


class _End:
    pass


_END = _End()


class _Cancelled(Exception):
    pass


# --- the job: an async view of one generation in the worker thread ---------------------------------------
class _Job:
    """Generation running in the engine's thread, consumed on the event loop.

    Use as ``async with job: async for event in job: ...``; ``job.result`` is set once iteration ends.
    """

    def __init__(self, engine: LLMEngine, work: Callable[[_Job], ChatResult]) -> None:
        self._engine = engine
        self._work = work
        self._stop = threading.Event()
        self._queue: asyncio.Queue[Event | BaseException | _End] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: asyncio.Future[None] | None = None
        self.result = ChatResult()
        self.submitted_at = 0.0
        self.started_at = 0.0

    # called from the worker thread
    def emit(self, item: Event | BaseException | _End) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down): nobody is listening
            self._stop.set()

    def emit_text(self, text: str) -> None:
        self.emit(TextDelta(text))

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def cancel(self) -> None:
        """Stop generating at the next token (thread safe, idempotent)."""
        self._stop.set()

    def _run(self) -> None:
        self.started_at = time.monotonic()
        self._engine.running = True
        try:
            if not self._stop.is_set():
                self.result = self._work(self)
        except _Cancelled:
            pass
        except BaseException as exc:  # handed to the consumer, re-raised there
            self.emit(exc)
        finally:
            self._engine.running = False
            self.emit(_END)

    async def __aenter__(self) -> _Job:
        self._loop = asyncio.get_running_loop()
        self.submitted_at = time.monotonic()
        self._future = self._loop.run_in_executor(self._engine._executor, self._run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._future is None:
            return
        # The model is freed only when the worker returns; wait for it even if we are being cancelled.
        try:
            await asyncio.wait_for(asyncio.shield(self._future), _STOP_JOIN_TIMEOUT_S)
        except asyncio.TimeoutError:
            logger.error("llm worker did not stop within %.0fs", _STOP_JOIN_TIMEOUT_S)
        except asyncio.CancelledError:
            # Cancelled again while waiting: the stop flag is set and the single worker thread keeps
            # jobs serialized, so nothing can run concurrently with the stopping job.
            raise

    def __aiter__(self) -> _Job:
        return self

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # keep answering StopAsyncIteration
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item


ChatStream = _Job
CompletionStream = _Job


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
        """Stream a chat reply. Raises ContextLengthExceeded (on entering) if the prompt does not fit."""
        params = params or SamplingParams()
        plan = chat_format.plan_tools(tools, tool_choice)
        prompt = self._formatter.render(messages, plan)
        tokens = self._tokenize_prompt(prompt.text, prompt.added_special)
        grammar = chat_format.response_grammar(response_format) if plan.mode == "off" else None

        stop = [*params.stop, *prompt.stop]

        def work(job: _Job) -> ChatResult:
            return self._run_chat(job, tokens, stop, plan, grammar, params)

        return _Job(self, work)

    def complete(self, prompt: str, params: SamplingParams) -> CompletionStream:
        """Stream a raw completion of ``prompt`` (the legacy completions API)."""
        tokens = self._tokenize_prompt(prompt, added_special=False)

        def work(job: _Job) -> ChatResult:
            result = ChatResult(prompt_tokens=len(tokens), cached_tokens=self._cached_prefix(tokens))
            text, finish, n = self._generate(
                tokens, params, params.stop, None, job.emit_text, lambda: job.stopped
            )
            result.text, result.finish_reason, result.completion_tokens = text, finish, n
            return result

        return _Job(self, work)

    def count_tokens(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    # -- worker-thread internals --------------------------------------------------------------------------
    def _tokenize_prompt(self, text: str, added_special: bool) -> list[int]:
        tokens: list[int] = self.llama.tokenize(
            text.encode("utf-8"), add_bos=not added_special, special=True
        )
        if len(tokens) >= self.n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.n_ctx} tokens. However, your messages "
                f"resulted in {len(tokens)} tokens. Please reduce the length of the messages.",
                param="messages",
            )
        return tokens

    def _cached_prefix(self, tokens: list[int]) -> int:
        """How many leading prompt tokens llama.cpp will reuse from its KV cache."""
        cached = self.llama.input_ids[: self.llama.n_tokens]
        n = 0
        for a, b in zip(cached, tokens[:-1]):
            if a != b:
                break
            n += 1
        return n

    def _generate(
        self,
        tokens: list[int],
        params: SamplingParams,
        stop: list[str],
        grammar: Any,
        on_text: Callable[[str], None],
        stopped: Callable[[], bool],
    ) -> tuple[str, str, int]:
        """Run llama.cpp over ``tokens``; returns (text, finish_reason, completion_tokens).

        ``stopped`` is polled once per token (a llama.cpp stopping criterion) and between chunks.
        """
        import llama_cpp

        n_prompt = len(tokens)
        generated = 0

        def should_stop(input_ids: Any, logits: Any) -> bool:
            # Called once per sampled token, before that token joins input_ids: so this counts every
            # sampled token, the one that ends generation (EOS) included.
            nonlocal generated
            generated = max(generated, len(input_ids) - n_prompt + 1)
            return stopped()

        max_tokens = params.max_tokens if params.max_tokens else -1
        chunks: Iterator[Any] = self.llama.create_completion(
            prompt=tokens,
            max_tokens=max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=stop or None,
            seed=params.seed,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            grammar=grammar,
            stopping_criteria=llama_cpp.StoppingCriteriaList([should_stop]),
            stream=True,
        )
        parts: list[str] = []
        finish = "stop"
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                if choice["text"]:
                    parts.append(choice["text"])
                    on_text(choice["text"])
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                if stopped():
                    break
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        text = "".join(parts)
        return text, finish, generated

    def _run_chat(
        self,
        job: _Job,
        tokens: list[int],
        stop: list[str],
        plan: chat_format.ToolPlan,
        grammar: Any,
        params: SamplingParams,
    ) -> ChatResult:
        result = ChatResult(prompt_tokens=len(tokens), cached_tokens=self._cached_prefix(tokens))
        if plan.mode == "forced":
            return self._run_tool_call(job, tokens, stop, plan, params, result)
        if plan.mode == "auto":
            # Generate freely; if the model opens a tool call, stop and redo the call under the grammar
            # so its arguments are valid JSON for the schema. Text replies stream with no grammar cost.
            watcher = _ToolCallWatcher(job)
            text, finish, n = self._generate(
                tokens, params, stop, None, watcher.feed, lambda: job.stopped or watcher.is_call
            )
            if watcher.is_call:
                return self._run_tool_call(job, tokens, stop, plan, params, result)
            watcher.flush()
            result.text, result.finish_reason, result.completion_tokens = text, finish, n
            return result
        text, finish, n = self._generate(
            tokens, params, stop, grammar, job.emit_text, lambda: job.stopped
        )
        result.text, result.finish_reason, result.completion_tokens = text, finish, n
        return result

    def _run_tool_call(
        self,
        job: _Job,
        tokens: list[int],
        stop: list[str],
        plan: chat_format.ToolPlan,
        params: SamplingParams,
        result: ChatResult,
    ) -> ChatResult:
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
        call_id = "call_" + uuid.uuid4().hex[:24]
        text, finish, n = self._generate(
            call_tokens, call_params, [], grammar, lambda _text: None, lambda: job.stopped
        )
        if job.stopped:
            raise _Cancelled
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
        args_text = json.dumps(arguments, ensure_ascii=False)
        # Announce the call, then its arguments in pieces, so clients see the usual delta sequence.
        job.emit(ToolCallDelta(index=0, id=call_id, name=name, arguments=""))
        for i in range(0, len(args_text), 32):
            job.emit(ToolCallDelta(index=0, id=call_id, name=name, arguments=args_text[i : i + 32]))
        result.tool_calls = [ToolCall(id=call_id, name=name, arguments=args_text)]
        result.finish_reason = "tool_calls"
        return result


class _ToolCallWatcher:
    """Holds back the first characters of a free reply until we know it is not a tool call."""

    def __init__(self, job: _Job) -> None:
        self._job = job
        self._held = ""
        self._decided = False
        self.is_call = False

    def feed(self, text: str) -> None:
        if self._decided:
            self._job.emit_text(text)
            return
        self._held += text
        stripped = self._held.lstrip()
        if not stripped:
            return
        if stripped.startswith(chat_format.TOOL_CALL_OPEN) or stripped.startswith('{"name"'):
            self.is_call = True
            self._decided = True
            return
        if chat_format.TOOL_CALL_OPEN.startswith(stripped) or '{"name"'.startswith(stripped):
            return  # still ambiguous
        self._decided = True
        self._job.emit_text(self._held)
        self._held = ""

    def flush(self) -> None:
        if self._held and not self.is_call:
            self._job.emit_text(self._held)
            self._held = ""


# --- the pool -------------------------------------------------------------------------------------------
class LLMPool:
    """The chat models this server serves: the default one loaded at start-up, others on first use."""

    def __init__(self, settings: Settings, cat: catalog_mod.Catalog) -> None:
        self._settings = settings
        self._paths = dict(cat.llms)
        configured = settings.llm_model
        if configured and configured not in self._paths:
            path = Path(configured).expanduser()
            if not path.is_file():
                raise ValueError(f"llm_model {configured!r} is neither a known model id nor a .gguf file")
            self._paths[path.stem] = path.resolve()
            configured = path.stem
        default = configured or (
            catalog_mod.EMBEDDED_LLM_ID if catalog_mod.EMBEDDED_LLM_ID in self._paths else None
        )
        if default is None:
            default = next(iter(self._paths), None)
        if default is None:
            raise ValueError("no chat model: install the embedded default (make install) or set llm_model")
        self.default_id = default
        self._loaded: OrderedDict[str, LLMEngine] = OrderedDict()
        self._load_lock = asyncio.Lock()

    def load_default(self) -> LLMEngine:
        """Blocking: load the default model (called in a thread at start-up)."""
        engine = LLMEngine.load(self.default_id, self._paths[self.default_id], self._settings)
        self._loaded[self.default_id] = engine
        return engine

    @property
    def default(self) -> LLMEngine:
        return self._loaded[self.default_id]

    def ids(self) -> list[str]:
        return list(self._paths)

    def aliases(self) -> list[str]:
        return sorted(OPENAI_CHAT_ALIASES | OPENAI_REALTIME_ALIASES)

    def resolve(self, model: str | None) -> str:
        """The canonical model id for a requested id or alias; ModelNotFound otherwise."""
        if model is None or model in OPENAI_CHAT_ALIASES or model in OPENAI_REALTIME_ALIASES:
            return self.default_id
        if model in self._paths:
            return model
        # Realtime previews carry dates: gpt-4o-realtime-preview-2024-12-17.
        if any(model.startswith(alias + "-") for alias in OPENAI_REALTIME_ALIASES | OPENAI_CHAT_ALIASES):
            return self.default_id
        raise ModelNotFound(model)

    async def get(self, model: str | None) -> LLMEngine:
        model_id = self.resolve(model)
        engine = self._loaded.get(model_id)
        if engine is not None:
            self._loaded.move_to_end(model_id)
            return engine
        async with self._load_lock:
            if (engine := self._loaded.get(model_id)) is not None:
                return engine
            loop = asyncio.get_running_loop()
            engine = await loop.run_in_executor(
                None, LLMEngine.load, model_id, self._paths[model_id], self._settings
            )
            self._loaded[model_id] = engine
            while len(self._loaded) > self._settings.max_loaded_models:
                victim = next(k for k in self._loaded if k not in (self.default_id, model_id))
                old = self._loaded.pop(victim)
                await loop.run_in_executor(None, old.close)
            return engine

    def info(self, model_id: str) -> tuple[Path, int]:
        path = self._paths[model_id]
        return path, int(path.stat().st_mtime) if path.exists() else 0

    @property
    def busy(self) -> bool:
        """Whether any loaded model is generating right now."""
        return any(engine.running for engine in self._loaded.values())

    @property
    def loaded_ids(self) -> list[str]:
        return list(self._loaded)

    def close(self) -> None:
        for engine in self._loaded.values():
            engine.close()
        self._loaded.clear()
