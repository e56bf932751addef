"""Effects of one dispatch, written in one transaction, a statement per table.

Every effect has a key (``rule|subject|device|µs|what``) and every table a
unique constraint on it, so writing the same effect twice (a redelivered
reading, a catch-up re-reading its safety margin, a late reading that made
a device's history be evaluated again) changes nothing. Tickets and
downtime also allow at most one open row per rule, order and device.

Order of statements: closing earlier incidents before opening new ones
(the one-open index), the effect tables before the outbox (whose rows look
their ids up by key), the watermark last; then ``NOTIFY`` with the newest
outbox id. An incident opened and closed within one dispatch is inserted
already closed, and also closed by key, in case a re-evaluation found again
an incident written open before. A close by key that finds the row closed
at another time (late readings filled the gap before the close written
first) revises it, and its outbox row then gets a key of its own naming
both closes, written only by the transaction that moved the close.

An incident found to have begun earlier than the open row says (a backlog
of earlier readings arrives after the live ones) is the same incident: the
open row whose start falls within the rebuilt one takes the rebuilt key and
start, so one ticket or interval runs throughout and its close finds it by
key. The outbox row of the earlier start says which start it replaces.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import asyncpg
import orjson

from ..pipeline.bindings import _us

# A close the newest evaluation in time order puts elsewhere than the row
# says (late readings in the gap before it) is revised; ``before`` is the
# close it replaces, NULL for a first close. The same close again (a
# redelivery, the catch-up's margin) matches no row.
CLOSE_TICKETS = """
UPDATE ingestd.service_tickets t
SET closed_at = u.at, closed_detected_at = u.detected, peak = u.peak
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::float8[])
     AS u(key, at, detected, peak),
     ingestd.service_tickets old
WHERE t.effect_key = u.key AND old.id = t.id
  AND t.closed_at IS DISTINCT FROM u.at
RETURNING t.effect_key, old.closed_at AS before, t.closed_at AS after
"""


# The open row of the same rule, order and device that began within a
# rebuilt incident (from its start until its end, or on) is that incident
# found late from its start: it takes the rebuilt key and start. Not when a
# row has the rebuilt key already (that would break the key's uniqueness).
def _subsume(table: str, start: str, end: str) -> str:
    return f"""
UPDATE ingestd.{table} t
SET effect_key = u.key, {start} = u.start
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
            $6::timestamptz[]) AS u(key, order_id, device_id, rule_id, start, stop),
     ingestd.{table} old
WHERE old.id = t.id AND t.{end} IS NULL AND t.effect_key <> u.key
  AND t.rule_id = u.rule_id AND t.order_id = u.order_id
  AND t.device_id = u.device_id
  AND t.{start} >= u.start AND (u.stop IS NULL OR t.{start} < u.stop)
  AND NOT EXISTS (SELECT FROM ingestd.{table} k WHERE k.effect_key = u.key)
RETURNING t.effect_key, old.{start} AS before, t.{start} AS after
"""


SUBSUME_TICKETS = _subsume("service_tickets", "opened_at", "closed_at")
SUBSUME_DOWNTIME = _subsume("downtime", "started_at", "ended_at")

OPEN_TICKETS = """
INSERT INTO ingestd.service_tickets
    (effect_key, kind, order_id, device_id, rule_id, reason, opened_at,
     detected_at, closed_at, closed_detected_at, peak)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::timestamptz[], $8::timestamptz[],
                     $9::timestamptz[], $10::timestamptz[], $11::float8[])
ON CONFLICT DO NOTHING
"""

END_DOWNTIME = """
UPDATE ingestd.downtime d
SET ended_at = u.at, end_detected_at = u.detected
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS u(key, at, detected),
     ingestd.downtime old
