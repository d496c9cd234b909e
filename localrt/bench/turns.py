"""Turn detection in the bench: the same voice turns under each mode, the incomplete set, speculative work.

- **Modes** (``server_vad``, ``semantic_vad`` with eagerness ``auto``): each voice turn runs once per mode,
  in its own session, alternating which mode goes first; a turn's client clock splits the user-perceived
  latency at the ``speech_stopped`` that ended it (see :func:`localrt.bench.voice.split_turn`).
- **Incomplete set**: sentences spoken with a pause in the middle ("I would like to book a table for ...
  two people."). Piper speaks the whole sentence (so the first part keeps its mid-sentence intonation),
  Whisper's word timestamps place the boundary after the cut word, and ``pause_ms`` of silence goes in
  there. A *false end of turn*: a ``speech_stopped`` received before the second part's first sample was
  sent, or two user items committed.
- **Speculative work**: the server's cumulative totals (``GET /debug/timings``' top-level
  ``speculation``: ``used`` / ``discarded``, each ``{count, stt_s, llm_s, tts_s}``; absent on a server
  that does not speculate) and the chat engines' run seconds (``GET /metrics``,
  ``localrt_engine_job_run_seconds_sum`` over ``engine`` labels starting with ``llm``), read before and
  after each turn, so each turn carries its own share.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from localrt.audio.resample import resample
from localrt.bench.inputs import Utterance, last_voiced
from localrt.bench.voice import TURN_DETECTION, TurnSample, VoiceClient, apply_marks
from localrt.engines.interfaces import SpeechToText, TextToSpeech
from localrt.engines.types import Word

MODES = tuple(TURN_DETECTION)
PAUSE_MS = 700
# (first part, second part): the pause goes after the first part's last word.
INCOMPLETE = (
    ("Set a timer for", "ten minutes."),  # first: short, with a short answer (the bench's test runs it)
    ("I would like to book a table for", "two people."),
    ("I need to buy some milk and", "eggs."),
    ("Can you tell me", "what the weather is like today?"),
    ("My favourite colour is", "blue."),
    ("I was wondering if", "you could help me."),
    ("Tell me about the", "moon."),
    ("Could you remind me to", "call John?"),
    ("What is the weather like in", "London today?"),
    ("Please turn off the lights in the", "kitchen."),
)
SPECULATION_FIELDS = ("count", "stt_s", "llm_s", "tts_s")
SNAP_S = 0.06  # the cut moves to the quietest 10 ms within this of the gap's middle
VERIFY_STEP_S = 0.03  # ... then earlier by this much until the first part, heard alone, ends on the cut word
VERIFY_TRIES = 8


def parse_modes(text: str) -> tuple[str, ...]:
    """``"server_vad,semantic_vad"`` -> the modes, in that order; raises ValueError on an unknown one."""
    modes = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in modes if m not in TURN_DETECTION]
    if unknown or not modes:
        raise ValueError(f"turn detection modes are {', '.join(MODES)}; got {text!r}")
    return modes


# --- the incomplete set ---------------------------------------------------------------------------------
def _norm(word: str) -> str:
    return re.sub(r"[^a-z0-9']", "", word.lower())


def boundary(words: Sequence[Word], first: str) -> float | None:
    """Seconds into the audio between the first part's last word and the next word (the middle of the
    gap between them), from Whisper's words; by position if the cut word is not found."""
    wanted = [_norm(w) for w in first.split()]
    cut, nth = wanted[-1], wanted.count(wanted[-1])
    seen = 0
    for i, word in enumerate(words[:-1]):
        if _norm(word.word) == cut:
            seen += 1
            if seen == nth:
                return (word.end + words[i + 1].start) / 2
    n = len(wanted)
    return (words[n - 1].end + words[n].start) / 2 if len(words) > n else None


def quietest(pcm: np.ndarray, at: int, rate: int, radius_s: float = SNAP_S) -> int:
    """The start of the quietest 10 ms window within ``radius_s`` of index ``at``."""
    win = rate // 100
    lo, hi = max(0, at - int(radius_s * rate)), min(len(pcm) - win, at + int(radius_s * rate))
    if hi <= lo:
        return min(max(at, 0), len(pcm))
    x = np.abs(pcm.astype(np.float32))
    energy = np.convolve(x[lo : hi + win], np.ones(win, np.float32), mode="valid")
    return lo + int(np.argmin(energy))


async def incomplete_utterances(
    tts: TextToSpeech, stt: SpeechToText, count: int, pause_ms: int = PAUSE_MS
) -> tuple[list[Utterance], list[dict[str, Any]]]:
    """The first ``count`` sentences of the set with ``pause_ms`` of silence after the cut word; and, per
    sentence, how it was cut (``cut_s`` into the spoken sentence) or why it could not be."""
    utts: list[Utterance] = []
    info: list[dict[str, Any]] = []
    for first, second in INCOMPLETE[:count]:
        text = f"{first} {second}"
        chunk = await tts.synthesize(text)
        pcm16k = resample(chunk.samples, chunk.sample_rate, 16000).astype(np.float32) / 32768.0
        transcription = await stt.transcribe(pcm16k, language="en", word_timestamps=True)
        words = [w for seg in transcription.segments for w in seg.words or []]
        at = boundary(words, first)
        entry: dict[str, Any] = {"text": text, "cut_after": first.split()[-1], "heard": transcription.text}
        info.append(entry)
        if at is None:
            entry["error"] = "no word boundary after the cut word in Whisper's words"
            continue
        pcm24 = resample(chunk.samples, chunk.sample_rate, 24000)
        cut, moved = await verified_cut(stt, pcm24, quietest(pcm24, round(at * 24000), 24000), first)
        entry["cut_moved_s"] = round(moved * VERIFY_STEP_S, 3)
        cut16 = round(cut * 16000 / 24000)
        pause24 = np.zeros(pause_ms * 24, np.int16)
        audio24 = np.concatenate([pcm24[:cut], pause24, pcm24[cut:]]).astype(np.int16)
        audio16 = np.concatenate([pcm16k[:cut16], np.zeros(pause_ms * 16, np.float32), pcm16k[cut16:]])
        entry.update(cut_s=cut / 24000, pause_ms=pause_ms)
        utts.append(
            Utterance(
                f"{first} ... {second}", audio24, audio16, last_voiced(audio24, 24000), cut + len(pause24)
            )
        )
    return utts, info


