"""Every limit on input, hit on a running server: the sender's answer, the
dead letter, and the good traffic around it still stored.

Limits covered here, with deliberately small values so each is cheap to hit:
payload size (HTTP 413, CoAP 4.13, MQTT dead letter and reason 0x83),
readings per message (``pipeline.max_readings_per_message``: 400, 4.00, a
dead letter), MQTT topic length in bytes (reason 0x90), header size (431)
and idle connections. The slowloris head deadline is tested in
``test_registry.py``; the default body and payload limits in
``test_http.py``, ``test_coap.py`` and ``test_mqtt.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import asyncpg
import orjson
import pytest
from aiocoap.numbers.codes import Code

from bench import harness
from ingestd import clock
from ingestd.config import Mqtt
from ingestd.pipeline.batcher import Batcher
from ingestd.storage import database
from ingestd.transports.mqtt import MqttSubscriber

from .conftest import Deployment
from .http_client import RawHttp
from .mqtt_publisher import Publisher, wait_for

MAX_READINGS = 50
MAX_BODY = 8192
MAX_PAYLOAD = 4096  # MQTT and CoAP
MAX_TOPIC = 64
MAX_HEADER = 2048
IDLE_S = 1.0

SECTIONS = {
    "[http]\n": f"max_body_bytes = {MAX_BODY}\nmax_header_bytes = {MAX_HEADER}\n"
    f"idle_timeout_s = {IDLE_S}\nheader_timeout_s = 2.0\n",
    "[mqtt]\n": f"max_payload_bytes = {MAX_PAYLOAD}\nmax_topic_bytes = {MAX_TOPIC}\n",
    "[coap]\n": f"max_payload_bytes = {MAX_PAYLOAD}\n",
}


@pytest.fixture(scope="module")
async def limited(
    pg_uri: str,
    run_id: str,
    broker: harness.Mosquitto,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Deployment]:
    """A server whose limits are small, on a fresh database."""
    tmp = tmp_path_factory.mktemp("limits")
    dsn = await harness.create_database(pg_uri, f"t_limits_{run_id}")
    http_port, admin_port, coap_port = (harness.free_port() for _ in range(3))
    text = harness.config_text(
        dsn, broker.port, http_port, admin_port, tmp / "state",
        client_id=f"ingestd-limits-{run_id}", coap_port=coap_port,
        pipeline={"max_readings_per_message": MAX_READINGS},
    )  # fmt: skip
    for header, lines in SECTIONS.items():
        assert header in text
        text = text.replace(header, header + lines, 1)
    server = harness.IngestdProcess(text, tmp, http_port, admin_port)
    await asyncio.to_thread(server.start)
    yield Deployment(dsn, server, broker.port, coap_port)
    code = await asyncio.to_thread(server.stop)
    assert code == 0, server.log.read_text()[-3000:]


@pytest.fixture
async def coap() -> AsyncIterator[aiocoap.Context]:
    context = await aiocoap.Context.create_client_context()
    yield context
    await context.shutdown()


def path(device: str) -> str:
    return f"/v1/devices/{device}/telemetry"


def coap_uri(d: Deployment, device: str) -> str:
    return f"coap://127.0.0.1:{d.coap_port}/v1/devices/{device}/telemetry"


async def coap_post(context: aiocoap.Context, uri: str, body: bytes) -> Any:
    request = aiocoap.Message(code=Code.POST, uri=uri, payload=body)
    request.opt.content_format = 50
    return await context.request(request).response


def readings(n: int, base_ms: int, bad: int = 0) -> bytes:
    """A ThingsBoard-style array of ``n`` readings, the last ``bad`` null."""
    docs = [{"ts": base_ms + i, "t": None if i >= n - bad else i} for i in range(n)]
    return orjson.dumps(docs)


async def stored(d: Deployment, device: str) -> int:
    count = await d.fetchval(
        "SELECT count(*) FROM ingestd.readings WHERE device_id = $1", device
    )
    return int(count)  # type: ignore[arg-type]


async def letters(d: Deployment, where: str, *args: Any) -> list[asyncpg.Record]:
    return await d.fetch(
        "SELECT device_id, source, reason, details, payload FROM ingestd.dead_letters "
        f"WHERE {where} ORDER BY id",
        *args,
    )


# -- payload size -------------------------------------------------------------


async def test_limits_http_body_over_limit_is_413_and_kept(limited: Deployment) -> None:
    """Announced by Content-Length: refused before a byte of it is read, so
    its dead letter is empty. Growing past the limit (chunked): its first
    4 KiB are kept."""
    client = await RawHttp.open(limited.server.http_port)
    body = b'{"x": "' + b"a" * MAX_BODY + b'"}'
    status, headers, answer = await client.post(path("lim-big"), body)
    await client.close()
    assert status == 413
    assert answer == {"error": f"body larger than {MAX_BODY} bytes"}
    assert headers.get("connection") == "close"

    client = await RawHttp.open(limited.server.http_port)
    client.writer.write(
        f"POST {path('lim-big-chunked')} HTTP/1.1\r\nHost: t\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    status, _, answer = await client.response()
    await client.close()
    assert status == 413

    async def kept() -> list[asyncpg.Record]:
        return await letters(limited, "source LIKE $1", "%/v1/devices/lim-big%")

    rows = await wait_for(lambda: _two(kept), timeout=5)
    reason = f"413: body larger than {MAX_BODY} bytes"
    assert [(r["device_id"], r["reason"]) for r in rows] == [
        ("lim-big", reason),
        ("lim-big-chunked", reason),
    ]
    assert rows[0]["source"].endswith(" /v1/devices/lim-big/telemetry")
    assert rows[0]["payload"] == b""
    assert rows[1]["payload"] == body[:4096]


async def _two(query: Any) -> list[asyncpg.Record]:
    rows = await query()
    return rows if len(rows) == 2 else []


async def test_limits_coap_payload_over_limit_is_413_and_kept(
    limited: Deployment, coap: aiocoap.Context
) -> None:
    body = b'{"x": "' + b"a" * MAX_PAYLOAD + b'"}'  # arrives in Block1 pieces
    answer = await coap_post(coap, coap_uri(limited, "lim-c-big"), body)
    assert answer.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert orjson.loads(answer.payload) == {
        "error": f"payload over {MAX_PAYLOAD} bytes", "path": "byte 0",
    }  # fmt: skip
    # The answer followed the commit of the dead letter
    rows = await letters(limited, "device_id = 'lim-c-big'")
    assert [r["reason"] for r in rows] == [
        f"payload over {MAX_PAYLOAD} bytes - at `byte 0`"
    ]
    assert rows[0]["payload"] == body[:4096]
    ok = await coap_post(coap, coap_uri(limited, "lim-c-big"), b'{"t": 1}')
    assert ok.code == Code.CHANGED


async def test_limits_mqtt_payload_and_topic_over_limit_are_dead_letters(
    limited: Deployment,
) -> None:
    long_topic = f"devices/{'ü' * 25}/telemetry"  # 43 characters, 68 bytes
    assert len(long_topic) <= MAX_TOPIC < len(long_topic.encode())
    fitting_topic = f"devices/{'u' * (MAX_TOPIC - 18)}/telemetry"
    assert len(fitting_topic.encode()) == MAX_TOPIC
    oversized = b'{"x": "' + b"a" * MAX_PAYLOAD + b'"}'
    pub = await Publisher(f"lim-pub-{time.time_ns()}").connect(limited.broker_port)
    pub.publish("devices/lim-m-big/telemetry", oversized)
    pub.publish(long_topic, b'{"t": 1}')
    pub.publish(fitting_topic, b'{"t": 2}')
    pub.publish("devices/lim-m-big/telemetry", b'{"t": 3}')
    await pub.wait_acked(4)
    await pub.close()

    async def both() -> bool:
        return await stored(limited, "lim-m-big") == 1 and (
            await stored(limited, "u" * (MAX_TOPIC - 18)) == 1
        )

    assert await wait_for(both)
    rows = await letters(limited, "device_id = 'lim-m-big'")
    assert [(r["reason"], r["payload"]) for r in rows] == [
        (f"payload over {MAX_PAYLOAD} bytes - at `byte 0`", oversized)
    ]
    rows = await letters(limited, "source = $1", long_topic)
    assert [(r["reason"], r["device_id"]) for r in rows] == [
        ("topic too long - at `topic`", None)
    ]


# -- readings per message -----------------------------------------------------

TOO_MANY = (
    f"{MAX_READINGS + 1} readings in one message, over the limit of {MAX_READINGS} "
    "(pipeline.max_readings_per_message): send them in smaller messages"
)


async def test_limits_http_readings_per_message(limited: Deployment) -> None:
    base = int(time.time() * 1000) - 600_000
    client = await RawHttp.open(limited.server.http_port)
    at_limit = readings(MAX_READINGS, base)
    over = readings(MAX_READINGS + 1, base + 10_000)
    over_with_rejects = readings(MAX_READINGS + 1, base + 20_000, bad=21)
    status, _, answer = await client.post(path("lim-h-many"), at_limit)
    assert (status, answer) == (202, {"stored": MAX_READINGS})
    for body in (over, over_with_rejects):
        status, _, answer = await client.post(path("lim-h-many"), body)
        assert status == 400
        assert answer == {
            "error": f"nothing usable: {TOO_MANY}", "path": "$",
            "rejected": [{"path": "$", "reason": TOO_MANY}],
        }  # fmt: skip
    await client.close()
    # Nothing of a refused message is stored; each is one dead letter
    assert await stored(limited, "lim-h-many") == MAX_READINGS
    rows = await letters(limited, "device_id = 'lim-h-many'")
    assert [(r["reason"], r["payload"]) for r in rows] == [
        (f"{TOO_MANY} - at `$`", over),
        (f"{TOO_MANY} - at `$`", over_with_rejects),
    ]


async def test_limits_coap_and_mqtt_readings_per_message(
    limited: Deployment, coap: aiocoap.Context
) -> None:
    base = int(time.time() * 1000) - 900_000
    over = readings(MAX_READINGS + 1, base)
    answer = await coap_post(coap, coap_uri(limited, "lim-c-many"), over)
    assert answer.code == Code.BAD_REQUEST
    assert orjson.loads(answer.payload)["error"] == f"nothing usable: {TOO_MANY}"

    pub = await Publisher(f"lim-many-{time.time_ns()}").connect(limited.broker_port)
    pub.publish("devices/lim-m-many/telemetry", over)
    pub.publish("devices/lim-m-many/telemetry", readings(MAX_READINGS, base))
    await pub.wait_acked(2)
    await pub.close()

    async def good_stored() -> bool:
        return await stored(limited, "lim-m-many") == MAX_READINGS

    assert await wait_for(good_stored)
    assert await stored(limited, "lim-c-many") == 0
    for device in ("lim-c-many", "lim-m-many"):
        rows = await letters(limited, "device_id = $1", device)
        assert [(r["reason"], r["payload"]) for r in rows] == [
            (f"{TOO_MANY} - at `$`", over)
        ]


# -- headers and connections --------------------------------------------------


async def test_limits_http_headers_over_limit_get_431_and_close(
    limited: Deployment,
) -> None:
    client = await RawHttp.open(limited.server.http_port)
    status, headers, answer = await client.post(
        path("lim-hdr"), b'{"t": 1}', extra=f"X-Junk: {'j' * MAX_HEADER}\r\n"
    )
    assert status == 431 and answer == {"error": "request headers too large"}
    assert headers.get("connection") == "close"
    assert await asyncio.wait_for(client.reader.read(), 5) == b""  # closed
    await client.close()
    # Refused before it was a request: nothing stored, nothing kept (README)
    assert await stored(limited, "lim-hdr") == 0
    assert await letters(limited, "source LIKE '%lim-hdr%'") == []
    # Just under the limit is fine
    client = await RawHttp.open(limited.server.http_port)
    status, _, _ = await client.post(
        path("lim-hdr"), b'{"t": 1}', extra=f"X-Junk: {'j' * (MAX_HEADER - 200)}\r\n"
    )
    await client.close()
    assert status == 202


async def test_limits_idle_connections_are_closed(limited: Deployment) -> None:
    loop = asyncio.get_running_loop()
    silent = await RawHttp.open(limited.server.http_port)
    used = await RawHttp.open(limited.server.http_port)
    opened = loop.time()
    for i in range(4):  # active for longer than the idle timeout
        status, _, _ = await used.post(path("lim-idle"), b'{"t": %d}' % i)
        assert status == 202
        await asyncio.sleep(IDLE_S / 2)
    # The silent one is gone by now, after about IDLE_S
    assert await asyncio.wait_for(silent.reader.read(), 5) == b""
    silent_for = loop.time() - opened
    assert IDLE_S * 0.8 <= silent_for <= IDLE_S * 2 + 1, silent_for
    # ...and the used one goes once it falls silent
    fell_silent = loop.time()
    assert await asyncio.wait_for(used.reader.read(), 5) == b""
    assert loop.time() - fell_silent <= IDLE_S * 2 + 1
    await silent.close()
    await used.close()


# -- MQTT 5 reason codes, seen at the subscriber ---------------------------------


@pytest.fixture
async def migrated(pg_uri: str, run_id: str) -> AsyncIterator[str]:
    dsn = await harness.create_database(pg_uri, f"t_limits_reasons_{run_id}")
    conn = await asyncpg.connect(dsn)
    await database.migrate(conn)
    await conn.close()
    yield dsn


async def test_limits_mqtt5_reason_codes_for_limits(
    migrated: str, broker: harness.Mosquitto, tmp_path: Path
) -> None:
    pool = await database.connect_pool(migrated, 2, 10)
    batcher = Batcher(pool, flush_rows=100, flush_interval_ms=5, capacity=10_000)
    batcher.max_readings = 3
    batcher.start()
    config = Mqtt(
        port=broker.port, client_id=f"lim-reasons-{time.time_ns()}",
        max_payload_bytes=MAX_PAYLOAD, max_topic_bytes=MAX_TOPIC,
    )  # fmt: skip
    subscriber = MqttSubscriber(config, batcher, clock.Window())
    sent: list[int] = []
    send_puback = subscriber._puback

    def record(mid: int, reason_code: int = 0) -> None:
        sent.append(reason_code)
        send_puback(mid, reason_code=reason_code)

    subscriber._puback = record
    await subscriber.start()
    await subscriber.connected.wait()
    try:
        pub = await Publisher(f"lim-reasons-pub-{time.time_ns()}").connect(broker.port)
        pub.publish("devices/lim-r/telemetry", b"x" * (MAX_PAYLOAD + 1))
        pub.publish(f"devices/{'r' * MAX_TOPIC}/telemetry", b'{"t": 1}')
        pub.publish("devices/lim-r/telemetry", b'{"t": 1}')
        pub.publish("devices/lim-r/telemetry", b'{"t": null}')
        pub.publish("devices/lim-r/telemetry", b'{"a": 1, "b": 2, "c": 3, "d": 4}')
        await pub.wait_acked(5)
        await pub.close()
        assert await wait_for(lambda: _true(len(sent) == 5), timeout=10)
        # 0x83 implementation specific (PUBACK has no "too large"), 0x90
        # topic name invalid, 0 success, 0x99 payload format invalid when
        # nothing in it was usable (every part rejected; over the readings
        # limit, refused whole)
        assert sent == [0x83, 0x90, 0, 0x99, 0x99]
        reasons = await pool.fetch(
            "SELECT reason FROM ingestd.dead_letters ORDER BY id"
        )
        assert [r["reason"] for r in reasons][:2] == [
            f"payload over {MAX_PAYLOAD} bytes - at `byte 0`",
            "topic too long - at `topic`",
        ]
        assert len(reasons) == 4
    finally:
        await subscriber.stop()
        await batcher.close()
        await pool.close()


async def _true(value: bool) -> bool:
    return value
