"""Each rule kind's judgement on a series of readings, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from ingestd.orders.rules import BAD, GOOD, HOLD, Rule, RuleError, StockLevel

S = 1_000_000  # µs per second


def rule(rule_type: str, op: str | None = None, threshold: float | None = None,
         metric: str = "temp", action: str = "order_update",
         **params: Any) -> Rule:  # fmt: skip
    return Rule("r", metric, op, threshold, "k", rule_type, action, params, None)


def verdicts(r: Rule, series: list[tuple[int, Any]], metric: str = "temp") -> list:
    judge = r.judge()
    return [judge.step(metric, t * S, v) for t, v in series]


def test_judges_threshold_hysteresis() -> None:
    r = rule("threshold", ">", 8.0, hysteresis=0.5)
    series = [(0, 7.0), (1, 8.1), (2, 7.8), (3, 7.5), (4, 9.0)]
    assert verdicts(r, series) == [GOOD, BAD, HOLD, GOOD, BAD]
    low = rule("threshold", "<", 2.0, hysteresis=1.0)
    assert verdicts(low, [(0, 1.0), (1, 2.5), (2, 3.0)]) == [BAD, HOLD, GOOD]


def test_judges_rate_per_minute() -> None:
    r = rule("rate", ">", 2.0)  # rising faster than 2 units per minute
    judge = r.judge()
    assert judge.step("temp", 0, 4.0) is None  # nothing to compare with yet
    assert judge.step("temp", 30 * S, 4.5) == GOOD  # 1 per minute
    assert judge.step("temp", 60 * S, 6.0) == BAD  # 3 per minute
    assert judge.seen == pytest.approx(3.0)
    assert judge.step("temp", 60 * S, 9.0) is None  # same time: no rate


def test_judges_excursion_minutes_and_degree_minutes() -> None:
    r = rule("excursion", low=2.0, high=8.0, max_degree_minutes=10.0, max_gap_s=300)
    judge = r.judge()
    # 10 °C for 3 minutes: 2 degrees over for 3 min = 6 degree-minutes
    series = [(0, 10.0), (60, 10.0), (120, 10.0), (180, 5.0)]
    assert [judge.step("temp", t * S, v) for t, v in series] == [HOLD] * 4
    assert judge.summary() == {"minutes_out_of_range": 3.0, "degree_minutes": 6.0}
    # An hour's gap counts as max_gap_s: 5 min at 2 under = 10 degree-minutes
    assert judge.step("temp", 240 * S, 0.0) == HOLD
    assert judge.step("temp", 4040 * S, 4.0) == BAD
    assert judge.summary() == {"minutes_out_of_range": 8.0, "degree_minutes": 16.0}
    with pytest.raises(RuleError):
        rule("excursion", low=2.0).judge()


def test_judges_geofence_corridor_and_polygon() -> None:
    # A corridor along the equator, 1 km either side; 0.001° of latitude ≈ 111 m
    r = rule("geofence", metric="gps.lat", lon_metric="gps.lon",
             corridor=[[0.0, 0.0], [0.0, 1.0]], width_m=1000, hysteresis_m=100)  # fmt: skip
    judge = r.judge()
    fixes = [(0.0, 0.5), (0.0080, 0.6), (0.0085, 0.7), (0.02, 0.8), (0.0088, 0.9)]
    out = []
    for t, (lat, lon) in enumerate(fixes):
        assert judge.step("gps.lat", t * S, lat) is None  # waits for its lon
        out.append(judge.step("gps.lon", t * S, lon))
    assert out == [GOOD, GOOD, HOLD, BAD, HOLD]
    assert judge.summary() == {"position": {"lat": 0.0088, "lon": 0.9, "ts": 4 * S}}
    square = [[50.0, 8.0], [50.0, 9.0], [51.0, 9.0], [51.0, 8.0]]
    p = rule("geofence", metric="lat", lon_metric="lon", polygon=square).judge()
    p.step("lat", 0, 50.5)
    assert p.step("lon", 0, 8.5) == GOOD
    p.step("lat", S, 50.5)
    assert p.step("lon", S, 9.5) == BAD


def test_judges_count_shocks_in_window() -> None:
    r = rule("count", metric="shock", g=4.0, count=3, window_s=60)
    series = [(0, 5.0), (10, 1.0), (20, 6.0), (30, 4.0), (75, 0.5), (100, 0.2)]
    assert verdicts(r, series, "shock") == [HOLD, HOLD, HOLD, BAD, HOLD, GOOD]


def test_judges_state() -> None:
    r = rule("state", metric="state", action="downtime", states=["fault", "stopped"])
    series = [(0, "running"), (1, "fault"), (2, 3.0), (3, "idle")]
    assert verdicts(r, series, "state") == [GOOD, BAD, None, GOOD]


def test_judges_stock_debounced() -> None:
    r = rule("stock", metric="weight", action="stock", settle_s=10, hysteresis=0.2)
    judge = r.judge()
    assert isinstance(judge, StockLevel)
    judge.unit_weight = 0.5
    series = [
        (0, 10.0), (5, 10.01), (10, 10.02),  # 20 units, settled after 10 s
        (20, 12.0), (25, 10.0),  # a hand on the shelf for 5 s: no change
        (30, 9.74), (35, 9.76),  # noise within half a unit plus hysteresis
        (40, 8.5), (45, 8.5), (50, 8.49),  # 3 picked: 17 units once settled
    ]  # fmt: skip
    out = [judge.step("weight", t * S, v) for t, v in series]
    assert out == [HOLD, HOLD, BAD, HOLD, HOLD, HOLD, HOLD, HOLD, HOLD, BAD]
    assert (judge.level, judge.settled_at) == (17, 40 * S)


def test_judges_bad_rules_refused() -> None:
    with pytest.raises(RuleError):
        rule("threshold", None, None)
    with pytest.raises(RuleError):
        rule("geofence", metric="lat", corridor=[[0, 0], [1, 1]])  # no lon_metric
    with pytest.raises(RuleError):
        rule("stock", metric="weight")  # a stock rule must act on stock
