"""Who is on the other end of a TLS connection, and may it still be there.

OpenSSL refuses at the handshake what it can judge alone: a certificate
that does not chain to ``security.client_ca``, an expired one, none at all
when mTLS is required. The gate adds what needs ingestd's own state:

- The identity: the device id bound in the certificate's SAN URI
  (``pki.identity``). A listener lets a connection write only as that
  device (HTTP 403, CoAP 4.03, WebSocket refused at the upgrade), or, for
  a gateway, as a device its certificate relays for (``pki.relays``).
- Revocation: serials revoked in ``ingestd.certificates``. A revoked
  certificate is refused when it connects, and connections already open
  with it are closed when the revocation is seen: at once on
  ``NOTIFY ingestd_revocations``, at the latest after
  ``security.revocation_poll_s`` through the poll that backs the NOTIFY
  up (a dropped LISTEN connection, a revocation written by hand).
- The registry's record of which certificate each device last used
  (fingerprint and expiry), written in one statement per poll, not per
  connection.

Certificates are parsed once per connection, never per request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import hashlib
import re
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
from cryptography import x509

from .. import log, metrics
from ..codecs.base import Decoded
from ..config import Security
from ..pipeline.aliases import Aliases
from . import pki

REVOKED = """
SELECT serial FROM ingestd.certificates WHERE revoked_at IS NOT NULL
"""

RECORD_CERTIFICATES = """
UPDATE ingestd.devices d
SET cert_fingerprint = v.fingerprint, cert_not_after = v.not_after
FROM unnest($1::text[], $2::text[], $3::timestamptz[])
     AS v (id, fingerprint, not_after)
WHERE d.id = v.id
RETURNING d.id
"""

PENDING_S = 120.0  # a device that connects but never writes is not recorded


# A gateway's answers per device id are kept, up to this many, so a
# pattern is matched once per device rather than once per reading
RELAY_MEMO = 100_000


class Peer:
    """The certificate a connection presented, as far as ingestd cares."""

    __slots__ = ("device", "serial", "fingerprint", "not_after", "relays", "_memo",
                 "_match")  # fmt: skip

    def __init__(
        self,
        device: str | None,
        serial: str,
        fingerprint: str,
        not_after: dt.datetime,
        relays: tuple[str, ...] = (),
    ) -> None:
        self.device = device
        self.serial = serial
        self.fingerprint = fingerprint
        self.not_after = not_after
        self.relays = relays
        self._memo: dict[str, bool] = {}
        self._match = (
            re.compile("|".join(fnmatch.translate(p) for p in relays)).match
            if relays
            else None
        )

    def may_write_as(self, device: str) -> bool:
        """Whether this certificate may write readings of ``device``."""
        if device == self.device:
            return True
        if self._match is None:
            return False
        allowed = self._memo.get(device)
        if allowed is None:
            if len(self._memo) >= RELAY_MEMO:
                self._memo.clear()
            allowed = self._memo[device] = self._match(device) is not None
        return allowed

    def stranger(self, devices: Iterable[str]) -> str | None:
        """One of ``devices`` this certificate may not write for, if any: a
        payload names the devices it writes for (``Aliases.written_for``)."""
        for device in devices:
            if not self.may_write_as(device):
                return device
        return None

    def stranger_in(self, decoded: Decoded, aliases: Aliases) -> str | None:
        """A device ``decoded`` would write for that this certificate may
        not, if any. Otherwise the message keeps only the external ids the
        alias table knows: a certificate claims none for the first time
        (``Aliases.claimable``)."""
        other = self.stranger(aliases.written_for(decoded))
        if other is None and decoded.aliases:
            aliases.claimable(decoded)
        return other

    def refusal(self, device: str) -> str:
        """Why this certificate may not write as ``device``."""
        scope = f" (relays {', '.join(map(repr, self.relays))})" if self.relays else ""
        return f"certificate of {self.device!r}{scope} may not write as {device!r}"


def peer_of(ssl_object: Any) -> Peer | None:
    """The peer certificate of a finished handshake, or None if none was sent."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    return Peer(
        pki.identity(cert),
        format(cert.serial_number, "x"),
        hashlib.sha256(der).hexdigest(),
        cert.not_valid_after_utc,
        pki.relays(cert),
    )


