"""Per-GPU-type performance of one model instance: prefill and decode speed, KV, watts.

One instance of the model runs on ``gpus`` GPUs of one type. The numbers come from
``derive.derive_profiles`` (measured data in ../shared/data; the method is in
docs/simulator.md) and ship as ``fixtures/gpu_profiles.json``.

The model of an instance, kept simple so that a request costs O(1) to simulate:
- prefill runs one request at a time at ``prefill_tps`` (it is compute bound);
- decode runs up to ``max_batch`` streams, each at ``tpot(b)`` seconds per token, where
  ``b`` is the batch when the stream starts decoding (fixed for the stream);
- a stream holds KV for its prompt and output; the sum must fit ``kv_tokens``;
- power: ``watts_prefill`` while prefilling, ``watts_decode`` shared by the batch, else idle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from wattpool.sim.data import FIXTURES


@dataclass(frozen=True, slots=True)
class GpuProfile:
    gpu: str  # e.g. "H100-80GB"
    model: str  # e.g. "llama-3-70b"
    gpus: int  # GPUs per instance
    gpu_memory_gb: float  # per GPU
    prefill_tps: float  # prompt tokens per second (one prefill at a time)
    tpot_s: float  # seconds per output token, batch of one
    tpot_slope_s: float  # extra seconds per token for each further stream in the batch
    max_batch: int  # decode slots
    kv_tokens: int  # KV cache capacity, tokens
    watts_idle: float  # per instance
    watts_prefill: float  # per instance, while prefilling
    watts_decode: float  # per instance, while decoding (shared by the batch)
    source: str = ""  # where the numbers come from

    def tpot(self, batch: int) -> float:
        return self.tpot_s + self.tpot_slope_s * max(batch - 1, 0)

    def request_seconds(self, prompt: float, output: float) -> float:
        """Instance time one request takes when the instance is saturated: its prefill
        (serial) plus its share of a full decode batch."""
        return prompt / self.prefill_tps + output * self.tpot(self.max_batch) / self.max_batch

    def capacity_rps(self, prompt: float, output: float) -> float:
        """Requests per second one instance sustains for these mean lengths."""
        return 1.0 / self.request_seconds(prompt, output)

    def watts_per_stream(self) -> float:
        """What the router is told one request draws: decode power over half the slots
        (a typical occupancy); the simulator's own energy accounting is exact."""
        return self.watts_decode / max(1.0, self.max_batch / 2)


def load_profiles(path: Path | None = None) -> dict[str, GpuProfile]:
    """GPU type -> profile from a JSON list (default: the shipped fixture)."""
    path = path or FIXTURES / "gpu_profiles.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    profiles = [GpuProfile(**entry) for entry in raw["profiles"]]
    return {p.gpu: p for p in profiles}


def dump_profiles(profiles: dict[str, GpuProfile], path: Path, note: str) -> None:
    body = {"note": note, "profiles": [asdict(p) for p in profiles.values()]}
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
