"""Benchmark inputs: a fixed set of spoken questions, synthesized with the local Piper voice."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from localrt.audio.resample import resample
from localrt.engines.interfaces import TextToSpeech

QUESTIONS = (
    "What is the biggest ocean on Earth?",
    "How many days are there in a week?",
    "What color is the sky on a clear day?",
    "Can you name a large animal that lives in Africa?",
    "What do bees make?",
    "How many legs does a spider have?",
    "What is the opposite of hot?",
    "Which planet do we live on?",
    "What do you call a baby cat?",
    "What is two plus two?",
)

INSTRUCTIONS = "You are a helpful assistant. Answer in one short sentence."
# Replies are capped as a voice assistant's are: the 135M default model sometimes rambles on forever.
MAX_OUTPUT_TOKENS = 120


@dataclass
class Utterance:
    text: str
    pcm24: np.ndarray  # int16, 24 kHz mono: what a client streams
    pcm16k: np.ndarray  # float32, 16 kHz mono: what the engines take
    voiced_end: int  # index (24 kHz) just past the last voiced sample
    resume_at: int | None = (
        None  # an incomplete utterance's: index (24 kHz) where speech resumes after the pause
    )

    @property
    def duration_s(self) -> float:
        return len(self.pcm24) / 24000


def last_voiced(samples: np.ndarray, rate: int, threshold: float = 0.02) -> int:
    """Index just past the last 10 ms window whose peak exceeds ``threshold`` of full scale."""
    win = rate // 100
    x = np.abs(samples.astype(np.float32) / 32768.0)
    n = len(x) // win
    peaks = x[: n * win].reshape(n, win).max(axis=1)
    voiced = np.nonzero(peaks > threshold)[0]
    return int((voiced[-1] + 1) * win) if len(voiced) else len(samples)


async def synthesize(tts: TextToSpeech | None, texts: tuple[str, ...] = QUESTIONS) -> list[Utterance]:
    if tts is None:
        raise RuntimeError("the bench synthesizes its spoken inputs: it needs the text-to-speech engine")
    out = []
    for text in texts:
        chunk = await tts.synthesize(text)
        pcm24 = resample(chunk.samples, chunk.sample_rate, 24000)
        pcm16k = resample(chunk.samples, chunk.sample_rate, 16000).astype(np.float32) / 32768.0
        out.append(Utterance(text, pcm24, pcm16k, last_voiced(pcm24, 24000)))
    return out


def long_speech(utts: list[Utterance], seconds: float, gap_s: float = 0.4) -> np.ndarray:
    """``seconds`` of speech (float32, 16 kHz mono): the utterances one after another, ``gap_s`` of
    silence between them, round and round, cut to length."""
    if not utts or seconds <= 0:
        raise ValueError("long_speech needs utterances and a positive duration")
    want = int(seconds * 16000)
    gap = np.zeros(int(gap_s * 16000), dtype=np.float32)
    parts: list[np.ndarray] = []
    have = 0
    while have < want:
        for utt in utts:
            parts += [utt.pcm16k.astype(np.float32), gap]
            have += len(utt.pcm16k) + len(gap)
    return np.concatenate(parts)[:want]
