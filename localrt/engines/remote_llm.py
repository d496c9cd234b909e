"""The remote chat engine: chat models served by an OpenAI-compatible upstream (vLLM, SGLang,
llama-server, another localrt), selected by ``llm_base_url`` (``llm_engine`` "openai").

Design:
- Every job goes through one :class:`~localrt.engines.scheduler.Scheduler`, ``llm:remote``, with
  ``llm_remote_slots`` slots (requests streamed from the upstream at once) and ``llm_max_queue`` waiting
  jobs, so priorities (realtime turns first), the 429 on a full queue, ``/health`` and ``/metrics`` work
  as for a local model. A job's body is async HTTP, not a blocking iterator: a
  :class:`~localrt.engines.remote_common.SlotLease` holds the slot (its worker sleeps) while a task on
  the event loop streams the reply with the ``openai`` client (``stream=True``, usage included) and
  hands the events to the caller through a queue (:mod:`localrt.engines.remote_llm_stream`).
- Entering a job waits for a slot and for the upstream's response headers, so an upstream refusal
  (context length, unknown model, 429, 5xx, unreachable) is raised there as localrt's error
  (:func:`~localrt.engines.remote_common.map_error`) and a route still answers with a plain status.
- Cancelling (``cancel()``, leaving the ``async with``) cancels that task: the HTTP response is closed at
  once, whatever it was waiting for, so the upstream sees the client go and stops generating (within
  the chunk it was sending). It never waits on anything; a job still queued leaves the queue at once.
- ``cache_key`` (a realtime session) is sent as ``X-Session-Id`` so routers that pin sessions to a
  replica reuse its prefix cache. The upstream's context size is not known here (``n_ctx`` is its
  ``max_model_len`` when it lists one, else 0), so the history goes as is; a context-length refusal is
  ContextLengthExceeded, except with ``truncate_history`` (realtime turns): then the request is sent
  again without the older half of the conversation's turns, a few times at most.
- ``usage`` (and ``prompt_tokens_details.cached_tokens``) comes from the stream's last chunk; an upstream
  that does not send it (llama-cpp-python's server) gets ``completion_tokens`` = the chunks received.
- Models: ``/models`` of the upstream is read at start-up (a failure is logged and tolerated: the list is
  retried on use, and until then any id is passed through). ``llm_model`` names the default model; the
  OpenAI ids (``gpt-4o``, ``gpt-realtime``...) alias it, as for local models. Images are passed on (the
  upstream may be a vision model; a text-only one refuses them itself).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from localrt.engines import chat_format
from localrt.engines.llm_pool import OPENAI_CHAT_ALIASES, OPENAI_REALTIME_ALIASES
from localrt.engines.remote_common import Upstream
from localrt.engines.remote_llm_stream import RemoteChatJob, Request, sampling
from localrt.engines.scheduler import JobRecord, Priority, Scheduler, SchedulerStats
from localrt.engines.types import SamplingParams
from localrt.errors import APIError, ModelNotFound
from localrt.settings import Settings

__all__ = ["RemoteChatJob", "RemoteChatModel", "RemoteChatModels"]

logger = logging.getLogger(__name__)

_ALIASES = OPENAI_CHAT_ALIASES | OPENAI_REALTIME_ALIASES
_RELIST_S = 30.0  # an upstream whose models could not be listed is asked again at most this often
_SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class RemoteChatModel:
    """One upstream model (a :class:`~localrt.engines.interfaces.ChatModel`)."""

    vision = True  # images go on as they are: the upstream accepts or refuses them
    image_urls = True

    def __init__(self, models: RemoteChatModels, model_id: str, n_ctx: int = 0) -> None:
        self._models = models
        self.id = model_id
        self.n_ctx = n_ctx  # 0: unknown

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
    ) -> RemoteChatJob:
        """Stream a chat reply from the upstream (see the module for ``truncate_history``)."""
        chat_format.plan_tools(tools, tool_choice)  # the same 400s as a local model, before any request
        body: dict[str, Any] = {"messages": messages, **sampling(params or SamplingParams())}
        if tools:
            body["tools"] = tools
            if tool_choice is not None:
                body["tool_choice"] = tool_choice
        if response_format and response_format.get("type", "text") != "text":
            body["response_format"] = response_format
        headers = {}
        if cache_key:
            if not _SESSION_ID.fullmatch(cache_key):
                cache_key = uuid.uuid5(uuid.NAMESPACE_URL, cache_key).hex
            headers["X-Session-Id"] = cache_key
        return self._job(Request("chat", self.id, body, headers, priority, truncate_history))

    def complete(
        self, prompt: str | list[int], params: SamplingParams, *, priority: Priority = Priority.HTTP
    ) -> RemoteChatJob:
        """Stream a raw completion (token-id prompts go as they are; ``prompt_text`` is then empty)."""
        request = Request("complete", self.id, {"prompt": prompt, **sampling(params)}, {}, priority)
        return self._job(request, prompt_text=prompt if isinstance(prompt, str) else "")

    def _job(self, request: Request, prompt_text: str = "") -> RemoteChatJob:
        models = self._models
        return RemoteChatJob(models.scheduler, models.upstream, request, prompt_text=prompt_text)


class RemoteChatModels:
    """The chat models of one upstream (a :class:`~localrt.engines.interfaces.ChatModels`)."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        model: str | None = None,
        slots: int = 4,
        max_queue: int = 32,
        on_job_done: Callable[[JobRecord], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.scheduler = Scheduler(
            "llm:remote", slots=slots, max_queue=max_queue, on_job_done=on_job_done, shares_cpu=False
        )
        self._configured = model
        self.default_id = model or "default"
        self._cards: dict[str, dict[str, Any]] = {}
        self._listed = False
        self._last_list = 0.0
        self._list_lock: asyncio.Lock | None = None
        self._models: dict[str, RemoteChatModel] = {}  # listed ids only (a client's id is not kept)

    @classmethod
    def from_settings(
        cls, settings: Settings, on_job_done: Callable[[JobRecord], None] | None = None
    ) -> RemoteChatModels:
        """Blocking (start-up, in a thread): connect to ``llm_base_url`` and read its models."""
        if not settings.llm_base_url:
            raise ValueError("llm_engine 'openai' needs llm_base_url")
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        models = cls(
            Upstream(settings.llm_base_url, key),
            model=settings.llm_model,
            slots=settings.llm_remote_slots,
            max_queue=settings.llm_max_queue,
            on_job_done=on_job_done,
        )
        models.list_models()
        logger.info(
            "chat models from %s: default %s (%d listed), %d slots",
            models.upstream.display,
            models.default_id,
            len(models._cards),
            settings.llm_remote_slots,
        )
        return models

    # --- the upstream's model list -----------------------------------------------------------------------
    def list_models(self) -> bool:
        """Read the upstream's ``/models`` (blocking); False, logged, when it cannot be read."""
        self._last_list = time.monotonic()
        try:
            cards = self.upstream.list_models()
        except APIError as err:
            logger.warning(
                "could not list the models of %s (%s); serving %s, and any requested id is passed on "
                "until the list can be read",
                self.upstream.display,
                err.message,
                self.default_id,
            )
            return False
        self._set_cards(cards)
        return True

    async def _relist(self) -> None:
        if self._listed or time.monotonic() - self._last_list < _RELIST_S:
            return
        self._list_lock = self._list_lock or asyncio.Lock()
        async with self._list_lock:
            if self._listed or time.monotonic() - self._last_list < _RELIST_S:
                return
            self._last_list = time.monotonic()
            try:
                page = await asyncio.wait_for(self.upstream.client().models.list(), 5.0)
            except Exception as exc:
                logger.warning("still cannot list the models of %s: %s", self.upstream.display, exc)
                return
            self._set_cards([m.model_dump() for m in page.data])

    def _set_cards(self, cards: list[dict[str, Any]]) -> None:
        self._cards = {str(c["id"]): c for c in cards if c.get("id")}
        self._listed = True
        if self._configured is None and self._cards:
            self.default_id = next(iter(self._cards))
        elif self._configured is not None and self._configured not in self._cards:
            logger.warning(
                "llm_model %r is not among the models %s lists (%s); sending it anyway",
                self._configured,
                self.upstream.display,
                ", ".join(self._cards) or "none",
            )

    # --- ChatModels ---------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return list(dict.fromkeys([self.default_id, *self._cards]))

    def aliases(self) -> list[str]:
        return sorted(_ALIASES)

    def resolve(self, model: str | None) -> str:
        if model is None or model in _ALIASES or any(model.startswith(a + "-") for a in _ALIASES):
            return self.default_id
        if model == self.default_id or model in self._cards or not self._listed:
            return model
        raise ModelNotFound(model)

    async def get(self, model: str | None) -> RemoteChatModel:
        await self._relist()
        model_id = self.resolve(model)
        found = self._models.get(model_id)
        if found is None:
            card = self._cards.get(model_id, {})
            n_ctx = card.get("max_model_len") or card.get("context_length") or 0
            found = RemoteChatModel(self, model_id, n_ctx=int(n_ctx) if isinstance(n_ctx, int) else 0)
            if model_id in self.ids():  # unlisted ids are the client's: not kept
                self._models[model_id] = found
        return found

    def created(self, model_id: str) -> int:
        created = self._cards.get(model_id, {}).get("created")
        return int(created) if isinstance(created, (int, float)) else 0

    @property
    def loaded_ids(self) -> list[str]:
        return self.ids()

    @property
    def busy(self) -> bool:
        return self.scheduler.busy

    def stats(self) -> list[SchedulerStats]:
        return [self.scheduler.stats()]

    async def probe(self) -> dict[str, Any]:
        """The upstream's reachability, for ``/health``."""
        return await self.upstream.probe()

    def close(self) -> None:
        """End queued and running jobs with EngineClosed (their streams are closed), then the clients."""
        self.scheduler.close(wait=5.0)
        self.upstream.close()
