"""The chat model engine: one GGUF model in llama.cpp, its jobs run by the model's scheduler.

Design:
- Each :class:`LLMEngine` owns a :class:`~localrt.engines.scheduler.Scheduler` named ``llm:<model id>``
  with ``llm_slots`` workers (1: a llama.cpp context is not thread safe) and a queue of at most
  ``llm_max_queue`` jobs. Jobs run by priority (realtime turns, then HTTP requests), in arrival order
  within one; over the queue's bound a request is refused at once (QueueFull: 429), never left hanging.
- A job is a :class:`~localrt.engines.llm_stream.ChatStream`: entering it submits the job and waits
  for its prompt; the event loop never blocks on the model. Leaving it never waits: a queued job leaves
  the queue at once, a running one is told to stop and stops within one token.
- The job's body (:class:`~localrt.engines.llm_llama.LlamaBackend`) runs in the worker: rendering the
  chat template, tokenizing, grammar building, generating. llama.cpp reuses the KV cache for the longest
  common prefix with what the context last evaluated; a realtime session's context is saved after its
  turn and restored before its next one when another job used the model in between (``cache_key``;
  :mod:`localrt.engines.llm_state`), and a long generation lets a waiting realtime turn run between two
  tokens (:mod:`localrt.engines.llm_generate`).
- Closing the engine (shutdown, eviction by the pool) ends every queued and running job with
  EngineClosed, which its caller sees.
- Images: the default model loaded with ``llm_mmproj`` has ``vision`` (data URLs only, ``image_urls``
  False); its prompts with images go through :mod:`localrt.engines.llm_vision`. Any other model is
  text-only and refuses them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from localrt.engines import chat_format
from localrt.engines.llm_stream import (
    ChatRequest,
    ChatResult,
    ChatStream,
    Item,
    SamplingParams,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)
from localrt.engines.scheduler import JobControl, JobRecord, Priority, Scheduler, SchedulerStats
from localrt.settings import Settings

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = [
    "ChatBackend",
    "ChatResult",
    "ChatStream",
    "LLMEngine",
    "SamplingParams",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
]

logger = logging.getLogger(__name__)

OnJobDone = Callable[[JobRecord], None]


class ChatBackend(Protocol):
    """What runs a chat model's jobs in its worker thread (llama.cpp: :class:`LlamaBackend`)."""

    def chat(self, control: JobControl, req: ChatRequest) -> Iterator[Item]: ...

    def complete(
        self, control: JobControl, prompt: str | list[int], params: SamplingParams
    ) -> Iterator[Item]: ...

    def close(self) -> None: ...


def uses_mmproj(model_id: str, path: Path, settings: Settings) -> bool:
    """Whether ``--llm-mmproj`` is this model's projector: it belongs to the default chat model (the
    one ``--llm-model`` names, or the embedded one when it is unset), never to another GGUF."""
    if settings.llm_mmproj is None:
        return False
    configured = settings.llm_model
    if configured is None:
        from localrt.catalog import EMBEDDED_LLM_ID

        return model_id == EMBEDDED_LLM_ID
    if configured == model_id:
        return True
    try:
        return Path(configured).expanduser().resolve() == path.resolve()
    except OSError:
        return False


