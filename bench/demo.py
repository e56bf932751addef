"""``make demo``: a simulated fleet changes orders; a summary counts how.

Starts everything on this machine: pgserver's PostgreSQL (data under
``.ingestd/demo-pg``, a fresh ``ingestd_demo`` database each run), a private
Mosquitto on a free port (or, when Mosquitto is not installed, the embedded
amqtt broker, which is fit for demos only), and ingestd.

Then it plays the OMS: it writes orders, binds devices to them and states
what it expects on the shelves, as SQL into the ``oms`` tables, and adds
the rules an operator would (``ingestd.rules``):

- each refrigerated tracker travels with its own shipment order, whose
  product has a cold-chain limit (vaccines 8 °C, ... fresh salad 5 °C):
  above it for long enough is a breach that marks the order at risk;
  vaccines also count degree-minutes; condition updates carry the values
  and the last position on the lane;
- leaving the lane's corridor, or a rough road shaking the cargo, asks the
  OMS for a reroute; a machine's bearing vibrating above the ISO 10816
  alarm level opens a service ticket; each closes when back to normal;
- each shelf scale weighs one SKU at one location (unit weight from the
  binding) and publishes stock levels once the weight settles, reconciled
  against ``oms.expected_stock``;
- each machine runs one production order in the first half of the run and
  the next in the second; a stop or a fault is downtime against the order
  running at the time, with its cause.

The fleet (``bench.fleet``) follows a script over ``--seconds`` that holds
each of these incidents, next to look-alikes too brief to count (a door
opened, a vibration spike, a hand on the shelf). The rules' durations are
shares of the run, as the fleet's are: a minute of demo stands for a day.
Trackers and machines post generic JSON and shelf scales SenML, most over
MQTT and a quarter over HTTP. One line shows progress. At the end:
readings, registry and send-to-commit latency, then every kind of effect
counted from the database, and SQL an OMS developer can run. PostgreSQL
keeps running so you can look around.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from . import fleet, harness, rule_set
from .load import (
    HttpPosters,
    LocalStack,
    MqttPublishers,
    Offered,
    drive,
    latencies_from_rows,
    percentiles,
    wait_committed,
)

DEMO_PG = harness.ROOT / ".ingestd" / "demo-pg"
DATABASE = "ingestd_demo"

# The OMS's products and their cold-chain limits (°C). Trackers take them
# in turn, shifted by one every ten, so reefer failures hit every product.
SHIPMENT_PRODUCTS = (
    ("vaccines", 8.0),
    ("insulin pens", 8.0),
    ("chilled dairy", 6.0),
    ("fresh salad", 5.0),
)
PARTS = ("gearbox housing", "pump shaft", "valve body")

# How long a condition must hold before it counts, in shares of the run,
# set between the fleet's look-alikes and its incidents
BREACH_AFTER = 0.12  # a door opening (fleet.DOOR_OPEN) and the cooling after
CORRIDOR_AFTER = 0.03  # fleet.DETOUR lasts 0.2
ROUGH_AFTER = 0.05  # fleet.ROUGH_ROAD lasts 0.2
TICKET_AFTER = 0.05  # spikes last at most fleet.SPIKE_MAX
DOWN_AFTER = 0.02  # fleet.STOPPED, fleet.FAULT last 0.15, 0.12
SETTLE = 0.05  # a hand on the shelf (fleet.HAND_ON_SHELF), picks fleet.SLOT apart
EXPOSURE_DEGREE_MINUTES = 0.5  # vaccines, per minute of run
CONDITION_EVERY = 1 / 6  # a shipment condition update per sixth of the run
REFRESH_S = 0.5  # the demo server rereads bindings and rules this often

PROGRESS = """
SELECT (SELECT count(*) FROM ingestd.readings),
       (SELECT count(*) FROM ingestd.devices WHERE status = 'online'),
       (SELECT count(*) FROM ingestd.dead_letters),
       (SELECT count(*) FROM ingestd.order_updates),
       (SELECT count(*) FROM ingestd.service_tickets),
       (SELECT count(*) FROM ingestd.stock_levels),
       (SELECT count(*) FROM ingestd.downtime)
