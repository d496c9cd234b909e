"""The conversation: ordered items, and their conversion to the chat messages the LLM sees (a user
message with images becomes content parts: text and ``image_url``, for a vision model).

Items are dataclasses; the wire shapes (GA ``output_text`` vs beta ``text``) exist only in
:meth:`Item.to_wire`. Audio is kept per content part as an :class:`AudioClip`: int16 chunks at the
clip's own rate (16 kHz for user audio, the output format's rate for the assistant's), plus, for the
assistant, the text span each synthesized clause occupies, so ``conversation.item.truncate`` can cut the
transcript to what was actually heard.

**Bounds** (:class:`Limits`, from the session's settings): the number of items, and the bytes they hold
in total (:meth:`Item.nbytes`: characters of text plus bytes of int16 audio). A client's
``conversation.item.create`` over a bound is refused (:meth:`Conversation.add`; old audio that was only
kept for ``conversation.item.retrieve`` is forgotten first, transcripts stay). Items the server makes
(committed turns, assistant replies) are never refused: like OpenAI's ``truncation``, the oldest items are
dropped to make room (their audio first, then whole items), without events; a later retrieve of one gets
``item_not_found``. Every removal, deletion included, calls ``on_remove`` (the session stops the item's
transcription there, so nothing keeps its audio alive).

Items from a client's parameters (decoding their audio) are built by :mod:`.client_items`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from localrt.errors import APIError, InvalidRequest
from localrt.realtime.events import Dialect, new_id, shown

logger = logging.getLogger(__name__)

ItemType = Literal["message", "function_call", "function_call_output"]
STT_RATE = 16000
KEEP_AUDIO_ITEMS = 64  # audio parts whose bytes stay retrievable


@dataclass
class Span:
    start: int  # sample offsets in the clip
    end: int
    text: str  # the text these samples speak, verbatim (leading whitespace included)


@dataclass
class AudioClip:
    rate: int
    chunks: list[np.ndarray] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    n_samples: int = 0

    def append(self, samples: np.ndarray, text: str | None = None) -> None:
        """Add int16 samples; ``text`` opens a new span, None extends the last one."""
        if text is not None:
            self.spans.append(Span(self.n_samples, self.n_samples, text))
        self.chunks.append(samples)
        self.n_samples += samples.size
        if self.spans:
            self.spans[-1].end = self.n_samples

    def samples(self) -> np.ndarray:
        if len(self.chunks) != 1:
            self.chunks = [np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)]
        return self.chunks[0]

    @property
    def duration_ms(self) -> int:
        return self.n_samples * 1000 // self.rate

    def truncate(self, end_ms: int) -> str:
        """Cut the audio at ``end_ms``; return the text heard up to there.

        Whole clauses before the cut are kept; of the clause playing at the cut, the proportion of its
        words that fits in the time played.
        """
        cut = min(self.n_samples, end_ms * self.rate // 1000)
        self.chunks = [self.samples()[:cut]]
        self.n_samples = cut
        heard: list[str] = []
        kept: list[Span] = []
        for span in self.spans:
            if span.end <= cut:
                heard.append(span.text)
                kept.append(span)
            elif span.start < cut:
                words = re.findall(r"\s*\S+", span.text)
                n = round(len(words) * (cut - span.start) / max(1, span.end - span.start))
                part = "".join(words[:n])
                heard.append(part)
                kept.append(Span(span.start, cut, part))
        self.spans = kept
        return "".join(heard)


@dataclass
class Content:
    type: str  # input_text | input_audio | input_image | output_text | output_audio (GA names)
    text: str | None = None
    transcript: str | None = None
    audio: AudioClip | None = None
    image_url: str | None = None
    detail: str | None = None
    # input audio waiting for Whisper: set once ``transcript`` is final (or transcription failed)
    transcribed: asyncio.Event | None = field(default=None, repr=False)
    # why transcription failed (the engine's queue was full, it closed...): the transcript stays None
    transcription_error: APIError | None = field(default=None, repr=False)

    def to_wire(self, dialect: Dialect) -> dict[str, Any]:
        kind = self.type
        if dialect == "beta":
            kind = {"output_text": "text", "output_audio": "audio"}.get(kind, kind)
        out: dict[str, Any] = {"type": kind}
        if self.type in ("input_text", "output_text"):
            out["text"] = self.text or ""
        elif self.type in ("input_audio", "output_audio"):
            out["transcript"] = self.transcript  # audio bytes only in retrieve (see .budget.retrieved)
        elif self.type == "input_image":
            out["image_url"] = self.image_url
            out["detail"] = self.detail
        return out


@dataclass
class Item:
    id: str
    type: ItemType
    status: Literal["completed", "incomplete", "in_progress"] = "completed"
    role: Literal["user", "assistant", "system"] | None = None
    content: list[Content] = field(default_factory=list)
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None

    def to_wire(self, dialect: Dialect) -> dict[str, Any]:
        """The item as the client sees it (without audio bytes)."""
        out: dict[str, Any] = {
            "id": self.id,
            "object": "realtime.item",
            "type": self.type,
            "status": self.status,
        }
        if self.type == "message":
            out["role"] = self.role
            out["content"] = [c.to_wire(dialect) for c in self.content]
        elif self.type == "function_call":
            out.update(call_id=self.call_id, name=self.name, arguments=self.arguments or "")
        else:
            out.update(call_id=self.call_id, output=self.output or "")
        return out

    def text(self) -> str:
        """What this message says, as the LLM should see it."""
        parts = [c.text if c.type.endswith("_text") else c.transcript for c in self.content]
        return " ".join(p.strip() for p in parts if p and p.strip())

    def pending(self) -> list[asyncio.Event]:
        return [
            c.transcribed for c in self.content if c.transcribed is not None and not c.transcribed.is_set()
        ]

    def nbytes(self) -> int:
        """What the item holds: characters of text plus bytes of int16 audio."""
        n = sum(len(x) for x in (self.call_id, self.name, self.arguments, self.output) if x)
        for c in self.content:
            n += len(c.text or "") + len(c.transcript or "") + len(c.image_url or "")
            if c.audio is not None:
                n += 2 * c.audio.n_samples
        return n


@dataclass(frozen=True)
class Limits:
    """What one conversation may hold (``realtime_max_items`` / ``realtime_max_session_bytes``)."""

    items: int = 1024
    total_bytes: int = 128 * 1024 * 1024


class Conversation:
    """The default conversation of a session: items in order, addressable by id."""

    def __init__(self, limits: Limits | None = None, on_remove: Callable[[Item], None] | None = None) -> None:
        self.id = new_id("conv")
        self.limits = limits or Limits()
        self.on_remove = on_remove
        self._items: list[Item] = []
        self._by_id: dict[str, Item] = {}

    def __iter__(self) -> Any:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def get(self, item_id: str, *, param: str = "item_id") -> Item:
        item = self._by_id.get(item_id)
        if item is None:
            raise InvalidRequest(
                f"Item with item_id {shown(item_id)} not found.", param=param, code="item_not_found"
            )
        return item

    def nbytes(self) -> int:
        return sum(item.nbytes() for item in self._items)

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """:meth:`insert` a client's item; an APIError (param ``item``) if it would pass a bound."""
        if len(self._items) >= self.limits.items:
            raise InvalidRequest(
                f"The conversation already holds {len(self._items)} items, this server's limit "
                "(--realtime-max-items). Delete items with conversation.item.delete first.",
                code="conversation_too_many_items",
                param="item",
            )
        excess = self.nbytes() + item.nbytes() - self.limits.total_bytes
        if excess > 0:
            forgettable = sum(2 * c.audio.n_samples for c in self._forgettable_audio(None) if c.audio)
            if forgettable < excess:
                raise InvalidRequest(
                    f"This item ({item.nbytes()} bytes) would make the conversation hold more than this "
                    f"server's limit of {self.limits.total_bytes} bytes (--realtime-max-session-bytes). "
                    "Delete items with conversation.item.delete first.",
                    code="conversation_too_large",
                    param="item",
                )
            self._forget_audio(excess, None)
        return self.insert(item, previous_item_id)

    def insert(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Append ``item`` (or put it after ``previous_item_id``; ``"root"`` = first).

        Returns the id of the item now before it (None when it is first). Past a bound, the oldest items
        make room (see the module docstring).
        """
        if item.id in self._by_id:
            raise InvalidRequest(f"Item with id '{item.id}' already exists.", param="item.id")
        if previous_item_id is None:
            index = len(self._items)
        elif previous_item_id == "root":
            index = 0
        else:
            prev = self.get(previous_item_id, param="previous_item_id")
            index = self._items.index(prev) + 1
        self._items.insert(index, item)
        self._by_id[item.id] = item
        self._forget_old_audio()
        self._make_room(item)
        index = self._items.index(item)
        return self._items[index - 1].id if index > 0 else None

    def _make_room(self, keep: Item) -> None:
        total = self.nbytes()
        if total > self.limits.total_bytes:
            total -= self._forget_audio(total - self.limits.total_bytes, keep)
        while len(self._items) > self.limits.items or total > self.limits.total_bytes:
            victim = next((i for i in self._items if i is not keep), None)
            if victim is None:
                return
            logger.info("conversation %s full: dropping its oldest item %s", self.id, victim.id)
            total -= victim.nbytes()
            self._remove(victim)

    def _forgettable_audio(self, keep: Item | None) -> list[Content]:
        """Audio parts, oldest first, whose bytes only serve retrieve (transcribed, not being written)."""
        return [
            c
            for i in self._items
            if i is not keep and i.status != "in_progress"
            for c in i.content
            if c.audio is not None and c.audio.n_samples and (c.transcribed is None or c.transcribed.is_set())
        ]

    def _forget_audio(self, need: int, keep: Item | None) -> int:
        freed = 0
        for content in self._forgettable_audio(keep):
            if freed >= need or content.audio is None:
                break
            freed += 2 * content.audio.n_samples
            content.audio = None
        return freed

    def _forget_old_audio(self) -> None:
        """Keep the audio bytes of the last ``KEEP_AUDIO_ITEMS`` audio items only (memory stays bounded
        in long sessions); older items keep their text, which is all the LLM reads."""
        with_audio = [c for i in self._items for c in i.content if c.audio is not None and c.audio.n_samples]
        for content in with_audio[:-KEEP_AUDIO_ITEMS]:
            if content.transcribed is None or content.transcribed.is_set():
                content.audio = None

    def previous_id(self, item_id: str) -> str | None:
        item = self.get(item_id)
        index = self._items.index(item)
        return self._items[index - 1].id if index > 0 else None

    def delete(self, item_id: str) -> None:
        self._remove(self.get(item_id))

    def _remove(self, item: Item) -> None:
        self._items.remove(item)
        del self._by_id[item.id]
        if self.on_remove is not None:
            self.on_remove(item)

    def has_call(self, call_id: str) -> bool:
        return any(i.type == "function_call" and i.call_id == call_id for i in self._items)


# --- items -> chat messages -------------------------------------------------------------------------------
def to_messages(instructions: str, items: list[Item]) -> list[dict[str, Any]]:
    """Chat-completions messages for the LLM: the instructions as the system prompt, then the items."""
    messages: list[dict[str, Any]] = []
    if instructions.strip():
        messages.append({"role": "system", "content": instructions})
    for item in items:
        if item.type == "message":
            if item.role == "user" and any(c.type == "input_image" for c in item.content):
                messages.append({"role": "user", "content": _parts(item)})
                continue
            text = item.text()
            if item.role == "user" and not text:
                continue  # silence: nothing the model can read
            messages.append({"role": item.role, "content": text})
        elif item.type == "function_call":
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments or "{}"},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output or ""})
    return messages


def _parts(item: Item) -> list[dict[str, Any]]:
    """A user message with images as chat content parts, in order: its text (typed or transcribed;
    neighbours joined by a space) and ``image_url`` parts carrying the item's URL and detail as sent.
    Only a vision model gets here: images for any other are refused when the item is created."""
    parts: list[dict[str, Any]] = []
    for c in item.content:
        if c.type == "input_image":
            image: dict[str, Any] = {"url": c.image_url or ""}
            if c.detail is not None:
                image["detail"] = c.detail
            parts.append({"type": "image_url", "image_url": image})
            continue
        text = (c.text if c.type.endswith("_text") else c.transcript) or ""
        if not text.strip():
            continue
        if parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += " " + text.strip()
        else:
            parts.append({"type": "text", "text": text.strip()})
    return parts
