"""One generation of the remote chat engine: the caller's handle (:class:`RemoteChatJob`, a
:class:`~localrt.engines.interfaces.ChatJob`) and the task that streams it from the upstream.

The stream runs in its own task on the event loop (:class:`_Pump`): it waits for a slot of the engine's
scheduler (a :class:`~localrt.engines.remote_common.SlotLease`), sends the request with the ``openai``
client, and turns the chunks into :class:`TextDelta` / :class:`ToolCallDelta` events on a queue the
caller reads. Cancelling the job cancels that task, from any thread: the HTTP response is closed
at once, whatever the task was waiting for, so the upstream sees the client go. The task holds no
reference to the handle, so a handle dropped unclosed (a client that left before a streamed body
started) is cancelled by its finalizer, as a local engine's job is.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import openai

from localrt.engines.remote_common import SlotLease, Upstream, map_error
from localrt.engines.scheduler import Priority, Scheduler
from localrt.engines.types import ChatResult, SamplingParams, TextDelta, ToolCall, ToolCallDelta
from localrt.errors import APIError, ContextLengthExceeded, ServerError

__all__ = ["RemoteChatJob", "Request", "sampling"]

_tasks: set[asyncio.Task[None]] = set()  # the running streams (a task needs a strong reference)
_MAX_CUTS = 4  # context-length retries of a truncate_history request


def sampling(params: SamplingParams) -> dict[str, Any]:
    """``params`` as OpenAI request fields (defaults left out)."""
    out: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p}
    if params.max_tokens is not None:
        out["max_tokens"] = params.max_tokens
    if params.stop:
        out["stop"] = list(params.stop)
    if params.seed is not None:
        out["seed"] = params.seed
    if params.presence_penalty:
        out["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty:
        out["frequency_penalty"] = params.frequency_penalty
    return out


@dataclass
class Request:
    """What to send: ``kind`` chat (``/chat/completions``) or complete (``/completions``)."""

    kind: Literal["chat", "complete"]
    model: str
    body: dict[str, Any]  # messages or prompt, tools, sampling...
    headers: dict[str, str]
    priority: Priority
    truncate_history: bool = False  # on a context-length refusal, retry without the oldest turns


class _End:
    pass


@dataclass
class _Failure:
    exc: APIError


class _Ready:
    pass


_Item = TextDelta | ToolCallDelta | _Ready | _End | _Failure


@dataclass
class _Call:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""  # all received
    announced: bool = False


class _Pump:
    """The stream of one job, run as a task on the event loop."""

    def __init__(self, scheduler: Scheduler, upstream: Upstream, request: Request) -> None:
        self.scheduler = scheduler
        self.upstream = upstream
        self.request = request
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.result = ChatResult()
        self._calls: dict[int, _Call] = {}
        self._chunks = 0
        self._usage_seen = False
        self._finish_seen = False

    async def run(self) -> None:
        try:
            async with SlotLease(self.scheduler, self.request.priority):
                await self._stream()
        except asyncio.CancelledError:
            self.queue.put_nowait(_End())
            raise
        except BaseException as exc:
            err = map_error(exc, self.upstream.display, model=self.request.model)
            self.queue.put_nowait(_Failure(err))
        else:
            self.queue.put_nowait(_End())

    async def _stream(self) -> None:
        client = self.upstream.client()
        req = self.request
        # The body is built from checked values; the client's per-field TypedDicts add nothing here.
        create_chat: Any = client.chat.completions.create
        create_text: Any = client.completions.create
        common: dict[str, Any] = {
            "model": req.model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "extra_headers": req.headers,
            **req.body,
        }
        if req.kind == "chat":
            chat_stream = await self._open_chat(create_chat, common)  # raises the upstream's refusal
            self.queue.put_nowait(_Ready())
            async with chat_stream:  # leaving (a cancel too) closes the HTTP response
                async for chunk in chat_stream:
                    # Upstreams leave fields out (the client does not validate): read them leniently.
                    self._take_usage(getattr(chunk, "usage", None))
                    for choice in getattr(chunk, "choices", None) or []:
                        if (getattr(choice, "index", 0) or 0) == 0:
                            delta = getattr(choice, "delta", None)
                            self._take_delta(
                                getattr(delta, "content", None), getattr(delta, "tool_calls", None)
                            )
                            self._take_finish(getattr(choice, "finish_reason", None))
        else:
            text_stream = await create_text(**common)
            self.queue.put_nowait(_Ready())
            async with text_stream:
                async for piece in text_stream:
                    self._take_usage(getattr(piece, "usage", None))
                    for c in getattr(piece, "choices", None) or []:
                        if (getattr(c, "index", 0) or 0) == 0:
                            self._take_delta(getattr(c, "text", None), None)
                            self._take_finish(getattr(c, "finish_reason", None))
        self._finish()  # in the slot: a failure here is the job's outcome too

    async def _open_chat(self, create: Any, common: dict[str, Any]) -> Any:
        """Send the chat request. With ``truncate_history``, a context-length refusal is retried with
        the older half of the conversation dropped (whole turns; the system prompt stays), a few times:
        the upstream's context size is not known here, its refusal is the measure."""
        for _ in range(_MAX_CUTS):
            try:
                return await create(**common)
            except openai.APIStatusError as exc:
                if not self.request.truncate_history:
                    raise
                if not isinstance(map_error(exc, self.upstream.display), ContextLengthExceeded):
                    raise
                shorter = drop_oldest_turns(common["messages"])
                if shorter is None:
                    raise
                common = {**common, "messages": shorter}
        return await create(**common)

    def _take_usage(self, usage: Any) -> None:
        if usage is None:
            return
        self._usage_seen = True
        self.result.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        self.result.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        details = getattr(usage, "prompt_tokens_details", None)
        self.result.cached_tokens = int(getattr(details, "cached_tokens", 0) or 0)

    def _take_finish(self, reason: str | None) -> None:
        if reason:
            self._finish_seen = True
            self.result.finish_reason = str(reason)

    def _take_delta(self, text: str | None, tool_calls: list[Any] | None) -> None:
        if text:
            self.result.text += text
            self._chunks += 1
            if not self._usage_seen:
                self.result.completion_tokens = self._chunks
            self.queue.put_nowait(TextDelta(text))
        for tc in tool_calls or []:
            self._chunks += 1
            index = int(getattr(tc, "index", 0) or 0)
            call = self._calls.setdefault(index, _Call(index))
            if getattr(tc, "id", None):
                call.id = call.id or str(tc.id)
            fn = getattr(tc, "function", None)
            piece = str(getattr(fn, "arguments", None) or "")
            name = getattr(fn, "name", None)
            if name:
                call.name = call.name or str(name)
            call.arguments += piece
            if call.name is None:
                continue  # announced once its name is known, with the arguments so far
            if call.id is None:
                call.id = "call_" + uuid.uuid4().hex[:24]
            if not call.announced:
                call.announced = True
                piece = call.arguments
            self.queue.put_nowait(
                ToolCallDelta(index=call.index, id=call.id, name=call.name, arguments=piece)
            )

    def _finish(self) -> None:
        if not self._finish_seen and not self._chunks:
            # A reply always ends with a finish_reason: a stream that just stops is a failure that
            # started after the upstream said 200 (llama-cpp-python's server, for a prompt over its
            # context). Not an empty reply.
            raise ServerError(
                f"upstream {self.upstream.display} ended the reply without any output or finish_reason: "
                "it failed after it started answering (see its log; some servers do this for a prompt "
                "longer than their context).",
                status=502,
                code="upstream_error",
            )
        calls = [c for _, c in sorted(self._calls.items()) if c.name]
        if calls:
            self.result.tool_calls = [ToolCall(c.id or "", c.name or "", c.arguments) for c in calls]
            if self.result.finish_reason == "stop":
                self.result.finish_reason = "tool_calls"
        if not self._usage_seen:
            self.result.completion_tokens = self._chunks


