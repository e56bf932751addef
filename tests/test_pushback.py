"""Bounded buffers: when commits stall, every transport pushes back in its
own way, and everything taken is committed once the database moves again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiocoap
import asyncpg
import msgspec
import orjson
from aiocoap.numbers.codes import Code

from bench import harness
from ingestd import config
from ingestd.server import Server

from .http_client import RawHttp
from .mqtt_publisher import Publisher, wait_for


async def test_pushback_when_commits_stall(
    pg_uri: str, run_id: str, broker: harness.Mosquitto, tmp_path: Path
) -> None:
    dsn = await harness.create_database(pg_uri, f"t_pushback_{run_id}")
    cfg = msgspec.convert(
        {
            "database": {"dsn": dsn, "state_dir": str(tmp_path)},
            "pipeline": {"flush_rows": 10, "ring_capacity": 50, "retry_after_s": 3},
            "mqtt": {"port": broker.port, "client_id": f"pushback-{run_id}"},
            "http": {"port": harness.free_port()},
            "coap": {"port": harness.free_port(), "retry_after_s": 3},
            "admin": {"enabled": False},
        },
        config.Config,
    )
    server = Server(cfg)
    await server.start()
    blocker = await asyncpg.connect(dsn)
    stall = blocker.transaction()
    await stall.start()
    await blocker.execute("LOCK TABLE ingestd.readings IN ACCESS EXCLUSIVE MODE")
    coap = await aiocoap.Context.create_client_context()
    try:
        # MQTT fills the buffers: 100 messages of 1 reading against room for 50
        pub = await Publisher(f"pushback-pub-{run_id}").connect(broker.port)
        base = int(time.time() * 1000) - 60_000
        for i in range(100):
            pub.publish("devices/pb/telemetry", orjson.dumps({"ts": base + i, "x": i}))
        await pub.wait_acked(100)
        assert server.batcher is not None and server.mqtt is not None
        full = await wait_for(lambda: _now(server.batcher.full), timeout=10)  # type: ignore[union-attr]
        assert full
        assert server.mqtt._paused  # the MQTT socket is no longer read

        client = await RawHttp.open(cfg.http.port)
        status, headers, _ = await client.post(
            "/v1/devices/pb-http/telemetry", b'{"t": 1}'
        )
        assert (status, headers.get("retry-after")) == (503, "3")

        request = aiocoap.Message(
            code=Code.POST, payload=b'{"t": 1}',
            uri=f"coap://127.0.0.1:{cfg.coap.port}/v1/devices/pb-coap/telemetry",
        )  # fmt: skip
        answer = await coap.request(request).response
        assert answer.code == Code.SERVICE_UNAVAILABLE
        assert answer.opt.max_age == 3

        # The database moves again: everything taken is committed
        await stall.rollback()

        async def all_in() -> bool:
            count = await blocker.fetchval(
                "SELECT count(*) FROM ingestd.readings WHERE device_id = 'pb'"
            )
            return count == 100

        assert await wait_for(all_in, timeout=20)
        status, _, _ = await client.post("/v1/devices/pb-http/telemetry", b'{"t": 1}')
        assert status == 202
        await client.close()
        await pub.close()
    finally:
        await coap.shutdown()
        await blocker.close()
        await server.stop()


async def _now(value: bool) -> bool:
    await asyncio.sleep(0)
    return value
