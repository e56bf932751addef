"""Where PostgreSQL is, and getting it ready: migrations and partitions.

With no DSN configured (nor ``$INGESTD_DSN``), ingestd starts an embedded
PostgreSQL from the ``pgserver`` package whose data lives under the state
directory and survives restarts; the server keeps running after ingestd
exits, so a restarted or second process finds it again.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import asyncpg

from .. import log

MIGRATIONS = Path(__file__).resolve().parents[2] / "schemas" / "migrations"
MIGRATION_LOCK = 0x1D6E57D  # advisory lock id: one migrator at a time
MONTHS_AHEAD = 2


def embedded_dsn(state_dir: Path) -> str:
    """Start (or find running) the embedded PostgreSQL; return its URI."""
    import pgserver  # imported late: only the embedded default needs it

    data = state_dir / "pgdata"
    data.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data), cleanup_mode=None)
    log.storage.info("embedded PostgreSQL at %s", data)
    return str(server.get_uri())


def resolve_dsn(configured: str, state_dir: Path) -> str:
    return configured or os.environ.get("INGESTD_DSN", "") or embedded_dsn(state_dir)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the SQL files in ``schemas/migrations`` not yet applied."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS public.ingestd_migrations ("
            " name text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in await conn.fetch("SELECT name FROM ingestd_migrations")}
        for path in sorted(MIGRATIONS.glob("*.sql")):
            if path.name in done:
                continue
            await conn.execute(path.read_text())
            await conn.execute(
                "INSERT INTO ingestd_migrations (name) VALUES ($1)", path.name
            )
            applied.append(path.name)
    if applied:
        log.storage.info("applied migrations %s", ", ".join(applied))
    await ensure_partitions(conn, date.today())
    return applied


async def ensure_partitions(conn: asyncpg.Connection, today: date) -> None:
    """Monthly reading partitions from this month to MONTHS_AHEAD on.

    Creating a partition fails if the default partition already holds rows
    of its month (readings that arrived before the partition existed). Such
    a month is logged and left in the default partition; moving the rows
    out and retrying creates it.
    """
    year, month = today.year, today.month
    for _ in range(MONTHS_AHEAD + 1):
        nyear, nmonth = (year + 1, 1) if month == 12 else (year, month + 1)
        name = f"readings_y{year:04d}m{month:02d}"
        sql = (
            f"CREATE TABLE IF NOT EXISTS ingestd.{name} PARTITION OF "
            f"ingestd.readings FOR VALUES FROM ('{year:04d}-{month:02d}-01') "
            f"TO ('{nyear:04d}-{nmonth:02d}-01')"
        )
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            log.storage.warning("partition %s not created: %s", name, exc)
        year, month = nyear, nmonth


async def connect_pool(dsn: str, size: int, timeout: float) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn,
        min_size=size,
        max_size=size,
        timeout=timeout,
        command_timeout=60,
        init=_prepare_connection,
    )


async def _prepare_connection(conn: asyncpg.Connection) -> None:
    # Each connection stages its COPY in its own temporary table, emptied at
    # commit, so concurrent flushes never see each other's rows.
    await conn.execute(STAGE_TABLE)


STAGE_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS reading_stage (
    device_id   text,
    metric      text,
    ts_us       bigint,
    value_num   double precision,
    value_text  text,
    value_bool  boolean,
    value_bytes bytea,
    value_json  jsonb,
    unit        text,
    received_us bigint,
    transport   text,
    format      text,
    order_id    text
) ON COMMIT DELETE ROWS
"""
