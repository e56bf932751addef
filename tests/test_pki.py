"""``ingestd certs`` end to end: real processes, a fresh database, real files.

Every command runs as the operator runs it (``python -m ingestd certs``)
against one CA made by ``init-ca`` for this module; the checks read what
it left behind: the files and their modes, the certificates themselves,
the CRL, the inventory and the NOTIFY a revocation sends.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench import harness
from ingestd.security import pki

from .pki_cli import certs, chain, config_text, ok, serial

ROUTES = """
[[mqtt.routes]]
topic = "sites/{site}/{device}/up"
codec = "json"

[[mqtt.routes]]
topic = "zb/{device...}"
codec = "json"

[[mqtt.routes]]
topic = "gw/shared"
codec = "json"
"""


class Pki:
    def __init__(self, dsn: str, config: Path, folder: Path) -> None:
        self.dsn = dsn
        self.config = config
        self.dir = folder
        self.root = chain(folder / "ca" / "root.pem")[0]
        self.intermediate = chain(folder / "ca" / "intermediate.pem")[0]

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def row(self, serial: str) -> asyncpg.Record:
        rows = await self.fetch(
            "SELECT * FROM ingestd.certificates WHERE serial = $1", serial
        )
        assert len(rows) == 1, serial
        return rows[0]

    def crl(self) -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl((self.dir / "ca" / "crl.pem").read_bytes())

    def device(self, folder: str) -> list[x509.Certificate]:
        return chain(self.dir / "devices" / folder / "device.pem")


@pytest.fixture(scope="module")
async def ca(
    pg_uri: str, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pki]:
    tmp = tmp_path_factory.mktemp("pki")
    dsn = await harness.create_database(pg_uri, f"t_pki_{run_id}")
    config = tmp / "ingestd.toml"
    config.write_text(config_text(dsn, tmp / "state", tmp / "pki", ROUTES))
    out = await ok(config, "init-ca")
    assert "keep it offline" in out
    yield Pki(dsn, config, tmp / "pki")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _user_error(done: object, *words: str) -> None:
    """Exit 2 and one line on stderr that says what was wrong."""
    assert done.returncode == 2, (done.stdout, done.stderr)  # type: ignore[attr-defined]
    lines = done.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("ingestd certs: "), lines
    for word in words:
        assert word in lines[0], lines[0]


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _verify_client(ca: Pki, leaf: x509.Certificate, *rest: x509.Certificate) -> None:
    """Path validation to the root alone, as a TLS server does it."""
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([ca.root]))
        .build_client_verifier()
    )
    verified = verifier.verify(leaf, list(rest))
    assert verified.chain[-1] == ca.root


async def test_certs_init_ca_refuses_to_overwrite_and_keys_are_private(
    ca: Pki,
) -> None:
    root_before = (ca.dir / "ca" / "root.key").read_bytes()
    _user_error(await certs(ca.config, "init-ca"), "already exists", "refusing")
    assert (ca.dir / "ca" / "root.key").read_bytes() == root_before

    keys = sorted(ca.dir.rglob("*.key"))
    assert {k.name for k in keys} >= {"root.key", "intermediate.key"}
    for key in keys:
        assert _mode(key) == 0o600, key
    assert _mode(ca.dir / "ca") == 0o700

    # the intermediate issues, the root only signs it
    assert ca.intermediate.issuer == ca.root.subject
    ca.intermediate.verify_directly_issued_by(ca.root)
    bundle = chain(ca.dir / "ca" / "chain.pem")
    assert bundle == [ca.intermediate, ca.root]
    for cert, kind in ((ca.root, "root"), (ca.intermediate, "intermediate")):
        row = await ca.row(serial(cert))
        assert row["kind"] == kind
        assert row["fingerprint"] == pki.fingerprint(cert)
    row = await ca.row(serial(ca.intermediate))
    assert row["issuer_serial"] == serial(ca.root)


async def test_certs_issue_device_binds_the_id_and_chains_to_the_root(
    ca: Pki,
) -> None:
    device_id = "shelf/7 b"  # a slash and a space: one percent-encoded folder
    out = await ok(ca.config, "issue-device", device_id, "--days", "30")
    folder = ca.dir / "devices" / "shelf%2F7%20b"
    assert str(folder / "device.pem") in out
    assert _mode(folder / "device.key") == 0o600
    assert _mode(folder) == 0o700

    leaf, *rest = ca.device("shelf%2F7%20b")
    assert rest == [ca.intermediate]  # leaf, then the intermediate
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == device_id
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["urn:ingestd:device:shelf%2F7%20b"]
    assert pki.identity(leaf) == device_id
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days in (29, 30)
    _verify_client(ca, leaf, *rest)
    assert chain(folder / "ca.pem") == [ca.root]

    # the key in the folder is the certificate's
    key = pki.load(folder / "device.key", folder / "device.pem").key
    assert key.public_key() == leaf.public_key()

    row = await ca.row(serial(leaf))
    assert (row["kind"], row["subject"], row["device_id"]) == (
        "device", device_id, device_id,
    )  # fmt: skip
    assert row["fingerprint"] == pki.fingerprint(leaf)
    assert row["issuer_serial"] == serial(ca.intermediate)
    assert row["not_after"] == leaf.not_valid_after_utc
    assert row["revoked_at"] is None

    # a second live certificate only through rotate
    _user_error(await certs(ca.config, "issue-device", device_id), "rotate")


async def test_certs_issue_server_with_client_auth(ca: Pki) -> None:
    await ok(ca.config, "issue-server", "ingest.example", "10.1.2.3", "--client")
    leaf, *rest = chain(ca.dir / "servers" / "ingest.example.pem")
    assert rest == [ca.intermediate]
    assert _mode(ca.dir / "servers" / "ingest.example.key") == 0o600
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["ingest.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    eku = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert pki.identity(leaf) is None  # no device URI: never a device
    assert (await ca.row(serial(leaf)))["kind"] == "server"

    # a device may not take the name of a client identity (broker user names)
    _user_error(await certs(ca.config, "issue-device", "ingest.example"), "name")


async def test_certs_revoke_fills_crl_and_inventory_and_notifies(ca: Pki) -> None:
    await ok(ca.config, "issue-device", "rv-1")
    old = serial(ca.device("rv-1")[0])
    before = _crl_number(ca.crl())

    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(ca.dsn)
    await listener.add_listener(
        "ingestd_revocations", lambda *args: heard.put_nowait(args[3])
    )
    try:
        out = await ok(ca.config, "revoke", "rv-1", "--reason", "keyCompromise")
        assert f"revoked {old}" in out
        assert await asyncio.wait_for(heard.get(), 10) == old
    finally:
        await listener.close()

    row = await ca.row(old)
    assert row["revoked_at"] is not None
    assert row["revocation_reason"] == "keyCompromise"
    crl = ca.crl()
    assert crl.issuer == ca.intermediate.subject
    assert crl.is_signature_valid(ca.intermediate.public_key())
    entry = crl.get_revoked_certificate_by_serial_number(int(old, 16))
    assert entry is not None
    assert entry.revocation_date_utc == row["revoked_at"].replace(microsecond=0)
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value
    assert reason.reason == x509.ReasonFlags.key_compromise
    assert _crl_number(crl) > before  # RFC 5280: each CRL numbered above the last

    # again: nothing live, not an error; an unknown device is
    again = await ok(ca.config, "revoke", "rv-1")
    assert "nothing live to revoke" in again
    assert _crl_number(ca.crl()) > _crl_number(crl)
    # unspecified is no reason code at all (RFC 5280, section 5.3.1)
    await ok(ca.config, "issue-device", "rv-2")
    plain = serial(ca.device("rv-2")[0])
    await ok(ca.config, "revoke", "rv-2")
    entry = ca.crl().get_revoked_certificate_by_serial_number(int(plain, 16))
    assert entry is not None and not list(entry.extensions)
    _user_error(await certs(ca.config, "revoke", "never-issued"), "never-issued")
    _user_error(await certs(ca.config, "revoke", "rv-1", "--reason", "bored"))


async def test_certs_rotate_supersedes_the_old_certificate(ca: Pki) -> None:
    await ok(ca.config, "issue-device", "rot-1")
    folder = ca.dir / "devices" / "rot-1"
    first = ca.device("rot-1")[0]
    first_key = (folder / "device.key").read_bytes()

    out = await ok(ca.config, "rotate", "rot-1")
    second = ca.device("rot-1")[0]
    assert serial(second) != serial(first)
    assert (folder / "device.key").read_bytes() != first_key
    assert _mode(folder / "device.key") == 0o600
    assert pki.identity(second) == "rot-1"
    assert f"revoked {serial(first)} (superseded)" in out
    assert (await ca.row(serial(first)))["revocation_reason"] == "superseded"
    assert (await ca.row(serial(second)))["revoked_at"] is None
    crl = ca.crl()
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number)
    assert crl.get_revoked_certificate_by_serial_number(second.serial_number) is None

    # with an overlap: both live, until revoke --keep-newest ends the old one
    await ok(ca.config, "rotate", "rot-1", "--keep-old")
    third = ca.device("rot-1")[0]
    live = await ca.fetch(
        "SELECT serial FROM ingestd.certificates WHERE device_id = 'rot-1'"
        " AND revoked_at IS NULL ORDER BY serial"
    )
    assert sorted(r["serial"] for r in live) == sorted([serial(second), serial(third)])
    await ok(ca.config, "revoke", "rot-1", "--keep-newest")
    live = await ca.fetch(
        "SELECT serial, revocation_reason FROM ingestd.certificates"
        " WHERE device_id = 'rot-1' AND serial = $1",
        serial(second),
    )
    assert live[0]["revocation_reason"] == "superseded"
    assert (await ca.row(serial(third)))["revoked_at"] is None

    _user_error(await certs(ca.config, "rotate", "no-such-device"), "issue-device")


async def test_certs_rotate_refuses_a_revoked_device(ca: Pki) -> None:
    """A device revoked as lost is not let back in by a rotation; enrolling
    it again is a deliberate issue-device."""
    await ok(ca.config, "issue-device", "lost-1")
    await ok(ca.config, "revoke", "lost-1", "--reason", "keyCompromise")
    revoked = serial(ca.device("lost-1")[0])
    done = await certs(ca.config, "rotate", "lost-1")
    _user_error(done, revoked, "keyCompromise", "issue-device lost-1")
    count = "SELECT count(*) FROM ingestd.certificates WHERE device_id = 'lost-1'"
    assert (await ca.fetch(count))[0][0] == 1
    await ok(ca.config, "issue-device", "lost-1")
    assert serial(ca.device("lost-1")[0]) != revoked
    await ok(ca.config, "rotate", "lost-1")  # live again: rotates as usual


async def test_certs_gateway_relays_are_bound_listed_and_kept_by_rotate(
    ca: Pki,
) -> None:
    out = await ok(ca.config, "issue-device", "lns-9", "--relay", "eui-*",
                   "--relay", "ttn/dev [a-f]")  # fmt: skip
    assert "relays for   'eui-*', 'ttn/dev [a-f]'" in out
    first = ca.device("lns-9")[0]
    assert (pki.identity(first), pki.relays(first)) == (
        "lns-9", ("eui-*", "ttn/dev [a-f]"),
    )  # fmt: skip
    assert (await ca.row(serial(first)))["relays"] == ["eui-*", "ttn/dev [a-f]"]

    await ok(ca.config, "rotate", "lns-9")
    second = ca.device("lns-9")[0]
    assert serial(second) != serial(first)
    assert pki.relays(second) == ("eui-*", "ttn/dev [a-f]")
    listing = await ok(ca.config, "list", "--device", "lns-9")
    assert listing.count("lns-9 (relays 'eui-*', 'ttn/dev [a-f]')") == 2, listing

    # a plain device relays for nobody
    await ok(ca.config, "issue-device", "plain-9")
    assert pki.relays(ca.device("plain-9")[0]) == ()
    # the pattern is blamed, not the device id; a newline would forge a line
    # of `certs list`, so control characters are refused, in ids too
    for bad in ("", "e" * 201, "evil\n0123 device live", "tab\there"):
        done = await certs(ca.config, "issue-device", "lns-x", "--relay", bad)
        _user_error(done, "--relay", "relay pattern")
    _user_error(await certs(ca.config, "issue-device", "line\nbreak"),
                "control characters")  # fmt: skip
    assert not (ca.dir / "devices" / "lns-x").exists()


async def test_certs_registry_records_fingerprint_and_expiry(ca: Pki) -> None:
    conn = await asyncpg.connect(ca.dsn)
    try:
        # seen before it had a certificate: issue fills its row
        await conn.execute(
            "INSERT INTO ingestd.devices (id, last_seen) VALUES ('reg-1', now())"
        )
        await ok(ca.config, "issue-device", "reg-1")
        leaf = ca.device("reg-1")[0]
        row = await conn.fetchrow(
            "SELECT cert_fingerprint, cert_not_after FROM ingestd.devices"
            " WHERE id = 'reg-1'"
        )
        assert tuple(row) == (pki.fingerprint(leaf), leaf.not_valid_after_utc)

        # certificate first, seen later (as the MQTT path does: the broker
        # saw the certificate, ingestd never does): the new row takes it
        await ok(ca.config, "issue-device", "reg-2")
        await conn.execute(
            "INSERT INTO ingestd.devices AS d (id, last_seen) VALUES ('reg-2', now())"
            " ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen"
        )
        fingerprint = await conn.fetchval(
            "SELECT cert_fingerprint FROM ingestd.devices WHERE id = 'reg-2'"
        )
        assert fingerprint == pki.fingerprint(ca.device("reg-2")[0])

        # rotation moves the row to the new one, revocation clears it
        await ok(ca.config, "rotate", "reg-1")
        fingerprint = await conn.fetchval(
            "SELECT cert_fingerprint FROM ingestd.devices WHERE id = 'reg-1'"
        )
        assert fingerprint == pki.fingerprint(ca.device("reg-1")[0])
        await ok(ca.config, "revoke", "reg-2")
        row = await conn.fetchrow(
            "SELECT cert_fingerprint, cert_not_after FROM ingestd.devices"
            " WHERE id = 'reg-2'"
        )
        assert tuple(row) == (None, None)
    finally:
        await conn.close()


async def test_certs_list_shows_kind_expiry_and_status(ca: Pki) -> None:
    await ok(ca.config, "issue-device", "ls-1")
    await ok(ca.config, "issue-device", "ls-2")
    await ok(ca.config, "revoke", "ls-2", "--reason", "cessationOfOperation")
    out = (await ok(ca.config, "list")).splitlines()
    assert out[0].split() == ["SERIAL", "KIND", "SUBJECT", "NOT", "AFTER", "(UTC)",
                              "STATUS"]  # fmt: skip
    by_serial = {line.split()[0]: line for line in out[1:]}
    live = by_serial[serial(ca.device("ls-1")[0])]
    assert live.split()[1:3] == ["device", "ls-1"] and live.endswith("live")
    revoked = by_serial[serial(ca.device("ls-2")[0])]
    assert "revoked" in revoked and "(cessationOfOperation)" in revoked
    assert by_serial[serial(ca.root)].split()[1] == "root"

    only = (await ok(ca.config, "list", "--device", "ls-1")).splitlines()
    assert len(only) == 2 and "ls-1" in only[1]


async def test_certs_bad_input_exits_2_with_one_line(ca: Pki, tmp_path: Path) -> None:
    _user_error(await certs(ca.config, "issue-device", "x" * 65), "64")
    _user_error(await certs(ca.config, "issue-device", ""), "1 to 64")
    _user_error(await certs(ca.config, "crl", "--days", "0"), "positive")
    # validity: zero, negative or non-finite is refused, not replaced by the
    # default or left to crash; a certificate may not outlive its issuer
    for days in ("0", "-5", "nan", "inf"):
        _user_error(await certs(ca.config, "issue-device", "days-x", "--days", days),
                    "--days")  # fmt: skip
        _user_error(await certs(ca.config, "issue-server", "days.x", "--days", days),
                    "--days")  # fmt: skip
        _user_error(await certs(ca.config, "crl", "--days", days), "--days")
    _user_error(await certs(ca.config, "issue-device", "days-x", "--days", "1e9"),
                "issuing CA")  # fmt: skip
    _user_error(await certs(ca.config, "issue-device", "days-x", "--days", "5000"),
                "issuing CA")  # fmt: skip
    assert not (ca.dir / "devices" / "days-x").exists()
    await ok(ca.config, "issue-device", "days-x", "--days", "0.5")
    await ok(ca.config, "rotate", "days-x", "--days", "0.5")
    _user_error(await certs(ca.config, "rotate", "days-x", "--days", "0"), "--days")

    # a PKI folder with no CA in it
    empty = tmp_path / "empty.toml"
    empty.write_text(config_text(ca.dsn, tmp_path / "state", tmp_path / "no-pki"))
    for args in (
        ("issue-device", "d-1"),
        ("issue-server", "host"),
        ("rotate", "d-1"),
        ("revoke", "d-1"),
        ("crl",),
        ("broker-config", "--out", str(tmp_path / "b")),
    ):
        _user_error(await certs(empty, *args), "init-ca")
    assert not (tmp_path / "no-pki" / "devices").exists()


async def test_certs_run_on_the_config_that_names_files_they_make_later(
    ca: Pki, tmp_path: Path
) -> None:
    # The walk-through keeps one ingestd.toml: its [security] names the
    # server certificate and CA that init-ca and issue-server then write
    pki_dir = tmp_path / "pki"
    config = tmp_path / "ingestd.toml"
    config.write_text(f"""\
