"""The OMS side of ``python -m bench oms``: order transactions and a lock sampler.

``--clients`` connections, each starting short transactions on its own
schedule (``tx_rate`` in all), on the orders bound to devices that are
sending readings:

- ``status``: update an order's status and ``updated_at``;
- ``line``: insert an order line (``oms.order_lines``, an OMS table that
  ingestd does not know) and touch the order;
- ``outbox``: read the order's new rows in ingestd's outbox and mark the
  orders they name, as an OMS consuming order updates does;
- ``rebind``: lock an order (``FOR UPDATE``) and move the end of its
  device binding, the row ingestd reads to stamp readings with the order.

Each client owns its own orders, so OMS transactions never wait for one
another: a lock wait can only come from outside the workload. A client
that falls behind its schedule does not make up the lost starts; the
result counts the starts scheduled and made.

Alongside, a sampler reads ``pg_stat_activity`` every ``SAMPLE_S`` for
backends of the database waiting on a lock with an OMS client on either
side, and for what the OMS backends wait on otherwise (WAL writes, I/O),
and ``pg_locks`` for locks that other client backends (ingestd) hold on
OMS tables, with the age of their transactions.

It runs in a child process (``run_workload``), so the load generator's CPU
does not stall the OMS clients' event loop: ``python -m bench.oms_workload
<json>`` prints ``ready`` once connected, starts at a line on stdin, stops
early at a second line (or at the end of stdin), and prints its result as
one JSON line.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from hdrh.histogram import HdrHistogram

from . import harness
from .load import percentiles
from .senders import new_histogram, record

SAMPLE_S = 0.02  # pg_stat_activity / pg_locks sampling period

MIX = (("status", 0.40), ("line", 0.25), ("outbox", 0.20), ("rebind", 0.15))

MY_ORDERS = """
SELECT order_id, device_id FROM oms.device_bindings
WHERE starts_with(order_id, 'OMS-') ORDER BY order_id
"""

NEW_UPDATES = """
SELECT id, order_id FROM ingestd.order_updates
WHERE order_id = ANY($1::text[]) AND id > $2 ORDER BY id LIMIT 50
"""

# Backends of this database waiting for a lock, with who blocks them
WAITING = """
SELECT pid, wait_event, pg_blocking_pids(pid), left(query, 200)
FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
"""

# Locks on OMS tables held by backends that are not OMS clients: ingestd's
# (client backends) or autovacuum's (ShareUpdateExclusiveLock, which does
# not conflict with row reads or writes)
FOREIGN_OMS_LOCKS = """
SELECT l.pid, l.mode, l.granted, a.backend_type,
       extract(epoch FROM clock_timestamp() - a.xact_start)::float8
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'oms'
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid <> ALL($1::int[])
"""

# What the OMS clients' backends wait for while running a statement; none
# means on the CPU or waiting for the CPU
OMS_WAIT_EVENTS = """
SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity
WHERE pid = ANY($1::int[]) AND state = 'active' AND wait_event IS NOT NULL
"""

OUR_BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"


@dataclass
class Client:
    """One OMS connection and the orders it alone works on."""

    conn: asyncpg.Connection
    orders: list[tuple[str, str]]  # (order, its device)
    rng: random.Random
    outbox_after: int = 0
    done: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    async def run_one(self, kind: str) -> None:
        order, device = self.rng.choice(self.orders)
        conn = self.conn
        async with conn.transaction():
            if kind == "status":
                status = self.rng.choice(("open", "picked", "in_transit", "held"))
                await conn.execute(
                    "UPDATE oms.orders SET status = $2, updated_at = now() "
                    "WHERE id = $1",
                    order,
                    status,
                )
            elif kind == "line":
                await conn.execute(
                    "INSERT INTO oms.order_lines (order_id, sku, quantity) "
                    "VALUES ($1, $2, $3)",
                    order,
                    f"SKU-{self.rng.randrange(500):03d}",
                    self.rng.randint(1, 24),
                )
                await conn.execute(
                    "UPDATE oms.orders SET updated_at = now() WHERE id = $1", order
                )
            elif kind == "outbox":
                mine = [o for o, _ in self.orders]
                rows = await conn.fetch(NEW_UPDATES, mine, self.outbox_after)
                if rows:
                    self.outbox_after = max(r["id"] for r in rows)
                    await conn.execute(
                        "UPDATE oms.orders SET status = 'attention', "
                        "updated_at = now() WHERE id = ANY($1::text[])",
                        list({r["order_id"] for r in rows}),
                    )
            else:  # rebind
                await conn.fetchrow(
                    "SELECT id, status FROM oms.orders WHERE id = $1 FOR UPDATE", order
                )
                await conn.execute(
                    "UPDATE oms.device_bindings "
                    "SET valid_to = now() + interval '30 days' "
                    "WHERE order_id = $1 AND device_id = $2",
                    order,
                    device,
                )


@dataclass
class LockWatch:
    """What the sampler saw of lock waits and of ingestd's locks on OMS tables."""

    samples: int = 0
    oms_waits: int = 0  # sightings: a wait seen in three samples counts three
    examples: list[dict[str, Any]] = field(default_factory=list)
    other_waits: int = 0
    foreign_modes: Counter[str] = field(default_factory=Counter)
    foreign_ungranted: int = 0
    foreign_xact_max_s: float = 0.0
    foreign_pids: set[int] = field(default_factory=set)
    maintenance_modes: Counter[str] = field(default_factory=Counter)
    oms_wait_events: Counter[str] = field(default_factory=Counter)

    async def run(self, conn: asyncpg.Connection, oms_pids: list[int]) -> None:
        mine = set(oms_pids)
        excluded = [*oms_pids, conn.get_server_pid()]
        while True:
            self.samples += 1
            for pid, event, blockers, query in await conn.fetch(WAITING):
                if pid in mine or mine.intersection(blockers):
                    self.oms_waits += 1
                    if len(self.examples) < 5:
                        self.examples.append(
                            {
                                "pid": pid,
                                "lock": event,
                                "blocked_by": blockers,
                                "query": query,
                            }
                        )
                else:
                    self.other_waits += 1
            for pid, mode, granted, backend, age in await conn.fetch(
                FOREIGN_OMS_LOCKS, excluded
            ):
                if backend != "client backend":
                    self.maintenance_modes[f"{backend}: {mode}"] += 1
                    continue
                self.foreign_pids.add(pid)
                self.foreign_modes[mode] += 1
                self.foreign_ungranted += not granted
                self.foreign_xact_max_s = max(self.foreign_xact_max_s, age or 0.0)
            for (event,) in await conn.fetch(OMS_WAIT_EVENTS, oms_pids):
                self.oms_wait_events[event] += 1
            await asyncio.sleep(SAMPLE_S)


