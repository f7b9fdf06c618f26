"""The servers a benchmark measures, each started as real OS processes on loopback.

* ``UpPool``: ``wattpool up --engine synthetic`` (gateway, control plane, in-process bus
  and node bridge in one process; the engine is its child process).
* ``NatsPool``: the many-machine shape on one machine: a private ``nats-server`` with
  JWT auth, a fresh PostgreSQL database, ``wattpool server`` and ``wattpool node join``.
* ``LiteLLMProxy``: the LiteLLM proxy from its own virtualenv (bench/litellm_setup.sh),
  pointed at an engine's URL.

Each knows the process ids whose CPU time counts as its overhead, and the engine it
forwards to, so a benchmark can also send the same load to that engine directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import psutil

WATTPOOL = [sys.executable, "-m", "wattpool.cli"]
# The synthetic engine with no think time: first token at once, no pacing between tokens
# (tokens_per_s must be > 0 in Settings; 1e9 is a nanosecond per token).
FAST_SYNTHETIC = {"ttft_s": "0", "tokens_per_s": "1e9"}
# The engine above has no capacity limit to speak of; the default of 4 slots per instance
# (sized for llama.cpp on a CPU) would queue requests in the gateway's admission, which is
# a capacity policy and not the overhead being measured.
BENCH_POOL_ENV = {"WATTPOOL_INSTANCE_SLOTS": "64"}
PG_ADMIN_URL = os.environ.get("WATTPOOL_BENCH_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def exit_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, ``kill``) unwind like Ctrl-C, so the ``finally`` that
    stops the started services runs and no server outlives the benchmark."""
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes (not of their children), in seconds."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               procs: Sequence[Proc] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{what}: {proc.name} exited {proc.popen.returncode}; "
                                   f"log {proc.log_path}:\n{proc.log()[-3000:]}")
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not within {timeout:.0f}s")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