async def verified_cut(stt: SpeechToText, pcm24: np.ndarray, cut: int, first: str) -> tuple[int, int]:
    """``cut`` (24 kHz), moved earlier until the first part, heard alone by Whisper, ends on the cut word;
    and how many steps it moved. Whisper's word timestamps are often late: a cut a few ms into the next
    word makes "... a table for" heard (and judged) as "... a table for two"."""
    last = _norm(first.split()[-1])
    step = round(VERIFY_STEP_S * 24000)
    for moved in range(VERIFY_TRIES):
        head = resample(pcm24[:cut], 24000, 16000).astype(np.float32) / 32768.0
        head = np.concatenate([head, np.zeros(4800, np.float32)])  # then silence, as in the pause
        transcription = await stt.transcribe(head, language="en", text_only=True)  # as a turn's is
        heard = [w for w in map(_norm, transcription.text.split()) if w]
        if heard and heard[-1] == last:
            return cut, moved
        cut -= step
    return cut + step * VERIFY_TRIES, VERIFY_TRIES  # never heard cleanly: the timestamps' cut, flagged


def false_end_of_turn(turn: dict[str, Any]) -> bool:
    """Whether a recorded turn of an incomplete utterance was ended in its pause: a ``speech_stopped``
    received before the second part's first sample was sent, or two user items committed."""
    resume = turn["clock_s"].get("resume_sent")
    return any(resume is None or t < resume for t in turn["stops_s"]) or turn["committed"] >= 2


# --- speculative work -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Counters:
    speculation: dict[str, Any] | None  # /debug/timings' "speculation" (None: the server has none)
    llm_run_s: float | None  # the chat engines' run seconds so far (None: no /metrics)


def llm_run_seconds(text: str) -> float:
    """Sum of ``localrt_engine_job_run_seconds_sum`` over the chat engines (``engine`` label ``llm...``)
    in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "localrt_engine_job_run_seconds_sum" and s.labels.get("engine", "").startswith(
                "llm"
            ):
                total += s.value
    return total


async def read_counters(http: httpx.AsyncClient) -> Counters:
    speculation: dict[str, Any] | None = None
    llm: float | None = None
    with contextlib.suppress(httpx.HTTPError, ValueError):
        # The totals are top-level; a session id that matches nothing keeps the turns' entries out.
        resp = await http.get("/debug/timings", params={"session_id": "bench-counters"})
        if resp.status_code == 200:
            found = resp.json().get("speculation")
            speculation = found if isinstance(found, dict) else None
    with contextlib.suppress(httpx.HTTPError, ValueError):
        resp = await http.get("/metrics")
        if resp.status_code == 200:
            llm = llm_run_seconds(resp.text)
    return Counters(speculation, llm)


def speculation_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    out: dict[str, Any] = {}
    for kind in ("used", "discarded"):
        b, a = before.get(kind) or {}, after.get(kind) or {}
        out[kind] = {f: float(a.get(f) or 0) - float(b.get(f) or 0) for f in SPECULATION_FIELDS}
        out[kind]["count"] = int(out[kind]["count"])
    return out


async def measured_turn(
    url: str, utt: Utterance, mode: str, api_key: str | None = None, cancel_at_first_audio: bool = False
) -> TurnSample:
    """One voice turn in a new session with ``mode``'s turn detection, with its server timing marks and
    the speculative work and chat engine time the server counted over it."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as http:
        before = await read_counters(http)
        async with VoiceClient(url, api_key, mode) as client:
            sample = await client.turn(utt, cancel_at_first_audio=cancel_at_first_audio)
            if sample.response_id:
                with contextlib.suppress(httpx.HTTPError):  # the stage split is a bonus
                    apply_marks(sample, await client.server_marks(sample.response_id))
        after = await read_counters(http)
    sample.speculation = speculation_delta(before.speculation, after.speculation)
    if before.llm_run_s is not None and after.llm_run_s is not None:
        sample.llm_run_s = after.llm_run_s - before.llm_run_s
    return sample


async def incomplete_stage(
    url: str,
    api_key: str | None,
    utts: list[Utterance],
    modes: tuple[str, ...],
    progress: Callable[[int], object] = lambda n: None,
) -> list[dict[str, Any]]:
    """Each incomplete utterance once per mode (alternating which goes first), one session each. What
    they measure is over at the reply's first audio: the reply is cancelled there."""
    out: list[dict[str, Any]] = []
    for i, utt in enumerate(utts):
        for mode in modes if i % 2 == 0 else modes[::-1]:
            out.append((await measured_turn(url, utt, mode, api_key, cancel_at_first_audio=True)).to_dict())
        progress(1)
    return out
