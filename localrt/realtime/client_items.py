"""Client items: a parsed ``conversation.item.create`` (or ``response.input``) item -> an :class:`Item`,
and its images checked against the session's chat model (:func:`check_images`).

The one place client audio of an item is decoded: base64 in pieces, G.711 expanded, resampled to 16 kHz
int16 (what Whisper reads and the conversation keeps). The checks that need no decoding (sizes, echo
budget) and the choice of running it in a worker thread are :func:`.budget.build_item`'s.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np

from localrt import images
from localrt.audio.resample import StreamResampler
from localrt.engines.interfaces import ChatModels
from localrt.errors import InvalidRequest
from localrt.realtime import events as ev
from localrt.realtime.conversation import STT_RATE, AudioClip, Content, Conversation, Item
from localrt.realtime.events import new_id, shown
from localrt.realtime.formats import AudioFormat
from localrt.realtime.offload import check


def item_from_param(
    param: Any,
    input_format: AudioFormat,
    conversation: Conversation | None,
    *,
    where: str = "item",
    stop: threading.Event | None = None,
) -> Item:
    """A parsed ``conversation.item.create`` item -> an :class:`Item`; APIError when it is not allowed.

    Decodes its audio (see :func:`decode_clip`): call it in a worker thread when there is a lot of it
    (``stop``: see :mod:`.offload`). It reads ``conversation`` only to check a ``call_id``.
    """
    item_id = param.id or new_id("item")
    if isinstance(param, ev.FunctionCallItem):
        return Item(
            item_id,
            "function_call",
            call_id=param.call_id or new_id("call"),
            name=param.name,
            arguments=param.arguments,
        )
    if isinstance(param, ev.FunctionCallOutputItem):
        if conversation is not None and not conversation.has_call(param.call_id):
            raise InvalidRequest(
                f"Tool call output with call_id {shown(param.call_id)} has no matching function call in the "
                "conversation.",
                param=f"{where}.call_id",
            )
        return Item(item_id, "function_call_output", call_id=param.call_id, output=param.output)
    allowed = {
        "system": {"input_text"},
        "user": {"input_text", "input_audio", "input_image"},
        "assistant": {"output_text", "text"},
    }[param.role]
    contents: list[Content] = []
    for i, part in enumerate(param.content):
        if part.type not in allowed:
            raise InvalidRequest(
                f"Invalid value: '{part.type}'. A {param.role} message may hold: "
                + ", ".join(f"'{t}'" for t in sorted(allowed))
                + ".",
                param=f"{where}.content[{i}].type",
            )
        contents.append(_content(part, input_format, f"{where}.content[{i}]", stop))
    return Item(item_id, "message", role=param.role, content=contents)


def _content(part: Any, input_format: AudioFormat, where: str, stop: threading.Event | None) -> Content:
    if part.type in ("output_text", "text"):
        return Content("output_text", text=part.text)
    if part.type == "input_text":
        return Content("input_text", text=part.text)
    if part.type == "input_image":
        if not part.image_url:
            raise InvalidRequest(
                "Missing required parameter: an input_image needs an image_url (a data URL).",
                param=f"{where}.image_url",
                code="missing_required_parameter",
            )
        return Content("input_image", image_url=part.image_url, detail=part.detail)
    clip = decode_clip(part.audio, input_format, f"{where}.audio", stop) if part.audio is not None else None
    content = Content("input_audio", transcript=part.transcript, audio=clip)
    if part.transcript is None and clip is not None:
        content.transcribed = asyncio.Event()  # the session transcribes it
    return content


async def check_images(item: Item, llm: ChatModels, model: str | None, where: str = "item") -> None:
    """An item's images against the session's chat model (:mod:`localrt.images`): an APIError naming
    the part (``item.content[0]``) when the model reads no images, cannot read this one (an http(s)
    URL for a local model) or it is not a valid image; the caller then does not add the item."""
    parts = [(i, c) for i, c in enumerate(item.content) if c.type == "input_image"]
    if not parts:
        return
    support = images.support_of(await llm.get(model))
    for i, content in parts:
        if not support.vision:
            raise images.not_accepted(support, f"{where}.content[{i}]", "input_image")
        await images.check_image(content.image_url, f"{where}.content[{i}]", support)


def decode_clip(b64: str, fmt: AudioFormat, param: str, stop: threading.Event | None = None) -> AudioClip:
    """Client audio -> a 16 kHz int16 clip, piece by piece (no full-length float copy).

    15 MiB of G.711 takes ~0.6 s here: the caller runs it in a worker thread; ``stop`` ends it early
    (:class:`~.offload.Abandoned`) when nobody waits for it any more.
    """
    clip = AudioClip(STT_RATE)
    resampler = StreamResampler(fmt.rate, STT_RATE, dtype=np.int16)
    for piece in fmt.decode_chunks(b64, param=param):
        check(stop)
        clip.append(resampler.process(piece))
    clip.append(resampler.process(np.zeros(0, np.int16), last=True))
    return clip
