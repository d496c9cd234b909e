"""``POST /v1/chat/completions`` and ``POST /v1/completions``.

The engine prepares a prompt (template, tokens, context check, grammars) in its worker, and entering
its stream waits for that: a route enters the stream *before* it picks the response type, so a prompt
error (context length, an invalid schema or token id) is a plain JSON 400 even for ``stream: true``,
and only what fails after the first token becomes an SSE error frame.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from localrt import images
from localrt.api.common import engines_of, new_id, now, parse_body, sse, unless_disconnected
from localrt.api.schemas import ChatCompletionRequest, CompletionRequest
from localrt.engines.chat_format import content_text
from localrt.engines.interfaces import ChatJob, ChatModel
from localrt.engines.scheduler import Priority
from localrt.engines.types import ChatResult, TextDelta, ToolCallDelta
from localrt.errors import InvalidRequest

logger = logging.getLogger(__name__)

FINGERPRINT = "fp_localrt"


def _usage(result: ChatResult) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    out = []
    for i, msg in enumerate(req.messages):
        if msg.role == "tool" and not msg.tool_call_id:
            raise InvalidRequest(
                "Messages with role 'tool' must have a 'tool_call_id'.",
                param=f"messages[{i}].tool_call_id",
                code="missing_required_parameter",
            )
        out.append(msg.model_dump(exclude_none=True))
        content = out[-1].get("content")
        if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
            if msg.role != "user":
                j = next(j for j, p in enumerate(content) if p.get("type") == "image_url")
                raise InvalidRequest(
                    f"Image content parts are only allowed in user messages, not in '{msg.role}' ones.",
                    param=f"messages[{i}].content[{j}].type",
                )
            continue  # the parts go to the model as they are (see _check_images)
        out[-1]["content"] = content_text(content)
    return out


async def _check_images(messages: list[dict[str, Any]], engine: ChatModel) -> None:
    """Every image part against what the model accepts (see :mod:`localrt.images`): a 400 naming the
    part for a text-only model, a URL a local model cannot read, or a data URL that is not an image."""
    support = images.support_of(engine)
    for i, j, part in images.image_parts(messages):
        await images.check_image(images.part_url(part), f"messages[{i}].content[{j}]", support)


async def chat_completions(request: Request) -> Response:
    req = await parse_body(request, ChatCompletionRequest)
    engine = await engines_of(request).llm.get(req.model)
    params = req.sampling(req.max_completion_tokens or req.max_tokens)
    messages = _messages(req)
    await _check_images(messages, engine)
    stream = engine.chat(
        messages,
        tools=[t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None,
        tool_choice=req.tool_choice.model_dump()
        if isinstance(req.tool_choice, BaseModel)
        else req.tool_choice,
        response_format=req.response_format.to_engine() if req.response_format else None,
        params=params,
        priority=Priority.HTTP,
    )
    completion_id = new_id("chatcmpl")
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        await unless_disconnected(request, stream.__aenter__)
        return sse(_chat_chunks(stream, completion_id, req.model, include_usage))

    result = await unless_disconnected(request, lambda: _run(stream))
    message: dict[str, Any] = {"role": "assistant", "content": result.text, "refusal": None}
    if result.tool_calls:
        message["content"] = None
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in result.tool_calls
        ]
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": now(),
            "model": req.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": result.finish_reason}
            ],
            "usage": _usage(result),
        }
    )


async def _run(stream: ChatJob) -> ChatResult:
    """Generate to the end (a non-streaming answer); leaving early stops the model within a token."""
    async with stream:
        async for _ in stream:
            pass
    return stream.result


@asynccontextmanager
async def _leaving(stream: Any) -> AsyncIterator[Any]:
    """Leave a stream the route has already entered (the worker stops within a token).

    A body that never starts (the client left before it did) does not run this; dropping the stream
    cancels its job then (a :class:`~localrt.engines.scheduler.Job` dropped unclosed is cancelled).
    """
    try:
        yield stream
    finally:
        await stream.__aexit__(None, None, None)


async def _chat_chunks(
    stream: Any, completion_id: str, model: str, include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    created = now()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = None
        return out

    async with _leaving(stream):
        yield chunk({"role": "assistant", "content": ""})
        announced: set[str] = set()
        async for event in stream:
            if isinstance(event, TextDelta):
                yield chunk({"content": event.text})
            elif isinstance(event, ToolCallDelta):
                call: dict[str, Any] = {"index": event.index, "function": {"arguments": event.arguments}}
                if event.id not in announced:
                    announced.add(event.id)
                    call.update(id=event.id, type="function")
                    call["function"]["name"] = event.name
                yield chunk({"tool_calls": [call]})
    result: ChatResult = stream.result
    yield chunk({}, result.finish_reason)
    if include_usage:
        yield {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [],
            "usage": _usage(result),
        }


def _prompt(req: CompletionRequest) -> str | list[int]:
    """The one prompt of a completions request, as text or token ids (the engine checks the ids
    against the vocabulary, in its worker, before anything reads them)."""
    prompt = req.prompt
    value: str | list[int]
    if isinstance(prompt, str):
        value = prompt
    elif prompt and all(isinstance(p, int) for p in prompt):
        value = cast("list[int]", prompt)
    elif len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        value = prompt[0]  # one prompt, as text or as token ids
    elif prompt:
        raise InvalidRequest("Only one prompt per request is supported.", param="prompt")
    else:
        value = ""
    if not value:
        raise InvalidRequest("prompt must not be empty.", param="prompt")
    return value


async def completions(request: Request) -> Response:
    req = await parse_body(request, CompletionRequest)
    engine = await engines_of(request).llm.get(req.model)
    stream = engine.complete(_prompt(req), req.sampling(req.max_tokens), priority=Priority.HTTP)
    completion_id = new_id("cmpl")
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        await unless_disconnected(request, stream.__aenter__)
        echo = stream.prompt_text if req.echo else ""
        return sse(_completion_chunks(stream, completion_id, req.model, echo, include_usage))
    result = await unless_disconnected(request, lambda: _run(stream))
    echo = stream.prompt_text if req.echo else ""
    return JSONResponse(
        {
            "id": completion_id,
            "object": "text_completion",
            "created": now(),
            "model": req.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "text": echo + result.text,
                    "logprobs": None,
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": _usage(result),
        }
    )


async def _completion_chunks(
    stream: Any, completion_id: str, model: str, echo: str, include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    created = now()

    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = None
        return out

    async with _leaving(stream):
        if echo:
            yield chunk(echo)
        async for event in stream:
            if isinstance(event, TextDelta):
                yield chunk(event.text)
    result: ChatResult = stream.result
    yield chunk("", result.finish_reason)
    if include_usage:
        final = chunk("")
        final["choices"] = []
        final["usage"] = _usage(result)
        yield final


routes: list[BaseRoute] = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
]
