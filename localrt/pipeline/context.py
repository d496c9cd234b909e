"""What a stage is given with each turn: the session, its options, and the chat model to call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from localrt.engines.interfaces import ChatModels
from localrt.engines.scheduler import Priority
from localrt.engines.types import ChatResult, SamplingParams, TextDelta
from localrt.settings import Settings


@dataclass
class Usage:
    """Tokens the stages' own generations used (added to the response's ``usage``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, result: ChatResult) -> None:
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        self.cached_tokens += result.cached_tokens


class StageContext:
    """One response's view for its stages.

    ``options`` are the session's pipeline options (the pipeline's declared defaults, overridden by the
    WebSocket URL's query parameters of the same names). :meth:`chat` runs a generation on the session's
    chat model as realtime work (before HTTP and bulk requests in the engine's queue) and with no
    conversation state: a stage's prompt is its own, not the conversation's."""

    def __init__(
        self,
        *,
        session_id: str,
        response_id: str,
        pipeline: str,
        options: Mapping[str, str],
        settings: Settings,
        llm: ChatModels,
        model: str,
        max_tokens: int | None,
    ) -> None:
        self.session_id = session_id
        self.response_id = response_id
        self.pipeline = pipeline
        self.options = options
        self.settings = settings
        self.max_tokens = max_tokens  # the response's max_output_tokens (None: no limit)
        self.usage = Usage()
        self._llm = llm
        self._model = model

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float = 0.2,
    ) -> AsyncIterator[str]:
        """Stream the text of a chat reply to ``messages`` (chat-completions format).

        ``max_tokens`` is capped by the response's own limit. Leaving the iteration early (or being
        cancelled) stops the generation without waiting; engine errors (a full queue, a closed engine)
        are raised from here and fail the response."""
        limits = [n for n in (max_tokens, self.max_tokens) if n is not None]
        params = SamplingParams(max_tokens=min(limits) if limits else None, temperature=temperature)
        model = await self._llm.get(self._model)
        job = model.chat(messages, params=params, priority=Priority.REALTIME)
        try:
            async with job:  # queued here; leaving (done, closed or cancelled) never waits
                async for event in job:
                    if isinstance(event, TextDelta) and event.text:
                        yield event.text
        finally:
            result = getattr(job, "result", None)
            if isinstance(result, ChatResult):
                self.usage.add(result)
