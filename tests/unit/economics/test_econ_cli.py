"""`wattpool operators | payouts | invoice | economics` against a real SQLite store."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from wattpool import cli_economics
from wattpool.economics.prices import fixture_path
from wattpool.store import UsageRecord, insert_usage, make_engine, migrate, upsert_node
from wattpool.store.fleet import add_site
from wattpool.store.tenants import add_tenant

app = typer.Typer()
app.command("economics")(cli_economics.economics)
app.command("payouts")(cli_economics.payouts)
app.command("invoice")(cli_economics.invoice)
app.add_typer(cli_economics.operators_app, name="operators")
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = make_engine(url)
    migrate(engine)
    site = add_site(engine, "tx-1", "us-tx")
    upsert_node(engine, "n1", "n1", {}, "ready", None, site_id=site.id)
    tenant = add_tenant(engine, "globex")
    when = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    insert_usage(engine, [
        UsageRecord(request_id=f"r{i}", kind="chat", model_id="m", prompt_tokens=10,
                    completion_tokens=20, duration_ms=5.0, status="ok", http_status=200,
                    node_id="n1", ttft_ms=100.0 if i else 5_000.0, tenant_id=tenant.id,
                    cost_micros=1_000_000, created_at=when + timedelta(minutes=i))
        for i in range(3)])
    engine.dispose()
    return url


def test_operators_sync_payouts_and_invoice(db: str) -> None:
    period = f"{datetime.now(UTC):%Y-%m}"
    assert invoke("operators", "add", "acme", "--database-url", db)[0] == 0
    code, out = invoke("operators", "assign-site", "tx-1", "--operator", "acme",
                       "--database-url", db)
    assert code == 0 and "tx-1 -> acme" in out
    code, out = invoke("operators", "sync", "--window", "0h", "--database-url", db)
    assert code == 0 and "charged 3 request(s)" in out and "matured 3" in out
    code, out = invoke("operators", "list", "--database-url", db)
    assert code == 0 and "acme" in out and "1.875000" in out  # 750,000 + 750,000 + 375,000
    code, out = invoke("payouts", "--operator", "acme", "--period", period, "--csv", "-",
                       "--database-url", db)
    assert code == 0
    lines = {r["line"]: r["usd"] for r in csv.DictReader(io.StringIO(out)) if not r["node"]}
    assert lines["tenant charges on your nodes"] == "3.000000"
    assert lines["pool fee"] == "-0.600000" and lines["reserve"] == "-0.150000"
    assert lines["withheld: latency target missed"] == "-0.375000"
    assert lines["earned"] == "1.875000" and lines["payable at end"] == "1.875000"
    code, out = invoke("payouts", "--operator", "acme", "--period", period,
                       "--database-url", db)
    assert code == 0 and "statement of acme" in out and "by node" in out
    code, out = invoke("invoice", "--tenant", "globex", "--period", period, "--csv", "-",
                       "--database-url", db)
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and rows[1][2:] == ["m", "interactive", "3", "30", "60", "3.000000"]
    assert rows[-1][2:] == ["total", "", "", "", "", "3.000000"]


def test_statement_errors_are_plain(db: str) -> None:
    code, out = invoke("payouts", "--operator", "nobody", "--period", "2026-11",
                       "--database-url", db)
    assert code == 1 and "no operator named 'nobody'" in out
    code, out = invoke("payouts", "--operator", "x", "--period", "Nov", "--database-url", db)
    assert code == 2 and "use a month like 2026-11" in out
    code, out = invoke("invoice", "--tenant", "nobody", "--period", "2026-11",
                       "--database-url", db)
    assert code == 1 and "no tenant named 'nobody'" in out


def _bitcoin_dir(tmp_path: Path) -> Path:
    """Made-up series in the data set's format (see test_econ_data)."""
    folder = tmp_path / "btc"
    folder.mkdir()
    (folder / "minersrevenue.csv").write_text(
        "".join(f"{d:02d}/01/2020 00:00,15000000\n" for d in range(1, 32, 3)))
    (folder / "hashrate.csv").write_text(
        "".join(f"{d:02d}/01/2020 00:00,100000000\n" for d in range(1, 32, 3)))
    (folder / "efficiency.csv").write_text("Date,A\n01/06/2019,0.05\n")
    return folder


