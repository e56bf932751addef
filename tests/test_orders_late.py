"""Late data one reading per message: incidents bounded by the readings' own time.

A machine sends its live readings (all normal) first, then a backlog from
five minutes earlier, one reading per HTTP request, holding two incidents.
Each is found late; both must end up as their own ticket (downtime
interval) with the times the readings give, not closed at the first live
reading, not overlapping, and every outbox row written exactly once, also
when the backlog is delivered again.
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
"""

T0 = 1_714_579_200  # 2024-05-01T16:00:00Z

SETUP = """
INSERT INTO oms.orders (id, kind, product) VALUES
    ('PO-7', 'production', 'pump shaft'), ('PO-8', 'production', 'pump shaft'),
    ('PO-9', 'production', 'pump shaft'), ('PO-10', 'production', 'pump shaft');
INSERT INTO oms.device_bindings (device_id, kind, order_id, valid_from, valid_to)
VALUES ('mach-1', 'production', 'PO-7', '-infinity', 'infinity'),
       ('mach-2', 'production', 'PO-8', '-infinity', 'infinity'),
       ('mach-3', 'production', 'PO-9', '-infinity', 'infinity'),
       ('mach-4', 'production', 'PO-10', '-infinity', 'infinity');
INSERT INTO ingestd.rules
    (id, metric, op, threshold, kind, rule_type, action, params, product) VALUES
    ('vibration', 'vibration', '>', 7.1, 'bearing_vibration', 'threshold',
     'service_ticket', '{"hysteresis": 0.5, "min_duration_s": 20}', NULL),
    ('machine-fault', 'state', NULL, NULL, 'machine_fault', 'state', 'downtime',
     '{"states": ["fault"], "min_duration_s": 20}', NULL);
"""

# Seconds after T0. Live readings from 16:25:00; the backlog from 16:20:00
# with incidents from 1210 to 1250 and from 1270 to 1300 (each BAD for 20 s
# by its third reading, which opens it).
LIVE = [1500 + 10 * i for i in range(4)]
BACKLOG = [1200 + 10 * i for i in range(12)]
BAD_AT = {1210, 1220, 1230, 1240, 1270, 1280, 1290}
OPENS = {1230: 1210, 1290: 1270}  # the reading that opens an incident -> start
INCIDENTS = [(1210, 1250), (1270, 1300)]


def _vibration(t: int) -> float:
    return 8.0 + (t % 30) / 10 if t in BAD_AT else 3.0


def _state(t: int) -> str:
    return "fault" if t in BAD_AT else "running"


async def _post(d: Deployment, device: str, body: Any) -> None:
    client = await RawHttp.open(d.server.http_port)
    status, _, answer = await client.post(
        f"/v1/devices/{device}/telemetry", orjson.dumps(body)
    )
    await client.close()
    assert status == 202, answer


async def _count(d: Deployment, sql: str, count: int) -> None:
    async def enough() -> bool | None:
        return True if await d.fetchval(sql) >= count else None

    await wait_for(enough, timeout=10)


TABLES = {
    # device -> (metric, value, interval table, its start, its end)
    "mach-1": ("vibration", _vibration, "service_tickets", "opened_at", "closed_at"),
    "mach-2": ("state", _state, "downtime", "started_at", "ended_at"),
    "mach-3": ("vibration", _vibration, "service_tickets", "opened_at", "closed_at"),
    "mach-4": ("state", _state, "downtime", "started_at", "ended_at"),
}


async def _late_series(d: Deployment, device: str) -> None:
    metric, value, table, start, _end = TABLES[device]
    live = [{"ts": (T0 + t) * 1000, metric: value(t)} for t in LIVE]
    await _post(d, device, live)
    await asyncio.sleep(0.5)
    opened = 0
    for t in BACKLOG:  # one reading per request
        await _post(d, device, {"ts": (T0 + t) * 1000, metric: value(t)})
        if t in OPENS:
            # Let the dispatcher write the incident before the reading that
            # ends it arrives, as a slow backlog would
            opened += 1
            await _count(
                d, f"SELECT count(*) FROM ingestd.{table} WHERE device_id = "
                f"'{device}'", opened,
            )  # fmt: skip


async def _intervals(d: Deployment, device: str) -> list[tuple[float, float | None]]:
    _metric, _value, table, start, end = TABLES[device]
    rows = await d.fetch(
        f"SELECT {start} AS a, {end} AS b FROM ingestd.{table} "
        f"WHERE device_id = $1 ORDER BY {start}",
        device,
    )
    return [
        (r["a"].timestamp() - T0, None if r["b"] is None else r["b"].timestamp() - T0)
        for r in rows
    ]


async def _outbox(d: Deployment, device: str) -> list[tuple[Any, ...]]:
    rows = await d.fetch(
        "SELECT id, kind, effect_key, occurred_at, detected_at, "
        "coalesce(ticket_id, downtime_id) AS ref FROM ingestd.order_updates "
        "WHERE payload->>'device' = $1 ORDER BY id",
        device,
    )
    return [tuple(r) for r in rows]


async def test_orders_late_setup(deployment: Deployment) -> None:
    conn = await deployment.connect()
    await conn.execute(SETUP)
    await conn.close()
    await asyncio.sleep(0.6)  # two refreshes of bindings and rules
    assert await deployment.fetchval("SELECT count(*) FROM ingestd.rules") == 2


