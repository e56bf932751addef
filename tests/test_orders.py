"""Readings into order updates: a threshold breach on a bound device."""

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
"""

T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z in ms
# Rule effects; shipment condition updates (one a minute) come on top
UPDATES = (
    "SELECT count(*) FROM ingestd.order_updates WHERE kind <> 'shipment_condition'"
)


async def _setup(d: Deployment) -> None:
    conn = await d.connect()
    await conn.execute(
        """
        INSERT INTO oms.orders (id, kind, product)
            VALUES ('SO-1', 'shipment', 'vaccines');
        INSERT INTO oms.device_bindings (device_id, order_id, valid_from, valid_to)
            VALUES ('trk-1', 'SO-1', '2024-05-01T00:00:00Z', '2024-05-02T00:00:00Z');
        INSERT INTO ingestd.rules (id, metric, op, threshold, kind)
            VALUES ('cold-chain', 'temp', '>', 8, 'cold_chain_breach');
        """
    )
    await conn.close()
    await asyncio.sleep(0.6)  # two refreshes of bindings and rules


async def _post(d: Deployment, device: str, series: list[float], start: int) -> None:
    client = await RawHttp.open(d.server.http_port)
    body = orjson.dumps(
        [{"ts": T0 + (start + i) * 1000, "temp": t} for i, t in enumerate(series)]
    )
    status, _, answer = await client.post(f"/v1/devices/{device}/telemetry", body)
    await client.close()
    assert status == 202, answer


async def test_orders_breach_and_recovery_once_each(deployment: Deployment) -> None:
    await _setup(deployment)
    listener = await deployment.connect()
    notified: list[str] = []
    await listener.add_listener(
        "ingestd_order_updates", lambda *args: notified.append(args[-1])
    )

    await _post(deployment, "trk-1", [5.0, 9.5, 10.0, 6.0], start=0)
    await _post(deployment, "trk-2", [12.0], start=0)  # not bound to an order

    async def updates() -> Any:
        rows = await deployment.fetch(
            "SELECT id, order_id, kind, payload, occurred_at "
            "FROM ingestd.order_updates WHERE kind <> 'shipment_condition' ORDER BY id"
        )
        return rows if len(rows) >= 2 else None

    rows = await wait_for(updates, timeout=10)
    assert rows is not None
    assert [(r["order_id"], r["kind"]) for r in rows] == [
        ("SO-1", "cold_chain_breach"), ("SO-1", "cold_chain_breach_recovered"),
    ]  # fmt: skip
    breach = orjson.loads(rows[0]["payload"])
    assert breach["value"] == 9.5 and breach["device"] == "trk-1"
    assert rows[0]["occurred_at"].timestamp() * 1000 == T0 + 1000
    await wait_for(lambda: _true(bool(notified)), timeout=5)
    newest = await deployment.fetchval("SELECT max(id) FROM ingestd.order_updates")
    assert notified[-1] == str(newest)

    # Redelivery of the same readings changes nothing
    await _post(deployment, "trk-1", [5.0, 9.5, 10.0, 6.0], start=0)
    await asyncio.sleep(1.0)
    assert await deployment.fetchval(UPDATES) == 2

    # Readings carry the order they belong to, stamped at ingest
    stamped = await deployment.fetch(
        "SELECT device_id, order_id FROM ingestd.readings "
        "WHERE device_id IN ('trk-1', 'trk-2') GROUP BY 1, 2 ORDER BY 1"
    )
    assert [tuple(r) for r in stamped] == [("trk-1", "SO-1"), ("trk-2", None)]
    await listener.close()


async def test_orders_open_breach_survives_restart(deployment: Deployment) -> None:
    # trk-1's breach is closed; open a new one, restart, continue the excursion
    await _post(deployment, "trk-1", [11.0], start=100)

    async def three() -> bool:
        return await deployment.fetchval(UPDATES) == 3

    assert await wait_for(three, timeout=5)
    await asyncio.to_thread(deployment.server.stop)
    await asyncio.to_thread(deployment.server.start)
    await _post(deployment, "trk-1", [12.0, 13.0], start=101)
    await asyncio.sleep(1.0)
    kinds = [
        r["kind"] for r in await deployment.fetch(
            "SELECT kind FROM ingestd.order_updates "
            "WHERE kind <> 'shipment_condition' ORDER BY id"
        )
    ]  # fmt: skip
    assert kinds == [
        "cold_chain_breach", "cold_chain_breach_recovered", "cold_chain_breach",
    ]  # fmt: skip


async def _true(value: bool) -> bool:
    return value
