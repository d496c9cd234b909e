"""The chat models a server serves, by id: the default loaded at start-up, others on first use.

OpenAI's well-known model ids are aliases of the default model, so unmodified apps work; any other
unknown id is ``model_not_found``. Loading happens in a worker thread, never on the event loop, and at
most ``max_loaded_models`` stay loaded: the least recently used non-default model is closed first, but
never one with jobs queued or running (if every candidate is busy, the pool stays over the limit until
a later load). Closing a model ends its queued and running jobs with EngineClosed, which callers see.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from localrt import catalog as catalog_mod
from localrt.engines.llm import LLMEngine, OnJobDone
from localrt.engines.scheduler import SchedulerStats
from localrt.errors import ModelNotFound
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


# (model id, path, settings, on_job_done) -> a loaded model (blocking).
Loader = Callable[[str, Path, Settings, OnJobDone | None], LLMEngine]


class LLMPool:
    """The chat models this server serves: the default one loaded at start-up, others on first use.

    ``on_job_done`` is every model's scheduler hook (metrics); ``loader`` loads a model (tests swap it)."""

    def __init__(
        self,
        settings: Settings,
        cat: catalog_mod.Catalog,
        *,
        on_job_done: OnJobDone | None = None,
        loader: Loader = LLMEngine.load,
    ) -> None:
        self._settings = settings
        self._on_job_done = on_job_done
        self._loader = loader
        self._created: dict[str, int] = {}
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
        engine = self._load(self.default_id)
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
            engine = await loop.run_in_executor(None, self._load, model_id)
            self._loaded[model_id] = engine
            await self._evict(keep=model_id)
            return engine

    def _load(self, model_id: str) -> LLMEngine:
        return self._loader(model_id, self._paths[model_id], self._settings, self._on_job_done)

    async def _evict(self, *, keep: str) -> None:
        """Close least recently used models over ``max_loaded_models``, skipping busy ones."""
        loop = asyncio.get_running_loop()
        while len(self._loaded) > self._settings.max_loaded_models:
            victim = next(
                (
                    k
                    for k, engine in self._loaded.items()
                    if k not in (self.default_id, keep) and not engine.busy
                ),
                None,
            )
            if victim is None:
                busy = [k for k in self._loaded if k not in (self.default_id, keep)]
                logger.info("over max_loaded_models, but %s have jobs in flight: none evicted", busy)
                return
            old = self._loaded.pop(victim)
            logger.info("evicting chat model %s", victim)
            await loop.run_in_executor(None, old.close)

    def created(self, model_id: str) -> int:
        """When the model's file was made (Unix seconds; 0 if unknown)."""
        if model_id not in self._created:
            path = self._paths.get(model_id)
            try:
                self._created[model_id] = int(path.stat().st_mtime) if path is not None else 0
            except OSError:
                self._created[model_id] = 0
        return self._created[model_id]

    @property
    def busy(self) -> bool:
        """Whether any loaded model has a job queued or running."""
        return any(engine.busy for engine in self._loaded.values())

    def stats(self) -> list[SchedulerStats]:
        """One entry per loaded model's scheduler."""
        return [s for engine in list(self._loaded.values()) for s in engine.stats()]

    @property
    def loaded_ids(self) -> list[str]:
        return list(self._loaded)

    def close(self) -> None:
        """Close every model (blocking): their queued and running jobs end with EngineClosed."""
        engines = list(self._loaded.values())
        self._loaded.clear()
        for engine in engines:
            engine.close()
