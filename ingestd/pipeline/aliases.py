"""One logical device behind many ids: the alias table, cached in memory.

``ingestd.device_aliases`` maps (namespace, external id), e.g. ('lorawan',
DevEUI) or ('sparkplug', 'group/node/device'), to a canonical device id. An
operator may point an alias at any device (so a tracker known over MQTT and
by its DevEUI is one registry row); an id seen for the first time becomes
its own alias, recorded on the next flush.
"""

from __future__ import annotations

import asyncpg

from ..codecs.base import Decoded

LOAD = "SELECT namespace, external_id, device_id FROM ingestd.device_aliases"


class Aliases:
    def __init__(self) -> None:
        self._table: dict[tuple[str, str], str] = {}

    async def refresh(self, conn: asyncpg.Connection) -> None:
        table = {(ns, ext): dev for ns, ext, dev in await conn.fetch(LOAD)}
        self._table = table

    def written_for(self, decoded: Decoded) -> set[str]:
        """Every device ``decoded`` would write for, as it would be stored:
        its readings' devices, each device its aliases name or the table
        points them at (a reading may be stored under the latter), and the
        devices whose firmware or presence it reports. What an
        authenticated sender's scope is checked against."""
        names = {r.device for r in decoded.readings}
        table = self._table
        for namespace, external, named in decoded.aliases:
            names.add(named)
            target = table.get((namespace, external))
            if target is not None:
                names.add(target)
        names.update(decoded.firmware)
        names.update(decoded.offline)
        return names

    def claimable(self, decoded: Decoded) -> None:
        """Keep only the aliases the table knows: a sender authenticated by
        a certificate may not claim an external id (a DevEUI, an IEEE
        address) for the first time. First sight wins an id for good, so a
        certificate could otherwise take a device's id before its real
        gateway does, and with it that device's readings from every feed.
        Aliases for such senders come from the operator or from feeds
        without certificates."""
        table = self._table
        decoded.aliases = [a for a in decoded.aliases if (a[0], a[1]) in table]

    def canonical(self, decoded: Decoded) -> list[tuple[str, str, str]]:
        """Point ``decoded``'s readings, firmware and presence reports at
        canonical devices; return the aliases to record."""
        new: list[tuple[str, str, str]] = []
        for namespace, external, named in decoded.aliases:
            device = self._table.get((namespace, external))
            if device is None:
                self._table[(namespace, external)] = named
                new.append((namespace, external, named))
            elif device != named:
                for r in decoded.readings:
                    if r.device == named:
                        r.device = device
                if named in decoded.firmware:
                    decoded.firmware[device] = decoded.firmware.pop(named)
                decoded.offline = [device if o == named else o for o in decoded.offline]
        return new
