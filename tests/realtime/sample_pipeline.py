"""A user's pipeline, as ``--pipeline sample_pipeline:factory`` loads it (tests/realtime is on the path).

- transcript stage ``shout``: "ping" is answered "Pong!" (the stage answers the turn itself), "never
  mind..." is dropped, "count slowly" is answered by a slow stream (for cancelling), "explode" raises,
  anything else is rewritten in capitals for the LLM;
- text stage ``redact``: the word "Paris" never reaches the speaker (a word split across deltas is
  still caught: the stage holds text back to the last space).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from localrt.pipeline import Pipeline, Reply, StageContext, Turn, TurnOutput, map_turns
from localrt.settings import Settings

CLOSED: list[str] = []  # the slow replies whose generator was closed (cancelled responses)


async def slow_count(ctx: StageContext) -> AsyncIterator[str]:
    try:
        for word in ("One,", " two,", " three,", " four,", " five."):
            await asyncio.sleep(0.3)
            yield word
    finally:
        CLOSED.append(ctx.response_id)


async def shout(turn: Turn, ctx: StageContext) -> TurnOutput | None:
    words = turn.text.strip(" .!?").lower()
    if words == "ping":
        return Reply("Pong!")
    if words.startswith("never mind"):
        return None
    if words == "count slowly":
        return Reply(slow_count(ctx))
    if words == "explode":
        raise RuntimeError("a bug in the user's stage")
    return Turn(turn.text.upper(), turn.item_id)


def _redact(text: str) -> str:
    return re.sub(r"\bParis\b", "[redacted]", text)


async def redact(upstream: AsyncIterator[str], ctx: StageContext) -> AsyncIterator[str]:
    pending = ""
    async for piece in upstream:
        pending += piece
        cut = pending.rfind(" ")
        if cut > 0:
            yield _redact(pending[:cut])
            pending = pending[cut:]
    if pending:
        yield _redact(pending)


def factory(settings: Settings) -> Pipeline:
    return Pipeline("sample", transcript=[map_turns(shout)], text=[redact])


def not_a_factory(settings: Settings) -> object:
    return "not a pipeline"
