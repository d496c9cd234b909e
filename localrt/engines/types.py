"""The data engines hand to their callers, independent of any one implementation (see interfaces)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Task = Literal["transcribe", "translate"]


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
