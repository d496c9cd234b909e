"""Command line: ``localrt serve``, ``localrt models``, ``localrt bench``, ``localrt talk`` and ``localrt chat``.

The ``serve`` flags are generated from :class:`localrt.settings.Settings` by pydantic-settings, so each
setting has one description shared by ``--help``, the environment variable and the README.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_settings import CliSettingsSource

from localrt import catalog
from localrt.settings import Settings


def _parser() -> tuple[argparse.ArgumentParser, dict[str, CliSettingsSource[Settings]]]:
    parser = argparse.ArgumentParser(
        prog="localrt",
        description="A local, OpenAI-compatible chat, speech and Realtime server.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sources: dict[str, CliSettingsSource[Settings]] = {}
    serve = sub.add_parser(
        "serve",
        help="serve the HTTP and Realtime API",
        description="Serve the OpenAI-compatible API. Every flag can also be set with the environment "
        "variable LOCALRT_<NAME> (e.g. LOCALRT_PORT=8001).",
    )
    sources["serve"] = CliSettingsSource(Settings, root_parser=serve, cli_kebab_case=True)
    models = sub.add_parser("models", help="list the models this server can serve")
    sources["models"] = CliSettingsSource(Settings, root_parser=models, cli_kebab_case=True)
    bench = sub.add_parser(
        "bench",
        help="profile latency of the voice loop and the HTTP endpoints against the engines, then soak",
        description="Latency profiling (voice turns in each turn detection mode, incomplete utterances "
        "for the false end-of-turn rate, HTTP against the engines in-process, concurrent sessions, voice "
        "turns under mixed HTTP load), then a soak (concurrent realtime sessions x voice "
        "turns; --soak runs only that). Without --url it serves in-process with the settings below; with "
        "--url it measures that server (the floor and the engine sides still run on engines loaded here).",
    )
    bench.add_argument("--url", default=None, help="a running server, e.g. http://gpu-box:8000")
    bench.add_argument("--bench-key", default=None, help="API key of the server given by --url")
    bench.add_argument("--turns", type=int, default=20, help="voice turns for the main series (default 20)")
    bench.add_argument(
        "--http-runs", type=int, default=24, help="rounds of each HTTP comparison (default 24)"
    )
    bench.add_argument(
        "--chat-tokens",
        type=_count,
        default=200,
        help="tokens per generation in the chat comparison (default 200, at temperature 0)",
    )
    bench.add_argument(
        "--concurrency",
        default="1,2,4,8",
        help="concurrent session counts, comma separated (default 1,2,4,8)",
    )
    bench.add_argument(
        "--vad-modes",
        default="server_vad,semantic_vad",
        help="turn detection modes the voice turns and the incomplete utterances run in, side by side "
        "(default server_vad,semantic_vad)",
    )
    bench.add_argument(
        "--incomplete",
        type=_count,
        default=10,
        help="incomplete utterances (a pause inside) per mode, for the false end-of-turn rate (default 10, "
        "the whole set; 0 skips them)",
    )
    bench.add_argument(
        "--pause-ms", type=int, default=700, help="the pause inside each incomplete utterance (default 700)"
    )
    bench.add_argument("--turns-per-session", type=int, default=3, help="turns per concurrent session")
    bench.add_argument(
        "--mixed-turns",
        type=_count,
        default=20,
        help="voice turns alone and again under mixed HTTP load (a long transcription and long chats "
        "streaming meanwhile), default 20; 0 skips the mixed-load stage",
    )
    bench.add_argument(
        "--mixed-audio-seconds",
        type=float,
        default=90.0,
        help="speech in the mixed load's background transcription (default 90)",
    )
    bench.add_argument("--no-mixed", action="store_true", help="skip the mixed-load stage")
    bench.add_argument(
        "--hop-baseline-url",
        default=None,
        help="with --url pointing at a front (remote engines): the all-in-one server behind it; voice turns "
        "alternate between the two and the report gives the front's extra p50 (ms)",
    )
    bench.add_argument(
        "--hop-turns", type=_count, default=10, help="voice turns on each side of the hop stage (default 10)"
    )
    bench.add_argument("--out", default="bench-results", help="results folder (default bench-results)")
    bench.add_argument(
        "--soak", action="store_true", help="run only the soak (without it, the soak is the last stage)"
    )
    bench.add_argument(
        "--soak-sessions",
        type=_count,
        default=8,
        help="concurrent sessions in the soak (default 8; 0: no soak)",
    )
    bench.add_argument(
        "--soak-turns", type=_count, default=10, help="voice turns per soak session (default 10)"
    )
    bench.add_argument(
        "--soak-turn-timeout", type=float, default=120.0, help="seconds before a soak turn counts as lost"
    )
    bench.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="with --url: the local server's process id, read for the soak's RSS, threads and fds",
    )
    sources["bench"] = CliSettingsSource(Settings, root_parser=bench, cli_kebab_case=True)
    _client_parsers(sub)
    return parser, sources


def _client_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``localrt talk`` and ``localrt chat``: terminal clients of a running server (no settings)."""
    talk = sub.add_parser(
        "talk",
        help="voice chat in the terminal (microphone and speaker, or --input/--output WAV files)",
        description="Talk with a Realtime server: your speech from the default microphone, the replies "
        "on the default speaker, live transcripts of both, and barge-in (speaking over a reply stops it). "
        "--input streams a file as the microphone and ends after the reply; --output saves the reply "
        "audio. Use headphones with a microphone and speaker, or the assistant hears itself.",
    )
    talk.add_argument(
        "--url", default="ws://127.0.0.1:8000", help="server (ws://, wss://, http:// or https://)"
    )
    talk.add_argument("--key", default=None, help="API key (default: $LOCALRT_API_KEY)")
    talk.add_argument("--model", default=None, help="realtime model (default: the server's)")
    talk.add_argument("--voice", default=None, help="voice of the replies (default: the server's)")
    talk.add_argument("--instructions", default=None, help="system instructions for the session")
    talk.add_argument("--input", default=None, help="audio file streamed as the microphone (wav, mp3, ...)")
    talk.add_argument("--output", default=None, help="WAV file the reply audio is written to")
    talk.add_argument(
        "--timeout", type=float, default=120.0, help="with --input: seconds to wait for the reply"
    )
    chat = sub.add_parser(
        "chat",
        help="typed chat in the terminal over /v1/chat/completions, streamed",
        description="Typed chat with streaming replies; the conversation is kept. /exit or Ctrl-D quits, "
        "/reset forgets the conversation, Ctrl-C stops a reply.",
    )
    chat.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    chat.add_argument("--key", default=None, help="API key (default: $LOCALRT_API_KEY)")
    chat.add_argument("--model", default=None, help="chat model (default: the server's)")
    chat.add_argument("--system", default=None, help="system message")
    chat.add_argument("--max-tokens", type=int, default=None, help="cap on each reply's tokens")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _settings(source: CliSettingsSource[Settings], args: argparse.Namespace) -> Settings:
    try:
        return Settings(_cli_settings_source=source(parsed_args=args))
    except ValidationError as exc:
        sys.exit(f"localrt: invalid settings:\n{exc}")


