"""The order side of a load run: orders, bindings and one rule of each kind.

``python -m bench load --rules`` seeds the fresh database with this before
ingestd starts, in plain SQL as the OMS (orders, bindings, expected stock)
and an operator (rules) would, so the server loads it like any other:

- every tracker travels with its own shipment order (product ``chilled``),
  every machine runs its own production order, every shelf scale weighs
  one SKU at one location with the scale's true unit weight;
- eight rules, every rule type at least once, on the metrics the fleet
  sends (see ``fleet.py``): a cold-chain threshold with hysteresis and a
  minimum duration, a rate of warming, a degree-minute excursion, a
  geofence on the trucks' lane, a count of rough-road shocks, a bearing
  vibration threshold that opens service tickets, a stopped or faulted
  machine that starts downtime, and the shelf stock level.

The fleet runs time-lapse: a device's script fills ``scenario_s`` seconds
with what a day would hold (``fleet.py``). Durations are therefore given
as shares of that run, as the fleet's incidents are, so that each rule
fires on the scripted incidents and not on the look-alikes too brief to
count (an open door, a vibration spike, a hand on the shelf).
``effects`` counts what the rules wrote, read back after a run.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson

from . import fleet
from .fleet import Device, ShelfScale

PRODUCT = "chilled"


def rules(scenario_s: float) -> list[tuple[Any, ...]]:
    """Rows of ``ingestd.rules`` for a fleet whose scripts fill ``scenario_s``:
    (id, metric, op, threshold, kind, rule_type, action, params, product)."""
    s = scenario_s
    return [
        ("cold-chain", "temperature", ">", 8.0, "cold_chain_breach", "threshold",
         "shipment_condition", {"hysteresis": 0.5, "min_duration_s": 0.06 * s},
         PRODUCT),
        ("warming", "temperature", ">", 300.0, "temp_rising_fast", "rate",
         "order_update", {"hysteresis": 150.0, "min_duration_s": 0.01 * s}, None),
        ("degree-minutes", "temperature", None, None, "excursion_limit",
         "excursion", "shipment_condition",
         {"low": 2.0, "high": 8.0, "max_degree_minutes": 0.01 * s}, PRODUCT),
        ("corridor", "gps.lat", None, None, "left_corridor", "geofence", "reroute",
         {"lon_metric": "gps.lon", "corridor": fleet.LANE, "width_m": 1000,
          "hysteresis_m": 200}, None),
        ("rough-handling", "vibration_g", None, None, "rough_handling", "count",
         "shipment_condition", {"g": 0.8, "count": 5, "window_s": 0.05 * s}, None),
        ("bearing", "vibration_rms", ">", 7.1, "bearing_vibration", "threshold",
         "service_ticket", {"hysteresis": 0.5, "min_duration_s": 0.05 * s}, None),
        ("machine-down", "state", None, None, "machine_down", "state", "downtime",
         {"states": ["fault", "stopped"]}, None),
        ("shelf", "weight", None, None, "stock_level", "stock", "stock",
         {"settle_s": 0.03 * s, "hysteresis": 0.2}, None),
    ]  # fmt: skip


ORDER_OF = {"tracker": "shipment", "machine": "production"}

EFFECTS = """
SELECT (SELECT count(*) FROM ingestd.order_updates) AS outbox,
       (SELECT count(*) FROM ingestd.service_tickets) AS tickets,
       (SELECT count(*) FROM ingestd.downtime) AS downtime,
       (SELECT count(*) FROM ingestd.stock_levels) AS stock_levels
"""


def orders_and_bindings(
    devices: list[Device],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Orders, bindings (device, kind, order, line, sku, location, unit
    weight) and expected stock (sku, location, units) for ``devices``."""
    orders: list[tuple[Any, ...]] = []
    bindings: list[tuple[Any, ...]] = []
    expected: list[tuple[Any, ...]] = []
    for device in devices:
        if isinstance(device, ShelfScale):
            sku, place = device.sku, device.location
            bindings.append(
                (device.id, "stock", None, None, sku, place, device.unit_kg)
            )
            expected.append((sku, place, device.expected_units))
            continue
        kind = ORDER_OF[device.kind]
        order = f"{kind[:4].upper()}-{device.id}"
        product = PRODUCT if kind == "shipment" else "bearing-housing"
        orders.append((order, kind, product))
        line = "1" if kind == "shipment" else None
        bindings.append((device.id, kind, order, line, None, None, None))
    return orders, bindings, expected


async def seed(
    conn: asyncpg.Connection, devices: list[Device], scenario_s: float
) -> dict[str, int]:
    """Write orders, bindings, expected stock and the rules; counts."""
    orders, bindings, expected = orders_and_bindings(devices)
    rows = rules(scenario_s)
    # Bound from a day back: the first readings of the run are covered
    since = datetime.now(timezone.utc) - timedelta(days=1)
    await write_oms_rows(
        conn, orders, [(*b, since, None) for b in bindings], expected, rows
    )
    return {"orders": len(orders), "bindings": len(bindings), "rules": len(rows)}


async def write_oms_rows(
    conn: asyncpg.Connection,
    orders: list[tuple[Any, ...]],
    bindings: list[tuple[Any, ...]],
    expected: list[tuple[Any, ...]],
    rule_rows: list[tuple[Any, ...]],
) -> None:
    """Orders, bindings (device, kind, order, line, sku, location, unit
    weight, valid from, valid to; None for open), expected stock and rules,
    in one transaction, as an OMS and its operator would write them."""
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO oms.orders (id, kind, product) VALUES ($1, $2, $3)", orders
        )
        await conn.executemany(
            "INSERT INTO oms.device_bindings (device_id, kind, order_id, order_line,"
            " sku, location, unit_weight, valid_from, valid_to) VALUES ($1, $2, $3,"
            " $4, $5, $6, $7, coalesce($8::timestamptz, '-infinity'),"
            " coalesce($9::timestamptz, 'infinity'))",
            bindings,
        )
        await conn.executemany(
            "INSERT INTO oms.expected_stock (sku, location, expected_units) "
            "VALUES ($1, $2, $3)",
            expected,
        )
        await conn.executemany(
            "INSERT INTO ingestd.rules (id, metric, op, threshold, kind, rule_type,"
            " action, params, product) VALUES ($1, $2, $3, $4, $5, $6, $7,"
            " $8::jsonb, $9)",
            [(*r[:7], orjson.dumps(r[7]).decode(), r[8]) for r in rule_rows],
        )


async def effects(conn: asyncpg.Connection) -> dict[str, int]:
    """What the rules wrote: outbox rows and rows of each effect table."""
    row = await conn.fetchrow(EFFECTS)
    return {name: int(row[name]) for name in row.keys()}
