"""What the remote engines share: OpenAI clients for an upstream, its errors in localrt's terms, a
reachability probe, and a scheduler slot held by async work.

A remote engine (``remote_llm``, ``remote_stt``, ``remote_tts``) sends its jobs to an OpenAI-compatible
server (vLLM, SGLang, llama-server, speaches, another localrt) with the ``openai`` client library, async,
on the event loop. This module is the small, stable part they share:

- :func:`normalize_base_url` and :class:`Upstream`: one upstream's base URL and key, with an
  ``openai.AsyncOpenAI`` client per event loop (a client's connection pool belongs to the loop that made
  it), no retries (a retry would hide a down upstream behind a long wait) and short connect timeouts.
- :func:`map_error`: any failure of a call (an HTTP status, a refused connection, a timeout, a stream
  cut short) as an :class:`~localrt.errors.APIError` that names the upstream: context length, model not
  found, 429 with the upstream's message and ``Retry-After``, 5xx / unreachable as 502 / 503.
- :meth:`Upstream.probe`: whether the upstream answers ``GET /models`` (for ``/health``).
- :class:`SlotLease`: a scheduler slot held while async work runs on the event loop (see its docstring).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import openai

from localrt.engines.scheduler import Job, JobControl, Priority, Scheduler
from localrt.errors import (
    APIError,
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)

__all__ = ["CONNECT_TIMEOUT_S", "READ_TIMEOUT_S", "SlotLease", "Upstream", "map_error", "normalize_base_url"]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # a down host fails within this, never hangs
READ_TIMEOUT_S = 120.0  # longest silence between two bytes of an answer (a long prompt's prefill)
PROBE_TIMEOUT_S = 2.0

_CONTEXT_RE = re.compile(
    r"context (length|window|size)|maximum context|too many tokens|prompt is too long", re.I
)


def normalize_base_url(url: str) -> str:
    """The upstream's API root: ``http://host:8000`` becomes ``http://host:8000/v1``; a URL with a path
    (``.../v1``, ``.../openai/v1``) is kept as given. Raises ValueError for what is not http(s)."""
    url = url.strip().rstrip("/")
    m = re.fullmatch(r"(https?)://([^/?#\s]+)(/[^?#\s]*)?", url)
    if m is None:
        raise ValueError(f"not an http(s) base URL: {display_url(url)!r}")
    return url if m.group(3) else url + "/v1"


def display_url(url: str) -> str:
    """``url`` without credentials (``user:pass@``), for messages and logs."""
    return re.sub(r"^(\w+://)[^/@]*@", r"\1", url)


class Upstream:
    """One OpenAI-compatible upstream: its base URL, key, and an async client per event loop.

    ``client()`` must be called on the event loop that uses the client. Thread safe."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        read_timeout: float = READ_TIMEOUT_S,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.display = display_url(self.base_url)
        self._api_key = api_key or "unused"  # the client insists on one; most local servers ignore it
        self._timeout = openai.Timeout(read_timeout, connect=connect_timeout)
        self._lock = threading.Lock()
        self._clients: dict[asyncio.AbstractEventLoop, openai.AsyncOpenAI] = {}

    def client(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                for old in [lp for lp in self._clients if lp.is_closed()]:
                    del self._clients[old]  # a finished loop's client: its sockets went with it
                client = self._clients[loop] = openai.AsyncOpenAI(
                    base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=self._timeout
                )
            return client

    def sync_client(self, timeout: float = PROBE_TIMEOUT_S * 5) -> openai.OpenAI:
        """A blocking client (start-up only: call it off the event loop); close it after use."""
        return openai.OpenAI(
            base_url=self.base_url,
            api_key=self._api_key,
            max_retries=0,
            timeout=openai.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)),
        )

    def list_models(self) -> list[dict[str, Any]]:
        """The upstream's ``GET /models`` entries (blocking; raises what :func:`map_error` returns)."""
        try:
            with self.sync_client() as client:
                return [m.model_dump() for m in client.models.list().data]
        except Exception as exc:
            raise map_error(exc, self.display) from exc

    async def probe(self, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
        """Whether the upstream answers ``GET /models`` within ``timeout``: ``{"url", "reachable",
        "latency_ms", "error"}`` (reachable: it answered HTTP at all, even with an error status)."""
        started = time.monotonic()
        error: str | None = None
        reachable = True
        try:
            await asyncio.wait_for(self.client().with_options(timeout=timeout).models.list(), timeout)
        except openai.APIStatusError as exc:
            error = f"HTTP {exc.status_code}: {_upstream_message(exc)}"
        except (TimeoutError, openai.APITimeoutError):
            reachable, error = False, f"no answer within {timeout:g} s"
        except Exception as exc:
            reachable, error = False, map_error(exc, self.display).message
        return {
            "url": self.display,
            "reachable": reachable,
            "latency_ms": round((time.monotonic() - started) * 1000, 1),
            "error": error,
        }

    def close(self, wait: float = 2.0) -> None:
        """Close every client (blocking for at most ``wait`` per client, off its loop): its pooled
        connections go before its loop does. Called on a client's own loop, that one is only scheduled:
        use :meth:`aclose` there."""
        with self._lock:
            clients, self._clients = self._clients, {}
        for loop, client in clients.items():
            _close_client(client, loop, wait)

    async def aclose(self) -> None:
        """Close every client; the running loop's is awaited."""
        loop = asyncio.get_running_loop()
        with self._lock:
            clients, self._clients = self._clients, {}
        own = clients.pop(loop, None)
        for other, client in clients.items():
            _close_client(client, other, 0)
        if own is not None:
            await own.close()


def _close_client(client: openai.AsyncOpenAI, loop: asyncio.AbstractEventLoop, wait: float) -> None:
    if loop.is_closed():
        return  # its sockets went with it
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    closing = client.close()
    if running is loop:
        _background.add(task := loop.create_task(closing))
        task.add_done_callback(_background.discard)
        return
    try:
        future = asyncio.run_coroutine_threadsafe(closing, loop)
    except RuntimeError:  # the loop stopped meanwhile
        closing.close()
        return
    if wait > 0:
        try:
            future.result(wait)
        except Exception:  # closing is best effort
            future.cancel()


_background: set[asyncio.Task[None]] = set()


# --- errors -------------------------------------------------------------------------------------------
def _upstream_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value[:1000]
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return str(value["message"])[:1000]
    if isinstance(body, str) and body:
        return body[:1000]
    try:
        text = exc.response.text.strip()
    except Exception:  # a streamed body that was not read
        text = ""
    return text[:1000] or f"HTTP {exc.status_code}"


def _retry_after(exc: openai.APIStatusError, default: float = 1.0) -> float:
    headers = exc.response.headers
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value) if value else None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    return default