WHERE d.effect_key = u.key AND old.id = d.id AND d.ended_at IS DISTINCT FROM u.at
RETURNING d.effect_key, old.ended_at AS before, d.ended_at AS after
"""

START_DOWNTIME = """
INSERT INTO ingestd.downtime
    (effect_key, order_id, device_id, rule_id, cause, started_at, detected_at,
     ended_at, end_detected_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::timestamptz[], $7::timestamptz[], $8::timestamptz[],
                     $9::timestamptz[])
ON CONFLICT DO NOTHING
"""

STOCK = """
INSERT INTO ingestd.stock_levels
    (effect_key, sku, location, device_id, units, weight_kg, measured_at, detected_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[],
                     $6::float8[], $7::timestamptz[], $8::timestamptz[])
ON CONFLICT (effect_key) DO NOTHING
"""

OUTBOX = """
INSERT INTO ingestd.order_updates
    (order_id, kind, payload, effect_key, occurred_at, detected_at,
     ticket_id, stock_id, downtime_id)
SELECT u.order_id, u.kind, u.payload, u.key, u.occurred, u.detected,
       (SELECT id FROM ingestd.service_tickets WHERE effect_key = u.ticket),
       (SELECT id FROM ingestd.stock_levels WHERE effect_key = u.stock),
       (SELECT id FROM ingestd.downtime WHERE effect_key = u.downtime)
FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::timestamptz[],
            $6::timestamptz[], $7::text[], $8::text[], $9::text[])
     WITH ORDINALITY AS u(order_id, kind, payload, key, occurred, detected,
                          ticket, stock, downtime, n)
