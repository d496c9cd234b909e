from __future__ import annotations

import pytest

from localrt.text.chunker import ClauseChunker, speakable


def feed(chunker: ClauseChunker, deltas: list[str]) -> list[str]:
    out: list[str] = []
    for delta in deltas:
        out.extend(chunker.push(delta))
    return [*out, *chunker.flush()]


def tokens(text: str) -> list[str]:
    """Split like an LLM would: a few characters at a time."""
    return [text[i : i + 3] for i in range(0, len(text), 3)]


def test_sentences_are_cut_once_the_next_character_arrives() -> None:
    chunker = ClauseChunker()
    assert chunker.push("Hello there.") == []  # could still be "Hello there.5" or an abbreviation
    assert chunker.push(" How") == ["Hello there."]
    assert chunker.push(" are you?") == []
    assert chunker.flush() == [" How are you?"]


def test_concatenation_is_the_input_verbatim() -> None:
    text = "Sure! The capital of France is Paris, a city on the Seine.\nIt has, e.g., the Louvre. Dr. Who? 3.5 km."
    clauses = feed(ClauseChunker(), tokens(text))
    assert "".join(clauses) == text
    assert len(clauses) >= 4


def test_first_clause_is_cut_early_at_a_comma() -> None:
    clauses = feed(
        ClauseChunker(first_min_words=3), tokens("Well, the capital of France, as you know, is Paris.")
    )
    # "Well," has too few words; the first cut comes after "the capital of France,".
    assert clauses[0] == "Well, the capital of France,"
    assert "".join(clauses) == "Well, the capital of France, as you know, is Paris."


def test_later_clauses_need_more_words_before_an_early_cut() -> None:
    text = "One two three, four five, six seven eight nine ten eleven, twelve."
    clauses = feed(ClauseChunker(first_min_words=3, min_words=8), tokens(text))
    assert clauses == ["One two three,", " four five, six seven eight nine ten eleven,", " twelve."]


@pytest.mark.parametrize(
    "text",
    [
        "It costs 3.50 dollars today.",
        "Ask Dr. Smith or Mr. Jones now.",
        "Use e.g. this one.",
        "J. R. R. Tolkien wrote it.",
    ],
)
def test_no_cut_inside_numbers_abbreviations_and_initials(text: str) -> None:
    assert feed(ClauseChunker(), tokens(text)) == [text]


def test_list_markers_are_not_sentences() -> None:
    clauses = feed(ClauseChunker(), tokens("Options:\n1. Paris is big.\n2. Lyon is smaller."))
    assert " ".join(c.strip() for c in clauses) == "Options: 1. Paris is big. 2. Lyon is smaller."
    assert not any(c.strip() in ("1.", "2.") for c in clauses)


def test_long_text_without_punctuation_is_cut_at_a_space() -> None:
    text = " ".join(["word"] * 100)
    clauses = feed(ClauseChunker(max_chars=60), [text])
    assert "".join(clauses) == text
    assert all(len(c) <= 61 for c in clauses[:-1])


def test_flush_of_whitespace_is_nothing() -> None:
    chunker = ClauseChunker()
    chunker.push("Hi.")
    assert chunker.flush() == ["Hi."]
    chunker.push("  ")
    assert chunker.flush() == []


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**Paris** is `big`.", "Paris is big ."),
        ("- item one", "item one"),
        ("  ...  ", ""),
        ("### Title", "Title"),
    ],
)
def test_speakable(raw: str, spoken: str) -> None:
    assert speakable(raw).replace(" .", ".") == spoken.replace(" .", ".")
