"""The CA on disk, and the ``ingestd certs`` operations that use it.

:mod:`ingestd.security.commands` describes the file layout and parses the
command line; this module issues, records, revokes and publishes. Each
operation that issues writes its files inside the inventory transaction and
commits last (see the layout notes there for why in that order).
"""

from __future__ import annotations

import datetime as dt
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import PkiError
from . import inventory, pki

CRL_DAYS = 7.0  # a CRL's life until nextUpdate; `ingestd certs crl` renews it


def folder_name(name: str) -> str:
    """``name`` as one path component: percent-encoded, no leading dot."""
    encoded = quote(name, safe="")
    return "%2E" + encoded[1:] if encoded.startswith(".") else encoded


def when(value: dt.datetime | None) -> str:
    """A timestamp for people: UTC to the minute."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M") if value else "-"


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell, the header first."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


class Authority:
    """The root and issuing intermediate under ``pki_dir``."""

    def __init__(self, pki_dir: Path) -> None:
        self.dir = pki_dir
        self.ca_dir = pki_dir / "ca"
        self.root_cert = self.ca_dir / "root.pem"
        self.root_key = self.ca_dir / "root.key"
        self.cert = self.ca_dir / "intermediate.pem"
        self.key = self.ca_dir / "intermediate.key"
        self.chain = self.ca_dir / "chain.pem"
        self.crl_path = self.ca_dir / "crl.pem"
        self.crl_copies = self.ca_dir / "crl-copies"
        self._issuing: pki.Issued | None = None
        self._root: x509.Certificate | None = None

    # -- the CA ---------------------------------------------------------

    def refuse_overwrite(self) -> None:
        existing = [
            p for p in (self.root_cert, self.root_key, self.cert, self.key)
            if p.exists()
        ]  # fmt: skip
        if existing:
            raise PkiError(
                f"a CA already exists in {self.ca_dir} ({existing[0].name}); "
                "refusing to overwrite it"
            )

    def load(self) -> None:
        """Read the issuing CA; a PkiError says how to make one if missing."""
        if not (self.cert.is_file() and self.key.is_file()):
            raise PkiError(f"no CA in {self.ca_dir}: run `ingestd certs init-ca` first")
        try:
            self._issuing = pki.load(self.key, self.cert)
            self._root = x509.load_pem_x509_certificate(self.root_cert.read_bytes())
        except (OSError, ValueError) as exc:
            raise PkiError(f"the CA in {self.ca_dir} cannot be read: {exc}") from None

    def validity(self, days: float | None, default: float) -> float:
        """``--days`` checked: positive, finite, and not past the issuing CA
        (a certificate outliving its issuer stops verifying with it)."""
        if days is None:
            return default
        if not (math.isfinite(days) and days > 0):
            raise PkiError(f"--days {days:g}: must be positive")
        ends = self.issuing.cert.not_valid_after_utc
        if dt.datetime.now(dt.UTC) + dt.timedelta(days=min(days, 1e6)) > ends:
            raise PkiError(
                f"--days {days:g}: past the issuing CA's expiry ({when(ends)})"
            )
        return days

    @property
    def issuing(self) -> pki.Issued:
        assert self._issuing is not None, "load() first"
        return self._issuing

    @property
    def root(self) -> x509.Certificate:
        assert self._root is not None, "load() first"
        return self._root

    async def init_ca(self, conn: asyncpg.Connection) -> int:
        """A new root and intermediate, the chain and an empty CRL."""
        self.refuse_overwrite()
        root = pki.new_root()
        intermediate = pki.new_intermediate(root)
        async with conn.transaction():
            await inventory.record(conn, root.cert, "root", None)
            await inventory.record(conn, intermediate.cert, "intermediate", root.cert)
            pki.save(root, self.root_key, self.root_cert)
            pki.save(intermediate, self.key, self.cert)
            pki.write_public(
                self.chain, pki.pem(intermediate.cert) + pki.pem(root.cert)
            )
            self._issuing, self._root = intermediate, root.cert
            await self.write_crl(conn)
        print(f"CA created in {self.ca_dir}")
        print(f"  root          {inventory.serial_hex(root.cert)}  {self.root_cert}")
        print(f"  intermediate  {inventory.serial_hex(intermediate.cert)}  {self.cert}")
        print(f"  trust bundle  {self.chain}")
        print(f"  CRL           {self.crl_path}")
        print(f"The root key {self.root_key} is not needed again: keep it offline.")
        return 0

    # -- issuing --------------------------------------------------------

    async def issue_server(
        self,
        conn: asyncpg.Connection,
        names: list[str],
        client: bool,
        days: float | None,
    ) -> int:
        try:
            issued = pki.issue_server(
                self.issuing, names, self.validity(days, pki.SERVER_DAYS), client=client
            )
        except ValueError as exc:
            raise PkiError(f"server certificate for {names[0]!r}: {exc}") from None
        if client:
            await self._refuse_shared_cn(conn, names[0], "server")
        servers, name = self.dir / "servers", folder_name(names[0])
        key, cert = servers / f"{name}.key", servers / f"{name}.pem"
        await self.store(conn, issued, "server", None, key, cert)
        print(f"server certificate {inventory.serial_hex(issued.cert)}")
        print(f"  certificate  {cert}")
        print(f"  key          {key}")
        return 0

    async def issue_client(
        self, conn: asyncpg.Connection, name: str, key: Path, cert: Path
    ) -> pki.Issued:
        """A client-only certificate for a service (ingestd itself)."""
        await self._refuse_shared_cn(conn, name, "client")
        issued = pki.issue_client(self.issuing, name)
        await self.store(conn, issued, "client", None, key, cert)
        return issued

    async def issue_device(
        self,
        conn: asyncpg.Connection,
        device_id: str,
        days: float | None,
        relays: Sequence[str] = (),
    ) -> int:
        live = await inventory.live_device_serials(conn, device_id)
        if live:
            raise PkiError(
                f"device {device_id!r} already has a live certificate ({live[0]}); "
                "use `ingestd certs rotate` for a new one"
            )
        issued = await self._new_device(conn, device_id, days, relays)
        self._report_device(device_id, issued)
        return 0

    async def _new_device(
        self,
        conn: asyncpg.Connection,
        device_id: str,
        days: float | None,
        relays: Sequence[str] = (),
    ) -> pki.Issued:
        days = self.validity(days, pki.DEVICE_DAYS)
        for pattern in relays:
            try:
                pki.check_relay(pattern)
            except ValueError as exc:
                raise PkiError(f"--relay {pattern[:80]!r}: {exc}") from None
        try:
            issued = pki.issue_device(self.issuing, device_id, days, relays=relays)
        except ValueError as exc:
            raise PkiError(f"device id {device_id[:80]!r}: {exc}") from None
        await self._refuse_shared_cn(conn, device_id, "device")
        folder = self.device_dir(device_id)
        await self.store(
            conn, issued, "device", device_id,
            folder / "device.key", folder / "device.pem", trust=folder / "ca.pem",
        )  # fmt: skip
        return issued

    def device_dir(self, device_id: str) -> Path:
        return self.dir / "devices" / folder_name(device_id)

    def _report_device(self, device_id: str, issued: pki.Issued) -> None:
        folder = self.device_dir(device_id)
        print(f"device {device_id!r}: certificate {inventory.serial_hex(issued.cert)}")
        print(f"  certificate  {folder / 'device.pem'}  (leaf, then the intermediate)")
        print(f"  key          {folder / 'device.key'}")
        print(f"  server trust {folder / 'ca.pem'}  (the root)")
        print(f"  expires      {when(issued.cert.not_valid_after_utc)}")
        if relays := pki.relays(issued.cert):
            shown = ", ".join(map(repr, relays))
            print(f"  relays for   {shown}  (device ids it may write for)")

    async def _refuse_shared_cn(
        self, conn: asyncpg.Connection, name: str, kind: inventory.Kind
    ) -> None:
        other = await inventory.client_subject_taken(conn, name, kind)
        if other is not None:
            raise PkiError(
                f"{name!r} is already the name of a live {other} certificate; "
                "a device and a client identity may not share a name (the "
                "broker takes the name as the user)"
            )

    async def store(
        self,
        conn: asyncpg.Connection,
        issued: pki.Issued,
        kind: inventory.Kind,
        device_id: str | None,
        key: Path,
        cert: Path,
        trust: Path | None = None,
    ) -> None:
        """Record ``issued`` and write its files; ``trust`` gets the root
        (what the holder verifies servers with)."""
        async with conn.transaction():
            await inventory.record(conn, issued.cert, kind, self.issuing.cert,
                                   device_id)  # fmt: skip
            # leaf then intermediate: a server trusting only the root verifies
            pki.save(issued, key, cert, self.issuing.cert)
            if trust is not None:
                pki.write_public(trust, pki.pem(self.root))

    # -- revoking -------------------------------------------------------

    async def revoke(
        self,
        conn: asyncpg.Connection,
        device_id: str,
        reason: str,
        keep_newest: bool,
    ) -> int:
        if reason not in inventory.REASONS:
            raise PkiError(f"reason {reason!r}: one of {', '.join(inventory.REASONS)}")
        if await inventory.newest_device_certificate(conn, device_id) is None:
            raise PkiError(f"no certificate was ever issued for device {device_id!r}")
        keep = None
        if keep_newest:
            live = await inventory.live_device_serials(conn, device_id)
            keep = live[0] if live else None
        async with conn.transaction():
            revoked = await inventory.revoke_device(conn, device_id, reason, keep)
            await self.write_crl(conn)
        if not revoked:
            print(f"device {device_id!r}: nothing live to revoke; CRL rewritten")
        for serial in revoked:
            print(f"revoked {serial} ({reason})")
        print(f"CRL: {self.crl_path}")
        return 0

    async def rotate(
        self,
        conn: asyncpg.Connection,
        device_id: str,
        days: float | None,
        keep_old: bool,
    ) -> int:
        newest = await inventory.newest_device_certificate(conn, device_id)
        if newest is None:
            raise PkiError(
                f"no certificate was ever issued for device {device_id!r}: "
                "use `ingestd certs issue-device`"
            )
        if newest["revoked_at"] is not None:
            # Revoked on purpose (a lost or compromised device): a rotation
            # would quietly let it back in with the old relay scope.
            raise PkiError(
                f"device {device_id!r}'s newest certificate {newest['serial']} "
                f"was revoked ({newest['revocation_reason']}); to enrol it "
                f"again, `ingestd certs issue-device {device_id}`"
            )
        relays = list(newest["relays"] or ())  # a gateway's scope
        async with conn.transaction():
            issued = await self._new_device(conn, device_id, days, relays)
            revoked: list[str] = []
            if not keep_old:
                revoked = await inventory.revoke_device(
                    conn, device_id, "superseded", inventory.serial_hex(issued.cert)
                )
                await self.write_crl(conn)
        self._report_device(device_id, issued)
        for serial in revoked:
            print(f"revoked {serial} (superseded)")
        if keep_old:
            print("the old certificate stays live: `ingestd certs revoke "
                  f"{device_id} --keep-newest` ends it")  # fmt: skip
        return 0

    async def crl(self, conn: asyncpg.Connection, days: float, show: bool) -> int:
        if not (math.isfinite(days) and days > 0):
            raise PkiError(f"--days {days:g}: must be positive")
        crl = await self.write_crl(conn, days)
        print(self.crl_path)
        if show:
            sys.stdout.write(crl.decode())
        return 0

    async def write_crl(
        self, conn: asyncpg.Connection, days: float = CRL_DAYS
    ) -> bytes:
        """Sign the CRL of the intermediate's revocations and write it to
        ``ca/crl.pem`` and every path listed in ``ca/crl-copies``."""
        revoked = await inventory.revoked_for_crl(conn, self.issuing.cert)
        crl = pki.build_crl(
            self.issuing, revoked, self._next_crl_number(), dt.timedelta(days=days)
        )
        data = crl.public_bytes(serialization.Encoding.PEM)
        pki.write_public(self.crl_path, data)
        for copy in self.copies():
            try:
                pki.write_public(copy, data)
            except OSError as exc:  # one stale copy must not stop a revocation
                print(f"ingestd certs: CRL copy {copy} not written: {exc}",
                      file=sys.stderr)  # fmt: skip
        return data

    def _next_crl_number(self) -> int:
        """Above the last CRL's number, and at least the time in ms: it
        grows even if the last CRL file was lost."""
        number = int(time.time() * 1000)
        try:
            last = x509.load_pem_x509_crl(self.crl_path.read_bytes())
            previous = last.extensions.get_extension_for_class(x509.CRLNumber)
        except (OSError, ValueError, x509.ExtensionNotFound):
            return number
        return max(number, previous.value.crl_number + 1)

    def copies(self) -> list[Path]:
        if not self.crl_copies.is_file():
            return []
        lines = self.crl_copies.read_text().splitlines()
        return [Path(line) for line in lines if line.strip()]

    def add_copy(self, path: Path) -> None:
        """Write every future CRL to ``path`` as well."""
        path = path.resolve()
        if path in self.copies():
            return
        listed = [*self.copies(), path]
        pki.write_public(self.crl_copies, "".join(f"{p}\n" for p in listed).encode())

    # -- listing --------------------------------------------------------

    async def show(self, conn: asyncpg.Connection, device_id: str | None) -> int:
        rows = await inventory.listing(conn, device_id)
        if not rows:
            print(
                "no certificates" + (f" for device {device_id!r}" if device_id else "")
            )
            return 0
        table = [("SERIAL", "KIND", "SUBJECT", "NOT AFTER (UTC)", "STATUS")]
        for r in rows:
            status = r["status"]
            if status == "revoked":
                status = f"revoked {when(r['revoked_at'])} ({r['revocation_reason']})"
            subject = r["subject"]
            if r["relays"]:
                subject += f" (relays {', '.join(map(repr, r['relays']))})"
            table.append(
                (r["serial"], r["kind"], subject, when(r["not_after"]), status)
            )
        print_table(table)
        return 0
