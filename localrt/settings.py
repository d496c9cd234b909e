"""Server settings.

One pydantic-settings model is the single source of truth: each field's description feeds
``localrt serve --help`` and the README, and each field can be set by a ``LOCALRT_<NAME>`` environment
variable or a ``--<name>`` flag (flags win over the environment, which wins over the defaults).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
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
        description="If set, every /v1 request must carry it (Authorization: Bearer <key>); "
        "unset means no authentication.",
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

    # --- chat model (llama.cpp) -----------------------------------------------------------------------
    llm_model: str | None = Field(
        None,
        description="Default chat model: an id from `localrt models` or a path to a .gguf file. "
        "Unset: the embedded SmolLM2-135M-Instruct.",
    )
    n_ctx: int = Field(4096, ge=256, description="llama.cpp context size in tokens.")
    n_gpu_layers: int | None = Field(
        None,
        description="Layers to offload to the GPU (-1 = all). Unset: all layers when llama.cpp was "
        "built with GPU support, else 0.",
    )
    n_threads: int | None = Field(
        None, ge=1, description="CPU threads for llama.cpp. Unset: the number of CPU cores."
    )
    n_batch: int = Field(512, ge=1, description="llama.cpp prompt-processing batch size.")
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

    # --- which engines to load ----------------------------------------------------------------------
    load_stt: bool = Field(True, description="Load the Whisper engine at start-up.")
    load_tts: bool = Field(True, description="Load the Piper engine at start-up.")
    load_vad: bool = Field(True, description="Load the silero VAD engine at start-up.")

    def resolved_n_threads(self) -> int:
        import os

        return self.n_threads or os.cpu_count() or 1
