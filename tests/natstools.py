"""A private `nats-server` for tests: free loopback port, temp log, clean stop.

    with NatsServer(max_payload=65536) as server:
        bus = await NatsBus.connect(server.url)

Without a `nats-server` binary the test is skipped, unless the environment sets
CI (then it fails: CI must run the NATS tests). Set NATS_SERVER_BIN to use a
binary that is not on PATH.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def nats_server_binary() -> str:
    """The nats-server executable, or skip (fail under CI) when there is none."""
    candidates = [os.environ.get("NATS_SERVER_BIN"), shutil.which("nats-server"),
                  "/usr/sbin/nats-server", "/usr/local/bin/nats-server"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    reason = "nats-server not found (install it or set NATS_SERVER_BIN)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server process on 127.0.0.1; ``restart()`` keeps the port."""

    def __init__(self, *, jetstream: bool = False, config: Path | None = None,
                 max_payload: int | None = None, port: int | None = None) -> None:
        self.binary = nats_server_binary()
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.workdir = Path(tempfile.mkdtemp(prefix="wattpool-nats-"))
        self.log_path = self.workdir / "nats-server.log"
        self.jetstream = jetstream
        self.config = self._write_config(config, max_payload)
        self.proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)  # a crashed test run must not leave a server behind

    def _write_config(self, config: Path | None, max_payload: int | None) -> Path | None:
        if max_payload is None:
            return config
        # nats-server has no command-line flag for max_payload: write a config file.
        text = config.read_text() if config is not None else ""
        path = self.workdir / "nats-server.conf"
        path.write_text(f"{text}\nmax_payload: {max_payload}\n")
        return path

    def command(self) -> list[str]:
        cmd = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-l", str(self.log_path)]
        if self.config is not None:
            cmd += ["-c", str(self.config)]
        if self.jetstream:
            cmd += ["-js", "-sd", str(self.workdir / "jetstream")]
        return cmd

    def start(self) -> NatsServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Wait for the server's INFO line: then it accepts clients."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                    if conn.recv(5) == b"INFO ":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server not ready within {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port (clients see a server restart)."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no nats-server log)"
        return "\n".join(text.splitlines()[-lines:])

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            print(f"--- nats-server log ({self.log_path}) ---\n{self.log_tail()}")
        self.cleanup()


def serve(*, jetstream: bool = False, config: Path | None = None,
          max_payload: int | None = None) -> Iterator[NatsServer]:
    """Body of a pytest fixture: ``yield from serve(max_payload=65536)``.

    The log tail is printed at teardown; pytest shows it only for failed tests.
    """
    server = NatsServer(jetstream=jetstream, config=config, max_payload=max_payload)
    try:
        server.start()
        yield server
    finally:
        print(f"--- nats-server log ({server.log_path}) ---\n{server.log_tail()}")
        server.cleanup()


class LazyNatsServer:
    """A server started on first use, for bus factories that take no arguments."""

    def __init__(self, *, jetstream: bool = False, max_payload: int | None = None) -> None:
        self.jetstream = jetstream
        self.max_payload = max_payload
        self.server: NatsServer | None = None

    def get(self) -> NatsServer:
        if self.server is None:
            self.server = NatsServer(jetstream=self.jetstream, max_payload=self.max_payload)
        return self.server.start()  # (re)starts it if it is not running

    def cleanup(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None
