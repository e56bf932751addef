"""A ring of three overflows, the server is killed mid-stream and restarted,
readings are redelivered: every expected effect exists exactly once.

The expected effects come from an oracle over each device's series in
time order (a breach at the first reading above 8, recovery at the first
one back), not from the dispatcher's code.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest

from .conftest import Deployment
from .http_client import RawHttp
from .mqtt_publisher import wait_for

SERVER_CONFIG = """
[orders]
dispatcher_ring = 3
catchup_page = 40
catchup_margin = 60
bindings_refresh_s = 0.2
rules_refresh_s = 0.2
watermark_every_s = 0.1
"""

T0 = 1_714_564_800  # 2024-05-01T12:00:00Z
DEVICES = [f"trk-{i:02d}" for i in range(12)]
READINGS = 40  # per device, every 10 s
CHUNK = 4  # readings per request


def series(seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    out = {}
    for device in DEVICES:
        hot, values = False, []
        for _ in range(READINGS):
            if rng.random() < 0.2:
                hot = not hot
            values.append(round(rng.uniform(9, 11) if hot else rng.uniform(3, 6), 2))
        out[device] = values
    return out


def oracle(values: dict[str, list[float]]) -> set[tuple[str, str, str, int]]:
    """(order, kind, device, t) of every effect, from the series alone."""
    expected = set()
    for device, temps in values.items():
        order = device.replace("trk", "SO")
        open_ = False
        for i, v in enumerate(temps):
            if (v > 8) != open_:
                open_ = v > 8
                kinds = ("hot", "service_ticket_opened") if open_ else (
                    "hot_recovered", "service_ticket_closed")  # fmt: skip
                for kind in kinds:
                    expected.add((order, kind, device, T0 + 10 * i))
    return expected


async def _setup(d: Deployment) -> None:
    conn = await d.connect()
    await conn.executemany(
        "INSERT INTO oms.orders (id) VALUES ($1)",
        [(device.replace("trk", "SO"),) for device in DEVICES],
    )
    await conn.executemany(
        "INSERT INTO oms.device_bindings (device_id, order_id) VALUES ($1, $2)",
        [(device, device.replace("trk", "SO")) for device in DEVICES],
    )
    await conn.execute(
        """
        INSERT INTO ingestd.rules (id, metric, op, threshold, kind, action) VALUES
            ('hot', 'temp', '>', 8, 'hot', 'order_update'),
            ('hot-ticket', 'temp', '>', 8, 'overheating', 'service_ticket');
        """
    )
    await conn.close()
    await asyncio.sleep(0.6)


async def _send(
    d: Deployment, values: dict[str, list[float]], lo: int, hi: int
) -> None:
    """Readings lo..hi of every device, CHUNK per request, 4 senders at a time."""
    requests = []
    for device, temps in values.items():
        for start in range(lo, hi, CHUNK):
            body = [
                {"ts": (T0 + 10 * i) * 1000, "temp": temps[i]}
                for i in range(start, min(hi, start + CHUNK))
            ]
            requests.append((device, orjson.dumps(body)))
    random.Random(lo).shuffle(requests)  # devices interleaved, in order each
    requests.sort(key=lambda r: orjson.loads(r[1])[0]["ts"])

    async def sender(share: list[tuple[str, bytes]]) -> None:
        client = await RawHttp.open(d.server.http_port)
        for device, body in share:
            status, _, answer = await client.post(
                f"/v1/devices/{device}/telemetry", body
            )
            assert status == 202, answer
        await client.close()

    await asyncio.gather(*(sender(requests[k::4]) for k in range(4)))


@pytest.mark.parametrize("seed", [20240501])
async def test_orders_catch_up_after_overflow_and_kill(
    deployment: Deployment, seed: int
) -> None:
    print(f"seed {seed}")
    await _setup(deployment)
    values = series(seed)
    expected = oracle(values)

    # First half; kill -9 right after the last answer, while the dispatcher
    # is still catching up from its overflowed ring
    await _send(deployment, values, 0, READINGS // 2)
    await asyncio.to_thread(deployment.server.kill)
    await asyncio.to_thread(deployment.server.start)
    await _send(deployment, values, READINGS // 2, READINGS)
    await _send(deployment, values, 8, 16)  # redelivered

    sql = (
        "SELECT order_id, kind, payload->>'device' AS device, occurred_at, ticket_id "
        "FROM ingestd.order_updates WHERE kind <> 'shipment_condition'"
    )

    async def complete() -> Any:
        rows = await deployment.fetch(sql)
        return rows if len(rows) >= len(expected) else None

    await wait_for(complete, timeout=30)
    await asyncio.sleep(1.0)
    rows = await deployment.fetch(sql)
    got = [
        (r["order_id"], r["kind"], r["device"], int(r["occurred_at"].timestamp()))
        for r in rows
    ]
    assert len(got) == len(set(got))
    assert set(got) == expected
    tickets = await deployment.fetch(
        "SELECT device_id, opened_at, closed_at FROM ingestd.service_tickets"
    )
    opened = {(o, k, d, t) for o, k, d, t in expected if k == "service_ticket_opened"}
    assert len(tickets) == len(opened)

    log = deployment.server.log.read_text()
    assert log.count("catching up from reading seq") >= 3, log[-3000:]  # start x2
    assert "ingestd_dispatcher_overflow" not in log  # a counter, not a log line
    overflowed = await _overflow_count(deployment)
    assert overflowed > 0


async def _overflow_count(d: Deployment) -> float:
    import urllib.request

    def read() -> str:
        url = f"http://127.0.0.1:{d.server.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.read().decode()

    text = await asyncio.to_thread(read)
    for line in text.splitlines():
        if line.startswith("ingestd_dispatcher_overflow_total"):
            return float(line.split()[-1])
    return 0.0
