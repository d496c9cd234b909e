"""Upstreams for the remote chat engine's tests.

:class:`LlamaCppServer` runs llama-cpp-python's own OpenAI-compatible server (``python -m
llama_cpp.server``, a third-party implementation) on the embedded GGUF in a child process, with its log
in a file the tests read. :func:`scripted_upstream` is a tiny OpenAI-shaped server for what a real one
cannot be made to do on demand (429 with Retry-After, a 5xx, a context-length refusal before the
stream); it records each request's headers and body.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from localrt import catalog
from localrt.serving import free_port

UPSTREAM_MODEL = "smollm2-upstream"


class LlamaCppServer:
    """``python -m llama_cpp.server`` on the embedded SmolLM2, one thread, a small context."""

    def __init__(self, n_ctx: int = 1024) -> None:
        model = catalog.scan(None).llms[catalog.EMBEDDED_LLM_ID]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="llama-cpp-server-", suffix=".log")[1])
        args = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model), "--model_alias", UPSTREAM_MODEL,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(n_ctx), "--n_threads", "1", "--n_threads_batch", "1",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + 120
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"llama_cpp.server did not start:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            return httpx.get(self.url + "/v1/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_path.unlink(missing_ok=True)


# --- a scripted upstream ------------------------------------------------------------------------------------
SCRIPTED_MODELS = ["echo", "busy", "small", "trim", "broken", "gone"]


def _error(status: int, message: str, code: str | None, **headers: str) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def scripted_upstream(requests: list[dict[str, Any]]) -> Starlette:
    """Answers by the requested model: ``busy`` 429 (Retry-After 7), ``small`` a context-length 400
    (``trim`` too, for more than 3 messages),
    ``broken`` 500, ``gone`` 404 model_not_found, ``echo`` a streamed tool call in pieces then usage
    with cached tokens. Each request is appended to ``requests`` (headers, body)."""

    async def models(request: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "test"} for m in SCRIPTED_MODELS
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat(request: Request) -> Response:
        body = await request.json()
        requests.append({"headers": dict(request.headers), "body": body})
        model = body.get("model")
        if model == "busy":
            return _error(
                429, "Too many requests in flight; slow down.", "rate_limit_exceeded", **{"Retry-After": "7"}
            )
        if model == "small" or (model == "trim" and len(body["messages"]) > 3):
            msg = "This model's maximum context length is 512 tokens. However, you requested 900 tokens."
            return _error(400, msg, "context_length_exceeded")
        if model == "broken":
            return _error(500, "CUDA error: out of memory", None)
        if model == "gone":
            return _error(404, "The model `gone` does not exist.", "model_not_found")

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> str:
            choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
            out = {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": choices,
            }
            if usage:
                out["usage"] = usage
            return "data: " + json.dumps(out) + "\n\n"

        def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
            return {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
            }

        def events() -> list[str]:
            if not body.get("tools"):
                return [
                    chunk({"role": "assistant", "content": "Hello"}),
                    chunk({"content": " there."}, "stop"),
                    chunk({}, usage=usage(20, 3, 16)),
                    "data: [DONE]\n\n",
                ]
            call = {
                "index": 0,
                "id": "call_abc",
                "type": "function",
                "function": {"name": "lookup", "arguments": ""},
            }
            return [
                chunk({"role": "assistant", "tool_calls": [call]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, "tool_calls"),
                chunk({}, usage=usage(40, 9, 32)),
                "data: [DONE]\n\n",
            ]

        return StreamingResponse(iter(events()), media_type="text/event-stream")

    return Starlette(
        routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])]
    )
