"""One model response: LLM tokens -> clause chunker -> Piper -> 24 kHz (or 8 kHz) audio deltas.

The pipeline, and why it is this shape:

- The LLM engine generates in its own worker thread into the stream's queue, so it keeps generating
  while this task synthesizes and sends earlier clauses: the LLM never waits for TTS. Each completed
  clause is synthesized at once (Piper runs in the TTS engine's thread) and its audio is handed to the
  session's single writer queue, whose bound is the backpressure on a client that stops reading.
- Every synthesized clause records the text it speaks and the sample range it occupies in the item's
  audio; the transcript delta of a clause is sent with its first audio, so the transcript always matches
  the audio sent, and ``conversation.item.truncate`` can cut the text at the played position.
- Cancellation (barge-in, ``response.cancel``, disconnect) cancels the pipeline task: leaving the chat
  stream's ``async with`` stops llama.cpp within one token and waits for its thread; closing the TTS
  iterator stops Piper at the next chunk. The closing events (§6 c) are then emitted once, by :meth:`run`.
- A failure of any engine ends the response as ``failed`` with the error; the session goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from localrt.engines.llm import SamplingParams, TextDelta, ToolCallDelta
from localrt.errors import APIError, ServerError
from localrt.realtime.conversation import Content, Conversation, Item, to_messages
from localrt.realtime.events import Dialect, new_id
from localrt.realtime.response_options import ResponseOptions
from localrt.realtime.server_events import ContentRef, Event, ServerEvents
from localrt.realtime.speech_out import SpeechWriter
from localrt.text.chunker import ClauseChunker

logger = logging.getLogger(__name__)
timing_logger = logging.getLogger("localrt.realtime.timing")

Status = Literal["in_progress", "completed", "cancelled", "incomplete", "failed"]
Emit = Callable[..., Awaitable[None]]  # emit(event, on_sent=None)
_STOP_TIMEOUT_S = 30.0


@dataclass
class ResponseContext:
    """What a response needs from its session."""

    session_id: str
    dialect: Dialect
    events: ServerEvents
    emit: Emit
    llm: Any  # LLMPool: ``await llm.get(model)``
    model: str
    tts: Any | None  # PiperEngine
    conversation: Conversation
    timing_log: Any | None = None  # localrt.timings.TimingLog, when the app keeps one


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
        self.speech: SpeechWriter | None = None


class _Call:
    def __init__(self, item: Item, index: int, prev: str | None) -> None:
        self.item = item
        self.index = index
        self.prev = prev


class Response:
    def __init__(
        self,
        ctx: ResponseContext,
        options: ResponseOptions,
        context_items: list[Item],
        *,
        marks: dict[str, float] | None = None,
    ) -> None:
        self.ctx = ctx
        self.options = options
        self.id = new_id("resp")
        self.in_conversation = options.conversation == "auto"
        self._context_items = context_items
        self.status: Status = "in_progress"
        self.status_details: dict[str, Any] | None = None
        self.output: list[Item] = []
        self.usage: dict[str, Any] | None = None
        # Shared with the turn that created it: the transcription task adds ``stt_done`` when it finishes.
        self.timings: dict[str, float] = marks if marks is not None else {}
        self.timings["response_created"] = time.monotonic()
        self._cancel_reason: str | None = None
        self._pipeline: asyncio.Task[str] | None = None
        self.finished = asyncio.Event()
        self._message: _Message | None = None
        self._calls: dict[int, _Call] = {}
        self._prompt_tokens = self._completion_tokens = self._cached_tokens = 0

    # --- control -------------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return not self.finished.is_set()

    async def cancel(self, reason: str) -> None:
        """Stop generating; returns once ``response.done`` (status cancelled) has been queued."""
        if self._cancel_reason is None and self.active:
            self._cancel_reason = reason
            if self._pipeline is not None:
                self._pipeline.cancel()
        await self.finished.wait()

    @property
    def audio_ms(self) -> int:
        """How much audio this response has produced (what the client will be playing)."""
        clips = [c.audio for item in self.output for c in item.content if c.audio is not None]
        return sum(clip.duration_ms for clip in clips)

    def owns(self, item_id: str) -> bool:
        return any(item.id == item_id for item in self.output)

    async def run(self) -> None:
        """Emit the whole response, ``response.created`` to ``response.done``.

        Never raises, except CancelledError when the session is being torn down.
        """
        await self.ctx.emit(self.ctx.events.response_created(self.to_wire()))
        self._pipeline = asyncio.create_task(self._generate(), name=f"{self.id}-pipeline")
        if self._cancel_reason is not None:
            self._pipeline.cancel()
        try:
            await asyncio.wait({self._pipeline})
        except asyncio.CancelledError:  # the session is going away: stop the engines, send nothing more
            self._pipeline.cancel()
            await asyncio.wait({self._pipeline}, timeout=_STOP_TIMEOUT_S)
            self.finished.set()
            raise
        finish = "stop"
        if self._pipeline.cancelled():
            self.status = "cancelled"
            self.status_details = {"type": "cancelled", "reason": self._cancel_reason or "client_cancelled"}
        elif (exc := self._pipeline.exception()) is not None:
            err = exc if isinstance(exc, APIError) else ServerError("The response failed: internal error.")
            if not isinstance(exc, APIError):
                logger.error("session %s response %s failed", self.ctx.session_id, self.id, exc_info=exc)
            else:
                logger.warning("session %s response %s failed: %r", self.ctx.session_id, self.id, exc)
            self.status = "failed"
            self.status_details = {
                "type": "failed",
                "error": {"type": err.type, "code": err.code, "message": err.message},
            }
        else:
            finish = self._pipeline.result()
            if finish == "length":
                self.status = "incomplete"
                self.status_details = {"type": "incomplete", "reason": "max_output_tokens"}
            else:
                self.status = "completed"
        try:
            await self._close_outputs("completed" if self.status == "completed" else "incomplete")
            self._set_usage()
            await self.ctx.emit(self.ctx.events.response_done(self.to_wire()))
            await self.ctx.emit(self.ctx.events.rate_limits(max(0, 1_000_000 - self._total_tokens)))
        finally:
            self.finished.set()
            self._log_timings()

    # --- the pipeline --------------------------------------------------------------------------------------
    async def _generate(self) -> str:
        pending = [event for item in self._context_items for event in item.pending()]
        if pending:
            await asyncio.gather(*(event.wait() for event in pending))
            self.timings.setdefault("stt_done", time.monotonic())
        llm = await self.ctx.llm.get(self.ctx.model)
        messages = to_messages(self.options.instructions, self._context_items)
        params = SamplingParams(max_tokens=self.options.max_tokens, temperature=self.options.temperature)
        stream = self._open_chat(llm, messages, params)
        try:
            async with stream:
                async for event in stream:
                    self.timings.setdefault("llm_first_token", time.monotonic())
                    if isinstance(event, TextDelta):
                        if event.text:
                            await self._text(event.text)
                    elif isinstance(event, ToolCallDelta):
                        await self._tool_call(event)
                await self._finish_speech()
        finally:  # cancelled responses report the tokens used too
            result = stream.result
            self._prompt_tokens = result.prompt_tokens
            self._completion_tokens = result.completion_tokens
            self._cached_tokens = result.cached_tokens
        return str(result.finish_reason)

    def _open_chat(self, llm: Any, messages: list[dict[str, Any]], params: SamplingParams) -> Any:
        """The chat stream. When the history no longer fits the context (truncation "auto"), the engine
        drops its oldest whole turns, in one cut and in its worker thread, never on the event loop."""
        return llm.chat(
            messages,
            tools=self.options.chat_tools(),
            tool_choice=self.options.chat_tool_choice(),
            params=params,
            truncate_history=True,
        )

    async def _emit(self, event: Event | None, on_sent: Callable[[], None] | None = None) -> None:
        await self.ctx.emit(event, on_sent)

    async def _open_message(self) -> None:
        events = self.ctx.events
        item = Item(new_id("item"), "message", status="in_progress", role="assistant")
        index = len(self.output)
        self.output.append(item)
        prev = self.ctx.conversation.insert(item) if self.in_conversation else None
        await self._emit(events.output_item_added(self.id, index, item.to_wire(self.ctx.dialect)))
        if self.in_conversation:
            await self._emit(events.item_added(item.to_wire(self.ctx.dialect), prev))
        audio = self.options.audio_output
        if audio:
            item.content.append(Content("output_audio", transcript=""))
            part = events.part("output_audio", transcript="")
        else:
            item.content.append(Content("output_text", text=""))
            part = events.part("output_text", text="")
        msg = self._message = _Message(item, index, ContentRef(self.id, item.id, index), audio, prev)
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
            )
        await self._emit(events.content_part(False, msg.ref, part))

    async def _text(self, text: str) -> None:
        """The next piece of model text: streamed as it is (text), or spoken clause by clause (audio)."""
        if self._message is None:
            await self._open_message()
        msg = self._message
        if msg is None:
            return
        if msg.chunker is None or msg.speech is None:
            msg.content.text = (msg.content.text or "") + text
            await self._emit(self.ctx.events.text_delta(msg.ref, text))
            return
        for clause in msg.chunker.push(text):
            await msg.speech.speak(clause)

    async def _finish_speech(self) -> None:
        """The model's text for the message ended: speak the rest and flush the audio."""
        msg = self._message
        if msg is None or msg.chunker is None or msg.speech is None:
            return
        for clause in msg.chunker.flush():
            await msg.speech.speak(clause)
        await msg.speech.flush()

    async def _tool_call(self, delta: ToolCallDelta) -> None:
        events = self.ctx.events
        if self._message is not None:
            await self._finish_speech()
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
            index = len(self.output)
            self.output.append(item)
            prev = self.ctx.conversation.insert(item) if self.in_conversation else None
            call = self._calls[delta.index] = _Call(item, index, prev)
            await self._emit(events.output_item_added(self.id, index, item.to_wire(self.ctx.dialect)))
            if self.in_conversation:
                await self._emit(events.item_added(item.to_wire(self.ctx.dialect), prev))
        if delta.arguments:
            call.item.arguments = (call.item.arguments or "") + delta.arguments
            await self._emit(
                events.arguments_delta(
                    self.id, call.item.id, call.index, call.item.call_id or "", delta.arguments
                )
            )

    # --- closing -------------------------------------------------------------------------------------------
    async def _close_outputs(self, status: Literal["completed", "incomplete"]) -> None:
        if self._message is not None:
            await self._close_message(status)
        for call in list(self._calls.values()):
            await self._close_call(call, status)
        self._calls.clear()

    async def _close_message(self, status: Literal["completed", "incomplete"]) -> None:
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
        item.status = status
        wire = item.to_wire(self.ctx.dialect)
        if self.in_conversation:
            await self._emit(events.item_done(wire, msg.prev))
        await self._emit(events.output_item_done(self.id, msg.index, wire))

    async def _close_call(self, call: _Call, status: Literal["completed", "incomplete"]) -> None:
        events, item = self.ctx.events, call.item
        if status == "completed":
            arguments = item.arguments or "{}"
            try:
                json.loads(arguments)
            except ValueError:
                status = "incomplete"
            await self._emit(
                events.arguments_done(
                    self.id, item.id, call.index, item.call_id or "", item.name or "", arguments
                )
            )
        item.status = status
        wire = item.to_wire(self.ctx.dialect)
        if self.in_conversation:
            await self._emit(events.item_done(wire, call.prev))
        await self._emit(events.output_item_done(self.id, call.index, wire))

    # --- wire shape, usage, timings ------------------------------------------------------------------------
    @property
    def _total_tokens(self) -> int:
        return self._prompt_tokens + self._completion_tokens

    def _set_usage(self) -> None:
        if self._pipeline is None:
            return
        p, o, c = self._prompt_tokens, self._completion_tokens, self._cached_tokens
        self.usage = {
            "total_tokens": p + o,
            "input_tokens": p,
            "output_tokens": o,
            "input_token_details": {
                "text_tokens": p,
                "audio_tokens": 0,
                "image_tokens": 0,
                "cached_tokens": c,
                "cached_tokens_details": {"text_tokens": c, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": o, "audio_tokens": 0},
        }

    def to_wire(self) -> dict[str, Any]:
        opts = self.options
        out: dict[str, Any] = {
            "object": "realtime.response",
            "id": self.id,
            "status": self.status,
            "status_details": self.status_details,
            "output": [item.to_wire(self.ctx.dialect) for item in self.output],
            "conversation_id": self.ctx.conversation.id if self.in_conversation else None,
            "usage": self.usage,
            "metadata": opts.metadata,
        }
        if self.ctx.dialect == "ga":
            out["output_modalities"] = ["audio"] if opts.audio_output else ["text"]
            out["max_output_tokens"] = opts.max_output_tokens
            out["audio"] = {
                "output": {"format": opts.output_format.ga(), "voice": opts.voice_name}
            }  # a name: RealtimeResponse types it as a string
        else:
            out["modalities"] = ["text", "audio"] if opts.audio_output else ["text"]
            out["voice"] = opts.voice_name  # beta types take a name only, not GA's {"id": ...}
            out["output_audio_format"] = opts.output_format.name
            out["temperature"] = opts.temperature
            out["max_output_tokens"] = opts.max_output_tokens
        return out

    def timing_report(self) -> dict[str, Any]:
        """Stage times in ms from the end of the user's speech (or from the response's creation)."""
        origin = self.timings.get("speech_stopped", self.timings["response_created"])
        report: dict[str, Any] = {k: round((v - origin) * 1000, 1) for k, v in self.timings.items()}
        report["status"] = self.status
        return report

    def _log_timings(self) -> None:
        self.timings["done"] = time.monotonic()
        log = self.ctx.timing_log
        if log is not None:
            log.record(self.ctx.session_id, self.id, self.timings, status=self.status)
            if "speech_stopped" in self.timings:
                return  # TimingLog.record logged it
        timing_logger.info(
            "timing session=%s turn=%s %s",
            self.ctx.session_id,
            self.id,
            json.dumps(self.timing_report(), separators=(",", ":")),
        )
