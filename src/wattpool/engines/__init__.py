"""One adapter per inference engine. See base.EngineAdapter."""

from __future__ import annotations

from wattpool.engines.base import EngineAdapter, EngineCall, EngineRequestError


def get_adapter(name: str) -> EngineAdapter:
    """The adapter for an engine name, as used in InstanceSpec.engine."""
    if name == "llamacpp":
        from wattpool.engines.llamacpp import LlamaCppAdapter

        return LlamaCppAdapter()
    if name == "synthetic":
        from wattpool.engines.synthetic import SyntheticAdapter

        return SyntheticAdapter()
    raise ValueError(f"unknown engine {name!r}; known: llamacpp, synthetic")


__all__ = ["EngineAdapter", "EngineCall", "EngineRequestError", "get_adapter"]
