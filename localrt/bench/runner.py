"""Orchestrates a bench run: inputs, voice turns with their floor, HTTP pairs, concurrency, the soak,
report. ``--soak`` runs the soak alone.

By default the server runs in this process (uvicorn in a thread, over the same engines the floor
uses); ``--url`` measures a running server instead, with the floor computed on engines loaded here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from localrt.app import create_app
from localrt.bench import http as http_bench
from localrt.bench import report, soak
from localrt.bench.inputs import Utterance, synthesize
from localrt.bench.voice import VoiceClient, apply_marks, floor_turn, run_turn
from localrt.engines import Engines, load_engines
from localrt.serving import serve_in_thread
from localrt.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    url: str | None = None
    api_key: str | None = None
    turns: int = 20
    http_runs: int = 24
    concurrency: tuple[int, ...] = (1, 2, 4)
    turns_per_session: int = 3
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


async def _session_turns(url: str, api_key: str | None, utts: list[Utterance]) -> list[dict[str, Any]]:
    out = []
    async with VoiceClient(url, api_key) as client:
        for utt in utts:
            sample = await client.turn(utt)
            if sample.response_id:
                apply_marks(sample, await client.server_marks(sample.response_id))
            out.append(sample.to_dict())
    return out


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


async def _run(cfg: BenchConfig, url: str, engines: Engines) -> dict[str, Any]:
    utts = await synthesize(engines.tts)
    questions = list(itertools.islice(itertools.cycle(utts), cfg.turns))
    conc_turns = sum(level * cfg.turns_per_session for level in cfg.concurrency)
    soak_turns = cfg.soak_sessions * cfg.soak_turns if cfg.soaks else 0
    total = cfg.turns + 3 * cfg.http_runs + len(cfg.concurrency) + 1 + soak_turns
    raw: dict[str, Any] = {
        "machine": report.machine(),
        "url": cfg.url or "in-process",
        "voice_turns": [],
        "floor": [],
        "chat": {"http": [], "direct": [], "engine": []},
        "transcription": {"http": [], "direct": []},
        "speech": {"http": [], "direct": []},
        "concurrency": {},
    }
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    llm = await engines.llm.get(None)
    loop = asyncio.get_running_loop()
    # The HTTP chat client runs in a child process, as a real client does (see chat_http_client_process).
    client_process = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    with (
        client_process,
        tqdm(total=total, desc="bench", unit="step") as bar,
        httpx.Client(base_url=url, timeout=120, headers=headers) as http,
    ):
        if cfg.warmup:  # one of each, not recorded: first calls pay one-off allocation costs
            await run_turn(url, utts[0], cfg.api_key)
            await loop.run_in_executor(
                client_process, http_bench.chat_http_client_process, url, cfg.api_key or "unused", "Hello"
            )
        bar.update(1)

        for utt in questions:
            sample = await run_turn(url, utt, cfg.api_key)
            raw["voice_turns"].append(sample.to_dict())
            raw["floor"].append((await floor_turn(engines, utt)).to_dict())
            bar.update(1)

        for i in range(cfg.http_runs):
            question = http_bench.CHAT_PROMPTS[i % len(http_bench.CHAT_PROMPTS)]
            pair = [
                (
                    "http",
                    lambda q=question: loop.run_in_executor(
                        client_process, http_bench.chat_http_client_process, url, cfg.api_key or "unused", q
                    ),
                ),
                ("direct", lambda q=question: asyncio.to_thread(http_bench.chat_direct, llm, q)),
                ("engine", lambda q=question: http_bench.chat_engine(llm, q)),
            ]
            shift = i % len(pair)  # each side takes each place in the order in turn
            for side, call in pair[shift:] + pair[:shift]:
                # Every measured call starts from the same KV cache: the previous request shared only
                # the system prompt. Otherwise whichever side ran second would find its whole prompt
                # cached and show a time to first token with no prompt evaluation in it.
                if side == "http":
                    await asyncio.to_thread(http_bench.prime_http, http)
                else:
                    await asyncio.to_thread(http_bench.prime_direct, llm)
                raw["chat"][side].append(await call())
            bar.update(1)
        for i in range(cfg.http_runs):
            utt = utts[i % len(utts)]
            if i % 2 == 0:
                raw["transcription"]["http"].append(
                    await asyncio.to_thread(http_bench.transcription_http, http, utt)
                )
                raw["transcription"]["direct"].append(await http_bench.transcription_direct(engines.stt, utt))
            else:
                raw["transcription"]["direct"].append(await http_bench.transcription_direct(engines.stt, utt))
                raw["transcription"]["http"].append(
                    await asyncio.to_thread(http_bench.transcription_http, http, utt)
                )
            bar.update(1)
        for i in range(cfg.http_runs):
            if i % 2 == 0:
                raw["speech"]["http"].append(await asyncio.to_thread(http_bench.speech_http, http))
                raw["speech"]["direct"].append(await http_bench.speech_direct(engines.tts))
            else:
                raw["speech"]["direct"].append(await http_bench.speech_direct(engines.tts))
                raw["speech"]["http"].append(await asyncio.to_thread(http_bench.speech_http, http))
            bar.update(1)

        for level in cfg.concurrency:
            batches = [
                [utts[(s + k) % len(utts)] for k in range(cfg.turns_per_session)] for s in range(level)
            ]
            results = await asyncio.gather(*(_session_turns(url, cfg.api_key, b) for b in batches))
            raw["concurrency"][str(level)] = [t for session in results for t in session]
            bar.update(1)

        if cfg.soaks:
            raw["soak"] = await _soak(cfg, url, utts, bar.update)
    raw["config"] = {
        "turns": cfg.turns,
        "http_runs": cfg.http_runs,
        "concurrency": list(cfg.concurrency),
        "turns_per_session": cfg.turns_per_session,
        "concurrency_turns": conc_turns,
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
