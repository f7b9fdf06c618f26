"""A node in its own network namespace that can reach only the NATS port on the host.

The namespace has one veth link to the host and an nftables firewall: nothing comes
in unless it answers a connection the node opened, and nothing goes out except TCP
to the NATS port. The node still joins and serves: it only ever dials out.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

import openai
import pytest

from fleettools import Fleet, engine_children

pytestmark = pytest.mark.slow


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


def namespaces_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (scripts/services.sh installs nftables)"
    probe = f"wpprobe{uuid.uuid4().hex[:6]}"
    try:
        sh("ip", "netns", "add", probe)
        sh("ip", "netns", "del", probe)
    except subprocess.CalledProcessError as exc:
        return f"cannot create a network namespace here: {exc.stderr.strip()}"
    return None


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """(namespace, host address, node address) on a private veth link made here."""
    reason = namespaces_unavailable()
    if reason:
        print(f"SKIP outbound-only test: {reason}")
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"wp{tag}", f"wph{tag}", f"wpn{tag}"
    subnet = random.randint(0, 250)
    host_ip, node_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{node_ip}/30", "dev", ns_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_ip, node_ip
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def firewall(ns: str, host_ip: str, nats_port: int) -> None:
    rules = f"""
table inet wattpool {{
  chain input {{
    type filter hook input priority 0; policy drop;
    iif "lo" accept
    ct state established,related accept
  }}
  chain output {{
    type filter hook output priority 0; policy drop;
    oif "lo" accept
    ct state established,related accept
    ip daddr {host_ip} tcp dport {nats_port} accept
  }}
}}
"""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True, capture_output=True, timeout=30)


def can_connect(host: str, port: int, ns: str | None = None) -> bool:
    if ns is None:
        try:
            with socket.create_connection((host, port), timeout=1.5):
                return True
        except OSError:
            return False
    code = ("import socket,sys\n"
            "try:\n"
            f"  socket.create_connection(('{host}', {port}), timeout=1.5); sys.exit(0)\n"
            "except OSError:\n  sys.exit(1)\n")
    return subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code],
                          timeout=30).returncode == 0


def test_node_behind_outbound_only_firewall_serves(
    netns: tuple[str, str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    ns, host_ip, node_ip = netns
    fleet = Fleet(tmp_path_factory.mktemp("netns"), nats_host=host_ip)
    try:
        firewall(ns, host_ip, fleet.nats_port)
        fleet.add_site("behind-nat")
        _, gateway_port = fleet.start_server("synthetic,replicas=1")
        node = fleet.start_node("inside", "synthetic", fleet.token("behind-nat"),
                                prefix=("ip", "netns", "exec", ns))
        fleet.wait_ready_instances(1, timeout=60)

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway_port}/v1", api_key="x",
                               max_retries=0)
        reply = client.completions.create(model="synthetic", prompt="hi", max_tokens=3)
        assert reply.choices[0].text == "alpha bravo charlie "

        # Outbound: only the NATS port. Inbound: nothing reaches the node.
        assert can_connect(host_ip, fleet.nats_port, ns)
        assert not can_connect(host_ip, gateway_port, ns)
        (engine,) = [p for p in engine_children(node) if "synthetic_server" in
                     " ".join(p.cmdline())]
        engine_port = int(engine.cmdline()[engine.cmdline().index("--port") + 1])
        assert not can_connect(node_ip, engine_port)
        assert can_connect("127.0.0.1", engine_port, ns)  # the engine is there, locally
    finally:
        fleet.close()
