"""Cut the simulator's small fixtures out of ../shared/data and derive the GPU profiles.

    .venv/bin/python bench/make_sim_fixtures.py [--data ../shared/data]

Writes src/wattpool/sim/fixtures/{azure_conv.csv, azure_code.csv, sharegpt_lengths.csv,
prices_2023-08-07_week.csv, gpu_profiles.json, manifest.json}. The fixtures' README (the
attributions) is written by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wattpool.sim import derive
from wattpool.sim.data import FIXTURES, PRICE_WEEK_HOURS, PRICE_WEEK_START
from wattpool.sim.perf import dump_profiles

EVERY = 8  # keep one arrival in eight: the hour's shape at an eighth of the size
LENGTH_ROWS = 3000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2]
                        / "shared" / "data")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    args = parser.parse_args()
    root: Path = args.data
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    azure = root / "azure-llm-2023"
    n_conv = derive.write_trace_slice(azure / "AzureLLMInferenceTrace_conv.csv",
                                      out / "azure_conv.csv", EVERY)
    n_code = derive.write_trace_slice(azure / "AzureLLMInferenceTrace_code.csv",
                                      out / "azure_code.csv", EVERY)
    derive.write_lengths_slice(
        root / "request-length-samples" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
        out / "sharegpt_lengths.csv", LENGTH_ROWS)
    prices = f"prices_{PRICE_WEEK_START:%Y-%m-%d}_week.csv"
    derive.write_price_slice(root, out / prices)
    profiles = derive.derive_profiles(root)
    dump_profiles(profiles, out / "gpu_profiles.json",
                  "derived by wattpool.sim.derive.derive_profiles from ../shared/data; "
                  "see docs/simulator.md")
    manifest = {
        "azure_conv": {"file": "azure_conv.csv", "every": EVERY, "rows": n_conv},
        "azure_code": {"file": "azure_code.csv", "every": EVERY, "rows": n_code},
        "lengths": {"file": "sharegpt_lengths.csv", "rows": LENGTH_ROWS},
        "prices": {"file": prices, "start": PRICE_WEEK_START.isoformat(),
                   "hours": PRICE_WEEK_HOURS},
        "profiles": {"file": "gpu_profiles.json"},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for gpu, p in profiles.items():
        print(f"{gpu:10s} gpus={p.gpus} prefill={p.prefill_tps:8.1f} tok/s "
              f"tpot1={p.tpot_s * 1000:6.1f} ms slope={p.tpot_slope_s * 1000:6.3f} ms "
              f"kv={p.kv_tokens:7d} W idle/prefill/decode={p.watts_idle:.0f}/"
              f"{p.watts_prefill:.0f}/{p.watts_decode:.0f}")
    print(f"wrote {out}: conv {n_conv} rows, code {n_code} rows")


if __name__ == "__main__":
    main()
