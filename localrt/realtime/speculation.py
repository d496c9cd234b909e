"""Speculative replies: the reply to a turn, computed in the pause that may end it.

The silence before a turn is known to be over (server VAD's window, or the pause in which semantic VAD
asks its turn model) is idle time. When a pause begins, the listener starts Whisper on the speech so far
(:meth:`.transcriber.Transcriber.speculate`), and a :class:`ReplySpeculation` goes further: once that
transcript is ready, it starts the LLM on the conversation as it will be with the turn committed, and
once the reply's first clause is known, its speech. Both run at priority ``SPECULATIVE``: after every
confirmed voice turn of any session, before HTTP work. Everything is held: no event reaches the client
and no item is added, so the protocol's event order is untouched.

- **The turn is confirmed** (``speech_stopped``): the turn's response asks for the held work
  (:meth:`ReplySpeculation.claim_chat`, :meth:`ReplySpeculation.claim_speech`). It gets it only for the
  exact request it would make itself (the same messages, tools, sampling, cache key; the same clause,
  voice and speed), promoted to ``REALTIME``; it replays what was produced, then goes on live, and the
  response emits the usual events in the usual order. Any other request gets nothing (the response
  starts its own job) and the held work is discarded.
- **The user goes on speaking**, the buffer is cleared or committed by hand: :meth:`discard` cancels the
  work (within a token or an audio chunk, never waiting on another session) and it is counted as
  discarded.

Each speculation is counted once, ``used`` (its LLM job was claimed) or ``discarded``, with the seconds
each engine spent on it (:class:`~localrt.timings.SpeculationTotals`: ``GET /debug/timings`` and
``/metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from localrt.engines.interfaces import ChatJob, ChatModels, ItemStream, TextToSpeech
from localrt.engines.scheduler import Priority
from localrt.engines.types import AudioChunk, SamplingParams, TextDelta
from localrt.realtime.conversation import Content, Item, to_messages
from localrt.realtime.held import Held, HeldChat, HeldSpeech, call
from localrt.realtime.response_options import ChatCall
from localrt.text.chunker import ClauseChunker, speakable
from localrt.timings import SpeculationTotals

__all__ = ["ReplyPlan", "ReplySpeculation"]

logger = logging.getLogger(__name__)


@dataclass
class ReplyPlan:
    """What the turn's response will ask the engines for, as far as it is known before the turn ends."""

    session_id: str
    llm: ChatModels
    model: str
    tts: TextToSpeech | None
    instructions: str
    items: list[Item]  # the conversation before the turn
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    params: SamplingParams
    audio_output: bool
    voice: str
    speed: float
    spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]
    totals: SpeculationTotals | None = None


