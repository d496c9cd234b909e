"""Hostile values for the fuzz tests (hypothesis strategies), shared by the realtime and HTTP fuzzers.

- :class:`Values`: strings, numbers and JSON values in three moods: clean (well-formed, so requests get
  past parsing), hostile (wrong types, control characters, huge numbers) and wild (hostile plus lone
  surrogates and NaN / Infinity). All now and then produce a large string.
- :func:`json_schemas`: JSON schemas as clients put them in ``response_format`` and tool
  ``parameters``: random ``maxLength`` / ``maxItems`` / ``minItems`` (up to 50,000 and beyond), nesting,
  ``anyOf`` / ``$ref`` / ``pattern``.
- :func:`deep_json`: JSON *text* nested thousands of levels deep (too deep for Python to build or
  serialize as an object); :func:`with_raw` splices such text into a request at a marker.
- :func:`fuzz_settings`: hypothesis settings for the fuzz tests: derandomized (the same examples in
  every run, so CI does not flake) unless ``LOCALRT_FUZZ_RANDOM=1``; ``LOCALRT_FUZZ_SCALE=10`` runs ten
  times as many examples (for a local bug hunt).
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

LONE_SURROGATES = ("\ud800", "\udfff", "\udbff", "x\ud83d", "\udc00y")
SPECIAL_STRINGS = (
    "",
    " ",
    "\x00",
    "\x00\x01\x7f",
    "\u202e\u200b\ufeff",
    "\U0001f600",
    "null",
    "{",
    '"',
    "\\",
    "%s%n",
    "../../../../etc/passwd",
    "item_" + "0" * 20,
    "a" * 65,
)
HUGE_SIZES = (64 * 1024, 900 * 1024, 1536 * 1024)
HUGE_INTS = (2**31, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 10**400)
MARKER = "\u0000FUZZ-RAW\u0000"


def _scale() -> float:
    return float(os.environ.get("LOCALRT_FUZZ_SCALE", "1"))


def fuzz_settings(max_examples: int, *, shrink: bool = True) -> settings:
    """Settings for one fuzz test: ``max_examples`` (times LOCALRT_FUZZ_SCALE), no deadline, no database.

    ``shrink=False`` for tests where a failure may take the server down with it: every later example
    would fail too, and shrinking would then chase the wrong input.
    """
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(
        max_examples=max(1, round(max_examples * _scale())),
        deadline=None,
        database=None,
        derandomize=os.environ.get("LOCALRT_FUZZ_RANDOM", "") not in ("1", "true", "yes"),
        suppress_health_check=list(HealthCheck),
        phases=phases,
        print_blob=False,
    )


def huge_text(wild: bool = True) -> st.SearchStrategy[str]:
    """A large string (64 KiB, 900 KiB or 1.5 MiB), when wild sometimes ending in a lone surrogate."""
    tails = ["", "\ud800"] if wild else [""]
    return st.builds(
        lambda n, tail: "x" * (n - len(tail)) + tail, st.sampled_from(HUGE_SIZES), st.sampled_from(tails)
    )


class Values:
    """Strategies for the values inside a request or event, in one of three moods.

    - ``CLEAN``: well-formed values of the expected types (any valid unicode, finite numbers), so that
      requests get past parsing and reach the code behind it; sizes are random and sometimes large.
    - ``HOSTILE``: any field may be the wrong JSON type, strings carry control characters, bidi marks,
      path-like text, numbers are huge; still valid JSON text throughout.
    - ``WILD``: HOSTILE plus what Python's ``json`` writes but must not be accepted: lone surrogates
      (``"\\ud800"``) and NaN / Infinity. A server refuses such a body whole, so they get a mood of their
      own rather than hiding every other hostile value behind that refusal.
    """

    def __init__(self, hostile: bool, wild: bool = False) -> None:
        self.hostile = hostile
        self.wild = wild

    def short(self, max_size: int = 24) -> st.SearchStrategy[str]:
        """Short strings: ids, names, keys."""
        clean = st.text(st.characters(codec="utf-8"), max_size=max_size)
        if not self.hostile:
            return clean
        kinds = [clean, clean, st.sampled_from(SPECIAL_STRINGS)]
        if self.wild:
            kinds.append(st.text(max_size=max_size))  # surrogates included
            surrogate = st.sampled_from(LONE_SURROGATES)
            kinds.append(
                st.builds(lambda a, s, b: a + s + b, st.text(max_size=6), surrogate, st.text(max_size=6))
            )
        return st.one_of(*kinds)

    def text(self, max_size: int = 64, huge: bool = True) -> st.SearchStrategy[str]:
        """Texts; about one in sixteen is large (64 KiB to 1.5 MiB)."""
        if not huge:
            return self.short(max_size)
        return st.integers(0, 15).flatmap(lambda k: huge_text(self.wild) if k == 0 else self.short(max_size))

    def numbers(self) -> st.SearchStrategy[int | float]:
        if not self.hostile:
            return st.one_of(st.integers(-(2**63), 2**63), st.floats(allow_nan=False, allow_infinity=False))
        return st.one_of(
            st.integers(min_value=-5, max_value=5),
            st.integers(),
            st.sampled_from(HUGE_INTS),
            st.floats(allow_nan=self.wild, allow_infinity=self.wild),
        )

    def json(self, max_leaves: int = 10) -> st.SearchStrategy[Any]:
        """Any JSON value (small: the huge and the deep come from :func:`huge_text` and :func:`deep_json`)."""
        return st.recursive(
            st.one_of(st.none(), st.booleans(), self.numbers(), self.short()),
            lambda inner: st.one_of(
                st.lists(inner, max_size=4), st.dictionaries(self.short(12), inner, max_size=4)
            ),
            max_leaves=max_leaves,
        )

    def maybe(self, valid: st.SearchStrategy[Any], weight: int = 4) -> st.SearchStrategy[Any]:
        """``valid``; when hostile, sometimes a random JSON value or hostile string instead."""
        if not self.hostile:
            return valid
        return st.one_of(*([valid] * weight), self.json(4), self.short())


CLEAN = Values(hostile=False)
HOSTILE = Values(hostile=True)
WILD = Values(hostile=True, wild=True)
MOODS = (CLEAN, HOSTILE, WILD)


def sizes(v: Values) -> st.SearchStrategy[Any]:
    """maxLength / maxItems / minItems: small, at llama.cpp's limits, huge; when hostile also wrong."""
    limits = st.sampled_from([0, 1, 3, 100, 999, 1000, 1999, 2000, 5000, 50_000, 10**9, 2**63])
    if not v.hostile:
        return st.one_of(limits, st.integers(min_value=0, max_value=3000))
    return st.one_of(
        limits,
        st.integers(min_value=0, max_value=3000),
        st.integers(),
        st.floats(allow_nan=v.wild, allow_infinity=v.wild),
        st.sampled_from(["10", None, True, -1]),
    )


