"""The write path on a real PostgreSQL: what staging and ON CONFLICT cost.

    python -m pytest bench/test_bench_copy.py --benchmark-only

Group ``copy``, each at 1,000 and 10,000 rows a flush:

- ``plain``: binary COPY of the rows into a plain logged table with the
  staging table's columns and no index, the floor a flush cannot beat;
- ``flush``: ``writer.write``, the real flush: COPY into ``reading_stage``,
  ``INSERT ... ON CONFLICT DO NOTHING`` into the partitioned readings, and
  the registry upsert of the flush's devices (100), in one transaction;
- ``redelivery``: the same flush of rows every one of which is stored
  already, as when a broker redelivers after a lost acknowledgement.

The rows are a tracker fleet's: 100 devices, six readings a message (five
numbers, one boolean). Every round but ``redelivery``'s takes fresh keys,
times counted up from midnight UTC today, so nothing is deduplicated. Rows
are made in pedantic's setup, outside the timing: rows/s = rows / median.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import asyncpg
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from ingestd.model import Reading
from ingestd.pipeline import writer
from ingestd.storage import database

Row = tuple[Any, ...]
Devices = dict[str, list[Any]]

SIZES = [1_000, 10_000]
ROUNDS = 10
DEVICES = [f"tracker-{i:03d}" for i in range(100)]
MESSAGE_US = 1_000  # time between two messages of the fleet

PLAIN_TABLE = "CREATE TABLE copy_plain (LIKE reading_stage)"


def tracker_values(k: int) -> list[tuple[str, object, str | None]]:
    """The six readings of message ``k``: varied, plausible values."""
    return [
        ("temp", 3.5 + (k % 17) * 0.1, "Cel"),
        ("humidity", 70.0 + (k % 23), "%RH"),
        ("battery", 3.6 + (k % 11) * 0.01, "V"),
        ("door", k % 97 == 0, None),
        ("gps.lat", 59.9 + (k % 1000) * 1e-5, "lat"),
        ("gps.lon", 10.7 + (k % 1000) * 1e-5, "lon"),
    ]


class Fleet:
    """Rows and registry entries with keys never handed out before."""

    def __init__(self) -> None:
        midnight = datetime.now(timezone.utc).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        self.start = int(midnight.timestamp()) * 1_000_000
        self.messages = itertools.count()

    def flush(self, size: int) -> tuple[list[Row], Devices]:
        """``size`` rows of fresh keys, and the registry entries they touch."""
        rows: list[Row] = []
        devices: Devices = {}
        while len(rows) < size:
            k = next(self.messages)
            device = DEVICES[k % len(DEVICES)]
            ts = self.start + k * MESSAGE_US
            for metric, value, unit in tracker_values(k)[: size - len(rows)]:
                reading = Reading(
                    device, metric, ts, value=value, unit=unit, received=ts + 150_000,
                    transport="http", format="json",
                )  # fmt: skip
                rows.append(writer.stage_row(reading))
            devices[device] = [ts + 150_000, None, {"http"}, {"json"}]
        return rows, devices


@pytest.fixture(scope="module")
def conn(
    bench_loop: asyncio.AbstractEventLoop, fresh_database: Callable[[str], str]
) -> Iterator[asyncpg.Connection]:
    """One connection prepared as the pool prepares its own, plus the plain table."""
    dsn = fresh_database("copy")

    async def connect() -> asyncpg.Connection:
        c = await asyncpg.connect(dsn)
        await c.execute(database.STAGE_TABLE)
        await c.execute(PLAIN_TABLE)
        return c

    c = bench_loop.run_until_complete(connect())
    yield c
    bench_loop.run_until_complete(c.close())


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet()


def count_readings(loop: asyncio.AbstractEventLoop, conn: asyncpg.Connection) -> int:
    query = conn.fetchval("SELECT count(*) FROM ingestd.readings")
    return int(loop.run_until_complete(query))


@pytest.mark.parametrize("size", SIZES)
def test_bench_copy_plain(
    benchmark: BenchmarkFixture,
    bench_loop: asyncio.AbstractEventLoop,
    conn: asyncpg.Connection,
    fleet: Fleet,
    size: int,
) -> None:
    benchmark.group = "copy"
    benchmark.extra_info["rows"] = size

    def copy(rows: list[Row]) -> None:
        bench_loop.run_until_complete(
            conn.copy_records_to_table(
                "copy_plain", records=rows, columns=writer.STAGE_COLUMNS
            )
        )

    def setup() -> tuple[tuple[list[Row]], dict[str, Any]]:
        return (fleet.flush(size)[0],), {}

    benchmark.pedantic(copy, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("size", SIZES)
def test_bench_copy_flush(
    benchmark: BenchmarkFixture,
    bench_loop: asyncio.AbstractEventLoop,
    conn: asyncpg.Connection,
    fleet: Fleet,
    size: int,
) -> None:
    benchmark.group = "copy"
    benchmark.extra_info["rows"] = size
    before = count_readings(bench_loop, conn)

    def flush(rows: list[Row], devices: Devices) -> None:
        bench_loop.run_until_complete(writer.write(conn, rows, devices, []))

    def setup() -> tuple[tuple[list[Row], Devices], dict[str, Any]]:
        return fleet.flush(size), {}

    benchmark.pedantic(flush, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    # Every round stored all its rows: no key was a duplicate
    assert count_readings(bench_loop, conn) - before == (ROUNDS + 1) * size


@pytest.mark.parametrize("size", SIZES)
def test_bench_copy_redelivery(
    benchmark: BenchmarkFixture,
    bench_loop: asyncio.AbstractEventLoop,
    conn: asyncpg.Connection,
    fleet: Fleet,
    size: int,
) -> None:
    benchmark.group = "copy"
    benchmark.extra_info["rows"] = size
    rows, devices = fleet.flush(size)
    bench_loop.run_until_complete(writer.write(conn, rows, devices, []))
    before = count_readings(bench_loop, conn)

    def flush() -> None:
        bench_loop.run_until_complete(writer.write(conn, rows, devices, []))

    benchmark.pedantic(flush, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert count_readings(bench_loop, conn) == before  # every row was a duplicate
