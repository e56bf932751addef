"""Which order, or which shelf, a device's reading belongs to.

The OMS owns ``oms.device_bindings``; ingestd reads it into memory every few
seconds so the hot path needs a dict lookup, not a join. A binding made in
the OMS therefore takes effect within one refresh interval. Three kinds,
each valid from ``valid_from`` until ``valid_to``:

- ``shipment``: a tracker travels with an order (and order line) from
  pickup to delivery;
- ``stock``: a shelf scale weighs one SKU at one location, ``unit_weight``
  kg per unit; it names an order only when the OMS gives one;
- ``production``: a machine runs the production orders scheduled on it,
  one binding per order and slot.

Readings are stamped with the binding's order at ingest; the order
dispatcher asks for the whole binding (SKU, unit weight, product).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import NamedTuple

import asyncpg

from ..model import Reading

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FAR = 2**62

LOAD = """
SELECT b.device_id, b.valid_from, b.valid_to, b.kind, b.order_id, b.order_line,
       b.sku, b.location, b.unit_weight, o.product
FROM oms.device_bindings b
LEFT JOIN oms.orders o ON o.id = b.order_id
ORDER BY b.device_id, b.valid_from
"""


class Binding(NamedTuple):
    """One binding of a device, its window in µs since the epoch."""

    start: int
    end: int
    kind: str
    order: str | None
    line: str | None = None
    sku: str | None = None
    location: str | None = None
    unit_weight: float | None = None
    product: str | None = None

    @property
    def subject(self) -> str:
        """What rule state is kept for: the order, or the SKU at its place."""
        if self.kind == "stock":
            return f"{self.sku}@{self.location}"
        return self.order or ""


def _us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


class Bindings:
    """device -> its bindings, oldest first."""

    def __init__(self) -> None:
        self._by_device: dict[str, list[Binding]] = {}

    @property
    def active(self) -> bool:
        return bool(self._by_device)

    def __contains__(self, device: str) -> bool:
        return device in self._by_device

    async def refresh(self, conn: asyncpg.Connection) -> None:
        table: dict[str, list[Binding]] = {}
        for row in await conn.fetch(LOAD):
            device, start, end, *rest = row
            table.setdefault(device, []).append(
                Binding(_bound(start), _bound(end), *rest)
            )
        self._by_device = table

    def binding_for(self, device: str, ts: int) -> Binding | None:
        """The binding in force for ``device`` at ``ts``; the newest wins."""
        for binding in reversed(self._by_device.get(device, ())):
            if binding.start <= ts < binding.end:
                return binding
        return None

    def order_for(self, device: str, ts: int) -> str | None:
        binding = self.binding_for(device, ts)
        return binding.order if binding is not None else None

    def stamp(self, readings: list[Reading]) -> None:
        """Set each unstamped reading's order from the binding in force.

        Readings of one message mostly share device and time, so the last
        lookup is reused: the per-reading lookup was 7 % of the ingest
        process's CPU at 25,000 readings/s with every device bound
        (py-spy), most of it repeated for the same (device, time).
        """
        table = self._by_device
        last_device: str | None = None
        last_ts = 0
        last_order: str | None = None
        for r in readings:
            if r.order is not None:  # a mapping may name it
                continue
            device, ts = r.device, r.ts
            if device == last_device and ts == last_ts:
                r.order = last_order
                continue
            bindings = table.get(device)
            if bindings is None:
                continue
            order = None
            for binding in reversed(bindings):  # the newest wins
                if binding.start <= ts < binding.end:
                    order = binding.order
                    break
            r.order = order
            last_device, last_ts, last_order = device, ts, order


def _bound(value: datetime) -> int:
    # asyncpg returns +-infinity timestamps as naive datetime.max / .min
    if value.year >= 9999:
        return _FAR
    if value.year <= 1:
        return -_FAR
    return _us(value)
