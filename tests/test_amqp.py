"""AMQP in, against a real RabbitMQ: stored, acknowledged only after commit,
redelivered when the consumer dies, settled on the right channel only.

Needs RabbitMQ on 127.0.0.1:5672 (guest/guest); the tests skip without it.
Every test declares its own exchange and queue, named after the run.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import asyncpg
import msgspec
import orjson
import pytest

from bench import harness
from ingestd import clock
from ingestd.config import Route
from ingestd.pipeline.batcher import Batcher
from ingestd.storage import database
from ingestd.transports.amqp import AmqpConsumer, AmqpFeed

from .mqtt_publisher import wait_for

BROKER = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture(scope="module")
def rabbit() -> str:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        pytest.skip(
            f"RabbitMQ not reachable on 127.0.0.1:5672 ({exc}); start it with "
            "`rabbitmq-server -detached` (user guest/guest)"
        )
    return BROKER


@pytest.fixture(scope="module")
async def dsn(pg_uri: str, run_id: str) -> str:
    uri = await harness.create_database(pg_uri, f"t_amqp_{run_id}")
    conn = await asyncpg.connect(uri)
    try:
        await database.migrate(conn)
    finally:
        await conn.close()
    return uri


class ConsumerRig:
    """A pool, a batcher and one consumer at a time; a lock to hold commits.

    Whatever a failing test leaves behind (the lock, a running consumer) is
    cleaned up by ``close``, so that the next test is not held up.
    """

    def __init__(self, dsn: str, capacity: int) -> None:
        self.dsn = dsn
        self.capacity = capacity
        self.pool: asyncpg.Pool | None = None
        self.batcher: Batcher | None = None
        self.consumer: Any = None
        self.blocker: tuple[asyncpg.Connection, Any] | None = None

    def make_consumer(self, batcher: Batcher, **feed: Any) -> Any:
        raise NotImplementedError

    async def start_consumer(self, **feed: Any) -> Any:
        self.pool = await database.connect_pool(self.dsn, 2, 10)
        self.batcher = Batcher(
            self.pool, flush_rows=50, flush_interval_ms=5, capacity=self.capacity
        )
        self.batcher.start()
        self.consumer = self.make_consumer(self.batcher, **feed)
        await self.consumer.start()
        await asyncio.wait_for(self.consumer.connected.wait(), 10)
        return self.consumer

    async def stop_consumer(self) -> None:
        """The server's order: hold, last flush and its acks, close."""
        assert self.consumer and self.batcher and self.pool
        consumer, batcher, pool = self.consumer, self.batcher, self.pool
        self.consumer = self.batcher = self.pool = None
        consumer.hold()
        await batcher.close()
        await consumer.stop()
        await pool.close()

    async def crash_consumer(self) -> None:
        """Die without committing or acknowledging anything more."""
        assert self.consumer and self.batcher and self.pool
        consumer, batcher, pool = self.consumer, self.batcher, self.pool
        self.consumer = self.batcher = self.pool = None
        tasks = [batcher._task, consumer._task]
        for task in tasks:
            task.cancel()  # the consumer's drops its link, as a killed process
        await asyncio.gather(*tasks, return_exceptions=True)
        if getattr(consumer, "nc", None) is not None:
            await consumer.nc.close()
        pool.terminate()

    async def block_commits(self) -> None:
        """Hold every commit: a flush waits on this lock until release."""
        conn = await asyncpg.connect(self.dsn)
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("LOCK TABLE ingestd.readings IN ACCESS EXCLUSIVE MODE")
        self.blocker = (conn, transaction)

    async def release_commits(self) -> None:
        if self.blocker is not None:
            conn, transaction = self.blocker
            self.blocker = None
            await transaction.rollback()
            await conn.close()

    async def close(self) -> None:
        await self.release_commits()
        if self.consumer is not None:
            await asyncio.wait_for(self.stop_consumer(), 15)


