"""Engine crashes, seen from the client: mid-stream death, restart, service again.

Uses the synthetic engine's fault switch (it exits after N tokens) so the crash
happens at a known point; `wattpool up` runs as a real process.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from wattpool.store import list_instances, list_usage, make_engine

from pooltools import WATTPOOL, PoolProcess


@pytest.fixture
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolProcess]:
    p = PoolProcess(tmp_path_factory.mktemp("faults"), "--engine", "synthetic",
                    env={"WATTPOOL_ENGINE_RESTART_BACKOFF_S": "0.5"})
    try:
        p.wait_ready(timeout=60)
        yield p
    finally:
        p.stop()


def test_engine_dies_mid_stream_then_recovers(pool: PoolProcess) -> None:
    client = openai.OpenAI(base_url=f"{pool.base_url}/v1", api_key="x", max_retries=0)
    old_pid = pool.engine_processes()[0].pid
    engine = f"http://127.0.0.1:{pool.engine_port()}"
    httpx.post(f"{engine}/admin/faults", json={"die_after_tokens": 5}).raise_for_status()

    raw = client.completions.with_raw_response.create(
        model="synthetic", prompt="x", max_tokens=50, stream=True)
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in raw.parse():
            received.append(chunk.choices[0].text)
    assert 0 < len(received) <= 5
    assert "engine" in str(err.value.message)

    db = make_engine(f"sqlite:///{pool.data_dir / 'wattpool.db'}")
    try:
        deadline = time.monotonic() + 30
        while True:
            (inst,) = list_instances(db)
            if inst.state == "ready" and inst.restarts == 1:
                break
            assert time.monotonic() < deadline, inst
            time.sleep(0.1)
        (record,) = list_usage(db, request_id=raw.headers["x-request-id"])
        assert record.status == "error" and record.completion_tokens == len(received)
    finally:
        db.dispose()

    assert pool.engine_processes()[0].pid != old_pid
    reply = client.completions.create(model="synthetic", prompt="again", max_tokens=3)
    assert reply.choices[0].text == "alpha bravo charlie "



def test_port_in_use_fails_fast_and_clearly(tmp_path: Path, pool: PoolProcess) -> None:
    result = subprocess.run(
        [*WATTPOOL, "up", "--engine", "synthetic", "--port", str(pool.port),
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{pool.port}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
