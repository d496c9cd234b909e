"""Server settings.

One pydantic-settings model is the single source of truth: each field's description feeds
``localrt serve --help`` and the README, and each field can be set by a ``LOCALRT_<NAME>`` environment
variable or a ``--<name>`` flag (flags win over the environment, which wins over the defaults).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LOCALRT_", env_file=".env", extra="ignore", validate_default=True
    )

    # --- server -----------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free one).")
    api_key: SecretStr | None = Field(
        None,
        description="If set, every request but GET /health/live must carry it (Authorization: Bearer "
        "<key>; realtime also takes the openai-insecure-api-key subprotocol or ?api-key=); unset: no "
        "authentication.",
    )
    models_dir: Path = Field(
        Path("models"),
        description="Folder scanned for extra models: *.gguf chat models, CTranslate2 Whisper folders "
        "(a folder holding model.bin) and Piper voices (*.onnx with *.onnx.json).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description='Origins allowed to call the HTTP API from a browser, as a JSON list (["*"] for any).',
    )

    realtime_allowed_origins: list[str] = Field(
        default_factory=list,
        description='Browser origins allowed to open /v1/realtime, as a JSON list (["*"] for any). '
        "Empty: without --api-key, same-origin pages and pages on localhost / 127.0.0.1 / [::1] / "
        "*.localhost only; with a key, any origin (the key guards). Clients that send no Origin header "
        "(SDKs, servers) are always allowed; the API key still applies.",
    )
    ssl_certfile: Path | None = Field(None, description="TLS certificate (PEM) to serve https:// and wss://.")
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM) for --ssl-certfile.")

    # --- limits (every byte a client sends is bounded before it is parsed, decoded or held) ---------
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest JSON request body, checked before it is read in full (413 beyond).",
    )
    max_upload_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="Largest audio upload for transcriptions (413 beyond)."
    )
    # 25 min, the cap of OpenAI's gpt-4o-transcribe models: 96 MB decoded (16 kHz float32), under
    # 400 MB at the peak of the Whisper job, and minutes of the one Whisper worker realtime shares.
    max_audio_seconds: float = Field(
        1500.0,
        gt=0,
        description="Longest decoded audio accepted by transcriptions and translations, in seconds; "
        "decoding stops as soon as it passes this, whatever the file's header says (400 beyond).",
    )
    realtime_max_sessions: int = Field(
        64, ge=1, description="Realtime sessions open at once in total (503 at the handshake beyond)."
    )
    realtime_max_sessions_per_ip: int = Field(
        10, ge=1, description="Realtime sessions open at once from one client address (503 beyond)."
    )
    realtime_idle_timeout_s: float = Field(
        600.0,
        gt=0,
        description="A realtime session that sends no event for this long is closed (code 1008).",
    )
    realtime_max_session_s: float = Field(
        1800.0,
        gt=0,
        description="Longest life of a realtime session; its expires_at, after which it is closed (1008).",
    )
    realtime_max_buffer_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Uncommitted input audio one session may hold, as 16 kHz pcm16 bytes (about 17 min).",
    )
    realtime_max_items: int = Field(
        1024, ge=8, description="Conversation items one realtime session may hold."
    )
    realtime_max_item_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest conversation item (text and audio as received) one session may create.",
    )
    realtime_max_session_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024 * 1024,
        description="Text and audio one realtime session's conversation may hold in total.",
    )
    realtime_max_oob_responses: int = Field(
        2,
        ge=1,
        description="Out-of-band responses (conversation none) one session may run at once.",
    )
    realtime_speculate: bool = Field(
        True,
        description="Compute a turn's reply (LLM and first clause of speech) in the user's pause, held "
        "until the turn ends; false: start it when the turn ends.",
    )
    shutdown_timeout_s: float = Field(
        5.0,
        ge=0,
        description="On SIGTERM: how long in-flight requests and sessions get to finish before exit.",
    )

    # --- realtime pipeline (custom stages: localrt.pipeline) ----------------------------------------
    pipeline: str | None = Field(
        None,
        description="Custom stages for every realtime session: module:factory (a function of the "
        "settings returning a localrt.pipeline.Pipeline; imported at start-up) or the name of a pipeline "
        "(built in: interpreter; or an entry point of the group localrt.pipelines). A session may choose "
        "another with /v1/realtime?pipeline=<name>. Unset: none unless a session chooses one.",
    )

    @field_validator("pipeline")
    @classmethod
    def _pipeline(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from localrt.pipeline.registry import check_spec, load_factory

        spec = check_spec(value)
        if ":" in spec:
            load_factory(spec)  # an import error stops the server here, before it starts
        return spec

    # --- chat model (llama.cpp) -----------------------------------------------------------------------
    llm_model: str | None = Field(
        None,
        description="Default chat model: an id from `localrt models` or a path to a .gguf file. "
        "Unset: the embedded SmolLM2-135M-Instruct. With --llm-base-url: the upstream's model id.",
    )
    n_ctx: int = Field(4096, ge=256, description="llama.cpp context size in tokens.")
    n_gpu_layers: int | None = Field(
        None,
        description="Layers to offload to the GPU (-1 = all). Unset: all layers when llama.cpp was "
        "built with GPU support, else 0.",
    )
    n_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for llama.cpp. Unset: all CPU cores but one (at least 1), which stays "
        "free for Whisper, Piper and the event loop; the prompt and each token use all cores while no "
        "other engine is busy on the CPU.",
    )
    n_batch: int = Field(512, ge=1, description="llama.cpp prompt-processing batch size.")
    llm_mmproj: Path | None = Field(
        None,
        description="GGUF multimodal projector (mmproj) of the default chat model: images in chat "
        "completions and realtime items go to it through llama.cpp's libmtmd (tested with a synthetic "
        "projector only: no vision model ships). Unset: the local model is text-only and images are refused.",
    )
    max_loaded_models: int = Field(
        2,
        ge=1,
        description="Chat models kept loaded at once; the least recently used other than the "
        "default is unloaded when a request needs another.",
    )

    # --- speech to text (faster-whisper) ------------------------------------------------------------
    stt_model: str | None = Field(
        None,
        description="Whisper model: an id from `localrt models` or a path to a CTranslate2 folder. "
        "Unset: the embedded whisper tiny.en.",
    )
    stt_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Device for Whisper: auto picks cuda when CTranslate2 sees a GPU."
    )
    stt_compute_type: str = Field(
        "auto", description="CTranslate2 compute type (auto: float16 on CUDA, int8 on CPU)."
    )
    stt_threads: int = Field(0, ge=0, description="CPU threads for Whisper (0: CTranslate2's default).")
    stt_short_window: bool = Field(
        True,
        description="Transcribe realtime turns of at most 9 s in a 12 s Whisper window instead of 30 s "
        "(about 3x faster on a CPU, checked and redone in 30 s when it loops); false: always 30 s.",
    )

    # --- text to speech (Piper) ---------------------------------------------------------------------
    tts_voice: str | None = Field(
        None, description="Default Piper voice id. Unset: the embedded en_US-joe-medium."
    )
    voice_map: dict[str, str] = Field(
        default_factory=dict,
        description="Map of OpenAI voice names to installed Piper voice ids, as JSON, e.g. "
        '{"alloy": "en_US-joe-medium"}. Unmapped OpenAI voices use the default voice.',
    )
    tts_use_cuda: bool = Field(False, description="Run Piper on CUDA (needs onnxruntime-gpu).")

    # --- engine core: implementations, schedulers, state --------------------------------------------
    llm_engine: str = Field(
        "llama_cpp", description="Chat model implementation (a name in localrt.engines.REGISTRY['llm'])."
    )
    stt_engine: str = Field(
        "faster_whisper",
        description="Speech-to-text implementation (a name in localrt.engines.REGISTRY['stt']).",
    )
    tts_engine: str = Field(
        "piper", description="Text-to-speech implementation (a name in localrt.engines.REGISTRY['tts'])."
    )
    vad_engine: str = Field(
        "silero", description="Voice-activity implementation (a name in localrt.engines.REGISTRY['vad'])."
    )
    turn_engine: str = Field(
        "smart_turn",
        description="End-of-turn model for semantic_vad (a name in localrt.engines.REGISTRY['turn']).",
    )
    turn_model: Path | None = Field(
        None,
        description="A Smart Turn ONNX file (input input_features [batch, 80, 800], output P(complete)) "
        "to use instead of the embedded one; its checksum is not checked. Unset: the embedded Smart Turn "
        "v3.2 (from the pipecat-ai package).",
    )
    semantic_vad_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="P(turn complete) at or above which semantic_vad ends a turn at a pause.",
    )
    llm_slots: int = Field(
        1,
        ge=1,
        le=1,
        description="Chat generations run at once per model (in-process llama.cpp has one context: 1).",
    )
    stt_slots: int = Field(
        2,
        ge=1,
        le=8,
        description="Transcriptions run at once (Whisper workers): with 2, a voice turn's transcription "
        "never waits for the native call a long transcription is in.",
    )
    tts_slots: int = Field(2, ge=1, le=8, description="Syntheses run at once (Piper workers).")
    llm_max_queue: int = Field(
        32, ge=1, description="Chat jobs waiting per model; beyond it: 429 / a realtime error event."
    )
    stt_max_queue: int = Field(
        32, ge=1, description="Transcriptions waiting; beyond it: 429 / a realtime error event."
    )
    tts_max_queue: int = Field(
        32, ge=1, description="Syntheses waiting; beyond it: 429 / a realtime error event."
    )
    bulk_audio_seconds: float = Field(
        60.0,
        ge=0,
        description="HTTP transcriptions of more audio than this run as bulk work, after interactive "
        "and ordinary requests (and yield to them between Whisper calls).",
    )
    llm_state_cache_mb: int = Field(
        512,
        ge=0,
        description="Memory for per-session llama.cpp state (each realtime session's evaluated "
        "conversation survives other sessions' turns); least recently used first out. 0: off.",
    )

    # --- remote chat engine (an OpenAI-compatible server runs the chat model) -------------------------
    llm_base_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible chat server (vLLM, SGLang, llama-server, another "
        "localrt; e.g. http://gpu-box:8000/v1, /v1 is added to a URL without a path): chat, completions "
        "and realtime replies are streamed from it and no GGUF is loaded here (with --llm-engine left at "
        "its default). --llm-model is then the upstream's model id (unset: the first it lists). Unset: "
        "local llama.cpp.",
    )
    llm_api_key: SecretStr | None = Field(
        None, description="API key sent to --llm-base-url (Authorization: Bearer)."
    )
    llm_remote_slots: int = Field(
        4,
        ge=1,
        le=1024,
        description="Chat requests streamed from --llm-base-url at once; more wait in the queue "
        "(--llm-max-queue), realtime turns first.",
    )

    # --- remote speech engines (an OpenAI-compatible server does the work) ---------------------------
    stt_base_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible speech-to-text server (speaches, vLLM Whisper, "
        "another localrt; e.g. http://back:8001/v1, /v1 is added to a URL without a path): transcriptions "
        "are sent to its /audio/transcriptions and no Whisper model is loaded here (unless --stt-engine "
        "is given). Unset: local Whisper.",
    )
    stt_api_key: SecretStr | None = Field(None, description="API key sent to --stt-base-url.")
    stt_remote_model: str = Field("whisper-1", description="Model name sent to --stt-base-url.")
    stt_remote_slots: int = Field(
        8,
        ge=1,
        le=256,
        description="Transcriptions sent to --stt-base-url at once (more wait in the queue).",
    )
    tts_base_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible text-to-speech server (another localrt, any with "
        "/audio/speech and pcm output; e.g. http://back:8001/v1): speech is streamed from it as 24 kHz "
        "pcm, sentence by sentence, and no Piper voice is loaded here (unless --tts-engine is given). "
        "Unset: local Piper.",
    )
    tts_api_key: SecretStr | None = Field(None, description="API key sent to --tts-base-url.")
    tts_remote_model: str = Field("tts-1", description="Model name sent to --tts-base-url.")
    tts_remote_slots: int = Field(
        8,
        ge=1,
        le=256,
        description="Syntheses streamed from --tts-base-url at once (more wait in the queue).",
    )

    @field_validator("llm_base_url", "stt_base_url", "tts_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value

    # --- which engines to load ----------------------------------------------------------------------
    load_stt: bool = Field(True, description="Load the Whisper engine at start-up.")
    load_tts: bool = Field(True, description="Load the Piper engine at start-up.")
    load_vad: bool = Field(True, description="Load the silero VAD engine at start-up.")
    load_turn: bool = Field(
        True,
        description="Load the Smart Turn model for semantic_vad at start-up (with --load-vad only: "
        "without a VAD there are no pauses to judge).",
    )

    def resolved_n_threads(self) -> int:
        import os

        # llama.cpp's threads spin while they wait for each other: with every core given to them, any
        # other busy thread (Whisper, Piper, a second session's work) stalls them all. On 2 cores, 8
        # concurrent voice sessions lost 68 of 80 turns to 120 s timeouts with 2 threads, none with 1.
        return self.n_threads or max(1, (os.cpu_count() or 2) - 1)
