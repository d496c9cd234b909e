"""The data engines hand to their callers, independent of any one implementation (see interfaces)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from localrt.errors import InvalidRequest

Task = Literal["transcribe", "translate"]


def check_transcription(audio: np.ndarray, task: str, temperature: float) -> None:
    """What every speech-to-text engine checks of a request before any work (InvalidRequest)."""
    if audio.ndim != 1:
        raise InvalidRequest("Audio must be mono.", param="file")
    if task not in ("transcribe", "translate"):
        raise InvalidRequest(f"Unknown task '{task}'.", param="task")
    if not 0.0 <= temperature <= 1.0:
        raise InvalidRequest("temperature must be between 0 and 1.", param="temperature")


# --- chat ---------------------------------------------------------------------------------------------
@dataclass
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass
class TextDelta:
    text: str


@dataclass
class ToolCallDelta:
    index: int
    id: str
    name: str
    arguments: str  # the next piece of the JSON text


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # the whole JSON text


@dataclass
class ChatResult:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


ChatEvent = TextDelta | ToolCallDelta


# --- speech to text -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] | None


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str
    duration: float
    segments: list[Segment]


# --- text to speech -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Voice:
    id: str
    path: Path
    sample_rate: int
    language: str


@dataclass(frozen=True)
class AudioChunk:
    samples: np.ndarray  # int16 mono
    sample_rate: int
    text: str  # the sentence this chunk speaks
