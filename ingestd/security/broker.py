"""``ingestd certs broker-config``: Mosquitto's TLS listener and ACL.

The broker, not ingestd, authenticates MQTT devices, so ingestd writes the
broker's configuration from its own CA and routes:

- a TLS listener that requires a client certificate chaining to ingestd's
  CA, checks the CRL, and takes the certificate's CN as the user name
  (``use_identity_as_username``): a device's user name is its device id;
- an ACL where each device may publish only on its own topics: every
  configured ``[[mqtt.routes]]`` topic with ``{device}`` replaced by ``%u``
  (Mosquitto's user name substitution), other captures by ``+`` or ``#``;
- ingestd's own client certificate (CN ``ingestd`` unless told otherwise),
  the one user that may read the routed topics.

``{device...}`` (the rest of the topic is the device id) becomes ``%u``
exactly, not ``%u/#``: ``zigbee2mqtt/hall/lamp`` is device ``hall/lamp``,
so ``%u/#`` would let device ``hall`` publish as ``hall/lamp``.

A route without ``{device}`` (a shared gateway topic) is readable by
ingestd and writable by nobody: the file says which, and the operator
grants it to the gateway's certificate by name.

Everything the broker reads is written into one folder (its key 0600), so
the operator can hand that folder to the broker's user; the CRL copy there
is rewritten by every later ``revoke``, ``rotate`` and ``crl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pwd
import re
from collections.abc import Sequence
from pathlib import Path

import asyncpg
from cryptography import x509

from .. import config as config_mod
from ..errors import PkiError
from . import pki
from .authority import Authority, folder_name

IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CAPTURE = re.compile(r"\{(\w+)(\.\.\.)?\}")
DEFAULT_HOSTS = ("localhost", "127.0.0.1")


async def write(
    authority: Authority,
    conn: asyncpg.Connection,
    cfg: config_mod.Config,
    args: argparse.Namespace,
) -> int:
    """Write ``mosquitto.conf``, ``acl``, the broker's certificate, the trust
    bundle and a CRL copy into ``args.out``; issue ingestd's identity."""
    if not IDENTITY.fullmatch(args.identity):
        raise PkiError(
            f"--identity {args.identity!r}: 1 to 64 letters, digits, '.', '_', '-'"
        )
    if not 1 <= args.port <= 65535:
        raise PkiError(f"--port {args.port}: not a port")
    out: Path = args.out.expanduser().resolve()
    hosts: list[str] = args.hosts or list(DEFAULT_HOSTS)
    owner = _user(args.owner) if args.owner else None

    # ingestd's own identity, kept in the PKI folder: reused while live
    clients = authority.dir / "clients"
    client_key = clients / f"{folder_name(args.identity)}.key"
    client_cert = clients / f"{folder_name(args.identity)}.pem"
    if not await _live_file(conn, client_cert):
        await authority.issue_client(conn, args.identity, client_key, client_cert)

    # the broker's server certificate, in the broker's folder: reused too
    broker_key, broker_cert = out / "broker.key", out / "broker.pem"
    if not await _live_file(conn, broker_cert):
        try:
            issued = pki.issue_server(authority.issuing, hosts)
        except ValueError as exc:
            raise PkiError(f"broker certificate for {hosts[0]!r}: {exc}") from None
        await authority.store(conn, issued, "server", None, broker_key, broker_cert)

    # trust bundle, CRL copy (kept current from now on), ACL, configuration
    pki.write_public(out / "ca.pem", authority.chain.read_bytes())
    authority.add_copy(out / "crl.pem")
    await authority.write_crl(conn)
    pki.write_public(
        out / "acl", acl_text(cfg.mqtt.routes, args.identity, cfg.mqtt.share_group)
    )
    conf = mosquitto_conf(out, args.port, args.bind)
    pki.write_public(out / "mosquitto.conf", conf.encode())
    if owner is not None:
        _hand_over(out, owner)

    print(f"Mosquitto configuration in {out}:")
    for name in ("mosquitto.conf", "acl", "ca.pem", "crl.pem", "broker.pem"):
        print(f"  {out / name}")
    print(f"  {broker_key}  (0600: readable by its owner only)")
    if owner is None and os.geteuid() == 0:
        print("Mosquitto started as root reads its key as user 'mosquitto': "
              "give it the folder with --owner mosquitto")  # fmt: skip
    print("Run it with `mosquitto -c mosquitto.conf`, or include it in yours.")
    print("After each revoke: `kill -HUP <mosquitto pid>` (it rereads the CRL).")
    print("ingestd's side, in its configuration:")
    print("[mqtt]")
    print(f'host = "{hosts[0]}"')
    print(f"port = {args.port}")
    print("tls = true")
    print(f'ca_file = "{authority.chain}"')
    print(f'certificate = "{client_cert}"')
    print(f'private_key = "{client_key}"')
    return 0


