"""Helpers for tests that build their own app (importable by test modules, unlike conftest)."""

from __future__ import annotations

from typing import Any

from localrt.settings import Settings

API_KEY = "sk-localrt-test"


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: no .env file, no user models folder, n_ctx small enough to overflow."""
    values: dict[str, Any] = {"models_dir": "/nonexistent", "n_ctx": 2048, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]