class LLMEngine:
    """One loaded chat model. Construct with :meth:`load` (blocking: call it in a thread)."""

    def __init__(
        self,
        model_id: str,
        backend: ChatBackend,
        *,
        n_ctx: int,
        slots: int = 1,
        max_queue: int = 32,
        on_job_done: OnJobDone | None = None,
        vision: bool = False,
    ) -> None:
        self.id = model_id
        self.n_ctx = n_ctx
        self.vision = vision  # loaded with its projector (--llm-mmproj): messages may hold images
        self.image_urls = False  # data URLs only: localrt never fetches an image URL
        self._backend = backend
        self.llama: Llama | None = None  # set by load(); for tests that tokenize with it, nothing else
        self._scheduler = Scheduler(
            f"llm:{model_id}", slots=slots, max_queue=max_queue, on_job_done=on_job_done
        )

    @classmethod
    def load(
        cls, model_id: str, path: Path, settings: Settings, on_job_done: OnJobDone | None = None
    ) -> LLMEngine:
        import llama_cpp

        from localrt.engines.llm_llama import LlamaBackend

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
        try:
            vision = None
            if uses_mmproj(model_id, path, settings) and settings.llm_mmproj is not None:
                from localrt.engines.llm_vision import VisionEncoder

                vision = VisionEncoder(llama, settings.llm_mmproj, use_gpu=n_gpu_layers != 0)
                logger.info("chat model %s: images through the projector %s", model_id, settings.llm_mmproj)
            cores = os.cpu_count() or 1
            adaptive = (
                settings.n_threads is None and n_gpu_layers == 0 and cores > settings.resolved_n_threads()
            )
            backend = LlamaBackend(
                llama,
                state_cache_bytes=settings.llm_state_cache_mb * 2**20,
                vision=vision,
                adaptive_threads=(settings.resolved_n_threads(), cores) if adaptive else None,
            )
        except BaseException:
            llama.close()
            raise
        logger.info(
            "loaded chat model %s from %s in %.2fs (n_ctx=%d, gpu_layers=%d)",
            model_id,
            path,
            time.monotonic() - started,
            backend.n_ctx,
            n_gpu_layers,
        )
        engine = cls(
            model_id,
            backend,
            n_ctx=backend.n_ctx,
            slots=settings.llm_slots,
            max_queue=settings.llm_max_queue,
            on_job_done=on_job_done,
            vision=vision is not None,
        )
        engine.llama = llama
        return engine

    @property
    def busy(self) -> bool:
        """Whether a job is queued or running."""
        return self._scheduler.busy

    @property
    def running(self) -> bool:
        """Whether a job is generating right now."""
        stats = self._scheduler.stats()
        return stats.running + stats.preempted > 0

    def stats(self) -> list[SchedulerStats]:
        return [self._scheduler.stats()]

    def close(self, *, wait: float = 10.0) -> None:
        """End every queued and running job with EngineClosed, then free the model (blocking)."""
        self._scheduler.close(wait=wait)
        if self._scheduler.busy:  # a worker is still inside llama.cpp: freeing it now would crash it
            logger.warning(
                "chat model %s: a job did not stop in %.0f s; not freeing the model", self.id, wait
            )
            return
        self._backend.close()

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
        priority: Priority = Priority.HTTP,
        cache_key: str | None = None,
    ) -> ChatStream:
        """Stream a chat reply. Entering the stream raises QueueFull when the model's queue is full,
        ContextLengthExceeded if the prompt does not fit, or InvalidRequest for a schema no grammar can be
        made of. With ``truncate_history`` the oldest whole turns are dropped instead until the
        conversation fits (the system prompt stays). ``cache_key`` names a conversation (a realtime
        session) whose context is kept between its turns. ``messages`` must not change until the stream
        is entered: the worker renders it.
        """
        request = ChatRequest(
            messages=messages,
            plan=chat_format.plan_tools(tools, tool_choice),  # cheap, and its errors are the caller's
            params=params or SamplingParams(),
            tools=tools,
            response_format=response_format,
            truncate_history=truncate_history,
            cache_key=cache_key,
        )
        backend = self._backend

        def work(control: JobControl) -> Iterator[Item]:
            return backend.chat(control, request)

        return ChatStream(self._scheduler, work, priority=priority)

    def complete(
        self, prompt: str | list[int], params: SamplingParams, *, priority: Priority = Priority.HTTP
    ) -> ChatStream:
        """Stream a raw completion of ``prompt``, text or token ids (the legacy completions API).

        Entering the stream raises QueueFull, ContextLengthExceeded, or InvalidRequest for a token id
        outside the vocabulary; then ``prompt_text`` is the prompt as text.
        """
        backend = self._backend

        def work(control: JobControl) -> Iterator[Item]:
            return backend.complete(control, prompt, params)

        return ChatStream(self._scheduler, work, priority=priority)