"""

QUERIES_TO_TRY = [
    (
        "Consume the outbox as the OMS does (LISTEN ingestd_order_updates, "
        "then read by id):",
        "SELECT id, order_id, kind, payload, occurred_at, detected_at\n"
        "FROM ingestd.order_updates WHERE id > 0 ORDER BY id LIMIT 20;",
    ),
    (
        "Shipments at risk: their latest condition and position:",
        "SELECT DISTINCT ON (u.order_id) u.order_id, o.product,\n"
        "       u.payload->'values'->>'temperature' AS celsius,\n"
        "       u.payload->'position'->>'lat' AS lat,\n"
        "       u.payload->'position'->>'lon' AS lon,\n"
        "       u.payload->'at_risk_rules' AS why, u.occurred_at\n"
        "FROM ingestd.order_updates u JOIN oms.orders o ON o.id = u.order_id\n"
        "WHERE u.kind = 'shipment_condition' AND (u.payload->>'at_risk')::boolean\n"
        "ORDER BY u.order_id, u.id DESC;",
    ),
    (
        "Service tickets and reroute requests, one row per incident:",
        "SELECT kind, reason, order_id, device_id, opened_at,\n"
        "       closed_at - opened_at AS lasted, peak\n"
        "FROM ingestd.service_tickets ORDER BY opened_at;",
    ),
    (
        "Shelves where the scale disagrees with the OMS:",
        "SELECT sku, location, expected_units, measured_units, difference\n"
        "FROM ingestd.stock_reconciliation WHERE difference <> 0\n"
        "ORDER BY difference;",
    ),
    (
        "Downtime against the production order running at the time:",
        "SELECT d.order_id, o.product, d.device_id, d.cause, d.started_at,\n"
        "       d.ended_at - d.started_at AS lasted\n"
        "FROM ingestd.downtime d JOIN oms.orders o ON o.id = d.order_id\n"
        "ORDER BY d.started_at;",
    ),
    (
        "The temperature trace of a tracker that broke the cold chain:",
        "SELECT ts, value_num AS celsius, order_id, transport\n"
        "FROM ingestd.readings\n"
        "WHERE device_id = '{tracker}' AND metric = 'temperature'\n"
        "ORDER BY ts;",
    ),
]

# -- the effects, counted in the database ---------------------------------------

OUTBOX_KINDS = """
SELECT kind, count(*) AS rows, count(DISTINCT order_id) AS orders
FROM ingestd.order_updates GROUP BY 1 ORDER BY 1
"""

CONDITIONS = """
SELECT count(*) AS updates, count(DISTINCT order_id) AS shipments,
       count(*) FILTER (WHERE payload ? 'position') AS with_position,
       (SELECT count(DISTINCT order_id) FROM ingestd.order_updates
        WHERE (payload->>'at_risk')::boolean) AS at_risk
FROM ingestd.order_updates WHERE kind = 'shipment_condition'
"""

# Breaches that marked their order at risk, by the rule's kind
AT_RISK = """
SELECT kind, count(DISTINCT order_id) AS orders FROM ingestd.order_updates
WHERE payload->>'state' = 'breach' AND (payload->>'at_risk')::boolean
GROUP BY 1 ORDER BY 1
"""

# Shipments whose readings went past their product's limit, yet never long
# enough (the rule's minimum duration) for that rule to breach
BRIEF_EXCURSIONS = """
SELECT count(DISTINCT o.id)
FROM ingestd.rules ru
JOIN oms.orders o ON o.product = ru.product
JOIN ingestd.readings r ON r.order_id = o.id AND r.metric = ru.metric
WHERE ru.rule_type = 'threshold' AND ru.action = 'shipment_condition'
  AND ru.op = '>' AND r.value_num > ru.threshold
  AND NOT EXISTS (SELECT 1 FROM ingestd.order_updates u
                  WHERE u.order_id = o.id AND u.payload->>'rule' = ru.id)
"""

TICKETS = """
SELECT t.kind, t.reason, ru.rule_type, ru.metric, count(*) AS opened,
       count(t.closed_at) AS closed, max(t.peak) AS peak,
       count(DISTINCT t.order_id) AS orders
