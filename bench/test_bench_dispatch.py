"""The order dispatcher's judging loop, in memory, on the load run's rule set.

    python -m pytest bench/test_bench_dispatch.py --benchmark-only

What ``bench load --rules`` asks of the dispatcher, without a database:
the fleet of 300 devices bound as ``bench/rule_set.py`` binds them, its
eight rules, and one dispatch pass per round over one message of every
device (10 readings each, of which the rules watch about a quarter). The
result is the time of a pass; ``extra_info`` gives it per judged reading,
the figure behind ``SLICE`` in ``ingestd/orders/dispatcher.py``. Compare
medians: the machine is shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
from pytest_benchmark.fixture import BenchmarkFixture

from bench import fleet, rule_set
from ingestd import config
from ingestd.orders.dispatcher import DeviceState, Dispatcher, Item
from ingestd.orders.effects import Effects
from ingestd.pipeline.bindings import _FAR, Binding, Bindings

DEVICES = 300
READINGS_PER_MESSAGE = 10
RATE = 25_000  # readings/s of the fleet, which sets the devices' pace
SCENARIO_S = 20.0
ROUNDS = 400  # passes timed; the fleet's script runs on through them
T0 = 1_714_564_800_000_000  # 2024-05-01T12:00:00Z


class _Rows:
    """Answers ``Dispatcher.load``'s queries: the rules, nothing open."""

    def __init__(self) -> None:
        self.rules = [
            dict(zip(("id", "metric", "op", "threshold", "kind", "rule_type",
                      "action", "params", "product"), row, strict=True))
            for row in rule_set.rules(SCENARIO_S)
        ]  # fmt: skip

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        return self.rules if "FROM ingestd.rules" in query else []

    async def fetchval(self, query: str, *args: Any) -> int:
        return 0

    async def execute(self, query: str, *args: Any) -> None:
        return None


def _bindings(devices: list[fleet.Device]) -> Bindings:
    orders, rows, _expected = rule_set.orders_and_bindings(devices)
    product = {order: name for order, _kind, name in orders}
    bindings = Bindings()
    for device, kind, order, line, sku, location, unit_weight in rows:
        bindings._by_device[device] = [
            Binding(-_FAR, _FAR, kind, order, line, sku, location, unit_weight,
                    product.get(order))
        ]  # fmt: skip
    return bindings


def _passes(
    devices: list[fleet.Device], watched: frozenset[str]
) -> Iterator[dict[str, list[Item]]]:
    """One message of every device per pass, at the fleet's pace."""
    step = int(1e6 * DEVICES * READINGS_PER_MESSAGE / RATE)  # µs between messages
    stamp = T0
    while True:
        stamp += step
        batch: dict[str, list[Item]] = {}
        for device in devices:
            document = device.message(stamp, READINGS_PER_MESSAGE)
            batch[device.id] = [
                (metric, document.stamp_us, value, None, 0)
                for metric, value in _leaves(device, document)
                if metric in watched
            ]
        yield batch


def _leaves(device: fleet.Device, message: fleet.Message) -> list[tuple[str, Any]]:
    """(metric, value) of a message as the server's codecs name them."""
    doc = orjson.loads(message.payload)
    if device.format == "senml":
        return [(r["n"], r.get("v", r.get("vs", r.get("vb")))) for r in doc]
    out: list[tuple[str, Any]] = []
    for key, value in doc.items():
        if key == "ts":
            continue
        if isinstance(value, dict):
            out.extend((f"{key}.{k}", v) for k, v in value.items())
        else:
            out.append((key, value))
    return out


def test_bench_dispatch_pass(
    benchmark: BenchmarkFixture, bench_loop: asyncio.AbstractEventLoop
) -> None:
    devices = fleet.build(DEVICES, 1, via="mqtt", scenario_s=SCENARIO_S)
    # No pool: every device is known, so no history is read back
    dispatcher = Dispatcher(None, _bindings(devices), config.Orders())  # type: ignore[arg-type]
    bench_loop.run_until_complete(dispatcher.load(_Rows()))  # type: ignore[arg-type]
    for device in devices:
        dispatcher._devices[device.id] = DeviceState()
    passes = _passes(devices, dispatcher.metrics)
    judged: list[int] = []
    written: list[int] = []

    def next_pass() -> tuple[tuple[dict[str, list[Item]], Effects], dict[str, Any]]:
        batch = next(passes)
        judged.append(sum(len(items) for items in batch.values()))
        return (batch, Effects()), {}

    def evaluate(batch: dict[str, list[Item]], effects: Effects) -> None:
        bench_loop.run_until_complete(dispatcher._evaluate(batch, effects))
        written.append(len(effects.outbox))

    benchmark.pedantic(evaluate, setup=next_pass, rounds=ROUNDS, warmup_rounds=5)
    per_pass = sum(judged) / len(judged)
    benchmark.extra_info["readings_judged_per_pass"] = round(per_pass, 1)
    benchmark.extra_info["us_per_judged_reading"] = round(
        benchmark.stats.stats.median / per_pass * 1e6, 2
    )
    benchmark.extra_info["outbox_rows"] = sum(written)
    assert sum(written) > 0  # the rules fired: the pass did real work
