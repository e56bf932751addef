"""CoAP over TLS (RFC 8323): a real handshake against a server certificate."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import aiocoap
import msgspec
import orjson
from aiocoap.numbers.codes import Code
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench import harness
from ingestd import config
from ingestd.server import Server


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A P-256 certificate for 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ingestd-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_coap_over_tls_is_answered_after_commit(
    pg_uri: str, run_id: str, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    dsn = await harness.create_database(pg_uri, f"t_coaptls_{run_id}")
    tls_port = harness.free_port()
    cfg = msgspec.convert(
        {
            "database": {"dsn": dsn, "state_dir": str(tmp_path)},
            "mqtt": {"enabled": False},
            "http": {"enabled": False},
            "admin": {"enabled": False},
            "coap": {"transports": ["tls"], "tls_port": tls_port,
                     "certificate": str(cert), "private_key": str(key)},
        },
        config.Config,
    )  # fmt: skip
    config._check(cfg, "test")
    server = Server(cfg)
    await server.start()
    client = await aiocoap.Context.create_client_context()
    try:
        base = f"coaps+tcp://127.0.0.1:{tls_port}"
        client.client_credentials.load_from_dict(
            {f"{base}/*": {"tlscert": {"certfile": str(cert)}}}
        )
        request = aiocoap.Message(
            code=Code.POST, uri=f"{base}/v1/devices/c-tls/telemetry",
            payload=b'{"t": 21.5}', content_format=50,
        )  # fmt: skip
        answer = await client.request(request).response
        assert answer.code == Code.CHANGED
        assert orjson.loads(answer.payload) == {"stored": 1}
        assert server.pool is not None
        transport = await server.pool.fetchval(
            "SELECT transport FROM ingestd.readings WHERE device_id = 'c-tls'"
        )
        assert transport == "coaps+tcp"
    finally:
        await client.shutdown()
        await server.stop()


def test_coap_tls_without_certificate_is_a_config_error() -> None:
    try:
        config.parse({"coap": {"transports": ["udp", "tls"]}})
    except config.ConfigError as exc:
        assert "'tls' needs coap.certificate" in str(exc)
    else:
        raise AssertionError("accepted TLS without a certificate")
