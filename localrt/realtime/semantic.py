"""Semantic VAD's decision at a pause: is the user's turn complete? (The listener's half that asks.)

With ``semantic_vad`` and a turn model (Smart Turn), the listener's silence window is the eagerness' cap,
and the turn usually ends long before it. Once a pause inside speech has lasted ``SEMANTIC_CHECK_MS``, a
task asks the model (stage 1, on the last seconds of the turn's audio); when it says complete and the
speculative transcript does not stop in the middle of a sentence (:func:`localrt.text.endings.sounds_unfinished`),
the speech stops right there, at the pause (:meth:`~.turn.TurnDetector.end_now`), under the listener's lock
and only if the same pause is still going on. Unsure, it keeps listening: a later pause is asked again,
and a pause that reaches the eagerness' settle time with a transcript that sounds finished ends the turn
(stage 2). Speech that resumes cancels the pending check (the listener's ``drop_speculation``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from localrt.realtime.config import SEMANTIC_SETTLE_MS
from localrt.realtime.input_audio import RATE
from localrt.text.endings import sounds_unfinished

if TYPE_CHECKING:
    from localrt.realtime.input_audio import InputAudio
    from localrt.realtime.listener import Host, _Speech
    from localrt.realtime.turn import TurnDetector, TurnEvent

logger = logging.getLogger("localrt.realtime.listener")

SEMANTIC_CHECK_MS = 160  # silence inside speech after which semantic VAD asks its turn model
TURN_MODEL_SECONDS = 8  # the audio the turn model reads: the last seconds of the turn


class SemanticTurns:
    """The listener's semantic VAD checks (a mixin of :class:`~.listener.Listener`)."""

    _host: Host
    _speech: _Speech | None
    _turn: TurnDetector | None
    _lock: asyncio.Lock
    audio: InputAudio

    async def _speech_stopped(self, turn_event: TurnEvent) -> None:
        raise NotImplementedError

    def _maybe_check_turn(self) -> None:
        """Semantic VAD: ask the turn model once a pause has lasted SEMANTIC_CHECK_MS (stage 1), and the
        transcript alone once it reaches the eagerness' settle time (stage 2)."""
        speech, turn, td = self._speech, self._turn, self._host.cfg.turn_detection
        if speech is None or turn is None or td is None or not turn.turn_model or speech.check is not None:
            return
        silence = turn.silence_start
        if silence is None:
            return
        done = speech.checked[1] if speech.checked[0] == silence else 0
        if done == 0 and turn.silence_ms >= SEMANTIC_CHECK_MS:
            stage = 1
        elif done == 1 and turn.silence_ms >= SEMANTIC_SETTLE_MS[td.eagerness]:
            stage = 2
        else:
            return
        speech.checked = (silence, stage)
        audio = self.audio.slice(
            max(speech.start, self.audio.end - TURN_MODEL_SECONDS * RATE), self.audio.end
        )
        speech.check = self._host.tasks.spawn(
            self._check_turn(speech, silence, stage, audio), f"turn-check-{speech.item_id}"
        )

    async def _check_turn(self, speech: _Speech, silence: int, stage: int, audio: np.ndarray) -> None:
        """Is the turn complete at this pause? If so, stop the speech here (under the lock, if the
        pause is still going on)."""
        host = self._host
        complete = True
        if stage == 1:
            try:
                probability = await host.engines.turn.complete_probability(audio)
            except Exception as exc:  # a full queue, a closed engine: the eagerness' cap still ends it
                logger.warning("session %s: turn model failed: %r", host.id, exc)
                speech.check = None
                return
            complete = probability >= host.settings.semantic_vad_threshold
            logger.debug("session %s: turn complete p=%.3f", host.id, probability)
        transcript = speech.speculation
        if complete and transcript is not None:
            await asyncio.wait({transcript})
            parts = None if transcript.cancelled() else transcript.result()
            tr = host.cfg.transcription
            if parts is not None and sounds_unfinished("".join(parts), tr.language if tr else None):
                complete = False
            logger.debug("session %s: transcript %r: complete=%s", host.id, "".join(parts or []), complete)
        speech.check = None  # from here on nothing cancels this task: it may end the turn itself
        if not complete:
            return
        async with self._lock:
            if self._speech is not speech or self._turn is None or self._turn.silence_start != silence:
                return  # the user went on speaking, or the turn ended otherwise, meanwhile
            event = self._turn.end_now()
            if event is not None:
                speech.marks["turn_complete"] = time.monotonic()
                await self._speech_stopped(event)