def serve(settings: Settings) -> None:
    from localrt.app import create_app
    from localrt.serving import server_for, uvicorn_config

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
        sys.exit("localrt: --ssl-keyfile needs --ssl-certfile")
    config = uvicorn_config(
        create_app(settings),
        settings.host,
        settings.port,
        settings.log_level,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
    )
    server_for(config).run()


def list_models(settings: Settings) -> None:
    cat = catalog.scan(settings.models_dir)
    rows = (
        [("chat", mid, path) for mid, path in cat.llms.items()]
        + [("transcription", mid, path) for mid, path in cat.whispers.items()]
        + [("speech", mid, path) for mid, path in cat.voices.items()]
        + ([("vad", "silero-vad", cat.vad)] if cat.vad else [])
        + ([("turn", "smart-turn-v3.2", cat.turn)] if cat.turn else [])
    )
    print(json.dumps([{"kind": k, "id": i, "path": str(p)} for k, i, p in rows], indent=2))


def main(argv: Sequence[str] | None = None) -> None:
    parser, sources = _parser()
    args = parser.parse_args(argv)
    if args.command in ("talk", "chat"):
        sys.exit(_client(args))
    settings = _settings(sources[args.command], args)
    if args.command == "serve":
        serve(settings)
    elif args.command == "models":
        list_models(settings)
    elif args.command == "bench":
        bench(settings, args)


def _client(args: argparse.Namespace) -> int:
    if args.command == "chat":
        from localrt.chat_cli import ChatOptions
        from localrt.chat_cli import run as run_chat

        return run_chat(ChatOptions(args.url, args.key, args.model, args.system, args.max_tokens))
    from localrt.talk import TalkOptions
    from localrt.talk import main as run_talk

    return run_talk(
        TalkOptions(
            url=args.url,
            key=args.key,
            model=args.model,
            voice=args.voice,
            instructions=args.instructions,
            input=args.input,
            output=args.output,
            timeout=args.timeout,
        )
    )


def bench(settings: Settings, args: argparse.Namespace) -> None:
    from pathlib import Path

    from localrt.bench.runner import BenchConfig
    from localrt.bench.runner import main as run_bench
    from localrt.bench.turns import INCOMPLETE, parse_modes

    if args.soak and not (args.soak_sessions and args.soak_turns):
        sys.exit("localrt: --soak needs --soak-sessions and --soak-turns of 1 or more")
    if args.mixed_audio_seconds <= 0:
        sys.exit("localrt: --mixed-audio-seconds must be more than 0")
    try:
        vad_modes = parse_modes(args.vad_modes)
    except ValueError as exc:
        sys.exit(f"localrt: --vad-modes: {exc}")
    if not 0 < args.pause_ms <= 5000:
        sys.exit("localrt: --pause-ms must be 1 to 5000")
    if args.hop_baseline_url and not args.url:
        sys.exit("localrt: --hop-baseline-url needs --url (the front)")
    logging.basicConfig(level=logging.WARNING)
    run_bench(
        BenchConfig(
            url=args.url.rstrip("/") if args.url else None,
            api_key=args.bench_key,
            turns=args.turns,
            http_runs=args.http_runs,
            chat_tokens=args.chat_tokens,
            concurrency=tuple(int(c) for c in args.concurrency.split(",") if c),
            turns_per_session=args.turns_per_session,
            vad_modes=vad_modes,
            incomplete=min(args.incomplete, len(INCOMPLETE)),
            pause_ms=args.pause_ms,
            mixed_turns=0 if args.no_mixed else args.mixed_turns,
            mixed_audio_s=args.mixed_audio_seconds,
            hop_baseline_url=args.hop_baseline_url.rstrip("/") if args.hop_baseline_url else None,
            hop_turns=args.hop_turns,
            out=Path(args.out),
            settings=settings,
            soak_sessions=args.soak_sessions,
            soak_turns=args.soak_turns,
            soak_turn_timeout_s=args.soak_turn_timeout,
            soak_only=args.soak,
            server_pid=args.server_pid,
        )
    )
