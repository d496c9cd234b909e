"""One realtime connection: a reader, a single writer, and the turn/response tasks.

- The **reader** parses each client event once and handles it in order. Everything that must stay in
  order with the input stream happens here: decoding appends, running VAD on the new windows, turn
  events, commits, barge-in. Slow work (transcription, responses) is started as tasks.
- The **writer** is the only task that sends. Every server event goes through one bounded queue, so the
  order on the wire is the order events were emitted in, and a client that stops reading eventually
  blocks the producers instead of growing memory.
- **Tasks** (transcriptions, responses) belong to the session's :class:`TaskSet`; when the socket
  closes, all of them are cancelled and awaited, which stops the LLM within one token and TTS/STT
  within one chunk, so nothing keeps computing for a client that is gone.
- Errors in client events become ``error`` events echoing the client's ``event_id``; the loop goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.websockets import WebSocket

from localrt.audio.pcm import float32_to_int16, int16_to_float32
from localrt.errors import APIError, EngineUnavailable, InvalidRequest, ServerError
from localrt.realtime import config
from localrt.realtime import events as ev
from localrt.realtime.config import SessionConfig, SessionType
from localrt.realtime.conversation import AudioClip, Content, Conversation, Item, item_from_param
from localrt.realtime.events import Dialect, new_id
from localrt.realtime.input_audio import SAMPLES_PER_MS, InputAudio
from localrt.realtime.response import Response, ResponseContext
from localrt.realtime.server_events import Event, ServerEvents
from localrt.realtime.turn import TurnDetector, TurnEvent

logger = logging.getLogger(__name__)

OUTBOUND_QUEUE = 1024  # events waiting for the writer
MAX_EVENT_BYTES = 1 << 20
_CLOSE_TIMEOUT_S = 30.0
_MIN_COMMIT_MS = 100


class TaskSet:
    """The session's background tasks: tracked, logged if they fail, cancelled and awaited at close."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self._owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("session task %s failed", task.get_name(), exc_info=task.exception())

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT_S)
            if pending:
                logger.error("%s: %d tasks did not stop", self._owner, len(pending))


@dataclass
class _Outbound:
    event: Event
    on_sent: Callable[[], None] | None = None


