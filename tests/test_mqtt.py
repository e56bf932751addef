"""MQTT in, end to end, and the proof that PUBACK follows the commit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from bench import harness
from ingestd import clock
from ingestd.config import Mqtt
from ingestd.pipeline.batcher import Batcher
from ingestd.storage import database
from ingestd.transports.mqtt import MqttSubscriber

from .conftest import Deployment
from .mqtt_publisher import Publisher, wait_for


async def test_mqtt_json_and_senml_are_stored(deployment: Deployment) -> None:
    pub = await Publisher("pub-e2e").connect(deployment.broker_port)
    now = int(time.time() * 1000)
    for i in range(50):
        pub.publish("devices/m-json/telemetry", orjson.dumps({"ts": now + i, "t": i}))
    pub.publish(
        "devices/m-senml/senml",
        orjson.dumps([{"bn": "ignored:", "n": "w", "u": "kg", "v": 12.5}]),
    )
    await pub.wait_acked(51)
    await pub.close()

    async def stored() -> Any:
        return (
            await deployment.fetchval(
                "SELECT count(*) FROM ingestd.readings "
                "WHERE device_id IN ('m-json', 'm-senml')"
            )
            == 51
        )

    assert await wait_for(stored)
    row = (await deployment.fetch(
        "SELECT metric, value_num, unit, transport, format FROM ingestd.readings "
        "WHERE device_id = 'm-senml'"
    ))[0]  # fmt: skip
    assert tuple(row) == ("w", 12.5, "kg", "mqtt", "senml")


async def test_mqtt_bad_payload_is_a_dead_letter_and_stream_goes_on(
    deployment: Deployment,
) -> None:
    pub = await Publisher("pub-bad").connect(deployment.broker_port)
    pub.publish("devices/m-bad/telemetry", b'{"t": NaN}')
    pub.publish("devices/m-bad/telemetry", b"\xff\xfe")
    pub.publish("devices/m-bad/senml", b'[{"n": "x", "v": "warm"}]')
    pub.publish("devices/m-bad/telemetry", b'{"t": Infinity}')
    pub.publish("devices/m-bad/telemetry", b'{"t": "' + b"x" * 300_000 + b'"}')
    pub.publish("devices/m-bad/telemetry", b'{"ok": 1}')
    pub.publish("devices/m-bad/telemetry", b"y" * 2_000_000)  # over 1 MiB
    pub.publish(f"devices/{'d' * 300}/telemetry", b'{"t": 1}')
    await pub.wait_acked(8)
    await pub.close()

    async def kept() -> Any:
        rows = await deployment.fetch(
            "SELECT reason FROM ingestd.dead_letters WHERE device_id = 'm-bad' "
            "ORDER BY id"
        )
        return rows if len(rows) == 6 else None

    rows = await wait_for(kept)
    assert rows is not None
    reasons = [r["reason"] for r in rows]
    assert reasons[0].startswith("invalid JSON") and reasons[0].endswith("`byte 6`")
    assert reasons[1].startswith("invalid JSON")
    assert reasons[2].startswith("expected a number, got string - at `$[0].v`")
    assert reasons[3].startswith("invalid JSON") and reasons[3].endswith("`byte 6`")
    assert reasons[4] == "payload over 262144 bytes - at `byte 0`"
    assert reasons[5] == "payload over 262144 bytes - at `byte 0`"
    sizes = await deployment.fetch(
        "SELECT length(payload) AS n FROM ingestd.dead_letters "
        "WHERE device_id = 'm-bad' ORDER BY id"
    )
    # kept whole up to 1 MiB, an oversized one by its first 4 KiB
    assert [r["n"] for r in sizes][4:] == [300_009, 4096]
    long_id = await deployment.fetchval(
        "SELECT reason FROM ingestd.dead_letters WHERE source LIKE 'devices/ddd%'"
    )
    assert long_id == "device id in topic too long or with NUL - at `topic`"
    assert (
        await deployment.fetchval(
            "SELECT count(*) FROM ingestd.readings WHERE device_id = 'm-bad'"
        )
        == 1
    )


# -- in-process: watch the subscriber's PUBACKs against the commit ----------


@pytest.fixture
async def migrated(pg_uri: str, run_id: str) -> AsyncIterator[str]:
    dsn = await harness.create_database(pg_uri, f"t_puback_{run_id}")
    conn = await asyncpg.connect(dsn)
    await database.migrate(conn)
    await conn.close()
    yield dsn


async def test_mqtt_puback_follows_commit_in_arrival_order(
    migrated: str, broker: harness.Mosquitto
) -> None:
    pool = await database.connect_pool(migrated, 2, 10)
    batcher = Batcher(pool, flush_rows=10, flush_interval_ms=5, capacity=10_000)
    batcher.start()
    config = Mqtt(port=broker.port, client_id=f"puback-{time.time_ns()}")
    subscriber = MqttSubscriber(config, batcher, clock.Window())

    # Instrument, not replace: record arrivals and PUBACKs, then do the real thing
    arrived: list[int] = []
    acked: list[tuple[int, int]] = []
    handler = subscriber.client._package_handler
    on_publish = handler._handle_qos_1_publish_packet
    send_puback = subscriber._puback

    def record_arrival(mid: int, *rest: Any) -> None:
        arrived.append(mid)
        on_publish(mid, *rest)

    def record_puback(mid: int, reason_code: int = 0) -> None:
        acked.append((mid, reason_code))
        send_puback(mid, reason_code=reason_code)

    handler._handle_qos_1_publish_packet = record_arrival
    subscriber._puback = record_puback
    await subscriber.start()
    await subscriber.connected.wait()

    # Hold every commit: the flush waits on this lock
    blocker = await asyncpg.connect(migrated)
    blocking = blocker.transaction()
    await blocking.start()
    await blocker.execute("LOCK TABLE ingestd.readings IN ACCESS EXCLUSIVE MODE")

    pub = await Publisher("puback-pub").connect(broker.port)
    now = int(time.time() * 1000)
    for i in range(200):
        pub.publish("devices/pa/telemetry", orjson.dumps({"ts": now + i, "v": i}))
    pub.publish("devices/pa/telemetry", b"not json")
    await pub.wait_acked(201)
    await wait_for(lambda: _true(len(arrived) == 201), timeout=10)
    await asyncio.sleep(0.5)
    assert len(arrived) == 201
    assert acked == [], "PUBACK sent while the commit was still blocked"

    await blocking.rollback()
    await wait_for(lambda: _true(len(acked) == 201), timeout=10)
    assert [mid for mid, _ in acked] == arrived
    assert acked[-1][1] == 0x99  # MQTT 5: payload format invalid
    assert {code for _, code in acked[:-1]} == {0}
    assert (
        await blocker.fetchval(
            "SELECT count(*) FROM ingestd.readings WHERE device_id = 'pa'"
        )
        == 200
    )

    await pub.close()
    await subscriber.stop()
    await batcher.close()
    await blocker.close()
    await pool.close()


async def _true(value: bool) -> bool:
    return value


async def test_mqtt_reconnects_and_resubscribes_after_broker_restart(
    pg_uri: str, run_id: str, tmp_path: Any
) -> None:
    from .conftest import deploy

    own = harness.Mosquitto().start()
    d = await deploy(pg_uri, f"t_reconnect_{run_id}", own, tmp_path)
    try:
        pub = await Publisher("re-pub-1").connect(own.port)
        pub.publish("devices/re/telemetry", orjson.dumps({"ts": 1714564800000, "a": 1}))
        await pub.wait_acked(1)
        await pub.close()
        own.restart()
        await asyncio.sleep(1.5)  # gmqtt retries every second
        pub = await Publisher("re-pub-2").connect(own.port)
        pub.publish("devices/re/telemetry", orjson.dumps({"ts": 1714564801000, "a": 2}))
        await pub.wait_acked(1)
        await pub.close()

        async def both() -> Any:
            return (
                await d.fetchval(
                    "SELECT count(*) FROM ingestd.readings WHERE device_id = 're'"
                )
                == 2
            )

        assert await wait_for(both, timeout=30)
    finally:
        code = await asyncio.to_thread(d.server.stop)
        own.stop()
    assert code == 0
