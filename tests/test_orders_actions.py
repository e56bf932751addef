"""Each action against a real PostgreSQL: readings in, effect rows out.

Shipment condition and at-risk, a reroute on leaving the corridor, a
service ticket on vibration, downtime against the production order running,
stock levels and their reconciliation; redelivery and late data on top.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from .conftest import Deployment
from .http_client import RawHttp
from .mqtt_publisher import wait_for

SERVER_CONFIG = """
[orders]
bindings_refresh_s = 0.2
rules_refresh_s = 0.2
condition_every_s = 60
"""

T0 = 1_714_564_800  # 2024-05-01T12:00:00Z
T0_SQL = "'2024-05-01T12:00:00Z'::timestamptz"

CORRIDOR = [[50.0, 8.0], [50.0, 9.0]]  # east along 50° N, 2 km either side

SETUP = f"""
INSERT INTO oms.orders (id, kind, product) VALUES
    ('SO-1', 'shipment', 'vaccines'), ('SO-2', 'shipment', 'flowers'),
    ('SO-3', 'shipment', 'vaccines'), ('PO-1', 'production', 'pump shaft'),
    ('PO-2', 'production', 'valve body');
INSERT INTO oms.device_bindings
    (device_id, kind, order_id, order_line, sku, location, unit_weight,
     valid_from, valid_to) VALUES
    ('trk-1', 'shipment', 'SO-1', 'L1', NULL, NULL, NULL,
     {T0_SQL}, {T0_SQL} + interval '1 day'),
    ('trk-2', 'shipment', 'SO-2', NULL, NULL, NULL, NULL, '-infinity', 'infinity'),
    ('trk-3', 'shipment', 'SO-3', NULL, NULL, NULL, NULL, '-infinity', 'infinity'),
    ('mach-1', 'production', 'PO-1', NULL, NULL, NULL, NULL,
     {T0_SQL}, {T0_SQL} + interval '1 hour'),
    ('mach-1', 'production', 'PO-2', NULL, NULL, NULL, NULL,
     {T0_SQL} + interval '1 hour', 'infinity'),
    ('scale-1', 'stock', NULL, NULL, 'BOLT-M8', 'A-01', 0.5, '-infinity', 'infinity');
INSERT INTO oms.expected_stock (sku, location, expected_units)
    VALUES ('BOLT-M8', 'A-01', 20);
INSERT INTO ingestd.rules
    (id, metric, op, threshold, kind, rule_type, action, params, product) VALUES
    ('cold-chain', 'temp', '>', 8, 'cold_chain_breach', 'threshold',
     'shipment_condition', '{{"hysteresis": 0.5, "min_duration_s": 60}}', 'vaccines'),
    ('warming', 'temp', '>', 3, 'temp_rising', 'rate', 'order_update', '{{}}',
     'vaccines'),
    ('degree-min', 'temp', NULL, NULL, 'excursion_limit', 'excursion',
     'order_update', '{{"low": 2, "high": 8, "max_degree_minutes": 5}}', NULL),
    ('corridor', 'gps.lat', NULL, NULL, 'left_corridor', 'geofence', 'reroute',
     '{{"lon_metric": "gps.lon", "corridor": {CORRIDOR}, "width_m": 2000}}', NULL),
    ('shocks', 'shock', NULL, NULL, 'rough_handling', 'count',
     'shipment_condition', '{{"g": 4, "count": 2, "window_s": 60}}', NULL),
    ('vibration', 'vibration', '>', 7.1, 'bearing_vibration', 'threshold',
     'service_ticket', '{{"hysteresis": 0.5}}', NULL),
    ('machine-fault', 'state', NULL, NULL, 'machine_fault', 'state', 'downtime',
     '{{"states": ["fault", "stopped"]}}', NULL),
    ('shelf', 'weight', NULL, NULL, 'stock', 'stock', 'stock',
     '{{"settle_s": 10, "hysteresis": 0.2}}', NULL);
