"""The bench commands run as a user runs them: ``python -m bench ...``.

- ``load``, self-contained, briefly and gently over MQTT, HTTP, CoAP (UDP,
  TCP) and WebSocket: every reading sent is committed, every answer the
  sender waits for came, and the result file has percentiles.
- ``replay`` of the shared JSON fixtures over HTTP: each file is answered
  2xx, or 400 with a JSON error; of the SenML fixtures over MQTT: each is
  acknowledged and readings arrive.

Every run has a fresh database and a broker of its own. Latencies are
measured by the tools and never asserted here (DESIGN: timing in tests).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench import harness

ROOT = harness.ROOT
FIXTURES = ROOT.parent / "shared" / "fixtures"
TEST_PG = ROOT / ".ingestd" / "test-pg"
COMMAND_TIMEOUT_S = 45.0


@pytest.fixture(scope="module")
async def server_uri() -> str:
    """The PostgreSQL server to make databases in (embedded by default)."""
    configured = os.environ.get("INGESTD_TEST_DSN")
    if configured:
        return configured
    return await asyncio.to_thread(harness.embedded_postgres, TEST_PG)


@pytest.fixture
async def database_name(server_uri: str) -> AsyncIterator[str]:
    """A unique database name; the database is dropped after the test."""
    name = f"t_bench_tools_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield name
    conn = await asyncpg.connect(server_uri)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def bench(*args: str) -> tuple[int, str]:
    """Run ``python -m bench ARGS``; its exit status and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode("utf-8", "replace")


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("via", ["mqtt", "http", "coap", "coap+tcp", "websocket"])
async def test_load_self_contained_commits_every_reading(
    via: str, server_uri: str, database_name: str, tmp_path: Path
) -> None:
    name = f"smoke-{via}"
    code, output = await bench(
        "load", "--self-contained", "--via", via,
        "--rate", "400", "--seconds", "4", "--devices", "20",
        "--readings-per-message", "5",
        "--pg-uri", server_uri, "--database", database_name,
        "--flush-interval-ms", "10",
        "--name", name, "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert code == 0, output

    result = json.loads((tmp_path / f"{name}.json").read_text())
    readings = result["readings"]
    assert readings["sent"] > 1000, readings
    assert readings["committed"] == readings["sent"], readings
    assert readings["lost"] == 0
    latency = result["latency_ms"]
    assert latency["count"] == readings["sent"]
    for key in ("p50", "p99", "p99_9", "max"):
        assert latency[key] >= 0, latency
    assert result["rates"]["sustained_readings_per_s"] > 0
    assert result["parameters"]["via"] == via
    assert result["parameters"]["pipeline"]["flush_interval_ms"] == 10.0
    assert result["server_exit_status"] == 0
    assert result["hdr_histogram_us"]
    if via != "mqtt":
        # answered after the commit: each stored reading was acknowledged
        messages = result["messages"]
        assert readings["acknowledged"] == readings["sent"], messages
        assert messages["answered"] == messages["sent"], messages
        assert messages["failed"] == 0, messages


async def test_load_with_rules_seeds_orders_and_counts_their_effects(
    server_uri: str, database_name: str, tmp_path: Path
) -> None:
    # --rules: orders, bindings and one rule of each kind seeded before
    # ingestd starts; the fleet's scripts hold an incident of every kind
    code, output = await bench(
        "load", "--self-contained", "--via", "http", "--rules",
        "--rate", "400", "--seconds", "6", "--devices", "20",
        "--readings-per-message", "5",
        "--pg-uri", server_uri, "--database", database_name,
        "--name", "rules", "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert code == 0, output
    result = json.loads((tmp_path / "rules.json").read_text())
    assert result["rules"] is True
    assert result["readings"]["lost"] == 0, result["readings"]
    effects = result["effects"]
    assert set(effects) == {"outbox", "tickets", "downtime", "stock_levels"}
    assert min(effects.values()) > 0, effects


async def test_replay_fixtures_answered_over_http_and_mqtt(
    server_uri: str, database_name: str, tmp_path: Path
) -> None:
    plain = FIXTURES / "json_plain"
    senml = FIXTURES / "senml_json"
    if not plain.is_dir() or not senml.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    dsn = await harness.create_database(server_uri, database_name)
    broker = harness.Mosquitto().start()
    http_port, admin_port = harness.free_port(), harness.free_port()
    config = harness.config_text(
        dsn, broker.port, http_port, admin_port, tmp_path,
        client_id=f"ingestd-{database_name}",
    )  # fmt: skip
    server = harness.IngestdProcess(config, tmp_path, http_port, admin_port)
    try:
        await asyncio.to_thread(server.start)

        # JSON over HTTP: an answer per file, each a 2xx or a JSON error
        code, output = await bench(
            "replay", str(plain), "--via", "http",
            "--http-port", str(http_port), "--json",
        )  # fmt: skip
        assert code == 0, output
        outcomes = json_lines(output)
        sent = {
            p.name
            for p in plain.glob("*.json")
            if not p.name.endswith(".expected.json")
        }
        assert {o["file"] for o in outcomes} == sent
        for outcome in outcomes:
            status, answer = outcome["status"], outcome["answer"]
            if status == 400:
                assert isinstance(answer, dict) and answer.get("error"), outcome
            else:
                assert 200 <= status < 300, outcome
        assert any(200 <= o["status"] < 300 for o in outcomes)

        # SenML over MQTT: every file acknowledged, and readings arrive
        code, output = await bench(
            "replay", str(senml), "--via", "mqtt",
            "--broker-port", str(broker.port), "--device", "replayed-senml",
            "--json",
        )  # fmt: skip
        assert code == 0, output
        outcomes = json_lines(output)
        assert outcomes and all(o.get("puback") for o in outcomes), output
        assert all(o["format"] == "senml" for o in outcomes)
        conn = await asyncpg.connect(dsn)
        try:
            stored = 0
            for _ in range(50):
                stored = await conn.fetchval(
                    "SELECT count(*) FROM ingestd.readings "
                    "WHERE device_id = 'replayed-senml' AND transport = 'mqtt'"
                )
                if stored:
                    break
                await asyncio.sleep(0.1)
        finally:
            await conn.close()
        assert stored > 0
    finally:
        code = await asyncio.to_thread(server.stop)
        broker.stop()
    assert code == 0, server.log.read_text()[-3000:]