class Gate:
    """TLS contexts for the listeners, identities, and live revocation."""

    def __init__(self, config: Security) -> None:
        self.config = config
        self.revoked: set[str] = set()
        self._open: dict[str, set[Callable[[], None]]] = {}  # serial -> closers
        self._seen: dict[str, tuple[str, dt.datetime, float]] = {}

    def context(
        self,
        alpn: list[str] | None = None,
        certificate: str | None = None,
        private_key: str | None = None,
    ) -> ssl.SSLContext:
        """A server context: TLS 1.2 and up, client certificates as
        configured (required with ``mtls``, checked when offered if a
        client CA is set, ignored otherwise). ``certificate`` and
        ``private_key`` replace ``[security]``'s for one listener."""
        c = self.config
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(
            certificate or c.certificate,  # type: ignore[arg-type]
            private_key or c.private_key,
        )
        if c.client_ca:
            ctx.load_verify_locations(c.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED if c.mtls else ssl.CERT_OPTIONAL
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    # -- connections -------------------------------------------------

    def admit(self, ssl_object: Any, close: Callable[[], None]) -> Peer | None:
        """Check a new connection's certificate; ``close`` ends it later if
        the certificate is revoked. Raises ``PermissionError`` if it may
        not stay (already revoked; no device identity under mTLS)."""
        peer = peer_of(ssl_object)
        if peer is None:
            if self.config.mtls:  # OpenSSL already refuses this; belt and braces
                raise PermissionError("no client certificate")
            return None
        if peer.serial in self.revoked:
            metrics.tls_refused.labels("revoked").inc()
            raise PermissionError(f"certificate {peer.serial} is revoked")
        if peer.device is None and self.config.mtls:
            metrics.tls_refused.labels("identity").inc()
            raise PermissionError("certificate names no device")
        self._open.setdefault(peer.serial, set()).add(close)
        if peer.device is not None:
            self._seen[peer.device] = (
                peer.fingerprint,
                peer.not_after,
                time.monotonic(),
            )
        return peer

    def forget(self, peer: Peer | None, close: Callable[[], None]) -> None:
        """A connection admitted with ``peer`` has ended."""
        if peer is None:
            return
        closers = self._open.get(peer.serial)
        if closers is not None:
            closers.discard(close)
            if not closers:
                del self._open[peer.serial]

    # -- revocation and the registry ---------------------------------

    def _revoke(self, serials: set[str]) -> None:
        fresh = serials - self.revoked
        self.revoked |= serials
        closed = 0
        for serial in fresh:
            for close in list(self._open.pop(serial, ())):
                close()
                closed += 1
        if closed:
            log.security.info(
                "closed %d connection(s) of %d revoked certificate(s)",
                closed,
                len(fresh),
            )

    async def run(self, pool: asyncpg.Pool) -> None:
        """Follow revocations and record certificates until cancelled."""
        listener: asyncpg.Connection | None = None
        wake = asyncio.Event()

        def notified(*_: object) -> None:
            wake.set()

        while True:
            try:
                if listener is None or listener.is_closed():
                    listener = await pool.acquire()
                    await listener.add_listener("ingestd_revocations", notified)
                rows = await listener.fetch(REVOKED)
                self._revoke({r[0] for r in rows})
                await self._record(listener)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.security.warning("revocation check failed: %s", exc)
                if listener is not None:
                    await _release(pool, listener, notified)
                listener = None
            try:
                await asyncio.wait_for(wake.wait(), self.config.revocation_poll_s)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                if listener is not None:
                    await _release(pool, listener, notified)
                raise
            wake.clear()

    async def _record(self, conn: asyncpg.Connection) -> None:
        """Write the certificates devices connected with to the registry.

        A device is recorded once its registry row exists (its first flush);
        until then it waits here, for at most ``PENDING_S``."""
        if not self._seen:
            return
        now = time.monotonic()
        for device in [d for d, v in self._seen.items() if now - v[2] > PENDING_S]:
            del self._seen[device]
        ids = list(self._seen)
        done = await conn.fetch(
            RECORD_CERTIFICATES,
            ids,
            [self._seen[d][0] for d in ids],
            [self._seen[d][1] for d in ids],
        )
        for row in done:
            self._seen.pop(row[0], None)


async def _release(
    pool: asyncpg.Pool, conn: asyncpg.Connection, notified: Callable[..., None]
) -> None:
    try:
        await conn.remove_listener("ingestd_revocations", notified)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        pass
    await pool.release(conn)
