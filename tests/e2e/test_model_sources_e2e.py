"""`wattpool up --model` with a local GGUF file and with a Hugging Face repo id.

No network: the Hugging Face case reads a hub cache laid out by the test, with
HF_HUB_OFFLINE=1, through the same huggingface_hub code that downloads for real users.
"""

from __future__ import annotations

import os
from pathlib import Path

import openai
import pytest

from wattpool.engines.models import assemble_default

from pooltools import PoolProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_default(tmp_path_factory.mktemp("models"))


def fake_hub_cache(root: Path, repo_id: str, file: Path) -> Path:
    org, name = repo_id.split("/")
    repo = root / "hub" / f"models--{org}--{name}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    os.symlink(file, snapshot / "gemma-3-270m-Q4_K_M.gguf")
    return root


@pytest.mark.parametrize("kind", ["local-file", "hugging-face"])
def test_up_serves_another_model_source(tmp_path: Path, gguf: Path, kind: str) -> None:
    env = {}
    if kind == "local-file":
        source = tmp_path / "my-gemma.gguf"
        os.symlink(gguf, source)
        model, expected_id = str(source), "my-gemma"
    else:
        hf_home = fake_hub_cache(tmp_path / "hf", "someorg/gemma-3-270m-GGUF", gguf)
        env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
        model, expected_id = "someorg/gemma-3-270m-GGUF", "someorg/gemma-3-270m-GGUF"
    pool = PoolProcess(tmp_path / "pool", "--model", model, "--context-length", "512", env=env)
    try:
        pool.wait_ready()
        client = openai.OpenAI(base_url=f"{pool.base_url}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == [expected_id]
        reply = client.completions.create(model=expected_id, prompt="Paris is", max_tokens=4,
                                          temperature=0)
        assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 4
        if reply.choices[0].finish_reason == "length":
            assert reply.usage.completion_tokens == 4
    finally:
        assert pool.stop() == 0, pool.log()


def test_up_reports_a_missing_model(tmp_path: Path) -> None:
    pool = PoolProcess(tmp_path / "pool", "--model", str(tmp_path / "nope.gguf"))
    try:
        assert pool.proc.wait(timeout=60) == 1
        assert "cannot load the model" in pool.log() and "nope.gguf" in pool.log()
        assert not pool.engine_processes()
    finally:
        pool.stop()
