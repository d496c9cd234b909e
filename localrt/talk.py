"""``localrt talk``: a voice conversation in the terminal, built on the voice SDK (``localrt.sdk``).

Live (no files): the default microphone streams to the server, whose VAD finds the turns; replies play on
the default speaker as they arrive; both sides' transcripts print as they stream. Speaking over a reply
stops playback at once, and the SDK truncates the reply to what the speaker really played (the speaker
reports what its callback consumed: ``PlaybackMode.MANUAL``). Ctrl-C ends the conversation.

Files: ``--input q.wav`` streams a file as the microphone (any format FFmpeg reads, resampled to 24 kHz
pcm16, at real-time pace, then silence so the VAD ends the turn) and the command ends once the reply is
done; ``--output a.wav`` writes the reply audio instead of playing it. With both, no audio device is used
and ``sounddevice`` is never imported.

Exit codes: 0 done; 1 the server could not be reached or failed the turn; 2 no audio (PortAudio or a
device missing, an unreadable input file).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import IO, Any, cast

import numpy as np

from localrt.sdk import (
    AudioChunk,
    Interrupted,
    PlaybackMode,
    RealtimeConfig,
    RealtimeConnectionError,
    RealtimeError,
    RealtimeEvent,
    RealtimeSession,
    RealtimeVoice,
    ResponseDone,
    TranscriptDelta,
)
from localrt.sdk.config import realtime_url
from localrt.talk_audio import (
    AudioUnavailable,
    Microphone,
    Speaker,
    device_error,
    file_as_microphone,
    load_input,
    load_sounddevice,
    write_wav,
)

REPORT_S = 0.02  # how often the speaker's progress is reported to the SDK (the truncation's precision)
TAIL_SILENCE_S = 1.5  # silence after an --input file, as a microphone would go on sending


@dataclass
class TalkOptions:
    url: str = "ws://127.0.0.1:8000"
    key: str | None = None
    model: str | None = None
    voice: str | None = None
    instructions: str | None = None
    input: str | None = None
    output: str | None = None
    timeout: float = 120.0


class TalkFailed(Exception):
    """The turn failed (the message is one line); exit code 1."""


class Transcript:
    """Prints both sides as they stream: ``you: ...`` lines (whole, when transcribed) and ``assistant: ...``
    lines that grow delta by delta. A user line arriving mid-reply is printed on its own line and the
    reply's line is started again, so every line stays whole."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.open: str | None = None  # the assistant's text on the line being written

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def user(self, text: str) -> None:
        if not text.strip():
            return
        if self.open is not None:
            self._write("\n")
        self._write(f"you: {text.strip()}\n")
        if self.open is not None:
            self._write("assistant: " + self.open)

    def assistant(self, piece: str) -> None:
        if self.open is None:
            self.open = ""
            self._write("assistant: ")
        self.open += piece
        self._write(piece)

    def assistant_final(self, text: str) -> None:
        """The reply's whole text: ends its line (or prints it, when no piece came before)."""
        if self.open is None and text:
            self._write(f"assistant: {text}")
            self.open = text
        if self.open is not None:
            self._write("\n")
            self.open = None

    def interrupted(self, played_ms: int, received_ms: int) -> None:
        note = f"[interrupted: {played_ms / 1000:.1f} s of {received_ms / 1000:.1f} s heard]"
        if self.open is not None:
            self._write(f" {note}\n")
            self.open = None
        else:
            self._write(f"{note}\n")


