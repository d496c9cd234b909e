"""``localrt chat``: typed chat in the terminal over ``/v1/chat/completions``, streamed.

The conversation (an optional system message, then each user line and reply) is kept and sent with every
turn. ``/exit`` (or ``/quit``) and Ctrl-D end the chat, ``/reset`` forgets the history, Ctrl-C stops the
reply being streamed. Any OpenAI-compatible server works: the default URL is a local ``localrt serve``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import IO

import openai
from openai import omit
from openai.types.chat import ChatCompletionMessageParam

DEFAULT_URL = "http://127.0.0.1:8000"
FALLBACK_MODEL = "gpt-4o-mini"  # localrt serves its default chat model under this alias too
HELP = "/exit or Ctrl-D quits, /reset forgets the conversation, Ctrl-C stops a reply"


@dataclass
class ChatOptions:
    url: str = DEFAULT_URL
    key: str | None = None
    model: str | None = None
    system: str | None = None
    max_tokens: int | None = None


def api_base(url: str) -> str:
    """``http://host:port`` (or one already ending in ``/v1``) -> the OpenAI client's base URL."""
    url = url.rstrip("/")
    if url.startswith("ws://"):
        url = "http://" + url[5:]
    elif url.startswith("wss://"):
        url = "https://" + url[6:]
    return url if url.endswith("/v1") else url + "/v1"


def error_line(exc: BaseException) -> str:
    """One line for an OpenAI client error: no traceback, the server's own message when it sent one."""
    if isinstance(exc, openai.APITimeoutError):
        return "the server did not answer in time"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        return f"cannot connect ({cause})" if str(cause) else "cannot connect"
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else None
        return f"HTTP {exc.status_code}: {message or exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _chat_model(client: openai.OpenAI) -> str:
    """The server's own chat model (a localrt card with kind "chat" that is not an alias), else an alias."""
    for card in client.models.list():
        extra = card.model_extra or {}
        if extra.get("kind") == "chat" and "alias_of" not in extra:
            return card.id
    return FALLBACK_MODEL


class ChatSession:
    def __init__(self, options: ChatOptions, out: IO[str], err: IO[str]) -> None:
        self.options = options
        self.out = out
        self.err = err
        key = options.key or os.environ.get("LOCALRT_API_KEY") or "none"
        self.client = openai.OpenAI(base_url=api_base(options.url), api_key=key, max_retries=0, timeout=300)
        self.model = options.model or ""
        self.history: list[ChatCompletionMessageParam] = []
        self.reset()

    def reset(self) -> None:
        self.history = []
        if self.options.system:
            self.history.append({"role": "system", "content": self.options.system})

    def connect(self) -> None:
        """Checks the server answers (and picks its chat model when none was given)."""
        if self.options.model:
            self.client.models.list()
        else:
            self.model = _chat_model(self.client)

    def turn(self, text: str) -> bool:
        """Sends one user message and streams the reply; False when it failed (history unchanged)."""
        self.history.append({"role": "user", "content": text})
        reply: list[str] = []
        self.out.write("assistant> ")
        self.out.flush()
        try:
            stream = self.client.chat.completions.create(
                model=self.model,
                messages=self.history,
                stream=True,
                max_tokens=self.options.max_tokens or omit,
            )
            with stream:
                for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta.content:
                            reply.append(choice.delta.content)
                            self.out.write(choice.delta.content)
                            self.out.flush()
        except KeyboardInterrupt:
            self.out.write(" [stopped]")
        except openai.OpenAIError as exc:
            self.out.write("\n")
            self.out.flush()
            self.err.write(f"localrt chat: {error_line(exc)}\n")
            self.err.flush()
            self.history.pop()
            return False
        self.out.write("\n")
        self.out.flush()
        self.history.append({"role": "assistant", "content": "".join(reply)})
        return True

    def close(self) -> None:
        self.client.close()


def _read_line(stdin: IO[str], out: IO[str]) -> str | None:
    """The next line typed (None at end of input); ``input`` on a terminal, for line editing."""
    if stdin is sys.stdin and stdin.isatty():
        try:
            return input("you> ")
        except EOFError:
            return None
    out.write("you> ")
    out.flush()
    line = stdin.readline()
    out.write(line if line.endswith("\n") else line + "\n")  # piped input shows in the transcript
    out.flush()
    return line or None


def run(
    options: ChatOptions, stdin: IO[str] | None = None, out: IO[str] | None = None, err: IO[str] | None = None
) -> int:
    """The chat loop; returns the exit code (0, or 1 when the server cannot be reached at the start)."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    err = err or sys.stderr
    session = ChatSession(options, out, err)
    try:
        try:
            session.connect()
        except openai.OpenAIError as exc:
            err.write(f"localrt chat: {options.url}: {error_line(exc)}\n")
            return 1
        err.write(f"localrt chat: {session.model} at {options.url} ({HELP})\n")
        err.flush()
        while True:
            try:
                line = _read_line(stdin, out)
            except KeyboardInterrupt:
                out.write("\n")
                break
            if line is None:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                session.reset()
                err.write("localrt chat: conversation forgotten\n")
                continue
            session.turn(text)
        return 0
    finally:
        session.close()
