"""The device registry: one row per device, online until it falls silent."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from bench import harness
from ingestd import config
from ingestd.server import Server

from .http_client import RawHttp
from .mqtt_publisher import wait_for


async def test_registry_marks_silent_devices_offline(
    pg_uri: str, run_id: str, tmp_path: Path
) -> None:
    dsn = await harness.create_database(pg_uri, f"t_registry_{run_id}")
    cfg = msgspec.convert(
        {
            "database": {"dsn": dsn, "state_dir": str(tmp_path)},
            "pipeline": {"heartbeat_timeout_s": 1.0},
            "mqtt": {"enabled": False},
            "http": {"port": harness.free_port()},
            "admin": {"enabled": False},
        },
        config.Config,
    )
    server = Server(cfg)
    await server.start()
    try:
        client = await RawHttp.open(cfg.http.port)
        status, _, _ = await client.post("/v1/devices/quiet/telemetry", b'{"t": 1}')
        assert status == 202
        status, _, _ = await client.post("/v1/devices/chatty/telemetry", b'{"t": 1}')
        assert server.pool is not None

        async def status_of(device: str) -> Any:
            return await server.pool.fetchval(  # type: ignore[union-attr]
                "SELECT status FROM ingestd.devices WHERE id = $1", device
            )

        assert await status_of("quiet") == "online"
        for _ in range(6):  # chatty keeps talking for 3 s, quiet does not
            await client.post("/v1/devices/chatty/telemetry", b'{"t": 2}')
            await asyncio.sleep(0.5)

        async def quiet_offline() -> bool:
            return await status_of("quiet") == "offline"

        assert await wait_for(quiet_offline, timeout=5)
        assert await status_of("chatty") == "online"
        await client.close()
    finally:
        await server.stop()


@pytest.mark.parametrize(
    "part, opening",
    [
        ("head", b"POST /v1/devices/slow/telemetry HTTP/1.1\r\n"),
        (
            "body",
            b"POST /v1/devices/slow/telemetry HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        ),
    ],
)
async def test_http_slowloris_is_cut_off(
    pg_uri: str, run_id: str, tmp_path: Path, part: str, opening: bytes
) -> None:
    """A request whose head, or body, trickles in a byte at a time is cut
    after ``header_timeout_s``, or ``body_timeout_s``, however busy the
    link looks."""
    dsn = await harness.create_database(pg_uri, f"t_slowloris_{part}_{run_id}")
    http = {"port": harness.free_port(), "header_timeout_s": 1.0, "body_timeout_s": 1.0}
    cfg = msgspec.convert(
        {
            "database": {"dsn": dsn, "state_dir": str(tmp_path)},
            "mqtt": {"enabled": False},
            "coap": {"enabled": False},
            "admin": {"enabled": False},
            "http": http,
        },
        config.Config,
    )
    server = Server(cfg)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", cfg.http.port)
        writer.write(opening)
        started = asyncio.get_running_loop().time()
        closed = False
        answer = b""
        sent = 0
        for _ in range(20):  # one byte every 0.25 s, never finishing
            try:
                writer.write(b"X")
                sent += 1
                await writer.drain()
                got = await asyncio.wait_for(reader.read(4096), 0.25)
                answer += got
                if got == b"":
                    closed = True
                    break
            except (TimeoutError, ConnectionError):
                if reader.at_eof():
                    closed = True
                    break
        elapsed = asyncio.get_running_loop().time() - started
        writer.close()
        assert closed and elapsed < 4.0, elapsed
        if part == "body":
            # Answered 408, and what arrived of the body is the dead letter
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"request body slower than 1 s" in answer
            conn = await asyncpg.connect(dsn)
            try:
                for _ in range(50):  # the answer does not wait for the flush
                    row = await conn.fetchrow(
                        "SELECT device_id, reason, payload FROM ingestd.dead_letters"
                    )
                    if row is not None:
                        break
                    await asyncio.sleep(0.1)
            finally:
                await conn.close()
            assert row is not None
            assert row["device_id"] == "slow"
            assert row["reason"] == "408: request body slower than 1 s"
            assert 0 < len(row["payload"]) <= sent
            assert row["payload"] == b"X" * len(row["payload"])
        else:
            assert answer == b""  # no request yet: nothing to answer or keep
    finally:
        await server.stop()
