"""The built-in ``interpreter`` pipeline: what the user says is spoken back translated.

Select it per session with ``/v1/realtime?pipeline=interpreter&target=German`` (``target``: the
language to translate into, default French; letters, spaces, hyphens and parentheses, up to 40
characters), or for every session with ``--pipeline interpreter``.

Each user turn's text is translated by the session's chat model with a translation prompt of its own (no
conversation history, no session instructions) and the translation is spoken as it streams, clause by
clause, in the session's voice. The pipeline is out-of-band: each translation is a response with
``conversation: "none"`` (``metadata.pipeline`` = ``"interpreter"``), so no assistant reply item is
added to the conversation, which holds the user's turns only. A turn with no text (silence, a failed
transcription) is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from localrt.errors import InvalidRequest
from localrt.pipeline.context import StageContext
from localrt.pipeline.pipeline import Pipeline
from localrt.pipeline.stages import Reply, Turn, map_turns
from localrt.settings import Settings

DEFAULT_TARGET = "French"
TARGET = re.compile(r"[A-Za-z][A-Za-z ()-]{0,39}")


def prompt(target: str, text: str) -> list[dict[str, Any]]:
    """The translation prompt: the text alone, nothing of the conversation."""
    return [
        {
            "role": "system",
            "content": f"You are an interpreter. Translate the user's words into {target}. "
            f"Answer with the {target} translation only: no notes, no quotes, no other language.",
        },
        {"role": "user", "content": f"Translate into {target}: {text}"},
    ]


def max_tokens(text: str) -> int:
    """Enough for a translation of ``text``, and no more (a runaway model stops soon)."""
    return min(256, 16 + 3 * len(text.split()))


async def translate(turn: Turn, ctx: StageContext) -> Reply | None:
    text = turn.text.strip()
    if not text:
        return None
    target = ctx.options.get("target") or DEFAULT_TARGET
    return Reply(ctx.chat(prompt(target, text), max_tokens=max_tokens(text), temperature=0.2))


def check_options(options: Mapping[str, str]) -> None:
    target = options.get("target", DEFAULT_TARGET)
    if not TARGET.fullmatch(target):
        raise InvalidRequest(
            "Invalid target language: use a language's name (letters, spaces, hyphens, parentheses; "
            "at most 40 characters), e.g. French.",
            param="target",
        )


def factory(settings: Settings) -> Pipeline:
    return Pipeline(
        "interpreter",
        transcript=[map_turns(translate)],
        out_of_band=True,
        options={"target": DEFAULT_TARGET},
        check_options=check_options,
    )
