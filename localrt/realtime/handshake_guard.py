"""Who may open a realtime session, decided before the WebSocket upgrade.

- **Origin** (``settings.realtime_allowed_origins``): a browser always sends ``Origin`` with a WebSocket
  handshake, and nothing else stops a page on any site from driving the local API (WebSockets are not
  covered by CORS). Empty list, the default: pages on localhost / 127.0.0.1 / [::1] / ``*.localhost``
  (any port) and same-origin pages (``Origin`` host and port == ``Host`` header). ``["*"]``: any origin;
  otherwise exactly the listed origins. A handshake without ``Origin`` (SDKs, servers) is allowed: a
  browser cannot omit it. With an API key set and no list, any origin may try (the key, checked
  after, is what guards the server then); a configured list applies with or without a key.
- **Session caps** (``realtime_max_sessions``, ``realtime_max_sessions_per_ip``): counted by one
  :class:`SessionSlots` on ``app.state``; a slot is taken before the upgrade and given back in a
  ``finally`` when the session ends, however the client left.

A refusal is an :class:`~localrt.errors.APIError`; the endpoint sends it as an HTTP denial response
(403 or 503 with ``Retry-After``) where the server supports that, else as close code 1008.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from localrt.errors import APIError, ServiceUnavailable
from localrt.settings import Settings

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Sessions last minutes; a client refused for a full server should not hammer it.
RETRY_AFTER_S = 5.0


class OriginNotAllowed(APIError):
    status = 403
    code = "origin_not_allowed"


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        host, port = parts.hostname, parts.port
    except ValueError:  # a malformed port or bracket
        return None
    if not host:
        return None
    return host, port if port is not None else _DEFAULT_PORTS.get(scheme, 0)


def origin_allowed(origin: str | None, host_header: str | None, allowed: list[str]) -> bool:
    if origin is None:
        return True
    if "*" in allowed:
        return True
    origin = origin.strip().rstrip("/").lower()
    if allowed:
        return origin in {a.strip().rstrip("/").lower() for a in allowed}
    scheme, sep, netloc = origin.partition("://")
    if not sep or scheme not in ("http", "https"):
        return False  # includes "null" (sandboxed frames, file:// pages)
    page = _host_port(netloc, scheme)
    if page is None:
        return False
    if page[0] in _LOCAL_HOSTS or page[0].endswith(".localhost"):
        return True
    # Same-origin: the page was served by whatever answers at the address the socket is opened to.
    return host_header is not None and page == _host_port(host_header.strip().lower(), scheme)


def check_origin(origin: str | None, host_header: str | None, settings: Any) -> OriginNotAllowed | None:
    allowed: list[str] = list(getattr(settings, "realtime_allowed_origins", None) or [])
    if not allowed and getattr(settings, "api_key", None) is not None:
        return None  # with a key, the key is the guard: a page elsewhere can only connect if it has it
    if origin_allowed(origin, host_header, allowed):
        return None
    shown = (origin or "")[:200]
    return OriginNotAllowed(
        f"Origin '{shown}' is not allowed to open a realtime session. Add it to the server's "
        "realtime_allowed_origins setting (LOCALRT_REALTIME_ALLOWED_ORIGINS, a JSON list).",
    )


class SessionSlots:
    """Realtime sessions open now, in total and per client address (used on the event loop only)."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self._per_ip: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> SessionSlots:
        defaults = Settings.model_fields
        return cls(
            getattr(settings, "realtime_max_sessions", defaults["realtime_max_sessions"].default),
            getattr(
                settings, "realtime_max_sessions_per_ip", defaults["realtime_max_sessions_per_ip"].default
            ),
        )

    def open_for(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)

    def acquire(self, ip: str) -> ServiceUnavailable | None:
        """Take a slot for ``ip``; the refusal to send if a cap is reached (nothing is taken then)."""
        if self._per_ip.get(ip, 0) >= self.max_per_ip:
            return ServiceUnavailable(
                f"Too many realtime sessions from this client: {self.max_per_ip} are open "
                "(realtime_max_sessions_per_ip). Close one and retry.",
                code="too_many_sessions_per_client",
                retry_after=RETRY_AFTER_S,
            )
        if self.total >= self.max_total:
            return ServiceUnavailable(
                f"The server is at its limit of {self.max_total} realtime sessions "
                "(realtime_max_sessions). Retry later.",
                code="too_many_sessions",
                retry_after=RETRY_AFTER_S,
            )
        self.total += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)
        self.total = max(0, self.total - 1)


def slots_of(state: Any) -> SessionSlots:
    """The app's :class:`SessionSlots` (``create_app`` makes it; an app built by hand gets one here)."""
    slots: SessionSlots | None = getattr(state, "realtime_slots", None)
    if slots is None:
        slots = SessionSlots.from_settings(getattr(state, "settings", None))
        state.realtime_slots = slots
    return slots
