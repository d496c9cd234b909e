"""A short utterance transcribed in a 12 s window instead of Whisper's 30 s.

Whisper's encoder always reads a 30 s window (3,000 feature frames, the rest of a short clip is zero
padding), and on a CPU the encoder is most of a call's cost: for tiny.en (int8, 2 threads) about 370
of 440 ms on a 2-second voice turn. CTranslate2's encoder also takes fewer frames, and its cost falls
with them (12 s: about 180 ms in all). The model was trained on 30 s windows only, and in shorter ones
it can loop: after the utterance it starts it again ("What is 2 plus 2? What is 2 plus"). Measured
on 28 synthesized utterances of 0.5-7 s, each with 0.1 and 0.5 s of trailing silence: with 8-10 s
windows many looped or dropped their last word; with 12 s (the utterance + 3 s at least) none did, and
through this engine every one of the 56 came back with the same words as in the full window (beam 5 in
both), in 178 ms p50 against 476 ms.

So :func:`short_window` is a fast path for callers that need only the text (a realtime turn's
transcript, ``text_only``), for audio of at most :data:`MAX_AUDIO_S`, at temperature 0 (the first step
of OpenAI's fallback schedule), with no prompt and a known language. Its result is checked
and refused (the caller then runs the full window, as before) when decoding:

- did not end by itself within :data:`TOKENS_PER_S` tokens per second of audio (looping);
- repeated its opening three tokens (the start of a loop);
- reads as a hallucination by faster-whisper's own thresholds: gzip compression ratio above 2.4, or
  average log probability below -1 (unless the no-speech probability says the clip is silence: then
  it returns no segment, as faster-whisper does).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from localrt.engines.types import Segment

__all__ = ["MAX_AUDIO_S", "TOKENS_PER_S", "WINDOW_S", "short_window"]

SAMPLE_RATE = 16_000
WINDOW_S = 12  # the encoder's window (s): at least the audio + MARGIN_S
MARGIN_S = 3.0
MAX_AUDIO_S = WINDOW_S - MARGIN_S  # longer clips take the full 30 s window
BEAM_SIZE = 5  # faster-whisper's default, as in the full window (greedy changed 2 of 28 sentences)
TOKENS_PER_S = 8  # fast speech is about 4 words, 5-6 tokens, a second
MIN_TOKENS = 16
COMPRESSION_RATIO_MAX = 2.4
LOG_PROB_MIN = -1.0
NO_SPEECH_MIN = 0.6


def short_window(model: Any, audio: np.ndarray, language: str | None) -> list[Segment] | None:
    """The segments (one, or none for silence) of ``audio`` (float32, 16 kHz) decoded in a short
    window by a faster-whisper ``WhisperModel``; None when the fast path does not apply or its result
    is refused (see the module docstring): transcribe in the full window then."""
    if not hasattr(model, "hf_tokenizer") or audio.shape[0] > MAX_AUDIO_S * SAMPLE_RATE:
        return None
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_compression_ratio

    multilingual = bool(model.model.is_multilingual)
    if multilingual and language is None:
        return None  # the language is detected on the full window
    tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task="transcribe", language=language)
    duration = audio.shape[0] / SAMPLE_RATE
    frames = WINDOW_S * SAMPLE_RATE // model.feature_extractor.hop_length
    features = model.feature_extractor(audio, padding=WINDOW_S * SAMPLE_RATE - audio.shape[0])
    features = np.ascontiguousarray(features[:, :frames][None], dtype=np.float32)
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    budget = MIN_TOKENS + math.ceil(duration * TOKENS_PER_S)
    result = model.model.generate(
        ctranslate2.StorageView.from_array(features),
        [prompt],
        beam_size=BEAM_SIZE,
        max_length=len(prompt) + budget,
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=[-1],
    )[0]
    tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
    if len(result.sequences_ids[0]) >= budget or _loops(tokens):
        return None
    text = tokenizer.decode(tokens)
    avg_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1) if tokens else 0.0
    no_speech = float(result.no_speech_prob)
    if no_speech > NO_SPEECH_MIN and avg_logprob < LOG_PROB_MIN:
        return []  # silence, as faster-whisper skips it
    ratio = get_compression_ratio(text) if text else 0.0
    if ratio > COMPRESSION_RATIO_MAX or avg_logprob < LOG_PROB_MIN:
        return None
    if not text.strip():
        return []
    return [
        Segment(
            id=0,
            seek=0,
            start=0.0,
            end=round(duration, 3),
            text=text if text.startswith(" ") else " " + text,
            tokens=tokens,
            temperature=0.0,
            avg_logprob=avg_logprob,
            compression_ratio=ratio,
            no_speech_prob=no_speech,
            words=None,
        )
    ]


def _loops(tokens: list[int]) -> bool:
    """The opening three tokens come again: Whisper started the utterance over."""
    head = tokens[:3]
    return len(head) == 3 and any(tokens[k : k + 3] == head for k in range(1, len(tokens) - 2))
