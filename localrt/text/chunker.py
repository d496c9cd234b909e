"""LLM text deltas -> speakable clauses, so speech can start before the sentence is finished.

The realtime loop feeds every token's text to a :class:`ClauseChunker` and synthesizes each clause it
returns while the model keeps generating. A clause ends:

- at a sentence end (``.``, ``!``, ``?``, ``…``) once the next character shows it really is one (a space
  or newline follows; ``3.5`` and ``e.g.`` are not cut; nor is a list marker such as ``1.``);
- at a line break;
- early, at ``,`` ``;`` ``:`` or a dash followed by a space, once enough words are buffered: few for the
  first clause of a reply (the first audio starts after a handful of words), more for later ones (fewer,
  longer clauses sound more natural and cost less per call);
- at the last space before ``max_chars`` when the text has no punctuation at all.

Clauses are returned verbatim, whitespace included: their concatenation is exactly the text fed in, so
the transcript sent alongside the audio is the model's own text. :func:`speakable` strips what a voice
should not read out (markdown marks, stray symbols) just before synthesis.
"""

from __future__ import annotations

import re

_SENTENCE_END = ".!?…"
_CLAUSE_END = ",;:"
_CLOSERS = "\"')]}»”’"
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "approx", "no", "fig"}
)
_WORD = re.compile(r"\w+", re.UNICODE)
_LIST_MARKER = re.compile(r"^\s*(\d+|[a-zA-Z])\.$")
_MARKUP = re.compile(r"[*_`#~|<>\[\]{}^]+")
_SPACES = re.compile(r"\s+")


def _words(text: str) -> int:
    return len(_WORD.findall(text))


def speakable(text: str) -> str:
    """The part of ``text`` a voice should read: markdown marks removed, spaces collapsed.

    Returns "" when nothing pronounceable is left (only punctuation or symbols).
    """
    cleaned = _SPACES.sub(" ", _MARKUP.sub(" ", text)).strip()
    cleaned = re.sub(r"^\s*[-•]\s+", "", cleaned)
    return cleaned if any(ch.isalnum() for ch in cleaned) else ""


class ClauseChunker:
    """Cuts a stream of text deltas into clauses; see the module docstring for the rules."""

    def __init__(self, *, first_min_words: int = 3, min_words: int = 8, max_chars: int = 300) -> None:
        self.first_min_words = first_min_words
        self.min_words = min_words
        self.max_chars = max_chars
        self._buf = ""
        self._emitted = 0

    def push(self, text: str) -> list[str]:
        """Add the next delta; return the clauses it completed (possibly none)."""
        self._buf += text
        clauses: list[str] = []
        while (cut := self._find_cut()) is not None:
            clause, self._buf = self._buf[:cut], self._buf[cut:]
            clauses.append(clause)
            self._emitted += 1
        return clauses

    def flush(self) -> list[str]:
        """The end of the text: whatever is buffered is the last clause (if it holds any word)."""
        rest, self._buf = self._buf, ""
        if rest.strip():
            self._emitted += 1
            return [rest]
        return []

    # ----------------------------------------------------------------------------------------------------
    def _find_cut(self) -> int | None:
        buf = self._buf
        start = len(buf) - len(buf.lstrip())  # leading whitespace belongs to this clause but never ends it
        min_words = self.first_min_words if self._emitted == 0 else self.min_words
        for i in range(start, len(buf)):
            ch = buf[i]
            if ch == "\n":
                if buf[:i].strip():
                    return i
                continue
            if ch in _SENTENCE_END:
                end = i + 1
                while end < len(buf) and (buf[end] in _SENTENCE_END or buf[end] in _CLOSERS):
                    end += 1
                if end >= len(buf):
                    return None  # cannot tell yet whether this ends the sentence
                if buf[end].isspace() and not self._is_abbreviation(buf[:end]):
                    return end
                continue
            if ch in _CLAUSE_END or ch in "—–":
                end = i + 1
                while end < len(buf) and buf[end] in _CLOSERS:
                    end += 1
                if end >= len(buf):
                    return None
                if buf[end].isspace() and _words(buf[:end]) >= min_words:
                    return end
        if len(buf) > self.max_chars:
            space = buf.rfind(" ", start, self.max_chars)
            if space > start:
                return space
        return None

    @staticmethod
    def _is_abbreviation(clause: str) -> bool:
        stripped = clause.rstrip(_CLOSERS).strip()
        if _LIST_MARKER.match(stripped):
            return True
        if not stripped.endswith("."):
            return False
        last = stripped.rsplit(None, 1)[-1][:-1].lower()
        if last in _ABBREVIATIONS:
            return True
        # A single capital letter: an initial ("J. R. R. Tolkien").
        return len(last) == 1 and last.isalpha() and stripped.rsplit(None, 1)[-1][0].isupper()
