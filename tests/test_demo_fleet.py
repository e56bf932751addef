"""The demo's fleet and seeding against a real server: every kind of effect.

A short run of the same scenario ``make demo`` plays (``bench.fleet``
scripts, ``bench.demo.seed``: orders, bindings, expected stock, rules),
over MQTT to a private Mosquitto and a fresh database. Then the scripted
incidents must have had their effects, the look-alikes none, and the
demo's own counts (``bench.demo.count_effects``) must show all four kinds.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from bench import demo, fleet
from bench.load import MqttPublishers, drive, wait_committed

from .conftest import Deployment

RUN_S = 10.0
RATE = 1000.0  # readings/s: a message every 60 ms or so per device
DEVICES = 12  # 7 trackers, 3 machines, 2 scales: one of each script

SERVER_CONFIG = """
[orders]
bindings_refresh_s = 0.2
rules_refresh_s = 0.2
condition_every_s = 1.0
"""


def _one(devices: list[fleet.Device], id: str) -> Any:
    return next(d for d in devices if d.id == id)


async def _play(d: Deployment) -> list[fleet.Device]:
    """Seed, run the fleet for RUN_S and wait until its effects are written."""
    devices = fleet.build(DEVICES, "test", via="mqtt", scenario_s=RUN_S)
    conn = await d.connect()
    try:
        begins = datetime.now(timezone.utc) + timedelta(seconds=0.6)
        changeover = begins + timedelta(seconds=RUN_S / 2)
        await demo.seed(conn, devices, RUN_S, changeover)
        await asyncio.sleep(0.6)  # three refreshes of bindings and rules

        mqtt = MqttPublishers("127.0.0.1", d.broker_port, 2, 5, "demo-fleet-test")
        await mqtt.start()
        try:
            offered = await drive(devices, RATE, RUN_S, mqtt.send)
            assert await mqtt.drain(20.0)
        finally:
            await mqtt.stop()
        committed = await wait_committed(conn, "", offered.readings, quiet_s=5.0)
        assert committed == offered.readings
        await demo.settled(conn)
    finally:
        await conn.close()
    return devices


async def test_demo_fleet_shows_every_effect_kind(deployment: Deployment) -> None:
    devices = await _play(deployment)
    conn = await deployment.connect()
    try:
        counts = await demo.count_effects(conn)
    finally:
        await conn.close()
    assert counts.missing() == [], counts
    assert counts.downtime_on_schedule == sum(r["intervals"] for r in counts.downtime)

    # 1. Shipment condition: the reefer failure breaches and puts its order
    # at risk, then recovers; the door opening goes past the limit unpunished
    reefer = _one(devices, "tracker-0001")
    order = demo.shipment_order(reefer)
    assert demo.product_of(reefer) == ("vaccines", 8.0)
    rows = await deployment.fetch(
        "SELECT kind, payload FROM ingestd.order_updates WHERE order_id = $1 "
        "ORDER BY id",
        order,
    )
    kinds = [r["kind"] for r in rows]
    assert kinds.count("cold_chain_breach") == 1, kinds
    assert kinds.count("cold_chain_breach_recovered") == 1, kinds
    breach = orjson.loads(rows[kinds.index("cold_chain_breach")]["payload"])
    assert breach["at_risk"] is True and breach["value"] > 8.0
    conditions = [orjson.loads(r["payload"]) for r in rows
                  if r["kind"] == "shipment_condition"]  # fmt: skip
    assert conditions[-1]["at_risk"] is True
    assert "cold-chain-vaccines" in conditions[-1]["at_risk_rules"]
    assert all("position" in c for c in conditions), conditions

    door = _one(devices, "tracker-0004")
    product, limit = demo.product_of(door)
    hottest = await deployment.fetchval(
        "SELECT max(value_num) FROM ingestd.readings "
        "WHERE device_id = $1 AND metric = 'temperature'",
        door.id,
    )
    assert isinstance(hottest, float) and hottest > limit, (product, hottest)
    breaches = await deployment.fetchval(
        "SELECT count(*) FROM ingestd.order_updates "
        "WHERE order_id = $1 AND payload->>'state' = 'breach'",
        demo.shipment_order(door),
    )
    assert breaches == 0

    # 2. One reroute per incident (corridor, rough road), one service ticket
    # for the worn bearing; all closed once back to normal
    tickets = await deployment.fetch(
        "SELECT device_id, kind, reason, order_id, closed_at "
        "FROM ingestd.service_tickets ORDER BY device_id"
    )
    assert [(t["device_id"], t["kind"], t["reason"]) for t in tickets] == [
        ("machine-0001", "service", "bearing_vibration"),
        ("tracker-0002", "reroute", "left_corridor"),
        ("tracker-0003", "reroute", "rough_road"),
    ]
    assert all(t["closed_at"] is not None for t in tickets), tickets
    machine = _one(devices, "machine-0001")
    assert tickets[0]["order_id"] == demo.production_orders(machine)[0]

    # 3. Stock levels: each a count the shelf really held, never the weight
    # of a hand on the shelf; the reconciliation matches where the OMS booked
    # every pick, and shows the units nobody booked
    for number, scale in enumerate(("scale-0001", "scale-0002"), 1):
        shelf = _one(devices, scale)
        assert shelf.number == number
        levels = await deployment.fetch(
            "SELECT units FROM ingestd.stock_levels WHERE device_id = $1 "
            "ORDER BY measured_at",
            scale,
        )
        units = [r["units"] for r in levels]
        held = {shelf.units_at(at) for at, _taken in shelf.picks}
        assert units[0] == shelf.initial_units, units
        assert set(units) <= held | {shelf.initial_units}, (units, shelf.picks)
        assert units[-1] == shelf.units_at(1.0), (units, shelf.picks)
    blipped = _one(devices, "scale-0001")
    assert blipped.blips
    blips = await deployment.fetch(demo.BLIPS, blipped.id)
    weighed = blips[0]["readings"]
    assert weighed >= 1  # the hand was on the scale, and did not count
    recon = {
        r["sku"] + "@" + r["location"]: r["difference"]
        for r in await deployment.fetch(
            "SELECT sku, location, difference FROM ingestd.stock_reconciliation"
        )
    }
    shrunk = _one(devices, "scale-0002")
    assert recon == {
        f"{blipped.sku}@{blipped.location}": 0,
        f"{shrunk.sku}@{shrunk.location}": shrunk.units_at(1.0) - shrunk.expected_units,
    }
    assert recon[f"{shrunk.sku}@{shrunk.location}"] < 0

    # 4. Downtime with its cause against the order running at the time:
    # the stop in the first half, the faults in the second
    down = await deployment.fetch(
        "SELECT device_id, order_id, cause, ended_at FROM ingestd.downtime "
        "ORDER BY device_id"
    )
    machines = {d.id: demo.production_orders(d) for d in devices if d.kind == "machine"}
    assert [(r["device_id"], r["order_id"], r["cause"]) for r in down] == [
        ("machine-0001", machines["machine-0001"][1], "fault"),
        ("machine-0002", machines["machine-0002"][0], "stopped"),
        ("machine-0003", machines["machine-0003"][1], "fault"),
    ]
    assert all(r["ended_at"] is not None for r in down)
