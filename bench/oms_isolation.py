"""OMS isolation: order transactions with and without ingest at its peak.

``python -m bench oms`` runs an OMS-like workload (``oms_workload``:
order status updates, order lines, outbox consumption, rebinding, on the
orders whose trackers and machines are sending readings) against the
database ingestd writes to, first alone and then while ingestd ingests
over MQTT at its peak, and compares the latency of the OMS transactions.
The two phases alternate for ``--rounds`` rounds, so that a noisy minute
of the shared machine falls on one phase of one round rather than on all
of one phase.

The peak is probed first unless ``--rate`` is given: with the OMS
workload running, the offered rate steps up by ``--probe-step`` until
ingestd no longer commits a step's readings within a second of its end;
the last step it kept up with is the rate of the ingest phases. ingestd
runs threshold rules on every bound tracker's temperature and machine's
vibration, set to flip often, so the outbox is written throughout, and
refreshes its bindings from the OMS's table every half second.

Lock waits are looked for in the database under test three ways: the
server logs every lock wait longer than 1 ms (``log_lock_waits`` with
``deadlock_timeout = 1ms``, set on that database only), read back from
its log by process id; the workload's sampler sees backends waiting on a
lock with an OMS client on either side; and it records which locks
ingestd's backends hold on OMS tables (reads take ``AccessShareLock`` and
nothing else) and how old their transactions are.

``--burners N`` adds a third phase to each round: the OMS alone next to
N busy loops, CPU contention without a single write, to tell how much of
ingest's effect the CPU alone explains.

Results: P50/P99 per phase and round, the medians and their ratios, the
lock waits, the ingest rate achieved while the OMS was measured, and the
outbox rows written then, in ``bench/results/oms_isolation.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from . import fleet, harness
from .load import (
    BENCH_PG,
    COUNT_READINGS,
    RESULTS,
    LocalStack,
    MqttPublishers,
    drive,
    wait_committed,
)
from .oms_workload import run_workload

LOCK_LOG = "1ms"  # deadlock_timeout: lock waits longer than this are logged
ORDERS_CONFIG = """\
[orders]
bindings_refresh_s = 0.5
rules_refresh_s = 5.0
"""

# -- the OMS's tables and ingestd's rules --------------------------------------

ORDER_LINES = """
CREATE TABLE IF NOT EXISTS oms.order_lines (
    id       bigserial PRIMARY KEY,
    order_id text NOT NULL REFERENCES oms.orders (id),
    sku      text NOT NULL,
    quantity integer NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now()
)
"""

# Temperatures hover around 4 °C and vibration around 1-3.5 mm/s: these
# thresholds open and close breaches all the time, so the outbox is written
# throughout the run
RULES = [
    ("oms-bench-cold", "temperature", ">", 4.2, "cold_chain_breach"),
    ("oms-bench-vibration", "vibration_rms", ">", 3.0, "vibration_alarm"),
]


async def seed_database(conn: asyncpg.Connection, devices: list[fleet.Device]) -> int:
    """Orders bound to the fleet's trackers and machines, the rules, and
    the OMS's order lines table; how many orders."""
    bound = [d for d in devices if d.kind in ("tracker", "machine")]
    orders = [
        (f"OMS-{d.id}", "shipment" if d.kind == "tracker" else "production")
        for d in bound
    ]
    await conn.execute(ORDER_LINES)
    await conn.executemany(
        "INSERT INTO oms.orders (id, kind, product) VALUES ($1, $2, 'bench')", orders
    )
    await conn.executemany(
        "INSERT INTO oms.device_bindings (device_id, order_id, valid_from) "
        "VALUES ($1, $2, now() - interval '1 hour')",
        [(d.id, order) for d, (order, _kind) in zip(bound, orders, strict=True)],
    )
    await conn.executemany(
        "INSERT INTO ingestd.rules (id, metric, op, threshold, kind) "
        "VALUES ($1, $2, $3, $4, $5)",
        RULES,
    )
    return len(orders)


# -- lock waits the server logged ----------------------------------------------

WAIT_LINE = re.compile(
    rb"process (\d+) still waiting for ([^\n]*?) after ([\d.]+) ms"
    rb"(?:\n[^\n]*DETAIL:\s+Process(?:es)? holding the lock: ([\d, ]+)\.)?"
)


