"""ingestd's own device PKI: a root, an issuing intermediate, certificates.

Everything cryptographic is the ``cryptography`` library's; this module only
decides what goes into a certificate. The rules it keeps:

- Every key is ECDSA P-256, CA keys too: each handshake verifies two CA
  signatures (leaf and intermediate), and OpenSSL 3.0 verifies P-256 about
  ten times faster than P-384 (13,400 vs 1,300 per second on one core
  here, ``openssl speed``); with P-384 CAs a storm of handshakes was
  CPU-bound on those checks.
- A device certificate binds the device id twice: the subject CN and a SAN
  URI ``urn:ingestd:device:<percent-encoded id>``. The SAN URI is what
  :func:`identity` reads; the CN is for people and for Mosquitto's
  ``use_identity_as_username``.
- A gateway (a LoRaWAN network server, a Zigbee bridge) is a device whose
  certificate also carries the patterns of the device ids it relays for,
  one SAN URI ``urn:ingestd:relays:<percent-encoded pattern>`` each
  (:func:`relays`). The scope is signed with the identity, so it changes
  only by a new certificate, and a revocation ends both.
- Devices are issued by the intermediate, never by the root, so the root key
  can stay offline; listeners trust the root and receive the intermediate in
  the chain the device presents (or in their trust bundle).
- Private keys are written 0600 in directories made 0700, and never
  overwritten in place: a rotation writes a new file and renames it over.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEVICE_URI = "urn:ingestd:device:"
RELAYS_URI = "urn:ingestd:relays:"
MAX_PATTERN = 200  # a relay pattern's length, in characters
DEVICE_DAYS = 397  # the longest TLS leaf lifetime browsers still accept
SERVER_DAYS = 397
CA_DAYS = 3650
CLOCK_SKEW = dt.timedelta(minutes=5)  # devices with a slow clock still verify

PrivateKey = ec.EllipticCurvePrivateKey


class Issued:
    """A private key and the certificate made for it."""

    __slots__ = ("cert", "key")

    def __init__(self, key: PrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: dt.datetime,
    days: float,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        # 159 random bits: positive, under the 20-octet limit of RFC 5280 4.1.2.2
        .serial_number(secrets.randbits(159) | 1)
        .not_valid_before(not_before - CLOCK_SKEW)
        .not_valid_after(not_before + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
    )


def _usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf signs handshakes (ECDSA)
    and agrees keys."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def new_root(common_name: str = "ingestd root CA", days: float = CA_DAYS) -> Issued:
    """A self-signed root that may sign one level of intermediates."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name, "ingestd")
    cert = (
        _builder(name, name, key.public_key(), _now(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), True)
        .add_extension(_usage(ca=True), True)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def new_intermediate(
    parent: Issued,
    common_name: str = "ingestd device CA",
    days: float = CA_DAYS,
) -> Issued:
    """An issuing CA under ``parent``: it signs leaves, never other CAs."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(
            _name(common_name, "ingestd"),
            parent.cert.subject,
            key.public_key(),
            _now(),
            days,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(_usage(ca=True), True)
        .add_extension(_authority_key_id(parent.cert), False)
        .sign(parent.key, hashes.SHA256())
    )
    return Issued(key, cert)


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def device_uri(device_id: str) -> str:
    """The SAN URI that names ``device_id`` (ids may hold ``/`` and spaces)."""
    return DEVICE_URI + quote(device_id, safe="")


def check_relay(pattern: str) -> None:
    """Raise ``ValueError`` unless ``pattern`` can be a relay pattern: 1 to
    ``MAX_PATTERN`` characters, none of them a control character (a newline
    in a pattern would forge lines in ``ingestd certs list``)."""
    if not pattern or len(pattern) > MAX_PATTERN:
        raise ValueError(f"a relay pattern has 1 to {MAX_PATTERN} characters")
    if any(unicodedata.category(c) == "Cc" for c in pattern):
        raise ValueError("a relay pattern has no control characters")


def issue_device(
    ca: Issued,
    device_id: str,
    days: float = DEVICE_DAYS,
    not_before: dt.datetime | None = None,
    relays: Sequence[str] = (),
) -> Issued:
    """A client certificate for one device, its id in the CN and a SAN URI.

    ``relays``: for a gateway, shell-style patterns (``*``, ``?``, ``[..]``)
    of the device ids it may also write for. ``not_before`` moves the
    validity window (tests make expired certificates with it); by default
    it starts now.
    """
    if not device_id or len(device_id) > 64:
        # X.520 caps a common name at 64 characters (RFC 5280, ub-common-name)
        raise ValueError("a device id for a certificate has 1 to 64 characters")
    if any(unicodedata.category(c) == "Cc" for c in device_id):
        raise ValueError("a device id for a certificate has no control characters")
    for pattern in relays:
        check_relay(pattern)
    names = [device_uri(device_id)]
    names += [RELAYS_URI + quote(p, safe="") for p in dict.fromkeys(relays)]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(
            _name(device_id),
            ca.cert.subject,
            key.public_key(),
            not_before or _now(),
            days,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_usage(ca=False), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(n) for n in names]
            ),
            False,
        )
        .add_extension(_authority_key_id(ca.cert), False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue_server(
    ca: Issued,
    names: Sequence[str],
    days: float = SERVER_DAYS,
    client: bool = False,
) -> Issued:
    """A server certificate for ``names`` (host names or IP addresses).

    ``client=True`` also allows client authentication: ingestd uses such a
    certificate to connect to the MQTT broker as itself.
    """
    if not names:
        raise ValueError("a server certificate needs at least one name")
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(names[0]), ca.cert.subject, key.public_key(), _now(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_usage(ca=False), True)
        .add_extension(x509.ExtendedKeyUsage(usages), False)
        .add_extension(x509.SubjectAlternativeName(alt), False)
        .add_extension(_authority_key_id(ca.cert), False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue_client(ca: Issued, name: str, days: float = SERVER_DAYS) -> Issued:
    """A client-only certificate for a service (ingestd itself at the MQTT
    broker): CN ``name``, client authentication and nothing else, and no
    device URI, so no listener takes it for a device."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(name), ca.cert.subject, key.public_key(), _now(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_usage(ca=False), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(_authority_key_id(ca.cert), False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key, cert)


# Reason names as the inventory keeps them (RFC 5280, section 5.3.1)
CRL_REASONS = {
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}


def build_crl(
    ca: Issued,
    revoked: Iterable[tuple[int, dt.datetime, str | None]],
    number: int,
    next_update: dt.timedelta = dt.timedelta(days=7),
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca`` listing ``(serial, revoked at, reason)``.

    ``number`` is its CRL Number, which must grow from one CRL to the next
    (RFC 5280, section 5.2.3). A reason other than ``unspecified`` is the
    entry's reason code; ``unspecified`` is left out, as RFC 5280 asks.
    """
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + next_update)
        .add_extension(_authority_key_id(ca.cert), False)
        .add_extension(x509.CRLNumber(number), False)
    )
    for serial, when, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial)
        entry = entry.revocation_date(when)
        flag = CRL_REASONS.get(reason or "")
        if flag is not None:
            entry = entry.add_extension(x509.CRLReason(flag), False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca.key, hashes.SHA256())


def identity(cert: x509.Certificate) -> str | None:
    """The device id a certificate was issued for, or None for other kinds.

    Only the SAN URI counts: a CN alone is not proof of a device identity
    (server certificates have CNs too).
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(DEVICE_URI):
            return unquote(uri[len(DEVICE_URI) :])
    return None


def relays(cert: x509.Certificate) -> tuple[str, ...]:
    """The device-id patterns a gateway's certificate may write for; empty
    for a plain device."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return tuple(
        unquote(u[len(RELAYS_URI) :]) for u in uris if u.startswith(RELAYS_URI)
    )


def identity_from_der(der: bytes) -> tuple[str | None, int]:
    """Device id and serial number of a DER certificate (as TLS hands it)."""
    cert = x509.load_der_x509_certificate(der)
    return identity(cert), cert.serial_number


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER form, lowercase hex (what ``openssl x509
    -fingerprint -sha256`` prints, without the colons)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# -- files ----------------------------------------------------------------------


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret 0600 beside ``path`` and rename it into place, so no
    reader ever sees a half-written key and no umask widens it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def save(
    issued: Issued, key_path: Path, cert_path: Path, *chain: x509.Certificate
) -> None:
    """Write the key (0600) and the certificate followed by ``chain``."""
    write_private(key_path, key_pem(issued.key))
    write_public(cert_path, b"".join(pem(c) for c in (issued.cert, *chain)))


def load(key_path: Path, cert_path: Path) -> Issued:
    """Read back what :func:`save` wrote (the first certificate is the leaf)."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an EC private key")
    cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    return Issued(key, cert)
