"""Shared parts of the benchmarks: one uvloop loop, PostgreSQL, fresh databases.

pytest-benchmark times synchronous callables, so async work runs on one
uvloop loop of the session's own (``bench_loop.run_until_complete``), never
on pytest-asyncio's. PostgreSQL is pgserver's, with its data under
``.ingestd/bench-pg``; each session gets migrated databases of its own,
dropped at the end.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator

import asyncpg
import pytest
import uvloop

from bench import harness
from ingestd.storage import database


@pytest.fixture(scope="session")
def bench_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A uvloop loop for the session; an exception it swallowed fails it."""
    loop = uvloop.new_event_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    assert not errors, errors


@pytest.fixture(scope="session")
def pg_uri() -> str:
    return harness.embedded_postgres(harness.ROOT / ".ingestd" / "bench-pg")


@pytest.fixture(scope="session")
def fresh_database(
    bench_loop: asyncio.AbstractEventLoop, pg_uri: str
) -> Iterator[Callable[[str], str]]:
    """Make a migrated database for this session; returns its DSN."""
    made: list[str] = []

    async def create(name: str) -> str:
        dsn = await harness.create_database(pg_uri, name)
        conn = await asyncpg.connect(dsn)
        try:
            await database.migrate(conn)
        finally:
            await conn.close()
        return dsn

    def make(purpose: str) -> str:
        name = f"bench_{purpose}_{os.getpid()}"
        made.append(name)
        return bench_loop.run_until_complete(create(name))

    yield make

    async def drop() -> None:
        conn = await asyncpg.connect(pg_uri)
        try:
            for name in made:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    bench_loop.run_until_complete(drop())