def test_economics_over_the_shipped_price_slice(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = invoke("economics", "--price-csv", str(fixture_path()), "--region",
                        "US-TEX-ERCO", "--start", "2020-01-02", "--end", "2020-01-04",
                        "--bitcoin-dir", str(_bitcoin_dir(tmp_path)), "--out", str(out),
                        "--no-plot")
    assert code == 0, text
    assert "192 x 15 min" in text and "50.0 J/TH" in text
    decisions = [json.loads(x) for x in (out / "decisions.jsonl").read_text().splitlines()]
    assert len(decisions) == 192
    first = decisions[0]
    assert first["inputs"]["start"] == "2020-01-02T00:00:00+00:00"
    assert first["inputs"]["mining"]["hashprice_usd_per_th_day"] == pytest.approx(0.15)
    assert {"mine", "infer", "choice", "margin_micros"} <= first.keys()
    assert not (out / "mine_or_infer.png").exists()


def test_economics_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    code, text = invoke("economics", "--price-csv", str(fixture_path()), "--start",
                        "2020-01-10", "--end", "2020-01-11", "--hashprice", "0.15",
                        "--asic-j-per-th", "45", "--out", str(out))
    assert code == 0, text
    assert (out / "mine_or_infer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_economics_needs_prices_and_bitcoin_inputs(tmp_path: Path, db: str) -> None:
    code, text = invoke("economics", "--hashprice", "0.1", "--asic-j-per-th", "50")
    assert code == 2 and "--price-csv" in text
    code, text = invoke("economics", "--price-csv", str(fixture_path()))
    assert code == 2 and "--bitcoin-dir or --hashprice" in text
    code, text = invoke("economics", "--site", "nowhere", "--database-url", db)
    assert code == 1 and "no site named 'nowhere'" in text
    code, text = invoke("economics", "--site", "tx-1", "--database-url", db,
                        "--hashprice", "0.1", "--asic-j-per-th", "50")
    assert code == 2 and "give the site a CSV price source" in text
    code, text = invoke("economics", "--site", "tx-1", "--database-url", db, "--price-csv",
                        str(fixture_path()), "--hashprice", "0.1", "--asic-j-per-th", "50",
                        "--start", "2020-01-05", "--end", "2020-01-06", "--no-plot",
                        "--out", str(tmp_path / "o"))
    assert code == 0 and "site tx-1 (us-tx)" in text


def test_economics_reads_the_sites_price_source_and_power_cap(tmp_path: Path, db: str) -> None:
    from wattpool.store.fleet import set_site_power

    engine = make_engine(db)
    set_site_power(engine, "tx-1", power_cap_kw=500.0,
                   price_source={"kind": "csv", "path": str(fixture_path())})
    engine.dispose()
    common = ["--hashprice", "0.1", "--asic-j-per-th", "50", "--start", "2020-01-05",
              "--end", "2020-01-06", "--no-plot"]

    def drawn(*extra: str) -> float:
        out = tmp_path / f"o{len(extra)}"
        code, text = invoke("economics", "--site", "tx-1", "--database-url", db,
                            "--out", str(out), *common, *extra)
        assert code == 0 and "site tx-1 (us-tx)" in text, text
        lines = (out / "decisions.jsonl").read_text().splitlines()
        assert len(lines) == 96  # no --price-csv: the site's own series was read
        return sum(json.loads(x)[json.loads(x)["choice"]]["energy_mwh"] for x in lines)

    at_cap = drawn()
    at_double = drawn("--site-kw", "1000")
    assert at_cap > 0 and at_double == pytest.approx(2 * at_cap)
