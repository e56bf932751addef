"""``ingestd certs``: run the device PKI from the command line.

Files live under ``security.pki_dir`` (default ``<state_dir>/pki``)::

    ca/root.pem, ca/root.key                  the root; its key is used only
                                              by init-ca (move it offline)
    ca/intermediate.pem, ca/intermediate.key  the issuing CA: signs every leaf
    ca/chain.pem                              intermediate + root: the trust
                                              bundle for listeners and brokers
    ca/crl.pem                                the CRL, signed by the intermediate
    ca/crl-copies                             more paths every new CRL is
                                              written to (broker-config adds its
                                              own); one a line
    servers/<name>.pem, .key                  server certificates (leaf, then
                                              the intermediate)
    clients/<name>.pem, .key                  ingestd's own client identity
    devices/<id>/device.pem, device.key, ca.pem   one device's bundle

Folder and file names are the percent-encoded id or name (``hall/lamp`` is
``hall%2Flamp``), so any id is one safe folder. Keys are 0600 in 0700
folders, written beside and renamed into place.

The inventory in PostgreSQL (:mod:`ingestd.security.inventory`) is the
record: a certificate is recorded in the same transaction whose commit
follows its files being written, so a failed write leaves no record and a
failed record leaves files the next issue overwrites.

Rotation revokes the old certificate at once (reason ``superseded``): a
device that must fetch its new key over its old connection is rotated with
``--keep-old`` instead, and the old one revoked later with ``revoke
--keep-newest``. A grace timer would need a scheduler that a CLI does not
have; two explicit steps leave no certificate live by accident.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..errors import PkiError
from .authority import CRL_DAYS, Authority


def add_parser(sub: Any) -> None:
    """Register ``certs`` and its subcommands on the ``ingestd`` parser."""
    certs = sub.add_parser("certs", help="the device PKI: CA, certificates, CRL")
    verbs = certs.add_subparsers(dest="certs_command", required=True)

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = verbs.add_parser(name, help=text)
        parser.add_argument("--config", "-c", help="TOML configuration file")
        return parser

    verb("init-ca", "create the root and the issuing intermediate CA")
    server = verb("issue-server", "a server certificate for host names or IPs")
    server.add_argument("names", nargs="+", metavar="NAME")
    server.add_argument(
        "--client", action="store_true", help="also allow client authentication"
    )
    server.add_argument("--days", type=float, help="validity (default 397)")
    device = verb("issue-device", "a key and certificate for one device")
    device.add_argument("device_id", metavar="DEVICE_ID")
    device.add_argument("--days", type=float, help="validity (default 397)")
    device.add_argument(
        "--relay", action="append", default=[], metavar="PATTERN",
        help="for a gateway: device ids it may also write for, shell-style "
        "('eui-*'); repeatable, bound in the certificate, kept by rotate",
    )  # fmt: skip
    revoke = verb("revoke", "revoke a device's live certificates, rewrite the CRL")
    revoke.add_argument("device_id", metavar="DEVICE_ID")
    revoke.add_argument("--reason", help="RFC 5280 reason name (default unspecified)")
    revoke.add_argument(
        "--keep-newest", action="store_true",
        help="revoke all but the newest (ends a rotate --keep-old)",
    )  # fmt: skip
    crl = verb("crl", "write the CRL from the inventory; print its path")
    crl.add_argument("--days", type=float, default=CRL_DAYS,
                     help=f"until nextUpdate (default {CRL_DAYS})")  # fmt: skip
    crl.add_argument("--pem", action="store_true", help="print the PEM as well")
    rotate = verb("rotate", "a new key and certificate; the old one revoked")
    rotate.add_argument("device_id", metavar="DEVICE_ID")
    rotate.add_argument("--days", type=float, help="validity (default 397)")
    rotate.add_argument(
        "--keep-old", action="store_true",
        help="leave the old certificate live (revoke it later with "
        "revoke --keep-newest)",
    )  # fmt: skip
    listing = verb("list", "the inventory: serial, kind, subject, expiry, status")
    listing.add_argument("--device", help="only this device's certificates")
    broker = verb("broker-config", "Mosquitto TLS and ACL configuration")
    broker.add_argument("--out", required=True, type=Path, help="folder to write")
    broker.add_argument("--port", type=int, default=8883, help="TLS listener port")
    broker.add_argument("--bind", help="listener address (default: all)")
    broker.add_argument(
        "--host", action="append", dest="hosts", metavar="NAME",
        help="the broker's host names/IPs in its certificate (repeatable; "
        "default localhost, 127.0.0.1)",
    )  # fmt: skip
    broker.add_argument(
        "--owner", metavar="USER",
        help="give the folder and the broker's key to USER (the user Mosquitto "
        "runs as: it drops root for 'mosquitto' before reading its key)",
    )  # fmt: skip
    broker.add_argument(
        "--identity", default="ingestd",
        help="CN of ingestd's own client certificate (default ingestd)",
    )  # fmt: skip


def main(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    """Run one ``ingestd certs`` subcommand; 2 with one line on user errors."""
    try:
        return asyncio.run(_dispatch(args, cfg))
    except PkiError as exc:
        print(f"ingestd certs: {exc}", file=sys.stderr)
        return 2


async def _dispatch(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    authority = Authority(pki_dir(cfg))
    verb = args.certs_command
    # the CA's files first: a missing CA needs no database to be reported
    if verb == "init-ca":
        authority.refuse_overwrite()
    elif verb != "list":
        authority.load()
    conn = await _connect(cfg)
    try:
        if verb == "init-ca":
            return await authority.init_ca(conn)
        if verb == "list":
            return await authority.show(conn, args.device)
        if verb == "issue-server":
            return await authority.issue_server(conn, args.names, args.client,
                                                args.days)  # fmt: skip
        if verb == "issue-device":
            return await authority.issue_device(
                conn, args.device_id, args.days, args.relay
            )
        if verb == "revoke":
            reason = args.reason or ("superseded" if args.keep_newest else None)
            return await authority.revoke(
                conn, args.device_id, reason or "unspecified", args.keep_newest
            )
        if verb == "rotate":
            return await authority.rotate(conn, args.device_id, args.days,
                                          args.keep_old)  # fmt: skip
        if verb == "crl":
            return await authority.crl(conn, args.days, args.pem)
        if verb == "broker-config":
            from . import broker

            return await broker.write(authority, conn, cfg, args)
        raise AssertionError(verb)
    finally:
        await conn.close()


def pki_dir(cfg: config_mod.Config) -> Path:
    """``security.pki_dir``, else ``<state_dir>/pki``."""
    configured = cfg.security.pki_dir
    if configured:
        return Path(configured).expanduser()
    return config_mod.state_dir(cfg) / "pki"


async def _connect(cfg: config_mod.Config) -> Any:
    """A connection to ingestd's database, migrated (the inventory is in
    migration 002, and a first ``init-ca`` may precede any ``serve``)."""
    import asyncpg

    from ..storage import database

    dsn = database.resolve_dsn(cfg.database.dsn, config_mod.state_dir(cfg))
    try:
        conn = await asyncpg.connect(dsn, timeout=cfg.database.connect_timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise PkiError(f"cannot reach the database: {exc}") from None
    await database.migrate(conn)
    return conn
