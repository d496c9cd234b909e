"""The responses of one realtime session: creating, tracking and cancelling them.

- At most one response writes to the default conversation at a time (:attr:`SessionResponses.active`);
  a second ``response.create`` for it is refused (``conversation_already_has_active_response``), and a
  finished turn starts no automatic response while one is active. Out-of-band responses
  (``conversation: "none"``) run beside it, at most ``realtime_max_oob_responses`` at once.
- Each response runs as a task of the session's :class:`~.tasks.TaskSet`; when it ends (completed,
  cancelled or failed: ``response.done`` is queued) it leaves :attr:`SessionResponses.running`, so a
  failed or cancelled response never blocks later ones.
- Cancelling (``response.cancel``, barge-in, truncate, server shutdown) never waits on another session:
  see :meth:`~.response.Response.cancel`.
- A session whose pipeline answers **out of band** (:attr:`localrt.pipeline.Pipeline.out_of_band`, e.g.
  the interpreter) gets its turns' responses with ``conversation: "none"``: the automatic ones, and a
  ``response.create`` that names no ``conversation`` and no ``input``. They still hold the conversation's
  turn (:attr:`SessionResponses.active`: one at a time, barge-in cancels them) but add no item to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Protocol

from localrt.errors import EngineUnavailable, InvalidRequest, RateLimited
from localrt.realtime import budget
from localrt.realtime import events as ev
from localrt.realtime.config import SessionConfig
from localrt.realtime.conversation import Conversation, Item
from localrt.realtime.events import Dialect
from localrt.realtime.listener import Listener
from localrt.realtime.response import Response, ResponseContext
from localrt.realtime.response_options import ResponseOptions, response_options
from localrt.realtime.speculation import ReplyPlan, ReplySpeculation
from localrt.realtime.tasks import TaskSet
from localrt.settings import Settings

logger = logging.getLogger(__name__)

MAX_METADATA_BYTES = 64 * 1024  # echoed in every response event (OpenAI: 16 pairs of 64 + 512 chars)
KEEP_FINISHED = 32  # finished responses kept for their timings


class ResponseHost(Protocol):
    """What the responses need from their session."""

    id: str
    cfg: SessionConfig
    dialect: Dialect
    settings: Settings
    engines: Any
    conversation: Conversation
    listener: Listener
    tasks: TaskSet

    async def build_item(self, param: Any, where: str, conversation: Conversation | None) -> Item: ...


class SessionResponses:
    def __init__(self, host: ResponseHost, ctx: ResponseContext) -> None:
        self._host = host
        self._ctx = ctx
        self.active: Response | None = None  # the response writing to the default conversation
        self.running: dict[str, Response] = {}  # every running response, out-of-band ones too
        self.finished: list[Response] = []  # the last few, for their timings
        self.audio_output_started = False  # assistant audio exists: the voice can no longer change

    @property
    def has_active(self) -> bool:
        return self.active is not None and self.active.active

    # --- client events -------------------------------------------------------------------------------------
    async def create(self, event: ev.ResponseCreate) -> None:
        host = self._host
        if host.cfg.type != "realtime":
            raise InvalidRequest("A transcription session does not create responses.", param="type")
        opts = response_options(host.cfg, event.response, host.dialect)
        if opts.audio_output and host.engines.tts is None:
            raise EngineUnavailable(
                "Audio output is not available: this server runs without a text-to-speech engine.",
                param="response." + ("output_modalities" if host.dialect == "ga" else "modalities"),
            )
        turn = opts.conversation == "auto"
        if turn and opts.input is None and "conversation" not in (event.response or {}):
            opts = self._turn_options(opts)
        if turn:
            self._check_no_active_response()
        limit = host.settings.realtime_max_oob_responses
        out_of_band = [r for r in self.running.values() if not r.in_conversation and r is not self.active]
        if not turn and len(out_of_band) >= limit:
            raise RateLimited(
                f"This session already runs {limit} out-of-band responses, this server's limit "
                "(--realtime-max-oob-responses). Wait for one to end (response.done) or cancel one.",
                param="response.conversation",
            )
        if budget.wire_bytes(opts.metadata, MAX_METADATA_BYTES) > MAX_METADATA_BYTES:
            raise InvalidRequest(
                f"The response's metadata is over {MAX_METADATA_BYTES} bytes: it is echoed in every "
                "response event.",
                param="response.metadata",
            )
        await self._start(opts, {}, event.event_id, turn=turn)

    async def cancel(self, event: ev.ResponseCancel) -> None:
        target = self.running.get(event.response_id) if event.response_id is not None else self.active
        if target is None or not target.active:
            raise InvalidRequest(
                "Cancellation failed: no active response found.", code="response_cancel_not_active"
            )
        await target.cancel("client_cancelled")

    # --- from the session ------------------------------------------------------------------------------------
    async def interrupt(self) -> None:
        """Barge-in: speech started while the default conversation's response is still generating."""
        if self.active is not None and self.active.active:
            await self.active.cancel("turn_detected")

    async def auto_response(
        self, marks: dict[str, float], speculation: ReplySpeculation | None = None
    ) -> None:
        """The response to a finished turn (server VAD or idle timeout), unless one is still running.
        ``speculation``: its reply, computed in the pause (the response takes it over if it matches)."""
        host = self._host
        if host.cfg.type != "realtime" or self.has_active:
            if speculation is not None:
                speculation.discard()
            if self.has_active:
                logger.info("session %s: a response is still active; not starting another", host.id)
            return
        opts = self._turn_options(response_options(host.cfg, None, host.dialect))
        try:
            await self._start(opts, marks, turn=True, speculation=speculation)
        except BaseException:
            if speculation is not None:
                speculation.discard()
            raise

    def speculate(self, item_id: str, transcript: asyncio.Task[list[str] | None]) -> ReplySpeculation | None:
        """Start the reply to a turn that may be ending (see :mod:`.speculation`), when the turn's
        response will be an automatic one this session can predict: not while a response is active,
        and not with custom pipeline stages (they may answer, rewrite or drop the turn)."""
        host, ctx = self._host, self._ctx
        td = host.cfg.turn_detection
        if host.cfg.type != "realtime" or td is None or not td.create_response or self.has_active:
            return None
        if not host.settings.realtime_speculate:
            return None
        if ctx.pipeline is not None:
            return None
        opts = response_options(host.cfg, None, host.dialect)
        if opts.audio_output and ctx.tts is None:
            return None
        plan = ReplyPlan(
            session_id=host.id,
            llm=ctx.llm,
            model=ctx.model,
            tts=ctx.tts,
            instructions=opts.instructions,
            items=list(host.conversation),
            tools=opts.chat_tools(),
            tool_choice=opts.chat_tool_choice(),
            params=opts.sampling(),
            audio_output=opts.audio_output,
            voice=opts.voice_name,
            speed=opts.speed,
            spawn=host.tasks.spawn,
            totals=getattr(ctx.timing_log, "speculation", None),
        )
        return ReplySpeculation(plan, item_id, transcript)

    async def cancel_owner(self, item_id: str) -> None:
        """Cancel the response still writing ``item_id`` (a truncate of audio being produced)."""
        for response in list(self.running.values()):
            if response.owns(item_id):
                await response.cancel("client_cancelled")

    async def cancel_all(self) -> None:
        for response in list(self.running.values()):
            if response.active:
                await response.cancel("client_cancelled")

    # --- starting and running --------------------------------------------------------------------------------
    def _turn_options(self, opts: ResponseOptions) -> ResponseOptions:
        """A turn's response as the session's pipeline wants it: out of band, or as it is."""
        pipeline = self._ctx.pipeline
        if pipeline is None or not pipeline.pipeline.out_of_band:
            return opts
        metadata = opts.metadata if opts.metadata is not None else {"pipeline": pipeline.name}
        return dataclasses.replace(opts, conversation="none", metadata=metadata)

    def _check_no_active_response(self) -> None:
        if self.active is not None and self.active.active:
            raise InvalidRequest(
                f"Conversation already has an active response in progress: {self.active.id}. Wait until the "
                "response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )

    async def _context(self, opts: ResponseOptions) -> tuple[list[Item], list[Item]]:
        """The items a response reads (its ``input``, or the conversation), and those made for it."""
        host = self._host
        if opts.input is None:
            return list(host.conversation), []
        items: list[Item] = []
        made: list[Item] = []
        for i, param in enumerate(opts.input):
            if isinstance(param, ev.ItemReference):
                items.append(host.conversation.get(param.id, param=f"response.input[{i}].id"))
            else:
                made.append(await host.build_item(param, f"response.input[{i}]", None))
                items.append(made[-1])
        return items, made

    async def _start(
        self,
        opts: ResponseOptions,
        marks: dict[str, float],
        client_event_id: str | None = None,
        *,
        turn: bool,
        speculation: ReplySpeculation | None = None,
    ) -> None:
        """``turn``: the response takes the conversation's turn (it is :attr:`active`)."""
        host = self._host
        context, made = await self._context(opts)
        if turn:
            self._check_no_active_response()  # again: decoding input audio may have let a turn start one
        for item in made:
            host.listener.transcribe_item(item)
        response = Response(
            self._ctx, opts, context, marks=marks, client_event_id=client_event_id, speculation=speculation
        )
        if turn:
            self.active = response
            host.listener.response_started()
        if opts.audio_output:
            self.audio_output_started = True
        self.running[response.id] = response
        host.tasks.spawn(self._run(response, made, turn), response.id)

    async def _run(self, response: Response, made: list[Item], turn: bool) -> None:
        try:
            await response.run()
        finally:
            if response.speculation is not None:
                response.speculation.finish()
            for item in made:  # its own input items: their transcription is of no use any more
                self._host.listener.forget(item)
            self.running.pop(response.id, None)
            self.finished = [*self.finished[-(KEEP_FINISHED - 1) :], response]
            if turn:
                self._host.listener.response_finished(response.audio_ms)
