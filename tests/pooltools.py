"""Helpers for tests that run wattpool as a real OS process (`wattpool up`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

WATTPOOL = [sys.executable, "-m", "wattpool.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PoolProcess:
    """`wattpool up` in a subprocess with its own data folder and port."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None,
                 auth: bool = False) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "wattpool-up.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "WATTPOOL_HEARTBEAT_INTERVAL_S": "0.5", **(env or {})}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*WATTPOOL, "up", "--port", str(self.port), "--data-dir", str(data_dir), *args,
             *([] if auth else ["--open"])],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wattpool up exited with {self.proc.returncode}:\n{self.log()}")
            try:
                ready = httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200
                # Ready also means the CLI told the user where to send requests.
                if ready and "wattpool is serving" in self.log():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"pool not ready within {timeout}s:\n{self.log()}")

    def printed_key(self, which: str = "API key") -> str:
        """A key `wattpool up` printed at first start (``API key`` or ``admin key``)."""
        for line in self.log().splitlines():
            if line.strip().startswith(f"{which}:"):
                return line.split(":", 1)[1].strip()
        raise AssertionError(f"no {which} in the output:\n{self.log()}")

    def engine_processes(self) -> list[psutil.Process]:
        """Engine subprocesses (llama.cpp or synthetic) of this pool."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [p for p in children if _is_engine(p)]

    def engine_port(self) -> int:
        (engine,) = self.engine_processes()
        args = engine.cmdline()
        return int(args[args.index("--port") + 1])

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


def _is_engine(p: psutil.Process) -> bool:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return "llama_cpp.server" in cmd or "wattpool.engines.synthetic_server" in cmd


def engine_pids_anywhere(data_dir: Path) -> list[int]:
    """Engine processes whose command line mentions this data folder or are orphans of it."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if ("llama_cpp.server" in cmd and str(data_dir) in cmd):
            found.append(p.info["pid"])
    return found
