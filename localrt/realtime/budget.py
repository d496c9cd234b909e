"""Sizes: what a client's item holds as received, and what fits in one server event.

Client items are built here (:func:`build_item`): checked against ``realtime_max_item_bytes`` before
anything is decoded, with large audio decoded in a worker thread (:mod:`.offload`).

Every server event must fit in :data:`~.server_events.MAX_EVENT_BYTES` (1 MiB). Most are small by
construction; the ones that echo what a client sent (``conversation.item.added`` of a created item,
``session.updated``, ``response.created``) are checked here *before* the client's input is accepted, so
input whose echo would not fit is refused with an ``error`` instead of producing an event that cannot be
sent. ``conversation.item.retrieved`` carries audio bytes: :func:`retrieved` leaves out the audio that
would not fit (the transcript stays).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from localrt.audio.resample import resample
from localrt.errors import InvalidRequest
from localrt.realtime import events as ev
from localrt.realtime.client_items import item_from_param
from localrt.realtime.conversation import Conversation, Item
from localrt.realtime.events import Dialect
from localrt.realtime.formats import AudioFormat
from localrt.realtime.offload import INLINE_MAX_CHARS, run_off_loop
from localrt.realtime.server_events import MAX_EVENT_BYTES

logger = logging.getLogger(__name__)

ENVELOPE_BYTES = 1024  # an event's own fields around the echoed object (type, ids, previous_item_id)
ECHO_BUDGET = MAX_EVENT_BYTES - ENVELOPE_BYTES


def _chars(obj: Any) -> int:
    """Characters in the strings of a JSON value (a lower bound of its JSON size), iteratively."""
    n, stack = 0, [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            n += len(node)
        elif isinstance(node, dict):
            n += sum(len(k) for k in node if isinstance(k, str))
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return n


def wire_bytes(obj: Any, limit: int = ECHO_BUDGET) -> int:
    """The UTF-8 JSON size of ``obj``, or some number above ``limit`` when it is surely above it.

    Cheap when the answer is obvious: a value with more characters than ``limit`` is not serialized.
    """
    chars = _chars(obj)
    if chars > limit:
        return chars
    return len(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


async def build_item(
    param: Any,
    fmt: AudioFormat,
    conversation: Conversation | None,
    *,
    dialect: Dialect,
    max_bytes: int,
    where: str,
) -> Item:
    """A client's item (``conversation.item.create``, ``response.input``) within the bounds.

    Over ``max_bytes`` as received (``realtime_max_item_bytes``), it is refused before its audio is
    decoded; a large audio part is decoded in a worker thread; an item whose echo would not fit in a
    server event is refused.
    """
    size = param_bytes(param)
    if size > max_bytes:
        raise InvalidRequest(
            f"The item is {size} bytes (text characters and decoded audio), over this server's limit of "
            f"{max_bytes} (--realtime-max-item-bytes).",
            code="item_too_large",
            param=where,
        )
    if audio_chars(param) <= INLINE_MAX_CHARS:
        item = item_from_param(param, fmt, conversation, where=where)
    else:  # seconds to minutes of audio: decode and resample off the event loop (awaited: still in order)
        item = await run_off_loop(
            lambda stop: item_from_param(param, fmt, conversation, where=where, stop=stop)
        )
    if wire_bytes(item.to_wire(dialect)) > ECHO_BUDGET:
        raise InvalidRequest(
            "The item's text would not fit in the 1 MiB server event that echoes it "
            "(conversation.item.added).",
            code="item_too_large",
            param=where,
        )
    return item


def param_bytes(param: Any) -> int:
    """A client item's size as received: characters of text plus bytes of (base64-decoded) audio."""
    if isinstance(param, ev.FunctionCallItem):
        return len(param.name) + len(param.arguments) + len(param.call_id or "")
    if isinstance(param, ev.FunctionCallOutputItem):
        return len(param.call_id) + len(param.output)
    n = 0
    for part in param.content:
        for name in ("text", "transcript", "image_url"):
            n += len(getattr(part, name, None) or "")
        n += len(getattr(part, "audio", None) or "") * 3 // 4
    return n


def audio_chars(param: Any) -> int:
    """How much base64 audio a client item carries (large ones are decoded in a worker thread)."""
    parts = getattr(param, "content", ())
    return sum(len(getattr(part, "audio", None) or "") for part in parts)


# --- conversation.item.retrieve -------------------------------------------------------------------------
def retrieved(
    item: Item, dialect: Dialect, fmt: AudioFormat, budget: int
) -> tuple[dict[str, Any], Callable[[], None]]:
    """The item as ``conversation.item.retrieved`` carries it, and the work that fills in its audio.

    The work (resampling, base64) belongs in a worker thread; it reads a snapshot of the clips taken
    here, so audio still being appended does not race with it. An audio part that would push the
    item's JSON past ``budget`` bytes (about 16 s of pcm16 at 24 kHz for a 1 MiB event) is left out:
    the part has its ``transcript`` and no ``audio``, as when old audio has been forgotten.
    """
    wire = item.to_wire(dialect)
    size = wire_bytes(wire, budget)
    jobs: list[tuple[dict[str, Any], list[np.ndarray], int]] = []
    for content, part in zip(item.content, wire.get("content", ()), strict=False):
        clip = content.audio
        if clip is None or "transcript" not in part:
            continue
        extra = fmt.encoded_chars(-(-clip.n_samples * fmt.rate // clip.rate) + 16) + len(',"audio":""')
        if size + extra > budget:
            logger.info("item %s: %d ms of audio left out of retrieve (too large)", item.id, clip.duration_ms)
            continue
        size += extra
        jobs.append((part, list(clip.chunks), clip.rate))

    def fill() -> None:
        for part, chunks, rate in jobs:
            samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
            if rate != fmt.rate:
                samples = resample(samples, rate, fmt.rate).astype(np.int16)
            part["audio"] = fmt.encode(samples)

    return wire, fill
