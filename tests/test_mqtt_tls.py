"""MQTT with client certificates: a real Mosquitto run with the configuration
``ingestd certs broker-config`` writes, and ingestd connected to it with its
own client certificate.

- a device with a valid certificate publishes, and its reading is stored;
- a device cannot publish on another device's topic (PUBACK 0x87, nothing
  stored), including under a ``{device...}`` route;
- a revoked device is refused once Mosquitto rereads the CRL (SIGHUP), as
  are certificates of another CA and clients with none.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from gmqtt.mqtt.constants import MQTTv50

from bench import harness
from ingestd.security import pki

from .mqtt_publisher import Publisher, wait_for
from .pki_cli import config_text, ok

ROUTES = """
[[mqtt.routes]]
topic = "devices/{device}/telemetry"
codec = "json"

[[mqtt.routes]]
topic = "zb/{device...}"
codec = "json"
"""
NOT_AUTHORIZED = 0x87


class TlsBroker:
    def __init__(self, dsn: str, config: Path, pki_dir: Path, port: int,
                 broker: harness.Mosquitto) -> None:  # fmt: skip
        self.dsn = dsn
        self.config = config
        self.pki = pki_dir
        self.port = port
        self.broker = broker

    def device_files(self, folder: str) -> tuple[Path, Path, Path]:
        base = self.pki / "devices" / folder
        return base / "device.pem", base / "device.key", base / "ca.pem"

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()


@pytest.fixture(scope="module")
async def tls(
    pg_uri: str, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TlsBroker]:
    tmp = tmp_path_factory.mktemp("mqtt_tls")
    dsn = await harness.create_database(pg_uri, f"t_mqtt_tls_{run_id}")
    state, pki_dir = tmp / "state", tmp / "pki"
    certs_config = tmp / "certs.toml"
    certs_config.write_text(config_text(dsn, state, pki_dir, ROUTES))

    # the operator's steps, as the README gives them
    await ok(certs_config, "init-ca")
    for device in ("dev-a", "dev-b", "dev-c", "hall/lamp"):
        await ok(certs_config, "issue-device", device)
    port = harness.free_port()
    # Mosquitto started as root reads its files as user 'mosquitto', which
    # cannot enter pytest's private temporary folders: the broker's folder
    # goes under /tmp, handed to that user as the README tells operators
    owner = ["--owner", "mosquitto"] if os.geteuid() == 0 else []
    out = Path(tempfile.mkdtemp(prefix="ingestd-broker-tls-"))
    await ok(
        certs_config, "broker-config", "--out", str(out), "--port", str(port),
        "--bind", "127.0.0.1", *owner,
    )  # fmt: skip
    broker = harness.Mosquitto(extra="\n" + (out / "mosquitto.conf").read_text())

    http_port, admin_port = harness.free_port(), harness.free_port()
    text = harness.config_text(
        dsn, port, http_port, admin_port, state, client_id="ingestd-tls"
    ) + ROUTES  # fmt: skip
    identity = pki_dir / "clients"
    text = text.replace(
        "[mqtt]\n",
        "[mqtt]\ntls = true\n"
        f'ca_file = "{pki_dir / "ca" / "chain.pem"}"\n'
        f'certificate = "{identity / "ingestd.pem"}"\n'
        f'private_key = "{identity / "ingestd.key"}"\n',
        1,
    )
    server = harness.IngestdProcess(text, tmp, http_port, admin_port)
    try:
        broker.start()
        await asyncio.to_thread(harness.wait_port, port)
        await asyncio.to_thread(server.start)
        yield TlsBroker(dsn, certs_config, pki_dir, port, broker)
        code = await asyncio.to_thread(server.stop)
        assert code == 0, server.log.read_text()[-3000:]
    finally:
        server.kill()
        broker.stop()
        shutil.rmtree(out, ignore_errors=True)


class Device(Publisher):
    """A QoS 1 publisher over TLS that keeps each PUBACK's reason code."""

    def __init__(self, client_id: str) -> None:
        super().__init__(client_id)
        self.reasons: list[int] = []
        handler = self.client._package_handler
        counted = handler._handle_puback_packet

        def keep(cmd: Any, packet: bytes) -> None:
            self.reasons.append(packet[2] if len(packet) > 2 else 0)
            counted(cmd, packet)

        handler._handle_puback_packet = keep

    async def connect_tls(self, tls: TlsBroker, folder: str) -> Device:
        context = _context(*tls.device_files(folder))
        await self.client.connect("127.0.0.1", tls.port, ssl=context, version=MQTTv50)
        return self


