"""Settings from flags and LOCALRT_* variables; the CLI; model discovery in the models folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from localrt import catalog
from localrt.cli import _parser, _settings
from localrt.settings import Settings


def parse(argv: list[str]) -> Settings:
    parser, sources = _parser()
    args = parser.parse_args(argv)
    return _settings(sources[args.command], args)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LOCALRT_PORT", "LOCALRT_HOST"):
        monkeypatch.delenv(var, raising=False)
    s = parse(["serve"])
    assert (s.host, s.port, s.api_key, s.n_gpu_layers) == ("127.0.0.1", 8000, None, None)


def test_env_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRT_PORT", "9001")
    monkeypatch.setenv("LOCALRT_API_KEY", "sk-env")
    monkeypatch.setenv("LOCALRT_VOICE_MAP", '{"alloy": "en_US-joe-medium"}')
    s = parse(["serve"])
    assert s.port == 9001
    assert s.api_key is not None and s.api_key.get_secret_value() == "sk-env"
    assert s.voice_map == {"alloy": "en_US-joe-medium"}
    s = parse(["serve", "--port", "9002", "--n-ctx", "1024", "--n-gpu-layers", "0", "--llm-model", "x"])
    assert (s.port, s.n_ctx, s.n_gpu_layers, s.llm_model) == (9002, 1024, 0, "x")


def test_help_lists_every_setting() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "localrt", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name, field in Settings.model_fields.items():
        assert "--" + name.replace("_", "-") in out, name
        assert field.description, name


def test_embedded_models_are_found() -> None:
    cat = catalog.scan(None)
    assert cat.llms[catalog.EMBEDDED_LLM_ID].name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (cat.whispers[catalog.EMBEDDED_STT_ID] / "model.bin").is_file()
    assert cat.voices[catalog.EMBEDDED_VOICE_ID].suffix == ".onnx"
    assert cat.vad is not None and cat.vad.name == "silero_vad.onnx"


def test_models_dir_scan(tmp_path: Path) -> None:
    (tmp_path / "llms").mkdir()
    (tmp_path / "llms" / "my-chat.gguf").write_bytes(b"GGUF")
    (tmp_path / "whisper-small").mkdir()
    (tmp_path / "whisper-small" / "model.bin").write_bytes(b"")
    (tmp_path / "whisper-small" / "config.json").write_text("{}")
    (tmp_path / "en_GB-test.onnx").write_bytes(b"")
    (tmp_path / "en_GB-test.onnx.json").write_text("{}")
    (tmp_path / "orphan.onnx").write_bytes(b"")  # no .onnx.json: not a voice
    cat = catalog.scan(tmp_path)
    assert cat.llms["my-chat"] == (tmp_path / "llms" / "my-chat.gguf").resolve()
    assert "whisper-small" in cat.whispers
    assert "en_GB-test" in cat.voices and "orphan" not in cat.voices


def test_models_command(tmp_path: Path) -> None:
    (tmp_path / "extra.gguf").write_bytes(b"GGUF")
    out = subprocess.run(
        [sys.executable, "-m", "localrt", "models", "--models-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(out)
    ids = {(r["kind"], r["id"]) for r in rows}
    assert ("chat", "smollm2-135m-instruct") in ids and ("chat", "extra") in ids


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"LOCALRT_{name.upper()}" in readme, name
        assert f"--{name.replace('_', '-')}" in readme, name