class Rig(ConsumerRig):
    """A consumer on a fresh exchange and queue, and a sender."""

    def __init__(self, dsn: str, url: str, name: str, capacity: int = 10_000):
        super().__init__(dsn, capacity)
        self.name = name
        self.feed = AmqpFeed(
            enabled=True,
            url=url,
            queue=name,
            durable=False,
            queue_arguments={"x-expires": 120_000},  # leftovers go by themselves
            exchange=name,
            routes=[
                Route(topic="devices.{device}.telemetry", codec="json"),
                Route(topic="devices.{device}.senml", codec="senml"),
            ],
        )
        self.sender: Any = None
        self.exchange: Any = None

    def make_consumer(self, batcher: Batcher, **feed: Any) -> AmqpConsumer:
        self.feed = msgspec.structs.replace(self.feed, **feed)
        return AmqpConsumer(self.feed, batcher, clock.Window())

    async def open_sender(self) -> None:
        self.sender = await aio_pika.connect(BROKER)
        channel = await self.sender.channel()  # publisher confirms on
        self.exchange = await channel.get_exchange(self.name)

    async def send(self, key: str, body: bytes) -> None:
        await self.exchange.publish(aio_pika.Message(body), routing_key=key)

    async def ready_in_queue(self) -> int:
        """Messages in the queue not delivered to any consumer (broker side)."""
        channel = await self.sender.channel()
        try:
            queue = await channel.declare_queue(self.name, passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await channel.close()

    async def close(self) -> None:
        await super().close()
        if self.sender is not None:
            channel = await self.sender.channel()
            await channel.queue_delete(self.name)
            await channel.exchange_delete(self.name)
            await self.sender.close()


@pytest.fixture
async def rig(
    rabbit: str, dsn: str, run_id: str, request: pytest.FixtureRequest
) -> AsyncIterator[Rig]:
    name = f"ingestd-test-{run_id}-{request.node.name[len('test_amqp_') :][:40]}"
    r = Rig(dsn, rabbit, name)
    yield r
    await r.close()


def record_acks(consumer: AmqpConsumer) -> list[tuple[int, bool]]:
    """Instrument (not replace) basic.ack on the consumer's current channel."""
    assert consumer._link is not None
    channel = consumer._link.channel
    sent: list[tuple[int, bool]] = []
    real: Callable[..., Any] = channel.basic_ack

    async def basic_ack(tag: int, multiple: bool = False, wait: bool = True) -> None:
        sent.append((tag, multiple))
        await real(tag, multiple=multiple, wait=wait)

    channel.basic_ack = basic_ack  # type: ignore[method-assign,assignment]
    return sent


async def count(dsn: str, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


def reading(ts_ms: int, value: float) -> bytes:
    return orjson.dumps({"ts": ts_ms, "t": value})


async def test_amqp_json_and_senml_are_stored(rig: Rig) -> None:
    await rig.start_consumer()
    await rig.open_sender()
    now = int(time.time() * 1000)
    for i in range(50):
        await rig.send("devices.a-json.telemetry", reading(now + i, i))
    senml = [{"bn": "ignored:", "n": "w", "u": "kg", "v": 12.5}]
    await rig.send("devices.a-senml.senml", orjson.dumps(senml))

    async def stored() -> bool:
        return (
            await count(
                rig.dsn,
                "SELECT count(*) FROM ingestd.readings "
                "WHERE device_id IN ('a-json', 'a-senml') AND transport = 'amqp'",
            )
            == 51
        )

    assert await wait_for(stored, timeout=10)
    await rig.stop_consumer()
    assert await rig.ready_in_queue() == 0


async def test_amqp_routes_by_content_type_and_headers(rig: Rig) -> None:
    await rig.start_consumer(
        routes=[
            Route(
                topic="gw.{device}.up",
                codec="senml",
                content_type="application/senml+json",
            ),
            Route(topic="gw.{device}.up", user_properties={"dialect": "plain"}),
        ]
    )
    await rig.open_sender()
    senml = orjson.dumps([{"n": "w", "u": "kg", "v": 2.5}])
    message = aio_pika.Message(senml, content_type="application/senml+json")
    await rig.exchange.publish(message, routing_key="gw.a-ct.up")
    plain = reading(int(time.time() * 1000), 7)
    message = aio_pika.Message(plain, headers={"dialect": "plain"})
    await rig.exchange.publish(message, routing_key="gw.a-ct.up")
    await rig.send("gw.a-ct.up", plain)  # neither: a dead letter

    sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'a-ct'"
    assert await wait_for(lambda: _equal(count(rig.dsn, sql), 2), timeout=10)
    conn = await asyncpg.connect(rig.dsn)
    try:
        rows = await conn.fetch(
            "SELECT format, metric FROM ingestd.readings "
            "WHERE device_id = 'a-ct' ORDER BY format"
        )
        dead = await conn.fetchval(
            "SELECT reason FROM ingestd.dead_letters WHERE source = 'gw.a-ct.up'"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("json", "t"), ("senml", "w")]
    assert dead is not None and "no route" in dead
    await rig.stop_consumer()


async def test_amqp_ack_follows_commit(rig: Rig) -> None:
    consumer: AmqpConsumer = await rig.start_consumer()
    acks = record_acks(consumer)
    await rig.open_sender()
    await rig.block_commits()
    now = int(time.time() * 1000)
    for i in range(100):
        await rig.send("devices.a-ack.telemetry", reading(now + i, i))
    await rig.send("devices.a-ack.telemetry", b"not json")

    async def all_delivered() -> bool:
        return consumer.messages == 101

    assert await wait_for(all_delivered, timeout=10)
    await asyncio.sleep(0.5)
    assert acks == [], "acknowledged while the commit was still blocked"
    assert await rig.ready_in_queue() == 0  # all out with us, none settled

    await rig.release_commits()

    async def all_acked() -> bool:
        return bool(acks) and acks[-1][0] == 101

    assert await wait_for(all_acked, timeout=10)
    assert all(multiple for _, multiple in acks)  # one frame per flush
    assert [tag for tag, _ in acks] == sorted(tag for tag, _ in acks)
    sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'a-ack'"
    assert await count(rig.dsn, sql) == 100
    await rig.stop_consumer()
    assert await rig.ready_in_queue() == 0  # nothing came back: all settled


async def test_amqp_bad_payload_and_unrouted_key_are_acked_dead_letters(
    rig: Rig,
) -> None:
    await rig.start_consumer(binding_keys=["#"])
    await rig.open_sender()
    await rig.send("devices.a-bad.telemetry", b'{"t": NaN}')
    await rig.send("nobody.routes.this", b'{"t": 1}')
    now = int(time.time() * 1000)
    await rig.send("devices.a-bad.telemetry", reading(now, 1.5))

    async def dead() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(rig.dsn)
        try:
            rows = await conn.fetch(
                "SELECT source, device_id, reason FROM ingestd.dead_letters "
                "WHERE transport = 'amqp' AND source IN "
                "('devices.a-bad.telemetry', 'nobody.routes.this') ORDER BY id"
            )
        finally:
            await conn.close()
        return rows if len(rows) == 2 else []

    rows = await wait_for(dead, timeout=10)
    assert [(r["source"], r["device_id"]) for r in rows] == [
        ("devices.a-bad.telemetry", "a-bad"),
        ("nobody.routes.this", None),
    ]
    assert "no route for routing key - at `routing key`" in rows[1]["reason"]
    sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'a-bad'"
    assert await wait_for(lambda: _equal(count(rig.dsn, sql), 1), timeout=10)
    await rig.stop_consumer()
    assert await rig.ready_in_queue() == 0  # dead letters were acknowledged


async def test_amqp_consumer_crash_redelivers_unacknowledged(rig: Rig) -> None:
    consumer: AmqpConsumer = await rig.start_consumer()
    await rig.open_sender()
    await rig.block_commits()
    now = int(time.time() * 1000)
    for i in range(30):
        await rig.send("devices.a-crash.telemetry", reading(now + i, i))

    async def all_delivered() -> bool:
        return consumer.messages == 30

    assert await wait_for(all_delivered, timeout=10)
    await rig.crash_consumer()

    async def requeued() -> bool:
        return await rig.ready_in_queue() == 30

    assert await wait_for(requeued, timeout=10), "the broker kept no copy"
    await rig.release_commits()

    second: AmqpConsumer = await rig.start_consumer()
    sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'a-crash'"
    assert await wait_for(lambda: _equal(count(rig.dsn, sql), 30), timeout=10)
    assert second.messages == 30
    await rig.stop_consumer()
    assert await rig.ready_in_queue() == 0
    assert await count(rig.dsn, sql) == 30  # stored once


async def test_amqp_reconnect_settles_on_the_new_channel_only(rig: Rig) -> None:
    proxy = LinkCutter(5672)
    port = await proxy.start()
    consumer: AmqpConsumer = await rig.start_consumer(
        url=f"amqp://guest:guest@127.0.0.1:{port}/"
    )
    await rig.open_sender()
    await rig.block_commits()
    now = int(time.time() * 1000)
    for i in range(20):
        await rig.send("devices.a-link.telemetry", reading(now + i, i))

    async def delivered(n: int) -> bool:
        return consumer.messages == n

    assert await wait_for(lambda: delivered(20), timeout=10)
    first = consumer._link
    proxy.cut()

    # The broker requeues and delivers again on the next connection
    assert await wait_for(lambda: delivered(40), timeout=15)
    assert consumer._link is not None and consumer._link is not first
    acks = record_acks(consumer)
    await rig.release_commits()

    sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'a-link'"
    assert await wait_for(lambda: _equal(count(rig.dsn, sql), 20), timeout=10)
    assert await wait_for(lambda: _true(bool(acks) and acks[-1][0] == 20))
    assert max(tag for tag, _ in acks) == 20  # old tags never sent here
    assert not consumer._link.channel.is_closed  # no unknown-tag error
    assert consumer._link is not None and not consumer._link.closed
    await rig.stop_consumer()
    await proxy.close()
    assert await rig.ready_in_queue() == 0


async def test_amqp_lost_flush_is_delivered_again(rig: Rig) -> None:
    consumer: AmqpConsumer = await rig.start_consumer()
    first_link = consumer._link
    assert rig.batcher is not None
    flush = rig.batcher._flush
    lost: list[int] = []

    async def flush_failing_once(batch: Any) -> None:
        if not lost:
            lost.append(len(batch.acks))
            raise RuntimeError("flush lost on purpose")
        await flush(batch)

    rig.batcher._flush = flush_failing_once  # type: ignore[method-assign]
    await rig.open_sender()
    now = int(time.time() * 1000)
    for i in range(20):
        await rig.send("devices.a-lost.telemetry", reading(now + i, i))

    # Deliveries after the lost ones commit; the consumer reconnects so that
    # the broker sends the lost ones again
    sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'a-lost'"
    assert await wait_for(lambda: _equal(count(rig.dsn, sql), 20), timeout=10)
    assert lost and lost[0] >= 1
    assert consumer._link is not first_link
    await rig.stop_consumer()
    assert await rig.ready_in_queue() == 0


async def test_amqp_full_batcher_parks_deliveries_until_space(
    rabbit: str, dsn: str, run_id: str
) -> None:
    r = Rig(dsn, rabbit, f"ingestd-test-{run_id}-park", capacity=20)
    try:
        consumer: AmqpConsumer = await r.start_consumer()
        await r.open_sender()
        await r.block_commits()
        now = int(time.time() * 1000)
        for i in range(60):
            await r.send("devices.a-park.telemetry", reading(now + i, i))

        async def parked() -> bool:
            return len(consumer._parked) == 60 - consumer.messages > 0

        assert await wait_for(parked, timeout=10)
        assert consumer.messages <= 20  # no more taken than the batcher holds
        await r.release_commits()
        sql = "SELECT count(*) FROM ingestd.readings WHERE device_id = 'a-park'"
        assert await wait_for(lambda: _equal(count(r.dsn, sql), 60), timeout=10)
        await r.stop_consumer()
        assert await r.ready_in_queue() == 0
    finally:
        await r.close()


async def _equal(value: Any, expected: object) -> bool:
    return bool(await value == expected)


async def _true(value: bool) -> bool:
    return value


class LinkCutter:
    """A TCP proxy in front of a broker that can cut every link at once."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.transport.abort()
            return
        self.writers += [writer, up_writer]
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.transport.abort()
