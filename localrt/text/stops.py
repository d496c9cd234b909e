"""Stop sequences over streamed text: emit what is safe, hold back what might start a stop sequence.

A stop sequence can arrive split across tokens ("<|im" then "_end|>"), so text that ends with a prefix of
one is held until the next piece settles it. Each piece is examined together with the held tail only, so
the work per token stays constant however long the reply grows.
"""

from __future__ import annotations


class StopMatcher:
    """Feed text pieces in order; get back the text to emit and whether a stop sequence was reached."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in dict.fromkeys(stops) if s]
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that can be emitted now. After a stop sequence, ``stopped`` is set and the text
        before it is returned; everything after it is dropped."""
        if self.stopped:
            return ""
        text = self._held + piece
        if not self._stops:
            self._held = ""
            return text
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[: min(hits)]
        hold = self._partial_tail(text)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The held tail, when the text ends without reaching a stop sequence."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_tail(self, text: str) -> int:
        """Length of the longest end of ``text`` that is a proper prefix of some stop sequence."""
        longest = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest
