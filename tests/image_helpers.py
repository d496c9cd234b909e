"""Images for the image-input tests, and a recording OpenAI-compatible upstream (a stand-in remote VLM).

:class:`RecordingUpstream` is a real HTTP server (Starlette under uvicorn, in a thread) implementing
``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed SSE, or one JSON answer), that records
every request body it gets, so a test can check what localrt sent to a remote engine byte for byte.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from localrt.serving import serve_in_thread

UPSTREAM_MODEL = "tiny-vlm"
UPSTREAM_REPLY = ["I see ", "a red ", "square."]
CLOSE = {"Connection": "close"}


def png(width: int = 2, height: int = 2, rgb: bytes = b"\xff\x00\x00") -> bytes:
    """A real PNG: a ``width`` x ``height`` RGB image of one colour (red)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + rgb * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


JPEG_START = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
GIF_START = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
WEBP_START = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00"


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def image_part(url: str, detail: str | None = None) -> dict[str, Any]:
    image: dict[str, Any] = {"url": url}
    if detail is not None:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


class RecordingUpstream:
    """The upstream's state: the request bodies it received, in order."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""

    @property
    def chats(self) -> list[dict[str, Any]]:
        return [b for b in self.bodies if "messages" in b]

    def app(self) -> Starlette:
        async def models(request: Request) -> Response:
            card = {"id": UPSTREAM_MODEL, "object": "model", "created": 0, "owned_by": "test"}
            return JSONResponse({"object": "list", "data": [card]})

        async def chat(request: Request) -> Response:
            body = json.loads(await request.body())
            self.bodies.append(body)
            self.headers.append(dict(request.headers))
            # No keep-alive: a connection left open in the localrt server's loop when the test stops it
            # would be reported as an unclosed transport.
            if not body.get("stream"):
                return JSONResponse(_completion(body), headers=CLOSE)
            return StreamingResponse(_sse(body), media_type="text/event-stream", headers=CLOSE)

        return Starlette(
            routes=[
                Route("/v1/models", models, methods=["GET"]),
                Route("/v1/chat/completions", chat, methods=["POST"]),
            ]
        )


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": UPSTREAM_MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def _sse(body: dict[str, Any]) -> AsyncIterator[bytes]:
    events = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": piece}) for piece in UPSTREAM_REPLY]
    events.append(_chunk({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}
        events.append({**_chunk({}), "choices": [], "usage": usage})
    for event in events:
        yield b"data: " + json.dumps(event).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 0,
        "model": UPSTREAM_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(UPSTREAM_REPLY)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23},
    }


@contextmanager
def recording_upstream() -> Iterator[RecordingUpstream]:
    """A :class:`RecordingUpstream` served on a free loopback port (``.url`` ends in ``/v1``)."""
    upstream = RecordingUpstream()
    with serve_in_thread(upstream.app()) as base:
        upstream.url = base + "/v1"
        yield upstream
