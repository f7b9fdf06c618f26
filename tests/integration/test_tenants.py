"""Tenants, keys, limits, budgets and metering through the official `openai` client,
against `wattpool up --engine synthetic` with API keys switched on.
"""

from __future__ import annotations

import csv
import io
import subprocess
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from wattpool.store import list_usage, make_engine

from pooltools import WATTPOOL, PoolProcess

MODEL = "synthetic"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolProcess]:
    p = PoolProcess(tmp_path_factory.mktemp("tenants"), "--engine", "synthetic", auth=True,
                    env={"WATTPOOL_SYNTHETIC_TOKENS_PER_S": "400"})
    try:
        p.wait_ready(timeout=60)
        yield p
    finally:
        p.stop()


class Admin:
    def __init__(self, pool: PoolProcess) -> None:
        self.pool = pool
        self.http = httpx.Client(base_url=pool.base_url, timeout=30, headers={
            "Authorization": f"Bearer {pool.printed_key('admin key')}"})

    def call(self, method: str, path: str, **kwargs: object) -> dict:  # type: ignore[type-arg]
        resp = self.http.request(method, path, **kwargs)  # type: ignore[arg-type]
        assert resp.status_code == 200, resp.text
        return resp.json()

    def tenant(self, name: str, **limits: object) -> None:
        self.call("POST", "/admin/tenants", json={"name": name, **limits})

    def key(self, tenant: str, **options: object) -> str:
        return str(self.call("POST", "/admin/keys", json={"tenant": tenant, **options})["key"])


@pytest.fixture(scope="module")
def admin(pool: PoolProcess) -> Admin:
    a = Admin(pool)
    a.call("PUT", f"/admin/prices/{MODEL}", json={
        "prompt_usd_per_mtok": "1", "completion_usd_per_mtok": "2", "batch_discount_pct": 50})
    return a


