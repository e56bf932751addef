"""A connection storm over mTLS: 10,000 arrivals against HTTPS and WSS.

Each arrival is a fresh TCP connection, a TLS handshake with one of 2,000
device certificates, one reading and its acknowledgement (``bench.storm``).
The seed target is 99.5 % first-try success; the measured rate and the
handshake percentiles are printed (run with ``-s``) and kept in tuning.md.
Arrivals are offered at a rate this two-core box sustains with the client
on the same cores; the rate is the knob, not an assertion of speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from bench import harness, storm

from .conftest import Deployment, deploy

pytestmark = pytest.mark.faults

ATTEMPTS = 10_000  # below this, 99.99 % cannot be told from 99.9 %
DEVICES = 2_000
RATE = 300.0  # arrivals per second
SEED_TARGET = 0.995


@pytest.fixture(scope="module")
async def storm_server(
    pg_uri: str,
    run_id: str,
    broker: harness.Mosquitto,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Deployment, int, list[object]]]:
    tmp = tmp_path_factory.mktemp("storm")
    root, cert, key, files = storm.make_pki(tmp / "pki", DEVICES)
    https = harness.free_port()
    lines = storm.security_config(root, cert, key, https)
    d = await deploy(
        pg_uri, f"t_storm_{run_id}", broker, tmp, f"\n[security]\n{lines['security']}",
        sections={"http": lines["http"]},
    )  # fmt: skip
    contexts = await asyncio.to_thread(storm.client_contexts, root, files)
    yield d, https, contexts  # type: ignore[misc]
    code = await asyncio.to_thread(d.server.stop)
    assert code == 0, d.server.log.read_text()[-3000:]


@pytest.mark.parametrize("via", ["https", "wss"])
async def test_storm_of_mtls_arrivals_succeeds(
    storm_server: tuple[Deployment, int, list[object]], via: str, tmp_path: Path
) -> None:
    d, port, contexts = storm_server
    before = await d.fetchval("SELECT count(*) FROM ingestd.readings")
    result = await storm.storm(via, port, contexts, ATTEMPTS, RATE, 2_000)  # type: ignore[arg-type]
    summary = result.summary()
    print(orjson.dumps(summary).decode())
    after = await d.fetchval("SELECT count(*) FROM ingestd.readings")

    # Every acknowledged arrival is a stored reading (one each, its own ts)
    assert after - before == result.succeeded  # type: ignore[operator]
    assert result.succeeded / ATTEMPTS >= SEED_TARGET, summary
