"""The load generator end to end: `wattpool bench` against `wattpool up --engine synthetic`.

A handful of requests, to prove the command, the runner and the report work against the
real gateway; nothing here asserts a time (benchmarks are scripts, see bench/).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from wattpool.benchtools import LoadSpec, run_load, summarize

from pooltools import WATTPOOL, PoolProcess

# No think time and no pacing, as in bench/overhead.py (tokens_per_s must be > 0 there).
FAST_ENGINE = {"WATTPOOL_SYNTHETIC_TTFT_S": "0", "WATTPOOL_SYNTHETIC_TOKENS_PER_S": "1e9"}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolProcess]:
    p = PoolProcess(tmp_path_factory.mktemp("bench-pool"), "--engine", "synthetic",
                    env=FAST_ENGINE)
    try:
        p.wait_ready(timeout=60)
        yield p
    finally:
        p.stop()


def test_bench_command_reports_json(pool: PoolProcess, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run(
        [*WATTPOOL, "bench", "--url", f"{pool.base_url}/v1", "--rate", "20", "--requests", "6",
         "--duration", "10", "--max-tokens", "16", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "time to first token" in done.stdout
    report = json.loads(out.read_text())
    assert report["requests"] == {"sent": 6, "ok": 6, "errors": 0, "error_kinds": {}}
    assert report["throughput"]["completion_tokens"] == 6 * 16
    assert report["latency_ms"]["ttft"]["count"] == 6
    assert report["latency_ms"]["e2e"]["count"] == 6


async def test_runner_closed_loop_whole_answers(pool: PoolProcess) -> None:
    spec = LoadSpec(base_url=f"{pool.base_url}/v1", model="synthetic", kind="completion",
                    stream=False, max_tokens=8, concurrency=2, max_requests=4,
                    max_duration_s=20)
    report = summarize(await run_load(spec))
    assert report["requests"]["ok"] == 4
    assert report["throughput"]["completion_tokens"] == 32
    assert report["latency_ms"]["itl"] is None  # whole answers have no token gaps


def test_bench_command_refuses_a_remote_target() -> None:
    done = subprocess.run([*WATTPOOL, "bench", "--url", "http://192.0.2.1:8000/v1",
                           "--rate", "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "loopback" in done.stderr