def map_error(exc: BaseException, upstream: str, *, model: str | None = None) -> APIError:
    """``exc`` (raised by a call to ``upstream``, or by reading its stream) as localrt's error.

    - 400/413/422 whose code or message says the context is too long: ContextLengthExceeded;
    - 404 (or code model_not_found): ModelNotFound (``model``), else 502 naming the path (a wrong URL);
    - 429: RateLimited with the upstream's message and Retry-After; 503 / 529: ServiceUnavailable;
    - other 4xx: InvalidRequest with the upstream's message (401/403: 502, localrt's key is at fault);
    - 5xx, an error event in the stream: 502 ``upstream_error``;
    - refused or cut connections, timeouts: 503 ``upstream_unavailable``, naming the upstream.
    Never raises; an APIError passes through unchanged."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        msg = _upstream_message(exc)
        code = exc.code if isinstance(exc.code, str) else None
        param = exc.param if isinstance(exc.param, str) else None
        if code == "context_length_exceeded" or (status in (400, 413, 422) and _CONTEXT_RE.search(msg)):
            return ContextLengthExceeded(msg, param=param or "messages")
        if code == "model_not_found" or (status == 404 and "model" in msg.lower()):
            err = ModelNotFound(model or "?")
            err.message = f"{err.message} (upstream {upstream}: {msg})"
            return err
        if status == 429:
            return RateLimited(
                f"upstream {upstream} is rate limiting: {msg}",
                retry_after=_retry_after(exc),
                code=code or "rate_limit_exceeded",
            )
        if status in (503, 529):
            return ServiceUnavailable(
                f"upstream {upstream} is unavailable (HTTP {status}): {msg}",
                retry_after=_retry_after(exc),
                code="upstream_unavailable",
            )
        if status in (401, 403):
            return ServerError(
                f"upstream {upstream} refused localrt's credentials (HTTP {status}): {msg}; "
                "check the server's upstream API key setting.",
                status=502,
                code="upstream_auth_failed",
            )
        if status == 404:
            path = exc.response.request.url.path
            return ServerError(
                f"upstream {upstream} has no {path} (HTTP 404): {msg}; check the server's base URL setting.",
                status=502,
                code="upstream_error",
            )
        if 400 <= status < 500:
            return InvalidRequest(msg, param=param, code=code or "invalid_value")
        return ServerError(
            f"upstream {upstream} failed (HTTP {status}): {msg}", status=502, code="upstream_error"
        )
    if isinstance(exc, openai.APITimeoutError):
        return ServiceUnavailable(
            f"upstream {upstream} timed out", retry_after=1.0, code="upstream_unavailable"
        )
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f": {cause}" if cause is not None and str(cause) else ""
        return ServiceUnavailable(
            f"upstream {upstream} is unreachable or closed the connection{detail}",
            retry_after=1.0,
            code="upstream_unavailable",
        )
    if isinstance(exc, openai.APIError):  # an error event inside the stream
        body = exc.body if isinstance(exc.body, dict) else {}
        msg = str(body.get("message") or exc.message)
        if _CONTEXT_RE.search(msg) or body.get("code") == "context_length_exceeded":
            return ContextLengthExceeded(msg, param="messages")
        return ServerError(f"upstream {upstream} reported an error: {msg}", status=502, code="upstream_error")
    if isinstance(exc, (OSError, TimeoutError)):
        return ServiceUnavailable(
            f"upstream {upstream} is unreachable: {exc}", retry_after=1.0, code="upstream_unavailable"
        )
    logger.error("upstream %s: unexpected error", upstream, exc_info=exc)
    return ServerError(f"upstream {upstream}: unexpected error ({type(exc).__name__})", status=502)


# --- a scheduler slot held by async work ----------------------------------------------------------------
class _Granted:
    """The lease job's first item: the slot is ours."""


