"""`--deploy` specs: which models a `wattpool server` pool serves, and how.

A spec is the model source, then optional ``key=value`` pairs, comma-separated::

    gemma3-270m                                  # llama.cpp, 1 replica
    synthetic,replicas=3,tokens_per_s=50         # the synthetic engine (tests, load)
    /models/qwen.gguf,id=qwen,context=4096,replicas=2
"""

from __future__ import annotations

from pathlib import Path

from wattpool.control.service import Deployment
from wattpool.engines.models import default_model_id, estimate_memory_bytes

KNOWN_ENGINES = ("llamacpp", "synthetic")


class DeploySpecError(ValueError):
    pass


def parse_deploy_spec(spec: str, default_context: int = 2048) -> Deployment:
    source, *pairs = [part.strip() for part in spec.split(",")]
    if not source:
        raise DeploySpecError(f"deploy spec {spec!r} names no model")
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DeploySpecError(f"in {spec!r}: expected key=value, got {pair!r}")
        options[key.strip()] = value.strip()
    engine = options.pop("engine", "synthetic" if source == "synthetic" else "llamacpp")
    if engine not in KNOWN_ENGINES:
        raise DeploySpecError(f"in {spec!r}: unknown engine {engine!r} ({KNOWN_ENGINES})")
    try:
        replicas = int(options.pop("replicas", "1"))
        context = int(options.pop("context", str(default_context)))
    except ValueError as exc:
        raise DeploySpecError(f"in {spec!r}: {exc}") from None
    if replicas < 0 or context < 1:
        raise DeploySpecError(f"in {spec!r}: replicas must be >= 0 and context >= 1")
    model_id = options.pop("id", "synthetic" if engine == "synthetic"
                           else default_model_id(source))
    if engine == "synthetic":
        memory = 64 * 2**20
    else:
        local = Path(source).expanduser()
        memory = estimate_memory_bytes(local if local.is_file() else None, context)
    return Deployment(
        deployment_id=f"dep_{model_id.replace('/', '_')}", model_id=model_id, engine=engine,
        source=source, context_length=context, replicas=replicas, memory_bytes=memory,
        args=options,
    )
