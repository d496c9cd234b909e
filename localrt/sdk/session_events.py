"""The session's event handling that is not bookkeeping: server events -> SDK events, barge-in, tools.

Both GA and beta event names are understood (``response.output_audio.delta`` / ``response.audio.delta``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from localrt.sdk.models import (
    AudioChunk,
    Interrupted,
    RealtimeError,
    RealtimeEvent,
    ToolCallRequest,
    ToolCallResult,
    TranscriptDelta,
)
from localrt.sdk.tools import call_tool, output_text

if TYPE_CHECKING:
    from localrt.sdk.session import RealtimeSession

logger = logging.getLogger(__name__)

AUDIO_DELTA = {"response.output_audio.delta", "response.audio.delta"}
AUDIO_DONE = {"response.output_audio.done", "response.audio.done"}
TEXT_DELTA = {
    "response.output_audio_transcript.delta",
    "response.audio_transcript.delta",
    "response.output_text.delta",
    "response.text.delta",
}
TEXT_DONE = {
    "response.output_audio_transcript.done": "transcript",
    "response.audio_transcript.done": "transcript",
    "response.output_text.done": "text",
    "response.text.done": "text",
}
USER_DELTA = "conversation.item.input_audio_transcription.delta"
USER_DONE = "conversation.item.input_audio_transcription.completed"
USER_FAILED = "conversation.item.input_audio_transcription.failed"


def translate(session: RealtimeSession, event: dict[str, Any]) -> list[RealtimeEvent]:
    """The SDK events for one server event (most give none)."""
    kind = str(event.get("type"))
    item_id = event.get("item_id")
    response_id = event.get("response_id")
    if kind in AUDIO_DELTA:
        try:
            data = base64.b64decode(str(event.get("delta", "")), validate=True)
        except (binascii.Error, ValueError):
            return [RealtimeError("the server sent audio that is not base64", code="invalid_audio")]
        data = data[: len(data) // 2 * 2]
        if not item_id or not session.tracker.received(str(item_id), response_id, len(data) // 2):
            return []
        return [AudioChunk(data, item_id=str(item_id), response_id=response_id)]
    if kind in AUDIO_DONE:
        if item_id in session.tracker.cut_ids:
            return []
        return [AudioChunk(b"", is_final=True, item_id=item_id, response_id=response_id)]
    if kind in TEXT_DELTA:
        if item_id in session.tracker.cut_ids:
            return []
        delta = str(event.get("delta", ""))
        key = str(response_id)
        session.transcripts[key] = session.transcripts.get(key, "") + delta
        return [TranscriptDelta(delta, False, "assistant", item_id)]
    if kind in TEXT_DONE:
        if item_id in session.tracker.cut_ids:
            return []
        return [TranscriptDelta(str(event.get(TEXT_DONE[kind]) or ""), True, "assistant", item_id)]
    if kind == USER_DELTA:
        return [TranscriptDelta(str(event.get("delta", "")), False, "user", item_id)]
    if kind == USER_DONE:
        return [TranscriptDelta(str(event.get("transcript") or ""), True, "user", item_id)]
    if kind == USER_FAILED:
        err = RealtimeError.from_event(event)
        err.code = err.code or "transcription_failed"
        return [err]
    return []


async def interrupt(session: RealtimeSession) -> bool:
    """Cut whatever reply is playing: drop its undelivered audio and text, truncate each cut item to
    what was played, then queue ``Interrupted``. False when nothing was playing."""
    cuts = session.tracker.cut()
    if not cuts:
        return False
    cut_ids = {c.item_id for c in cuts}

    def unheard(event: RealtimeEvent) -> bool:
        if isinstance(event, AudioChunk):
            return event.item_id in cut_ids
        return (
            isinstance(event, TranscriptDelta) and event.speaker == "assistant" and event.item_id in cut_ids
        )

    session.queue.purge(unheard)
    for cut in cuts:
        truncate = {
            "type": "conversation.item.truncate",
            "item_id": cut.item_id,
            "content_index": 0,
            "audio_end_ms": cut.played_ms,
        }
        with contextlib.suppress(RealtimeError):
            await session.send(truncate)
    first = cuts[0]
    session.queue.put(Interrupted(first.item_id, first.played_ms, first.received_ms))
    return True


class ToolRunner:
    """Runs the function calls of a finished response, one response's calls at a time, in order."""

    def __init__(self, session: RealtimeSession) -> None:
        self.session = session
        self.tasks: set[asyncio.Task[None]] = set()
        self.rounds = 0  # tool rounds since the user last spoke or typed

    @property
    def running(self) -> bool:
        return bool(self.tasks)

    def new_turn(self) -> None:
        self.rounds = 0

    def start(self, calls: list[dict[str, Any]]) -> None:
        task = asyncio.create_task(self._run(calls), name="realtime-sdk-tools")
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.session.update_idle()

    async def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, calls: list[dict[str, Any]]) -> None:
        session = self.session
        try:
            for call in calls:
                output, failed = await self._one(call)
                item = {"type": "function_call_output", "call_id": call.get("call_id"), "output": output}
                await session.send({"type": "conversation.item.create", "item": item})
                name = str(call.get("name"))
                session.queue.put(ToolCallResult(str(call.get("call_id")), name, output, failed))
            self.rounds += 1
            await session.create_response(**self._follow_up())
        except RealtimeError as err:  # the connection went away: nothing left to answer
            logger.info("tool results not sent: %s", err.message)

    def _follow_up(self) -> dict[str, Any]:
        """The reply after tool outputs: a forced ``tool_choice`` (``required`` or a function) applied to
        the turn's first response only; after ``max_tool_rounds`` rounds, no more tools."""
        choice = self.session.config.tool_choice
        if self.rounds >= self.session.config.max_tool_rounds or choice not in ("auto", "none"):
            return {"tool_choice": "none"}
        return {}

    async def _one(self, call: dict[str, Any]) -> tuple[str, bool]:
        session = self.session
        name = str(call.get("name"))
        call_id = str(call.get("call_id"))
        try:
            arguments = json.loads(call.get("arguments") or "{}")
        except ValueError:
            arguments = None
        valid = isinstance(arguments, dict)
        request = ToolCallRequest(call_id, name, arguments if valid else {}, call.get("id"))
        session.queue.put(request)
        if not valid:
            return json.dumps({"error": "the arguments are not a JSON object"}), True
        try:
            result = await session.handlers.tool_result(request)
            if result is not None:
                return output_text(result), False
            fn = session.config.tool_functions().get(name)
            if fn is None:
                return json.dumps({"error": f"unknown function {name!r}"}), True
            return output_text(await call_tool(fn, request.arguments)), False
        except Exception as exc:
            logger.info("tool %s failed: %r", name, exc)
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"}), True
