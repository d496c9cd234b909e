"""StopMatcher: stop sequences split across streamed pieces."""

from __future__ import annotations

import pytest

from localrt.text.stops import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    matcher = StopMatcher(stops)
    out = [matcher.feed(p) for p in pieces]
    if not matcher.stopped:
        out.append(matcher.flush())
    return [o for o in out if o], matcher.stopped


def test_no_stops_passes_everything_through() -> None:
    assert run([], ["Hel", "lo"]) == (["Hel", "lo"], False)


def test_stop_inside_one_piece_cuts_before_it() -> None:
    assert run(["END"], ["one END two"]) == (["one "], True)


def test_stop_split_across_pieces_is_never_emitted() -> None:
    out, stopped = run(["<|im_end|>"], ["Hi", " there<|im", "_en", "d|>more"])
    assert "".join(out) == "Hi there" and stopped


def test_held_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    out, stopped = run(["\nUser:"], ["a\n", "Us", "ually"])
    assert out == ["a", "\nUsually"] and not stopped


def test_held_tail_is_flushed_at_the_end() -> None:
    assert run(["STOP"], ["go ST"]) == (["go ", "ST"], False)


def test_earliest_of_several_stops_wins() -> None:
    assert run(["b", "a"], ["xxab"]) == (["xx"], True)


def test_feed_after_stop_returns_nothing() -> None:
    matcher = StopMatcher(["x"])
    assert matcher.feed("ax") == "a"
    assert matcher.feed("more") == "" and matcher.flush() == ""


@pytest.mark.parametrize("cut", range(1, 12))
def test_any_split_gives_the_same_text(cut: int) -> None:
    text = "say hi<|im_end|>bye"
    out, stopped = run(["<|im_end|>", "\n\n"], [text[:cut], text[cut:]])
    assert "".join(out) == "say hi" and stopped
