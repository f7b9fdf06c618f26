"""Sites follow their power price: routing prefers cheap power, a site curtails when its
price crosses its threshold and comes back when it falls, curtailments survive a control
plane restart, and batch work waits for cheap power up to its deadline.

Texas's price comes from an HTTP JSON endpoint this test serves on loopback and changes
at will; New York's is a fixed schedule (50 per MWh all day).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from fleettools import Fleet, engine_children, wait_until

pytestmark = pytest.mark.slow
NEW_YORK_PRICE = 50.0
CURTAIL_ABOVE = 100.0
BATCH_CEILING = 45.0
BATCH_DEADLINE_S = 5.0


class PriceServer:
    """An HTTP JSON price feed: GET / -> {"price": <current>}."""

    def __init__(self, price: float) -> None:
        self.price = price
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"price": feed.price}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


SERVER_ENV = {"WATTPOOL_POWER_POLL_S": "0.3",
              "WATTPOOL_BATCH_PRICE_CEILING": str(BATCH_CEILING),
              "WATTPOOL_BATCH_QUEUE_TIMEOUT_S": str(BATCH_DEADLINE_S)}


@pytest.fixture
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, PriceServer]]:
    prices = PriceServer(40.0)
    f = Fleet(tmp_path_factory.mktemp("power"))
    try:
        control = str(f.control_dir)
        f.run_cli("sites", "add", "texas", "--region", "us-tx", "--data-dir", control,
                  "--price-url", prices.url, "--price-every", "1s",
                  "--curtail-above", str(CURTAIL_ABOVE), "--dr", "ercot-ers=10s")
        f.run_cli("sites", "add", "newyork", "--region", "us-ny", "--data-dir", control,
                  "--price-schedule", f"0={NEW_YORK_PRICE}")
        f.start_server("synthetic,replicas=2,tokens_per_s=50", env=SERVER_ENV)
        f.start_node("t1", "synthetic", f.token("texas"))
        f.start_node("n1", "synthetic", f.token("newyork"))
        f.wait_ready_instances(2, timeout=90)
        yield f, prices
    finally:
        f.close()
        prices.close()


def gateway(f: Fleet) -> str:
    return f"http://127.0.0.1:{f.servers[-1][1]}"


def served_by(f: Fleet, request_id: str) -> str:
    """The node that served a request, from its usage record (written in batches)."""
    engine = sa.create_engine(f.database_url)
    found: list[str] = []

    def written() -> bool:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT node_id FROM usage_records WHERE request_id = "
                                       ":r"), {"r": request_id}).first()
        if row is not None:
            found.append(row[0])
        return row is not None

    try:
        wait_until(written, 15, f"usage record of {request_id}")
    finally:
        engine.dispose()
    return found[0]


def complete(f: Fleet, **extra: Any) -> tuple[str, float]:
    client = openai.OpenAI(base_url=gateway(f) + "/v1", api_key="x", max_retries=0,
                           timeout=60)
    started = time.monotonic()
    raw = client.completions.with_raw_response.create(model="synthetic", prompt="p",
                                                      max_tokens=4, **extra)
    assert raw.parse().usage is not None
    return raw.headers["x-request-id"], time.monotonic() - started


def site(f: Fleet, name: str) -> dict[str, Any]:
    out = f.run_cli("sites", "show", name, "--json", "--data-dir", str(f.control_dir))
    return dict(json.loads(out.stdout))


def power_state(f: Fleet, node_id: str) -> str:
    nodes = httpx.get(gateway(f) + "/admin/nodes", timeout=10).json()["data"]
    return str({n["id"]: n for n in nodes}[node_id]["power_state"])


def test_routing_follows_price_and_price_curtails(setup: tuple[Fleet, PriceServer]) -> None:
    f, prices = setup
    texas, newyork = f.node_id("t1"), f.node_id("n1")
    wait_until(lambda: site(f, "texas")["price_now"] == 40.0, 10, "texas price read")

    # Both idle, Texas cheaper: the energy scorer sends work there, and says so.
    explained = httpx.post(gateway(f) + "/admin/route", json={"model": "synthetic"},
                           timeout=10).json()
    scores = explained["decision"]["scores"]
    chosen = explained["decision"]["chosen"]
    assert scores[chosen]["energy"] > min(s["energy"] for s in scores.values())
    shown = f.run_cli("route", "--model", "synthetic", "--prompt", "hello", "--explain",
                      "--url", gateway(f)).stdout
    assert f"chose {chosen}" in shown and "energy=" in shown and "weights:" in shown
    for _ in range(3):
        request_id, _ = complete(f)
        assert served_by(f, request_id) == texas
    prices.price = 60.0  # now New York (50) is the cheaper one
    time.sleep(2.5)  # the feed is polled every second, the watch every 0.3 s
    request_id, _ = complete(f)
    assert served_by(f, request_id) == newyork

    # Above the threshold: the leader curtails Texas on its own, with the ERS deadline.
    texas_engines = engine_children(f.nodes["t1"])
    prices.price = 180.0
    wait_until(lambda: site(f, "texas")["curtailed"], 15, "price curtailment")
    shown = site(f, "texas")
    assert shown["curtailments"][0]["cause"] == "price"
    assert shown["curtailments"][0]["within_s"] == 10.0
    wait_until(lambda: power_state(f, texas) == "curtailed", 15, "texas reports curtailed")
    wait_until(lambda: not any(p.is_running() for p in texas_engines), 15, "engine stopped")
    request_id, _ = complete(f)
    assert served_by(f, request_id) == newyork

    # The control plane restarts: Texas stays curtailed (the store remembers why).
    proc, port = f.servers.pop()
    proc.kill9()
    f.start_server("synthetic,replicas=2,tokens_per_s=50", port=port, env=SERVER_ENV)
    time.sleep(3)
    assert site(f, "texas")["curtailed"]
    wait_until(lambda: power_state(f, texas) == "curtailed", 15, "still curtailed")

    # The price falls below threshold minus hysteresis: Texas comes back by itself.
    prices.price = 30.0
    wait_until(lambda: not site(f, "texas")["curtailed"], 15, "curtailment ended")
    wait_until(lambda: power_state(f, texas) == "on", 20, "texas on again")
    f.wait_ready_instances(2, timeout=60)
    time.sleep(1)
    request_id, _ = complete(f)
    assert served_by(f, request_id) == texas


def test_batch_waits_for_cheap_power_up_to_its_deadline(
        setup: tuple[Fleet, PriceServer]) -> None:
    f, prices = setup
    texas, newyork = f.node_id("t1"), f.node_id("n1")
    prices.price = 80.0  # nobody at or under the batch ceiling (45); nobody curtailed
    wait_until(lambda: site(f, "texas")["price_now"] == 80.0, 10, "texas price read")
    time.sleep(1)

    # Interactive work does not wait.
    _, took = complete(f)
    assert took < 2.0

    # Batch work waits; when Texas turns cheap it runs there.
    result: dict[str, Any] = {}

    def batch() -> None:
        result["id"], result["took"] = complete(f, extra_body={"service_tier": "flex"})

    worker = threading.Thread(target=batch)
    worker.start()
    time.sleep(2.0)
    assert worker.is_alive(), "the batch request did not wait for cheap power"
    prices.price = 40.0
    worker.join(30)
    assert not worker.is_alive()
    assert 2.0 <= result["took"] < BATCH_DEADLINE_S
    assert served_by(f, result["id"]) == texas

    # No cheap power before the deadline: it runs anyway, on the cheapest there is.
    prices.price = 80.0
    wait_until(lambda: site(f, "texas")["price_now"] == 80.0, 10, "texas price read")
    time.sleep(1)
    request_id, took = complete(f, extra_body={"service_tier": "flex"})
    assert BATCH_DEADLINE_S - 0.5 <= took < BATCH_DEADLINE_S + 5
    assert served_by(f, request_id) == newyork