FROM ingestd.service_tickets t LEFT JOIN ingestd.rules ru ON ru.id = t.rule_id
GROUP BY 1, 2, 3, 4 ORDER BY 1, 2
"""

# Readings past a service-ticket rule's limit outside every ticket of that
# rule and device: spikes too brief to open one
BRIEF_SPIKES = """
SELECT count(*) AS readings, count(DISTINCT r.device_id) AS devices
FROM ingestd.rules ru
JOIN ingestd.readings r ON r.metric = ru.metric AND r.order_id IS NOT NULL
WHERE ru.action = 'service_ticket' AND ru.rule_type = 'threshold'
  AND ru.op = '>' AND r.value_num > ru.threshold
  AND NOT EXISTS (SELECT 1 FROM ingestd.service_tickets t
                  WHERE t.rule_id = ru.id AND t.device_id = r.device_id
                    AND r.ts >= t.opened_at
                    AND r.ts < coalesce(t.closed_at, 'infinity'))
"""

STOCK = """
SELECT count(*) AS updates, count(DISTINCT device_id) AS scales,
       count(DISTINCT (sku, location)) AS places
FROM ingestd.stock_levels
"""

RECONCILIATION = """
SELECT count(*) AS places,
       count(*) FILTER (WHERE difference = 0) AS matching,
       count(*) FILTER (WHERE difference <> 0) AS differing,
       coalesce(sum(difference), 0) AS net,
       count(*) FILTER (WHERE measured_units IS NULL) AS unmeasured
FROM ingestd.stock_reconciliation
"""

# Weight readings whose unit count is neither the level published before
# them nor the next one: a hand or a box on the shelf for a moment, never
# counted. $1 limits it to one scale (NULL: all).
BLIPS = """
SELECT count(*) AS readings, count(DISTINCT r.device_id) AS scales
FROM ingestd.readings r
JOIN oms.device_bindings b ON b.device_id = r.device_id AND b.kind = 'stock'
CROSS JOIN LATERAL (
    SELECT units FROM ingestd.stock_levels s
    WHERE s.device_id = r.device_id AND s.measured_at <= r.ts
    ORDER BY s.measured_at DESC LIMIT 1) before
LEFT JOIN LATERAL (
    SELECT units FROM ingestd.stock_levels s
    WHERE s.device_id = r.device_id AND s.measured_at > r.ts
    ORDER BY s.measured_at LIMIT 1) after ON true
WHERE r.metric = 'weight' AND ($1::text IS NULL OR r.device_id = $1)
  AND round(r.value_num / b.unit_weight)
      NOT IN (before.units, coalesce(after.units, before.units))
"""

DOWNTIME = """
SELECT cause, count(*) AS intervals, count(ended_at) AS ended,
       count(DISTINCT order_id) AS orders,
       coalesce(sum(extract(epoch FROM ended_at - started_at)), 0)::float8 / 60
           AS minutes
FROM ingestd.downtime GROUP BY 1 ORDER BY 1
"""

# Intervals reported against the production order whose binding window
# holds the moment the machine stopped
DOWNTIME_ON_SCHEDULE = """
SELECT count(*) FROM ingestd.downtime d
WHERE EXISTS (SELECT 1 FROM oms.device_bindings b
              WHERE b.device_id = d.device_id AND b.order_id = d.order_id
                AND b.kind = 'production'
                AND d.started_at >= b.valid_from AND d.started_at < b.valid_to)
