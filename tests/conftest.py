"""Real parts for the tests: PostgreSQL, a private Mosquitto, the server.

One embedded PostgreSQL (pgserver, data under ``.ingestd/test-pg``) serves
every run; each run gets its own fresh database, and each test module that
needs a server its own. ``INGESTD_TEST_DSN`` points the tests at another
PostgreSQL server instead (a database is still created per run).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from bench import harness

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"


def pytest_report_header() -> str:
    return f"fixtures: {FIXTURES} ({'found' if FIXTURES.is_dir() else 'MISSING'})"


@pytest.fixture(scope="session")
def pg_uri() -> str:
    configured = os.environ.get("INGESTD_TEST_DSN")
    if configured:
        return configured
    return harness.embedded_postgres(ROOT / ".ingestd" / "test-pg")


@pytest.fixture(scope="session")
def run_id() -> str:
    return f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def broker() -> Iterator[harness.Mosquitto]:
    mosquitto = harness.Mosquitto().start()
    yield mosquitto
    mosquitto.stop()


class Deployment:
    """A fresh database and a server process for one test module."""

    def __init__(
        self,
        dsn: str,
        server: harness.IngestdProcess,
        broker_port: int,
        coap_port: int = 0,
    ) -> None:
        self.dsn = dsn
        self.server = server
        self.broker_port = broker_port
        self.coap_port = coap_port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn)

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await self.connect()
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def fetchval(self, sql: str, *args: object) -> object:
        conn = await self.connect()
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()


async def deploy(
    pg_uri: str,
    name: str,
    broker: harness.Mosquitto,
    tmp: Path,
    extra: str = "",
    client_id: str | None = None,
    mqtt_extra: str = "",
    fresh: bool = True,
    sections: dict[str, str] | None = None,
) -> Deployment:
    """Create database ``name`` (unless not ``fresh``) and start a server on it.

    ``extra`` is TOML appended to the configuration; ``mqtt_extra`` goes
    into its ``[mqtt]`` table, and ``sections`` adds lines to other tables
    (``{"http": "tls_port = 8443\n"}``).
    """
    if fresh:
        dsn = await harness.create_database(pg_uri, name)
    else:
        dsn = harness.with_database(pg_uri, name)
    http_port, admin_port = harness.free_port(), harness.free_port()
    coap_port = harness.free_port()
    text = harness.config_text(
        dsn, broker.port, http_port, admin_port, tmp / "state",
        client_id=client_id or f"ingestd-{name}", coap_port=coap_port,
    ) + extra  # fmt: skip
    for table, lines in {"mqtt": mqtt_extra, **(sections or {})}.items():
        text = text.replace(f"[{table}]\n", f"[{table}]\n{lines}", 1)
    server = harness.IngestdProcess(text, tmp, http_port, admin_port)
    await asyncio.to_thread(server.start)
    return Deployment(dsn, server, broker.port, coap_port)


@pytest.fixture(scope="module")
async def deployment(
    request: pytest.FixtureRequest,
    pg_uri: str,
    run_id: str,
    broker: harness.Mosquitto,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Deployment]:
    module = request.module.__name__.rsplit(".", 1)[-1]
    tmp = tmp_path_factory.mktemp(module)
    extra = getattr(request.module, "SERVER_CONFIG", "")
    d = await deploy(pg_uri, f"t_{module}_{run_id}", broker, tmp, extra)
    yield d
    code = await asyncio.to_thread(d.server.stop)
    assert code == 0, d.server.log.read_text()[-3000:]


@pytest.fixture(autouse=True)
async def fail_on_loop_errors() -> AsyncIterator[None]:
    """Any exception the event loop swallowed fails the test."""
    errors: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    yield
    loop.set_exception_handler(previous)
    assert not errors, errors