class Talk:
    """One ``localrt talk`` run: the devices or files, the session's events, the exit code."""

    def __init__(self, options: TalkOptions, out: IO[str], err: IO[str]) -> None:
        self.options = options
        self.err = err
        self.transcript = Transcript(out)
        self.speaker: Speaker | None = None
        self.mic: Microphone | None = None
        self.reply_audio = bytearray()
        self.replies: list[ResponseDone] = []
        self.failure: str | None = None
        self.interruptions: list[Interrupted] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: RealtimeSession | None = None
        self._stopping = False

    def stop(self) -> None:
        """Ends a live talk as Ctrl-C would, cleanly; callable from any thread."""
        self._stopping = True
        if self._loop is not None and self._session is not None:
            asyncio.run_coroutine_threadsafe(self._session.close(), self._loop)

    def config(self) -> RealtimeConfig:
        o = self.options
        live = self.speaker is not None and self.mic is not None  # barge-in needs what was heard
        playback = PlaybackMode.MANUAL if live else PlaybackMode.AUTO
        return RealtimeConfig(model=o.model, voice=o.voice, instructions=o.instructions, playback=playback)

    def voice(self) -> RealtimeVoice:
        return RealtimeVoice(self.config(), url=self.options.url, api_key=self.options.key)

    def error(self, message: str) -> None:
        self.transcript.assistant_final("")
        self.err.write(f"localrt talk: {message}\n")
        self.err.flush()

    # -- events -------------------------------------------------------------------------------------------
    def handle(self, event: RealtimeEvent) -> None:
        if isinstance(event, AudioChunk):
            if event.data:
                if self.speaker is not None:
                    self.speaker.play(event.data)
                if self.options.output is not None:
                    self.reply_audio.extend(event.data)
        elif isinstance(event, TranscriptDelta):
            if event.speaker == "user":
                if event.is_final:
                    self.transcript.user(event.text)
            elif event.is_final:
                self.transcript.assistant_final(event.text)
            elif event.text:
                self.transcript.assistant(event.text)
        elif isinstance(event, Interrupted):
            self.interruptions.append(event)
            if self.speaker is not None:
                self.speaker.clear()
            self.transcript.interrupted(event.played_ms, event.received_ms)
        elif isinstance(event, ResponseDone):
            self.replies.append(event)
            self.transcript.assistant_final("")  # the final TranscriptDelta (if any) came before
        elif isinstance(event, RealtimeConnectionError):
            raise event
        elif isinstance(event, RealtimeError):
            self.failure = event.message
            self.error(f"server error: {event.message}")

    # -- runs ---------------------------------------------------------------------------------------------
    async def from_file(self, samples: np.ndarray) -> int:
        """Stream the file (then silence) and end when the reply it asked for is done."""
        stop = asyncio.Event()
        source = file_as_microphone(samples, stop, tail_s=TAIL_SILENCE_S)
        try:
            async with asyncio.timeout(self.options.timeout):
                events = cast(AsyncGenerator[RealtimeEvent, None], self.voice().run(source))
                async with contextlib.aclosing(events):
                    async for event in events:
                        self.handle(event)
                        if isinstance(event, ResponseDone) and event.status == "completed":
                            stop.set()
                if self.speaker is not None:  # let the reply finish playing
                    await asyncio.sleep(self.speaker.queued_seconds() + self.speaker.latency_s)
        except TimeoutError as exc:
            raise TalkFailed(f"no reply within {self.options.timeout:g} s") from exc
        if self.options.output is not None:
            write_wav(self.options.output, bytes(self.reply_audio))
        if not any(r.status == "completed" for r in self.replies):
            reason = self.failure or (self.replies[-1].status if self.replies else "no reply came")
            raise TalkFailed(f"the turn failed: {reason}")
        return 0

    async def live(self) -> int:
        """Microphone to server, server to speaker (or --output), until Ctrl-C or the connection ends."""
        assert self.mic is not None
        session = await self.voice().open()
        self._loop, self._session = asyncio.get_running_loop(), session
        if self._stopping:
            await session.close()
        self.err.write(
            f"localrt talk: connected to {self.options.url}; speak (Ctrl-C quits; use headphones, or the "
            "assistant hears itself)\n"
        )
        self.err.flush()
        tasks = [asyncio.create_task(_feed(session, self.mic.chunks()), name="talk-microphone")]
        if self.speaker is not None:
            tasks.append(asyncio.create_task(_report(session, self.speaker), name="talk-playback"))
        try:
            async for event in session.events():
                self.handle(event)
            for task in tasks:
                if task.done():
                    task.result()  # a failed microphone closed the session: its error is the reason
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await session.close()
            if self.options.output is not None:
                write_wav(self.options.output, bytes(self.reply_audio))
        return 0

    async def run(self) -> int:
        o = self.options
        samples = load_input(o.input) if o.input is not None else None
        sd: Any = None
        device_errors: tuple[type[BaseException], ...] = ()
        if o.input is None or o.output is None:  # a file for each side: sounddevice is never loaded
            sd = load_sounddevice()
            device_errors = (sd.PortAudioError,)
        try:
            if sd is not None:
                try:  # no device, or one that refuses its own default rate
                    self.speaker = Speaker(sd) if o.output is None else None
                    self.mic = Microphone(sd) if o.input is None else None
                except (sd.PortAudioError, ValueError) as exc:
                    raise device_error(exc) from exc
            try:
                return await (self.from_file(samples) if samples is not None else self.live())
            except device_errors as exc:  # a device failing mid-way (unplugged)
                raise device_error(exc) from exc
        finally:
            if self.mic is not None:
                self.mic.close()
            if self.speaker is not None:
                self.speaker.close()


async def _feed(session: RealtimeSession, chunks: AsyncIterator[bytes]) -> None:
    """Microphone -> session; on a microphone failure the session is closed, so the event loop ends."""
    try:
        async for chunk in chunks:
            await session.send_audio(chunk)
    except (RealtimeError, asyncio.CancelledError):
        raise
    except Exception:
        await session.close()
        raise


async def _report(session: RealtimeSession, speaker: Speaker) -> None:
    """Tells the SDK how much reply audio the speaker has played, every ``REPORT_S``."""
    while True:
        await asyncio.sleep(REPORT_S)
        played = speaker.take_played()
        if played:
            session.played(samples=played)


def main(options: TalkOptions, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Runs ``localrt talk``; returns the exit code. Errors are one line on ``err``, never a traceback."""
    out = out or sys.stdout
    err = err or sys.stderr
    talk = Talk(options, out, err)
    try:
        realtime_url(options.url)
    except ValueError as exc:
        talk.error(str(exc))
        return 2
    try:
        return asyncio.run(talk.run())
    except AudioUnavailable as exc:
        talk.error(str(exc))
        return 2
    except RealtimeConnectionError as exc:
        talk.error(exc.message)
        return 1
    except (RealtimeError, TalkFailed) as exc:
        talk.error(str(exc))
        return 1
    except KeyboardInterrupt:
        talk.transcript.assistant_final("")
        return 0
