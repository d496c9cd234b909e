"""Every server event, built in one place and named for the client's dialect.

Events are built with their GA names; :class:`ServerEvents` renames them for beta clients
(``conversation.item.added`` -> ``conversation.item.created``, ``response.output_text.*`` ->
``response.text.*``, ``response.output_audio.*`` -> ``response.audio.*``,
``response.output_audio_transcript.*`` -> ``response.audio_transcript.*``) and returns None for the
GA-only events a beta client must not see (``conversation.item.done``,
``input_audio_buffer.timeout_triggered``). A None event is simply not sent.

:func:`encode` turns an event into the text frame the writer sends, and guarantees two things whatever
went wrong upstream: the text is valid UTF-8 JSON, and it is at most :data:`MAX_EVENT_BYTES` (1 MiB, the
read limit of ``websockets`` clients such as openai SDK 3.3.1 and older). An event that cannot be sent as
it is becomes an ``error`` event saying why, so one bad event never ends the session.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from localrt.errors import APIError, ServerError
from localrt.realtime.events import Dialect, new_id
from localrt.realtime.frames import safe_text

logger = logging.getLogger(__name__)

Event = dict[str, Any]
MAX_EVENT_BYTES = 1 << 20
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_MESSAGE_CHARS = 4096  # of an error message (they quote client values, clipped where they are built)

_BETA_NAMES = {
    "conversation.item.added": "conversation.item.created",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
}
_GA_ONLY = frozenset({"conversation.item.done", "input_audio_buffer.timeout_triggered"})
# response.content_part.* parts are "text" / "audio" in both dialects: OpenAI's types (Python, npm, the
# JS Agents SDK's zod schema) allow nothing else there, and the Python Agents SDK turns any other value
# into a session error. output_text / output_audio name content inside GA conversation items only.
_PART_TYPES = {"output_text": "text", "output_audio": "audio"}


class ServerEvents:
    """Builds server events for one connection's dialect."""

    def __init__(self, dialect: Dialect, *, transcription: bool = False) -> None:
        self.dialect = dialect
        self.transcription = transcription

    def _event(self, kind: str, **fields: Any) -> Event | None:
        if self.dialect == "beta":
            if kind in _GA_ONLY:
                return None
            kind = _BETA_NAMES.get(kind, kind)
        return {"type": kind, "event_id": new_id("event"), **fields}

    def part(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The part of a ``response.content_part.*`` event: ``text`` or ``audio`` in both dialects."""
        return {"type": _PART_TYPES.get(kind, kind), **fields}

    # --- errors and session ---------------------------------------------------------------------------------
    def error(self, err: APIError, client_event_id: str | None = None) -> Event | None:
        body = err.to_dict()
        body["message"] = safe_text(str(body["message"]), MAX_MESSAGE_CHARS)
        if isinstance(body["param"], str):
            body["param"] = safe_text(body["param"], 256)
        return self._event("error", error={**body, "event_id": client_event_id})

    def session(self, session: dict[str, Any], *, created: bool) -> Event | None:
        suffix = "created" if created else "updated"
        prefix = "transcription_session" if self.transcription and self.dialect == "beta" else "session"
        return self._event(f"{prefix}.{suffix}", session=session)

    # --- input audio buffer ---------------------------------------------------------------------------------
    def committed(self, item_id: str, previous_item_id: str | None) -> Event | None:
        return self._event("input_audio_buffer.committed", previous_item_id=previous_item_id, item_id=item_id)

    def cleared(self) -> Event | None:
        return self._event("input_audio_buffer.cleared")

    def speech_started(self, audio_start_ms: int, item_id: str) -> Event | None:
        return self._event(
            "input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=item_id
        )

    def speech_stopped(self, audio_end_ms: int, item_id: str) -> Event | None:
        return self._event("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id)

    def timeout_triggered(self, audio_start_ms: int, audio_end_ms: int, item_id: str) -> Event | None:
        return self._event(
            "input_audio_buffer.timeout_triggered",
            audio_start_ms=audio_start_ms,
            audio_end_ms=audio_end_ms,
            item_id=item_id,
        )

    # --- conversation -------------------------------------------------------------------------------------
    def item_added(self, item: dict[str, Any], previous_item_id: str | None) -> Event | None:
        return self._event("conversation.item.added", previous_item_id=previous_item_id, item=item)

    def item_done(self, item: dict[str, Any], previous_item_id: str | None) -> Event | None:
        return self._event("conversation.item.done", previous_item_id=previous_item_id, item=item)

    def item_retrieved(self, item: dict[str, Any]) -> Event | None:
        return self._event("conversation.item.retrieved", item=item)

    def item_truncated(self, item_id: str, content_index: int, audio_end_ms: int) -> Event | None:
        return self._event(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=content_index,
            audio_end_ms=audio_end_ms,
        )

    def item_deleted(self, item_id: str) -> Event | None:
        return self._event("conversation.item.deleted", item_id=item_id)

    def transcription_delta(self, item_id: str, content_index: int, delta: str) -> Event | None:
        return self._event(
            "conversation.item.input_audio_transcription.delta",
            item_id=item_id,
            content_index=content_index,
            delta=delta,
        )

    def transcription_completed(
        self, item_id: str, content_index: int, transcript: str, seconds: float
    ) -> Event | None:
        return self._event(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=content_index,
            transcript=transcript,
            usage={"type": "duration", "seconds": round(seconds, 3)},
        )

    def transcription_failed(self, item_id: str, content_index: int, err: APIError) -> Event | None:
        return self._event(
            "conversation.item.input_audio_transcription.failed",
            item_id=item_id,
            content_index=content_index,
            error=err.to_dict(),
        )

    # --- responses ----------------------------------------------------------------------------------------
    def response_created(self, response: dict[str, Any]) -> Event | None:
        return self._event("response.created", response=response)

    def response_done(self, response: dict[str, Any]) -> Event | None:
        return self._event("response.done", response=response)

    def output_item_added(self, response_id: str, output_index: int, item: dict[str, Any]) -> Event | None:
        return self._event(
            "response.output_item.added", response_id=response_id, output_index=output_index, item=item
        )

    def output_item_done(self, response_id: str, output_index: int, item: dict[str, Any]) -> Event | None:
        return self._event(
            "response.output_item.done", response_id=response_id, output_index=output_index, item=item
        )

    def content_part(self, done: bool, ref: ContentRef, part: dict[str, Any]) -> Event | None:
        kind = "response.content_part.done" if done else "response.content_part.added"
        return self._event(kind, **ref.fields(), part=part)

    def text_delta(self, ref: ContentRef, delta: str) -> Event | None:
        return self._event("response.output_text.delta", **ref.fields(), delta=delta)

    def text_done(self, ref: ContentRef, text: str) -> Event | None:
        return self._event("response.output_text.done", **ref.fields(), text=text)

    def audio_delta(self, ref: ContentRef, delta: str) -> Event | None:
        return self._event("response.output_audio.delta", **ref.fields(), delta=delta)

    def audio_done(self, ref: ContentRef) -> Event | None:
        return self._event("response.output_audio.done", **ref.fields())

    def transcript_delta(self, ref: ContentRef, delta: str) -> Event | None:
        return self._event("response.output_audio_transcript.delta", **ref.fields(), delta=delta)

    def transcript_done(self, ref: ContentRef, transcript: str) -> Event | None:
        return self._event("response.output_audio_transcript.done", **ref.fields(), transcript=transcript)

    def arguments_delta(
        self, response_id: str, item_id: str, output_index: int, call_id: str, delta: str
    ) -> Event | None:
        return self._event(
            "response.function_call_arguments.delta",
            response_id=response_id,
            item_id=item_id,
            output_index=output_index,
            call_id=call_id,
            delta=delta,
        )

    def arguments_done(
        self, response_id: str, item_id: str, output_index: int, call_id: str, name: str, arguments: str
    ) -> Event | None:
        return self._event(
            "response.function_call_arguments.done",
            response_id=response_id,
            item_id=item_id,
            output_index=output_index,
            call_id=call_id,
            name=name,
            arguments=arguments,
        )

    def rate_limits(self, tokens_remaining: int) -> Event | None:
        return self._event(
            "rate_limits.updated",
            rate_limits=[
                {"name": "requests", "limit": 10_000, "remaining": 9_999, "reset_seconds": 0.006},
                {"name": "tokens", "limit": 1_000_000, "remaining": tokens_remaining, "reset_seconds": 0.0},
            ],
        )


class ContentRef:
    """Where a content part lives: the ids every ``response.output_*`` event repeats."""

    __slots__ = ("content_index", "item_id", "output_index", "response_id")

    def __init__(self, response_id: str, item_id: str, output_index: int, content_index: int = 0) -> None:
        self.response_id = response_id
        self.item_id = item_id
        self.output_index = output_index
        self.content_index = content_index

    def fields(self) -> dict[str, Any]:
        return {
            "response_id": self.response_id,
            "item_id": self.item_id,
            "output_index": self.output_index,
            "content_index": self.content_index,
        }


def encode(event: Event, events: ServerEvents, session_id: str = "-") -> str:
    """``event`` as the JSON text to send: valid UTF-8, at most :data:`MAX_EVENT_BYTES` bytes.

    Client text is checked where it comes in (lone surrogates are refused by the parser), so the
    fallbacks here only catch a server bug: an unencodable character is replaced (U+FFFD; the event
    still goes out, so the protocol's order holds), and an event that is not JSON or too large is
    replaced by an ``error`` event naming it.
    """
    kind = str(event.get("type"))
    try:
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        logger.exception("session %s: %s event is not JSON", session_id, kind)
        return _fallback(events, ServerError(f"The server could not send a {kind} event: not valid JSON."))
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            logger.error("session %s: %s event holds unencodable text; replaced", session_id, kind)
            text = _SURROGATE.sub("\ufffd", text)
            size = len(text.encode("utf-8"))
    if size > MAX_EVENT_BYTES:
        logger.error(
            "session %s: %s event of %d bytes not sent (limit %d)", session_id, kind, size, MAX_EVENT_BYTES
        )
        err = ServerError(
            f"The server could not send a {kind} event: it would be {size} bytes, over the "
            f"{MAX_EVENT_BYTES} bytes a server event may have.",
            code="event_too_large",
        )
        return _fallback(events, err)
    return text


def _fallback(events: ServerEvents, err: APIError) -> str:
    event = events.error(err) or {"type": "error", "event_id": new_id("event"), "error": err.to_dict()}
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