log_level = "warning"

[database]
dsn = "{ca.dsn}"
state_dir = "{tmp_path / "state"}"

[security]
pki_dir = "{pki_dir}"
mtls = true
certificate = "{pki_dir / "servers" / "ingest.example.com.pem"}"
private_key = "{pki_dir / "servers" / "ingest.example.com.key"}"
client_ca = "{pki_dir / "ca" / "root.pem"}"

[coap]
transports = ["tls"]
""")
    await ok(config, "init-ca")
    await ok(config, "issue-server", "ingest.example.com")
    assert (pki_dir / "servers" / "ingest.example.com.pem").is_file()
    assert (pki_dir / "ca" / "root.pem").is_file()


async def test_certs_crl_command_prints_the_path_and_pem(ca: Pki) -> None:
    out = await ok(ca.config, "crl", "--pem", "--days", "2")
    path = ca.dir / "ca" / "crl.pem"
    assert out.splitlines()[0] == str(path)
    assert "-----BEGIN X509 CRL-----" in out
    crl = ca.crl()
    assert crl.is_signature_valid(ca.intermediate.public_key())
    window = crl.next_update_utc - crl.last_update_utc  # type: ignore[operator]
    assert 1.9 < window.total_seconds() / 86400 < 2.1


async def test_certs_broker_config_writes_acl_from_routes(
    ca: Pki, tmp_path: Path
) -> None:
    out_dir = tmp_path / "broker"
    out = await ok(
        ca.config, "broker-config", "--out", str(out_dir), "--port", "18883",
        "--bind", "127.0.0.1",
    )  # fmt: skip
    assert "tls = true" in out
    acl = (out_dir / "acl").read_text().splitlines()
    patterns = [line for line in acl if line.startswith("pattern")]
    # {device...} is the device exactly: %u/# would let 'hall' write as 'hall/x'
    assert patterns == ["pattern write sites/+/%u/up", "pattern write zb/%u"]
    assert any(line.startswith("# gw/shared: no {device}") for line in acl)
    user = acl.index("user ingestd")
    assert acl[user + 1 :] == [
        "topic read sites/+/+/up", "topic read zb/#", "topic read gw/shared",
    ]  # fmt: skip

    conf = (out_dir / "mosquitto.conf").read_text()
    settings = dict(
        line.split(" ", 1) for line in conf.splitlines()
        if line and not line.startswith("#")
    )  # fmt: skip
    assert settings["listener"] == "18883 127.0.0.1"
    assert settings["require_certificate"] == "true"
    assert settings["use_identity_as_username"] == "true"
    assert settings["allow_anonymous"] == "false"
    for key in ("cafile", "certfile", "keyfile", "crlfile", "acl_file"):
        assert Path(settings[key]).is_file(), key
    assert _mode(Path(settings["keyfile"])) == 0o600
    broker_leaf = chain(Path(settings["certfile"]))[0]
    _verify_server(ca, broker_leaf, "localhost")

    # ingestd's own identity: client auth only, no device URI
    me = chain(ca.dir / "clients" / "ingestd.pem")[0]
    eku = me.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert pki.identity(me) is None
    assert (await ca.row(serial(me)))["kind"] == "client"
    _user_error(await certs(ca.config, "issue-device", "ingestd"), "ingestd")

    # run again: the certificates are reused, not reissued
    await ok(ca.config, "broker-config", "--out", str(out_dir), "--port", "18883")
    assert chain(Path(settings["certfile"]))[0] == broker_leaf
    assert chain(ca.dir / "clients" / "ingestd.pem")[0] == me

    # the broker's CRL copy follows every revocation
    await ok(ca.config, "issue-device", "bc-1")
    await ok(ca.config, "revoke", "bc-1")
    copy = (out_dir / "crl.pem").read_bytes()
    assert copy == (ca.dir / "ca" / "crl.pem").read_bytes()
    revoked = x509.load_pem_x509_crl(copy)
    assert revoked.get_revoked_certificate_by_serial_number(
        ca.device("bc-1")[0].serial_number
    )

    _user_error(
        await certs(ca.config, "broker-config", "--out", str(out_dir),
                    "--identity", "bad name"),
        "--identity",
    )  # fmt: skip


def _verify_server(ca: Pki, leaf: x509.Certificate, name: str) -> None:
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([ca.root]))
        .build_server_verifier(x509.DNSName(name))
    )
    verifier.verify(leaf, [ca.intermediate])