class ServerLog:
    """The PostgreSQL server's log file, read through SQL (superuser).

    pgserver writes ``log`` in its data directory; a server with the
    logging collector names its file in ``pg_current_logfile()``.
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.path: str | None = None

    async def open(self) -> bool:
        try:
            current = await self.conn.fetchval("SELECT pg_current_logfile()")
            if current is None and await self.conn.fetchval(
                "SELECT (pg_stat_file('log', true)).size IS NOT NULL"
            ):
                current = "log"
        except asyncpg.InsufficientPrivilegeError:
            current = None
        self.path = current
        return current is not None

    async def size(self) -> int:
        assert self.path is not None
        return int(
            await self.conn.fetchval("SELECT (pg_stat_file($1)).size", self.path)
        )

    async def read(self, start: int) -> bytes:
        assert self.path is not None
        end = await self.size()
        # Binary: a stretch may start or end inside a multi-byte character
        data: bytes = await self.conn.fetchval(
            "SELECT pg_read_binary_file($1, $2, $3)",
            self.path,
            start,
            max(0, end - start),
        )
        return data


def logged_waits(
    log: bytes, oms_pids: list[int], our_pids: list[int]
) -> dict[str, Any]:
    """Lock waits in a stretch of the server log by our database's backends.

    An OMS wait is one where an OMS client waits, or holds the lock that
    another of our backends (ingestd) waits for.
    """
    oms, ours = set(oms_pids), set(our_pids) | set(oms_pids)
    waits: list[dict[str, Any]] = []
    other = 0
    for pid_b, what, after, holders_b in WAIT_LINE.findall(log):
        pid = int(pid_b)
        holders = {int(h) for h in holders_b.replace(b" ", b"").split(b",") if h}
        if pid in oms or oms & holders:
            waits.append(
                {
                    "pid": pid,
                    "waiting_for": what.decode(),
                    "after_ms": float(after),
                    "holders": sorted(holders),
                }
            )
        elif pid in ours:
            other += 1
    return {
        "oms_lock_waits": len(waits),
        "examples": waits[:5],
        "other_lock_waits": other,
    }


# -- the two phases --------------------------------------------------------------


@dataclass
class Settings:
    """One measurement: the OMS workload, the ingest load, the rounds."""

    clients: int = 8
    tx_rate: float = 400.0  # OMS transactions per second, all clients
    seconds: float = 20.0  # each phase's measured window
    rounds: int = 3
    warmup_s: float = 3.0  # ingest runs this long before the OMS is measured
    rate: float | None = None  # readings/s; None: probe
    probe_s: float = 3.0  # per step
    probe_from: float = 10_000.0
    probe_step: float = 10_000.0
    probe_to: float = 100_000.0
    devices: int = 300
    publishers: int = 4
    readings_per_message: int = 10
    seed: str = "1"
    burners: int = 0  # > 0: a third phase, the OMS next to this many busy loops


COMMITTED_BETWEEN = """
SELECT count(*) FROM ingestd.readings
WHERE starts_with(device_id, $1) AND stored_at >= $2 AND stored_at < $3
"""


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


async def wait_outbox_quiet(conn: asyncpg.Connection, quiet_s: float = 2.0) -> None:
    """Wait until the dispatcher has written its backlog of effects: no new
    outbox row for ``quiet_s`` (a minute at most)."""
    last, since = -1, time.monotonic()
    deadline = since + 60.0
    while time.monotonic() < deadline:
        newest = await conn.fetchval("SELECT max(id) FROM ingestd.order_updates")
        if newest != last:
            last, since = newest, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        await asyncio.sleep(0.2)


OUTBOX_BETWEEN = """
SELECT count(*) FROM ingestd.order_updates WHERE written_at >= $1 AND written_at < $2
"""


class Bench:
    """A stack with a seeded database, and the phases run against it."""

    def __init__(self, settings: Settings, stack: LocalStack, prefix: str) -> None:
        self.s = settings
        self.stack = stack
        self.prefix = prefix
        self.devices = fleet.build(
            settings.devices, settings.seed, prefix=prefix, via="mqtt"
        )
        self.offered = 0  # readings offered so far, all phases
        self.log_available = False
        self.orders = 0

    async def start(self) -> None:
        """Database, seed, lock-wait logging, then broker and ingestd."""
        stack = self.stack
        dsn = await stack.start_database()
        conn = await asyncpg.connect(dsn)
        try:
            self.orders = await seed_database(conn, self.devices)
            try:
                await conn.execute(
                    f'ALTER DATABASE "{stack.database}" SET log_lock_waits = on;'
                    f'ALTER DATABASE "{stack.database}" '
                    f"SET deadlock_timeout = '{LOCK_LOG}'"
                )
                self.log_available = await ServerLog(conn).open()
            except asyncpg.InsufficientPrivilegeError:
                self.log_available = False
        finally:
            await conn.close()
        try:
            stack.start_broker()
            _start_server(stack, ORDERS_CONFIG)
        except BaseException:
            stack.stop()
            raise
        await asyncio.sleep(1.0)  # subscribed, bindings and rules loaded

    async def probe(self) -> dict[str, Any]:
        """Step the offered rate up, with the OMS workload running, until
        ingestd falls behind; the last step it kept up with is the peak.

        Kept up means every reading of a step committed within a second of
        its end. Overloading for a moment and timing the drain would
        flatter the rate: under a backlog flushes grow, and big flushes are
        cheaper per row. The OMS runs meanwhile because it takes its share
        of the two cores in the measured phases too.
        """
        s = self.s
        steps: list[dict[str, Any]] = []
        peak = 0.0

        async def ladder() -> None:
            nonlocal peak
            conn = await asyncpg.connect(self.stack.dsn)
            try:
                rate = s.probe_from
                while rate <= s.probe_to:
                    await self._ingest(rate, s.probe_s)
                    await asyncio.sleep(1.0)
                    committed = await conn.fetchval(COUNT_READINGS, self.prefix)
                    behind = self.offered - int(committed)
                    steps.append({"rate": rate, "behind": behind})
                    print(
                        f"probe: {rate:,.0f} readings/s, {behind:,} not "
                        "committed a second after"
                    )
                    if behind > 0.01 * rate * s.probe_s:
                        break
                    peak = rate
                    rate += s.probe_step
                await wait_committed(conn, self.prefix, self.offered)
                await wait_outbox_quiet(conn)
            finally:
                await conn.close()

        longest = (s.probe_to / s.probe_step + 1) * (s.probe_s + 2) + 120
        await run_workload(
            self.stack.dsn, s.clients, s.tx_rate, longest, s.seed,
            during=ladder, stop_after_during=True,
        )  # fmt: skip
        return {"seconds_per_step": s.probe_s, "steps": steps, "peak": peak}

    async def phase(
        self,
        ingest_rate: float | None,
        seconds: float | None = None,
        during: Callable[[], Awaitable[None]] | None = None,
        cpu_burners: int = 0,
    ) -> dict[str, Any]:
        """One measured window of the OMS workload, with ingest or without.

        ``seconds`` overrides the window's length; ``during`` runs as the
        window opens (the tests' deliberate lock holder). ``cpu_burners``
        busy loops run through the window instead of ingest: CPU contention
        alone, without a single write, to compare with ingest's effect.
        """
        s = self.s
        window_s = seconds or s.seconds
        admin = await asyncpg.connect(self.stack.dsn)
        try:
            log = ServerLog(admin)
            log_start = (
                await log.size() if self.log_available and await log.open() else 0
            )
            ingest: asyncio.Task[int] | None = None

            async def warm_up() -> None:
                nonlocal ingest
                run_for = s.warmup_s + window_s + 1.0  # on past the window
                ingest = asyncio.create_task(self._ingest(ingest_rate or 0, run_for))
                await asyncio.sleep(s.warmup_s)

            burners = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(cpu_burners)
            ]
            try:
                result = await run_workload(
                    self.stack.dsn, s.clients, s.tx_rate, window_s, s.seed,
                    warm_up if ingest_rate else None, during,
                )  # fmt: skip
            finally:
                for burner in burners:
                    burner.kill()
                    burner.wait()
            if ingest is not None:
                await ingest
                await wait_committed(admin, self.prefix, self.offered)
                await wait_outbox_quiet(admin)  # the next baseline starts idle
            result["logged"] = (
                logged_waits(
                    await log.read(log_start),
                    result["oms_pids"],
                    result["database_pids"],
                )
                if self.log_available
                else None
            )
            window = [_utc(t) for t in result["window"]]
            committed = await admin.fetchval(COMMITTED_BETWEEN, self.prefix, *window)
            outbox = await admin.fetchval(OUTBOX_BETWEEN, *window)
        finally:
            await admin.close()
        span = result["window"][1] - result["window"][0]
        result["load_average_1min"] = os.getloadavg()[0]
        result["ingest"] = {
            "offered_readings_per_s": ingest_rate or 0.0,
            "committed_in_window": committed,
            "readings_per_s_in_window": round(committed / span, 1),
            "outbox_rows_in_window": outbox,
        }
        return result

    async def _ingest(self, rate: float, seconds: float) -> int:
        """Publish at ``rate`` for ``seconds``; readings offered."""
        s = self.s
        publishers = MqttPublishers(
            "127.0.0.1",
            self.stack.broker_port,
            s.publishers,
            self.stack.mqtt_version,
            f"oms-{os.getpid()}",
        )
        await publishers.start()
        try:
            offered = await drive(
                self.devices, rate, seconds, publishers.send, s.readings_per_message
            )
            await publishers.drain(60)
        finally:
            await publishers.stop()
        self.offered += offered.readings
        return offered.readings


def _start_server(stack: LocalStack, extra: str) -> None:
    """``LocalStack.start_server`` with extra configuration (the rules' refresh)."""
    stack.workdir = Path(tempfile.mkdtemp(prefix="ingestd-oms-"))
    stack._own_workdir = True
    stack.http_port, stack.admin_port = harness.free_port(), harness.free_port()
    config = harness.config_text(
        stack.dsn,
        stack.broker_port,
        stack.http_port,
        stack.admin_port,
        stack.workdir,
        extra=extra,
        mqtt_version=stack.mqtt_version,
        client_id=f"ingestd-{stack.database}",
        pipeline=stack.pipeline,
    )
    stack.server = harness.IngestdProcess(
        config, stack.workdir, stack.http_port, stack.admin_port
    )
    stack.server.start()


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of each phase, their spread, and the ratios."""
    out: dict[str, Any] = {}
    phases = ["baseline", "ingest", *(["cpu"] if "cpu" in rounds[0] else [])]
    for phase in phases:
        runs = [r[phase] for r in rounds]
        out[phase] = {
            q: {
                "median": statistics.median(r["latency_ms"][q] for r in runs),
                "min": min(r["latency_ms"][q] for r in runs),
                "max": max(r["latency_ms"][q] for r in runs),
            }
            for q in ("p50", "p99", "p99_9", "max")
        }
        out[phase]["ingest_readings_per_s_median"] = statistics.median(
            r["ingest"]["readings_per_s_in_window"] for r in runs
        )
        # What the OMS backends waited on, in samples (none: on a CPU)
        events: Counter[str] = Counter()
        for r in runs:
            events.update(r["sampled"]["oms_wait_events"])
        out[phase]["oms_wait_events"] = dict(events.most_common())
    out["ratio"] = {
        q: round(out["ingest"][q]["median"] / out["baseline"][q]["median"], 2)
        for q in ("p50", "p99")
    }
    if "cpu" in phases:
        out["ratio_cpu_only"] = {
            q: round(out["cpu"][q]["median"] / out["baseline"][q]["median"], 2)
            for q in ("p50", "p99")
        }
    everything = [r[p] for r in rounds for p in phases]
    out["transactions_committed"] = sum(
        r["transactions"]["committed"] for r in everything
    )
    out["transactions_failed"] = sum(r["transactions"]["failed"] for r in everything)
    out["oms_lock_waits_sampled"] = sum(
        r["sampled"]["oms_lock_waits"] for r in everything
    )
    logged = [r["logged"] for r in everything if r["logged"] is not None]
    out["oms_lock_waits_logged"] = (
        sum(x["oms_lock_waits"] for x in logged) if logged else None
    )
    modes: Counter[str] = Counter()
    for r in everything:
        modes.update(r["sampled"]["ingestd_locks_on_oms_tables"])
    out["ingestd_lock_modes_on_oms_tables"] = dict(modes)
    out["ingestd_oms_transaction_max_s"] = max(
        r["sampled"]["ingestd_oms_transaction_max_s"] for r in everything
    )
    return out


async def measure(
    settings: Settings, database: str, pg_dir: Path = BENCH_PG, pg_uri: str = ""
) -> dict[str, Any]:
    """Start a stack, probe the peak (unless a rate is given), run the rounds."""
    prefix = f"oms{os.getpid()}-"
    stack = LocalStack(database, pg_dir, pg_uri=pg_uri)
    bench = Bench(settings, stack, prefix)
    result: dict[str, Any] = {"settings": asdict(settings)}
    await bench.start()
    code: int | None = None
    try:
        rate = settings.rate
        if rate is None:
            probe = await bench.probe()
            result["probe"] = probe
            rate = probe["peak"] or settings.probe_from
            print(f"probe: ingest phases offer {rate:,.0f} readings/s")
        result["ingest_rate"] = rate
        rounds: list[dict[str, Any]] = []
        for number in range(1, settings.rounds + 1):
            baseline = await bench.phase(None)
            _print_phase(number, "without ingest", baseline)
            loaded = await bench.phase(rate)
            _print_phase(number, "with ingest", loaded)
            rounds.append({"baseline": baseline, "ingest": loaded})
            if settings.burners:
                cpu = await bench.phase(None, cpu_burners=settings.burners)
                _print_phase(number, f"{settings.burners} busy loops", cpu)
                rounds[-1]["cpu"] = cpu
        result["rounds"] = rounds
        result["summary"] = summarize(rounds)
        result["log_lock_waits"] = bench.log_available
    finally:
        code = stack.stop()
    result["server_exit_status"] = code
    return result


def _print_phase(number: int, label: str, r: dict[str, Any]) -> None:
    lat, tx, ing = r["latency_ms"], r["transactions"], r["ingest"]
    logged = r["logged"]["oms_lock_waits"] if r["logged"] is not None else "n/a"
    print(
        f"round {number} {label:>15}: {tx['committed']:,} OMS transactions "
        f"of {r['starts']['scheduled']:,} scheduled (failed {tx['failed']}), "
        f"P50 {lat['p50']:.2f} ms, P99 {lat['p99']:.2f} ms, "
        f"max {lat['max']:.1f} ms; lock waits sampled "
        f"{r['sampled']['oms_lock_waits']}, logged {logged}; ingest "
        f"{ing['readings_per_s_in_window']:,.0f} readings/s, "
        f"{ing['outbox_rows_in_window']:,} outbox rows; "
        f"load {r['load_average_1min']:.1f}"
    )


# -- the command -----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    oms = parser.add_argument_group("the OMS workload")
    oms.add_argument("--clients", type=int, default=d.clients)
    oms.add_argument(
        "--tx-rate", type=float, default=d.tx_rate, help="transactions/s, all clients"
    )
    oms.add_argument(
        "--seconds", type=float, default=d.seconds, help="each phase's window"
    )
    oms.add_argument("--rounds", type=int, default=d.rounds)
    oms.add_argument("--seed", default=d.seed)
    oms.add_argument(
        "--burners",
        type=int,
        default=d.burners,
        help="also run the OMS next to this many busy loops (CPU only)",
    )

    ingest = parser.add_argument_group("ingest (MQTT)")
    ingest.add_argument("--rate", type=float, help="readings/s (default: probed)")
    ingest.add_argument("--warmup", type=float, default=d.warmup_s)
    ingest.add_argument(
        "--probe-seconds", type=float, default=d.probe_s, help="per probe step"
    )
    ingest.add_argument("--probe-from", type=float, default=d.probe_from)
    ingest.add_argument("--probe-step", type=float, default=d.probe_step)
    ingest.add_argument("--devices", type=int, default=d.devices)

    where = parser.add_argument_group("where")
    where.add_argument("--database", default="ingestd_oms")
    where.add_argument("--pg-dir", type=Path, default=BENCH_PG)
    where.add_argument("--pg-uri", default="", help="a PostgreSQL to use instead")
    where.add_argument("--name", default="oms_isolation")
    where.add_argument("--results-dir", type=Path, default=RESULTS)


def main(args: argparse.Namespace) -> int:
    import uvloop

    settings = Settings(
        clients=args.clients,
        tx_rate=args.tx_rate,
        seconds=args.seconds,
        rounds=args.rounds,
        warmup_s=args.warmup,
        rate=args.rate,
        probe_s=args.probe_seconds,
        probe_from=args.probe_from,
        probe_step=args.probe_step,
        devices=args.devices,
        seed=args.seed,
        burners=args.burners,
    )
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    result = uvloop.run(measure(settings, args.database, args.pg_dir, args.pg_uri))
    result.update(
        command=shlex.join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        name=args.name,
        timestamp=started.isoformat(),
        machine={"cpus": os.cpu_count(), "load_before": load_before},
    )
    s = result["summary"]
    print(
        f"OMS P50 {s['baseline']['p50']['median']:.2f} -> "
        f"{s['ingest']['p50']['median']:.2f} ms (x{s['ratio']['p50']}), "
        f"P99 {s['baseline']['p99']['median']:.2f} -> "
        f"{s['ingest']['p99']['median']:.2f} ms (x{s['ratio']['p99']}); "
        f"lock waits on OMS rows: sampled {s['oms_lock_waits_sampled']}, "
        f"logged {s['oms_lock_waits_logged']}; failed {s['transactions_failed']}"
    )
    if "ratio_cpu_only" in s:
        cpu = s["ratio_cpu_only"]
        print(
            f"next to {settings.burners} busy loops instead: P50 x{cpu['p50']}, "
            f"P99 x{cpu['p99']}"
        )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{args.name}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"result: {path}")
    waits = s["oms_lock_waits_sampled"] + (s["oms_lock_waits_logged"] or 0)
    bad = s["transactions_failed"] or waits
    return 1 if bad or result["server_exit_status"] != 0 else 0