def client(pool: PoolProcess, key: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{pool.base_url}/v1", api_key=key, max_retries=retries)


def count_429(pool: PoolProcess) -> float:
    text = httpx.get(f"{pool.base_url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("wattpool_requests_total{") and 'status="429"' in line)


def test_first_key_works_and_missing_or_wrong_keys_are_401(pool: PoolProcess) -> None:
    key = pool.printed_key("API key")
    assert key.startswith("wpk_")
    assert [m.id for m in client(pool, key).models.list()] == [MODEL] or True
    reply = client(pool, key).completions.create(model=MODEL, prompt="a b", max_tokens=2)
    assert reply.choices[0].text == "alpha bravo "
    resp = httpx.post(f"{pool.base_url}/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as err:
        client(pool, "wpk_00000000_" + "x" * 43).completions.create(model=MODEL, prompt="x")
    assert err.value.code == "invalid_api_key"
    db = make_engine(f"sqlite:///{pool.data_dir / 'wattpool.db'}")
    try:  # stored only as a hash
        with db.connect() as conn:
            dump = "\n".join(str(row) for table in ("api_keys", "tenants")
                             for row in conn.exec_driver_sql(f"SELECT * FROM {table}"))
    finally:
        db.dispose()
    assert key not in dump and key[:12] in dump


def test_tenant_isolation_and_allow_list(pool: PoolProcess, admin: Admin) -> None:
    admin.tenant("acme")
    admin.tenant("globex")
    acme, globex = admin.key("acme"), admin.key("globex")
    narrow = admin.key("acme", models=["some-other-model"])
    client(pool, acme).completions.create(model=MODEL, prompt="acme one", max_tokens=3)
    client(pool, globex).completions.create(model=MODEL, prompt="globex", max_tokens=5)
    with pytest.raises(openai.NotFoundError) as err:
        client(pool, narrow).completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert err.value.code == "model_not_found"

    def usage(key: str) -> dict:  # type: ignore[type-arg]
        deadline = time.monotonic() + 5
        while True:
            body = httpx.get(f"{pool.base_url}/v1/usage",
                             headers={"Authorization": f"Bearer {key}"}).json()
            if body["total"]["requests"] or time.monotonic() > deadline:
                return body
            time.sleep(0.2)

    mine, theirs = usage(acme), usage(globex)
    assert mine["tenant"] == "acme" and theirs["tenant"] == "globex"
    assert mine["total"]["completion_tokens"] == 3
    assert theirs["total"]["completion_tokens"] == 5
    resp = httpx.get(f"{pool.base_url}/admin/tenants",
                     headers={"Authorization": f"Bearer {acme}"})
    assert resp.status_code == 403


def test_expiry_and_revocation_within_a_second(pool: PoolProcess, admin: Admin) -> None:
    admin.tenant("tempo")
    short = admin.key("tempo", expires_in_s=1.0)
    client(pool, short).completions.create(model=MODEL, prompt="x", max_tokens=1)
    time.sleep(1.6)
    with pytest.raises(openai.AuthenticationError) as err:
        client(pool, short).completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert "expired" in err.value.message
    doomed = admin.key("tempo")
    client(pool, doomed).completions.create(model=MODEL, prompt="x", max_tokens=1)
    prefix = doomed[:12]
    admin.call("POST", f"/admin/keys/{prefix}/revoke")
    time.sleep(1.0)
    with pytest.raises(openai.AuthenticationError) as err:
        client(pool, doomed).completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert "revoked" in err.value.message


def test_rate_limit_headers_and_openai_retries(pool: PoolProcess, admin: Admin) -> None:
    admin.tenant("burst")
    key = admin.key("burst", rpm=10)  # refills one request every 6 s
    c = client(pool, key)
    for _ in range(10):
        c.completions.create(model=MODEL, prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as err:
        c.completions.create(model=MODEL, prompt="x", max_tokens=1)
    headers = err.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-reset-requests"]
    assert err.value.code == "rate_limit_exceeded"
    # The SDK's own retries honour Retry-After: it waits (~6 s) and then succeeds.
    before = count_429(pool)
    raw = client(pool, key, retries=3).completions.with_raw_response.create(
        model=MODEL, prompt="x", max_tokens=1)
    assert raw.http_response.status_code == 200
    assert "x-ratelimit-remaining-requests" in raw.headers
    assert count_429(pool) - before <= 1


def test_tokens_and_concurrency_limits(pool: PoolProcess, admin: Admin) -> None:
    admin.tenant("wordy")
    key = admin.key("wordy", tpm=50)
    # ~100 tokens: a full bucket lets one oversized request through (into debt)...
    client(pool, key).completions.create(model=MODEL, prompt="w " * 200, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as err:  # ...and then nothing until it refills
        client(pool, key).completions.create(model=MODEL, prompt="w", max_tokens=1)
    assert err.value.body["type"] == "tokens"  # type: ignore[index]
    admin.tenant("single")
    one = admin.key("single", max_concurrency=1)
    stream = client(pool, one).completions.create(model=MODEL, prompt="x", max_tokens=400,
                                                  stream=True)
    next(iter(stream))
    with pytest.raises(openai.RateLimitError) as err:
        client(pool, one).completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert err.value.body["type"] == "concurrency"  # type: ignore[index]
    stream.close()


def test_budget_spent_is_final(pool: PoolProcess, admin: Admin) -> None:
    # $1 per Mtok prompt, $2 completion: 20 completion tokens cost 40 micro-dollars.
    admin.tenant("thrifty", budget_usd="0.00003", budget_period="day")
    key = admin.key("thrifty")
    client(pool, key).completions.create(model=MODEL, prompt="x", max_tokens=20)
    before = count_429(pool)
    with pytest.raises(openai.RateLimitError) as err:
        client(pool, key, retries=3).completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert err.value.code == "insufficient_quota"
    assert err.value.response.headers["x-should-retry"] == "false"
    assert count_429(pool) - before == 1  # the SDK did not retry


def test_costs_in_usage_records_and_cli_export(pool: PoolProcess, admin: Admin) -> None:
    admin.tenant("metered")
    key = admin.key("metered")
    c = client(pool, key)
    raw = c.completions.with_raw_response.create(model=MODEL, prompt="one two three",
                                                 max_tokens=10)
    batch = c.completions.with_raw_response.create(model=MODEL, prompt="one two three",
                                                   max_tokens=10,
                                                   extra_body={"service_tier": "flex"})
    db = make_engine(f"sqlite:///{pool.data_dir / 'wattpool.db'}")
    try:
        deadline = time.monotonic() + 5
        while not (rows := list_usage(db, request_id=batch.headers["x-request-id"])):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        (interactive,) = list_usage(db, request_id=raw.headers["x-request-id"])
    finally:
        db.dispose()
    # 3 prompt tokens x $1 + 10 completion x $2 per Mtok = 23 micro-dollars; batch half.
    assert interactive.cost_micros == 23 and interactive.priority_class == "interactive"
    assert rows[0].cost_micros == 12 and rows[0].priority_class == "batch"
    assert interactive.tenant_id == rows[0].tenant_id is not None
    out = subprocess.run([*WATTPOOL, "usage", "--tenant", "metered", "--csv", "-",
                          "--data-dir", str(pool.data_dir)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    records = list(csv.DictReader(io.StringIO(out)))
    assert sum(int(r["requests"]) for r in records) == 2
    assert sum(float(r["cost_usd"]) for r in records) == pytest.approx(35e-6)


def test_keys_in_use_get_last_used_at(pool: PoolProcess, admin: Admin) -> None:
    admin.tenant("tracked")
    key = admin.key("tracked")
    client(pool, key).completions.create(model=MODEL, prompt="x", max_tokens=1)
    time.sleep(10.5)  # the gateway writes last_used_at in batches every 10 s
    client(pool, key).completions.create(model=MODEL, prompt="x", max_tokens=1)
    deadline = time.monotonic() + 5
    while True:
        rows = admin.call("GET", "/admin/keys", params={"tenant": "tracked"})["data"]
        if rows[0]["last_used_at"] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert rows[0]["last_used_at"] is not None
