"""Mutual TLS on ingestd's own listeners: HTTPS, WSS and CoAP over TLS.

Real handshakes against a real server process, with certificates from
ingestd's own PKI (root, issuing intermediate, devices): who may connect,
who may write as whom, and revocation closing open connections.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiocoap
import asyncpg
import orjson
import pytest
from aiocoap.numbers.codes import Code

from bench import harness
from ingestd.security import inventory, pki

from .conftest import Deployment, deploy
from .mqtt_publisher import wait_for


@dataclass
class Ca:
    root: pki.Issued
    issuing: pki.Issued
    folder: Path

    def device(self, device_id: str, **kw: object) -> tuple[Path, Path, pki.Issued]:
        """Issue ``device_id`` a certificate; its files (chain, key)."""
        issued = pki.issue_device(self.issuing, device_id, **kw)  # type: ignore[arg-type]
        folder = self.folder / "devices" / f"{device_id}-{issued.cert.serial_number}"
        pki.save(issued, folder / "key.pem", folder / "cert.pem", self.issuing.cert)
        return folder / "cert.pem", folder / "key.pem", issued


def make_ca(folder: Path) -> Ca:
    root = pki.new_root("test root")
    ca = Ca(root, pki.new_intermediate(root, "test devices"), folder)
    server = pki.issue_server(ca.issuing, ["127.0.0.1", "localhost"])
    pki.save(server, folder / "server.key", folder / "server.pem", ca.issuing.cert)
    pki.write_public(folder / "root.pem", pki.pem(root.cert))
    return ca


@dataclass
class Secure:
    d: Deployment
    ca: Ca
    https: int
    coaps: int

    def client(self, cert: Path | None, key: Path | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca.folder / "root.pem")
        if cert is not None:
            ctx.load_cert_chain(cert, key)
        return ctx

    async def record(self, issued: pki.Issued, device_id: str) -> None:
        conn = await self.d.connect()
        try:
            await inventory.record(
                conn, issued.cert, "device", self.ca.issuing.cert, device_id
            )
        finally:
            await conn.close()

    async def revoke(self, device_id: str) -> None:
        conn = await self.d.connect()
        try:
            await inventory.revoke_device(conn, device_id, "keyCompromise")
        finally:
            await conn.close()


# A network server's uplink names its device in the payload (end_device_ids)
TTN_ROUTE = """
[[http.routes]]
content_type = "application/json"
codec = "json"

[[http.routes]]
content_type = "application/x-ttn+json"
codec = "ttn"
"""


def ttn_uplink(
    device_id: str, dev_eui: str = "70B3D57ED0000A01", decoded: bool = True
) -> bytes:
    """A The Things Stack v3 uplink naming ``device_id`` in its payload;
    without ``decoded`` it carries no reading, only the device's DevEUI."""
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    uplink: dict[str, object] = {"f_port": 1, "received_at": now}
    if decoded:
        uplink["decoded_payload"] = {"temperature": 4.5}
    return orjson.dumps(
        {
            "end_device_ids": {
                "device_id": device_id,
                "application_ids": {"application_id": "fleet"},
                "dev_eui": dev_eui,
            },
            "received_at": now,
            "uplink_message": uplink,
        }
    )


@pytest.fixture(scope="module")
async def secure(
    pg_uri: str,
    run_id: str,
    broker: harness.Mosquitto,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Secure]:
    tmp = tmp_path_factory.mktemp("mtls")
    ca = make_ca(tmp / "pki")
    https, coaps = harness.free_port(), harness.free_port()
    extra = f"""
[security]
mtls = true
certificate = "{ca.folder / "server.pem"}"
private_key = "{ca.folder / "server.key"}"
client_ca = "{ca.folder / "root.pem"}"
revocation_poll_s = 0.5
{TTN_ROUTE}
[orders]
bindings_refresh_s = 0.5
"""
    d = await deploy(
        pg_uri, f"t_mtls_{run_id}", broker, tmp, extra,
        sections={
            "http": f"tls_port = {https}\n",
            "coap": f'tls_port = {coaps}\ntransports = ["tls"]\n',
        },
    )  # fmt: skip
    yield Secure(d, ca, https, coaps)
    code = await asyncio.to_thread(d.server.stop)
    assert code == 0, d.server.log.read_text()[-3000:]


