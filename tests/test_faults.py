"""Crash and clean stop: nothing acknowledged is lost, nothing stored twice."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import orjson
import pytest

from bench import harness

from .conftest import deploy
from .mqtt_publisher import Publisher, wait_for

pytestmark = pytest.mark.faults


async def _stream(
    pub: Publisher, n: int, rate: float, devices: int, base_ms: int
) -> None:
    """Publish ``n`` QoS 1 messages of 3 readings each at about ``rate``/s,
    and as many of one reading without a device time to device ``untimed``
    (stored at receipt time, so a second delivery would be a second row)."""
    started = time.monotonic()
    for i in range(n):
        payload = {"ts": base_ms + i, "temp": 4.0 + i % 7, "hum": 50, "door": False}
        pub.publish(f"devices/crash-{i % devices}/telemetry", orjson.dumps(payload))
        pub.publish("devices/untimed/telemetry", orjson.dumps({"seq": i}))
        if i % 50 == 49:
            ahead = (i + 1) / rate - (time.monotonic() - started)
            await asyncio.sleep(max(ahead, 0))


async def test_kill_9_mid_stream_loses_nothing_and_duplicates_nothing(
    pg_uri: str, run_id: str, tmp_path: Any
) -> None:
    broker = harness.Mosquitto().start()
    d = await deploy(pg_uri, f"t_crash_{run_id}", broker, tmp_path)
    n = 12_000
    try:
        pub = await Publisher("crash-pub").connect(broker.port)
        base = int(time.time() * 1000) - 3_600_000
        streaming = asyncio.create_task(_stream(pub, n, 2000, 40, base))

        # Kill it twice while the stream runs, restarting each time
        for delay in (1.5, 1.5):
            await asyncio.sleep(delay)
            d.server.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            await asyncio.to_thread(d.server.proc.wait)  # type: ignore[union-attr]
            d.server.proc = None
            await asyncio.sleep(0.3)
            await asyncio.to_thread(d.server.start)

        await streaming
        await pub.wait_acked(2 * n, timeout=60)
        await pub.close()

        async def all_there() -> Any:
            count = await d.fetchval(
                "SELECT count(*) FROM ingestd.readings WHERE device_id LIKE 'crash-%'"
            )
            return count == 3 * n

        await wait_for(all_there, timeout=60, every=0.5)
        counts = (await d.fetch(
            "SELECT count(*) AS rows, count(DISTINCT (device_id, metric, ts)) AS ids "
            "FROM ingestd.readings WHERE device_id LIKE 'crash-%'"
        ))[0]  # fmt: skip
        assert (counts["rows"], counts["ids"]) == (3 * n, 3 * n)
    finally:
        code = await asyncio.to_thread(d.server.stop)
        broker.stop()
    assert code == 0


# Without the drain before DISCONNECT (transports/mqtt.py, stop), the last
# PUBACKs can be lost to a connection reset and the untimed readings of the
# final flush come back as duplicates. The race is timing-bound: with the
# drain removed, this test failed in 1 of 3 runs (a standalone script at the
# same load, in 2 of 3); with it, never in the runs made so far.
async def test_sigterm_flushes_acknowledges_and_exits_0(
    pg_uri: str, run_id: str, tmp_path: Any
) -> None:
    broker = harness.Mosquitto().start()
    d = await deploy(pg_uri, f"t_sigterm_{run_id}", broker, tmp_path)
    n = 20000
    try:
        pub = await Publisher("term-pub").connect(broker.port)
        base = int(time.time() * 1000) - 3_600_000
        streaming = asyncio.create_task(_stream(pub, n, 5000, 10, base))
        await asyncio.sleep(1.0)
        code = await asyncio.to_thread(d.server.stop)  # SIGTERM mid-stream
        assert code == 0
        assert "stopped;" in d.server.log.read_text()
        await streaming
        await pub.wait_acked(2 * n)
        await asyncio.to_thread(d.server.start)

        async def all_there() -> Any:
            count = await d.fetchval(
                "SELECT count(*) FROM ingestd.readings WHERE device_id LIKE 'crash-%'"
            )
            return count == 3 * n

        assert await wait_for(all_there, timeout=60, every=0.5)

        # Acknowledged at the stop means not delivered again after it
        async def untimed_all_there() -> Any:
            return (
                await d.fetchval(
                    "SELECT count(*) FROM ingestd.readings WHERE device_id = 'untimed'"
                )
                >= n
            )

        assert await wait_for(untimed_all_there, timeout=30, every=0.5)
        await asyncio.sleep(1.0)
        seqs = await d.fetch(
            "SELECT value_num, count(*) FROM ingestd.readings "
            "WHERE device_id = 'untimed' GROUP BY 1 HAVING count(*) > 1"
        )
        assert [tuple(r) for r in seqs] == []
        await pub.close()
    finally:
        await asyncio.to_thread(d.server.stop)
        broker.stop()
