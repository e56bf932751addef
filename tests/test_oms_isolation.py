"""OMS isolation: order transactions never wait for a lock while ingestd
ingests at its peak.

A short run of ``bench.oms_isolation`` (``python -m bench oms`` is the long
one, reported in tuning.md): OMS clients update orders, add order lines,
consume the outbox and move bindings of the very devices that are sending
readings, once alone and once while ingestd ingests over MQTT at the rate
the bench's probe found to be the peak on this two-core box, with rules
writing the outbox. Asserted: every OMS transaction committed, no lock
wait with an OMS transaction on either side (the server's log of waits
over 1 ms and a 20 ms sampler of ``pg_stat_activity``), and ingestd held
nothing on OMS tables but read locks. The latencies are printed (``-s``),
not asserted: on two shared cores ingest competes for CPU, as expected.

A control run holds every order row for half a second from outside and
checks that the same detectors see the waits, so a zero above means
something.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from bench import oms_isolation, oms_workload
from bench.load import LocalStack

pytestmark = pytest.mark.faults

# `python -m bench oms` stepped 10,000 readings/s at a time: 30,000 kept up,
# 40,000 fell behind (without the OMS workload). With the OMS on the same
# cores ingestd commits less than this, so it runs saturated.
PEAK_RATE = 30_000.0
SETTINGS = oms_isolation.Settings(
    clients=4, tx_rate=200.0, seconds=6.0, rounds=1, warmup_s=2.0, rate=PEAK_RATE
)
HOLD_S = 0.5


@pytest.fixture(scope="module")
async def bench(pg_uri: str, run_id: str) -> AsyncIterator[oms_isolation.Bench]:
    stack = LocalStack(f"t_oms_isolation_{run_id}", pg_uri=pg_uri)
    b = oms_isolation.Bench(SETTINGS, stack, prefix=f"oms{run_id}-")
    await b.start()
    yield b
    code = await asyncio.to_thread(stack.stop)
    assert code == 0, "ingestd did not exit cleanly"


def _show(label: str, phase: dict[str, Any]) -> None:
    lat, tx = phase["latency_ms"], phase["transactions"]
    print(
        f"\n{label}: {tx['committed']} OMS transactions, P50 {lat['p50']:.2f} ms, "
        f"P99 {lat['p99']:.2f} ms, max {lat['max']:.1f} ms; ingest "
        f"{phase['ingest']['readings_per_s_in_window']:,.0f} readings/s, "
        f"{phase['ingest']['outbox_rows_in_window']} outbox rows; "
        f"sampled {phase['sampled']}; logged {phase['logged']}"
    )


def _assert_all_committed(phase: dict[str, Any]) -> None:
    tx = phase["transactions"]
    assert tx["failed"] == 0, tx["errors"]
    kinds = {kind for kind, _ in oms_workload.MIX}
    assert set(tx["by_kind"]) == kinds, tx["by_kind"]


def _assert_no_oms_lock_waits(
    bench: oms_isolation.Bench, phase: dict[str, Any]
) -> None:
    sampled = phase["sampled"]
    assert sampled["samples"] > 50  # the sampler ran through the window
    assert sampled["oms_lock_waits"] == 0, sampled["oms_lock_wait_examples"]
    assert set(sampled["ingestd_locks_on_oms_tables"]) <= {"AccessShareLock"}
    assert sampled["ingestd_locks_not_granted"] == 0
    if bench.log_available:
        logged = phase["logged"]
        assert logged["oms_lock_waits"] == 0, logged["examples"]


async def test_oms_isolation_no_lock_waits_at_peak(
    bench: oms_isolation.Bench,
) -> None:
    alone = await bench.phase(None)
    _show("OMS alone", alone)
    loaded = await bench.phase(PEAK_RATE)
    _show(f"OMS with ingest offered at {PEAK_RATE:,.0f} readings/s", loaded)

    # Not vacuous: ingestd stored readings and wrote the outbox in the window
    assert loaded["ingest"]["committed_in_window"] > 0
    assert loaded["ingest"]["outbox_rows_in_window"] > 0
    for phase in (alone, loaded):
        _assert_all_committed(phase)
        _assert_no_oms_lock_waits(bench, phase)


async def test_oms_isolation_detectors_see_a_held_order(
    bench: oms_isolation.Bench,
) -> None:
    async def hold_every_order() -> None:
        conn = await asyncpg.connect(bench.stack.dsn)
        try:
            await asyncio.sleep(0.5)
            async with conn.transaction():
                await conn.execute(
                    "SELECT id FROM oms.orders WHERE starts_with(id, 'OMS-') FOR UPDATE"
                )
                await asyncio.sleep(HOLD_S)
        finally:
            await conn.close()

    held = await bench.phase(None, seconds=2.0, during=hold_every_order)
    _show("OMS with every order held for 0.5 s", held)

    _assert_all_committed(held)  # the waiting transactions went through after
    assert held["sampled"]["oms_lock_waits"] > 0
    # The holder is not an OMS client, so it is counted with ingestd's locks
    # on OMS tables: a row lock there shows as more than AccessShareLock
    assert "RowShareLock" in held["sampled"]["ingestd_locks_on_oms_tables"]
    if bench.log_available:
        assert held["logged"]["oms_lock_waits"] > 0, held["logged"]
