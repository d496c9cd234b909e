"""Server VAD: a streaming state machine over silero's per-window speech probabilities.

The detector is pure (no I/O, no clock): it is fed the probability of each 32 ms window of the 16 kHz
input stream, in order, exactly once, and returns what happened. Positions are absolute sample offsets in
the session's input stream, so ``audio_start_ms`` / ``audio_end_ms`` are stream positions, not wall-clock
times.

- Speech starts at the first window whose probability reaches ``threshold``; the committed audio starts
  ``prefix_padding_ms`` earlier.
- Speech continues while the probability stays above a lower threshold (``threshold - 0.15``, silero's
  own hysteresis); the first window below it starts a silence, and once the silence has lasted
  ``silence_duration_ms`` the speech has stopped. ``audio_end_ms`` is where the silence began; the
  committed audio runs to the end of the window that completed the silence (Whisper likes a little
  trailing silence).

A ``pause`` event marks the start of each silence inside speech and a ``resume`` the return of speech
before the silence was long enough. The listener hooks speculative work on them (Whisper, the LLM and the
first clause's speech start in the pause and are discarded on ``resume``, :mod:`.speculation`).

With ``semantic_vad`` and a turn model, the silence window is the eagerness' cap (4 s for ``auto``) and
the listener ends most turns long before it, when the model says the turn is complete:
:meth:`TurnDetector.end_now` stops the speech at the current pause as if its silence had been long
enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from localrt.realtime.config import TurnDetection

WINDOW = 512  # samples per probability (32 ms at 16 kHz)
RATE = 16000


@dataclass(frozen=True)
class TurnEvent:
    kind: Literal["speech_started", "speech_stopped", "pause", "resume"]
    position: int  # speech start (after padding) / speech end / silence start, in 16 kHz samples
    commit_end: int = 0  # speech_stopped: the end of the audio to commit


class TurnDetector:
    def __init__(self, cfg: TurnDetection, origin: int, *, turn_model: bool = False) -> None:
        """``origin``: the stream position of the first window this detector will be fed;
        ``turn_model``: a semantic_vad turn model decides (see :meth:`TurnDetection.window_ms`)."""
        self.cfg = cfg
        self.turn_model = turn_model
        self._next = origin  # position of the next window
        self.speaking = False
        self.speech_start = 0
        self._silence_start: int | None = None

    @property
    def position(self) -> int:
        """The stream position of the next window."""
        return self._next

    @property
    def silence_start(self) -> int | None:
        """Where the current silence inside speech began (None when speech is going on or not begun)."""
        return self._silence_start if self.speaking else None

    @property
    def window_ms(self) -> int:
        """The silence that ends the speech by itself."""
        return self.cfg.window_ms(self.turn_model)

    @property
    def silence_ms(self) -> float:
        """How long the current silence inside speech has lasted (0 when there is none)."""
        start = self.silence_start
        return 0.0 if start is None else (self._next - start) * 1000 / RATE

    def configure(self, cfg: TurnDetection, *, turn_model: bool = False) -> None:
        self.cfg = cfg
        self.turn_model = turn_model

    def end_now(self) -> TurnEvent | None:
        """Stop the speech at the current pause (its turn is complete); None when there is no pause."""
        if not self.speaking or self._silence_start is None:
            return None
        event = TurnEvent("speech_stopped", self._silence_start, commit_end=self._next)
        self.speaking = False
        self._silence_start = None
        return event

    def reset(self, origin: int | None = None) -> None:
        """Back to waiting for speech (after a manual commit or a clear)."""
        self.speaking = False
        self._silence_start = None
        if origin is not None:
            self._next = origin

    def push(self, probabilities: list[float], floor: int = 0) -> list[TurnEvent]:
        """Feed the next windows' probabilities; ``floor``: padding never reaches before this position."""
        threshold = self.cfg.threshold
        low = max(threshold - 0.15, 0.01)
        padding = self.cfg.prefix_padding_ms * RATE // 1000
        silence = self.window_ms * RATE // 1000
        out: list[TurnEvent] = []
        for p in probabilities:
            pos = self._next
            self._next += WINDOW
            if not self.speaking:
                if p >= threshold:
                    self.speaking = True
                    self._silence_start = None
                    self.speech_start = max(floor, pos - padding)
                    out.append(TurnEvent("speech_started", self.speech_start))
                continue
            if p >= low:
                if self._silence_start is not None:
                    self._silence_start = None
                    out.append(TurnEvent("resume", pos))
                continue
            if self._silence_start is None:
                self._silence_start = pos
                out.append(TurnEvent("pause", pos))
            if self._next - self._silence_start >= silence:
                self.speaking = False
                out.append(TurnEvent("speech_stopped", self._silence_start, commit_end=self._next))
                self._silence_start = None
        return out
