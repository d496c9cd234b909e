"""Background load for the mixed-load case: another client's long HTTP requests, kept running.

Each kind of load is one client in its own process (as a real client is: parsing its stream in the
server's process would charge the client's work to the server), making the same long request again as
soon as the last one ends, until told to stop:

- ``transcription``: a long upload to ``/v1/audio/transcriptions`` with ``stream=true`` (segments as
  server-sent events);
- ``chat``: a long streamed ``/v1/chat/completions`` (``max_tokens`` tokens at temperature 0).

The client processes report each request's start (``begin``), its response opening (``open``) and its
end (``end``: status, items streamed, error) on a queue, with ``time.monotonic()`` times (one clock for
every process on Linux), so the parent can tell how much of a window each load was in flight.
This module is imported by the client processes: it imports nothing heavy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

CHAT_MAX_TOKENS = 300
CHAT_PROMPTS = (
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain in detail how bread is made, step by step.",
    "Tell a long tale about a robot who learns to paint.",
)
# Whatever the server answers, a client that cannot get its load going waits before trying again.
RETRY_S = 0.5
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
Message = dict[str, Any]


def _sse(resp: httpx.Response, stop: threading.Event) -> Iterator[Any]:
    for line in resp.iter_lines():
        if stop.is_set():
            return
        if line.startswith("data: "):
            data = line[len("data: ") :]
            if data == "[DONE]":
                return
            yield json.loads(data)


def _transcription(http: httpx.Client, wav: bytes, stop: threading.Event, rec: Message, opened: Any) -> None:
    with http.stream(
        "POST",
        "/v1/audio/transcriptions",
        files={"file": ("long.wav", wav, "audio/wav")},
        data={"model": "whisper-1", "stream": "true"},
    ) as resp:
        rec["status"] = resp.status_code
        if resp.status_code != 200:
            rec["error"] = resp.read().decode(errors="replace")[:300]
            return
        opened()
        for event in _sse(resp, stop):
            kind = event.get("type")
            if kind == "transcript.text.delta":
                rec["items"] += 1
                rec.setdefault("first", time.monotonic())
            elif kind == "transcript.text.done":
                rec["finished"] = True
            elif kind == "error":
                rec["error"] = json.dumps(event.get("error"))[:300]


def _chat(http: httpx.Client, prompt: str, stop: threading.Event, rec: Message, opened: Any) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": CHAT_MAX_TOKENS,
        "temperature": 0,
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        rec["status"] = resp.status_code
        if resp.status_code != 200:
            rec["error"] = resp.read().decode(errors="replace")[:300]
            return
        opened()
        for chunk in _sse(resp, stop):
            if "error" in chunk:
                rec["error"] = json.dumps(chunk["error"])[:300]
                continue
            choice = (chunk.get("choices") or [{}])[0]
            if (choice.get("delta") or {}).get("content"):
                rec["items"] += 1
                rec.setdefault("first", time.monotonic())
            if choice.get("finish_reason"):
                rec["finished"] = True


def _requests(kind: str, url: str, api_key: str | None, wav: bytes, stop: Any, out: Any) -> None:
    """One client's requests of ``kind``, one after another, until ``stop``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = httpx.Timeout(600.0, connect=30.0)
    n = 0
    with httpx.Client(base_url=url, headers=headers, timeout=timeout) as http:
        while not stop.is_set():
            rec: Message = {"kind": kind, "event": "end", "n": n, "status": 0, "items": 0, "finished": False}
            out.put({"kind": kind, "event": "begin", "n": n, "t": time.monotonic()})

            def opened(n: int = n) -> None:
                out.put({"kind": kind, "event": "open", "n": n, "t": time.monotonic()})

            try:
                if kind == "transcription":
                    _transcription(http, wav, stop, rec, opened)
                else:
                    _chat(http, CHAT_PROMPTS[n % len(CHAT_PROMPTS)], stop, rec, opened)
            except httpx.HTTPError as exc:
                rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rec["stopped"] = stop.is_set() and not rec["finished"]
            rec["t"] = time.monotonic()
            out.put(rec)
            n += 1
            if rec.get("error") or rec["status"] != 200:
                stop.wait(RETRY_S)


def client_main(kind: str, url: str, api_key: str | None, wav: bytes, stop: Any, out: Any) -> None:
    """A client process: its requests run in a daemon thread, so that ``stop`` ends the process at once
    (closing its connection, which cancels the request in flight) instead of after the request."""
    worker = threading.Thread(target=_requests, args=(kind, url, api_key, wav, stop, out), daemon=True)
    worker.start()
    stop.wait()
    out.put({"kind": kind, "event": "exit", "t": time.monotonic()})


