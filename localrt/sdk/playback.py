"""How much of each reply was heard, and the queue of events waiting for the app.

``PlaybackTracker`` counts, per assistant item, the samples received and the samples the app played. On an
interruption it cuts every item with unheard audio (or still being produced) and says where: the
``audio_end_ms`` of the ``conversation.item.truncate`` the session sends.

``EventQueue`` is a FIFO the reader fills and the app's loop (callbacks or ``run()``) drains; unlike
``asyncio.Queue`` it can drop the audio of a cut item that was received but not yet handed over.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from localrt.sdk.models import SAMPLE_RATE, RealtimeEvent


@dataclass
class _Item:
    item_id: str
    response_id: str | None
    received: int = 0  # samples
    played: int = 0
    done: bool = False  # its response ended: no more audio will come


@dataclass(frozen=True)
class Cut:
    item_id: str
    played_ms: int
    received_ms: int


def samples_to_ms(samples: int) -> int:
    """Whole milliseconds, rounded down: never more than was played."""
    return samples * 1000 // SAMPLE_RATE


class PlaybackTracker:
    def __init__(self) -> None:
        self._items: deque[_Item] = deque()
        self.cut_ids: set[str] = set()

    def _find(self, item_id: str) -> _Item | None:
        return next((i for i in self._items if i.item_id == item_id), None)

    def received(self, item_id: str, response_id: str | None, samples: int) -> bool:
        """Reply audio arrived; False when the item was cut (drop the audio)."""
        if item_id in self.cut_ids:
            return False
        item = self._find(item_id)
        if item is None:
            item = _Item(item_id, response_id)
            self._items.append(item)
        item.received += samples
        return True

    def played(self, samples: int, item_id: str | None = None) -> None:
        """The app played ``samples`` more: of ``item_id``, or of the oldest items first."""
        if samples < 0:
            raise ValueError("played samples must be >= 0")
        if item_id is not None:
            item = self._find(item_id)
            if item is not None:
                item.played = min(item.received, item.played + samples)
        else:
            for item in self._items:
                take = min(samples, item.received - item.played)
                item.played += take
                samples -= take
                if not samples:
                    break
        self._forget_heard()

    def response_done(self, response_id: str | None) -> None:
        for item in self._items:
            if item.response_id == response_id:
                item.done = True
        self._forget_heard()

    def _forget_heard(self) -> None:
        while self._items and self._items[0].done and self._items[0].played >= self._items[0].received:
            self._items.popleft()

    def unheard_ms(self) -> int:
        return samples_to_ms(sum(i.received - i.played for i in self._items))

    def playing(self) -> bool:
        """Some reply audio is not heard yet, or a reply with audio is still being produced."""
        return any(i.played < i.received or not i.done for i in self._items)

    def cut(self) -> list[Cut]:
        """Cut every item still playing or being produced; the session truncates each one."""
        cuts = [
            Cut(i.item_id, samples_to_ms(i.played), samples_to_ms(i.received))
            for i in self._items
            if i.played < i.received or not i.done
        ]
        for c in cuts:
            self.cut_ids.add(c.item_id)
        self._items = deque(i for i in self._items if i.item_id not in self.cut_ids)
        return cuts


class EventQueue:
    """FIFO of events for the app; ``get()`` returns None once closed and drained."""

    def __init__(self) -> None:
        self._items: deque[RealtimeEvent] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: RealtimeEvent) -> None:
        if not self._closed:
            self._items.append(event)
            self._ready.set()

    def purge(self, drop: Callable[[RealtimeEvent], bool]) -> int:
        before = len(self._items)
        self._items = deque(e for e in self._items if not drop(e))
        return before - len(self._items)

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self) -> RealtimeEvent | None:
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()
