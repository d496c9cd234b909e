"""Does a transcript sound finished? A cheap text-side check for semantic turn detection.

Smart Turn judges the end of a turn from the audio (intonation, rhythm) and is sometimes sure of a
sentence cut after "for" or "and". The transcript, which speculative Whisper has ready in the same
pause, settles those cases: an English utterance whose last word is one that cannot end a sentence (an
article, a conjunction, a preposition, an auxiliary, a filler) or that ends on a comma or an ellipsis is
not finished. A question or exclamation mark means Whisper heard a finished sentence ("What are you
looking for?"). English only: other languages are not judged here (always "finished").
"""

from __future__ import annotations

import re

_OPEN_PUNCTUATION = (",", ";", ":", "-", "\u2013", "\u2014", "...", "\u2026")
_WORDS = re.compile(r"[a-z']+")
# Words after which an English sentence is practically never over.
_DANGLING = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "nor",
        "because",
        "so",
        "if",
        "that",
        "than",
        "when",
        "while",
        "although",
        "though",
        "unless",
        "until",
        "whether",
        "for",
        "to",
        "of",
        "in",
        "on",
        "at",
        "by",
        "with",
        "from",
        "about",
        "into",
        "onto",
        "over",
        "under",
        "between",
        "through",
        "after",
        "before",
        "like",
        "as",
        "my",
        "your",
        "his",
        "her",
        "our",
        "their",
        "its",
        "this",
        "these",
        "those",
        "some",
        "any",
        "every",
        "each",
        "no",
        "is",
        "are",
        "was",
        "were",
        "am",
        "be",
        "been",
        "being",
        "have",
        "has",
        "had",
        "do",
        "does",
        "did",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "um",
        "uh",
        "er",
        "erm",
        "ah",
    ]
)


def sounds_unfinished(text: str, language: str | None = None) -> bool:
    """Whether ``text`` (a transcript) stops in the middle of a sentence."""
    if language not in (None, "", "en") and not language.startswith("en-"):
        return False
    stripped = text.strip().strip("\"'")
    if not stripped:
        return False
    if stripped.endswith(_OPEN_PUNCTUATION):
        return True
    if stripped.endswith(("?", "!")):
        return False
    words = _WORDS.findall(stripped.lower())
    return bool(words) and words[-1] in _DANGLING
