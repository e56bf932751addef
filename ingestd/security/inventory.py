"""The certificate inventory in PostgreSQL (``ingestd.certificates``).

The CA's files sign; this table remembers. Every certificate
``ingestd certs`` issues is recorded here, a revocation is a row update
plus ``NOTIFY ingestd_revocations, '<serial>'`` in the same transaction
(servers close that device's connections when they hear it, and poll
``revoked_at`` in case they missed it), and the CRL is rebuilt from it.

Serials are lowercase hex without colons, fingerprints the SHA-256 of the
DER form (:func:`ingestd.security.pki.fingerprint`). Every function takes
a connection, so the caller decides the transaction: ``record`` and the
file writes of one issue commit together or not at all.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import asyncpg
from cryptography import x509

from . import pki

Kind = Literal["root", "intermediate", "server", "device", "client"]
REVOCATIONS_CHANNEL = "ingestd_revocations"

# RFC 5280 5.3.1 reason names an operator may give (certificateHold is left
# out: a hold is undone later, and nothing here un-revokes).
REASONS = (
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
)


def serial_hex(cert: x509.Certificate) -> str:
    """The inventory's key for ``cert``: its serial, lowercase hex."""
    return format(cert.serial_number, "x")


async def record(
    conn: asyncpg.Connection,
    cert: x509.Certificate,
    kind: Kind,
    issuer: x509.Certificate | None,
    device_id: str | None = None,
) -> str:
    """Add an issued certificate; return its serial.

    For a device this also points the registry row (when the device has
    one) at the new certificate's fingerprint and expiry. A gateway's relay
    patterns are read from the certificate itself.
    """
    serial = serial_hex(cert)
    subject = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    fingerprint = pki.fingerprint(cert)
    await conn.execute(
        "INSERT INTO ingestd.certificates (serial, kind, subject, device_id,"
        " fingerprint, issuer_serial, not_before, not_after, relays)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        serial, kind, str(subject[0].value) if subject else "", device_id,
        fingerprint, serial_hex(issuer) if issuer is not None else None,
        cert.not_valid_before_utc, cert.not_valid_after_utc,
        list(pki.relays(cert)) or None,
    )  # fmt: skip
    if kind == "device" and device_id is not None:
        await conn.execute(
            "UPDATE ingestd.devices SET cert_fingerprint = $2, cert_not_after = $3"
            " WHERE id = $1",
            device_id, fingerprint, cert.not_valid_after_utc,
        )  # fmt: skip
    return serial


async def live_device_serials(conn: asyncpg.Connection, device_id: str) -> list[str]:
    """Serials of ``device_id``'s unrevoked, unexpired certificates, newest
    first."""
    rows = await conn.fetch(
        "SELECT serial FROM ingestd.certificates"
        " WHERE kind = 'device' AND device_id = $1 AND revoked_at IS NULL"
        " AND not_after > now() ORDER BY not_before DESC, issued_at DESC",
        device_id,
    )
    return [r["serial"] for r in rows]


async def newest_device_certificate(
    conn: asyncpg.Connection, device_id: str
) -> asyncpg.Record | None:
    """``device_id``'s newest certificate (serial, relays, revoked_at,
    revocation_reason), or None if none was ever issued: whether the device
    is known at all, what a rotation carries over (a gateway's relay
    patterns) and what it refuses after (a revocation)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT serial, relays, revoked_at, revocation_reason"
        " FROM ingestd.certificates WHERE kind = 'device' AND device_id = $1"
        " ORDER BY issued_at DESC, not_before DESC LIMIT 1",
        device_id,
    )
    return row


async def client_subject_taken(
    conn: asyncpg.Connection, subject: str, kind: Kind
) -> str | None:
    """The kind of another live certificate whose CN is ``subject``, or None.

    Mosquitto's ``use_identity_as_username`` makes the CN the user name: a
    device called ``ingestd`` would read every device topic as ingestd
    does. So a device id and a non-device client name may never share a CN.
    """
    other = "kind = 'device'" if kind != "device" else "kind <> 'device'"
    found: str | None = await conn.fetchval(
        f"SELECT kind FROM ingestd.certificates WHERE subject = $1 AND {other}"
        " AND kind IN ('device', 'client', 'server')"
        " AND revoked_at IS NULL AND not_after > now() LIMIT 1",
        subject,
    )
    return found


async def revoke_device(
    conn: asyncpg.Connection,
    device_id: str,
    reason: str = "unspecified",
    keep: str | None = None,
) -> list[str]:
    """Revoke ``device_id``'s live certificates (all but ``keep``); return
    their serials.

    Each revoked serial is announced on ``ingestd_revocations`` when the
    caller's transaction commits (PostgreSQL delivers NOTIFY at commit), so
    no server hears of a revocation that then rolls back. The registry row
    loses a revoked fingerprint.
    """
    if reason not in REASONS:
        raise ValueError(f"revocation reason {reason!r}: one of {', '.join(REASONS)}")
    async with conn.transaction():
        rows = await conn.fetch(
            "UPDATE ingestd.certificates SET revoked_at = now(),"
            " revocation_reason = $2"
            " WHERE kind = 'device' AND device_id = $1 AND revoked_at IS NULL"
            " AND serial IS DISTINCT FROM $3"
            " RETURNING serial, fingerprint",
            device_id, reason, keep,
        )  # fmt: skip
        for row in rows:
            await conn.execute(
                "SELECT pg_notify($1, $2)", REVOCATIONS_CHANNEL, row["serial"]
            )
        if rows:
            await conn.execute(
                "UPDATE ingestd.devices SET cert_fingerprint = NULL,"
                " cert_not_after = NULL"
                " WHERE id = $1 AND cert_fingerprint = ANY($2::text[])",
                device_id, [r["fingerprint"] for r in rows],
            )  # fmt: skip
    return [r["serial"] for r in rows]


async def revoked_for_crl(
    conn: asyncpg.Connection, issuer: x509.Certificate
) -> list[tuple[int, dt.datetime, str | None]]:
    """``(serial, revoked at, reason)`` of what ``issuer`` signed and revoked.

    Certificates past their expiry are left out: no verifier accepts them
    anyway, and the CRL stays as small as the live fleet's revocations.
    """
    rows = await conn.fetch(
        "SELECT serial, revoked_at, revocation_reason FROM ingestd.certificates"
        " WHERE issuer_serial = $1 AND revoked_at IS NOT NULL"
        " AND not_after > now() ORDER BY revoked_at, serial",
        serial_hex(issuer),
    )
    return [
        (int(r["serial"], 16), r["revoked_at"], r["revocation_reason"]) for r in rows
    ]


async def listing(
    conn: asyncpg.Connection, device_id: str | None = None
) -> list[asyncpg.Record]:
    """Every certificate (or one device's), oldest first, with a status:
    ``live``, ``expired`` or ``revoked``."""
    return await conn.fetch(
        "SELECT serial, kind, subject, device_id, not_after, revoked_at,"
        " revocation_reason, relays,"
        " CASE WHEN revoked_at IS NOT NULL THEN 'revoked'"
        "      WHEN not_after <= now() THEN 'expired' ELSE 'live' END AS status"
        " FROM ingestd.certificates"
        " WHERE $1::text IS NULL OR device_id = $1"
        " ORDER BY issued_at, not_before, serial",
        device_id,
    )
