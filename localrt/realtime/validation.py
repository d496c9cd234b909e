"""Pydantic validation errors as the protocol's errors (§7): OpenAI's codes and dotted ``param`` names.

Pydantic's error locations are turned into OpenAI's parameter names (``session.bogus_field``,
``item.content[0].text``) by walking the location alongside the input, which also drops the union tags
pydantic inserts into the location.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from localrt.errors import APIError, InvalidRequest, MissingParameter
from localrt.realtime.frames import safe_text, shown

MAX_PARAM_CHARS = 256  # of a param path built from the client's keys


def validation_error(exc: ValidationError, data: Any, prefix: str = "") -> APIError:
    """The first pydantic error as the OpenAI-shaped error a client expects."""
    # Of a union's alternatives, report the one that got furthest into the client's data.
    candidates = [(*_param_path(e["loc"], data, prefix), e) for e in exc.errors(include_url=False)]
    param, _, err = max(candidates, key=lambda c: c[1])
    param = safe_text(param, MAX_PARAM_CHARS)
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param)
    if kind == "missing":
        return MissingParameter(f"Missing required parameter: '{param}'.", param=param)
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = str(ctx.get("discriminator", "'type'")).strip("'")
        param = f"{param}.{tag}" if param else tag
        return InvalidRequest(
            f"Invalid value: {shown(ctx.get('tag'))}. Supported values are: {ctx.get('expected_tags', '')}.",
            code="invalid_value",
            param=param,
        )
    if kind in ("literal_error", "enum"):
        expected = err.get("ctx", {}).get("expected", "")
        return InvalidRequest(
            f"Invalid value: {shown(value)}. Supported values are: {expected}.",
            code="invalid_value",
            param=param,
        )
    if kind == "union_tag_not_found":
        tag = err.get("ctx", {}).get("discriminator", "'type'").strip("'")
        param = f"{param}.{tag}" if param else tag
        return MissingParameter(f"Missing required parameter: '{param}'.", param=param)
    if kind in ("greater_than_equal", "greater_than"):
        limit = err.get("ctx", {}).get("ge", err.get("ctx", {}).get("gt"))
        code = "integer_below_min_value" if isinstance(value, int) else "decimal_below_min_value"
        return InvalidRequest(
            f"Invalid '{param}': {shown(value)} is below the minimum value of {limit}.",
            code=code,
            param=param,
        )
    if kind in ("less_than_equal", "less_than"):
        limit = err.get("ctx", {}).get("le", err.get("ctx", {}).get("lt"))
        code = "integer_above_max_value" if isinstance(value, int) else "decimal_above_max_value"
        return InvalidRequest(
            f"Invalid '{param}': {shown(value)} is above the maximum value of {limit}.",
            code=code,
            param=param,
        )
    if kind in ("string_too_long", "too_long"):
        return InvalidRequest(
            f"Invalid '{param}': {err['msg']}.", code="string_above_max_length", param=param
        )
    if kind.endswith("_type") or kind.endswith("_parsing") or kind in ("model_type", "dict_type"):
        return InvalidRequest(
            f"Invalid type for '{param}': {err['msg'].lower()}, got {type(value).__name__}.",
            code="invalid_type",
            param=param,
        )
    return InvalidRequest(f"Invalid value for '{param}': {err['msg']}.", code="invalid_value", param=param)


_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _param_path(loc: tuple[int | str, ...], data: Any, prefix: str) -> tuple[str, int]:
    """Pydantic's location -> (``a.b[0].c``, how many segments matched the client's data).

    A segment is part of the client's path if it is a key of (or an index into) the input at that depth;
    the last segment may also name a missing or unknown field. Union tags that pydantic inserts (a
    discriminator value, ``int``, ``literal['inf']``, a model class name) are skipped.
    """
    parts: list[str] = [prefix] if prefix else []
    node = data
    depth = 0
    for n, seg in enumerate(loc):
        last = n == len(loc) - 1
        if isinstance(node, list) and isinstance(seg, int):
            if parts:
                parts[-1] += f"[{seg}]"
            else:
                parts.append(f"[{seg}]")
            node = node[seg] if 0 <= seg < len(node) else None
            depth += 1
        elif isinstance(node, dict) and isinstance(seg, str):
            if seg == node.get("type") and not last:
                continue
            if seg in node:
                parts.append(seg)
                node = node[seg]
                depth += 1
            elif last and _FIELD.fullmatch(seg) and seg not in _TYPE_TAGS:
                parts.append(seg)
                depth += 1
    return ".".join(parts), depth
