"""Which order a device's reading belongs to, stamped at ingest.

The OMS owns ``oms.device_bindings``; ingestd reads it into memory every few
seconds so the hot path needs a dict lookup, not a join. A binding made in
the OMS therefore takes effect within one refresh interval.
"""

from __future__ import annotations

from datetime import datetime, timezone

import asyncpg

from ..model import Reading

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FAR = 2**62

LOAD = """
SELECT device_id, order_id, valid_from, valid_to
FROM oms.device_bindings
ORDER BY device_id, valid_from
"""


def _us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


class Bindings:
    """device -> [(valid_from µs, valid_to µs, order id)], newest last."""

    def __init__(self) -> None:
        self._by_device: dict[str, list[tuple[int, int, str]]] = {}

    @property
    def active(self) -> bool:
        return bool(self._by_device)

    async def refresh(self, conn: asyncpg.Connection) -> None:
        table: dict[str, list[tuple[int, int, str]]] = {}
        for device, order, start, end in await conn.fetch(LOAD):
            table.setdefault(device, []).append((_bound(start), _bound(end), order))
        self._by_device = table

    def order_for(self, device: str, ts: int) -> str | None:
        for start, end, order in reversed(self._by_device.get(device, ())):
            if start <= ts < end:
                return order
        return None

    def stamp(self, readings: list[Reading]) -> None:
        table = self._by_device
        for r in readings:
            if r.order is None and r.device in table:  # a mapping may name it
                r.order = self.order_for(r.device, r.ts)


def _bound(value: datetime) -> int:
    # asyncpg returns +-infinity timestamps as naive datetime.max / .min
    if value.year >= 9999:
        return _FAR
    if value.year <= 1:
        return -_FAR
    return _us(value)