async def open_https(
    s: Secure, cert: Path | None, key: Path | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", s.https, ssl=s.client(cert, key), server_hostname="127.0.0.1"
    )


async def post(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    device: str,
    body: bytes,
    content_type: str = "application/json",
) -> tuple[int, dict[str, object]]:
    writer.write(
        f"POST /v1/devices/{device}/telemetry HTTP/1.1\r\nHost: t\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    line = await asyncio.wait_for(reader.readline(), 10)
    if not line:
        raise ConnectionError("closed by the server")
    status = int(line.split()[1])
    length = 0
    while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, orjson.loads(await reader.readexactly(length))


def upgrade(writer: asyncio.StreamWriter, device: str) -> None:
    """Ask for a WebSocket as ``device`` (RFC 6455 4.1)."""
    writer.write(
        f"GET /v1/ws?device={device} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        f"{base64.b64encode(os.urandom(16)).decode()}\r\n\r\n".encode()
    )


def reading(ts_ms: int, temp: float = 4.5) -> bytes:
    return orjson.dumps({"ts": ts_ms, "temp": temp})


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (EOF or reset)."""
    started = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(4096), seconds):
            pass
    except (ConnectionError, ssl.SSLError):
        pass
    return time.monotonic() - started


# -- who may connect ----------------------------------------------------------


async def test_mtls_device_writes_as_itself_and_registry_records_certificate(
    secure: Secure,
) -> None:
    cert, key, issued = secure.ca.device("truck-7")
    reader, writer = await open_https(secure, cert, key)
    ts = int(time.time() * 1000)
    status, answer = await post(reader, writer, "truck-7", reading(ts))
    writer.close()
    assert (status, answer["stored"]) == (202, 1)
    stored = await secure.d.fetchval(
        "SELECT count(*) FROM ingestd.readings WHERE device_id = 'truck-7'"
    )
    assert stored == 1

    # The registry takes the fingerprint and expiry the device connected with
    row = None
    for _ in range(40):
        row = (
            await secure.d.fetch(
                "SELECT cert_fingerprint, cert_not_after FROM ingestd.devices"
                " WHERE id = 'truck-7'"
            )
        )[0]
        if row["cert_fingerprint"]:
            break
        await asyncio.sleep(0.25)
    assert row is not None and row["cert_fingerprint"] == pki.fingerprint(issued.cert)
    assert row["cert_not_after"] == issued.cert.not_valid_after_utc


async def test_mtls_writing_as_another_device_is_403_and_a_dead_letter(
    secure: Secure,
) -> None:
    cert, key, _ = secure.ca.device("truck-8")
    reader, writer = await open_https(secure, cert, key)
    status, answer = await post(reader, writer, "truck-9", reading(1_700_000_000_000))
    writer.close()
    assert status == 403
    assert answer["error"] == "certificate of 'truck-8' may not write as 'truck-9'"
    assert not await secure.d.fetchval(
        "SELECT count(*) FROM ingestd.readings WHERE device_id = 'truck-9'"
    )
    reason = await secure.d.fetchval(
        "SELECT reason FROM ingestd.dead_letters WHERE device_id = 'truck-9'"
    )
    assert reason == "certificate of 'truck-8' may not write as 'truck-9'"


@pytest.mark.parametrize("case", ["expired", "unknown CA", "no certificate"])
async def test_mtls_handshake_refuses(
    secure: Secure, case: str, tmp_path: Path
) -> None:
    if case == "expired":
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        cert, key, _ = secure.ca.device("old-1", days=2, not_before=past)
    elif case == "unknown CA":
        cert, key, _ = make_ca(tmp_path / "other").device("stranger-1")
    else:
        cert = key = None
    # TLS 1.3 finishes the client's side before the server has judged its
    # certificate: the refusal arrives as an alert on the first read
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        reader, writer = await open_https(secure, cert, key)
        await post(reader, writer, "old-1", reading(1_700_000_000_000))
    stored = await secure.d.fetchval(
        "SELECT count(*) FROM ingestd.readings WHERE device_id IN"
        " ('old-1', 'stranger-1')"
    )
    assert stored == 0


async def test_mtls_payload_naming_another_device_is_403(secure: Secure) -> None:
    """A device's certificate does not let its payload write for others."""
    uplink = ttn_uplink("dev1")
    cert, key, _ = secure.ca.device("gw-7")
    reader, writer = await open_https(secure, cert, key)
    writer.write(
        b"POST /v1/devices/gw-7/telemetry HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: application/x-ttn+json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(uplink), uplink)
    )
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert line.startswith(b"HTTP/1.1 403"), line
    reason = await secure.d.fetchval(
        "SELECT reason FROM ingestd.dead_letters WHERE device_id = 'gw-7'"
    )
    assert reason == "certificate of 'gw-7' may not write as 'dev1'"


async def test_mtls_oversized_body_for_another_device_is_not_filed_under_it(
    secure: Secure,
) -> None:
    # Cut at 413 before the scope check: the dead letter names the sender
    cert, key, _ = secure.ca.device("big-1")
    reader, writer = await open_https(secure, cert, key)
    status, answer = await post(reader, writer, "victim-9", b"[" + b" " * 1_100_000)
    writer.close()
    assert status == 413, answer

    async def kept() -> list[tuple[str, str]] | None:
        letters = await secure.d.fetch(
            "SELECT device_id, reason FROM ingestd.dead_letters"
            " WHERE reason LIKE '413%' AND source LIKE '%victim-9%'"
        )
        return [tuple(r) for r in letters] or None

    assert await wait_for(kept, timeout=10) == [
        ("big-1", "413: body larger than 1048576 bytes; certificate of 'big-1' "
                  "may not write as 'victim-9'")
    ]  # fmt: skip


async def test_mtls_gateway_writes_for_the_devices_its_certificate_relays_for(
    secure: Secure,
) -> None:
    """A network server's certificate names the device ids it relays for;
    it writes for those, over its own path or theirs, and for no others."""
    relays = ("field-*", "pump-[0-9]")
    cert, key, issued = secure.ca.device("lns-1", relays=relays)
    await secure.record(issued, "lns-1")
    ttn = "application/x-ttn+json"
    reader, writer = await open_https(secure, cert, key)
    answers = [
        await post(reader, writer, "lns-1", ttn_uplink("field-7"), ttn),
        await post(reader, writer, "pump-3", reading(1_700_000_000_000)),
        await post(reader, writer, "lns-1", ttn_uplink("yard-1"), ttn),
        await post(reader, writer, "pump-33", reading(1_700_000_000_000)),
    ]
    writer.close()
    scope = "certificate of 'lns-1' (relays 'field-*', 'pump-[0-9]') may not write as"
    assert answers == [
        (202, {"stored": 1}),
        (202, {"stored": 1}),
        (403, {"error": f"{scope} 'yard-1'"}),
        (403, {"error": f"{scope} 'pump-33'"}),
    ], answers

    # The same scope over WSS and CoAP over TLS
    ws_reader, ws_writer = await open_https(secure, cert, key)
    upgrade(ws_writer, "field-9")
    line = await asyncio.wait_for(ws_reader.readline(), 10)
    ws_writer.close()
    assert line.startswith(b"HTTP/1.1 101"), line
    client = await coap_client(secure, cert, key)
    try:
        ok = await coap_post(client, secure, "field-2", reading(1_700_000_000_000))
        refused = await coap_post(client, secure, "yard-2", reading(1_700_000_000_000))
    finally:
        await client.shutdown()
    assert (ok.code, refused.code) == (Code.CHANGED, Code.FORBIDDEN)

    stored = await secure.d.fetch(
        "SELECT device_id FROM ingestd.readings"
        " WHERE device_id ~ '^(field|pump|yard)-' ORDER BY device_id"
    )
    assert [r["device_id"] for r in stored] == ["field-2", "field-7", "pump-3"]
    letters = await secure.d.fetch(
        "SELECT device_id, reason FROM ingestd.dead_letters"
        " WHERE reason LIKE 'certificate of ''lns-1''%' ORDER BY id"
    )
    assert [(r["device_id"], r["reason"]) for r in letters] == [
        ("lns-1", f"{scope} 'yard-1'"),
        ("pump-33", f"{scope} 'pump-33'"),
        ("yard-2", f"{scope} 'yard-2'"),
    ]


async def test_mtls_plain_http_is_off(secure: Secure) -> None:
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", secure.d.server.http_port)


# -- revocation -----------------------------------------------------------------


async def test_mtls_revocation_closes_open_https_and_wss_within_a_second(
    secure: Secure,
) -> None:
    cert, key, issued = secure.ca.device("scale-3")
    await secure.record(issued, "scale-3")
    reader, writer = await open_https(secure, cert, key)
    status, _ = await post(reader, writer, "scale-3", reading(1_700_000_000_000))
    assert status == 202
    ws_reader, ws_writer = await open_https(secure, cert, key)
    upgrade(ws_writer, "scale-3")
    assert (await ws_reader.readline()).startswith(b"HTTP/1.1 101")
    while await ws_reader.readline() not in (b"\r\n", b""):
        pass

    revoked_at = time.monotonic()
    await secure.revoke("scale-3")
    https_closed, wss_closed = await asyncio.gather(
        closed_within(reader, 5.0), closed_within(ws_reader, 5.0)
    )
    took = time.monotonic() - revoked_at
    writer.close()
    ws_writer.close()
    assert https_closed < 1.0 and wss_closed < 1.0, (https_closed, wss_closed)
    assert took < 1.5

    # ... and the same certificate cannot come back
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        reader, writer = await open_https(secure, cert, key)
        await post(reader, writer, "scale-3", reading(1_700_000_000_001))
    stored = await secure.d.fetchval(
        "SELECT count(*) FROM ingestd.readings WHERE device_id = 'scale-3'"
    )
    assert stored == 1


async def test_mtls_websocket_upgrade_as_another_device_is_403(secure: Secure) -> None:
    cert, key, _ = secure.ca.device("press-1")
    reader, writer = await open_https(secure, cert, key)
    upgrade(writer, "press-2")
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert line.startswith(b"HTTP/1.1 403")
    letters = await secure.d.fetch(
        "SELECT transport, device_id, reason FROM ingestd.dead_letters"
        " WHERE device_id = 'press-2'"
    )
    assert [tuple(r) for r in letters] == [
        ("websocket", "press-2", "certificate of 'press-1' may not write as 'press-2'")
    ]


async def test_mtls_aliases_lead_no_payload_to_a_device_out_of_scope(
    secure: Secure,
) -> None:
    """A DevEUI is an identity too. A certificate never claims one first
    (first sight would win it for good, and with it the device's readings
    from every feed); once the operator maps it to a device, naming it
    writes as that device, so the scope covers it."""
    ttn = "application/x-ttn+json"
    cert, key, issued = secure.ca.device("lns-2", relays=("eui-*",))
    await secure.record(issued, "lns-2")
    gw_reader, gw_writer = await open_https(secure, cert, key)
    cert2, key2, _ = secure.ca.device("plain-5")
    reader, writer = await open_https(secure, cert2, key2)
    real, fake = "70B3D57ED00000AA", "70B3D57ED00000BB"
    answers = [
        # first sights: stored under the device named, no alias recorded
        await post(gw_reader, gw_writer, "lns-2", ttn_uplink("eui-real", real), ttn),
        await post(reader, writer, "plain-5", ttn_uplink("plain-5", fake), ttn),
    ]
    conn = await secure.d.connect()
    await conn.execute(
        "INSERT INTO ingestd.device_aliases (namespace, external_id, device_id)"
        " VALUES ('lorawan', lower($1), 'eui-real')",
        real,
    )
    await conn.close()
    await asyncio.sleep(1.5)  # the server reloads aliases every 0.5 s here
    answers += [
        # naming the operator's DevEUI writes as eui-real
        await post(reader, writer, "plain-5", ttn_uplink("plain-5", real), ttn),
        await post(gw_reader, gw_writer, "lns-2", ttn_uplink("eui-x", real), ttn),
        # an uplink with no reading still names a device
        await post(gw_reader, gw_writer, "lns-2",
                   ttn_uplink("victim-1", "AAAAAAAAAAAAAAAA", False), ttn),
    ]  # fmt: skip
    writer.close()
    gw_writer.close()
    assert answers == [
        (202, {"stored": 1}),
        (202, {"stored": 1}),
        (403, {"error": "certificate of 'plain-5' may not write as 'eui-real'"}),
        (202, {"stored": 1}),
        (403, {"error": "certificate of 'lns-2' (relays 'eui-*') may not write as "
                        "'victim-1'"}),
    ], answers  # fmt: skip
    stored = await secure.d.fetch(
        "SELECT device_id FROM ingestd.readings"
        " WHERE device_id IN ('eui-real', 'eui-x', 'plain-5', 'victim-1')"
        " ORDER BY device_id"
    )
    assert [r["device_id"] for r in stored] == ["eui-real", "eui-real", "plain-5"]
    aliases = await secure.d.fetch(
        "SELECT external_id, device_id FROM ingestd.device_aliases"
        " WHERE external_id IN (lower($1), lower($2), 'aaaaaaaaaaaaaaaa')",
        real, fake,
    )  # fmt: skip
    assert [tuple(r) for r in aliases] == [(real.lower(), "eui-real")]


# -- CoAP over TLS --------------------------------------------------------------


async def coap_client(s: Secure, cert: Path, key: Path) -> aiocoap.Context:
    client = await aiocoap.Context.create_client_context()
    ctx = s.client(cert, key)
    ctx.set_alpn_protocols(["coap"])
    # aiocoap's credential map cannot name a client certificate; its TLS
    # client asks this method for the context, so hand it ours
    client.client_credentials.ssl_client_context = lambda *_: ctx  # type: ignore[method-assign]
    return client


async def coap_post(
    client: aiocoap.Context, s: Secure, device: str, body: bytes
) -> aiocoap.Message:
    request = aiocoap.Message(
        code=Code.POST,
        uri=f"coaps+tcp://127.0.0.1:{s.coaps}/v1/devices/{device}/telemetry",
        payload=body,
        content_format=50,
    )
    return await asyncio.wait_for(client.request(request).response, 15)


async def test_mtls_coap_over_tls_identity_and_revocation(secure: Secure) -> None:
    cert, key, issued = secure.ca.device("reefer-1")
    await secure.record(issued, "reefer-1")
    client = await coap_client(secure, cert, key)
    try:
        ok = await coap_post(client, secure, "reefer-1", reading(1_700_000_000_000))
        assert ok.code == Code.CHANGED, ok.payload
        wrong = await coap_post(client, secure, "reefer-2", reading(1_700_000_000_000))
        assert wrong.code == Code.FORBIDDEN
        assert orjson.loads(wrong.payload) == {
            "error": "certificate of 'reefer-1' may not write as 'reefer-2'"
        }

        # Revoked: the open connection is cut; a new one is refused
        await secure.revoke("reefer-1")
        await asyncio.sleep(1.0)
        with pytest.raises((aiocoap.error.Error, TimeoutError, OSError)):
            answer = await coap_post(
                client, secure, "reefer-1", reading(1_700_000_000_001)
            )
            assert answer.code != Code.CHANGED  # pragma: no cover - must not land
    finally:
        await client.shutdown()
    stored = await secure.d.fetchval(
        "SELECT count(*) FROM ingestd.readings WHERE device_id LIKE 'reefer-%'"
    )
    assert stored == 1


def coap_tcp_frame(code: int, options: bytes = b"", payload: bytes = b"") -> bytes:
    """One token-less CoAP-over-TCP message (RFC 8323, section 3.2)."""
    rest = options + (b"\xff" + payload if payload else b"")
    n = len(rest)
    if n < 13:
        head = bytes([n << 4])
    elif n < 269:
        head = bytes([13 << 4, n - 13])
    else:
        head = bytes([14 << 4]) + (n - 269).to_bytes(2, "big")
    return head + bytes([code]) + rest


async def read_coap_tcp_code(reader: asyncio.StreamReader) -> int:
    """The code of the next CoAP-over-TCP message on ``reader``."""
    first = (await reader.readexactly(1))[0]
    n, extended = first >> 4, {13: 1, 14: 2, 15: 4}.get(first >> 4, 0)
    if extended:
        n = int.from_bytes(await reader.readexactly(extended), "big")
        n += {1: 13, 2: 269, 4: 65805}[extended]
    code = (await reader.readexactly(1))[0]
    await reader.readexactly((first & 0x0F) + n)  # token, options, payload
    return code


async def test_mtls_revocation_closes_open_coap_over_tls_within_a_second(
    secure: Secure,
) -> None:
    # A raw RFC 8323 client, since aiocoap's hides its connection: the cut is
    # timed from the revocation to the end of the TLS stream
    cert, key, issued = secure.ca.device("reefer-9")
    await secure.record(issued, "reefer-9")
    ctx = secure.client(cert, key)
    ctx.set_alpn_protocols(["coap"])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", secure.coaps, ssl=ctx, server_hostname="127.0.0.1"
    )
    request = aiocoap.Message(
        code=Code.POST, uri_path=("v1", "devices", "reefer-9", "telemetry"),
        content_format=50,
    )  # fmt: skip
    writer.write(coap_tcp_frame(0xE1))  # CSM (7.01), which RFC 8323 sends first
    writer.write(
        coap_tcp_frame(int(Code.POST), request.opt.encode(), reading(1_700_000_000_000))
    )
    codes = [await asyncio.wait_for(read_coap_tcp_code(reader), 10) for _ in "ab"]
    assert codes == [0xE1, int(Code.CHANGED)], codes

    await secure.revoke("reefer-9")
    closed = await closed_within(reader, 5.0)
    writer.close()
    print(f"mtls: CoAP over TLS cut {closed * 1000:.1f} ms after the revocation")
    assert closed < 1.0, closed
    stored = await secure.d.fetchval(
        "SELECT count(*) FROM ingestd.readings WHERE device_id = 'reefer-9'"
    )
    assert stored == 1


async def test_mtls_certificate_revoked_before_connecting_is_refused(
    secure: Secure,
) -> None:
    cert, key, issued = secure.ca.device("tag-5")
    await secure.record(issued, "tag-5")
    await secure.revoke("tag-5")
    await asyncio.sleep(1.0)  # the poll interval, so the server has read it
    conn: asyncpg.Connection = await secure.d.connect()
    try:
        revoked = await conn.fetchval(
            "SELECT revoked_at IS NOT NULL FROM ingestd.certificates"
            " WHERE device_id = 'tag-5'"
        )
    finally:
        await conn.close()
    assert revoked
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        reader, writer = await open_https(secure, cert, key)
        await post(reader, writer, "tag-5", reading(1_700_000_000_000))
