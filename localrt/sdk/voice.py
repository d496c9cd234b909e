"""``RealtimeVoice``: the facade. Callbacks by decorator, ``connect()`` for a session, ``run()`` for a stream.

- ``async with voice.connect() as session``: a dispatcher task calls the callbacks as events arrive.
  Leaving the block normally first finishes the exchange (``session.finish()``: a reply or tool call in
  progress completes, up to ``finish_timeout``); leaving it by an exception closes at once.
- ``voice.run(audio)``: streams ``audio`` (pcm16 24 kHz chunks) to the server while yielding the events
  (callbacks fire too, just before each event is yielded); ends when the input is over and the exchange
  it started is finished.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from localrt.sdk import config as cfg
from localrt.sdk.callbacks import Handlers
from localrt.sdk.config import RealtimeConfig
from localrt.sdk.models import RealtimeError, RealtimeEvent
from localrt.sdk.session import RealtimeSession

F = TypeVar("F", bound=Callable[..., Any])
AudioSource = AsyncIterable[bytes] | Iterable[bytes]


class RealtimeVoice:
    """A voice assistant over the OpenAI Realtime protocol.

    ``provider``: ``"localrt"`` (default; ``ws://127.0.0.1:8000/v1/realtime``, key from
    ``LOCALRT_API_KEY`` if set) or ``"openai"`` (``wss://api.openai.com/v1/realtime``, key from
    ``OPENAI_API_KEY``). ``url`` points at another server (``http://host:8000`` works too); for localrt
    it defaults to ``LOCALRT_URL`` when that is set.
    """

    def __init__(
        self,
        config: RealtimeConfig | None = None,
        *,
        provider: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
        connect_timeout: float = 10.0,
        finish_timeout: float = 60.0,
    ) -> None:
        self.config = config or RealtimeConfig()
        if provider is not None and provider not in cfg.PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; available: {', '.join(cfg.PROVIDERS)}")
        self.provider = provider or cfg.DEFAULT_PROVIDER
        self.url = url
        self.api_key = api_key
        self.connect_timeout = connect_timeout
        self.finish_timeout = finish_timeout
        self.handlers = Handlers()

    # --- providers ---------------------------------------------------------------------------------------
    @staticmethod
    def available_providers() -> list[str]:
        return cfg.available_providers()

    @staticmethod
    def configured_providers() -> list[str]:
        return cfg.configured_providers()

    def endpoint(self) -> cfg.Endpoint:
        """The URL and headers ``connect()`` will use."""
        return cfg.endpoint(self.provider, url=self.url, api_key=self.api_key, model=self.config.model)

    # --- callbacks ---------------------------------------------------------------------------------------
    def on_audio(self, fn: F) -> F:
        """``fn(audio: bytes)``: reply audio, pcm16 24 kHz mono. In ``PlaybackMode.AUTO`` a chunk counts
        as heard when ``fn`` returns."""
        self.handlers.audio.append(fn)
        return fn

    def on_transcript(self, fn: F) -> F:
        """``fn(text, is_final)``: the assistant's transcript (a piece, then the whole text). Add a third
        parameter ``speaker`` to get the user's transcripts too."""
        self.handlers.add_transcript(fn)
        return fn

    def on_tool_call(self, fn: F) -> F:
        """``fn(request: ToolCallRequest)``: return the result to send back; ``None`` runs the configured
        Python function of that name."""
        self.handlers.tool_call.append(fn)
        return fn

    def on_error(self, fn: F) -> F:
        """``fn(error: RealtimeError)``: server errors, failed replies, failing callbacks, a lost
        connection."""
        self.handlers.error.append(fn)
        return fn

    def on_interrupted(self, fn: F) -> F:
        """``fn()`` or ``fn(event: Interrupted)``: the user spoke over a reply; stop playback. The reply
        was already truncated to what was played (``event.played_ms``)."""
        self.handlers.add_interrupted(fn)
        return fn

    # --- sessions ----------------------------------------------------------------------------------------
    async def open(self) -> RealtimeSession:
        """A connected session without a dispatcher: drain ``session.events()`` yourself."""
        return await RealtimeSession.open(self.endpoint(), self.config, self.handlers, self.connect_timeout)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[RealtimeSession]:
        """A session whose events go to the callbacks. Raises ``RealtimeConnectionError`` when the
        server cannot be reached or refuses the key or model."""
        session = await self.open()
        dispatcher = asyncio.create_task(_drain(session), name="realtime-sdk-dispatch")
        try:
            yield session
            await session.finish(self.finish_timeout)
        finally:
            await session.close()
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher

    async def run(
        self, audio: AudioSource | None = None, *, text: str | None = None
    ) -> AsyncIterator[RealtimeEvent]:
        """Stream ``audio`` (and/or send ``text``) and yield the events until the exchange is over."""
        session = await self.open()
        feed = _feed(session, audio, text, self.finish_timeout)
        sender = asyncio.create_task(feed, name="realtime-sdk-feed")
        events = session.events()
        try:
            async for event in events:
                yield event
            await sender  # the session ended: surface the sender's failure, if any
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            await events.aclose()
            await session.close()


async def _drain(session: RealtimeSession) -> None:
    async for _ in session.events():
        pass


async def _feed(
    session: RealtimeSession, audio: AudioSource | None, text: str | None, timeout: float
) -> None:
    """Send the input, finish the exchange, then close the queue so ``run()`` ends."""
    try:
        if text is not None:
            await session.send_text(text)
        if isinstance(audio, AsyncIterable):
            async for chunk in audio:
                await session.send_audio(chunk)
        elif audio is not None:
            for chunk in audio:
                await session.send_audio(chunk)
        await session.finish(timeout)
    except TimeoutError:
        session.queue.put(RealtimeError(f"the exchange did not finish within {timeout} s", code="timeout"))
    finally:
        session.queue.close()
