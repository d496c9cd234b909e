"""One model response: LLM tokens -> text stages -> clause chunker -> TTS -> 24 kHz (or 8 kHz) audio deltas.

The pipeline, and why it is this shape:

- The LLM job runs in the engine's scheduler (priority ``REALTIME``, so a voice turn goes before HTTP and
  bulk work; ``cache_key`` = the session id, so the engine can keep this conversation's evaluated prompt
  between its turns while other sessions use the model). It generates in the engine's worker thread
  while this task synthesizes and sends earlier clauses: the LLM never waits for TTS. Each completed
  clause is synthesized at once (TTS jobs are ``REALTIME`` too) and its audio is handed to the session's
  single writer queue, whose bound is the backpressure on a client that stops reading. The items and
  their events are :class:`~.response_output.ResponseOutput`'s.
- **Custom stages** (:mod:`localrt.pipeline`, the session's pipeline): once the turn's transcript is
  ready, the transcript stages decide what the user's turn becomes (rewritten for the LLM, answered by a
  stage's own reply, or dropped: no output); the reply's text, the LLM's or the stage's, then streams
  through the text stages into the clause chunker. Without a pipeline both chains are empty.
- Every synthesized clause records the text it speaks and the sample range it occupies in the item's
  audio; the transcript delta of a clause is sent with its first audio, so the transcript always matches
  the audio sent, and ``conversation.item.truncate`` can cut the text at the played position.
- **Cancellation** (barge-in, ``response.cancel``, truncate, disconnect) cancels the pipeline task.
  Leaving an engine stream never waits on anything (the scheduler's contract): a job still queued behind
  another session's generation leaves the queue at once, a running one is told to stop within a token
  or an audio chunk. So :meth:`Response.cancel` returns within a few event-loop turns, whatever other
  sessions are doing; the closing events (§6 c) are then emitted once, by :meth:`Response.run`, in
  OpenAI's order: the open items' ``…done`` events, ``response.done`` (cancelled), ``rate_limits.updated``.
- **Failure**: any engine error (a full queue: ``QueueFull``, 429 ``rate_limit_exceeded``; a closed or
  evicted engine: ``EngineClosed``, 503; a failed generation), when the response starts or while it
  runs, ends the response as ``failed``: an ``error`` event carrying the error (echoing the
  ``response.create``'s ``event_id``; none for an automatic response), then ``response.done``
  (status ``failed``, ``status_details.error`` the same error). The response is over (not ``active``)
  once ``response.done`` is queued, so it never blocks later responses; the session goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from localrt.engines.interfaces import ChatJob
from localrt.engines.scheduler import Priority
from localrt.engines.types import TextDelta, ToolCallDelta
from localrt.errors import APIError, ServerError
from localrt.pipeline import Reply, StageContext, Turn, answer, chained, text_pieces
from localrt.realtime.conversation import Item, to_messages
from localrt.realtime.events import new_id
from localrt.realtime.response_options import ResponseOptions
from localrt.realtime.response_output import ResponseContext, ResponseOutput
from localrt.realtime.speculation import ReplySpeculation

__all__ = ["Response", "ResponseContext", "Status"]

logger = logging.getLogger(__name__)
timing_logger = logging.getLogger("localrt.realtime.timing")

Status = Literal["in_progress", "completed", "cancelled", "incomplete", "failed"]
_STOP_TIMEOUT_S = 30.0  # session teardown only: how long to wait for a cancelled pipeline


class Response:
    def __init__(
        self,
        ctx: ResponseContext,
        options: ResponseOptions,
        context_items: list[Item],
        *,
        marks: dict[str, float] | None = None,
        client_event_id: str | None = None,
        speculation: ReplySpeculation | None = None,
    ) -> None:
        """``speculation``: the reply to this turn computed in the user's pause, if any (held work this
        response takes over when its request is exactly the one held, see :mod:`.speculation`)."""
        self.ctx = ctx
        self.speculation = speculation
        self.client_event_id = client_event_id  # the response.create's, echoed by a failure's error
        self.options = options
        self.id = new_id("resp")
        self.in_conversation = options.conversation == "auto"
        self._context_items = context_items
        self.status: Status = "in_progress"
        self.status_details: dict[str, Any] | None = None
        self.error: APIError | None = None  # why it failed
        self.usage: dict[str, Any] | None = None
        # Shared with the turn that created it: the transcription task adds ``stt_done`` when it finishes.
        self.timings: dict[str, float] = marks if marks is not None else {}
        self.timings["response_created"] = time.monotonic()
        self._cancel_reason: str | None = None
        self._pipeline: asyncio.Task[str] | None = None
        self._stream: ChatJob | None = None
        self.finished = asyncio.Event()
        self._out = ResponseOutput(
            ctx, options, self.id, in_conversation=self.in_conversation, timings=self.timings
        )
        if speculation is not None:
            self._out.prefetched_speech = speculation.claim_speech
        self._prompt_tokens = self._completion_tokens = self._cached_tokens = 0
        self._finish_reason = "stop"

    # --- control -------------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return not self.finished.is_set()

    @property
    def output(self) -> list[Item]:
        return self._out.items

    @property
    def cache_key(self) -> str | None:
        """The engine's key for this conversation's evaluated prompt: the session id, for a response
        that reads the conversation. One with its own ``input`` has another prompt: it keeps none, so it
        does not displace the conversation's."""
        return self.ctx.session_id if self.options.input is None else None

    async def cancel(self, reason: str) -> None:
        """Stop generating; returns once ``response.done`` (status cancelled) has been queued.

        Never waits on another session's work: the engine jobs are cancelled without waiting (a queued
        one leaves its queue at once), so this returns within a few event-loop turns."""
        if self._cancel_reason is None and self.active:
            self._cancel_reason = reason
            if self._stream is not None:
                self._stream.cancel()  # thread safe: the worker stops at its next token
            if self._pipeline is not None:
                self._pipeline.cancel()
        await self.finished.wait()

    @property
    def audio_ms(self) -> int:
        """How much audio this response has produced (what the client will be playing)."""
        return self._out.audio_ms

    def owns(self, item_id: str) -> bool:
        return self._out.owns(item_id)

    async def run(self) -> None:
        """Emit the whole response, ``response.created`` to ``response.done``.

        Never raises, except CancelledError when the session is being torn down.
        """
        try:
            await self.ctx.emit(self.ctx.events.response_created(self.to_wire()))
            self._pipeline = asyncio.create_task(self._generate(), name=f"{self.id}-pipeline")
            if self._cancel_reason is not None:
                self._pipeline.cancel()
            await asyncio.wait({self._pipeline})
        except asyncio.CancelledError:  # the session is going away: stop the engines, send nothing more
            if self._pipeline is not None:
                self._pipeline.cancel()
                await asyncio.wait({self._pipeline}, timeout=_STOP_TIMEOUT_S)
            self.finished.set()
            raise
        self._settle(self._pipeline)
        try:
            await self._out.close("completed" if self.status == "completed" else "incomplete")
            self._set_usage()
            if self.error is not None:
                await self.ctx.emit(self.ctx.events.error(self.error, self.client_event_id))
            await self.ctx.emit(self.ctx.events.response_done(self.to_wire()))
            await self.ctx.emit(self.ctx.events.rate_limits(max(0, 1_000_000 - self._total_tokens)))
        finally:
            self.finished.set()
            self._log_timings()

    def _settle(self, pipeline: asyncio.Task[str]) -> None:
        """The status the pipeline's end gives the response."""
        if pipeline.cancelled():
            self.status = "cancelled"
            self.status_details = {"type": "cancelled", "reason": self._cancel_reason or "client_cancelled"}
        elif (exc := pipeline.exception()) is not None:
            err = exc if isinstance(exc, APIError) else ServerError("The response failed: internal error.")
            if not isinstance(exc, APIError):
                logger.error("session %s response %s failed", self.ctx.session_id, self.id, exc_info=exc)
            else:
                logger.warning("session %s response %s failed: %r", self.ctx.session_id, self.id, exc)
            self.status = "failed"
            self.error = err
            self.status_details = {
                "type": "failed",
                "error": {"type": err.type, "code": err.code, "message": err.message},
            }
        elif pipeline.result() == "length":
            self.status = "incomplete"
            self.status_details = {"type": "incomplete", "reason": "max_output_tokens"}
        else:
            self.status = "completed"

    # --- the pipeline --------------------------------------------------------------------------------------
    async def _generate(self) -> str:
        """Wait for the turn's transcript, run the session's transcript stages over it (if any), then
        stream the reply's text (the LLM's, or a stage's own reply) through the text stages into the
        output: shown as it comes, or chunked into clauses and spoken."""
        pending = [event for item in self._context_items for event in item.pending()]
        if pending:
            await asyncio.gather(*(event.wait() for event in pending))
            self.timings.setdefault("stt_done", time.monotonic())
        stages = self._stage_context()
        try:
            source = await self._text_source(stages)
            if source is None:  # a stage dropped the turn: the response ends with no output
                return "stop"
            text_stages = self.ctx.pipeline.pipeline.text if self.ctx.pipeline is not None else ()
            async with chained(source, text_stages, stages) as text:
                async for piece in text:
                    await self._out.text(piece)
            await self._out.finish_speech()
        finally:  # cancelled responses report the tokens used too
            if stages is not None:
                self._prompt_tokens += stages.usage.prompt_tokens
                self._completion_tokens += stages.usage.completion_tokens
                self._cached_tokens += stages.usage.cached_tokens
        return self._finish_reason

    async def _text_source(self, stages: StageContext | None) -> AsyncIterator[str] | None:
        """Where the reply's text comes from: the LLM, or a transcript stage's own reply; None when a
        transcript stage dropped the turn. A stage's rewrite of the turn replaces the user item's text
        (what the LLM reads now and in later turns)."""
        turn = self._turn_item()
        if stages is not None and turn is not None and self.ctx.pipeline is not None:
            outcome = await answer(Turn(turn.text(), turn.id), self.ctx.pipeline.pipeline.transcript, stages)
            if outcome is None:
                return None
            if isinstance(outcome, Reply):
                return text_pieces(outcome.text)
            if outcome.text != turn.text():
                rewrite(turn, outcome.text)
        return self._llm_text()

    def _turn_item(self) -> Item | None:
        """The user's turn this response answers: the conversation's last item, when it is a user message
        and the response reads the conversation (a response with its own ``input`` answers no turn)."""
        if self.options.input is not None or not self._context_items:
            return None
        last = self._context_items[-1]
        return last if last.type == "message" and last.role == "user" else None

    def _stage_context(self) -> StageContext | None:
        pipeline = self.ctx.pipeline
        if pipeline is None:
            return None
        return StageContext(
            session_id=self.ctx.session_id,
            response_id=self.id,
            pipeline=pipeline.name,
            options=pipeline.options,
            settings=pipeline.settings,
            llm=self.ctx.llm,
            model=self.ctx.model,
            max_tokens=self.options.max_tokens,
        )

    async def _llm_text(self) -> AsyncIterator[str]:
        """The LLM's reply to the context: its text, as it streams; its function calls go straight to
        the output (they are not text for the text stages)."""
        llm = await self.ctx.llm.get(self.ctx.model)
        call = self.options.chat_call(
            to_messages(self.options.instructions, self._context_items), self.cache_key
        )
        held: ChatJob | None = None
        if self.speculation is not None:
            held = await self.speculation.claim_chat(call)
            if held is not None:
                self.timings["reply_held"] = time.monotonic()
                self.timings.update(self.speculation.marks)  # where the held work got, and when
        stream = self._stream = held if held is not None else call.open(llm, Priority.REALTIME)
        self._out.chat = stream
        if self._cancel_reason is not None:  # cancelled while the held reply was being claimed
            stream.cancel()
        try:
            async with stream:  # queues the job (QueueFull / EngineClosed raise here); leaving never waits
                async for event in stream:
                    self.timings.setdefault("llm_first_token", time.monotonic())
                    if isinstance(event, TextDelta):
                        if event.text:
                            yield event.text
                    elif isinstance(event, ToolCallDelta):
                        await self._out.tool_call(event)
        finally:
            result = stream.result
            self._prompt_tokens += result.prompt_tokens
            self._completion_tokens += result.completion_tokens
            self._cached_tokens += result.cached_tokens
            self._finish_reason = str(result.finish_reason)

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


def rewrite(item: Item, text: str) -> None:
    """A transcript stage rewrote the user's turn: ``text`` becomes the item's text (its first text or
    transcript part; the others' text is cleared, other parts are kept)."""
    first = True
    for content in item.content:
        if content.type == "input_text":
            content.text = text if first else ""
        elif content.type == "input_audio":
            content.transcript = text if first else ""
        else:
            continue
        first = False