"""


@dataclass
class EffectCounts:
    """Every kind of effect the readings had, as the database holds it."""

    outbox: list[asyncpg.Record]  # kind, rows, orders
    conditions: asyncpg.Record  # updates, shipments, with_position, at_risk
    at_risk: list[asyncpg.Record]  # kind, orders
    brief_excursions: int
    tickets: list[asyncpg.Record]  # kind, reason, rule_type, metric, opened, ...
    brief_spikes: asyncpg.Record  # readings, devices
    stock: asyncpg.Record  # updates, scales, places
    reconciliation: asyncpg.Record  # places, matching, differing, net, unmeasured
    blips: asyncpg.Record  # readings, scales
    downtime: list[asyncpg.Record]  # cause, intervals, ended, orders, minutes
    downtime_on_schedule: int

    def closed(self, kind: str) -> int:
        return sum(r["closed"] for r in self.tickets if r["kind"] == kind)

    def missing(self) -> list[str]:
        """The kinds of effect the run did not show."""
        shown = {
            "shipment condition with an order at risk": (
                self.conditions["updates"] and self.conditions["at_risk"]
            ),
            "a service ticket opened and closed": self.closed("service"),
            "a reroute requested and closed": self.closed("reroute"),
            "stock levels reconciled": (
                self.stock["updates"] and self.reconciliation["places"]
            ),
            "downtime against a production order": self.downtime_on_schedule,
        }
        return [name for name, seen in shown.items() if not seen]


async def count_effects(conn: asyncpg.Connection) -> EffectCounts:
    """Count each kind of effect in the database (the summary prints these)."""
    return EffectCounts(
        outbox=await conn.fetch(OUTBOX_KINDS),
        conditions=await conn.fetchrow(CONDITIONS),
        at_risk=await conn.fetch(AT_RISK),
        brief_excursions=await conn.fetchval(BRIEF_EXCURSIONS),
        tickets=await conn.fetch(TICKETS),
        brief_spikes=await conn.fetchrow(BRIEF_SPIKES),
        stock=await conn.fetchrow(STOCK),
        reconciliation=await conn.fetchrow(RECONCILIATION),
        blips=await conn.fetchrow(BLIPS, None),
        downtime=await conn.fetch(DOWNTIME),
        downtime_on_schedule=await conn.fetchval(DOWNTIME_ON_SCHEDULE),
    )


# -- the OMS's side and the operator's rules ------------------------------------


def shipment_order(tracker: fleet.Device) -> str:
    return f"SO-{10000 + tracker.number}"


def production_orders(machine: fleet.Device) -> tuple[str, str]:
    """The order a machine runs in the first half of the run, and the next."""
    return f"PO-{19999 + 2 * machine.number}", f"PO-{20000 + 2 * machine.number}"


def product_of(tracker: fleet.Device) -> tuple[str, float]:
    """The product a tracker's shipment carries, and its cold-chain limit."""
    n = tracker.number - 1
    return SHIPMENT_PRODUCTS[(n + n // 10) % len(SHIPMENT_PRODUCTS)]


def rules(seconds: float) -> list[tuple[Any, ...]]:
    """The operator's rules for a run of ``seconds``.

    Rows of (id, metric, op, threshold, kind, rule_type, action, params,
    product); schemas/oms-tables.md explains each column.
    """
    rows: list[tuple[Any, ...]] = []
    for product, limit in SHIPMENT_PRODUCTS:
        rows.append((
            f"cold-chain-{product.replace(' ', '-')}", "temperature", ">", limit,
            "cold_chain_breach", "threshold", "shipment_condition",
            {"hysteresis": 0.5, "min_duration_s": BREACH_AFTER * seconds},
            product,
        ))  # fmt: skip
    corridor = {
        "lon_metric": "gps.lon", "corridor": fleet.LANE, "width_m": 2000.0,
        "hysteresis_m": 300.0, "min_duration_s": CORRIDOR_AFTER * seconds,
    }  # fmt: skip
    exposure = {
        "low": 2.0, "high": 8.0,
        "max_degree_minutes": EXPOSURE_DEGREE_MINUTES * seconds / 60,
    }  # fmt: skip
    rows += [
        ("vaccine-exposure", "temperature", None, None, "exposure_limit",
         "excursion", "shipment_condition", exposure, "vaccines"),
        ("lane-corridor", "gps.lat", None, None, "left_corridor", "geofence",
         "reroute", corridor, None),
        ("rough-road", "vibration_g", ">", 0.8, "rough_road", "threshold",
         "reroute", {"hysteresis": 0.2, "min_duration_s": ROUGH_AFTER * seconds},
         None),
        ("bearing-vibration", "vibration_rms", ">", 7.1, "bearing_vibration",
         "threshold", "service_ticket",
         {"hysteresis": 0.5, "min_duration_s": TICKET_AFTER * seconds}, None),
        ("machine-down", "state", None, None, "machine_down", "state", "downtime",
         {"states": ["stopped", "fault"], "min_duration_s": DOWN_AFTER * seconds},
         None),
        ("shelf-stock", "weight", None, None, "stock_level", "stock", "stock",
         {"settle_s": SETTLE * seconds, "hysteresis": 0.2}, None),
    ]  # fmt: skip
    return rows


async def seed(
    conn: asyncpg.Connection,
    devices: list[fleet.Device],
    seconds: float,
    changeover: datetime,
) -> str:
    """Orders, bindings, expected stock and rules, as SQL from an OMS.

    Machines run their first production order until ``changeover`` and
    the next one after it. Returns a line saying what was written.
    """
    now = datetime.now(timezone.utc)
    orders: list[tuple[str, str, str]] = []
    # device, kind, order, line, sku, location, unit weight, from, to (None: ∞)
    bindings: list[tuple[Any, ...]] = []
    expected: list[tuple[str, str, int]] = []
    for device in sorted(devices, key=lambda d: d.id):
        if isinstance(device, fleet.Tracker):
            order, (product, _limit) = shipment_order(device), product_of(device)
            orders.append((order, "shipment", product))
            picked_up, due = now - timedelta(hours=6), now + timedelta(days=2)
            bindings.append((device.id, "shipment", order, "L1", None, None, None,
                             picked_up, due))  # fmt: skip
        elif isinstance(device, fleet.Machine):
            first, second = production_orders(device)
            part = PARTS[(device.number - 1) % len(PARTS)]
            orders += [(first, "production", part), (second, "production", part)]
            bindings += [
                (device.id, "production", first, None, None, None, None,
                 None, changeover),
                (device.id, "production", second, None, None, None, None,
                 changeover, None),
            ]  # fmt: skip
        elif isinstance(device, fleet.ShelfScale):
            bindings.append((device.id, "stock", None, None, device.sku,
                             device.location, device.unit_kg, None, None))  # fmt: skip
            expected.append((device.sku, device.location, device.expected_units))
    rule_rows = rules(seconds)
    await rule_set.write_oms_rows(conn, orders, bindings, expected, rule_rows)
    return (
        f"seeded {len(orders)} orders, {len(bindings)} device bindings, "
        f"{len(expected)} expected stock rows, {len(rule_rows)} rules"
    )


# -- the run --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument(
        "--rate", type=float, default=2000.0, help="readings per second, all devices"
    )
    parser.add_argument("--seed", default="1", help="fleet seed")
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="auto: Mosquitto when installed, else amqtt",
    )


