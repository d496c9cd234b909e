"""The output items of one response, and their events in OpenAI's order (§6 of the protocol notes).

A response writes at most one assistant message at a time (text streamed as it comes, or audio spoken
clause by clause through a :class:`~.speech_out.SpeechWriter`) and any number of function calls. Each
item is announced (``response.output_item.added``, and ``conversation.item.added`` when the response
writes to the conversation), filled by deltas, and closed exactly once (``…done`` events, then
``conversation.item.done`` and ``response.output_item.done``), ``completed`` or ``incomplete``.

:class:`ResponseContext` is what a response needs from its session; the engines are reached only
through the interfaces of :mod:`localrt.engines.interfaces`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from localrt.engines.interfaces import ChatJob, ChatModels, TextToSpeech
from localrt.engines.types import ToolCallDelta
from localrt.pipeline import SessionPipeline
from localrt.realtime.conversation import Content, Conversation, Item
from localrt.realtime.events import Dialect, new_id
from localrt.realtime.response_options import ResponseOptions
from localrt.realtime.server_events import ContentRef, Event, ServerEvents
from localrt.realtime.speech_out import Prefetched, SpeechWriter
from localrt.text.chunker import ClauseChunker

Emit = Callable[..., Awaitable[None]]  # emit(event, on_sent=None)
ItemStatus = Literal["completed", "incomplete"]


@dataclass
class ResponseContext:
    """What a response needs from its session."""

    session_id: str
    dialect: Dialect
    events: ServerEvents
    emit: Emit
    llm: ChatModels
    model: str
    tts: TextToSpeech | None
    conversation: Conversation
    timing_log: Any | None = None  # localrt.timings.TimingLog, when the app keeps one
    pipeline: SessionPipeline | None = None  # the session's custom stages (localrt.pipeline), if any


class _Message:
    """The assistant message item being produced."""

    def __init__(self, item: Item, index: int, ref: ContentRef, audio: bool, prev: str | None) -> None:
        self.item = item
        self.index = index
        self.ref = ref
        self.audio = audio
        self.prev = prev
        self.content = item.content[0]
        self.chunker: ClauseChunker | None = None
        self.spoke = False  # a clause was handed to the speech writer
        self.speech: SpeechWriter | None = None


class _Call:
    def __init__(self, item: Item, index: int, prev: str | None) -> None:
        self.item = item
        self.index = index
        self.prev = prev


class ResponseOutput:
    """The items one response produces, in output order, and the events that build them."""

    def __init__(
        self,
        ctx: ResponseContext,
        options: ResponseOptions,
        response_id: str,
        *,
        in_conversation: bool,
        timings: dict[str, float],
    ) -> None:
        self.ctx = ctx
        self.options = options
        self.response_id = response_id
        self.in_conversation = in_conversation
        self.timings = timings
        self.prefetched_speech: Prefetched | None = None  # a speculative reply's held first clause
        self.chat: ChatJob | None = None  # the reply's chat job, held while its first clause is spoken
        self.items: list[Item] = []
        self._message: _Message | None = None
        self._calls: dict[int, _Call] = {}

    @property
    def audio_ms(self) -> int:
        """How much audio has been produced (what the client will be playing)."""
        clips = [c.audio for item in self.items for c in item.content if c.audio is not None]
        return sum(clip.duration_ms for clip in clips)

    def owns(self, item_id: str) -> bool:
        return any(item.id == item_id for item in self.items)

    async def _emit(self, event: Event | None) -> None:
        await self.ctx.emit(event)

    def _add(self, item: Item) -> tuple[int, str | None]:
        index = len(self.items)
        self.items.append(item)
        prev = self.ctx.conversation.insert(item) if self.in_conversation else None
        return index, prev

    async def _announce(self, item: Item, index: int, prev: str | None) -> None:
        events, wire = self.ctx.events, item.to_wire(self.ctx.dialect)
        await self._emit(events.output_item_added(self.response_id, index, wire))
        if self.in_conversation:
            await self._emit(events.item_added(wire, prev))

    # --- the message -------------------------------------------------------------------------------------
    async def _open_message(self) -> _Message:
        events = self.ctx.events
        item = Item(new_id("item"), "message", status="in_progress", role="assistant")
        index, prev = self._add(item)
        await self._announce(item, index, prev)
        audio = self.options.audio_output
        if audio:
            item.content.append(Content("output_audio", transcript=""))
            part = events.part("output_audio", transcript="")
        else:
            item.content.append(Content("output_text", text=""))
            part = events.part("output_text", text="")
        msg = self._message = _Message(item, index, ContentRef(self.response_id, item.id, index), audio, prev)
        if audio:
            msg.chunker = ClauseChunker()
            msg.speech = SpeechWriter(
                content=msg.content,
                ref=msg.ref,
                fmt=self.options.output_format,
                voice=self.options.voice_name,
                speed=self.options.speed,
                tts=self.ctx.tts,
                events=events,
                emit=self.ctx.emit,
                timings=self.timings,
                prefetched=self.prefetched_speech,
            )
        await self._emit(events.content_part(False, msg.ref, part))
        return msg

    async def text(self, text: str) -> None:
        """The next piece of model text: streamed as it is (text), or spoken clause by clause (audio)."""
        msg = self._message if self._message is not None else await self._open_message()
        if msg.chunker is None or msg.speech is None:
            msg.content.text = (msg.content.text or "") + text
            await self._emit(self.ctx.events.text_delta(msg.ref, text))
            return
        for clause in msg.chunker.push(text):
            await self._speak(msg, clause)

    async def finish_speech(self) -> None:
        """The model's text for the message ended: speak the rest and flush the audio."""
        msg = self._message
        if msg is None or msg.chunker is None or msg.speech is None:
            return
        for clause in msg.chunker.flush():
            await self._speak(msg, clause)
        await msg.speech.flush()

    async def _speak(self, msg: _Message, clause: str) -> None:
        """Speak a clause. While the reply's first clause is synthesized the chat job is held (it pauses
        before its next token, see JobControl.hold): on a CPU the two would share the cores, and the
        first audio is what the user waits for; the rest of the reply is needed only once it plays."""
        assert msg.speech is not None
        chat = self.chat if not msg.spoke else None
        msg.spoke = True
        hold, release = getattr(chat, "hold", None), getattr(chat, "release", None)
        if hold is None or release is None:
            await msg.speech.speak(clause)
            return
        hold()
        try:
            await msg.speech.speak(clause)
        finally:
            release()

    # --- function calls ------------------------------------------------------------------------------------
    async def tool_call(self, delta: ToolCallDelta) -> None:
        if self._message is not None:
            await self.finish_speech()
            await self._close_message("completed")
        call = self._calls.get(delta.index)
        if call is None:
            item = Item(
                new_id("item"),
                "function_call",
                status="in_progress",
                call_id=delta.id or new_id("call"),
                name=delta.name,
                arguments="",
            )
            index, prev = self._add(item)
            call = self._calls[delta.index] = _Call(item, index, prev)
            await self._announce(item, index, prev)
        if delta.arguments:
            call.item.arguments = (call.item.arguments or "") + delta.arguments
            await self._emit(
                self.ctx.events.arguments_delta(
                    self.response_id, call.item.id, call.index, call.item.call_id or "", delta.arguments
                )
            )

    # --- closing -------------------------------------------------------------------------------------------
    async def close(self, status: ItemStatus) -> None:
        """Close every open item (once): its ``…done`` events, in order."""
        if self._message is not None:
            await self._close_message(status)
        for call in list(self._calls.values()):
            await self._close_call(call, status)
        self._calls.clear()

    async def _close_message(self, status: ItemStatus) -> None:
        msg, self._message = self._message, None
        if msg is None:
            return
        events, item = self.ctx.events, msg.item
        if msg.audio:
            transcript = msg.content.transcript or ""
            await self._emit(events.audio_done(msg.ref))
            await self._emit(events.transcript_done(msg.ref, transcript))
            await self._emit(
                events.content_part(True, msg.ref, events.part("output_audio", transcript=transcript))
            )
        else:
            text = msg.content.text or ""
            await self._emit(events.text_done(msg.ref, text))
            await self._emit(events.content_part(True, msg.ref, events.part("output_text", text=text)))
        await self._finish_item(item, msg.index, msg.prev, status)

    async def _close_call(self, call: _Call, status: ItemStatus) -> None:
        item = call.item
        if status == "completed":
            arguments = item.arguments or "{}"
            try:
                json.loads(arguments)
            except ValueError:
                status = "incomplete"
            await self._emit(
                self.ctx.events.arguments_done(
                    self.response_id, item.id, call.index, item.call_id or "", item.name or "", arguments
                )
            )
        await self._finish_item(item, call.index, call.prev, status)

    async def _finish_item(self, item: Item, index: int, prev: str | None, status: ItemStatus) -> None:
        item.status = status
        wire = item.to_wire(self.ctx.dialect)
        if self.in_conversation:
            await self._emit(self.ctx.events.item_done(wire, prev))
        await self._emit(self.ctx.events.output_item_done(self.response_id, index, wire))