"""


async def _setup(d: Deployment) -> None:
    conn = await d.connect()
    await conn.execute(SETUP)
    await conn.close()
    await asyncio.sleep(0.6)  # two refreshes of bindings and rules


async def _post(d: Deployment, device: str, points: list[dict[str, Any]]) -> None:
    """``points`` carry ``t`` in seconds after T0; sent as one JSON array."""
    body = [
        {"ts": (T0 + p["t"]) * 1000, **{k: v for k, v in p.items() if k != "t"}}
        for p in points
    ]
    client = await RawHttp.open(d.server.http_port)
    status, _, answer = await client.post(
        f"/v1/devices/{device}/telemetry", orjson.dumps(body)
    )
    await client.close()
    assert status == 202, answer


async def _rows(d: Deployment, sql: str, count: int, *args: Any) -> list[Any]:
    """Wait until ``sql`` returns ``count`` rows, then a little longer for more."""

    async def enough() -> Any:
        rows = await d.fetch(sql, *args)
        return rows if len(rows) >= count else None

    await wait_for(enough, timeout=10)
    await asyncio.sleep(0.5)
    return await d.fetch(sql, *args)


def _at(seconds: float) -> float:
    return T0 + seconds


async def test_orders_setup(deployment: Deployment) -> None:
    await _setup(deployment)
    rules = await deployment.fetchval("SELECT count(*) FROM ingestd.rules")
    assert rules == 8


async def test_orders_shipment_condition_and_at_risk(deployment: Deployment) -> None:
    temps = [5.0, 5.0, 9.0, 9.2, 9.4, 7.8, 7.0]  # every 30 s
    points = [
        {"t": 30 * i, "temp": v, "gps": {"lat": 50.0, "lon": 8.1 + i / 100}}
        for i, v in enumerate(temps)
    ]
    await _post(deployment, "trk-1", points)
    rows = await _rows(
        deployment,
        "SELECT kind, payload, occurred_at, detected_at FROM ingestd.order_updates "
        "WHERE order_id = 'SO-1' ORDER BY occurred_at, id",
        5,
    )
    kinds = [(r["kind"], r["occurred_at"].timestamp()) for r in rows]
    # Breach from the first reading above 8 once it held 60 s; recovered at
    # the first reading at or under 7.5 (7.8 is inside the hysteresis band)
    assert ("cold_chain_breach", _at(60)) in kinds
    assert ("cold_chain_breach_recovered", _at(180)) in kinds
    assert ("temp_rising", _at(60)) in kinds  # 5 -> 9 in 30 s: 8 per minute
    assert ("temp_rising_recovered", _at(90)) in kinds
    assert not any(k == "excursion_limit" for k, _ in kinds)  # 1.8 degree-minutes
    breach = next(orjson.loads(r["payload"]) for r in rows
                  if r["kind"] == "cold_chain_breach")  # fmt: skip
    assert breach["at_risk"] is True and breach["order_line"] == "L1"
    conditions = [orjson.loads(r["payload"]) for r in rows
                  if r["kind"] == "shipment_condition"]  # fmt: skip
    assert conditions, kinds
    last = conditions[-1]
    assert last["values"]["temp"] == 7.0 and last["at_risk"] is True
    assert last["position"]["lat"] == 50.0 and last["position"]["lon"] == 8.16
    assert last["excursions"]["degree-min"]["degree_minutes"] == 1.8


async def test_orders_reroute_once_per_incident(deployment: Deployment) -> None:
    # Leaves the corridor (0.05° north = 5.6 km) for two fixes, comes back
    lats = [50.0, 50.005, 50.05, 50.06, 50.01, 50.0]
    points = [{"t": 10 * i, "gps": {"lat": v, "lon": 8.5}} for i, v in enumerate(lats)]
    await _post(deployment, "trk-2", points)
    sql = (
        "SELECT t.id, t.kind, t.reason, t.opened_at, t.closed_at, u.kind AS update "
        "FROM ingestd.service_tickets t JOIN ingestd.order_updates u "
        "ON u.ticket_id = t.id WHERE t.order_id = 'SO-2' ORDER BY u.id"
    )
    rows = await _rows(deployment, sql, 2)
    assert [r["update"] for r in rows] == ["reroute_requested", "reroute_closed"]
    ticket = rows[0]
    assert ticket["kind"] == "reroute" and ticket["reason"] == "left_corridor"
    assert ticket["opened_at"].timestamp() == _at(20)
    assert ticket["closed_at"].timestamp() == _at(40)

    # Redelivered, and replayed again: nothing new
    await _post(deployment, "trk-2", points)
    await _post(deployment, "trk-2", points[1:4])
    await asyncio.sleep(1.0)
    assert await deployment.fetch(sql) == rows


async def test_orders_vibration_ticket_per_incident(deployment: Deployment) -> None:
    series = [3.0, 8.0, 9.5, 6.8, 6.0, 3.0, 8.2]  # two incidents, every 10 s
    points = [{"t": 10 * i, "vibration": v} for i, v in enumerate(series)]
    await _post(deployment, "mach-1", points)
    sql = (
        "SELECT order_id, kind, reason, opened_at, closed_at, peak "
        "FROM ingestd.service_tickets WHERE device_id = 'mach-1' ORDER BY opened_at"
    )
    rows = await _rows(deployment, sql, 2)
    assert [(r["order_id"], r["kind"], r["reason"]) for r in rows] == [
        ("PO-1", "service", "bearing_vibration"),
    ] * 2  # fmt: skip
    first, second = rows
    assert first["opened_at"].timestamp() == _at(10)
    assert first["closed_at"].timestamp() == _at(40)  # 6.8 is inside the band
    assert first["peak"] == 9.5
    assert second["closed_at"] is None  # still vibrating
    updates = await deployment.fetch(
        "SELECT kind, ticket_id FROM ingestd.order_updates "
        "WHERE order_id = 'PO-1' AND ticket_id IS NOT NULL ORDER BY id"
    )
    assert [u["kind"] for u in updates] == [
        "service_ticket_opened", "service_ticket_closed", "service_ticket_opened",
    ]  # fmt: skip

    await _post(deployment, "mach-1", points)  # redelivery
    await asyncio.sleep(1.0)
    assert len(await deployment.fetch(sql)) == 2


async def test_orders_downtime_against_running_order(deployment: Deployment) -> None:
    # Fault during PO-1 (first hour), stopped during PO-2 (after it)
    points = [
        {"t": 100, "state": "running"}, {"t": 110, "state": "fault"},
        {"t": 120, "state": "fault"}, {"t": 170, "state": "running"},
        {"t": 3700, "state": "stopped"}, {"t": 3800, "state": "running"},
    ]  # fmt: skip
    await _post(deployment, "mach-1", points)
    sql = (
        "SELECT d.order_id, d.cause, d.started_at, d.ended_at, "
        "array_agg(u.kind ORDER BY u.id) AS updates "
        "FROM ingestd.downtime d JOIN ingestd.order_updates u ON u.downtime_id = d.id "
        "GROUP BY d.id ORDER BY d.started_at"
    )
    rows = await _rows(deployment, sql, 2)
    assert [
        (r["order_id"], r["cause"], r["started_at"].timestamp(),
         r["ended_at"].timestamp(), r["updates"])
        for r in rows
    ] == [
        ("PO-1", "fault", _at(110), _at(170), ["downtime_started", "downtime_ended"]),
        ("PO-2", "stopped", _at(3700), _at(3800),
         ["downtime_started", "downtime_ended"]),
    ]  # fmt: skip


async def test_orders_stock_levels_and_reconciliation(deployment: Deployment) -> None:
    weights = [
        (0, 10.0), (5, 10.01), (10, 10.02),  # 20 units
        (20, 12.0), (25, 10.0),  # a hand on the shelf
        (40, 8.5), (45, 8.51), (50, 8.49), (60, 8.5),  # 17 units
    ]  # fmt: skip
    await _post(deployment, "scale-1", [{"t": t, "weight": w} for t, w in weights])
    sql = (
        "SELECT s.units, s.measured_at, u.kind, u.order_id "
        "FROM ingestd.stock_levels s JOIN ingestd.order_updates u ON u.stock_id = s.id "
        "WHERE s.sku = 'BOLT-M8' AND s.location = 'A-01' ORDER BY s.measured_at"
    )
    rows = await _rows(deployment, sql, 2)
    assert [(r["units"], r["measured_at"].timestamp(), r["kind"], r["order_id"])
            for r in rows] == [
        (20, _at(0), "stock_level", None), (17, _at(40), "stock_level", None),
    ]  # fmt: skip
    recon = await deployment.fetch(
        "SELECT expected_units, measured_units, difference "
        "FROM ingestd.stock_reconciliation WHERE sku = 'BOLT-M8'"
    )
    assert [tuple(r) for r in recon] == [(20, 17, -3)]


async def test_orders_late_data_in_time_order(deployment: Deployment) -> None:
    # trk-3 sends its recent readings first, then an offline backlog from
    # before them, holding an excursion: 10 °C for 3 minutes = 6 degree-min
    recent = [{"t": 600 + 30 * i, "temp": 5.0} for i in range(4)]
    backlog = [{"t": 30 * i, "temp": 10.0 if 2 <= i < 8 else 5.0} for i in range(12)]
    await _post(deployment, "trk-3", recent)
    await asyncio.sleep(0.5)
    await _post(deployment, "trk-3", backlog)
    sql = (
        "SELECT kind, occurred_at, detected_at FROM ingestd.order_updates "
        "WHERE order_id = 'SO-3' AND kind <> 'shipment_condition' ORDER BY id"
    )
    rows = await _rows(deployment, sql, 3)
    found = [(r["kind"], r["occurred_at"].timestamp()) for r in rows]
    # Found late, reported at the time it happened, each exactly once:
    # 6 degree-minutes reached at t = 210 (the 5 before it from 60 to 210)
    assert sorted(found) == sorted([
        ("cold_chain_breach", _at(60)), ("cold_chain_breach_recovered", _at(240)),
        ("excursion_limit", _at(210)),
        ("temp_rising", _at(60)), ("temp_rising_recovered", _at(90)),
    ]), found  # fmt: skip
    for r in rows:
        assert r["detected_at"] > r["occurred_at"]
