"""SIGTERM while work is in flight (issue 11, item 15): everything ends properly, in bounded time.

One real ``localrt serve`` process gets SIGTERM while a realtime response is generating, a chat SSE
stream is streaming and a transcription is running. Each must end the documented way: the realtime
response with ``response.done`` (cancelled), then close 1001; the SSE stream with a final error frame;
the transcription with 503. The process exits within ``shutdown_timeout_s`` plus a little, with no
traceback in its log.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
import wave
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from localrt.lifecycle import DrainMiddleware, Lifecycle
from tests.proc_server import ServerProcess

LONG_STORY = "Write a very long story about a lighthouse keeper, with many chapters."
COUNTING = "Count from 1 to 1000, one number per line."  # thousands of tokens: still going at SIGTERM


def _noise_wav(seconds: float, rate: int = 16000) -> bytes:
    samples = (np.random.default_rng(0).normal(0, 0.3, int(seconds * rate)) * 32767).clip(-32768, 32767)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


async def _realtime(url: str, ready: asyncio.Event, out: dict[str, Any]) -> None:
    async with websockets.connect(url.replace("http://", "ws://") + "/v1/realtime") as ws:
        events: list[dict[str, Any]] = []
        out["realtime"] = events
        await ws.send(
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": LONG_STORY}],
                    },
                }
            )
        )
        await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 4000}}))
        try:
            async for message in ws:
                event = json.loads(message)
                events.append(event)
                if event["type"] == "response.created":
                    ready.set()  # generating, or queued behind the chat stream for the one LLM slot
        except websockets.ConnectionClosed:
            pass
        out["realtime_close"] = ws.close_code


async def _chat_stream(url: str, ready: asyncio.Event, out: dict[str, Any]) -> None:
    body = {
        "model": "gpt-4o",
        "stream": True,
        "max_tokens": 1800,
        "temperature": 0,
        "messages": [{"role": "user", "content": COUNTING}],
    }
    lines: list[str] = []
    out["chat"] = lines
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", url + "/v1/chat/completions", json=body) as resp,
    ):
        out["chat_status"] = resp.status_code
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                lines.append(line[6:])
                if len(lines) >= 3:
                    ready.set()


async def _transcription(url: str, sent: asyncio.Event, out: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        sent.set()
        resp = await client.post(
            url + "/v1/audio/transcriptions",
            files={"file": ("noise.wav", _noise_wav(120.0), "audio/wav")},
            data={"model": "whisper-1"},
        )
        out["transcription"] = resp


@pytest.mark.slow
def test_sigterm_ends_in_flight_work_properly_and_exits_in_bounded_time() -> None:
    with ServerProcess(load_stt=True, shutdown_timeout_s=5) as server:
        proc = server.proc
        assert proc is not None
        out: dict[str, Any] = {}

        async def scenario() -> float:
            rt_ready, chat_ready, stt_sent = asyncio.Event(), asyncio.Event(), asyncio.Event()
            # The chat stream first, so it is the one generating when the signal comes.
            clients = [asyncio.create_task(_chat_stream(server.url, chat_ready, out))]
            await asyncio.wait_for(chat_ready.wait(), 60)
            clients.append(asyncio.create_task(_realtime(server.url, rt_ready, out)))
            clients.append(asyncio.create_task(_transcription(server.url, stt_sent, out)))
            await asyncio.wait_for(asyncio.gather(rt_ready.wait(), stt_sent.wait()), 60)
            await asyncio.sleep(1.0)  # the transcription's upload is in and Whisper is at work
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*clients), 30)
            return signalled

        signalled = asyncio.run(scenario())
        proc.wait(timeout=30)
        exit_s = time.monotonic() - signalled
        log = server.log_tail(200_000)

    # The realtime response ended with response.done (cancelled), then the socket closed 1001.
    kinds = [e["type"] for e in out["realtime"]]
    done = [e for e in out["realtime"] if e["type"] == "response.done"]
    assert done and done[-1]["response"]["status"] == "cancelled", kinds[-5:]
    assert out["realtime_close"] == 1001
    # The chat stream ended with a final error frame, not a cut-off body.
    assert out["chat_status"] == 200
    final = json.loads(out["chat"][-1])
    assert final["error"]["code"] == "server_shutting_down", out["chat"][-3:]
    # The transcription in flight was answered 503, in OpenAI's shape, with Retry-After.
    resp = out["transcription"]
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "server_shutting_down"
    assert "retry-after" in resp.headers
    # Bounded exit (shutdown_timeout_s is 5), and nothing logged as a crash.
    assert exit_s < 12, exit_s
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in log, log[-3000:]
    assert " ERROR " not in log, log[-3000:]


# --- the drain itself, without models ------------------------------------------------------------------
@pytest.mark.anyio
async def test_draining_refuses_new_requests_and_waits_for_the_ones_in_flight() -> None:
    lifecycle = Lifecycle()
    release, entered = asyncio.Event(), asyncio.Event()
    drained: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        lifecycle.on_drain(lambda: drained.append(scope["path"]))
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    transport = httpx.ASGITransport(app=DrainMiddleware(app, lifecycle))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        in_flight = asyncio.create_task(client.get("/slow"))
        await entered.wait()
        lifecycle.begin_drain()
        assert drained == ["/slow"]
        refused = await client.get("/new")
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "server_shutting_down"
        assert not await lifecycle.wait_idle(0.05)
        release.set()
        assert (await in_flight).status_code == 200
        assert await lifecycle.wait_idle(1.0)
