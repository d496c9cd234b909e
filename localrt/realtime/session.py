"""One realtime connection: a reader, a single writer, and the turn/response tasks.

- The **reader** parses each client event once and handles it in order. Everything that must stay in
  order with the input stream happens here: decoding appends, running VAD on the new windows, turn
  events, commits, barge-in. Slow work (transcription, responses) is started as tasks.
- The **writer** (:class:`~.outbox.Outbox`) is the only task that sends. Every server event goes through
  one bounded queue, so the order on the wire is the order events were emitted in, and a client that
  stops reading eventually blocks the producers instead of growing memory.
- **Tasks** (transcriptions, responses) belong to the session's :class:`TaskSet`; when the socket
  closes, all of them are cancelled and awaited, which stops the LLM within one token and TTS/STT
  within one chunk, so nothing keeps computing for a client that is gone. Creating, tracking and
  cancelling responses is :class:`~.session_responses.SessionResponses`' part.
- **Cancelling never waits on another session.** ``response.cancel``, barge-in and truncate cancel
  their response's engine jobs without waiting (a job still queued behind another session's
  generation leaves the queue at once), so the reader handles the next event within a few event-loop
  turns of the cancelled job's last piece.
- Errors in client events become ``error`` events echoing the client's ``event_id``; the loop goes on.
- **Bounds** (each a setting): the input buffer (:mod:`.listener`), the conversation's items and bytes
  (:mod:`.conversation`), the size of a created item (``realtime_max_item_bytes``, as received), the
  out-of-band responses running at once (``realtime_max_oob_responses``: ``rate_limit_exceeded``), and
  time: a session that sends no event for ``realtime_idle_timeout_s`` gets an ``error``
  (``session_idle_timeout``) and close 1008; at its advertised ``expires_at``
  (``realtime_max_session_s`` after it opened) an ``error`` ``session_expired``, as OpenAI sends, and close
  1008. No input is accepted whose echo would not fit in a 1 MiB server event (:mod:`.budget`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.websockets import WebSocket

from localrt.errors import APIError, EngineUnavailable, InvalidRequest, ServerError, ServiceUnavailable
from localrt.lifecycle import SHUTTING_DOWN, Lifecycle
from localrt.pipeline import SessionPipeline
from localrt.realtime import budget, config
from localrt.realtime import events as ev
from localrt.realtime.client_items import check_images
from localrt.realtime.config import SessionConfig, SessionType
from localrt.realtime.conversation import Conversation, Item, Limits
from localrt.realtime.events import Dialect, new_id, shown
from localrt.realtime.listener import Listener
from localrt.realtime.outbox import Outbox
from localrt.realtime.response import ResponseContext
from localrt.realtime.server_events import Event, ServerEvents
from localrt.realtime.session_responses import SessionResponses
from localrt.realtime.speculation import ReplySpeculation
from localrt.realtime.tasks import CLOSE_TIMEOUT_S, TaskSet
from localrt.settings import Settings

logger = logging.getLogger(__name__)


class RealtimeSession:
    def __init__(
        self,
        ws: WebSocket,
        *,
        engines: Any,
        dialect: Dialect,
        session_type: SessionType,
        model: str,
        llm_model: str,
        timing_log: Any | None = None,
        settings: Settings | None = None,
        pipeline: SessionPipeline | None = None,
    ) -> None:
        self.ws = ws
        self.llm_model = llm_model
        self.settings = settings or Settings(_env_file=None)
        self.id = new_id("sess")
        self.dialect = dialect
        self.engines = engines
        self.events = ServerEvents(dialect, transcription=session_type == "transcription")
        cfg = config.initial(session_type, model)
        if engines.vad is None:
            cfg = dataclasses.replace(cfg, turn_detection=None)
        if engines.tts is None:
            cfg = dataclasses.replace(cfg, audio_output=False)
        self.cfg: SessionConfig = cfg
        self.expires_at = int(time.time() + self.settings.realtime_max_session_s)
        self.tasks = TaskSet(self.id)
        limits = Limits(self.settings.realtime_max_items, self.settings.realtime_max_session_bytes)
        self.conversation = Conversation(limits, on_remove=self._forget_item)
        self.listener = Listener(self)
        self.outbox = Outbox(ws, self.events, self.id)
        response_ctx = ResponseContext(
            session_id=self.id,
            dialect=dialect,
            events=self.events,
            emit=self.emit,
            llm=engines.llm,
            model=llm_model,
            tts=engines.tts,
            conversation=self.conversation,
            timing_log=timing_log,
            pipeline=pipeline,
        )
        self.responses = SessionResponses(self, response_ctx)
        self._handlers: dict[type, Callable[[Any], Coroutine[Any, Any, None]]] = {
            ev.SessionUpdate: self._session_update,
            ev.TranscriptionSessionUpdate: self._session_update,
            ev.InputAudioBufferAppend: self._append,
            ev.InputAudioBufferCommit: self._commit,
            ev.InputAudioBufferClear: self._clear,
            ev.ConversationItemCreate: self._item_create,
            ev.ConversationItemRetrieve: self._item_retrieve,
            ev.ConversationItemDelete: self._item_delete,
            ev.ConversationItemTruncate: self._item_truncate,
            ev.ResponseCreate: self.responses.create,
            ev.ResponseCancel: self.responses.cancel,
        }

    # --- lifetime ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the connection until the client goes away (the socket is already accepted)."""
        logger.info("session %s opened (%s, %s)", self.id, self.dialect, self.cfg.type)
        await self.emit(self.events.session(self._render(), created=True))
        self.tasks.spawn(self.listener.idle_timer(), "idle-timer")
        writer = asyncio.create_task(self.outbox.run(), name=f"{self.id}:writer")
        reader = asyncio.create_task(self._reader(), name=f"{self.id}:reader")
        watchdog = asyncio.create_task(
            self.outbox.watch(self.settings.realtime_idle_timeout_s, self.settings.realtime_max_session_s),
            name=f"{self.id}:watchdog",
        )
        loops = {reader, writer, watchdog}
        lifecycle = getattr(getattr(self.ws.scope.get("app"), "state", None), "lifecycle", None)
        if lifecycle is not None:
            loops.add(asyncio.create_task(self._close_when_draining(lifecycle), name=f"{self.id}:drain"))
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("session %s: %s failed", self.id, task.get_name(), exc_info=task.exception())
        finally:
            for task in loops:
                task.cancel()
            await asyncio.wait(loops, timeout=CLOSE_TIMEOUT_S)
            await self.tasks.aclose()
            logger.info("session %s closed", self.id)

    async def emit(self, event: Event | None, on_sent: Callable[[], None] | None = None) -> None:
        """Queue a server event for the writer (None: an event this dialect does not have)."""
        await self.outbox.put(event, on_sent)

    async def _close_when_draining(self, lifecycle: Lifecycle) -> None:
        """Server shutdown: every running response ends (``response.done``, cancelled), then an
        ``error`` (``server_shutting_down``) and close 1001 (going away)."""
        await lifecycle.wait_draining()
        logger.info("session %s: server shutting down", self.id)
        await self.responses.cancel_all()
        await self.close(1001, ServiceUnavailable(SHUTTING_DOWN, code="server_shutting_down"))

    async def close(self, code: int, err: APIError | None = None) -> None:
        """Send ``err`` after what is queued, then close the socket with ``code`` (the session ends)."""
        await self.outbox.close(code, err)

    async def _reader(self) -> None:
        while True:
            message = await self.ws.receive()
            self.outbox.touch()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await self._error(
                    InvalidRequest(
                        "Binary frames are not supported: send JSON text frames.", code="invalid_event"
                    )
                )
                continue
            await self._handle(text)

    async def _handle(self, text: str) -> None:
        raw: Any = None
        try:
            raw = ev.load_json(text)
            event = ev.parse_client_event(ev.check_frame(raw, text), self.dialect)
            await self._handlers[type(event)](event)
        except APIError as exc:
            await self._error(exc, ev.event_id_of(raw))
        except Exception:
            logger.exception("session %s: error handling %s", self.id, str(ev.event_id_of(raw) or "event"))
            await self._error(
                ServerError("The server had an error processing the event."), ev.event_id_of(raw)
            )

    async def _error(self, err: APIError, client_event_id: str | None = None) -> None:
        logger.info("session %s: error %s (%s): %s", self.id, err.code, err.param, err.message)
        await self.emit(self.events.error(err, client_event_id))

    def _render(self) -> dict[str, Any]:
        return config.render(self.cfg, self.dialect, session_id=self.id, expires_at=self.expires_at)

    def _param(self, ga: str, beta: str) -> str:
        return "session." + (ga if self.dialect == "ga" else beta)

    # --- session.update ------------------------------------------------------------------------------------
    async def _session_update(self, event: ev.SessionUpdate | ev.TranscriptionSessionUpdate) -> None:
        new = config.apply_update(
            self.cfg,
            event.session,
            self.dialect,
            transcription_event=isinstance(event, ev.TranscriptionSessionUpdate),
        )
        self._check_engines(new)
        rendered = config.render(new, self.dialect, session_id=self.id, expires_at=self.expires_at)
        if budget.wire_bytes(rendered) > budget.ECHO_BUDGET:
            raise InvalidRequest(
                "The session would not fit in a server event (1 MiB): its instructions, tools or other "
                "values are too large.",
                code="session_too_large",
                param="session",
            )
        self.listener.configure(self.cfg, new)
        self.cfg = new
        await self.emit(self.events.session(rendered, created=False))

    def _check_engines(self, new: SessionConfig) -> None:
        """Settings the loaded engines cannot serve are refused (the update is dropped whole)."""
        if new.turn_detection is not None and self.engines.vad is None:
            raise EngineUnavailable(
                "Server VAD is not available: this server runs without a VAD engine.",
                param=self._param("audio.input.turn_detection", "turn_detection"),
            )
        if new.audio_output and self.engines.tts is None and new.type == "realtime":
            raise EngineUnavailable(
                "Audio output is not available: this server runs without a text-to-speech engine.",
                param=self._param("output_modalities", "modalities"),
            )
        transcription = self._param("audio.input.transcription", "input_audio_transcription")
        if new.transcription is not None and self.engines.stt is None:
            raise EngineUnavailable(
                "Transcription is not available: this server runs without a speech-to-text engine.",
                param=transcription,
            )
        language = new.transcription.language if new.transcription is not None else None
        supported = getattr(self.engines.stt, "languages", None)
        if language and supported is not None and language.strip().lower() not in supported:
            raise InvalidRequest(
                f"Unsupported language {shown(language)} for the loaded speech-to-text model; supported: "
                f"{', '.join(supported)}.",
                param=transcription + ".language",
            )
        if new.voice != self.cfg.voice:
            param = self._param("audio.output.voice", "voice")
            if self.responses.audio_output_started:
                raise InvalidRequest(
                    "Cannot update a conversation's voice if assistant audio is present.",
                    code="cannot_update_voice",
                    param=param,
                )
            if self.engines.tts is not None:
                try:
                    self.engines.tts.resolve_voice(new.voice_name)
                except APIError as exc:
                    raise InvalidRequest(exc.message, param=param) from None

    # --- input audio (the listener) ------------------------------------------------------------------------
    async def _append(self, event: ev.InputAudioBufferAppend) -> None:
        await self.listener.append(event.audio)

    async def _commit(self, event: ev.InputAudioBufferCommit) -> None:
        await self.listener.commit()

    async def _clear(self, event: ev.InputAudioBufferClear) -> None:
        await self.listener.clear()

    async def interrupt(self) -> None:
        """Barge-in: speech started while the default conversation's response is still generating."""
        await self.responses.interrupt()

    def speculate_reply(
        self, item_id: str, transcript: asyncio.Task[list[str] | None]
    ) -> ReplySpeculation | None:
        return self.responses.speculate(item_id, transcript)

    async def auto_response(
        self, marks: dict[str, float], speculation: ReplySpeculation | None = None
    ) -> None:
        """The response to a finished turn (server VAD or idle timeout), unless one is still running."""
        await self.responses.auto_response(marks, speculation)

    # --- conversation --------------------------------------------------------------------------------------
    async def _item_create(self, event: ev.ConversationItemCreate) -> None:
        if event.previous_item_id not in (None, "root"):
            self.conversation.get(event.previous_item_id, param="previous_item_id")
        item = await self.build_item(event.item, "item", self.conversation)
        wire = item.to_wire(self.dialect)
        prev = self.conversation.add(item, event.previous_item_id)
        await self.emit(self.events.item_added(wire, prev))
        await self.emit(self.events.item_done(wire, prev))
        self.listener.transcribe_item(item)

    async def build_item(self, param: Any, where: str, conversation: Conversation | None) -> Item:
        item = await budget.build_item(
            param,
            self.cfg.input_format,
            conversation,
            dialect=self.dialect,
            max_bytes=self.settings.realtime_max_item_bytes,
            where=where,
        )
        await check_images(item, self.engines.llm, self.llm_model, where)  # refused, never dropped
        return item

    async def _item_retrieve(self, event: ev.ConversationItemRetrieve) -> None:
        item = self.conversation.get(event.item_id)
        fmt = self.cfg.output_format if item.role == "assistant" else self.cfg.input_format
        wire, fill_audio = budget.retrieved(item, self.dialect, fmt, budget.ECHO_BUDGET)
        await asyncio.get_running_loop().run_in_executor(None, fill_audio)
        await self.emit(self.events.item_retrieved(wire))

    def _forget_item(self, item: Item) -> None:
        """An item left the conversation (deleted, or dropped to make room)."""
        self.listener.forget(item)

    async def _item_delete(self, event: ev.ConversationItemDelete) -> None:
        self.conversation.delete(event.item_id)
        await self.emit(self.events.item_deleted(event.item_id))

    async def _item_truncate(self, event: ev.ConversationItemTruncate) -> None:
        item = self.conversation.get(event.item_id)
        if item.type != "message" or item.role != "assistant":
            raise InvalidRequest("Only assistant messages can be truncated.", param="item_id")
        index = event.content_index
        if index >= len(item.content) or item.content[index].audio is None:
            raise InvalidRequest(
                f"Item '{item.id}' has no audio at content_index {index}.", param="content_index"
            )
        await self.responses.cancel_owner(item.id)
        content = item.content[index]
        clip = content.audio
        if clip is None:  # checked above; keeps the type checker informed
            return
        if event.audio_end_ms > clip.duration_ms:
            raise InvalidRequest(
                f"audio_end_ms ({event.audio_end_ms}) is past the end of the audio ({clip.duration_ms} ms).",
                param="audio_end_ms",
            )
        content.transcript = clip.truncate(event.audio_end_ms)
        await self.emit(self.events.item_truncated(item.id, index, event.audio_end_ms))