def main(args: argparse.Namespace) -> int:
    import uvloop

    return uvloop.run(_demo(args))


def orders_config(seconds: float) -> str:
    """The server's ``[orders]`` table for a run of ``seconds``."""
    return (
        f"[orders]\nbindings_refresh_s = {REFRESH_S}\nrules_refresh_s = {REFRESH_S}\n"
        f"condition_every_s = {round(CONDITION_EVERY * seconds, 3)}\n"
    )


async def _demo(args: argparse.Namespace) -> int:
    broker = args.broker
    if broker == "auto":
        broker = "mosquitto" if harness.mosquitto_binary() else "amqtt"
    stack = LocalStack(DATABASE, DEMO_PG, broker_kind=broker)
    stack.workdir = harness.ROOT / ".ingestd" / "demo-run"

    started = time.monotonic()
    print(f"PostgreSQL (pgserver, data in {_shown(DEMO_PG)}) ...", flush=True)
    await stack.start_database()
    devices = fleet.build(
        args.devices, args.seed, glitch_chance=0.0005, scenario_s=args.seconds
    )
    conn = await asyncpg.connect(stack.dsn)
    try:
        if broker == "amqtt":
            why = "as asked" if args.broker == "amqtt" else "Mosquitto is not installed"
            print(
                f"using the embedded amqtt broker ({why}; MQTT 3.1.1 only).\n"
                "  amqtt is FIT FOR DEMOS ONLY: no MQTT 5, slow, not for load "
                "tests or production."
            )
        stack.start_broker()
        print(f"{broker} on port {stack.broker_port} ...", flush=True)
        log = stack.workdir / "ingestd.log"
        log.unlink(missing_ok=True)
        _start_server(stack, orders_config(args.seconds))
        await asyncio.sleep(0.5)  # healthy means connected; let SUBSCRIBE land
        print(
            f"ingestd: HTTP on port {stack.http_port}, admin on {stack.admin_port}, "
            f"log in {_shown(log)}  (ready after {time.monotonic() - started:.1f} s)"
        )

        # The OMS writes its side; ingestd rereads it within REFRESH_S
        wait = 2.5 * REFRESH_S
        begins = datetime.now(timezone.utc) + timedelta(seconds=wait)
        changeover = begins + timedelta(seconds=args.seconds / 2)
        print(await seed(conn, devices, args.seconds, changeover), flush=True)
        await asyncio.sleep(wait)
        offered, mqtt, http = await _run_fleet(args, stack, devices, conn)
    except BaseException:
        await conn.close()
        code = stack.stop()
        print(f"\ndemo failed; ingestd exit status {code}\n{stack.server_log_tail()}")
        raise

    # Stop ingestd the way an operator does; it flushes and exits with 0
    print("stopping ingestd (SIGTERM) ...", flush=True)
    code = stack.stop()
    try:
        missing = await _summary(conn, stack, devices, offered, mqtt, http, code)
    finally:
        await conn.close()
    if code != 0:
        print(f"ingestd exited with status {code}:\n{stack.server_log_tail()}")
        return 1
    return 1 if missing else 0