class LoadFailed(RuntimeError):
    """A background load could not get going (its first request was refused or never answered)."""


class BackgroundLoad:
    """While entered: each of ``kinds`` (``transcription`` of ``wav``, ``chat``) in a loop, each in its
    own process. Entering returns once every kind's first response has opened; ``messages`` holds what
    the clients reported, complete once exited."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        wav: bytes = b"",
        kinds: tuple[str, ...] = ("transcription", "chat"),
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        unknown = set(kinds) - {"transcription", "chat"}
        if unknown or ("transcription" in kinds and not wav):
            raise ValueError(f"unknown load kinds {sorted(unknown)} or a transcription load without audio")
        self.url, self.api_key, self.wav, self.kinds = url, api_key, wav, kinds
        self.start_timeout_s = start_timeout_s
        self.messages: list[Message] = []
        self._opened: set[str] = set()
        self._ready = asyncio.Event()
        self._failure = ""
        self._procs: list[Any] = []
        self._reader: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kinds": list(self.kinds)}
        if "transcription" in self.kinds:
            out["transcription_wav_bytes"] = len(self.wav)
        if "chat" in self.kinds:
            out["chat_max_tokens"] = CHAT_MAX_TOKENS
        return out

    async def __aenter__(self) -> BackgroundLoad:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._queue: Any = ctx.Queue()
        self._procs = [
            ctx.Process(
                target=client_main,
                args=(
                    kind,
                    self.url,
                    self.api_key,
                    self.wav if kind == "transcription" else b"",
                    self._stop,
                    self._queue,
                ),
                name=f"bench-load-{kind}",
                daemon=True,
            )
            for kind in self.kinds
        ]
        for proc in self._procs:
            await asyncio.to_thread(proc.start)
        self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self._ready.wait(), self.start_timeout_s)
        except asyncio.TimeoutError:
            self._failure = self._failure or f"not every load started within {self.start_timeout_s:.0f} s"
        if self._failure:
            await self._shutdown()
            errors = [m.get("error") for m in self.messages if m.get("error")]
            raise LoadFailed(f"background load: {self._failure}; errors: {errors[:3]}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._shutdown()

    def _handle(self, msg: Message) -> None:
        self.messages.append(msg)
        kind = msg["kind"]
        if msg["event"] == "open":
            self._opened.add(kind)
            if self._opened >= set(self.kinds):
                self._ready.set()
        elif msg["event"] == "end" and kind not in self._opened and msg["status"] not in (0, 200, 429, 503):
            # Refused outright (no such endpoint or model, bad key): retrying will not help.
            self._failure = f"{kind} refused with HTTP {msg['status']}"
            self._ready.set()

    async def _read(self) -> None:
        while True:
            try:
                msg = await asyncio.to_thread(self._queue.get, True, 0.2)
            except queue.Empty:
                if not any(p.is_alive() for p in self._procs):
                    return
                continue
            self._handle(msg)

    async def _shutdown(self) -> None:
        self._stop.set()
        for proc in self._procs:
            await asyncio.to_thread(proc.join, STOP_TIMEOUT_S)
            if proc.is_alive():  # not expected: the process only waits on ``stop``
                proc.kill()
                await asyncio.to_thread(proc.join, STOP_TIMEOUT_S)
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reader, STOP_TIMEOUT_S)


def coverage(messages: list[Message], kind: str, start: float, end: float) -> dict[str, Any]:
    """How ``kind``'s load went over the window ``start``..``end``: requests begun in it (or in flight at
    its start), finished, refused or failed, and the fraction of the window a request was in flight."""
    begins = {m["n"]: m["t"] for m in messages if m["kind"] == kind and m["event"] == "begin"}
    ends = {m["n"]: m for m in messages if m["kind"] == kind and m["event"] == "end"}
    busy = 0.0
    durations = []
    counted = []
    for n, t0 in begins.items():
        t1 = ends[n]["t"] if n in ends else end
        if t1 < start or t0 > end:
            continue
        busy += max(0.0, min(t1, end) - max(t0, start))
        counted.append(n)
        if n in ends and ends[n]["finished"]:
            durations.append(t1 - t0)
    errors = [ends[n]["error"] for n in counted if n in ends and ends[n].get("error")]
    return {
        "requests": len(counted),
        "finished": len(durations),
        "errors": len(errors),
        "first_errors": errors[:3],
        "in_flight": busy / (end - start) if end > start else None,
        "finished_s": durations,
    }