def _context(cert: Path | None, key: Path | None, trust: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(trust))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def _connect_answer(port: int, context: ssl.SSLContext) -> str:
    """Open TLS, send an MQTT 5 CONNECT; ``connack`` or why it was refused.

    With TLS 1.3 the client finishes its handshake before the broker has
    checked the client certificate, so a refusal shows on the next read or
    write (an alert such as ``certificate revoked``, or the socket closed).
    """
    client_id = b"probe"
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + len(client_id).to_bytes(2, "big")
    body += client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(bytes([0x10, len(body)]) + body)
                first = tls.recv(1)
    except OSError as exc:  # ssl.SSLError is an OSError
        return f"refused: {exc}"
    return "connack" if first == b"\x20" else f"refused: closed ({first!r})"


async def _answer(tls: TlsBroker, folder: str) -> str:
    return await asyncio.to_thread(
        _connect_answer, tls.port, _context(*tls.device_files(folder))
    )


async def test_mqtt_tls_valid_device_reading_is_stored(tls: TlsBroker) -> None:
    now_ms = int(time.time() * 1000)
    a = await Device("tls-a").connect_tls(tls, "dev-a")
    a.publish("devices/dev-a/telemetry", orjson.dumps({"ts": now_ms, "temp": 21.5}))
    lamp = await Device("tls-lamp").connect_tls(tls, "hall%2Flamp")
    lamp.publish("zb/hall/lamp", orjson.dumps({"ts": now_ms, "on": 1}))
    await a.wait_acked(1)
    await lamp.wait_acked(1)
    await a.close()
    await lamp.close()
    assert a.reasons == [0] and lamp.reasons == [0]

    async def stored() -> Any:
        rows = await tls.fetch(
            "SELECT device_id, metric, value_num FROM ingestd.readings"
            " WHERE device_id IN ('dev-a', 'hall/lamp') ORDER BY device_id"
        )
        return rows if len(rows) == 2 else None

    rows = await wait_for(stored)
    assert rows is not None, "readings over TLS were not stored"
    assert [tuple(r) for r in rows] == [("dev-a", "temp", 21.5),
                                        ("hall/lamp", "on", 1.0)]  # fmt: skip


async def test_mqtt_tls_device_cannot_publish_as_another(tls: TlsBroker) -> None:
    now_ms = int(time.time() * 1000)
    b = await Device("tls-b").connect_tls(tls, "dev-b")
    b.publish("devices/dev-a/telemetry", orjson.dumps({"ts": now_ms, "spoof": 1}))
    b.publish("devices/dev-b/telemetry", orjson.dumps({"ts": now_ms, "own": 2}))
    lamp = await Device("tls-lamp-2").connect_tls(tls, "hall%2Flamp")
    # under zb/{device...} this topic is device 'hall/lamp/x': not the lamp
    lamp.publish("zb/hall/lamp/x", orjson.dumps({"ts": now_ms, "spoof": 3}))
    await b.wait_acked(2)
    await lamp.wait_acked(1)
    await b.close()
    await lamp.close()
    assert b.reasons == [NOT_AUTHORIZED, 0]
    assert lamp.reasons == [NOT_AUTHORIZED]

    # dev-b's own reading arrives after its refused one: once it is stored,
    # the refused one would have been too
    async def own_stored() -> Any:
        return await tls.fetch(
            "SELECT 1 FROM ingestd.readings WHERE device_id = 'dev-b'"
            " AND metric = 'own'"
        )

    assert await wait_for(own_stored)
    spoofed = await tls.fetch(
        "SELECT device_id FROM ingestd.readings WHERE metric = 'spoof'"
    )
    assert spoofed == []


async def test_mqtt_tls_revoked_device_is_refused(
    tls: TlsBroker, tmp_path: Path
) -> None:
    assert await _answer(tls, "dev-c") == "connack"
    await ok(tls.config, "revoke", "dev-c", "--reason", "keyCompromise")

    # Mosquitto reads the CRL at start and on SIGHUP, not per connection
    tls.broker.reload()
    deadline = time.monotonic() + 15
    answer = await _answer(tls, "dev-c")
    while answer == "connack" and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        answer = await _answer(tls, "dev-c")
    assert answer.startswith("refused"), answer
    assert await _answer(tls, "dev-a") == "connack"  # the others still connect

    # a certificate from another CA, and no certificate at all
    other_root = pki.new_root("someone else's root")
    other_ca = pki.new_intermediate(other_root)
    stranger = pki.issue_device(other_ca, "dev-a")
    key, cert = tmp_path / "stranger.key", tmp_path / "stranger.pem"
    pki.save(stranger, key, cert, other_ca.cert, other_root.cert)
    trust = tls.pki / "ca" / "chain.pem"
    for context in (_context(cert, key, trust), _context(None, None, trust)):
        answer = await asyncio.to_thread(_connect_answer, tls.port, context)
        assert answer.startswith("refused"), answer