ORDER BY u.n
ON CONFLICT (effect_key) DO NOTHING
RETURNING id
"""

WATERMARK = """
INSERT INTO ingestd.dispatch_watermark (seq) VALUES ($1)
ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, updated_at = now()
"""


def moment(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


class Effects:
    """What one dispatch found, collected in evaluation order."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)
        self.outbox: list[tuple[Any, ...]] = []
        self.tickets: dict[str, list[Any]] = {}
        # key -> close; the last evaluation of a key in this dispatch wins
        self.ticket_closes: dict[str, tuple[str, datetime, datetime, float | None]]
        self.ticket_closes = {}
        self.downtime: dict[str, list[Any]] = {}
        self.downtime_ends: dict[str, tuple[str, datetime, datetime]] = {}
        self.closing: dict[str, int] = {}  # ticket/downtime key -> its close row
        self.opening: dict[str, int] = {}  # ticket/downtime key -> its open row
        self.stock: list[tuple[Any, ...]] = []

    def __bool__(self) -> bool:
        return bool(self.outbox)

    def update(
        self,
        order: str | None,
        kind: str,
        payload: dict[str, Any],
        key: str,
        occurred: int,
        *,
        ticket: str | None = None,
        stock: str | None = None,
        downtime: str | None = None,
        closes: bool = False,
    ) -> None:
        """One outbox row; ``ticket``/``stock``/``downtime`` name its row by key.

        ``closes``: the row reports the close of that ticket or downtime; one
        such row per ticket in a dispatch, the last evaluation's.
        """
        row = (
            order, kind, orjson.dumps(payload).decode(), key, moment(occurred),
            self.now, ticket, stock, downtime,
        )  # fmt: skip
        ref = ticket or downtime
        if closes and ref is not None:
            at = self.closing.get(ref)
            if at is not None:
                self.outbox[at] = row
                return
            self.closing[ref] = len(self.outbox)
        elif ref is not None:
            self.opening.setdefault(ref, len(self.outbox))
        self.outbox.append(row)

    def open_ticket(
        self, key: str, kind: str, order: str, device: str, rule: str,
        reason: str, opened: int,
    ) -> None:  # fmt: skip
        self.tickets[key] = [
            key, kind, order, device, rule, reason, moment(opened), self.now,
            None, None, None,
        ]  # fmt: skip

    def close_ticket(self, key: str, closed: int, peak: float | None) -> None:
        row = self.tickets.get(key)
        if row is not None:  # opened in this dispatch: insert it closed
            row[8], row[9], row[10] = moment(closed), self.now, peak
        # ... and close it in case it was written open before (a re-evaluation)
        self.ticket_closes[key] = (key, moment(closed), self.now, peak)

    def start_downtime(
        self, key: str, order: str, device: str, rule: str, cause: str, at: int
    ) -> None:
        self.downtime[key] = [
            key, order, device, rule, cause, moment(at), self.now, None, None
        ]  # fmt: skip

    def end_downtime(self, key: str, at: int) -> None:
        row = self.downtime.get(key)
        if row is not None:
            row[7], row[8] = moment(at), self.now
        self.downtime_ends[key] = (key, moment(at), self.now)

    def stock_level(
        self, key: str, sku: str, location: str, device: str, units: int,
        weight: float, at: int,
    ) -> None:  # fmt: skip
        self.stock.append(
            (key, sku, location, device, units, weight, moment(at), self.now)
        )

    async def write(self, conn: asyncpg.Connection, watermark: int | None) -> int:
        """Write everything in one transaction; returns the outbox rows added."""
        ids: list[int] = []
        async with conn.transaction():
            # Before the closes by key: a subsumed row closes under its new key
            if self.tickets:
                found = [
                    (r[0], r[2], r[3], r[4], r[6], r[8]) for r in self.tickets.values()
                ]
                self._restarted(await conn.fetch(SUBSUME_TICKETS, *_columns(found)))
            if self.downtime:
                found = [
                    (r[0], r[1], r[2], r[3], r[5], r[7]) for r in self.downtime.values()
                ]
                self._restarted(await conn.fetch(SUBSUME_DOWNTIME, *_columns(found)))
            if self.ticket_closes:
                closes = _columns(self.ticket_closes.values())
                self._revised(await conn.fetch(CLOSE_TICKETS, *closes))
            if self.tickets:
                await conn.execute(OPEN_TICKETS, *_columns(self.tickets.values()))
            if self.downtime_ends:
                ends = _columns(self.downtime_ends.values())
                self._revised(await conn.fetch(END_DOWNTIME, *ends))
            if self.downtime:
                await conn.execute(START_DOWNTIME, *_columns(self.downtime.values()))
            if self.stock:
                await conn.execute(STOCK, *_columns(self.stock))
            if self.outbox:
                rows = await conn.fetch(OUTBOX, *_columns(self.outbox))
                ids = [row[0] for row in rows]
            if watermark is not None:
                await conn.execute(WATERMARK, watermark)
            if ids:
                await conn.execute(
                    "SELECT pg_notify('ingestd_order_updates', $1)", str(max(ids))
                )
        return len(ids)

    def _restarted(self, rows: list[asyncpg.Record]) -> None:
        """Open rows that took an earlier start: the outbox row reporting
        that start names the one it replaces (``revised_from``). Its key is
        the rebuilt incident's own, so it is written once."""
        for key, before, after in rows:
            at = self.opening.get(key)
            if at is None or before == after:
                continue
            row = list(self.outbox[at])
            payload = orjson.loads(row[2])
            payload["revised_from"] = _us(before)
            row[2] = orjson.dumps(payload).decode()
            self.outbox[at] = tuple(row)

    def _revised(self, rows: list[asyncpg.Record]) -> None:
        """Closes that replaced another: their outbox row says so, keyed anew.

        The row's key gains the close it replaces and the new one
        (``…|closed|µs before|µs now``), so the revision is written exactly
        once: only the transaction whose UPDATE moved the close writes it.
        """
        for key, before, after in rows:
            at = self.closing.get(key) if before is not None else None
            if at is None:
                continue
            row = list(self.outbox[at])
            payload = orjson.loads(row[2])
            payload["revised_from"] = _us(before)
            row[2] = orjson.dumps(payload).decode()
            row[3] = f"{row[3]}|{_us(before)}|{_us(after)}"
            self.outbox[at] = tuple(row)


def _columns(rows: Any) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]
