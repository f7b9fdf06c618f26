"""Deriving GPU profiles from ../shared/data, and cutting the small fixtures.

Run by ``bench/make_sim_fixtures.py``; the method is described, with its numbers, in
docs/simulator.md. The served model is a 70B Llama (FP16 on data-centre GPUs, Q4_K_M on
consumer GPUs, as ex-mining rigs would run it with llama.cpp).
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, timedelta
from pathlib import Path

import numpy as np

from wattpool.sim.data import (
    PRICE_WEEK_HOURS,
    PRICE_WEEK_START,
    read_price_file,
    read_trace,
)
from wattpool.sim.perf import GpuProfile
from wattpool.sim.regions import REGIONS

MODEL = "llama-3-70b"
KV_BYTES_PER_TOKEN = 80 * 8 * 128 * 2 * 2  # layers x KV heads x head dim x (K, V) x fp16
WEIGHTS_FP16_GB = 141.0  # 70.6e9 parameters x 2 bytes
WEIGHTS_Q4_GB = 42.5  # Q4_K_M file size of Llama-3-70B
RUNTIME_OVERHEAD = 0.10  # activations, CUDA graphs, fragmentation: share of GPU memory

# SplitwiseSim's per-GPU power constants (configs/power_model/constant.yaml, quoted in the
# data README): idle / prompt / token watts.
SPLITWISE_WATTS = {"a100-80gb": (63.0, 400.0, 250.0), "h100-80gb": (75.0, 700.0, 380.0)}


def _csv(path: Path) -> Iterable[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + s * (x - 1)."""
    slope, icept = np.polyfit(np.array(xs) - 1.0, np.array(ys), 1)
    return float(icept), float(slope)


def splitwise(root: Path, hardware: str, tp: int) -> tuple[float, float, float]:
    """(prefill tokens/s, tpot at batch 1 in s, extra s per stream) for llama2-70b."""
    prefill: list[float] = []
    by_batch: dict[int, list[float]] = defaultdict(list)
    for row in _csv(root / "splitwise-perf-model" / "perf_model.csv"):
        if row["model"] != "llama2-70b" or row["hardware"] != hardware:
            continue
        if int(row["tensor_parallel"]) != tp:
            continue
        batch, prompt = int(row["batch_size"]), int(row["prompt_size"])
        if batch == 1 and prompt >= 512:
            prefill.append(prompt / (float(row["prompt_time"]) / 1000.0))
        if prompt == 512 and batch <= 32:  # the 64 rows are inconsistent (shorter than 32)
            by_batch[batch].append(float(row["token_time"]) / 1000.0)
    xs = sorted(by_batch)
    tpot1, slope = _fit_line([float(b) for b in xs], [statistics.median(by_batch[b]) for b in xs])
    return statistics.median(prefill), tpot1, max(slope, 0.0)


def mlenergy_decode(root: Path, gpu: str, model: str, tp: int) -> tuple[float, float]:
    """(tpot at batch 1, slope) fitted to ML.ENERGY's measured TPOT against mean batch."""
    xs: list[float] = []
    ys: list[float] = []
    for row in _csv(root / "mlenergy-leaderboard-v2" / "llm_text_generation_runs.csv"):
        if row["task"] == "chat" and row["GPU"] == gpu and row["Model"] == model \
                and int(row["TP"]) == tp and float(row["Avg BS (reqs)"]) <= 128:
            xs.append(float(row["Avg BS (reqs)"]))
            ys.append(float(row["Avg TPOT (s)"]))
    tpot1, slope = _fit_line(xs, ys)
    return tpot1, max(slope, 0.0)


def llamacpp(root: Path, config: str) -> tuple[float, float]:
    """(generation tokens/s at batch 1, prompt tokens/s) for 70B Q4_K_M."""
    found: dict[str, float] = {}
    for row in _csv(root / "llamacpp-gpu-benchmarks" / "llama3_llamacpp_tokens_per_s.csv"):
        if row["gpu_config"] == config and row["model_quant"] == "70B Q4_K_M":
            found[row["metric"]] = float(row["tokens_per_s_or_OOM"])
    return found["generation_tg1024_tokens_per_s"], found["prompt_eval_pp1024_tokens_per_s"]


def epoch_tdp(root: Path, name: str) -> float:
    for row in _csv(root / "epoch-ml-hardware" / "ml_hardware.csv"):
        if row["Hardware name"] == name:
            return float(row["TDP (W)"])
    raise KeyError(name)


def kv_tokens(gpus: int, gpu_gb: float, weights_gb: float) -> int:
    free_gb = gpus * gpu_gb * (1.0 - RUNTIME_OVERHEAD) - weights_gb
    return max(0, int(free_gb * 1e9 / KV_BYTES_PER_TOKEN))


