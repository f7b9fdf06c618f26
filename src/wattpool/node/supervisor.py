"""Engine supervisor: one subprocess per instance, health-checked, restarted with backoff.

Each engine serves an OpenAI-compatible API on a free loopback port. The child is
asked (PR_SET_PDEATHSIG) to receive SIGTERM if the agent dies, so no engine is
left behind even when the agent is killed hard.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from wattpool.engines import EngineAdapter, get_adapter
from wattpool.node.engine_http import EngineTransport
from wattpool.protocol import InstanceSpec, InstanceState, InstanceStatus

log = logging.getLogger(__name__)
ENGINE_HOST = "127.0.0.1"  # engines listen on the node's loopback only

MAX_BACKOFF_S = 30.0
HEALTH_PERIOD_S = 5.0
HEALTH_FAILURES_BEFORE_RESTART = 3
STOP_GRACE_S = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ENGINE_HOST, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EngineInstance:
    """One supervised engine process serving one InstanceSpec."""

    def __init__(
        self,
        spec: InstanceSpec,
        data_dir: Path,
        threads: int | None,
        start_timeout_s: float,
        backoff_s: float,
        on_change: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.adapter: EngineAdapter = get_adapter(spec.engine)
        self.data_dir = data_dir
        self.threads = threads
        self.start_timeout_s = start_timeout_s
        self.base_backoff_s = backoff_s
        self.on_change = on_change
        self.state: InstanceState = "loading"
        self.error: str | None = None
        self.restarts = 0
        self.in_flight = 0
        self.port: int | None = None
        self.pid: int | None = None
        # The engine's HTTP: httpx's client for the odd call, and its transport, whose
        # post_stream the bridge uses for every inference (see node/engine_http.py).
        self.client: httpx.AsyncClient | None = None
        self.transport: EngineTransport | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{ENGINE_HOST}:{self.port}"

    def status(self) -> InstanceStatus:
        return InstanceStatus(
            instance_id=self.spec.instance_id,
            model_id=self.spec.model_id,
            state=self.state,
            in_flight=self.in_flight,
            restarts=self.restarts,
            context_length=self.spec.context_length,
            error=self.error,
        )

    def _set_state(self, state: InstanceState, error: str | None = None) -> None:
        if state != self.state or error != self.error:
            log.info("instance %s: %s -> %s%s", self.spec.instance_id, self.state, state,
                     f" ({error})" if error else "")
            self.state, self.error = state, error
            self.on_change()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        backoff = self.base_backoff_s
        log_dir = self.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        while True:
            self._set_state("loading")
            started = time.monotonic()
            try:
                reason = await self._run_once(log_dir / f"engine-{self.spec.instance_id}.log")
            except Exception as exc:
                log.exception("instance %s failed to start", self.spec.instance_id)
                reason = f"{type(exc).__name__}: {exc}"
            await self._close_client()
            self._set_state("failed", reason)
            self.restarts += 1
            # A run that stayed up a while resets the backoff.
            backoff = self.base_backoff_s if time.monotonic() - started > 60 else backoff
            log.warning("restarting %s in %.1fs", self.spec.instance_id, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _run_once(self, log_path: Path) -> str:
        model_path = await asyncio.to_thread(self.adapter.prepare, self.spec, self.data_dir)
        self.port = free_port()
        argv = self.adapter.command(self.spec, model_path, self.port, self.threads)
        with log_path.open("ab") as log_file:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.pid = self._proc.pid
        # No overall timeout: streams may be long; the bridge bounds silences itself.
        self.transport = EngineTransport()
        self.client = httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(None, connect=5.0),
            transport=self.transport,
        )
        if not await self._wait_healthy():
            if self._proc.returncode is None:
                await self._terminate()
                return f"engine not healthy within {self.start_timeout_s:.0f}s (log: {log_path})"
            code = self._proc.returncode
            return f"engine exited with code {code} while loading (log: {log_path})"
        self._set_state("ready")
        return await self._watch()

    async def _wait_healthy(self) -> bool:
        assert self._proc is not None and self.client is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                resp = await self.client.get(self.adapter.health_path, timeout=2.0)
                if resp.status_code == 200:
                    return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 0.2)
        return False

    async def _watch(self) -> str:
        """Wait until the engine dies or stops answering health checks."""
        assert self._proc is not None and self.client is not None
        failures = 0
        while True:
            try:
                code = await asyncio.wait_for(self._proc.wait(), HEALTH_PERIOD_S)
                return f"engine exited with code {code}"
            except TimeoutError:
                pass
            try:
                resp = await self.client.get(self.adapter.health_path, timeout=5.0)
                failures = 0 if resp.status_code == 200 else failures + 1
            except httpx.HTTPError:
                failures += 1
            if failures >= HEALTH_FAILURES_BEFORE_RESTART:
                await self._terminate()
                return f"engine failed {failures} health checks"

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _close_client(self) -> None:
        if self.client is not None:
            await self.client.aclose()  # closes the transport too
            self.client = None
            self.transport = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._terminate()
        await self._close_client()
        self.state = "stopped"


class Supervisor:
    """Keeps the set of running engines equal to the desired instances."""

    def __init__(
        self,
        data_dir: Path,
        threads: int | None,
        start_timeout_s: float,
        backoff_s: float,
        on_change: Callable[[], None],
    ) -> None:
        self.data_dir = data_dir
        self.threads = threads
        self.start_timeout_s = start_timeout_s
        self.backoff_s = backoff_s
        self.on_change = on_change
        self.instances: dict[str, EngineInstance] = {}

    def get(self, instance_id: str) -> EngineInstance | None:
        return self.instances.get(instance_id)

    async def apply(self, desired: Sequence[InstanceSpec]) -> None:
        wanted = {spec.instance_id: spec for spec in desired}
        for instance_id in list(self.instances):
            if instance_id not in wanted:
                log.info("stopping instance %s (no longer desired)", instance_id)
                await self.instances.pop(instance_id).stop()
                self.on_change()
        for instance_id, spec in wanted.items():
            if instance_id not in self.instances:
                inst = EngineInstance(
                    spec, self.data_dir, self.threads, self.start_timeout_s,
                    self.backoff_s, self.on_change,
                )
                self.instances[instance_id] = inst
                inst.start()
                self.on_change()

    def statuses(self) -> list[InstanceStatus]:
        return [inst.status() for inst in self.instances.values()]

    async def stop(self) -> None:
        await asyncio.gather(*(inst.stop() for inst in self.instances.values()))
        self.instances.clear()
