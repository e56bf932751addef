"""The ``ingestd`` command: serve, migrate, schema, certs."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings

import orjson

from . import config as config_mod
from . import log
from .errors import ConfigError
from .security import commands as certs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ingestd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", "-c", help="TOML configuration file")
    serve.add_argument(
        "--workers", type=int, default=1,
        help="processes sharing the ports (SO_REUSEPORT) and the MQTT stream "
        "($share group); each uses one core",
    )  # fmt: skip
    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--config", "-c", help="TOML configuration file")
    sub.add_parser("schema", help="print the JSON Schema of the reading model")
    certs.add_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "schema":
        from .model import json_schema

        try:
            sys.stdout.write(
                orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode()
            )
            sys.stdout.write("\n")
            sys.stdout.flush()
        except BrokenPipeError:  # `ingestd schema | head`
            sys.stdout = None  # type: ignore[assignment]  # no flush at exit
        return 0
    # platformdirs, under pgserver, warns at each start where XDG_RUNTIME_DIR
    # is unset (containers, CI); it falls back to /tmp and nothing is wrong
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    try:
        # certs makes the certificate files the configuration may name
        cfg = config_mod.load(args.config, files=args.command != "certs")
    except ConfigError as exc:
        print(f"ingestd: configuration error: {exc}", file=sys.stderr)
        return 2
    log.configure(cfg.log_level)
    if args.command == "migrate":
        return _run(_migrate(cfg))
    if args.command == "certs":
        return certs.main(args, cfg)
    if args.workers > 1:
        return _workers(args, cfg)
    from .server import serve as serve_forever

    try:
        return _run(serve_forever(cfg))
    except OSError as exc:  # a port in use, an address not here
        print(f"ingestd: cannot start: {exc}", file=sys.stderr)
        return 2


def _run(coro: object) -> int:
    import uvloop

    return uvloop.run(coro)  # type: ignore[arg-type,no-any-return]


async def _migrate(cfg: config_mod.Config) -> int:
    import asyncpg

    from .storage import database

    dsn = database.resolve_dsn(cfg.database.dsn, config_mod.state_dir(cfg))
    conn = await asyncpg.connect(dsn)
    try:
        applied = await database.migrate(conn)
    finally:
        await conn.close()
    print("applied:", ", ".join(applied) if applied else "nothing, up to date")
    return 0


def _workers(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    """Run N single-process servers; they share ports and the MQTT stream."""
    if not cfg.mqtt.share_group and cfg.mqtt.enabled:
        print(
            "ingestd: --workers needs mqtt.share_group, so that the workers "
            "split the MQTT stream instead of each taking all of it",
            file=sys.stderr,
        )
        return 2
    children = []
    for i in range(args.workers):
        env = dict(os.environ, INGESTD_WORKER=str(i))
        cmd = [sys.executable, "-m", "ingestd", "serve"]
        if args.config:
            cmd += ["--config", args.config]
        children.append(subprocess.Popen(cmd, env=env))
    status = 0
    try:
        for child in children:
            status = max(status, child.wait())
    except KeyboardInterrupt:
        for child in children:
            child.terminate()
        for child in children:
            status = max(status, child.wait())
    return status