def _start_server(stack: LocalStack, extra: str) -> None:
    """``LocalStack.start_server`` with ``extra`` configuration."""
    assert stack.workdir is not None
    stack.workdir.mkdir(parents=True, exist_ok=True)
    stack.http_port, stack.admin_port = harness.free_port(), harness.free_port()
    stack.coap_port = harness.free_port()
    config = harness.config_text(
        stack.dsn, stack.broker_port, stack.http_port, stack.admin_port,
        stack.workdir, extra=extra, mqtt_version=stack.mqtt_version,
        client_id=f"ingestd-{stack.database}", pipeline=stack.pipeline,
        coap_port=stack.coap_port,
    )  # fmt: skip
    stack.server = harness.IngestdProcess(
        config, stack.workdir, stack.http_port, stack.admin_port
    )
    stack.server.start()


async def _run_fleet(
    args: argparse.Namespace,
    stack: LocalStack,
    devices: list[fleet.Device],
    conn: asyncpg.Connection,
) -> tuple[Offered, MqttPublishers, HttpPosters]:
    kinds = {kind: sum(d.kind == kind for d in devices) for kind in fleet.KINDS}
    over_http = sum(d.transport == "http" for d in devices)
    print(
        f"fleet: {kinds['tracker']} trackers (JSON), {kinds['machine']} machines "
        f"(JSON), {kinds['scale']} shelf scales (SenML); {over_http} post over "
        f"HTTP, the rest publish over MQTT; {args.rate:,.0f} readings/s for "
        f"{args.seconds:g} s"
    )
    mqtt = MqttPublishers(
        "127.0.0.1", stack.broker_port, 4, stack.mqtt_version, "demo-fleet"
    )
    await mqtt.start()
    # A device holds its own connection; keep one each, up to 64
    http = HttpPosters("127.0.0.1", stack.http_port, min(64, max(1, over_http)))
    http.start()

    async def send(message: fleet.Message) -> None:
        if message.device.transport == "mqtt":
            await mqtt.send(message)
        else:
            await http.send(message)

    done = asyncio.Event()
    progress = asyncio.get_running_loop().create_task(
        _progress(stack.dsn, done, len(devices))
    )
    try:
        offered = await drive(devices, args.rate, args.seconds, send)
        await mqtt.drain(30.0)
        await http.drain(30.0)
        await wait_committed(conn, "", offered.readings, quiet_s=5.0)
        await settled(conn)
    finally:
        done.set()
        await progress
        await mqtt.stop()
        await http.stop()
    return offered, mqtt, http


async def _progress(dsn: str, done: asyncio.Event, fleet_size: int) -> None:
    """One line, rewritten every second; a plain line every 10 s in a log."""
    conn = await asyncpg.connect(dsn)  # its own: a connection runs one query
    try:
        await _show_progress(conn, done, fleet_size)
    finally:
        await conn.close()


