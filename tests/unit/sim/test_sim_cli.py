"""``wattpool sim`` end to end on a tiny fleet: the report, the plots, the table."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from wattpool.cli_sim import sim, sim_app


def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("sim")(sim)
    cli.command("noop")(lambda: None)  # two commands, so "sim" is a subcommand as in cli.py
    return cli


def test_sim_writes_a_report_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(app(), ["sim", "--sites", "12", "--duration", "60",
                                        "--policies", "round-robin,wattpool",
                                        "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"round-robin", "wattpool"}
    assert report["invariants"] == {"round-robin": [], "wattpool": []}
    assert report["fleet"]["sites"] == 12
    assert "goodput_vs_round_robin" in report["comparison"]
    for png in ("policies.png", "latency.png", "sites.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wattpool" in result.output and "goodput" in result.output


def test_sim_refuses_an_unknown_policy(tmp_path: Path) -> None:
    result = CliRunner().invoke(app(), ["sim", "--policies", "fastest", "--out",
                                        str(tmp_path)])
    assert result.exit_code != 0
    assert "unknown policy 'fastest'" in result.output


def test_sim_says_when_the_data_folder_is_missing(tmp_path: Path) -> None:
    result = CliRunner().invoke(app(), ["sim", "--data", str(tmp_path / "none"), "--out",
                                        str(tmp_path)])
    assert result.exit_code == 2
    assert "cannot read the data" in result.output


def test_the_sub_app_has_the_command() -> None:
    result = CliRunner().invoke(sim_app, ["sim", "--help"])
    assert result.exit_code == 0 and "--sites" in result.output


def test_sim_runs_split_over_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "split"
    result = CliRunner().invoke(app(), ["sim", "--sites", "24", "--duration", "60",
                                        "--policies", "wattpool", "--shards", "2",
                                        "--no-plots", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["invariants"] == {"wattpool": []}
    assert report["results"]["wattpool"]["requests"] > 0
