"""Plain Python functions as Realtime tools: a JSON Schema from the signature and docstring, and calling
them with the model's arguments.

The description is the docstring's first paragraph; a parameter's description comes from a Google-style
``Args:`` section (``city: The city name.``) or a Sphinx ``:param city: ...`` line. Supported annotations:
``str``, ``int``, ``float``, ``bool``, ``list[...]``/``tuple[...]``, ``dict[...]``, ``Literal[...]``,
``Enum`` subclasses, ``X | None``/``Optional[X]`` and unannotated (any JSON). Parameters with a default
are optional.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from localrt.sdk.models import ToolDefinition

_SIMPLE: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def tool_definition(fn: Callable[..., Any]) -> ToolDefinition:
    """The tool declaration for ``fn`` (its ``__name__``, docstring and signature)."""
    name = getattr(fn, "__name__", "")
    if not name or name == "<lambda>":
        raise ValueError(f"a tool needs a named function, got {fn!r}")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {}
    doc = inspect.getdoc(fn) or ""
    described = _param_docs(doc)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, param.annotation)
        schema = json_schema(annotation)
        if param.name in described:
            schema["description"] = described[param.name]
        properties[param.name] = schema
        if param.default is inspect.Parameter.empty and not _is_optional(annotation):
            required.append(param.name)
    parameters = {"type": "object", "properties": properties, "required": required}
    return ToolDefinition(name=name, description=_summary(doc), parameters=parameters)


def json_schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of one annotation (``{}`` = any value)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    if annotation in _SIMPLE:
        return {"type": _SIMPLE[annotation]}
    if annotation is type(None):
        return {"type": "null"}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [m.value for m in annotation]}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return json_schema(rest[0])
        return {"anyOf": [json_schema(a) for a in rest]}
    if annotation in (list, tuple, set) or origin in (list, tuple, set, frozenset):
        items = json_schema(args[0]) if args else {}
        return {"type": "array", "items": items} if items else {"type": "array"}
    if annotation is dict or origin is dict:
        return {"type": "object"}
    return {}


def _is_optional(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


def _summary(doc: str) -> str:
    """The docstring's first paragraph, on one line."""
    first = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0] if doc.strip() else ""
    return " ".join(first.split())


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params)\s*:\s*$")
_OTHER_SECTION = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")
_GOOGLE_PARAM = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


def _param_docs(doc: str) -> dict[str, str]:
    """Parameter descriptions from an ``Args:`` section or ``:param x:`` lines."""
    out: dict[str, str] = {}
    in_args = False
    args_indent = 0
    current: str | None = None
    for raw in doc.splitlines():
        line = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        sphinx = _SPHINX_PARAM.match(line)
        if sphinx:
            current = sphinx.group(1)
            out[current] = sphinx.group(2).strip()
            continue
        if _SECTION.match(line):
            in_args, args_indent, current = True, indent, None
            continue
        if not in_args:
            continue
        if not line:
            continue
        if indent <= args_indent and _OTHER_SECTION.match(line):
            in_args, current = False, None
            continue
        param = _GOOGLE_PARAM.match(line)
        if param and (current is None or indent <= _indent_of(doc, current)):
            current = param.group(1).lstrip("*")
            out[current] = param.group(2).strip()
        elif current is not None:
            out[current] = (out[current] + " " + line).strip()
    return out


def _indent_of(doc: str, name: str) -> int:
    for raw in doc.splitlines():
        if re.match(rf"^\s*\*{{0,2}}{re.escape(name)}\s*(\([^)]*\))?\s*:", raw):
            return len(raw) - len(raw.lstrip())
    return 0


async def call_tool(fn: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    """Call ``fn(**arguments)``: awaited if it is async, else in a worker thread (never on the loop)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(**arguments)
    result = await asyncio.to_thread(fn, **arguments)
    if inspect.isawaitable(result):
        result = await result
    return result


def output_text(result: Any) -> str:
    """What a tool's result becomes in ``function_call_output``: strings as they are, the rest as JSON."""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, default=str)
    except (TypeError, ValueError):
        return str(result)
