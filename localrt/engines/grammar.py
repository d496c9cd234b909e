"""Client JSON schemas -> llama.cpp grammars that cannot crash, stall or exhaust the server.

A schema from a client (``response_format``, a tool's ``parameters``) becomes a GBNF grammar through
llama-cpp-python's converter and then goes to llama.cpp's grammar parser. Both have failure modes that no
request may reach:

- The converter writes ``maxLength`` / ``maxItems`` / a regex ``{m,n}`` as that many nested optional
  groups (``(c (c (c)?)?)?``) and ``minLength`` / ``minItems`` as that many copies. llama.cpp refuses
  more than 1000 such repetitions: ``llama_sampler_init_grammar`` returns NULL, which llama-cpp-python
  chains into the sampler and the worker then dereferences (SIGSEGV). A few ten thousand nesting levels
  overflow the parser's stack before it gets that far (``maxItems: 50000``, SIGSEGV too).
- A schema's size drives the converter's time and memory (optional properties cost it quadratic time;
  ``minLength: 10**9`` would build a gigabyte string); a ``$ref`` to a URL would make it fetch one.

So a schema is checked before it is converted (:func:`check_schema`: only local refs, bounded counts,
lengths and depth, walked iteratively so that no nesting can exhaust the Python stack);
:func:`schema_grammar` converts it and bounds the grammar's size and nesting; and :func:`load_grammar`,
run in the engine's worker, asks llama.cpp's own parser first and frees what it built: a refusal is a
400 naming the param, and a NULL sampler never reaches generation.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from localrt.errors import InvalidRequest

if TYPE_CHECKING:
    from llama_cpp import llama_vocab_p
    from llama_cpp.llama_grammar import LlamaGrammar

# llama.cpp's own ceiling on repetitions (its parser refuses 1001: "exceeds sane defaults").
MAX_REPEAT = 1000
# OpenAI's documented limits for structured outputs, or near them.
MAX_PROPERTIES = 5000  # object properties in one schema, in total
MAX_ENUM_VALUES = 1000  # enum values in one schema, in total
MAX_GRAMMAR_TEXT = 64 * 1024  # characters of property names, enum / const strings and patterns
MAX_PATTERN = 1000  # characters of one regex pattern
# What keeps conversion time bounded (the converter costs O(n**2) in the optional properties of one
# object: 100 take 20 ms, 500 take 0.6 s): at most 128 in one object, and the sum of their squares over
# the schema at most that of four such objects.
MAX_OPTIONAL_PROPERTIES = 128
MAX_OPTIONAL_COST = 4 * MAX_OPTIONAL_PROPERTIES**2
MAX_DEPTH = 64  # nesting of the schema document (objects and lists)
MAX_NODES = 50_000  # JSON values in the schema document
# And what the parser is given: llama.cpp recurses once per nested group (measured: 10,000 levels
# parse on an 8 MiB thread stack and 20,000 overflow it; 2,500 parse on a 2 MiB stack and 5,000 do
# not). The repetition bound above makes up to 1000 levels; a grammar this size parses in milliseconds.
MAX_GRAMMAR_BYTES = 1024 * 1024
MAX_GRAMMAR_NESTING = 1200

_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")


class UnsafeSchema(ValueError):
    """A schema this server will not turn into a grammar (the message says why and where, with no
    final period)."""


_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties", "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})
_SCHEMAS = frozenset(
    {
        "items",
        "additionalProperties",
        "additionalItems",
        "not",
        "if",
        "then",
        "else",
        "contains",
        "propertyNames",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_SCHEMA, _DATA = 0, 1


def check_schema(schema: Any) -> None:
    """Raise :class:`UnsafeSchema` unless ``schema`` is within every bound above.

    Cost is linear in the schema and stops at the first bound exceeded (at most ``MAX_NODES`` values).
    Keywords are read only where a schema stands (not inside ``enum`` values or under a property that
    happens to be called ``maxLength``); every value counts towards the size and depth bounds.
    """
    if not isinstance(schema, dict):
        raise UnsafeSchema("The schema must be a JSON object")
    totals = _Totals()
    stack: list[tuple[Any, str, int, int]] = [(schema, "", 1, _SCHEMA)]
    while stack:
        node, path, depth, kind = stack.pop()
        totals.nodes += 1
        if totals.nodes > MAX_NODES:
            raise UnsafeSchema(f"The schema is too large: more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise UnsafeSchema(f"The schema is nested too deeply at {_at(path)}: at most {MAX_DEPTH} levels")
        if kind == _SCHEMA and isinstance(node, dict):
            _check_keywords(node, path, totals)
            for key, value in node.items():
                sub = f"{path}.{key}" if path else str(key)
                if key in _SCHEMA_MAPS and isinstance(value, dict):
                    totals.nodes += 1
                    stack.extend((v, f"{sub}.{k}", depth + 2, _SCHEMA) for k, v in value.items())
                elif key in _SCHEMA_LISTS and isinstance(value, list):
                    totals.nodes += 1
                    stack.extend((v, f"{sub}[{i}]", depth + 2, _SCHEMA) for i, v in enumerate(value))
                else:
                    stack.append((value, sub, depth + 1, _SCHEMA if key in _SCHEMAS else _DATA))
        elif isinstance(node, dict):
            stack.extend((v, f"{path}.{k}", depth + 1, _DATA) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]", depth + 1, _DATA) for i, v in enumerate(node))


class _Totals:
    def __init__(self) -> None:
        self.nodes = self.properties = self.enum_values = self.text = self.optional_cost = 0


def _check_keywords(node: dict[str, Any], path: str, totals: _Totals) -> None:
    """The bounds on one schema object's own keywords; adds to the schema-wide totals."""
    for key in _COUNTS:
        if key in node:
            _check_count(node, key, path)
    for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
        if low in node and high in node and node[low] > node[high]:
            raise UnsafeSchema(f"'{low}' is greater than '{high}' at {_at(path)}")
    ref = node.get("$ref")
    if ref is not None and (not isinstance(ref, str) or not ref.startswith("#/")):
        raise UnsafeSchema(f"Unsupported '$ref' at {_at(path)}: only local references ('#/...') are")
    if "pattern" in node:
        totals.text += _check_pattern(node["pattern"], path)
    props = node.get("properties")
    if isinstance(props, dict):
        totals.properties += len(props)
        if totals.properties > MAX_PROPERTIES:
            raise UnsafeSchema(f"The schema has more than {MAX_PROPERTIES} properties")
        required = node.get("required")
        required_names = {r for r in required if isinstance(r, str)} if isinstance(required, list) else set()
        optional = sum(1 for name in props if name not in required_names)
        if optional > MAX_OPTIONAL_PROPERTIES:
            raise UnsafeSchema(
                f"The object at {_at(path)} has {optional} optional properties: at most "
                f"{MAX_OPTIONAL_PROPERTIES} are supported (list the others in 'required')"
            )
        totals.optional_cost += optional**2
        if totals.optional_cost > MAX_OPTIONAL_COST:
            raise UnsafeSchema(
                "The schema has too many optional properties in total (list more of them in 'required')"
            )
        totals.text += sum(len(name) for name in props)
    for key in ("$defs", "definitions"):
        if isinstance(node.get(key), dict):
            totals.text += sum(len(name) for name in node[key])
    enum = node.get("enum")
    if isinstance(enum, list):
        totals.enum_values += len(enum)
        if totals.enum_values > MAX_ENUM_VALUES:
            raise UnsafeSchema(f"The schema has more than {MAX_ENUM_VALUES} enum values")
        totals.text += sum(_literal_size(v) for v in enum)
    if "const" in node:
        totals.text += _literal_size(node["const"])
    if totals.text > MAX_GRAMMAR_TEXT:
        raise UnsafeSchema(
            f"The schema's property names, enum and const values and patterns are too long: "
            f"more than {MAX_GRAMMAR_TEXT} characters"
        )


