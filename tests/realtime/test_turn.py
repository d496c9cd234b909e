"""Server VAD as a pure state machine over window probabilities (32 ms windows, 512 samples)."""

from __future__ import annotations

from localrt.realtime.config import TurnDetection
from localrt.realtime.turn import WINDOW, TurnDetector


def kinds(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.kind for e in events if e.kind in ("speech_started", "speech_stopped")]


def test_start_and_stop_positions() -> None:
    td = TurnDetection(threshold=0.5, prefix_padding_ms=64, silence_duration_ms=96)
    det = TurnDetector(td, origin=0)
    probs = [0.0] * 10 + [0.9] * 20 + [0.0] * 5
    events = det.push(probs)
    started = next(e for e in events if e.kind == "speech_started")
    stopped = next(e for e in events if e.kind == "speech_stopped")
    assert started.position == 10 * WINDOW - 2 * WINDOW  # 64 ms of padding = 2 windows
    assert stopped.position == 30 * WINDOW  # the silence began here
    assert stopped.commit_end == 33 * WINDOW  # 96 ms of silence completed it
    assert not det.speaking


def test_short_pauses_do_not_end_the_turn_and_hysteresis_holds() -> None:
    det = TurnDetector(TurnDetection(threshold=0.5, silence_duration_ms=160), origin=0)
    probs = [0.9] * 5 + [0.1] * 3 + [0.9] * 5 + [0.4] * 10 + [0.1] * 6  # 0.4 > 0.5-0.15: still speech
    events = det.push(probs)
    assert kinds(events) == ["speech_started", "speech_stopped"]
    assert [e.kind for e in events].count("resume") == 1
    stopped = next(e for e in events if e.kind == "speech_stopped")
    assert stopped.position == 23 * WINDOW


def test_windows_fed_in_pieces_give_the_same_events() -> None:
    td = TurnDetection(silence_duration_ms=100)
    probs = [0.0] * 7 + [0.8] * 9 + [0.0] * 6 + [0.9] * 4 + [0.0] * 9
    whole = TurnDetector(td, origin=1000).push(probs)
    det = TurnDetector(td, origin=1000)
    pieces = []
    for i in range(0, len(probs), 3):
        pieces.extend(det.push(probs[i : i + 3]))
    assert pieces == whole
    assert kinds(whole) == ["speech_started", "speech_stopped", "speech_started", "speech_stopped"]


def test_padding_never_reaches_before_the_floor() -> None:
    det = TurnDetector(TurnDetection(prefix_padding_ms=300), origin=0)
    events = det.push([0.0, 0.9], floor=100)
    assert events[0].position == 100


def test_semantic_vad_uses_the_eagerness_silence() -> None:
    det = TurnDetector(TurnDetection(type="semantic_vad", eagerness="high"), origin=0)  # 400 ms
    events = det.push([0.9] * 3 + [0.0] * 12)
    assert kinds(events) == ["speech_started"]
    assert kinds(det.push([0.0])) == ["speech_stopped"]


def test_reset_drops_the_turn() -> None:
    det = TurnDetector(TurnDetection(), origin=0)
    det.push([0.9])
    assert det.speaking
    det.reset()
    assert not det.speaking


def test_silence_start_and_position_for_speculation() -> None:
    det = TurnDetector(TurnDetection(silence_duration_ms=500), origin=0)
    det.push([0.9] * 4)
    assert det.silence_start is None and det.position == 4 * WINDOW
    det.push([0.0] * 3)
    assert det.silence_start == 4 * WINDOW and det.position == 7 * WINDOW
    det.push([0.9])
    assert det.silence_start is None
