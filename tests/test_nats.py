"""NATS in, against a real nats-server with JetStream: stored, acknowledged
only after commit, delivered again after a crash, acknowledged across a
reconnect; and core NATS, which has no acknowledgement at all.

Needs ``nats-server -js`` on 127.0.0.1:4222; the tests skip without it.
Every test has its own stream and subjects, named after the run.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import nats
import orjson
import pytest
from nats.js.errors import NotFoundError

from bench import harness
from ingestd import clock
from ingestd.config import Route
from ingestd.pipeline.batcher import Batcher
from ingestd.storage import database
from ingestd.transports.nats import NatsConsumer, NatsFeed

from .mqtt_publisher import wait_for
from .test_amqp import ConsumerRig, LinkCutter, _equal, count, reading

SERVER = "nats://127.0.0.1:4222"
_numbers = itertools.count()


@pytest.fixture(scope="module")
async def jetstream() -> str:
    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=2).close()
    except OSError as exc:
        pytest.skip(
            f"nats-server not reachable on 127.0.0.1:4222 ({exc}); start it "
            "with `nats-server -js`"
        )
    nc = await nats.connect(SERVER, max_reconnect_attempts=0)
    try:
        await nc.jetstream().account_info()
    except nats.errors.Error as exc:
        pytest.skip(f"nats-server runs without JetStream ({exc}); use `-js`")
    finally:
        await nc.close()
    return SERVER


@pytest.fixture(scope="module")
async def dsn(pg_uri: str, run_id: str) -> str:
    uri = await harness.create_database(pg_uri, f"t_nats_{run_id}")
    conn = await asyncpg.connect(uri)
    try:
        await database.migrate(conn)
    finally:
        await conn.close()
    return uri


class Rig(ConsumerRig):
    """A consumer on a fresh stream and subjects, and a sender."""

    def __init__(self, dsn: str, run_id: str, capacity: int = 10_000) -> None:
        super().__init__(dsn, capacity)
        n = next(_numbers)
        self.prefix = f"t{run_id}x{n}"
        self.stream = f"T_{run_id}_{n}"
        self.feed = NatsFeed(
            enabled=True,
            servers=[SERVER],
            stream=self.stream,
            durable="ingestd",
            routes=[
                Route(topic=self.prefix + ".devices.{device}.telemetry"),
                Route(topic=self.prefix + ".devices.{device}.senml", codec="senml"),
            ],
        )
        self.nc: Any = None

    def make_consumer(self, batcher: Batcher, **feed: Any) -> NatsConsumer:
        self.feed = msgspec.structs.replace(self.feed, **feed)
        return NatsConsumer(self.feed, batcher, clock.Window())

    def subject(self, device: str, kind: str = "telemetry") -> str:
        return f"{self.prefix}.devices.{device}.{kind}"

    async def open_sender(self) -> None:
        self.nc = await nats.connect(SERVER)

    async def send(self, subject: str, body: bytes) -> None:
        if self.feed.stream:
            await self.nc.jetstream().publish(subject, body, stream=self.stream)
        else:
            await self.nc.publish(subject, body)

    async def consumer_state(self) -> tuple[int, int]:
        """(unacknowledged, not yet delivered) as the server counts them."""
        info = await self.nc.jetstream().consumer_info(self.stream, "ingestd")
        return info.num_ack_pending, info.num_pending

    async def close(self) -> None:
        await super().close()
        if self.nc is not None:
            try:
                await self.nc.jetstream().delete_stream(self.stream)
            except NotFoundError:
                pass
            await self.nc.close()


@pytest.fixture
async def rig(jetstream: str, dsn: str, run_id: str) -> AsyncIterator[Rig]:
    r = Rig(dsn, run_id)
    yield r
    await r.close()


async def test_nats_jetstream_json_and_senml_are_stored(rig: Rig) -> None:
    await rig.start_consumer()  # creates the stream
    await rig.open_sender()
    now = int(time.time() * 1000)
    for i in range(50):
        await rig.send(rig.subject("n-json"), reading(now + i, i))
    senml = [{"bn": "ignored:", "n": "w", "u": "kg", "v": 12.5}]
    await rig.send(rig.subject("n-senml", "senml"), orjson.dumps(senml))

    sql = (
        "SELECT count(*) FROM ingestd.readings "
        "WHERE device_id IN ('n-json', 'n-senml') AND transport = 'nats'"
    )
    assert await wait_for(lambda: _equal(count(rig.dsn, sql), 51), timeout=10)
    assert await wait_for(lambda: _equal(rig.consumer_state(), (0, 0)), timeout=5)
    await rig.stop_consumer()


async def test_nats_routes_by_headers(rig: Rig) -> None:
    gateway = rig.prefix + ".gw.{device}"
    await rig.start_consumer(
        routes=[
            Route(topic=gateway, codec="senml", content_type="application/senml+json"),
            Route(topic=gateway),
        ]
    )
    await rig.open_sender()
    js = rig.nc.jetstream()
    senml = orjson.dumps([{"n": "w", "u": "kg", "v": 2.5}])
    headers = {"Content-Type": "application/senml+json; charset=utf-8"}
    await js.publish(rig.prefix + ".gw.n-ct", senml, headers=headers)
    await js.publish(rig.prefix + ".gw.n-ct", reading(int(time.time() * 1000), 7))

    sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'n-ct'"
    assert await wait_for(lambda: _equal(count(rig.dsn, sql), 2), timeout=10)
    conn = await asyncpg.connect(rig.dsn)
    try:
        rows = await conn.fetch(
            "SELECT format, metric FROM ingestd.readings "
            "WHERE device_id = 'n-ct' ORDER BY format"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("json", "t"), ("senml", "w")]
    await rig.stop_consumer()


async def test_nats_ack_follows_commit(rig: Rig) -> None:
    consumer: NatsConsumer = await rig.start_consumer()
    await rig.open_sender()
    await rig.block_commits()
    now = int(time.time() * 1000)
    for i in range(100):
        await rig.send(rig.subject("n-ack"), reading(now + i, i))
    await rig.send(rig.subject("n-ack"), b"not json")

    async def all_delivered() -> bool:
        return consumer.messages == 101

    assert await wait_for(all_delivered, timeout=10)
    await asyncio.sleep(0.5)
    assert await rig.consumer_state() == (101, 0), "acknowledged before commit"

    await rig.release_commits()
    assert await wait_for(lambda: _equal(rig.consumer_state(), (0, 0)), timeout=10)
    sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'n-ack'"
    assert await count(rig.dsn, sql) == 100
    sql = "SELECT count(*) FROM ingestd.dead_letters WHERE source = $1"
    assert await count(rig.dsn, sql, rig.subject("n-ack")) == 1
    await rig.stop_consumer()


async def test_nats_bad_payloads_are_acked_dead_letters(rig: Rig) -> None:
    await rig.start_consumer()
    await rig.open_sender()
    await rig.send(rig.subject("n-bad"), b'{"t": NaN}')
    await rig.send(rig.subject("n-bad", "senml"), b'[{"n": "x", "v": "warm"}]')
    await rig.send(rig.subject("n-bad"), reading(int(time.time() * 1000), 1.5))

    async def dead() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(rig.dsn)
        try:
            rows = await conn.fetch(
                "SELECT source, device_id FROM ingestd.dead_letters "
                "WHERE transport = 'nats' AND source LIKE $1 ORDER BY id",
                rig.prefix + ".%",
            )
        finally:
            await conn.close()
        return rows if len(rows) == 2 else []

    rows = await wait_for(dead, timeout=10)
    assert [(r["source"], r["device_id"]) for r in rows] == [
        (rig.subject("n-bad"), "n-bad"),
        (rig.subject("n-bad", "senml"), "n-bad"),
    ]
    sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'n-bad'"
    assert await wait_for(lambda: _equal(count(rig.dsn, sql), 1), timeout=10)
    assert await wait_for(lambda: _equal(rig.consumer_state(), (0, 0)), timeout=5)
    await rig.stop_consumer()


async def test_nats_consumer_crash_redelivers_unacknowledged(rig: Rig) -> None:
    consumer: NatsConsumer = await rig.start_consumer(ack_wait_s=1.0)
    await rig.open_sender()
    await rig.block_commits()
    now = int(time.time() * 1000)
    for i in range(30):
        await rig.send(rig.subject("n-crash"), reading(now + i, i))

    async def all_delivered() -> bool:
        return consumer.messages == 30

    assert await wait_for(all_delivered, timeout=10)
    await rig.crash_consumer()
    assert (await rig.consumer_state())[0] == 30  # the server still waits
    await rig.release_commits()

    second: NatsConsumer = await rig.start_consumer()
    sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'n-crash'"
    assert await wait_for(lambda: _equal(count(rig.dsn, sql), 30), timeout=10)
    assert await wait_for(lambda: _equal(rig.consumer_state(), (0, 0)), timeout=5)
    assert second.messages >= 30
    await rig.stop_consumer()
    assert await count(rig.dsn, sql) == 30  # stored once


async def test_nats_ack_after_reconnect_is_accepted(rig: Rig) -> None:
    proxy = LinkCutter(4222)
    port = await proxy.start()
    consumer: NatsConsumer = await rig.start_consumer(
        servers=[f"nats://127.0.0.1:{port}"]
    )
    await rig.open_sender()
    await rig.block_commits()
    now = int(time.time() * 1000)
    for i in range(20):
        await rig.send(rig.subject("n-link"), reading(now + i, i))

    async def delivered(n: int) -> bool:
        return consumer.messages == n

    assert await wait_for(lambda: delivered(20), timeout=10)
    proxy.cut()
    await asyncio.sleep(0.2)
    assert await wait_for(_connected(consumer), timeout=10)

    # Committed after the reconnect: acknowledged on the new connection
    await rig.release_commits()
    assert await wait_for(lambda: _equal(rig.consumer_state(), (0, 0)), timeout=10)
    assert consumer.messages == 20  # nothing had to come again

    # And the consumer pulls again
    await rig.send(rig.subject("n-link"), reading(now + 100, 100))
    sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'n-link'"
    assert await wait_for(lambda: _equal(count(rig.dsn, sql), 21), timeout=10)
    await rig.stop_consumer()
    await proxy.close()


def _connected(consumer: NatsConsumer) -> Any:
    async def check() -> bool:
        return consumer.connected.is_set()

    return check


async def test_nats_full_batcher_stops_fetching(
    jetstream: str, dsn: str, run_id: str
) -> None:
    r = Rig(dsn, run_id, capacity=20)
    try:
        consumer: NatsConsumer = await r.start_consumer(fetch_batch=5)
        await r.open_sender()
        await r.block_commits()
        now = int(time.time() * 1000)
        for i in range(60):
            await r.send(r.subject("n-park"), reading(now + i, i))
        await asyncio.sleep(1.0)
        taken = consumer.messages
        assert 10 <= taken <= 25  # what fills the batcher, plus one fetch
        assert await r.consumer_state() == (taken, 60 - taken)  # rest in stream
        await r.release_commits()
        sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'n-park'"
        assert await wait_for(lambda: _equal(count(r.dsn, sql), 60), timeout=10)
        assert await wait_for(lambda: _equal(r.consumer_state(), (0, 0)), timeout=5)
        await r.stop_consumer()
    finally:
        await r.close()


async def test_nats_core_subjects_are_stored_without_ack(
    jetstream: str, dsn: str, run_id: str
) -> None:
    r = Rig(dsn, run_id)
    try:
        consumer: NatsConsumer = await r.start_consumer(stream="")
        await r.open_sender()
        await r.nc.flush()
        now = int(time.time() * 1000)
        for i in range(20):
            await r.send(r.subject("n-core"), reading(now + i, i))
        await r.send(r.subject("n-core"), b"not json")
        await r.nc.flush()
        sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'n-core'"
        assert await wait_for(lambda: _equal(count(r.dsn, sql), 20), timeout=10)
        sql = "SELECT count(*) FROM ingestd.dead_letters WHERE source = $1"
        assert await count(r.dsn, sql, r.subject("n-core")) == 1
        assert consumer.messages == 21 and consumer.dropped == 0
        await r.stop_consumer()
    finally:
        await r.close()