class Proc:
    """One child process logging to a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self, marker: str) -> list[psutil.Process]:
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for kid in kids:
            with contextlib.suppress(psutil.Error):
                if marker in " ".join(kid.cmdline()):
                    found.append(kid)
        return found

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def engine_of(proc: Proc) -> tuple[int, str]:
    """(pid, OpenAI base URL) of the synthetic engine a wattpool process started."""
    (engine,) = proc.children("wattpool.engines.synthetic_server")
    args = engine.cmdline()
    return engine.pid, f"http://127.0.0.1:{args[args.index('--port') + 1]}/v1"


class Service:
    """A server under test: where to send load, and whose CPU time is its cost."""

    name = "service"
    base_url = ""
    model = "synthetic"

    def overhead_pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class DirectEngine(Service):
    """An engine some other service started, addressed directly (the baseline)."""

    def __init__(self, name: str, pid: int, base_url: str) -> None:
        self.name, self.pid, self.base_url = name, pid, base_url

    def overhead_pids(self) -> list[int]:
        return [self.pid]

    def stop(self) -> None:
        return None  # its owner stops it


class UpPool(Service):
    name = "wattpool-up"

    def __init__(self, workdir: Path, *, prefix: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        env = {"WATTPOOL_SYNTHETIC_TTFT_S": FAST_SYNTHETIC["ttft_s"],
               "WATTPOOL_SYNTHETIC_TOKENS_PER_S": FAST_SYNTHETIC["tokens_per_s"],
               **BENCH_POOL_ENV, **(env or {})}
        argv = [*(prefix or WATTPOOL), "up", "--engine", "synthetic", "--open",
                "--port", str(self.port), "--data-dir", str(workdir / "up")]
        self.proc = Proc("wattpool up", argv, workdir / "wattpool-up.log", env)
        try:
            wait_until(lambda: answers(f"http://127.0.0.1:{self.port}/readyz"), 120,
                       "wattpool up ready", [self.proc])
            self.engine_pid, self.engine_url = engine_of(self.proc)
        except BaseException:
            self.proc.stop()
            raise

    def overhead_pids(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        self.proc.stop()


class NatsPool(Service):
    """nats-server + PostgreSQL + `wattpool server` + `wattpool node join`."""

    name = "wattpool-nats"

    def __init__(self, workdir: Path, *, prefix: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        binary = os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server")
        if not binary:
            raise RuntimeError("nats-server not found (install it or set NATS_SERVER_BIN)")
        self.procs: list[Proc] = []
        self.database_url: str | None = None
        control = workdir / "nats-control"
        wattpool = list(prefix or WATTPOOL)
        try:
            self.database_url = create_database()
            env = {"WATTPOOL_DATABASE_URL": self.database_url, **BENCH_POOL_ENV, **(env or {})}
            nats_port, self.port = free_port(), free_port()
            nats_url = f"nats://127.0.0.1:{nats_port}"
            run_cli(["nats", "init", "--data-dir", str(control), "--host", "127.0.0.1",
                     "--port", str(nats_port)], env)
            self.nats = self._start("nats-server", [binary, "-c", str(control / "nats" /
                                    "nats-server.conf")], workdir / "nats-server.log")
            wait_until(lambda: _tcp_open(nats_port), 20, "nats-server", [self.nats])
            run_cli(["sites", "add", "bench", "--region", "us-tx", "--data-dir", str(control)],
                    env)
            token = run_cli(["tokens", "create", "--site", "bench", "--ttl", "1h",
                             "--data-dir", str(control)], env).strip()
            deploy = "synthetic," + ",".join(f"{k}={v}" for k, v in FAST_SYNTHETIC.items())
            self.server = self._start("wattpool server", [
                *wattpool, "server", "--nats-url", nats_url, "--data-dir", str(control),
                "--port", str(self.port), "--open", "--deploy", deploy], workdir /
                "wattpool-server.log", env)
            # The node's join needs a listening control plane: /healthz answers once it is.
            wait_until(lambda: answers(f"http://127.0.0.1:{self.port}/healthz"), 120,
                       "wattpool server up", self.procs)
            self.node = self._start("wattpool node", [
                *wattpool, "node", "join", "--nats", nats_url, "--engines", "synthetic",
                "--name", "bench-node", "--data-dir", str(workdir / "nats-node"),
                "--token", token], workdir / "wattpool-node.log", env)
            self.base_url = f"http://127.0.0.1:{self.port}/v1"
            wait_until(lambda: answers(f"http://127.0.0.1:{self.port}/readyz"), 120,
                       "wattpool server ready", self.procs)
            self.engine_pid, self.engine_url = engine_of(self.node)
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, argv: list[str], log: Path,
               env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, log, env)
        self.procs.append(proc)
        return proc

    def overhead_pids(self) -> list[int]:
        """The gateway (server) and the node bridge; nats-server is counted apart."""
        return [self.server.pid, self.node.pid]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self.database_url is not None:
            drop_database(self.database_url)
            self.database_url = None


class LiteLLMProxy(Service):
    name = "litellm"

    def __init__(self, workdir: Path, venv: Path, engine_url: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        config = workdir / "litellm.yaml"
        # JSON is YAML: one model, OpenAI-compatible, at the engine's URL; nothing else on.
        config.write_text(json.dumps({
            "model_list": [{"model_name": "synthetic", "litellm_params": {
                "model": "openai/synthetic", "api_base": engine_url, "api_key": "unused"}}],
            "litellm_settings": {"telemetry": False, "drop_params": True},
        }, indent=2))
        env = {
            # Never fetch the model price map from the internet; no telemetry.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR", "NO_PROXY": "127.0.0.1,localhost",
            # wattpool runs --open (no keys) in these benchmarks; so does LiteLLM.
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        }
        self.proc = Proc("litellm", [str(venv / "bin" / "litellm"), "--config", str(config),
                                     "--host", "127.0.0.1", "--port", str(self.port),
                                     "--num_workers", "1"], workdir / "litellm.log", env)
        try:
            wait_until(lambda: answers(f"http://127.0.0.1:{self.port}/health/liveliness"), 180,
                       "litellm proxy ready", [self.proc])
        except BaseException:
            self.proc.stop()
            raise

    def overhead_pids(self) -> list[int]:
        try:
            kids = [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            kids = []
        return [self.proc.pid, *kids]

    def stop(self) -> None:
        self.proc.stop()


def litellm_version(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m;"
                          "print(m.version('litellm'))"], capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip()


def run_cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([*WATTPOOL, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    if done.returncode != 0:
        raise RuntimeError(f"wattpool {' '.join(args)} exited {done.returncode}:\n"
                           f"{done.stdout}\n{done.stderr}")
    return done.stdout


def _tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1.0):
        return True
    return False


def create_database() -> str:
    from sqlalchemy import create_engine, text

    name = f"wattpool_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()