async def oms_workload(
    dsn: str,
    clients: int,
    tx_rate: float,
    seconds: float,
    seed: str,
    ready: Callable[[list[int]], Awaitable[None]],
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Run the workload for ``seconds`` once ``ready(pids)`` returns, or
    until ``stop`` is set."""
    conns = [await asyncpg.connect(dsn) for _ in range(clients)]
    watcher_conn = await asyncpg.connect(dsn)
    try:
        rows = await conns[0].fetch(MY_ORDERS)
        pairs = [(r["order_id"], r["device_id"]) for r in rows]
        start_id = int(
            await conns[0].fetchval(
                "SELECT coalesce(max(id), 0) FROM ingestd.order_updates"
            )
        )
        workers = [
            Client(c, pairs[i::clients], random.Random(f"{seed}:{i}"), start_id)
            for i, c in enumerate(conns)
        ]
        oms_pids = [c.get_server_pid() for c in conns]
        backends_before = {r[0] for r in await watcher_conn.fetch(OUR_BACKENDS)}
        await ready(oms_pids)

        histogram = new_histogram()
        by_kind = {kind: new_histogram() for kind, _ in MIX}
        watch = LockWatch()
        started = time.time()
        watcher = asyncio.create_task(watch.run(watcher_conn, oms_pids))
        try:
            await asyncio.gather(
                *(
                    _client_loop(
                        w, clients / tx_rate, seconds, histogram, by_kind, stop
                    )
                    for w in workers
                )
            )
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        ended = time.time()
        backends_after = {r[0] for r in await watcher_conn.fetch(OUR_BACKENDS)}
    finally:
        for c in [*conns, watcher_conn]:
            await c.close()

    done = sum((w.done for w in workers), Counter())
    failed = sum((w.failed for w in workers), Counter())
    return {
        "window": [started, ended],
        "oms_pids": oms_pids,
        "database_pids": sorted(backends_before | backends_after | watch.foreign_pids),
        "transactions": {
            "committed": sum(done.values()),
            "failed": sum(failed.values()),
            "by_kind": dict(done),
            "failed_by_kind": dict(failed),
            "errors": [e for w in workers for e in w.errors][:10],
        },
        "latency_ms": percentiles(histogram),
        "latency_by_kind_ms": {k: percentiles(h) for k, h in by_kind.items()},
        "hdr_histogram_us": histogram.encode().decode("ascii"),
        "starts": {
            "scheduled": round((ended - started) * tx_rate),
            "made": sum(done.values()) + sum(failed.values()),
        },
        "sampled": {
            "samples": watch.samples,
            "oms_lock_waits": watch.oms_waits,
            "oms_lock_wait_examples": watch.examples,
            "other_lock_waits": watch.other_waits,
            "ingestd_locks_on_oms_tables": dict(watch.foreign_modes),
            "ingestd_locks_not_granted": watch.foreign_ungranted,
            "ingestd_oms_transaction_max_s": round(watch.foreign_xact_max_s, 4),
            "maintenance_locks_on_oms_tables": dict(watch.maintenance_modes),
            "oms_wait_events": dict(watch.oms_wait_events.most_common()),
        },
    }


async def _client_loop(
    client: Client,
    interval: float,
    seconds: float,
    histogram: HdrHistogram,
    by_kind: dict[str, HdrHistogram],
    stop: asyncio.Event | None,
) -> None:
    """Start a transaction every ``interval`` s; a late start is not made up."""
    kinds, weights = zip(*MIX, strict=True)
    loop = asyncio.get_running_loop()
    start = loop.time()
    due = start + client.rng.uniform(0, interval)  # spread the clients' phases
    while due < start + seconds and not (stop and stop.is_set()):
        now = loop.time()
        if now < due:
            await asyncio.sleep(due - now)
        kind = client.rng.choices(kinds, weights)[0]
        began = time.perf_counter_ns()
        try:
            await client.run_one(kind)
        except (asyncpg.PostgresError, OSError) as exc:
            client.failed[kind] += 1
            client.errors.append(f"{kind}: {exc!r}")
        else:
            micros = (time.perf_counter_ns() - began) // 1000
            record(histogram, micros)
            record(by_kind[kind], micros)
            client.done[kind] += 1
        due = max(due + interval, loop.time())  # late starts are dropped


def _worker_main() -> None:
    """``python -m bench.oms_workload <json>``: one run of the workload.

    Prints ``ready`` once connected, starts when a line arrives on stdin,
    stops early at the next line or at the end of stdin, and prints the
    result as one JSON line.
    """
    import uvloop

    params = orjson.loads(sys.argv[1])

    async def run() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def wait_for_stop() -> None:
            sys.stdin.readline()
            loop.call_soon_threadsafe(stop.set)

        async def ready(_pids: list[int]) -> None:
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            await asyncio.to_thread(sys.stdin.readline)
            # A daemon thread: the default executor would hold the exit
            threading.Thread(target=wait_for_stop, daemon=True).start()

        return await oms_workload(ready=ready, stop=stop, **params)

    result = uvloop.run(run())
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


async def run_workload(
    dsn: str,
    clients: int,
    tx_rate: float,
    seconds: float,
    seed: str,
    before: Callable[[], Awaitable[None]] | None = None,
    during: Callable[[], Awaitable[None]] | None = None,
    stop_after_during: bool = False,
) -> dict[str, Any]:
    """The workload in a child process.

    ``before`` runs once its clients are connected and before it starts
    (the ingest warm-up), ``during`` as it starts; with
    ``stop_after_during`` the workload stops when ``during`` returns.
    """
    params = {
        "dsn": dsn,
        "clients": clients,
        "tx_rate": tx_rate,
        "seconds": seconds,
        "seed": seed,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.oms_workload",
        orjson.dumps(params).decode(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=harness.ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    extra: asyncio.Task[None] | None = None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line != b"ready\n":
            raise RuntimeError(f"OMS workload did not start: {line!r}")
        if before is not None:
            await before()
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        if during is not None:
            extra = asyncio.create_task(during())
            if stop_after_during:
                await extra
                proc.stdin.write(b"stop\n")
                await proc.stdin.drain()
        out = await asyncio.wait_for(proc.stdout.read(), seconds + 60)
    finally:
        if extra is not None:
            await extra
        proc.stdin.close()
        code = await proc.wait()
    if code != 0 or not out:
        raise RuntimeError(f"OMS workload exited with {code}")
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return result


if __name__ == "__main__":
    _worker_main()