def derive_profiles(root: Path) -> dict[str, GpuProfile]:
    out: dict[str, GpuProfile] = {}
    for gpu, hw, epoch_name in (("H100-80GB", "h100-80gb", "NVIDIA H100 SXM5 80GB"),
                                ("A100-80GB", "a100-80gb", "NVIDIA A100 SXM4 80 GB")):
        pre, tpot1, slope = splitwise(root, hw, tp=4)
        idle, prompt_w, token_w = SPLITWISE_WATTS[hw]
        tdp = epoch_tdp(root, epoch_name)
        out[gpu] = GpuProfile(
            gpu, MODEL, 4, 80.0, round(pre, 1), round(tpot1, 5), round(slope, 6), 64,
            kv_tokens(4, 80.0, WEIGHTS_FP16_GB), 4 * idle, 4 * prompt_w, 4 * token_w,
            f"Splitwise llama2-70b {hw} TP4; SplitwiseSim watts; TDP {tdp:g} W",
        )
    # A100-40GB: ML.ENERGY measured decode (Llama-3.1-70B, TP8); prefill from Splitwise's
    # A100 at TP8 (same chip), watts as A100-80GB.
    tpot1, slope = mlenergy_decode(root, "NVIDIA A100-SXM4-40GB",
                                   "meta-llama/Meta-Llama-3.1-70B-Instruct", 8)
    pre, _, _ = splitwise(root, "a100-80gb", tp=8)
    idle, prompt_w, token_w = SPLITWISE_WATTS["a100-80gb"]
    out["A100-40GB"] = GpuProfile(
        "A100-40GB", MODEL, 8, 40.0, round(pre, 1), round(tpot1, 5), round(slope, 6), 64,
        kv_tokens(8, 40.0, WEIGHTS_FP16_GB), 8 * idle, 8 * prompt_w, 8 * token_w,
        "ML.ENERGY Llama-3.1-70B A100-SXM4-40GB TP8 decode; Splitwise a100 TP8 prefill",
    )
    # Consumer cards (llama.cpp, 70B Q4_K_M over 4 cards): measured batch-1 speeds; the
    # batch slope relative to batch-1 TPOT is taken from the A100 fit (decode is memory
    # bound on both); power scaled from TDP with the A100's idle/prompt/token ratios.
    _, a_tpot1, a_slope = splitwise(root, "a100-80gb", tp=4)
    rel_slope = a_slope / a_tpot1
    a_idle, a_prompt, a_token = SPLITWISE_WATTS["a100-80gb"]
    for gpu, config, epoch_name in (("RTX-4090", "4090 24GB * 4", "NVIDIA GeForce RTX 4090"),
                                    ("RTX-3090", "3090 24GB * 4", "NVIDIA GeForce RTX 3090")):
        tg, pp = llamacpp(root, config)
        tdp = epoch_tdp(root, epoch_name)
        tpot1 = 1.0 / tg
        out[gpu] = GpuProfile(
            gpu, MODEL, 4, 24.0, round(pp, 1), round(tpot1, 5), round(tpot1 * rel_slope, 6), 8,
            kv_tokens(4, 24.0, WEIGHTS_Q4_GB), round(4 * tdp * a_idle / 400.0, 1),
            round(4 * tdp * a_prompt / 400.0, 1), round(4 * tdp * a_token / 400.0, 1),
            f"llama.cpp 70B Q4_K_M '{config}'; slope ratio from Splitwise A100; TDP {tdp:g} W",
        )
    return out


# --- fixtures --------------------------------------------------------------------------

def write_trace_slice(src: Path, dst: Path, every: int) -> int:
    trace = read_trace(src)
    keep = np.arange(0, len(trace.t), every)
    with dst.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["t", "prompt", "output"])
        for i in keep:
            w.writerow([f"{trace.t[i]:.3f}", int(trace.prompt[i]), int(trace.output[i])])
    return len(keep)


def write_lengths_slice(src: Path, dst: Path, rows: int, seed: int = 7) -> None:
    prompt: list[str] = []
    output: list[str] = []
    for row in _csv(src):
        prompt.append(row["num_prefill_tokens"])
        output.append(row["num_decode_tokens"])
    pick = np.sort(np.random.default_rng(seed).choice(len(prompt), rows, replace=False))
    with dst.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["num_prefill_tokens", "num_decode_tokens"])
        for i in pick:
            w.writerow([prompt[i], output[i]])


def write_price_slice(root: Path, dst: Path) -> None:
    base = root / "greendcc-electricity-prices" / "processed"
    with dst.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["hour_utc", "region", "usd_per_mwh"])
        for region in REGIONS:
            path = base / region.name / f"{region.name}_electricity_prices_2023.csv"
            points = read_price_file(path, region.name)
            for h in range(PRICE_WEEK_HOURS):
                moment = PRICE_WEEK_START + timedelta(hours=h)
                if moment in points:
                    w.writerow([moment.astimezone(UTC).isoformat(), region.name,
                                f"{points[moment]:.2f}"])
