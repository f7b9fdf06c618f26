"""Sites' power settings and curtailments in the store (SQLite; the same SQL runs on
PostgreSQL in the fleet tests)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from wattpool.store import fleet
from wattpool.store.fleet import DrCommitment, FleetError


def test_add_site_with_power_settings(sqlite_engine: Engine) -> None:
    source = {"kind": "schedule", "prices": {"0": 40.0}}
    site = fleet.add_site(sqlite_engine, "tx", "us-tx", power_cap_kw=500.0,
                          price_source=source, curtail_above=100.0,
                          dr_commitments=[DrCommitment("ers", 600.0)])
    assert (site.power_cap_kw, site.price_source, site.curtail_above) == (500.0, source, 100.0)
    assert fleet.get_site(sqlite_engine, "tx").dr_commitments == (DrCommitment("ers", 600.0),)


@pytest.mark.parametrize("bad", [{"power_cap_kw": 0.0},
                                 {"dr_commitments": [DrCommitment("ers", 0.0)]},
                                 {"dr_commitments": [DrCommitment(" ", 60.0)]}])
def test_refused_settings_add_no_site(sqlite_engine: Engine, bad: dict[str, object]) -> None:
    with pytest.raises(FleetError):
        fleet.add_site(sqlite_engine, "tx", "us-tx", **bad)
    assert fleet.list_sites(sqlite_engine) == []


def test_set_site_power_changes_only_what_is_given(sqlite_engine: Engine) -> None:
    fleet.add_site(sqlite_engine, "tx", "us-tx", power_cap_kw=500.0, curtail_above=100.0)
    site = fleet.set_site_power(sqlite_engine, "tx", curtail_above=120.0)
    assert (site.power_cap_kw, site.curtail_above) == (500.0, 120.0)
    site = fleet.set_site_power(sqlite_engine, "tx", power_cap_kw=None)
    assert (site.power_cap_kw, site.curtail_above) == (None, 120.0)
    with pytest.raises(FleetError, match="no site named"):
        fleet.set_site_power(sqlite_engine, "nowhere", curtail_above=1.0)


def test_one_open_curtailment_per_site(sqlite_engine: Engine) -> None:
    site = fleet.add_site(sqlite_engine, "tx", "us-tx")
    first = fleet.start_curtailment(sqlite_engine, site.id, "price", 60.0, "price high")
    again = fleet.start_curtailment(sqlite_engine, site.id, "signal", 10.0, "grid")
    assert again == first
    assert [c.id for c in fleet.active_curtailments(sqlite_engine)] == [first.id]
    assert fleet.end_curtailment(sqlite_engine, site.id) == 1
    assert fleet.end_curtailment(sqlite_engine, site.id) == 0
    assert fleet.active_curtailments(sqlite_engine) == []
    history = fleet.curtailment_history(sqlite_engine, site.id)
    assert len(history) == 1 and history[0].ended_at is not None
