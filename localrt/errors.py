"""OpenAI-shaped errors.

Every failure a client can see is an :class:`APIError` carrying the OpenAI ``type``, ``code``, HTTP
status and ``param``.  Routes raise them; one exception handler in :mod:`localrt.app` renders them as
``{"error": {"message", "type", "param", "code"}}``.  The realtime session renders the same objects as
``error`` events, so both transports share one vocabulary.
"""

from __future__ import annotations

from typing import Any

_UNSET: Any = object()  # "keep the class's default code", distinct from an explicit None


class APIError(Exception):
    """An error to report to the client in OpenAI's shape."""

    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = _UNSET,
        status: int | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not _UNSET:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.param!r}, {self.message!r})"


class InvalidRequest(APIError):
    """400: the request is malformed or a field is invalid (``param`` names it)."""

    status = 400
    code = "invalid_value"


class MissingParameter(APIError):
    status = 400
    code = "missing_required_parameter"


class ContextLengthExceeded(APIError):
    status = 400
    code = "context_length_exceeded"


class AuthenticationError(APIError):
    status = 401
    code = "invalid_api_key"


class NotFound(APIError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str, *, param: str | None = "model") -> None:
        super().__init__(f"The model '{model}' does not exist or you do not have access to it.", param=param)


class PayloadTooLarge(APIError):
    status = 413
    code = "file_too_large"


class ServerError(APIError):
    status = 500
    type = "server_error"
    code = "server_error"


class EngineUnavailable(APIError):
    """503: the engine a request needs is not loaded on this server."""

    status = 503
    type = "server_error"
    code = "engine_unavailable"


class _RetryLater(APIError):
    """An error that says when to retry: ``retry_after`` (s) becomes the ``Retry-After`` header."""

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class RateLimited(_RetryLater):
    """429: a per-client or per-engine bound is reached."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(_RetryLater):
    """503: the server is full or shutting down."""

    status = 503
    type = "server_error"
    code = "service_unavailable"
