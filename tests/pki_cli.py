"""``ingestd certs`` as an operator runs it: a real process per command."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from cryptography import x509

ROOT = Path(__file__).resolve().parents[1]


async def certs(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``ingestd certs ARGS -c CONFIG``; its output and exit status."""
    cmd = [sys.executable, "-m", "ingestd", "certs", *args, "-c", str(config)]
    return await asyncio.to_thread(
        subprocess.run, cmd, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


async def ok(config: Path, *args: str) -> str:
    """Run a command that must succeed; its standard output."""
    done = await certs(config, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def config_text(dsn: str, state: Path, pki: Path, extra: str = "") -> str:
    """What the ``certs`` commands need: the database and the PKI folder."""
    return f"""\
log_level = "warning"
{extra}
[database]
dsn = "{dsn}"
state_dir = "{state}"

[security]
pki_dir = "{pki}"
"""


def chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")