class ReplySpeculation:
    """The held reply to one pause of one turn. See the module docstring."""

    def __init__(self, plan: ReplyPlan, item_id: str, transcript: asyncio.Task[list[str] | None]) -> None:
        self.plan = plan
        self.item_id = item_id
        self._transcript = transcript
        self._stt_started = time.monotonic()
        self._stt_ended: float | None = None
        self._decided = asyncio.Event()  # the chat job exists, or never will
        self.chat: Held[Any] | None = None
        self.speech: Held[AudioChunk] | None = None  # until the response claims it
        self._spoken: Held[AudioChunk] | None = None  # the same, kept for the count
        self._call: ChatCall | None = None  # the held chat job's request
        self._speech_key: tuple[str, str, float] | None = None
        self._chunker = ClauseChunker() if plan.audio_output and plan.tts is not None else None
        self._claimed = False
        self._settled = False
        self.marks: dict[str, float] = {"held_started": time.monotonic()}  # when the held work got where
        self._task = plan.spawn(self._run(), f"speculative-reply-{item_id}")

    # --- the held work --------------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            try:
                parts = await asyncio.shield(self._transcript)
            finally:
                self._stt_ended = time.monotonic()
            text = "".join(parts).strip() if parts else ""
            self.marks["held_stt_done"] = time.monotonic()
            if not text:
                return
            plan = self.plan
            turn = Item(
                self.item_id, "message", role="user", content=[Content("input_audio", transcript=text)]
            )
            messages = to_messages(plan.instructions, [*plan.items, turn])
            llm = await plan.llm.get(plan.model)
            self._call = ChatCall(messages, plan.tools, plan.tool_choice, plan.params, plan.session_id)
            stream = self._call.open(llm, Priority.SPECULATIVE)
            self.chat = Held(stream, f"speculative-llm-{self.item_id}", plan.spawn, self._on_event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the response will try again itself, and report what fails
            logger.info("speculative reply for %s not started: %r", self.item_id, exc)
        finally:
            self._decided.set()

    def _on_event(self, event: Any) -> None:
        """Each held LLM event: find the first clause and start speaking it."""
        self.marks.setdefault("held_llm_first_token", time.monotonic())
        if self._chunker is None or self.speech is not None or not isinstance(event, TextDelta):
            return
        clauses = self._chunker.push(event.text)
        if clauses:
            self._speak(clauses[0])

    def _speak(self, clause: str) -> None:
        plan = self.plan
        text = speakable(clause)
        self._chunker = None
        if not text or plan.tts is None:
            return
        stream = plan.tts.stream(text, voice=plan.voice, speed=plan.speed, priority=Priority.SPECULATIVE)
        self._speech_key = (text, plan.voice, plan.speed)
        self.marks["held_first_clause"] = time.monotonic()
        chat = self.chat
        if chat is not None:  # its speech first: the rest of the reply waits (see ResponseOutput._speak)
            call(chat.stream, "hold")

        def release(*_: object) -> None:  # at its first audio chunk, or when it ends without one
            if chat is not None:
                call(chat.stream, "release")

        self.speech = self._spoken = Held(stream, f"speculative-tts-{self.item_id}", plan.spawn, release)
        self.speech.task.add_done_callback(release)

    # --- the response's side ----------------------------------------------------------------------------------
    async def claim_chat(self, call: ChatCall) -> ChatJob | None:
        """The held LLM job, if it is exactly the request given (then promoted to REALTIME); else None,
        and the held work is discarded."""
        await self._decided.wait()
        held = self.chat
        if held is None or self._settled or self._claimed:
            return None
        if call != self._call:
            logger.info("speculative reply for %s does not match its turn's request: discarded", self.item_id)
            self.discard()
            return None
        self._claimed = True
        for mark, at in (
            ("held_llm_started", held.started_at),
            ("held_tts_first_chunk", self._spoken.first_at if self._spoken is not None else None),
        ):
            if at is not None:
                self.marks[mark] = at
        held.promote()
        if self.speech is not None:
            self.speech.promote()
        if self._chunker is not None and held.done:  # a reply of one short clause: speak it now
            self._flush_first_clause()
        return HeldChat(held)

    def claim_speech(self, text: str, voice: str, speed: float) -> ItemStream[AudioChunk] | None:
        """The held synthesis of the reply's first clause, if it is this text in this voice and speed."""
        if not self._claimed:
            return None
        if self.speech is None and self._chunker is not None and self.chat is not None and self.chat.done:
            self._flush_first_clause()
        held, self.speech = self.speech, None
        if held is None:
            return None
        if self._speech_key != (text, voice, speed):
            held.cancel()
            return None
        return HeldSpeech(held)

    def _flush_first_clause(self) -> None:
        if self._chunker is not None:
            clauses = self._chunker.flush()
            if clauses:
                self._speak(clauses[0])

    # --- ending -------------------------------------------------------------------------------------------
    def discard(self) -> None:
        """The turn went on (or was committed otherwise): cancel everything held, count it discarded."""
        if self._settled:
            return
        self._task.cancel()
        for held in (self.chat, self.speech):
            if held is not None:
                held.cancel()
        self._settle("discarded")

    def finish(self) -> None:
        """The turn's response ended: count the speculation (used if its LLM job was claimed)."""
        if self._settled:
            return
        if not self._claimed:
            self.discard()
            return
        if self.speech is not None:  # the response spoke something else first
            self.speech.cancel()
        self._settle("used")

    def _settle(self, outcome: str) -> None:
        self._settled = True
        now = time.monotonic()
        stt_end = self._stt_ended if self._stt_ended is not None else now
        seconds = {
            "stt": max(0.0, stt_end - self._stt_started),
            "llm": self.chat.seconds() if self.chat is not None else 0.0,
            "tts": self._spoken.seconds() if self._spoken is not None else 0.0,
        }
        if self.plan.totals is not None:
            self.plan.totals.record(outcome, seconds)