def drop_oldest_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """``messages`` without the older half of its turns (cut before a user message; the leading system
    messages stay), or None when nothing can be dropped."""
    head = 0
    while head < len(messages) and messages[head].get("role") in ("system", "developer"):
        head += 1
    rest = messages[head:]
    users = [i for i, m in enumerate(rest) if m.get("role") == "user" and i > 0]
    if not users:
        return None
    cut = next((i for i in users if i >= len(rest) // 2), users[-1])
    return messages[:head] + rest[cut:]


def _cancel_task(task: asyncio.Task[None], loop: asyncio.AbstractEventLoop) -> None:
    """Cancel ``task`` from any thread (never waits; a closed loop took the task with it)."""
    if task.done():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    try:
        if running is loop:
            task.cancel()
        else:
            loop.call_soon_threadsafe(task.cancel)
    except RuntimeError:
        pass


class RemoteChatJob:
    """One generation streamed from the upstream: ``async with job: async for event in job: ...``.

    Entering starts the stream and waits for a scheduler slot and the upstream's answer, raising
    QueueFull, EngineClosed or the upstream's refusal (mapped). ``result`` is kept up to date while events
    arrive, so a cancelled reply reports what it produced. Leaving, ``aclose`` or ``cancel`` (from any
    thread) closes the stream without waiting for anything."""

    def __init__(
        self, scheduler: Scheduler, upstream: Upstream, request: Request, *, prompt_text: str = ""
    ) -> None:
        self._scheduler = scheduler
        self._upstream = upstream
        self._request = request
        self.prompt_text = prompt_text
        self._result = ChatResult()
        self._pump: _Pump | None = None
        self._cancelled = threading.Event()
        self._stop: weakref.finalize[Any, Any] | None = None
        self._entered = False
        self._finished = False

    @property
    def result(self) -> ChatResult:
        return self._pump.result if self._pump is not None else self._result

    @result.setter
    def result(self, value: ChatResult) -> None:
        if self._pump is not None:
            self._pump.result = value
        self._result = value

    @property
    def priority(self) -> Priority:
        return self._request.priority

    def cancel(self) -> None:
        """Stop now: the HTTP stream is closed (thread safe, idempotent, never waits)."""
        self._cancelled.set()
        if self._stop is not None:
            self._stop()  # runs _cancel_task once

    async def __aenter__(self) -> RemoteChatJob:
        if self._entered:
            raise RuntimeError("a RemoteChatJob can be entered once")
        self._entered = True
        if self._cancelled.is_set():
            self._finished = True
            return self
        pump = self._pump = _Pump(self._scheduler, self._upstream, self._request)
        loop = asyncio.get_running_loop()
        task = loop.create_task(pump.run(), name=f"remote-{self._request.kind}")
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
        self._stop = weakref.finalize(self, _cancel_task, task, loop)  # on cancel, or when dropped
        self._stop.atexit = False
        if self._cancelled.is_set():  # cancel() ran on another thread meanwhile
            self._stop()
        try:
            first = await pump.queue.get()
        except BaseException:  # the caller was cancelled while waiting: stop the job, do not wait
            self.cancel()
            raise
        if isinstance(first, _Failure):
            self._finished = True
            raise first.exc
        if isinstance(first, _End):
            self._finished = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._finished = True
        self.cancel()

    def __aiter__(self) -> RemoteChatJob:
        return self

    async def __anext__(self) -> TextDelta | ToolCallDelta:
        if not self._entered:
            raise RuntimeError("enter the job with `async with` before iterating it")
        if self._finished or self._pump is None:
            raise StopAsyncIteration
        item = await self._pump.queue.get()
        if isinstance(item, (TextDelta, ToolCallDelta)):
            return item
        self._finished = True
        if isinstance(item, _Failure):
            raise item.exc
        raise StopAsyncIteration
