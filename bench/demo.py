"""``make demo``: a simulated fleet against a local stack, then a summary.

Starts everything on this machine: pgserver's PostgreSQL (data under
``.ingestd/demo-pg``, a fresh ``ingestd_demo`` database each run), a private
Mosquitto on a free port (or, when Mosquitto is not installed, the embedded
amqtt broker, which is fit for demos only), and ingestd. It seeds the OMS
side with a few orders, binds the trackers, machines and shelf scales to
them, and adds three rules: a tracker above 8 °C breaks the cold chain, a
machine vibrating above 7.1 mm/s needs attention, a shelf under 5 kg runs
low on stock.

Then the fleet (``bench.fleet``) sends for ``--seconds``: trackers and
machines post generic JSON and shelf scales SenML, most over MQTT and a
quarter over HTTP. One line shows progress. At the end: readings per device
kind, the registry, send-to-commit latency, the order updates the rules
wrote, and queries to try. PostgreSQL keeps running so you can look around.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg

from . import fleet, harness
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
LOW_STOCK_KG = 5.0

ORDERS = [
    ("SO-1001", "shipment", "vaccines, 2-8 °C"),
    ("SO-1002", "shipment", "fresh salmon"),
    ("SO-1003", "shipment", "insulin pens"),
    ("SO-1004", "shipment", "organic dairy"),
    ("SO-1005", "shipment", "blueberries"),
    ("SO-1006", "shipment", "cut flowers"),
    ("PO-2001", "production", "gearbox housing"),
    ("PO-2002", "production", "pump shaft"),
    ("PO-2003", "production", "valve body"),
    ("RO-3001", "replenishment", "bolts M8, shelf A"),
    ("RO-3002", "replenishment", "packing tape, shelf B"),
]
ORDER_KIND_OF_DEVICE = {
    "tracker": "shipment",
    "machine": "production",
    "scale": "replenishment",
}
RULES = [
    ("cold-chain", "temperature", ">", 8.0, "cold_chain_breach"),
    ("vibration", "vibration_rms", ">", 7.1, "vibration_alert"),
    ("low-stock", "weight", "<", LOW_STOCK_KG, "low_stock"),
]

PROGRESS = """
SELECT (SELECT count(*) FROM ingestd.readings),
       (SELECT count(*) FROM ingestd.devices WHERE status = 'online'),
       (SELECT count(*) FROM ingestd.dead_letters),
       (SELECT count(*) FROM ingestd.order_updates)
"""

QUERIES_TO_TRY = [
    (
        "What the rules told the OMS, newest first:",
        "SELECT u.id, u.order_id, o.product, u.kind, u.payload->>'device' AS device,\n"
        "       u.payload->>'value' AS value, u.occurred_at\n"
        "FROM ingestd.order_updates u JOIN oms.orders o ON o.id = u.order_id\n"
        "ORDER BY u.id DESC LIMIT 10;",
    ),
    (
        "The temperature trace of a tracker that broke the cold chain:",
        "SELECT ts, value_num AS celsius, order_id, transport\n"
        "FROM ingestd.readings\n"
        "WHERE device_id = '{tracker}' AND metric = 'temperature'\n"
        "ORDER BY ts DESC LIMIT 20;",
    ),
    (
        "The device registry: last heartbeat, firmware, dialects seen:",
        "SELECT id, status, last_seen, firmware, transports, formats\n"
        "FROM ingestd.devices ORDER BY last_seen DESC LIMIT 10;",
    ),
]


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


async def _demo(args: argparse.Namespace) -> int:
    broker = args.broker
    if broker == "auto":
        broker = "mosquitto" if harness.mosquitto_binary() else "amqtt"
    stack = LocalStack(DATABASE, DEMO_PG, broker_kind=broker)
    stack.workdir = harness.ROOT / ".ingestd" / "demo-run"

    started = time.monotonic()
    print(f"PostgreSQL (pgserver, data in {_shown(DEMO_PG)}) ...", flush=True)
    await stack.start_database()
    devices = fleet.build(args.devices, args.seed, glitch_chance=0.0005)
    conn = await asyncpg.connect(stack.dsn)
    try:
        await _seed(conn, devices)
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
        stack.start_server()
        await asyncio.sleep(0.5)  # healthy means connected; let SUBSCRIBE land
        print(
            f"ingestd: HTTP on port {stack.http_port}, admin on {stack.admin_port}, "
            f"log in {_shown(log)}  (ready after {time.monotonic() - started:.1f} s)"
        )
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
        await _summary(conn, stack, devices, offered, mqtt, http, code)
    finally:
        await conn.close()
    if code != 0:
        print(f"ingestd exited with status {code}:\n{stack.server_log_tail()}")
        return 1
    return 0


async def _seed(conn: asyncpg.Connection, devices: list[fleet.Device]) -> None:
    """Orders, device bindings and rules, as the OMS and an operator set them."""
    await conn.executemany(
        "INSERT INTO oms.orders (id, kind, product) VALUES ($1, $2, $3)", ORDERS
    )
    by_kind: dict[str, list[str]] = {}
    for order_id, kind, _product in ORDERS:
        by_kind.setdefault(kind, []).append(order_id)
    bindings = []
    for device in sorted(devices, key=lambda d: d.id):
        orders = by_kind[ORDER_KIND_OF_DEVICE[device.kind]]
        bindings.append((device.id, orders[len(bindings) % len(orders)]))
    await conn.executemany(
        "INSERT INTO oms.device_bindings (device_id, order_id) VALUES ($1, $2)",
        bindings,
    )
    await conn.executemany(
        "INSERT INTO ingestd.rules (id, metric, op, threshold, kind) "
        "VALUES ($1, $2, $3, $4, $5)",
        RULES,
    )
    print(
        f"seeded {len(ORDERS)} orders, {len(bindings)} device bindings, "
        f"{len(RULES)} rules"
    )


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
        await _settled(conn)
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
        readings, online, dead, updates = await conn.fetchrow(PROGRESS)
        line = (
            f"{elapsed:5.0f} s  readings committed {readings:>9,}  devices online "
            f"{online:>3}/{fleet_size}  dead letters {dead:>3}  order updates "
            f"{updates:>4}"
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


async def _settled(conn: asyncpg.Connection) -> None:
    """Wait until the rules' order updates stop coming (they follow commits)."""
    last = -1
    for _ in range(20):
        count = await conn.fetchval("SELECT count(*) FROM ingestd.order_updates")
        if count == last:
            return
        last = count
        await asyncio.sleep(0.5)


async def _summary(
    conn: asyncpg.Connection,
    stack: LocalStack,
    devices: list[fleet.Device],
    offered: Offered,
    mqtt: MqttPublishers,
    http: HttpPosters,
    code: int | None,
) -> None:
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

    # Order updates
    updates = await conn.fetch(
        "SELECT kind, count(*), count(DISTINCT order_id) FROM ingestd.order_updates "
        "GROUP BY 1 ORDER BY 1"
    )
    print(f"order updates: {sum(r[1] for r in updates)}")
    for kind, count, orders in updates:
        print(f"  {kind:<28} {count:>4}  on {orders} orders")

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
