"""Helpers shared by test modules against the app (importable by them, unlike conftest)."""

from __future__ import annotations

from typing import Any

import httpx

from localrt.settings import Settings

API_KEY = "sk-localrt-test"


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: no .env file, no user models folder, n_ctx small enough to overflow."""
    values: dict[str, Any] = {"models_dir": "/nonexistent", "n_ctx": 2048, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def error_of(resp: httpx.Response, status: int) -> dict[str, Any]:
    """The error of an OpenAI-shaped error response: ``{"error": {message, type, param, code}}``."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    return err
