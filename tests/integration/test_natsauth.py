"""Per-node NATS credentials against a real nats-server (decentralized JWT auth).

One nats-server per module, started on a free loopback port with the config that
``NatsAuthority.server_config`` renders; the clients are plain nats-py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import nkeys
import pytest
from nats.aio.client import Client, RawCredentials
from nats.aio.msg import Msg

from wattpool.control import natsauth
from wattpool.control.natsauth import NatsAuthority, creds_text, new_user_keypair

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
pytestmark = pytest.mark.skipif(not os.access(NATS_SERVER, os.X_OK),
                                reason="nats-server not installed")
QUIET = 0.3  # how long "nothing arrives" is watched for


# --- fixtures and helpers --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def authority() -> NatsAuthority:
    return NatsAuthority.create()


def _start_server(authority: NatsAuthority, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start nats-server with the authority's config; return once it accepts connections."""
    port = _free_port()
    (workdir / "nats.conf").write_text(authority.server_config(port))
    log = workdir / "nats.log"
    with log.open("w") as out:
        proc = subprocess.Popen([NATS_SERVER, "-c", str(workdir / "nats.conf")],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            pytest.fail(f"nats-server exited {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                _stop_server(proc)
                pytest.fail(f"nats-server did not listen:\n{log.read_text()}")
            time.sleep(0.05)


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(authority: NatsAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, port = _start_server(authority, tmp_path_factory.mktemp("nats"))
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        _stop_server(proc)


class Errors(list[str]):
    """Collects asynchronous errors (permission violations) a client reports."""

    async def cb(self, exc: Exception) -> None:
        self.append(str(exc).lower())

    def violations(self, kind: str, subject: str) -> list[str]:
        return [e for e in self if "permissions violation" in e and kind in e
                and subject.lower() in e]


async def _connect(url: str, creds: str | Path, errors: Errors | None = None,
                   **kwargs: object) -> Client:
    credentials = str(creds) if isinstance(creds, Path) else RawCredentials(creds)
    return await nats.connect(url, user_credentials=credentials,
                              error_cb=(errors if errors is not None else Errors()).cb,
                              allow_reconnect=False, connect_timeout=2, **kwargs)


async def _eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def _settle(nc: Client) -> None:
    """Return once the server has processed everything ``nc`` sent before.

    nats-py 2.16 writes flush()'s PING straight to the socket, ahead of commands still
    in its pending buffer (a SUB just made), so one flush can return before the server
    has seen the SUB. The first flush makes the flusher task write the buffer; the
    second PING then queues behind it.
    """
    await nc.flush()
    await nc.flush()


class Inbox:
    """A subscription that records what it receives."""

    def __init__(self) -> None:
        self.msgs: list[Msg] = []

    async def cb(self, msg: Msg) -> None:
        self.msgs.append(msg)

    @property
    def data(self) -> list[bytes]:
        return [m.data for m in self.msgs]


@pytest.fixture
async def service(server: str, authority: NatsAuthority) -> AsyncIterator[Client]:
    _, creds = authority.service_creds()
    nc = await _connect(server, creds)
    yield nc
    await nc.close()


@pytest.fixture
def node_a_creds(authority: NatsAuthority, tmp_path: Path) -> Path:
    """Node A's creds file, made the way a node does it: its own key pair, our JWT."""
    user_pub, seed = new_user_keypair()
    jwt = authority.node_jwt("A", user_pub)
    path = tmp_path / "node-A.creds"
    path.write_text(creds_text(jwt, seed))
    path.chmod(0o600)
    return path


@pytest.fixture
async def node_a(server: str, node_a_creds: Path) -> AsyncIterator[tuple[Client, Errors]]:
    errors = Errors()
    nc = await _connect(server, node_a_creds, errors, inbox_prefix="_INBOX.A")
    yield nc, errors
    await nc.close()


# --- keys, files, JWTs (no server) ---------------------------------------------------


def test_seed_encoding_matches_nkeys() -> None:
    for prefix in (natsauth.PREFIX_OPERATOR, natsauth.PREFIX_ACCOUNT, natsauth.PREFIX_USER):
        seed = natsauth.new_seed(prefix)
        role, raw = nkeys.decode_seed(seed.encode())
        assert role == prefix and len(raw) == 32
        assert natsauth.encode_seed(raw, prefix) == seed
        natsauth.check_public_key(natsauth.public_key(natsauth.keypair(seed)), prefix)
    user_pub, seed = new_user_keypair()
    assert user_pub.startswith("U") and seed.startswith("SU")
    with pytest.raises(ValueError):
        natsauth.check_public_key(user_pub[:-1] + ("A" if user_pub[-1] != "A" else "B"))


def test_jwt_shape(authority: NatsAuthority) -> None:
    user_pub, _ = new_user_keypair()
    token = authority.node_jwt("A", user_pub, expires_at=2_000_000_000)
    header = natsauth._unb64url(token.split(".")[0])
    assert header == b'{"typ":"JWT","alg":"ed25519-nkey"}'
    claims = natsauth.decode_jwt(token)
    assert claims["iss"] == authority.account_public_key and claims["sub"] == user_pub
    assert claims["exp"] == 2_000_000_000 and len(claims["jti"]) == 52
    nats_claims = claims["nats"]
    assert nats_claims["type"] == "user" and nats_claims["version"] == 2
    assert nats_claims["bearer_token"] is False
    assert nats_claims["pub"] == {"allow": ["wp.v1.hb.A", "wp.v1.join"]}
    assert nats_claims["resp"]["max"] == -1 and nats_claims["resp"]["ttl"] > 0
    with pytest.raises(ValueError):  # an account key is not a user key
        authority.user_jwt_for_public_key(authority.account_public_key, "x", [], [])


@pytest.mark.parametrize("bad", ["*", ">", "a.b", "", "a b", "B.>", "A\n"])
def test_node_ids_cannot_widen_permissions(bad: str) -> None:
    with pytest.raises(ValueError):
        natsauth.node_permissions(bad)
    with pytest.raises(ValueError):
        natsauth.joiner_permissions(bad)


def test_authority_file_is_private_and_round_trips(
    authority: NatsAuthority, tmp_path: Path,
) -> None:
    path = tmp_path / "secrets" / "nats-authority.json"
    authority.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    authority.save(path)  # overwriting tightens the mode again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = NatsAuthority.load(path)
    assert loaded == authority
    assert loaded.public_keys() == authority.public_keys()


def test_server_config_is_stable(authority: NatsAuthority) -> None:
    # nats-server reloads accounts but not a changed operator JWT, so rendering the
    # config twice must give the same text.
    config = authority.server_config(4222, extra="max_payload: 1MB")
    assert config == authority.server_config(4222, extra="max_payload: 1MB")
    assert "resolver: MEMORY" in config and "max_payload: 1MB" in config
    assert authority.operator_jwt() in config and authority.account_jwt() in config
    assert f'system_account: "{authority.system_account_public_key}"' in config


# --- against nats-server ---------------------------------------------------------------


async def test_service_user_can_pub_sub_anything(service: Client) -> None:
    inbox = Inbox()
    await service.subscribe(">", cb=inbox.cb)
    subjects = ["wp.v1.node.X.infer", "wp.v1.hb.Y", "_INBOX.Z.1", "anything.at.all"]
    for subject in subjects:
        await service.publish(subject, b"x")
    await _eventually(lambda: len(inbox.msgs) == len(subjects))
    assert [m.subject for m in inbox.msgs] == subjects


async def test_node_gets_its_requests_and_heartbeats(
    service: Client, node_a: tuple[Client, Errors],
) -> None:
    node, errors = node_a
    infer = Inbox()
    await node.subscribe("wp.v1.node.A.infer", cb=infer.cb)
    await _settle(node)
    await service.publish("wp.v1.node.A.infer", b"job")
    await _eventually(lambda: infer.data == [b"job"])

    beats = Inbox()

    async def control(msg: Msg) -> None:
        await beats.cb(msg)
        if msg.reply:
            await service.publish(msg.reply, b"desired:" + msg.data)

    await service.subscribe("wp.v1.hb.*", cb=control)
    await _settle(service)
    await node.publish("wp.v1.hb.A", b"beat")
    await _eventually(lambda: beats.data == [b"beat"])
    reply = await node.request("wp.v1.hb.A", b"beat2", timeout=2)
    assert reply.data == b"desired:beat2"
    assert beats.msgs[-1].reply.startswith("_INBOX.A.")
    assert errors == []


async def test_node_cannot_read_another_nodes_requests(
    service: Client, node_a: tuple[Client, Errors],
) -> None:
    node, errors = node_a
    stolen, own = Inbox(), Inbox()
    await node.subscribe("wp.v1.node.B.infer", cb=stolen.cb)
    await node.subscribe("wp.v1.node.A.infer", cb=own.cb)
    await _settle(node)
    await _eventually(lambda: bool(errors.violations("subscription", "wp.v1.node.B.infer")))
    await service.publish("wp.v1.node.B.infer", b"for B")
    await service.publish("wp.v1.node.A.infer", b"for A")
    await _eventually(lambda: own.data == [b"for A"])
    await asyncio.sleep(QUIET)
    assert stolen.msgs == []


async def test_node_cannot_heartbeat_as_another_node(
    service: Client, node_a: tuple[Client, Errors],
) -> None:
    node, errors = node_a
    beats = Inbox()
    await service.subscribe("wp.v1.hb.*", cb=beats.cb)
    await _settle(service)
    await node.publish("wp.v1.hb.B", b"spoofed")
    await node.publish("wp.v1.node.B.infer", b"injected")
    await node.publish("wp.v1.hb.A", b"honest")  # same connection: ordered after the above
    await _eventually(lambda: b"honest" in beats.data)
    await asyncio.sleep(QUIET)
    assert [m.subject for m in beats.msgs] == ["wp.v1.hb.A"]
    assert errors.violations("publish", "wp.v1.hb.B")
    assert errors.violations("publish", "wp.v1.node.B.infer")


async def test_node_streams_replies_to_the_request_inbox_only(
    service: Client, node_a: tuple[Client, Errors],
) -> None:
    node, errors = node_a

    async def engine(msg: Msg) -> None:
        for i in range(5):
            await node.publish(msg.reply, f"chunk{i}".encode())
        await node.publish("_INBOX.somebody.else", b"leak")  # an inbox it was not given

    await node.subscribe("wp.v1.node.A.infer", cb=engine)
    await _settle(node)
    inbox_subject = service.new_inbox()
    chunks, others = Inbox(), Inbox()
    await service.subscribe(inbox_subject, cb=chunks.cb)
    await service.subscribe("_INBOX.somebody.else", cb=others.cb)
    await service.publish("wp.v1.node.A.infer", b"stream please", reply=inbox_subject)
    await _eventually(lambda: len(chunks.msgs) == 5)
    assert chunks.data == [f"chunk{i}".encode() for i in range(5)]
    await _eventually(lambda: bool(errors.violations("publish", "_INBOX.somebody.else")))
    assert others.msgs == []


async def test_reply_permission_expires_after_response_ttl(
    server: str, service: Client, authority: NatsAuthority,
) -> None:
    short = dataclasses.replace(authority, response_ttl_s=1.0)  # same keys, short window
    _, creds = short.node_creds("A")
    errors = Errors()
    node = await _connect(server, creds, errors, inbox_prefix="_INBOX.A")
    try:
        async def slow_engine(msg: Msg) -> None:
            await node.publish(msg.reply, b"early")
            await asyncio.sleep(1.5)
            await node.publish(msg.reply, b"late")

        await node.subscribe("wp.v1.node.A.infer", cb=slow_engine)
        await _settle(node)
        inbox_subject = service.new_inbox()
        chunks = Inbox()
        await service.subscribe(inbox_subject, cb=chunks.cb)
        await service.publish("wp.v1.node.A.infer", b"x", reply=inbox_subject)
        await _eventually(lambda: bool(errors.violations("publish", inbox_subject)))
        await asyncio.sleep(0.1)
        assert chunks.data == [b"early"]
    finally:
        await node.close()


async def test_expired_user_jwt_is_refused(server: str, authority: NatsAuthority) -> None:
    _, creds = authority.node_creds("A", expires_at=int(time.time()) - 60)
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        nc = await _connect(server, creds, max_reconnect_attempts=0)
        await nc.close()


async def test_joiner_may_only_join(
    server: str, service: Client, authority: NatsAuthority,
) -> None:
    async def control(msg: Msg) -> None:
        await service.publish(msg.reply, b"welcome")

    await service.subscribe("wp.v1.join", cb=control)
    await _settle(service)
    _, creds = authority.joiner_creds("tok123", expires_at=int(time.time()) + 300)
    errors = Errors()
    joiner = await _connect(server, creds, errors, inbox_prefix="_INBOX.tok123")
    try:
        reply = await joiner.request("wp.v1.join", b"hello", timeout=2)
        assert reply.data == b"welcome"
        leaked = Inbox()
        await joiner.subscribe("wp.v1.hb.*", cb=leaked.cb)
        await joiner.subscribe("wp.v1.node.*.infer", cb=leaked.cb)
        await _settle(joiner)
        await _eventually(lambda: bool(errors.violations("subscription", "wp.v1.hb.*"))
                          and bool(errors.violations("subscription", "wp.v1.node.*.infer")))
        await service.publish("wp.v1.hb.N", b"x")
        await service.publish("wp.v1.node.N.infer", b"x")
        await asyncio.sleep(QUIET)
        assert leaked.msgs == []
    finally:
        await joiner.close()


async def test_account_rotation_by_config_reload(tmp_path: Path) -> None:
    old = NatsAuthority.create()
    proc, port = _start_server(old, tmp_path)
    url = f"nats://127.0.0.1:{port}"
    try:
        _, old_creds = old.service_creds()
        before = await _connect(url, old_creds)
        new = old.rotate_account()
        (tmp_path / "nats.conf").write_text(new.server_config(port))
        proc.send_signal(signal.SIGHUP)
        await _eventually(lambda: before.is_closed)  # old account removed on reload
        _, new_creds = new.service_creds()
        after = await _connect(url, new_creds)
        await after.close()
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
            await _connect(url, old_creds)
        assert "Reloaded server configuration" in (tmp_path / "nats.log").read_text()
    finally:
        _stop_server(proc)
