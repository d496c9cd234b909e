"""The fuzzers' realtime client: one long-lived socket that sends frames and checks every answer.

Each frame is followed by a sentinel (``conversation.item.retrieve`` of a missing item, with a numbered
``event_id``): the reader handles events in order, so everything the frame caused comes before the
sentinel's ``error``. After an example, the responses it started are awaited, so that their events (and
any failure in them) are checked with that example. Every event is checked: errors are OpenAI-shaped and
never ``server_error`` (an unexpected exception), nor is a failed response or transcription. A socket the
server closes raises :class:`SocketClosed` naming the frame after which it closed, with the tail of the
server's log; the next example reconnects.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

from rt_fakes import tone
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from tests.fuzz_values import dumps

ANSWER_TIMEOUT_S = 20.0
TURN_TOKENS = 16  # the normal turn's reply: the fake LLM's whole sentence, a short one from the real model
KINDS = {
    "ga": ("", {}),
    "beta": ("", {"OpenAI-Beta": "realtime=v1"}),
    "ga-transcription": ("?intent=transcription", {}),
    "beta-transcription": ("?intent=transcription", {"OpenAI-Beta": "realtime=v1"}),
}


class SocketClosed(AssertionError):
    """The server closed a socket: raised from one place, so hypothesis sees one failure, not several."""


class Fuzzer:
    """One long-lived socket: sends frames, each followed by a sentinel, and checks what comes back."""

    def __init__(self, url: str, kind: str, server_log: Callable[[], str]) -> None:
        query, self.headers = KINDS[kind]
        self.server_log = server_log
        self.url = url + query
        self.kind = kind
        self.dialect = "beta" if kind.startswith("beta") else "ga"
        self.transcription = kind.endswith("transcription")
        self.items: set[str] = set()
        self.responses: set[str] = set()  # created and not done yet
        self.frames = 0
        self.ws = self._connect()

    def _connect(self) -> ClientConnection:
        # No keepalive pings: their payloads come from the global ``random``, and hypothesis fails a test
        # whose global ``random`` moves while it draws an example.
        ws = connect(self.url, additional_headers=self.headers, max_size=None, ping_interval=None)
        self.ws = ws
        self.items = set()
        self.responses = set()
        created = self.recv()
        assert created["type"] in ("session.created", "transcription_session.created"), created
        return ws

    def ensure_open(self) -> None:
        """A fresh socket after one that was closed (by the server, or after a failed example)."""
        if self.ws.state is not State.OPEN:
            self.ws.close()
            self._connect()

    def close(self) -> None:
        self.ws.close()

    def recv(self, timeout: float = ANSWER_TIMEOUT_S, after: str | bytes = "") -> dict[str, Any]:
        try:
            text = self.ws.recv(timeout=timeout)
        except ConnectionClosed as exc:
            self.ws.close()
            tail = self.server_log()[-3000:]
            raise SocketClosed(f"{self.kind} socket closed ({exc}) after {_short(after)}\n{tail}") from None
        event: dict[str, Any] = json.loads(text)
        self._check(event)
        return event

    def _check(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in ("conversation.item.added", "conversation.item.created", "conversation.item.done"):
            self.items.add(event["item"]["id"])
        elif kind == "conversation.item.deleted":
            self.items.discard(event["item_id"])
        elif kind == "response.created":
            self.responses.add(event["response"]["id"])
        elif kind == "response.done":
            self.responses.discard(event["response"]["id"])
        errors = []
        if kind == "error":
            errors.append(event["error"])
            assert set(event["error"]) >= {"message", "type", "param", "code", "event_id"}, event
        elif kind == "response.done" and event["response"]["status"] == "failed":
            errors.append((event["response"].get("status_details") or {}).get("error") or {})
        elif kind == "conversation.item.input_audio_transcription.failed":
            errors.append(event["error"])
        for err in errors:
            assert err.get("type") != "server_error", f"an unexpected server error: {event}"

    def send(self, frames: list[tuple[str | bytes, bool]]) -> None:
        """Send every frame (each with its sentinel) then read the answers to each, in order.

        After a failure the socket is dropped (the next example starts on a fresh session), so that what
        was left unread cannot fail, or pass, the next example in its place."""
        self.ensure_open()
        try:
            self._send(frames)
        except BaseException:
            self.ws.close()
            raise

    def _send(self, frames: list[tuple[str | bytes, bool]]) -> None:
        sentinels: list[str] = []
        for frame, _ in frames:
            self.frames += 1
            sentinels.append(f"fuzz-sync-{self.frames}")
            try:
                self.ws.send(frame)
                self.ws.send(_sentinel(sentinels[-1]))
            except ConnectionClosed:
                break  # reading the answers below tells which frame closed it
        for (frame, must_fail), sentinel in zip(frames, sentinels, strict=False):
            answers = self.until_sentinel(sentinel, frame)
            if must_fail:
                assert any(e["type"] == "error" for e in answers), f"no error event for {_short(frame)}"
        self.settle(frames[-1][0])

    def settle(self, after: str | bytes) -> None:
        """Wait for the responses this example started to end, so that their events (and any failure in
        them) belong to this example, not the next. One more round trip first: a response task may
        start only after the reader has already answered the sentinel behind its ``response.create``."""
        self.sync()
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while self.responses:
            assert time.monotonic() < deadline, (
                f"responses {self.responses} never ended after {_short(after)}"
            )
            try:
                self.recv(timeout=max(0.1, deadline - time.monotonic()), after=after)
            except TimeoutError:
                continue

    def until_sentinel(self, sentinel: str, frame: str | bytes = "") -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while True:
            try:
                event = self.recv(after=frame)
            except TimeoutError:
                raise AssertionError(f"no answer within {ANSWER_TIMEOUT_S} s after {_short(frame)}") from None
            if event["type"] == "error" and event["error"].get("event_id") == sentinel:
                return got
            got.append(event)

    def sync(self) -> list[dict[str, Any]]:
        """One round trip: everything the server emitted before it."""
        self.frames += 1
        sentinel = f"fuzz-sync-{self.frames}"
        self.ws.send(_sentinel(sentinel))
        return self.until_sentinel(sentinel)

    def quiet(self, seconds: float = 0.5, limit: int = 40) -> None:
        """Read until nothing arrives for ``seconds`` (responses still running end by then)."""
        for _ in range(limit):
            try:
                self.recv(timeout=seconds)
            except TimeoutError:
                return
        raise AssertionError(f"the {self.kind} session never went quiet")

    def reset(self) -> None:
        """Cancel what runs, clear the buffer, put the session back to a plain configuration."""
        self.ws.send(json.dumps({"type": "response.cancel"}))
        self.ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        update = "transcription_session.update" if self.kind == "beta-transcription" else "session.update"
        self.ws.send(json.dumps({"type": update, "session": self._plain_session()}))
        events = self.sync()
        assert any(e["type"].endswith("session.updated") for e in events), events
        self.quiet()

    def _plain_session(self) -> dict[str, Any]:
        """Manual turns, text replies of at most TURN_TOKENS, no tools (Whisper on for transcription)."""
        transcription = {"model": "whisper-1"} if self.transcription else None
        if self.dialect == "beta":
            session: dict[str, Any] = {
                "input_audio_format": "pcm16",
                "input_audio_transcription": transcription,
                "turn_detection": None,
            }
            if not self.transcription:
                session |= {"modalities": ["text"], "tools": [], "tool_choice": "auto", "instructions": "Hi."}
                session |= {"max_response_output_tokens": TURN_TOKENS}
            return session
        audio_in = {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": transcription,
            "turn_detection": None,
        }
        if self.transcription:
            return {"type": "transcription", "audio": {"input": audio_in}}
        return {
            "type": "realtime",
            "output_modalities": ["text"],
            "tools": [],
            "tool_choice": "auto",
            "instructions": "Hi.",
            "max_output_tokens": TURN_TOKENS,
            "audio": {"input": audio_in},
        }

    def flood(self, count: int = 24) -> None:
        """Large items and appends, far past the caps: the server must refuse what does not fit."""
        text = "x" * (900 * 1024)
        audio = _b64(b"\x01\x20" * (350 * 1024))
        for _ in range(count):
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
            self.ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            self.ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            self.sync()
        self.ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        self.sync()

    def normal_turn(self) -> None:
        """Delete every item, then a plain turn: a text reply (transcript, for transcription sessions)."""
        for item_id in sorted(self.items):
            self.ws.send(json.dumps({"type": "conversation.item.delete", "item_id": item_id}))
        self.sync()
        if self.transcription:
            audio = tone(1.0).astype("<i2").tobytes()
            for start in range(0, len(audio), 9600):
                self.ws.send(
                    dumps({"type": "input_audio_buffer.append", "audio": _b64(audio[start : start + 9600])})
                )
            self.ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            done = self._until("conversation.item.input_audio_transcription.completed")
            assert done["transcript"], done
            return
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello?"}]}
        self.ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        self.ws.send(json.dumps({"type": "response.create"}))
        done = self._until("response.done")
        status = done["response"]["status"]
        reason = (done["response"].get("status_details") or {}).get("reason")
        assert status == "completed" or (status, reason) == ("incomplete", "max_output_tokens"), done

    def _until(self, kind: str) -> dict[str, Any]:
        while True:
            event = self.recv()
            assert event["type"] != "error", event
            if event["type"] == kind:
                return event


def _sentinel(event_id: str) -> str:
    """An event that always fails (no such item): its ``error`` echoes ``event_id``."""
    return json.dumps({"type": "conversation.item.retrieve", "item_id": "fuzz-missing", "event_id": event_id})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _short(frame: str | bytes) -> str:
    text = repr(frame)
    return text if len(text) <= 300 else f"{text[:300]}... ({len(frame)} chars)"