@dataclass
class _Speech:
    """The user turn in progress under server VAD."""

    item_id: str
    start: int  # committed audio starts here (padding included), 16 kHz samples
    marks: dict[str, float] = field(default_factory=dict)


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
    ) -> None:
        self.ws = ws
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
        self.expires_at = int(time.time()) + config.SESSION_LIFETIME_S
        self.conversation = Conversation()
        self.audio = InputAudio(cfg.input_format)
        self._vad: Any | None = None
        self._turn: TurnDetector | None = None
        self._speech: _Speech | None = None
        self._set_turn_detection(cfg)
        self.active: Response | None = None  # the response writing to the default conversation
        self.responses: dict[str, Response] = {}  # every running response, out-of-band ones too
        self.finished: list[Response] = []  # the last few, for their timings
        self._audio_output_started = False
        self._outbound: asyncio.Queue[_Outbound] = asyncio.Queue(maxsize=OUTBOUND_QUEUE)
        self._tasks = TaskSet(self.id)
        self._response_ctx = ResponseContext(
            session_id=self.id,
            dialect=dialect,
            events=self.events,
            emit=self.emit,
            llm=engines.llm,
            model=llm_model,
            tts=engines.tts,
            conversation=self.conversation,
            timing_log=timing_log,
        )
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
            ev.ResponseCreate: self._response_create,
            ev.ResponseCancel: self._response_cancel,
        }

    # --- lifetime ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the connection until the client goes away (the socket is already accepted)."""
        logger.info("session %s opened (%s, %s)", self.id, self.dialect, self.cfg.type)
        await self.emit(self.events.session(self._render(), created=True))
        writer = asyncio.create_task(self._writer(), name=f"{self.id}:writer")
        reader = asyncio.create_task(self._reader(), name=f"{self.id}:reader")
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("session %s: %s failed", self.id, task.get_name(), exc_info=task.exception())
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.wait({reader, writer}, timeout=_CLOSE_TIMEOUT_S)
            await self._tasks.aclose()
            logger.info("session %s closed", self.id)

    async def emit(self, event: Event | None, on_sent: Callable[[], None] | None = None) -> None:
        """Queue a server event for the writer (None: an event this dialect does not have)."""
        if event is not None:
            await self._outbound.put(_Outbound(event, on_sent))

    async def _writer(self) -> None:
        while True:
            out = await self._outbound.get()
            text = json.dumps(out.event, separators=(",", ":"), ensure_ascii=False)
            if len(text) > MAX_EVENT_BYTES:
                logger.warning("session %s: %s event of %d bytes", self.id, out.event["type"], len(text))
            await self.ws.send_text(text)
            if out.on_sent is not None:
                out.on_sent()

    async def _reader(self) -> None:
        while True:
            message = await self.ws.receive()
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
            raw = ev.decode_frame(text)
            event = ev.parse_client_event(raw, self.dialect)
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
        if new.input_format != self.cfg.input_format:
            self.audio.set_format(new.input_format)
        self._set_turn_detection(new)
        self.cfg = new
        await self.emit(self.events.session(self._render(), created=False))

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
        if new.transcription is not None and self.engines.stt is None:
            raise EngineUnavailable(
                "Transcription is not available: this server runs without a speech-to-text engine.",
                param=self._param("audio.input.transcription", "input_audio_transcription"),
            )
        if new.voice != self.cfg.voice:
            param = self._param("audio.output.voice", "voice")
            if self._audio_output_started:
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

    def _set_turn_detection(self, new: SessionConfig) -> None:
        td = new.turn_detection
        if td is None or self.engines.vad is None:
            self._vad = self._turn = self._speech = None
        elif self._turn is None:
            self._vad = self.engines.vad.stream()
            self._turn = TurnDetector(td, origin=self.audio.end)
        else:
            self._turn.configure(td)

    # --- input audio ---------------------------------------------------------------------------------------
    async def _append(self, event: ev.InputAudioBufferAppend) -> None:
        samples = self.cfg.input_format.decode(event.audio, param="audio")
        await self._detect(self.audio.append(samples))

    async def _detect(self, new: np.ndarray, *, act: bool = True) -> None:
        """Run VAD over the new 16 kHz samples (each window once) and act on the turn events."""
        if self._turn is None or self._vad is None or new.size == 0:
            return
        probabilities = await self._vad.process(new)
        for turn_event in self._turn.push(probabilities, floor=self.audio.buffer_start):
            if not act:
                continue
            if turn_event.kind == "speech_started":
                await self._speech_started(turn_event)
            elif turn_event.kind == "speech_stopped":
                await self._speech_stopped(turn_event)
        if not self._turn.speaking and self.cfg.turn_detection is not None:
            # Waiting for speech: keep only what prefix padding may reach back to.
            keep = (self.cfg.turn_detection.prefix_padding_ms + 100) * SAMPLES_PER_MS
            self.audio.trim(self.audio.end - keep)

    async def _speech_started(self, turn_event: TurnEvent) -> None:
        self._speech = _Speech(new_id("item"), turn_event.position, {"speech_started": time.monotonic()})
        await self.emit(
            self.events.speech_started(turn_event.position // SAMPLES_PER_MS, self._speech.item_id)
        )
        td = self.cfg.turn_detection
        if td is not None and td.interrupt_response and self.active is not None and self.active.active:
            await self.active.cancel("turn_detected")  # barge-in: response.done comes before speech_stopped

    async def _speech_stopped(self, turn_event: TurnEvent) -> None:
        speech, self._speech = self._speech, None
        if speech is None:
            return
        speech.marks["speech_stopped"] = time.monotonic()
        await self.emit(self.events.speech_stopped(turn_event.position // SAMPLES_PER_MS, speech.item_id))
        audio = self.audio.take(speech.start, turn_event.commit_end)
        await self._commit_audio(audio, speech.item_id, speech.marks)
        td = self.cfg.turn_detection
        if self.cfg.type != "realtime" or td is None or not td.create_response:
            return
        if self.active is not None and self.active.active:
            logger.info("session %s: a response is still active; not starting another", self.id)
            return
        await self._start_response(config.response_options(self.cfg, None, self.dialect), speech.marks)

    async def _commit(self, event: ev.InputAudioBufferCommit) -> None:
        buffered = self.audio.buffered_ms
        if buffered < _MIN_COMMIT_MS:
            raise InvalidRequest(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{_MIN_COMMIT_MS}ms of audio, but buffer only has {buffered:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        await self._detect(self.audio.flush(), act=False)
        speech, self._speech = self._speech, None
        if self._turn is not None:
            self._turn.reset()
        item_id = speech.item_id if speech is not None else new_id("item")
        if speech is not None:
            await self.emit(self.events.speech_stopped(self.audio.end // SAMPLES_PER_MS, item_id))
        audio = self.audio.take(self.audio.buffer_start, self.audio.end)
        await self._commit_audio(audio, item_id, speech.marks if speech is not None else {})

    async def _commit_audio(self, audio: np.ndarray, item_id: str, marks: dict[str, float]) -> None:
        clip = AudioClip(16000)
        clip.append(float32_to_int16(audio))
        content = Content("input_audio", audio=clip, transcribed=asyncio.Event())
        item = Item(item_id, "message", role="user", content=[content])
        prev = self.conversation.insert(item)
        marks["committed"] = time.monotonic()
        await self.emit(self.events.committed(item_id, prev))
        wire = item.to_wire(self.dialect)
        await self.emit(self.events.item_added(wire, prev))
        await self.emit(self.events.item_done(wire, prev))
        self._tasks.spawn(self._transcribe(item, 0, audio, marks), f"stt-{item_id}")

    async def _clear(self, event: ev.InputAudioBufferClear) -> None:
        self.audio.clear()
        self._speech = None
        if self._turn is not None:
            self._turn.reset()
        await self.emit(self.events.cleared())

    async def _transcribe(self, item: Item, index: int, audio: np.ndarray, marks: dict[str, float]) -> None:
        """Whisper over one committed audio part; events only if the session asked for transcription."""
        content = item.content[index]
        settings = self.cfg.transcription
        report = settings is not None
        try:
            stt = self.engines.stt
            if stt is None:
                raise EngineUnavailable("No speech-to-text engine is loaded.")
            parts: list[str] = []
            if audio.size:
                stream = stt.stream(
                    audio,
                    language=settings.language if settings else None,
                    prompt=settings.prompt if settings else None,
                )
                async with stream as segments:
                    async for segment in segments:
                        parts.append(segment.text)
                        if report:
                            await self.emit(self.events.transcription_delta(item.id, index, segment.text))
            content.transcript = "".join(parts).strip()
            marks["stt_done"] = time.monotonic()
            if report:
                seconds = audio.size / 16000
                await self.emit(
                    self.events.transcription_completed(item.id, index, content.transcript, seconds)
                )
        except APIError as exc:
            logger.warning("session %s: transcription of %s failed: %r", self.id, item.id, exc)
            if report:
                await self.emit(self.events.transcription_failed(item.id, index, exc))
        except Exception:
            logger.exception("session %s: transcription of %s failed", self.id, item.id)
            if report:
                err = ServerError("Transcription failed.")
                await self.emit(self.events.transcription_failed(item.id, index, err))
        finally:
            if content.transcribed is not None:
                content.transcribed.set()

    # --- conversation --------------------------------------------------------------------------------------
    async def _item_create(self, event: ev.ConversationItemCreate) -> None:
        item = item_from_param(event.item, self.cfg.input_format, self.conversation)
        prev = self.conversation.insert(item, event.previous_item_id)
        wire = item.to_wire(self.dialect)
        await self.emit(self.events.item_added(wire, prev))
        await self.emit(self.events.item_done(wire, prev))
        self._transcribe_new(item)

    def _transcribe_new(self, item: Item) -> None:
        for index, content in enumerate(item.content):
            if content.transcribed is not None and content.audio is not None:
                audio = int16_to_float32(content.audio.samples())
                self._tasks.spawn(self._transcribe(item, index, audio, {}), f"stt-{item.id}")

    async def _item_retrieve(self, event: ev.ConversationItemRetrieve) -> None:
        item = self.conversation.get(event.item_id)
        fmt = self.cfg.output_format if item.role == "assistant" else self.cfg.input_format
        await self.emit(self.events.item_retrieved(item.to_wire(self.dialect, audio=fmt)))

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
        for response in list(self.responses.values()):
            if response.owns(item.id):
                await response.cancel("client_cancelled")
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

    # --- responses -----------------------------------------------------------------------------------------
    async def _response_create(self, event: ev.ResponseCreate) -> None:
        if self.cfg.type != "realtime":
            raise InvalidRequest("A transcription session does not create responses.", param="type")
        opts = config.response_options(self.cfg, event.response, self.dialect)
        if opts.audio_output and self.engines.tts is None:
            raise EngineUnavailable(
                "Audio output is not available: this server runs without a text-to-speech engine.",
                param="response." + ("output_modalities" if self.dialect == "ga" else "modalities"),
            )
        if opts.conversation == "auto" and self.active is not None and self.active.active:
            raise InvalidRequest(
                f"Conversation already has an active response in progress: {self.active.id}. Wait until the "
                "response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        await self._start_response(opts, {})

    def _context(self, opts: config.ResponseOptions) -> list[Item]:
        """The items a response reads: its ``input`` (items and references) or the conversation."""
        if opts.input is None:
            return list(self.conversation)
        items: list[Item] = []
        for i, param in enumerate(opts.input):
            if isinstance(param, ev.ItemReference):
                items.append(self.conversation.get(param.id, param=f"response.input[{i}].id"))
            else:
                item = item_from_param(param, self.cfg.input_format, None, where=f"response.input[{i}]")
                self._transcribe_new(item)
                items.append(item)
        return items

    async def _start_response(self, opts: config.ResponseOptions, marks: dict[str, float]) -> None:
        response = Response(self._response_ctx, opts, self._context(opts), marks=marks)
        if opts.conversation == "auto":
            self.active = response
        if opts.audio_output:
            self._audio_output_started = True
        self.responses[response.id] = response
        self._tasks.spawn(self._run_response(response), response.id)

    async def _run_response(self, response: Response) -> None:
        try:
            await response.run()
        finally:
            self.responses.pop(response.id, None)
            self.finished = [*self.finished[-31:], response]

    async def _response_cancel(self, event: ev.ResponseCancel) -> None:
        target = self.responses.get(event.response_id) if event.response_id is not None else self.active
        if target is None or not target.active:
            raise InvalidRequest(
                "Cancellation failed: no active response found.", code="response_cancel_not_active"
            )
        await target.cancel("client_cancelled")