def _user(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PkiError(f"--owner {name!r}: no such user") from None
    return entry.pw_uid, entry.pw_gid


def _hand_over(out: Path, owner: tuple[int, int]) -> None:
    """The folder and the broker's key to the broker's user; the rest stays
    world-readable (certificates, CRL, ACL, configuration are public).
    CRLs written later are 0644, so they need no hand-over."""
    try:
        os.chown(out, *owner)
        os.chmod(out, 0o750)
        os.chown(out / "broker.key", *owner)
    except PermissionError as exc:
        raise PkiError(f"--owner: {exc} (only root may give files away)") from None


async def _live_file(conn: asyncpg.Connection, cert_path: Path) -> bool:
    """Whether ``cert_path`` holds a certificate the inventory has live for
    at least 30 more days (less: issue a new one now, not at 3 a.m.)."""
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (OSError, ValueError):
        return False
    found = await conn.fetchval(
        "SELECT 1 FROM ingestd.certificates WHERE fingerprint = $1"
        " AND revoked_at IS NULL AND not_after > now() + interval '30 days'",
        pki.fingerprint(cert),
    )
    return found is not None


def acl_pattern(topic: str) -> str | None:
    """The ACL pattern a device may write for route ``topic``, or None when
    the route has no ``{device}`` capture."""
    if not any(m.group(1) == "device" for m in _CAPTURE.finditer(topic)):
        return None

    def level(m: re.Match[str]) -> str:
        if m.group(1) == "device":
            return "%u"
        return "#" if m.group(2) else "+"

    return _CAPTURE.sub(level, topic)


def topic_filter(topic: str) -> str:
    """The filter ingestd subscribes with for route ``topic``."""
    return _CAPTURE.sub(lambda m: "#" if m.group(2) else "+", topic)


def acl_text(routes: Sequence[config_mod.Route], identity: str, share: str) -> bytes:
    """Mosquitto's ACL for ``routes``: devices write their own topics,
    ``identity`` reads them all."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Written by `ingestd certs broker-config` at {stamp}, from the",
        "# [[mqtt.routes]] of ingestd's configuration. Regenerate it when the",
        "# routes change. The user name is the CN of the client certificate.",
        "",
        "# Devices: each publishes only under its own topics (%u is its id).",
    ]
    shared: list[str] = []
    for route in routes:
        pattern = acl_pattern(route.topic)
        if pattern is None:
            shared.append(route.topic)
        elif f"pattern write {pattern}" not in lines:
            lines.append(f"pattern write {pattern}")
    for topic in shared:
        lines.append(
            f"# {topic}: no {{device}} in it, so no device may publish there; "
            "grant it to a gateway with `user <gateway CN>` and `topic write`."
        )
    filters = list(dict.fromkeys(topic_filter(r.topic) for r in routes))
    lines += ["", f"# ingestd itself reads every routed topic ({identity})."]
    lines.append(f"user {identity}")
    lines += [f"topic read {f}" for f in filters]
    if share:  # some Mosquitto versions check the filter with its prefix
        lines += [f"topic read $share/{share}/{f}" for f in filters]
    return ("\n".join(lines) + "\n").encode()


def mosquitto_conf(out: Path, port: int, bind: str | None) -> str:
    """One TLS listener with client certificates, the CRL and the ACL."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    listener = f"listener {port} {bind}" if bind else f"listener {port}"
    return f"""\
# Written by `ingestd certs broker-config` at {stamp}.
# Every client shows a certificate from ingestd's CA; its CN becomes its
# user name, and the ACL lets a device publish only on its own topics.
# Mosquitto reads the CRL at start and on SIGHUP: after `ingestd certs
# revoke`, send the broker SIGHUP (or restart it) to refuse the device.
# acl_file and allow_anonymous apply to the whole broker unless
# per_listener_settings is true.
{listener}
cafile {out / "ca.pem"}
certfile {out / "broker.pem"}
keyfile {out / "broker.key"}
crlfile {out / "crl.pem"}
require_certificate true
use_identity_as_username true
allow_anonymous false
acl_file {out / "acl"}
"""
