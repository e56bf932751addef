"""One flush, one transaction: dead letters, registry, readings.

Readings are COPYed (binary) into a per-connection staging table, then moved
with ``INSERT ... ON CONFLICT DO NOTHING`` so a redelivered reading is stored
once. Measured on the 2-core reference machine (``bench/test_bench_copy.py``):
a plain COPY into an unindexed table takes about 440,000 rows/s in batches of
1,000 and 990,000 in batches of 10,000; this flush about 118,000 and 173,000.
The staging and the primary-key probe are the price of idempotency without a
round trip per row. The readings statement runs last so that ``stored_at``
(its statement time) is within a commit of the truth.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from ..model import Reading

STAGE_COLUMNS = (
    "device_id", "metric", "ts_us", "value_num", "value_text", "value_bool",
    "value_bytes", "value_json", "unit", "received_us", "transport", "format",
    "order_id",
)  # fmt: skip

MOVE_READINGS = """
INSERT INTO ingestd.readings (
    device_id, metric, ts, value_num, value_text, value_bool, value_bytes,
    value_json, unit, received_at, transport, format, order_id)
SELECT device_id, metric,
       'epoch'::timestamptz + ts_us * interval '1 microsecond',
       value_num, value_text, value_bool, value_bytes, value_json, unit,
       'epoch'::timestamptz + received_us * interval '1 microsecond',
       transport, format, order_id
FROM reading_stage
ON CONFLICT DO NOTHING
"""

# Rows are locked in id order so that concurrent flushes (several workers)
# never wait on each other in a cycle.
UPSERT_DEVICES = """
INSERT INTO ingestd.devices AS d (id, status, last_seen, firmware, transports, formats)
SELECT u.id, 'online', 'epoch'::timestamptz + u.seen_us * interval '1 microsecond',
       u.firmware, string_to_array(u.transports, ','), string_to_array(u.formats, ',')
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])
     AS u(id, seen_us, firmware, transports, formats)
ORDER BY u.id
ON CONFLICT (id) DO UPDATE SET
    status = 'online',
    last_seen = greatest(d.last_seen, excluded.last_seen),
    firmware = coalesce(excluded.firmware, d.firmware),
    transports = CASE WHEN excluded.transports <@ d.transports THEN d.transports
        ELSE ARRAY(SELECT DISTINCT unnest(d.transports || excluded.transports)
                   ORDER BY 1) END,
    formats = CASE WHEN excluded.formats <@ d.formats THEN d.formats
        ELSE ARRAY(SELECT DISTINCT unnest(d.formats || excluded.formats)
                   ORDER BY 1) END
"""

# After the upsert: a death certificate wins over the heartbeat of its flush
MARK_OFFLINE = """
UPDATE ingestd.devices SET status = 'offline'
WHERE id = ANY($1::text[]) AND status = 'online'
"""

RECORD_ALIASES = """
INSERT INTO ingestd.device_aliases (namespace, external_id, device_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
ON CONFLICT DO NOTHING
"""

DEAD_LETTER_COLUMNS = (
    "received_at", "transport", "source", "device_id", "reason", "details",
    "payload",
)  # fmt: skip


def stage_row(r: Reading) -> tuple[Any, ...]:
    """A reading as a row of ``reading_stage``: its value in its column."""
    v = r.value
    kind = type(v)
    if kind is float:
        num, text, flag, blob, doc = v, None, None, None, None
    elif kind is str:
        num, text, flag, blob, doc = None, v, None, None, None
    elif kind is bool:
        num, text, flag, blob, doc = None, None, v, None, None
    elif r.data is not None:
        num, text, flag, blob, doc = None, None, None, r.data, None
    else:
        num, text, flag, blob, doc = None, None, None, None, orjson.dumps(v).decode()
    return (
        r.device, r.metric, r.ts, num, text, flag, blob, doc, r.unit,
        r.received, r.transport, r.format, r.order,
    )  # fmt: skip


async def write(
    conn: asyncpg.Connection,
    rows: list[tuple[Any, ...]],
    devices: dict[str, list[Any]],
    dead: list[tuple[Any, ...]],
    offline: set[str] | None = None,
    aliases: list[tuple[str, str, str]] | None = None,
) -> None:
    """Write one flush in one transaction; raises if nothing was committed."""
    async with conn.transaction():
        if dead:
            await conn.copy_records_to_table(
                "dead_letters", schema_name="ingestd", records=dead,
                columns=DEAD_LETTER_COLUMNS,
            )  # fmt: skip
        if devices:
            ids = sorted(devices)
            await conn.execute(
                UPSERT_DEVICES,
                ids,
                [devices[i][0] for i in ids],
                [devices[i][1] for i in ids],
                [",".join(sorted(devices[i][2])) for i in ids],
                [",".join(sorted(devices[i][3])) for i in ids],
            )
        if offline:
            await conn.execute(MARK_OFFLINE, sorted(offline))
        if aliases:
            await conn.execute(RECORD_ALIASES, *map(list, zip(*aliases, strict=True)))
        if rows:
            await conn.copy_records_to_table(
                "reading_stage", records=rows, columns=STAGE_COLUMNS
            )
            await conn.execute(MOVE_READINGS)
