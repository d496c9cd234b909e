"""A .gguf dropped into the models folder is served under its own id, loaded on first use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from localrt import catalog
from localrt.app import create_app
from localrt.engines import Engines
from localrt.engines.llm_pool import LLMPool
from localrt.serving import serve_in_thread
from tests.servers import make_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    embedded = catalog.embedded_llm()
    assert embedded is not None
    os.symlink(embedded, tmp_path / "my-local-model.gguf")
    return tmp_path


@pytest.fixture
def client(models_dir: Path) -> Iterator[openai.OpenAI]:
    settings = make_settings(models_dir=models_dir)
    pool = LLMPool(settings, catalog.scan(models_dir))
    pool.load_default()
    engines = Engines(llm=pool)
    with serve_in_thread(create_app(settings, engines)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    engines.close()


def test_dropped_gguf_is_listed_and_served(client: openai.OpenAI) -> None:
    assert "my-local-model" in {m.id for m in client.models.list()}
    resp = client.chat.completions.create(
        model="my-local-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert resp.model == "my-local-model" and resp.choices[0].message.content is not None
    card = client.models.retrieve("my-local-model")
    assert card.model_extra and card.model_extra["loaded"] is True