def _schema_leaf(v: Values) -> st.SearchStrategy[Any]:
    patterns = ["^a+$", "(a|b)*c", "[", "(?P<x>", "\\", "a{1,99999}"] + (["\ud800"] if v.wild else [])
    return st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("string")},
            optional={
                "maxLength": sizes(v),
                "minLength": sizes(v),
                "pattern": st.sampled_from(patterns),
                "format": st.sampled_from(["date-time", "email", "uuid", "bogus"]),
                "enum": st.lists(v.short(8), max_size=4),
            },
        ),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["integer", "number"])},
            optional={"minimum": v.numbers(), "maximum": v.numbers(), "multipleOf": v.numbers()},
        ),
        st.sampled_from([{"type": "boolean"}, {"type": "null"}, {}, {"type": "bogus"}, {"type": 1}]),
        st.builds(lambda c: {"const": c}, v.json(3)),
        st.builds(lambda r: {"$ref": r}, st.sampled_from(["#", "#/$defs/x", "#/properties/a", "http://x"])),
        st.dictionaries(v.short(8), v.json(3), max_size=3),
    )


def _schema_node(v: Values, inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    names = ["a", "b", "c", ""] + (["\ud800"] if v.wild else [])
    return st.one_of(
        st.fixed_dictionaries(
            {
                "type": st.just("object"),
                "properties": st.dictionaries(st.sampled_from(names), inner, max_size=3),
            },
            optional={
                "required": st.lists(st.sampled_from(["a", "b", "zz"]), max_size=3),
                "additionalProperties": st.one_of(st.booleans(), inner),
                "$defs": st.dictionaries(st.just("x"), inner, max_size=1),
                "minProperties": sizes(v),
                "maxProperties": sizes(v),
            },
        ),
        st.fixed_dictionaries(
            {"type": st.just("array"), "items": inner},
            optional={"minItems": sizes(v), "maxItems": sizes(v), "uniqueItems": st.booleans()},
        ),
        st.builds(
            lambda k, x: {k: x}, st.sampled_from(["anyOf", "oneOf", "allOf"]), st.lists(inner, max_size=3)
        ),
    )


def json_schemas(v: Values) -> st.SearchStrategy[Any]:
    """JSON schemas with random limits and nesting (and, when hostile, now and then not a schema)."""
    schemas = [
        st.recursive(_schema_leaf(v), lambda inner: _schema_node(v, inner), max_leaves=6),
        st.builds(nested_schema, st.sampled_from([8, 40, 64, 120])),
    ]
    if v.hostile:
        schemas.append(v.json(4))
    return st.one_of(*schemas)


def nested_schema(depth: int) -> dict[str, Any]:
    """An object schema nested ``depth`` levels (``{"properties": {"a": {...}}}``: JSON depth 2 x ``depth``;
    kept under ~150, past which hypothesis's printer of a failing example overflows the stack)."""
    schema: dict[str, Any] = {"type": "string", "maxLength": 8}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def deep_json(depth: int, kind: str = "list") -> str:
    """JSON text nested ``depth`` levels: ``[[[...]]]`` or ``{"a":{"a":...}}``."""
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def deep_texts() -> st.SearchStrategy[str]:
    return st.builds(
        deep_json, st.sampled_from([50, 900, 1000, 5000, 100_000]), st.sampled_from(["list", "dict"])
    )


def with_raw(value: Any, raw: str) -> str:
    """``value`` as JSON text (non-ASCII escaped, so lone surrogates survive), with the string
    :data:`MARKER` replaced by the JSON text ``raw``."""
    return json.dumps(value).replace(json.dumps(MARKER), raw)


def dumps(value: Any) -> str:
    """JSON text a client could send: escaped non-ASCII keeps lone surrogates (and NaN) intact."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True)
