from wattpool.policy.power import PricePoint, price_at, should_curtail

SERIES = [PricePoint(0, 30.0), PricePoint(3600, 120.0), PricePoint(7200, 96.0)]


def test_price_holds_until_the_next_point() -> None:
    assert price_at(SERIES, -1) is None
    assert price_at(SERIES, 0) == 30.0
    assert price_at(SERIES, 3599) == 30.0
    assert price_at(SERIES, 3600) == 120.0
    assert price_at(SERIES, 10_000) == 96.0


def test_curtail_above_threshold_with_hysteresis() -> None:
    assert not should_curtail(99.0, 100.0, curtailed_now=False)
    assert should_curtail(101.0, 100.0, curtailed_now=False)
    assert should_curtail(96.0, 100.0, curtailed_now=True)  # inside the band: stay off
    assert not should_curtail(94.0, 100.0, curtailed_now=True)
    assert not should_curtail(500.0, None, curtailed_now=False)  # no threshold set
    assert should_curtail(None, 100.0, curtailed_now=True)  # no price: keep state
