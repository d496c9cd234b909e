"""The stage protocol: what a user's transform is, and how a chain of them runs.

A realtime turn runs through a chain of stages (audio in -> VAD/turns -> STT -> **transcript stages** ->
LLM -> **text stages** -> clause chunker -> TTS -> audio out). The two kinds in bold are where users add
their own transforms, each an async iterator over the one before it:

- A :data:`TranscriptStage` reads the user's turn as text (:class:`Turn`) and yields what the turn becomes:
  the same or a rewritten :class:`Turn` (the LLM answers it), a :class:`Reply` (the stage answers the
  turn itself: the reply's text is spoken instead of the LLM's), or nothing at all (the turn is dropped:
  the response ends with no output). A stage after one that answered sees the :class:`Reply` and usually
  passes it on; :func:`map_turns` writes that boilerplate for a stage that handles one turn at a time.
- A :data:`TextStage` reads the reply's text as it streams (the LLM's deltas, or a :class:`Reply`'s) and
  yields the text to speak or show: rewritten, filtered, buffered. What it yields goes to the clause
  chunker, so it may yield any pieces, whole words or not.

Stage objects belong to a :class:`~.pipeline.Pipeline`, which all the sessions that chose it share: keep no
per-session state in a stage, or key it by ``ctx.session_id``. A stage is cancelled (``CancelledError`` at
its current ``await``) when its response is (barge-in, ``response.cancel``, a disconnect), and its
generator is closed when the chain no longer needs it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from localrt.pipeline.context import StageContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Turn:
    """The user's turn as text: the transcript of its audio, or the text it was typed as."""

    text: str
    item_id: str  # the user's conversation item


@dataclass(frozen=True)
class Reply:
    """A stage answers the turn itself: ``text`` (all at once, or streamed in pieces) is spoken (or
    shown, in a text response) instead of the LLM's reply; the text stages still apply to it."""

    text: str | AsyncIterable[str]


TurnOutput = Turn | Reply
TranscriptStage = Callable[[AsyncIterator[TurnOutput], StageContext], AsyncIterator[TurnOutput]]
TextStage = Callable[[AsyncIterator[str], StageContext], AsyncIterator[str]]

T = TypeVar("T")


def map_turns(
    handle: Callable[[Turn, StageContext], Awaitable[TurnOutput | None]],
) -> TranscriptStage:
    """A transcript stage from a function of one turn: it returns the turn (rewritten or not), a
    :class:`Reply`, or None to drop the turn. Replies from earlier stages pass through untouched."""

    async def stage(upstream: AsyncIterator[TurnOutput], ctx: StageContext) -> AsyncIterator[TurnOutput]:
        async for event in upstream:
            out = await handle(event, ctx) if isinstance(event, Turn) else event
            if out is not None:
                yield out

    stage.__name__ = stage.__qualname__ = getattr(handle, "__name__", "stage")
    return stage


@contextlib.asynccontextmanager
async def chained(
    source: AsyncIterator[T],
    stages: Sequence[Callable[[AsyncIterator[T], StageContext], AsyncIterator[T]]],
    ctx: StageContext | None,
) -> AsyncIterator[AsyncIterator[T]]:
    """``source`` through ``stages`` in order: the last stage's iterator (``ctx`` may be None only when
    there are no stages).

    On leaving, every iterator of the chain (the source's included) is closed, the outermost first, so a
    stage that stopped reading its upstream early (it answered, or it was abandoned after its first
    output) leaves no generator, and no engine job inside one, running."""
    iterators: list[AsyncIterator[T]] = [source]
    try:
        for stage in stages:
            if ctx is None:
                raise ValueError("pipeline stages need a StageContext")
            iterators.append(stage(iterators[-1], ctx))
        yield iterators[-1]
    finally:
        for iterator in reversed(iterators):
            await aclose(iterator)


async def aclose(iterator: object) -> None:
    """Close an async generator (a no-op for iterators that are not): a failing cleanup is logged, not
    raised over what is already propagating."""
    close = getattr(iterator, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except RuntimeError as exc:  # still running: it is being closed by the exception unwinding it
        logger.debug("stage iterator not closed: %s", exc)
    except Exception:
        logger.exception("a pipeline stage failed while closing")


async def text_pieces(text: str | AsyncIterable[str]) -> AsyncIterator[str]:
    """A reply's text as a stream of pieces."""
    if isinstance(text, str):
        if text:
            yield text
        return
    iterator = aiter(text)
    try:
        async for piece in iterator:
            if not isinstance(piece, str):
                raise TypeError(f"a Reply's text stream yielded {type(piece).__name__}, not str")
            if piece:
                yield piece
    finally:
        await aclose(iterator)


async def answer(turn: Turn, stages: Sequence[TranscriptStage], ctx: StageContext) -> TurnOutput | None:
    """What the transcript stages make of one turn: the first thing the chain yields (a Turn for the LLM
    to answer, or a Reply), or None when it yields nothing (the turn is dropped)."""

    async def source() -> AsyncIterator[TurnOutput]:
        yield turn

    async with chained(source(), stages, ctx) as outputs:
        async for first in outputs:
            if not isinstance(first, Turn | Reply):
                raise TypeError(f"a transcript stage yielded {type(first).__name__}, not a Turn or a Reply")
            return first
    return None