async def _show_progress(
    conn: asyncpg.Connection, done: asyncio.Event, fleet_size: int
) -> None:
    tty = sys.stdout.isatty()
    started = time.monotonic()
    shown = 0.0
    while True:
        elapsed = time.monotonic() - started
        readings, online, dead, updates, tickets, stock, down = await conn.fetchrow(
            PROGRESS
        )
        line = (
            f"{elapsed:4.0f} s  readings {readings:>8,}  online {online:>3}/"
            f"{fleet_size}  dead letters {dead:>2}  outbox {updates:>5,}  "
            f"tickets {tickets:>3}  stock {stock:>4}  downtime {down:>3}"
        )
        if tty:
            print("\r" + line, end="", flush=True)
        elif elapsed - shown >= 10 or done.is_set():
            print(line, flush=True)
            shown = elapsed
        if done.is_set():
            break
        try:
            await asyncio.wait_for(done.wait(), 1.0)
        except TimeoutError:
            pass
    if tty:
        print()


async def settled(conn: asyncpg.Connection, quiet_s: float = 1.0) -> int:
    """Wait until the outbox stops growing (effects follow the commits).

    Returns its row count; gives up after 15 s of steady growth.
    """
    last, since = -1, time.monotonic()
    deadline = since + 15.0
    while time.monotonic() < deadline:
        count = int(await conn.fetchval("SELECT count(*) FROM ingestd.order_updates"))
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        await asyncio.sleep(0.2)
    return last


# -- the summary ----------------------------------------------------------------


async def _summary(
    conn: asyncpg.Connection,
    stack: LocalStack,
    devices: list[fleet.Device],
    offered: Offered,
    mqtt: MqttPublishers,
    http: HttpPosters,
    code: int | None,
) -> list[str]:
    """Print what was stored and what it did; returns the kinds of effect missing."""
    print(f"ingestd stopped, exit status {code}")
    print("\n=== summary " + "=" * 60)

    # Readings per device kind
    total = await conn.fetchval("SELECT count(*) FROM ingestd.readings")
    print(
        f"readings stored: {total:,} of {offered.readings:,} sent "
        f"({offered.readings / offered.seconds:,.0f}/s offered over "
        f"{offered.seconds:.0f} s)"
    )
    rows = await conn.fetch(
        "SELECT split_part(device_id, '-', 1) AS kind, count(*) AS readings, "
        "count(DISTINCT device_id) AS devices, "
        "string_agg(DISTINCT transport || '/' || format, ', ') AS dialects "
        "FROM ingestd.readings GROUP BY 1 ORDER BY 1"
    )
    for row in rows:
        print(
            f"  {row['kind']:<8} {row['readings']:>9,} readings from "
            f"{row['devices']:>3} devices  ({row['dialects']})"
        )

    # Registry and dead letters
    online, known, firmware = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'online'), count(*), "
        "count(firmware) FROM ingestd.devices"
    )
    print(
        f"devices online: {online} of {known} in the registry "
        f"({firmware} reported firmware)"
    )
    dead = await conn.fetch(
        "SELECT reason, count(*) FROM ingestd.dead_letters GROUP BY 1 ORDER BY 2 DESC"
    )
    print(f"dead letters: {sum(r[1] for r in dead)}")
    for reason, count in dead[:3]:
        print(f"  {count:>4} x {reason}")

    # Latency: MQTT from the rows, HTTP from the 202s
    from_rows, _negative = await latencies_from_rows(conn, "", "mqtt")
    shown = [("MQTT, stored_at - ts", percentiles(from_rows))]
    shown.append(("HTTP, until the 202", percentiles(http.latency)))
    print("latency send-to-commit:")
    for label, p in shown:
        if p["count"]:
            print(
                f"  {label:<22} P50 {p['p50']:7.2f} ms   P99 {p['p99']:7.2f} ms"
                f"   ({p['count']:,} readings)"
            )

    counts = await count_effects(conn)
    print_effects(counts)

    # Where to look next
    tracker = await conn.fetchval(
        "SELECT payload->>'device' FROM ingestd.order_updates "
        "WHERE kind = 'cold_chain_breach' ORDER BY id LIMIT 1"
    )
    tracker = tracker or next(d.id for d in devices if d.kind == "tracker")
    print("\n=== try it " + "=" * 61)
    for title, sql in QUERIES_TO_TRY:
        print(f"-- {title}\n{sql.format(tracker=tracker)}\n")
    _how_to_connect(stack)
    missing = counts.missing()
    if missing:
        print(f"\nNOT SHOWN in this run: {'; '.join(missing)}")
    return missing


