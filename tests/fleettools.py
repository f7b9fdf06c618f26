"""A whole fleet in separate OS processes, for integration tests.

NATS with per-node JWT auth (`wattpool nats init`), a fresh PostgreSQL database,
`wattpool server` replicas and `wattpool node join` nodes, all on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
import psutil
from sqlalchemy import create_engine, text

from natstools import NatsServer
from pooltools import WATTPOOL, free_port

PG_ADMIN_URL = os.environ.get("WATTPOOL_TEST_POSTGRES_ADMIN_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

FAST_FLEET_ENV = {
    "WATTPOOL_HEARTBEAT_INTERVAL_S": "0.5",
    "WATTPOOL_HEARTBEAT_TIMEOUT_S": "2",
    "WATTPOOL_RECONCILE_INTERVAL_S": "1",
    "WATTPOOL_RETRY_AFTER_S": "1",
    "WATTPOOL_ENGINE_RESTART_BACKOFF_S": "0.5",
}


def create_database() -> str:
    """A new empty PostgreSQL database; returns its SQLAlchemy URL."""
    name = f"wattpool_fleet_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class HostNatsServer(NatsServer):
    """nats-server listening on the address in its config (e.g. a test veth address)."""

    def __init__(self, host: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.host = host

    def command(self) -> list[str]:
        assert self.config is not None
        return [self.binary, "-c", str(self.config), "-l", str(self.log_path)]

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as conn:
                    if conn.recv(5) == b"INFO ":
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server not ready on {self.host}:{self.port}")


class Proc:
    """A wattpool command in its own process, logging to a file."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str],
                 prefix: Sequence[str] = ()) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [*prefix, *WATTPOOL, *args], stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={**os.environ, **env},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Fleet:
    def __init__(self, root: Path, nats_host: str = "127.0.0.1") -> None:
        self.root = root
        self.control_dir = root / "control"
        self.database_url = create_database()
        self.nats_port = free_port()
        self.nats_host = nats_host
        self.nats_url = f"nats://{nats_host}:{self.nats_port}"
        self.env = dict(FAST_FLEET_ENV)
        self.run_cli("nats", "init", "--data-dir", str(self.control_dir),
                     "--host", nats_host, "--port", str(self.nats_port))
        self.nats = HostNatsServer(nats_host, config=self.control_dir / "nats" /
                                   "nats-server.conf", port=self.nats_port)
        self.nats.start()
        self.servers: list[tuple[Proc, int]] = []
        self.nodes: dict[str, Proc] = {}

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*WATTPOOL, *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **self.env,
                                   "WATTPOOL_DATABASE_URL": self.database_url})
        if done.returncode != 0:
            raise AssertionError(f"wattpool {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def add_site(self, name: str, region: str = "us-tx") -> None:
        self.run_cli("sites", "add", name, "--region", region,
                     "--data-dir", str(self.control_dir))

    def token(self, site: str, ttl: str = "10m") -> str:
        out = self.run_cli("tokens", "create", "--site", site, "--ttl", ttl,
                           "--data-dir", str(self.control_dir))
        return out.stdout.strip()

    def start_server(self, *deploy: str, port: int | None = None,
                     env: dict[str, str] | None = None, open_access: bool = True,
                     extra: Sequence[str] = ()) -> tuple[Proc, int]:
        port = port or free_port()
        args = ["server", "--nats-url", self.nats_url, "--database-url", self.database_url,
                "--data-dir", str(self.control_dir), "--port", str(port), *extra,
                *(["--open"] if open_access else [])]
        for spec in deploy:
            args += ["--deploy", spec]
        proc = Proc(args, self.root / f"server-{port}.log", {**self.env, **(env or {})})
        self.servers.append((proc, port))
        wait_until(lambda: _answers(port), 60, f"server on {port}", proc)
        return proc, port

    def start_node(self, name: str, engines: str, token: str | None,
                   prefix: Sequence[str] = (), env: dict[str, str] | None = None) -> Proc:
        data_dir = self.root / "nodes" / name
        args = ["node", "join", "--nats", self.nats_url, "--engines", engines,
                "--name", name, "--data-dir", str(data_dir)]
        if token:
            args += ["--token", token]
        proc = Proc(args, self.root / f"node-{name}.log", {**self.env, **(env or {})}, prefix)
        self.nodes[name] = proc
        return proc

    def node_id(self, name: str) -> str:
        identity = self.root / "nodes" / name / "node" / "identity.json"
        wait_until(identity.exists, 60, f"{name} identity", self.nodes.get(name))
        return str(json.loads(identity.read_text())["node_id"])

    def status(self) -> dict:  # type: ignore[type-arg]
        out = self.run_cli("status", "--json", "--data-dir", str(self.control_dir))
        return json.loads(out.stdout)

    def serving_node(self, model: str, prompt: str, port: int) -> str:
        """The name of the node the pool would send this request to now (its router's
        own decision, asked through ``POST /admin/route``; ``--open`` pools only)."""
        import httpx

        reply = httpx.post(f"http://127.0.0.1:{port}/admin/route", timeout=10,
                           json={"model": model, "prompt": prompt})
        chosen = reply.json()["decision"]["chosen"]
        node_id = {i["id"]: i["node_id"] for i in self.status()["instances"]}[chosen]
        return {self.node_id(name): name for name in self.nodes}[node_id]

    def wait_ready_instances(self, count: int, timeout: float = 120) -> None:
        def ready() -> bool:
            return sum(i["state"] == "ready" for i in self.status()["instances"]) >= count
        wait_until(ready, timeout, f"{count} ready instances")

    def close(self) -> None:
        for proc in self.nodes.values():
            proc.stop()
        for proc, _ in self.servers:
            proc.stop()
        self.nats.stop()
        self.nats.cleanup()
        drop_database(self.database_url)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check, timeout: float, what: str, proc: Proc | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what}: process exited {proc.proc.returncode}:\n{proc.log()}")
        time.sleep(0.2)
    raise TimeoutError(f"{what} not reached within {timeout}s"
                       + (f"\n{proc.log()[-3000:]}" if proc else ""))


def engine_children(proc: Proc) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
