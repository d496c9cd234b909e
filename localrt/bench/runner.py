"""Orchestrates a bench run: inputs, voice turns in each turn detection mode with their floor, the
incomplete utterances, HTTP against the engines, concurrency, the mixed load, the soak, report.
``--soak`` runs the soak alone.

By default the server runs in this process (uvicorn in a thread, over the same engines the floor and
the engine sides use); ``--url`` measures a running server instead, with the floor and the engine
sides computed on engines loaded here. Both go through the engine interfaces only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from localrt.app import create_app
from localrt.bench import hop, mixed, report, soak
from localrt.bench import http as http_bench
from localrt.bench import turns as detection
from localrt.bench.inputs import Utterance, long_speech, synthesize
from localrt.bench.load import BackgroundLoad
from localrt.bench.voice import TURN_TIMEOUT_S, VoiceClient, apply_marks, floor_turn, run_turn
from localrt.engines import Engines, load_engines
from localrt.engines.interfaces import ChatModel
from localrt.serving import serve_in_thread
from localrt.settings import Settings

logger = logging.getLogger(__name__)
Side = Callable[[int], Awaitable[dict[str, Any]]]  # one side of an HTTP comparison, round i


@dataclass
class BenchConfig:
    url: str | None = None
    api_key: str | None = None
    turns: int = 20
    http_runs: int = 24
    chat_tokens: int = http_bench.CHAT_MAX_TOKENS  # per generation in the chat comparison
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    vad_modes: tuple[str, ...] = detection.MODES  # each voice turn runs once per mode
    incomplete: int = len(detection.INCOMPLETE)  # incomplete utterances per mode (0: none)
    pause_ms: int = detection.PAUSE_MS  # the silence inside each incomplete utterance
    turns_per_session: int = 3
    mixed_turns: int = 20  # 0: no mixed-load stage; its p95 over 10 turns is the second-slowest turn
    mixed_audio_s: float = 90.0  # the background transcription's audio (longer than bulk_audio_seconds)
    hop_baseline_url: str | None = None  # with ``url`` a front: the all-in-one server behind it
    hop_turns: int = 10
    out: Path = Path("bench-results")
    warmup: bool = True
    settings: Settings = field(default_factory=lambda: Settings())
    soak_sessions: int = 8  # 0: no soak stage
    soak_turns: int = 10
    soak_turn_timeout_s: float = soak.TURN_TIMEOUT_S
    soak_only: bool = False
    server_pid: int | None = None  # with ``url``: a local server's process, for the soak's RSS

    @property
    def soaks(self) -> bool:
        return self.soak_sessions > 0 and self.soak_turns > 0

    def soak_pid(self) -> int | str | None:
        """The server process the soak reads: this one when it serves in-process."""
        return self.server_pid if self.url else "self"


async def _concurrent_sessions(
    url: str, api_key: str | None, batches: list[list[Utterance]]
) -> list[dict[str, Any]]:
    """``len(batches)`` sessions open at once, talking in rounds: in round k every session speaks its
    turn k at the same time, so each session's turns alternate with the others' (its history is
    interleaved with theirs in the LLM, which per-session KV state is for). The timing marks are read
    between rounds. Samples come session by session, each with its ``session`` and ``turn``."""
    per_session: list[list[dict[str, Any]]] = [[] for _ in batches]
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(VoiceClient(url, api_key)) for _ in batches]
        for k in range(max(map(len, batches), default=0)):
            talking = [
                (s, c, b[k]) for s, (c, b) in enumerate(zip(clients, batches, strict=True)) if k < len(b)
            ]
            samples = await asyncio.gather(*(c.turn(utt) for _, c, utt in talking))
            for (s, client, _), sample in zip(talking, samples, strict=True):
                if sample.status == "timeout":  # its late reply must not be taken for the next turn's
                    await client.drain(TURN_TIMEOUT_S)
                elif sample.response_id:
                    with contextlib.suppress(httpx.HTTPError):  # the latency split is a bonus
                        apply_marks(sample, await client.server_marks(sample.response_id))
                per_session[s].append({**sample.to_dict(), "session": s, "turn": k})
    return [t for session in per_session for t in session]


async def run(cfg: BenchConfig, engines: Engines | None = None) -> dict[str, Any]:
    """Run the bench; ``engines`` (else loaded from ``cfg.settings``) serve in-process and do the floor."""
    owned = engines is None
    if engines is None:
        engines = await asyncio.to_thread(load_engines, cfg.settings)
    try:
        with contextlib.ExitStack() as stack:
            url = cfg.url or stack.enter_context(serve_in_thread(create_app(cfg.settings, engines)))
            return await (_run_soak if cfg.soak_only else _run)(cfg, url, engines)
    finally:
        if owned:
            await asyncio.to_thread(engines.close)


class _Stages:
    """The main run's stages, sharing the server's address, the inputs and the clients."""

    def __init__(
        self, cfg: BenchConfig, url: str, engines: Engines, utts: list[Utterance], model: ChatModel
    ) -> None:
        self.cfg, self.url, self.engines, self.utts, self.model = cfg, url, engines, utts, model
        self.key = cfg.api_key or "unused"
        # The HTTP chat client runs in a child process, as a real client does (see chat_http_client_process).
        self.client_process = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self.http = httpx.Client(base_url=url, timeout=120, headers=headers)

    def close(self) -> None:
        self.http.close()
        self.client_process.shutdown()

    def _chat_http(self, question: str) -> asyncio.Future[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(
            self.client_process,
            http_bench.chat_http_client_process,
            self.url,
            self.key,
            question,
            self.cfg.chat_tokens,
        )

    async def warmup(self) -> None:
        """One of each (a voice turn per mode), not recorded: first calls pay one-off allocation costs."""
        for mode in self.cfg.vad_modes:
            await run_turn(self.url, self.utts[0], self.cfg.api_key, mode)
        await self._chat_http("Hello")

    async def voice(self, raw: dict[str, Any], progress: Callable[[int], object]) -> None:
        """Each utterance once per mode, alternating which goes first, then its floor."""
        modes = self.cfg.vad_modes
        for i, utt in enumerate(itertools.islice(itertools.cycle(self.utts), self.cfg.turns)):
            for mode in modes if i % 2 == 0 else modes[::-1]:
                sample = await detection.measured_turn(self.url, utt, mode, self.cfg.api_key)
                raw["voice_turns"].append(sample.to_dict())
            raw["floor"].append((await floor_turn(self.engines, utt)).to_dict())
            progress(1)

    async def incomplete(self, raw: dict[str, Any], progress: Callable[[int], object]) -> None:
        if self.engines.tts is None or self.engines.stt is None:
            raise RuntimeError("the incomplete utterances need the text-to-speech and speech-to-text engines")
        utts, raw["incomplete_inputs"] = await detection.incomplete_utterances(
            self.engines.tts, self.engines.stt, self.cfg.incomplete, self.cfg.pause_ms
        )
        raw["incomplete"] = await detection.incomplete_stage(
            self.url, self.cfg.api_key, utts, self.cfg.vad_modes, progress
        )
        progress(min(self.cfg.incomplete, len(detection.INCOMPLETE)) - len(utts))  # sentences not cut

    async def _rounds(
        self,
        out: dict[str, list[dict[str, Any]]],
        http: Side,
        engine: Side,
        progress: Callable[[int], object],
    ) -> None:
        """``http_runs`` rounds: in round i both sides run on input i back to back, taking turns at
        going first."""
        for i in range(self.cfg.http_runs):
            sides = [("http", http), ("engine", engine)]
            for side, call in sides if i % 2 == 0 else sides[::-1]:
                out[side].append(await call(i))
            progress(1)

    # Every measured chat starts from the same KV cache: the previous request shared only the system
    # prompt. Otherwise whichever side ran second would find its whole prompt cached and show a time to
    # first token with no prompt evaluation in it.
    async def _chat_http_side(self, i: int) -> dict[str, Any]:
        await asyncio.to_thread(http_bench.prime_http, self.http)
        return await self._chat_http(http_bench.CHAT_PROMPTS[i % len(http_bench.CHAT_PROMPTS)])

    async def _chat_engine_side(self, i: int) -> dict[str, Any]:
        await http_bench.prime_engine(self.model)
        return await http_bench.chat_engine(
            self.model, http_bench.CHAT_PROMPTS[i % len(http_bench.CHAT_PROMPTS)], self.cfg.chat_tokens
        )

    async def chat(self, raw: dict[str, Any], progress: Callable[[int], object]) -> None:
        await self._rounds(raw["chat"], self._chat_http_side, self._chat_engine_side, progress)

    async def transcription(self, raw: dict[str, Any], progress: Callable[[int], object]) -> None:
        stt = self.engines.stt
        assert stt is not None  # the floor has run on it already

        async def http(i: int) -> dict[str, Any]:
            utt = self.utts[i % len(self.utts)]
            return await asyncio.to_thread(http_bench.transcription_http, self.http, utt)

        async def engine(i: int) -> dict[str, Any]:
            return await http_bench.transcription_engine(stt, self.utts[i % len(self.utts)])

        await self._rounds(raw["transcription"], http, engine, progress)

    async def speech(self, raw: dict[str, Any], progress: Callable[[int], object]) -> None:
        tts = self.engines.tts
        assert tts is not None  # it made the inputs

        async def http(i: int) -> dict[str, Any]:
            return await asyncio.to_thread(http_bench.speech_http, self.http)

        async def engine(i: int) -> dict[str, Any]:
            return await http_bench.speech_engine(tts)

        await self._rounds(raw["speech"], http, engine, progress)

    async def concurrency(self, raw: dict[str, Any], progress: Callable[[int], object]) -> None:
        n = self.cfg.turns_per_session
        for level in self.cfg.concurrency:
            batches = [[self.utts[(s + k) % len(self.utts)] for k in range(n)] for s in range(level)]
            raw["concurrency"][str(level)] = await _concurrent_sessions(self.url, self.cfg.api_key, batches)
            progress(1)

    async def mixed(self, progress: Callable[[int], object]) -> dict[str, Any]:
        wav = http_bench.wav16k(long_speech(self.utts, self.cfg.mixed_audio_s))
        return await mixed.run(
            lambda utt: run_turn(self.url, utt, self.cfg.api_key),
            self.utts,
            self.cfg.mixed_turns,
            BackgroundLoad(self.url, self.cfg.api_key, wav=wav),
            progress,
            transcription_audio_s=self.cfg.mixed_audio_s,
        )

    async def hop(self, baseline_url: str, progress: Callable[[int], object]) -> dict[str, Any]:
        return await hop.run(
            lambda utt: run_turn(self.url, utt, self.cfg.api_key),
            lambda utt: run_turn(baseline_url, utt, self.cfg.api_key),
            self.utts,
            self.cfg.hop_turns,
            progress,
        )


async def _run(cfg: BenchConfig, url: str, engines: Engines) -> dict[str, Any]:
    utts = await synthesize(engines.tts)
    conc_turns = sum(level * cfg.turns_per_session for level in cfg.concurrency)
    soak_turns = cfg.soak_sessions * cfg.soak_turns if cfg.soaks else 0
    hop_turns = cfg.hop_turns if cfg.hop_baseline_url else 0
    total = (
        cfg.turns
        + min(cfg.incomplete, len(detection.INCOMPLETE))
        + 3 * cfg.http_runs
        + len(cfg.concurrency)
        + 1
        + 2 * cfg.mixed_turns
        + hop_turns
        + soak_turns
    )
    raw: dict[str, Any] = {
        "machine": report.machine(),
        "url": cfg.url or "in-process",
        "voice_turns": [],
        "floor": [],
        "chat": {"http": [], "engine": []},
        "transcription": {"http": [], "engine": []},
        "speech": {"http": [], "engine": []},
        "concurrency": {},
    }
    stages = _Stages(cfg, url, engines, utts, await engines.llm.get(None))
    try:
        with tqdm(total=total, desc="bench", unit="step") as bar:
            if cfg.warmup:
                await stages.warmup()
            bar.update(1)
            await stages.voice(raw, bar.update)
            if cfg.incomplete > 0:
                await stages.incomplete(raw, bar.update)
            await stages.chat(raw, bar.update)
            await stages.transcription(raw, bar.update)
            await stages.speech(raw, bar.update)
            await stages.concurrency(raw, bar.update)
            if cfg.mixed_turns > 0:
                raw["mixed"] = await stages.mixed(bar.update)
            if cfg.hop_baseline_url and cfg.hop_turns > 0:
                raw["hop"] = await stages.hop(cfg.hop_baseline_url, bar.update)
            if cfg.soaks:
                raw["soak"] = await _soak(cfg, url, utts, bar.update)
    finally:
        stages.close()
    raw["config"] = {
        "turns": cfg.turns,
        "vad_modes": list(cfg.vad_modes),
        "incomplete": cfg.incomplete,
        "pause_ms": cfg.pause_ms,
        "http_runs": cfg.http_runs,
        "chat_tokens": cfg.chat_tokens,
        "concurrency": list(cfg.concurrency),
        "turns_per_session": cfg.turns_per_session,
        "concurrency_turns": conc_turns,
        "mixed_turns": cfg.mixed_turns,
        "mixed_audio_s": cfg.mixed_audio_s,
        "hop_baseline_url": cfg.hop_baseline_url,
        "hop_turns": hop_turns,
        **_soak_config(cfg),
    }
    return raw


async def _soak(
    cfg: BenchConfig, url: str, utts: list[Utterance], progress: Callable[[int], object]
) -> dict[str, Any]:
    return await soak.run(
        url,
        utts,
        sessions=cfg.soak_sessions,
        turns=cfg.soak_turns,
        api_key=cfg.api_key,
        pid=cfg.soak_pid(),
        timeout_s=cfg.soak_turn_timeout_s,
        progress=progress,
    )


def _soak_config(cfg: BenchConfig) -> dict[str, Any]:
    return {
        "soak_sessions": cfg.soak_sessions if cfg.soaks else 0,
        "soak_turns": cfg.soak_turns,
        "soak_turn_timeout_s": cfg.soak_turn_timeout_s,
    }


async def _run_soak(cfg: BenchConfig, url: str, engines: Engines) -> dict[str, Any]:
    """The soak alone (``localrt bench --soak``), after one unrecorded warm-up turn."""
    utts = await synthesize(engines.tts)
    raw: dict[str, Any] = {"machine": report.machine(), "url": cfg.url or "in-process"}
    with tqdm(total=cfg.soak_sessions * cfg.soak_turns + 1, desc="soak", unit="turn") as bar:
        if cfg.warmup:
            await run_turn(url, utts[0], cfg.api_key)
        bar.update(1)
        raw["soak"] = await _soak(cfg, url, utts, bar.update)
    raw["config"] = _soak_config(cfg)
    return raw


def finish(raw: dict[str, Any], out: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """Summarize ``raw`` and write the results folder."""
    summ = report.summarize(raw)
    return summ, report.write(raw, summ, out)


def main(cfg: BenchConfig) -> dict[str, Any]:
    started = time.monotonic()
    raw = asyncio.run(run(cfg))
    raw["wall_s"] = time.monotonic() - started
    summ, paths = finish(raw, cfg.out)
    print(report.table(summ))
    print(f"\nwrote {paths['json']}, {paths['png']} and {paths['table']} in {raw['wall_s']:.0f} s")
    return summ