class _Released(Exception):
    """The lease's work failed (so the job's outcome, for metrics, is ``error``)."""


_POLL_S = 0.1  # how often an idle lease worker checks for a stop it was not woken for (a dropped job)


class SlotLease:
    """A slot of an engine's :class:`~localrt.engines.scheduler.Scheduler`, held while async work (an
    HTTP request to an upstream) runs on the event loop.

    A remote engine's work is not a blocking iterator but a coroutine, so its scheduler job only holds the
    slot: the job's producer, in the worker thread, yields one item (the grant), then sleeps until the
    work on the loop releases it. So the queue bound (QueueFull: 429), priorities (realtime first), slots
    (concurrent upstream requests), ``stats()`` and job metrics (queued time, run time, outcome) are the
    scheduler's, as for a local engine, while the HTTP stream is read and cancelled on the loop.

    ``async with SlotLease(scheduler, priority):`` waits for a slot (raising QueueFull or EngineClosed);
    leaving it releases the slot at once (the worker wakes on a threading.Event), as ``cancelled`` when
    the body was cancelled, ``error`` when it raised. If the scheduler is closed while the body runs, the
    body's task is cancelled and EngineClosed raised from the ``async with``. Cancelling the task waiting
    for a slot leaves the queue at once."""

    def __init__(self, scheduler: Scheduler, priority: Priority = Priority.HTTP) -> None:
        self._scheduler = scheduler
        self._priority = priority
        self._released = threading.Event()
        self._failed = False
        self._job: Job[_Granted] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._lost: BaseException | None = None  # why the scheduler took the slot back

    def _produce(self, control: JobControl) -> Iterator[_Granted]:
        released = self._released
        yield _Granted()
        while not released.wait(_POLL_S):
            if control.is_set():
                return
        if self._failed:
            raise _Released("the remote work failed")

    async def __aenter__(self) -> SlotLease:
        job = self._job = self._scheduler.submit(self._produce, priority=self._priority)
        try:
            await job.__anext__()  # the grant; QueueFull / EngineClosed were raised by submit
        except BaseException:
            self._released.set()
            job.cancel()  # still queued: leaves the queue now
            raise
        owner = asyncio.current_task()
        self._watch = asyncio.get_running_loop().create_task(self._watch_job(job, owner))
        return self

    async def _watch_job(self, job: Job[_Granted], owner: asyncio.Task[Any] | None) -> None:
        """Cancel the body if the scheduler ends the job first (closed: EngineClosed)."""
        try:
            async for _ in job:
                pass
        except Exception as exc:
            if not self._released.is_set():
                self._lost = exc
                if owner is not None:
                    owner.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(cancelled=exc_type is asyncio.CancelledError, failed=exc is not None)
        if self._lost is not None and exc_type is asyncio.CancelledError:
            uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()  # the cancel was ours, not the caller's: report why instead
            raise self._lost from None

    def release(self, *, cancelled: bool = False, failed: bool = False) -> None:
        """Give the slot back now (idempotent; on the event loop)."""
        if self._released.is_set():
            return
        self._failed = failed and not cancelled
        if cancelled and self._job is not None:
            self._job.cancel()  # outcome "cancelled"; the worker wakes at its next poll or below
        self._released.set()
        if self._watch is not None:
            self._watch.cancel()
