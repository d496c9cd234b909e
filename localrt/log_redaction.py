"""Keep secrets a client put in a URL out of the logs.

A browser cannot set headers on a WebSocket, so realtime clients may send the key as ``?api-key=``;
uvicorn's access lines (``uvicorn.access`` for HTTP, ``uvicorn.error`` for WebSocket handshakes) print
the path with its query string. :class:`RedactSecrets` rewrites the value of every query parameter whose
name looks like a credential (``api-key``, ``key``, ``token``, ``auth``, ``secret``, ``password``,
``signature``...) to ``[REDACTED]``, before any handler formats the record.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

REDACTED = "[REDACTED]"
_PARAM = re.compile(r"([?&;])([^=&#;\s\"]*)=([^&#;\s\"]*)")
_SECRET_WORDS = ("key", "token", "auth", "secret", "password", "passwd", "signature", "credential")
# The loggers uvicorn writes request lines to.
LOGGERS = ("uvicorn.access", "uvicorn.error")


def _redact_param(match: re.Match[str]) -> str:
    name = unquote_plus(match.group(2)).lower()
    if any(word in name for word in _SECRET_WORDS):
        return f"{match.group(1)}{match.group(2)}={REDACTED}"
    return match.group(0)


def redact(text: str) -> str:
    """``text`` with credential-like query values replaced (cheap when there is no query)."""
    if "=" not in text:
        return text
    return _PARAM.sub(_redact_param, text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def install() -> None:
    """Add the filter to uvicorn's loggers, once (idempotent: every server setup calls it)."""
    for name in LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in log.filters):
            log.addFilter(RedactSecrets())
