"""Threshold rules on bound devices, written to the order-update outbox.

Readings reach the dispatcher after their flush commits, already stamped
with the order their device is bound to. A fixed-size ring holds them until
the rule loop takes them; when the ring is full, readings are counted and
dropped here.

Known gap: a dropped reading is not evaluated later. The catch-up from the
readings table by ingest sequence (issue 5) closes it; until then, size
``orders.dispatcher_ring`` above the bound readings of a few seconds.

A breach opens when a reading crosses a rule's threshold and closes at the
first reading back on the safe side; each is one outbox row whose
``effect_key`` names rule, order, device and the reading's time, so a
redelivered reading never writes a second row. Open breaches are reloaded
from the outbox at start, so a restart does not reopen one.
"""

from __future__ import annotations

import asyncio
import operator
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone

import asyncpg
import orjson

from .. import log, metrics
from ..model import Reading

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}

WRITE = """
INSERT INTO ingestd.order_updates
    (order_id, kind, payload, effect_key, occurred_at, detected_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[],
                     $5::timestamptz[], $6::timestamptz[])
ON CONFLICT (effect_key) DO NOTHING
RETURNING id
"""

OPEN_BREACHES = """
SELECT DISTINCT ON (payload->>'rule', order_id, payload->>'device')
       payload->>'rule', order_id, payload->>'device', payload->>'state'
FROM ingestd.order_updates
WHERE payload ? 'rule'
ORDER BY payload->>'rule', order_id, payload->>'device', id DESC
"""


class Rule:
    __slots__ = ("id", "metric", "op", "test", "threshold", "kind")

    def __init__(self, id: str, metric: str, op: str, threshold: float, kind: str):
        self.id = id
        self.metric = metric
        self.op = op
        self.test = OPS[op]
        self.threshold = threshold
        self.kind = kind


class Dispatcher:
    """Evaluates rules on committed readings; writes effects in bulk."""

    def __init__(self, pool: asyncpg.Pool, capacity: int) -> None:
        self.pool = pool
        self.capacity = capacity
        self.rules: dict[str, list[Rule]] = {}
        self.written = 0
        self.dropped = 0
        self._ring: deque[Reading] = deque()
        self._open: set[tuple[str, str, str]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def load(self, conn: asyncpg.Connection) -> None:
        """Read the rules, and the breaches still open, from the database."""
        rules: dict[str, list[Rule]] = {}
        query = (
            "SELECT id, metric, op, threshold, kind FROM ingestd.rules WHERE enabled"
        )
        for row in await conn.fetch(query):
            rules.setdefault(row["metric"], []).append(Rule(*row))
        self.rules = rules
        if not self._open:
            self._open = {
                (rule, order, device)
                for rule, order, device, state in await conn.fetch(OPEN_BREACHES)
                if state == "breach"
            }

    def offer(self, readings: list[Reading]) -> None:
        """Take the bound readings of a committed flush; never blocks."""
        rules = self.rules
        if not rules:
            return
        ring = self._ring
        for r in readings:
            if r.order is not None and r.metric in rules:
                if len(ring) >= self.capacity:
                    self.dropped += 1
                    metrics.dispatcher_dropped.inc()
                    continue
                ring.append(r)
        if ring:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._ring:
                taken = list(self._ring)
                self._ring.clear()
                await self._dispatch(taken)
            if self._closing and not self._ring:
                return

    def evaluate(self, readings: list[Reading]) -> list[tuple[object, ...]]:
        """Effects of ``readings`` in each device's time order."""
        now = datetime.now(timezone.utc)
        effects: list[tuple[object, ...]] = []
        for r in sorted(readings, key=lambda r: (r.device, r.ts)):
            value = r.value
            if type(value) is not float:
                continue
            for rule in self.rules.get(r.metric, ()):
                key = (rule.id, r.order, r.device)
                breach = rule.test(value, rule.threshold)
                if breach == (key in self._open):
                    continue
                state = "breach" if breach else "recovered"
                if breach:
                    self._open.add(key)  # type: ignore[arg-type]
                else:
                    self._open.discard(key)  # type: ignore[arg-type]
                payload = {
                    "rule": rule.id, "device": r.device, "metric": r.metric,
                    "value": value, "op": rule.op, "threshold": rule.threshold,
                    "state": state,
                }  # fmt: skip
                effects.append(
                    (
                        r.order,
                        rule.kind if breach else f"{rule.kind}_recovered",
                        orjson.dumps(payload).decode(),
                        f"{rule.id}|{r.order}|{r.device}|{r.ts}|{state}",
                        datetime.fromtimestamp(r.ts / 1e6, tz=timezone.utc),
                        now,
                    )
                )
        return effects

    async def _dispatch(self, readings: list[Reading]) -> None:
        effects = self.evaluate(readings)
        if not effects:
            return
        columns = [list(c) for c in zip(*effects, strict=True)]
        delay = 0.1
        while True:
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    ids = [row[0] for row in await conn.fetch(WRITE, *columns)]
                    if ids:
                        await conn.execute(
                            "SELECT pg_notify('ingestd_order_updates', $1)",
                            str(max(ids)),
                        )
                break
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                log.orders.warning("outbox write failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.written += len(ids)
        metrics.order_updates.inc(len(ids))