def _literal_size(value: Any) -> int:
    """About how much grammar text an enum or const value becomes (nested values count as nodes)."""
    if isinstance(value, str):
        return len(value)
    return len(str(value)) if isinstance(value, (int, float)) else 0


def _at(path: str) -> str:
    return f"'{path}'" if path else "the top level"


def _check_count(node: dict[str, Any], key: str, path: str) -> None:
    value = node[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UnsafeSchema(f"'{key}' at {_at(path)} must be a non-negative integer")
    if value > MAX_REPEAT:
        raise UnsafeSchema(f"'{key}' at {_at(path)} is {value}: at most {MAX_REPEAT} is supported")


def _check_pattern(pattern: Any, path: str) -> int:
    """The pattern's length, once its quantifiers ``{m}`` / ``{m,n}`` are known to be within bounds."""
    if not isinstance(pattern, str):
        raise UnsafeSchema(f"'pattern' at {_at(path)} must be a string")
    if len(pattern) > MAX_PATTERN:
        raise UnsafeSchema(f"'pattern' at {_at(path)} is longer than {MAX_PATTERN} characters")
    i = 0
    while (start := pattern.find("{", i)) >= 0:
        end = pattern.find("}", start)
        if end < 0:
            break
        for part in pattern[start + 1 : end].split(","):
            part = part.strip()
            if part.isascii() and part.isdigit() and (len(part) > 9 or int(part) > MAX_REPEAT):
                raise UnsafeSchema(
                    f"A repetition in 'pattern' at {_at(path)} is {part}: at most {MAX_REPEAT} is supported"
                )
        i = end + 1
    return len(pattern)


def guard(schema: Any, param: str) -> None:
    """:func:`check_schema`, failing as the 400 a client gets (``invalid_value`` naming ``param``)."""
    try:
        check_schema(schema)
    except UnsafeSchema as exc:
        raise InvalidRequest(f"Invalid schema for '{param}': {exc}.", param=param) from None


def schema_grammar(schema: dict[str, Any], param: str) -> str:
    """The GBNF text for ``schema`` (checked first); InvalidRequest naming ``param`` if it cannot be."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    guard(schema, param)
    try:
        text = str(json_schema_to_gbnf(json.dumps(schema)))
    except (
        Exception,
        RecursionError,
    ) as exc:  # the converter raises assorted errors for what it cannot express
        raise InvalidRequest(f"Unsupported JSON schema in '{param}': {exc}", param=param) from None
    if len(text) > MAX_GRAMMAR_BYTES or grammar_nesting(text) > MAX_GRAMMAR_NESTING:
        raise InvalidRequest(
            f"The JSON schema in '{param}' makes a grammar too large for this server; simplify it.",
            param=param,
        )
    return text


def grammar_nesting(text: str) -> int:
    """The deepest nesting of parentheses in a GBNF text (outside literals and character classes)."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in '"[':
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        elif c == "#":  # a comment, to the end of the line
            while i < n and text[i] != "\n":
                i += 1
        i += 1
    return deepest


def load_grammar(vocab: llama_vocab_p, text: str, param: str) -> LlamaGrammar:
    """A ``LlamaGrammar`` for ``text`` once llama.cpp's parser accepts it (call in the model's worker).

    llama-cpp-python would chain the sampler ``llama_sampler_init_grammar`` returns without checking it;
    a grammar llama.cpp refuses gives NULL there, so it is built and freed here first.
    """
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
    if not sampler:
        raise InvalidRequest(
            f"The JSON schema in '{param}' makes a grammar llama.cpp cannot use; simplify it.", param=param
        )
    llama_cpp.llama_sampler_free(sampler)
    return LlamaGrammar.from_string(text, verbose=False)