async def _check(d: Deployment, device: str, opened: str, closed: str) -> None:
    await _late_series(d, device)

    async def settled() -> bool | None:
        return True if await _intervals(d, device) == INCIDENTS else None

    await wait_for(settled, timeout=10)
    intervals = await _intervals(d, device)
    # Each incident its own row, bounded by the late readings' own times
    assert intervals == INCIDENTS, intervals
    rows = await _outbox(d, device)
    kinds = [(kind, ref) for _id, kind, _key, _at, _found, ref in rows]
    refs = sorted({ref for _kind, ref in kinds})
    assert len(refs) == 2
    for ref, (begin, finish) in zip(refs, INCIDENTS, strict=True):
        mine = [r for r in rows if r[5] == ref]
        assert [r[1] for r in mine if r[1] == opened] == [opened]  # once
        assert mine[0][1] == opened and mine[0][3].timestamp() == T0 + begin
        # Closed first at the first live reading (all that was known when
        # it opened), then revised once to when it really ended, a row
        # keyed by the close it replaces and the new one
        closes = [r for r in mine if r[1] == closed]
        assert [r[3].timestamp() - T0 for r in closes] == [LIVE[0], finish], mine
        before, after = (T0 + LIVE[0]) * 10**6, (T0 + finish) * 10**6
        assert closes[-1][2].endswith(f"|{before}|{after}"), closes
    for _id, _kind, _key, occurred, detected, _ref in rows:
        assert detected > occurred  # found late, reported at its own time

    # Delivered again, one by one and as one message: nothing new
    metric, value, *_ = TABLES[device]
    for t in BACKLOG:
        await _post(d, device, {"ts": (T0 + t) * 1000, metric: value(t)})
    await _post(d, device, [{"ts": (T0 + t) * 1000, metric: value(t)} for t in BACKLOG])
    await asyncio.sleep(1.0)
    assert await _intervals(d, device) == INCIDENTS
    assert await _outbox(d, device) == rows


async def test_orders_late_tickets_one_reading_per_message(
    deployment: Deployment,
) -> None:
    await _check(deployment, "mach-1", "service_ticket_opened", "service_ticket_closed")


async def test_orders_late_downtime_one_reading_per_message(
    deployment: Deployment,
) -> None:
    await _check(deployment, "mach-2", "downtime_started", "downtime_ended")


# An incident the live readings show open from 3500, then a backlog that
# shows it began at 3440: one incident, from 3440, closed at 3550
EARLY_LIVE = [3500, 3510, 3520, 3530]
EARLY_BACKLOG = [3440, 3450, 3460, 3470, 3480, 3490]
EARLY_BAD = {*EARLY_LIVE, *EARLY_BACKLOG}


async def _check_earlier_start(
    d: Deployment, device: str, opened: str, closed: str
) -> None:
    metric, value, table, start, end = TABLES[device]

    def reading(t: int) -> dict[str, Any]:
        bad = value(next(iter(BAD_AT)))  # a BAD value of this metric
        good = value(LIVE[0])
        return {"ts": (T0 + t) * 1000, metric: bad if t in EARLY_BAD else good}

    await _post(d, device, [reading(t) for t in EARLY_LIVE])
    await _count(d, f"SELECT count(*) FROM ingestd.{table} WHERE device_id = "
                 f"'{device}'", 1)  # fmt: skip
    assert await _intervals(d, device) == [(3500, None)]
    await _post(d, device, [reading(t) for t in EARLY_BACKLOG])

    async def moved() -> bool | None:
        return True if await _intervals(d, device) == [(3440, None)] else None

    assert await wait_for(moved, timeout=10), await _intervals(d, device)
    await _post(d, device, reading(3550))  # normal again: it closes

    async def closed_now() -> bool | None:
        return True if await _intervals(d, device) == [(3440, 3550)] else None

    assert await wait_for(closed_now, timeout=10), await _intervals(d, device)
    rows = await _outbox(d, device)
    refs = {ref for *_rest, ref in rows}
    assert len(refs) == 1, rows  # one ticket or interval throughout
    assert [(kind, at.timestamp() - T0) for _id, kind, _k, at, _f, _r in rows] == [
        (opened, 3500), (opened, 3440), (closed, 3550),
    ]  # fmt: skip
    revised = orjson.loads(
        await d.fetchval(
            "SELECT payload FROM ingestd.order_updates WHERE id = $1", rows[1][0]
        )
    )
    assert revised["revised_from"] == (T0 + 3500) * 10**6, revised

    # Delivered again: nothing new
    await _post(d, device, [reading(t) for t in EARLY_BACKLOG])
    await _post(d, device, [reading(t) for t in EARLY_LIVE])
    await asyncio.sleep(1.0)
    assert await _intervals(d, device) == [(3440, 3550)]
    assert await _outbox(d, device) == rows


async def test_orders_late_ticket_found_to_begin_earlier(
    deployment: Deployment,
) -> None:
    await _check_earlier_start(
        deployment, "mach-3", "service_ticket_opened", "service_ticket_closed"
    )


async def test_orders_late_downtime_found_to_begin_earlier(
    deployment: Deployment,
) -> None:
    await _check_earlier_start(
        deployment, "mach-4", "downtime_started", "downtime_ended"
    )
