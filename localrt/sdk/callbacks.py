"""The app's callbacks, registered with the facade's decorators and called by the session.

Callbacks may be ``async def`` or plain functions. An ``on_transcript`` callback taking two parameters
``(text, is_final)`` gets the assistant's transcripts only (as in the examples); one that also takes a
third parameter (``speaker``) gets both sides, with ``speaker`` = ``"user"`` or ``"assistant"``. An
``on_interrupted`` callback taking one parameter gets the ``Interrupted`` event (item and played ms).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from localrt.sdk.models import (
    AudioChunk,
    Interrupted,
    RealtimeError,
    RealtimeEvent,
    ToolCallRequest,
    TranscriptDelta,
)

logger = logging.getLogger(__name__)

Callback = Callable[..., Any]


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _wants_speaker(fn: Callback) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params) or any(p.name == "speaker" for p in params):
        return True
    return _positional_count(fn) >= 3


def _positional_count(fn: Callback) -> int:
    """How many positional arguments ``fn`` accepts (many for ``*args``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return 0
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 99
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])


@dataclass
class Handlers:
    audio: list[Callback] = field(default_factory=list)
    transcript: list[tuple[Callback, bool]] = field(default_factory=list)  # (fn, wants speaker)
    tool_call: list[Callback] = field(default_factory=list)
    error: list[Callback] = field(default_factory=list)
    interrupted: list[tuple[Callback, bool]] = field(default_factory=list)  # (fn, takes the event)

    def add_transcript(self, fn: Callback) -> None:
        self.transcript.append((fn, _wants_speaker(fn)))

    def add_interrupted(self, fn: Callback) -> None:
        self.interrupted.append((fn, _positional_count(fn) >= 1))

    async def dispatch(self, event: RealtimeEvent) -> None:
        """Call the callbacks for ``event``. A callback that raises is reported to ``on_error`` (or
        logged) and never stops the session."""
        if isinstance(event, AudioChunk):
            if event.data:
                for fn in self.audio:
                    await self._call(fn, event.data)
        elif isinstance(event, TranscriptDelta):
            for fn, wants_speaker in self.transcript:
                if wants_speaker:
                    await self._call(fn, event.text, event.is_final, event.speaker)
                elif event.speaker == "assistant":
                    await self._call(fn, event.text, event.is_final)
        elif isinstance(event, RealtimeError):
            if not self.error:
                logger.warning("realtime error: %s (code %s)", event.message, event.code)
            for fn in self.error:
                await self._call(fn, event, report=False)
        elif isinstance(event, Interrupted):
            for fn, takes_event in self.interrupted:
                await (self._call(fn, event) if takes_event else self._call(fn))

    async def tool_result(self, request: ToolCallRequest) -> Any:
        """The first non-None result of the ``on_tool_call`` callbacks (None: run the function)."""
        for fn in self.tool_call:
            result = await maybe_await(fn(request))
            if result is not None:
                return result
        return None

    async def _call(self, fn: Callback, *args: Any, report: bool = True) -> None:
        try:
            await maybe_await(fn(*args))
        except Exception as exc:
            logger.exception("callback %r failed", fn)
            if report:
                err = RealtimeError(f"callback {getattr(fn, '__name__', fn)!r} failed: {exc!r}")
                for handler in self.error:
                    await self._call(handler, err, report=False)