def print_effects(c: EffectCounts) -> None:
    """The four kinds of effect on orders, each counted in the database."""
    print("\n=== effects on orders (counted in the database) " + "=" * 24)
    print(f"outbox ingestd.order_updates: {sum(r['rows'] for r in c.outbox):,} rows")
    for kind, count, orders in c.outbox:
        where = f"on {orders:>3} orders" if orders else "on no order"
        print(f"  {kind:<28} {count:>5,}  {where}")

    cond = c.conditions
    breaches = ", ".join(f"{r['kind']} {r['orders']}" for r in c.at_risk) or "none"
    _item(
        "1 shipment condition",
        f"{cond['updates']:,} condition updates on {cond['shipments']} shipments "
        f"({cond['with_position']:,} with a position)",
        f"{cond['at_risk']} shipments at risk ({breaches})",
        f"{c.brief_excursions} more went past their limit too briefly to count",
    )

    lines = [] if c.tickets else ["no ticket and no reroute opened"]
    for r in c.tickets:
        peak = ""
        if r["peak"] is not None and r["rule_type"] == "geofence":
            peak = f", at most {r['peak']:,.0f} m off"
        elif r["peak"] is not None:
            peak = f", peak {r['metric']} {r['peak']:g}"
        lines.append(
            f"{r['kind']} {r['reason']}: {r['opened']} opened, {r['closed']} closed "
            f"on {r['orders']} orders{peak}"
        )
    spikes = c.brief_spikes
    lines.append(
        f"{spikes['readings']} readings over a ticket limit on {spikes['devices']} "
        "machines too brief for a ticket"
    )
    _item("2 tickets, reroutes", *lines)

    stock, recon, blips = c.stock, c.reconciliation, c.blips
    _item(
        "3 stock levels",
        f"{stock['updates']:,} stock updates from {stock['scales']} scales at "
        f"{stock['places']} SKU locations",
        f"against oms.expected_stock: {recon['matching']} of {recon['places']} "
        f"match, {recon['differing']} differ (net {recon['net']:+d} units)",
        f"{blips['readings']} weight readings of a hand on the shelf "
        f"({blips['scales']} scales) not counted",
    )

    total = sum(r["minutes"] for r in c.downtime)
    intervals = sum(r["intervals"] for r in c.downtime)
    ended = sum(r["ended"] for r in c.downtime)
    causes = ", ".join(
        f"{r['cause']} {r['intervals']} ({r['minutes']:.1f} min)" for r in c.downtime
    )
    _item(
        "4 downtime",
        f"{intervals} intervals, {total:.1f} min in total: {causes or 'none'}",
        f"{c.downtime_on_schedule} of {intervals} against the production order "
        f"running at the time; {intervals - ended} still open",
    )
    missing = c.missing()
    print(f"all four kinds of effect: {'no' if missing else 'yes'}")


def _item(label: str, *lines: str) -> None:
    for i, line in enumerate(lines):
        print(f"{label if i == 0 else '':<21}{line}")


def _how_to_connect(stack: LocalStack) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH

    socket_dir = parse_qs(urlsplit(stack.dsn).query).get("host", ["?"])[0]
    python = _shown(Path(sys.executable))
    print(f'connect:  {POSTGRES_BIN_PATH / "psql"} "{stack.dsn}"')
    print("          (pgserver's own psql; any psql 16 on PATH works as well)")
    print(
        "PostgreSQL has no TCP port here: it listens on a Unix socket in "
        f"pgserver's socket dir,\n{socket_dir} (the URI's `host=`). It keeps "
        "running after the demo; stop it with\n"
        f'          {python} -c "import pgserver; '
        f"pgserver.get_server('{_shown(DEMO_PG)}', cleanup_mode='stop')\""
    )


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
