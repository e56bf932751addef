"""A simulated fleet: three kinds of device with plausible payloads.

- Refrigerated shipment trackers (generic JSON): cargo temperature held near
  4 °C with occasional excursions above 8 °C (often after the door opened),
  humidity, battery, a GPS fix as a nested object (``gps.lat``,
  ``gps.lon``), the door state, and now and then their firmware version.
- Warehouse shelf scales (SenML): shelf weight in kg and the item count,
  falling as items are picked and jumping back when the shelf is restocked.
- Factory machines (generic JSON): vibration RMS in mm/s with occasional
  spikes past the ISO 10816 alarm level of 7.1 mm/s, spindle temperature,
  and the machine state (``running``, ``idle``, ``fault``).

Each device publishes one dialect over one transport: most over MQTT, some
over HTTP, as a mixed real fleet does. A message carries its measurement
time (the caller passes it, normally the send time): ISO 8601 text with
microseconds for JSON, ``bt`` in seconds for SenML. A device never stamps
two messages with the same time, so no reading is taken for a redelivery
of another (the server's reading identity is device, metric and time).

Deterministic: a device draws its values from its own generator, seeded
from the fleet seed and its id, so the n-th message of a device holds the
same values in every run with the same seed; only the time stamp differs.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

KINDS = ("tracker", "scale", "machine")
KIND_SHARES = {"tracker": 0.5, "machine": 0.3, "scale": 0.2}
FORMATS = {"tracker": "json", "scale": "senml", "machine": "json"}

# A leaf of a sample: its path in the JSON document (its metric name joined
# by dots), the value, and the SenML unit where one is registered.
Leaf = tuple[tuple[str, ...], Any, str | None]

EXCURSION_CHANCE = 0.001  # per tracker message: a failing reefer unit
DOOR_OPEN_CHANCE = 0.005
DOOR_WARMS_CHANCE = 0.3  # an open door lets warm air in often enough
SPIKE_CHANCE = 0.004  # per machine message while running
PICK_CHANCE = 0.12  # per scale message
RESTOCK_CHANCE = 0.04  # per scale message once the shelf runs low
FIRMWARE_EVERY = 50  # trackers report their firmware on every n-th message
TRACKER_FIRMWARE = ("2.4.1", "2.4.3", "2.5.0-rc1")


@dataclass(frozen=True, slots=True)
class Message:
    """One payload of one device, ready for its transport."""

    device: Device
    payload: bytes
    readings: int  # readings the server will store from it
    stamp_us: int  # the measurement time it carries, µs since the epoch


class Device:
    """One simulated device; subclasses model what it measures."""

    kind = ""

    def __init__(self, id: str, index: int, transport: str, seed: int | str) -> None:
        self.id = id
        self.index = index  # position in the fleet; picks its connection
        self.transport = transport
        self.format = FORMATS[self.kind]
        self.rng = random.Random(f"{seed}:{id}")
        self.glitch_chance = 0.0
        self.sent = 0
        self._last_stamp = 0

    @property
    def topic(self) -> str:
        suffix = "senml" if self.format == "senml" else "telemetry"
        return f"devices/{self.id}/{suffix}"

    @property
    def path(self) -> str:
        return f"/v1/devices/{self.id}/telemetry"

    @property
    def content_type(self) -> str:
        if self.format == "senml":
            return "application/senml+json"
        return "application/json"

    def message(self, stamp_us: int, readings: int | None = None) -> Message:
        """The device's next payload, measured at ``stamp_us``.

        ``readings`` fixes how many readings it holds, for load tests: the
        sample is cut short, or extended with further channels of the same
        sensors (``temperature_2``, ``gps_2.lat``...). ``None`` gives the
        device's natural payload, firmware and glitches included.
        """
        # Strictly increasing per device, with room for SenML's float seconds
        stamp_us = max(stamp_us, self._last_stamp + 2)
        self._last_stamp = stamp_us
        leaves = self.sample()
        firmware = None
        glitch = False
        if readings is None:
            firmware = self.firmware()
            glitch = self.glitch_chance > 0 and self.rng.random() < self.glitch_chance
        else:
            leaves = _exactly(leaves, readings)
        self.sent += 1
        if self.format == "senml":
            payload = _senml(self.id, leaves, stamp_us, glitch)
        else:
            payload = _json(leaves, stamp_us, firmware, glitch)
        return Message(self, payload, len(leaves) - glitch, stamp_us)

    def sample(self) -> list[Leaf]:
        raise NotImplementedError

    def firmware(self) -> str | None:
        return None


class Tracker(Device):
    """A refrigerated shipment tracker on a truck crossing Europe."""

    kind = "tracker"

    def __init__(self, id: str, index: int, transport: str, seed: int | str) -> None:
        super().__init__(id, index, transport, seed)
        rng = self.rng
        self.temperature = rng.gauss(4.0, 0.4)
        self.humidity = rng.uniform(82.0, 93.0)
        self.battery = rng.uniform(55.0, 100.0)
        self.lat = rng.uniform(44.0, 55.0)
        self.lon = rng.uniform(-1.0, 16.0)
        self.heading = rng.uniform(0.0, 2 * math.pi)
        self.version = rng.choice(TRACKER_FIRMWARE)
        self.excursion = 0  # messages left in a temperature excursion
        self.peak = 0.0

    def sample(self) -> list[Leaf]:
        rng = self.rng
        door_open = rng.random() < DOOR_OPEN_CHANCE
        warmed = door_open and rng.random() < DOOR_WARMS_CHANCE
        if not self.excursion and (warmed or rng.random() < EXCURSION_CHANCE):
            self.excursion = rng.randint(4, 12)
            self.peak = rng.uniform(8.5, 12.5)
        target = 4.0
        if self.excursion:
            target = self.peak
            self.excursion -= 1
        self.temperature += (target - self.temperature) * 0.35 + rng.gauss(0, 0.12)
        self.humidity = min(99.0, max(60.0, self.humidity + rng.gauss(0, 0.4)))
        self.battery = max(3.0, self.battery - rng.uniform(0.0, 0.02))
        self.heading += rng.gauss(0, 0.05)
        self.lat += 0.0004 * math.cos(self.heading)
        self.lon += 0.0006 * math.sin(self.heading)
        return [
            (("temperature",), round(self.temperature, 2), "Cel"),
            (("humidity",), round(self.humidity, 1), "%RH"),
            (("battery",), round(self.battery, 1), "%EL"),
            (("gps", "lat"), round(self.lat, 6), "lat"),
            (("gps", "lon"), round(self.lon, 6), "lon"),
            (("door_open",), door_open, None),
        ]

    def firmware(self) -> str | None:
        if self.sent % FIRMWARE_EVERY == 0:
            return self.version
        return None


class ShelfScale(Device):
    """A warehouse shelf scale under one kind of item."""

    kind = "scale"

    def __init__(self, id: str, index: int, transport: str, seed: int | str) -> None:
        super().__init__(id, index, transport, seed)
        rng = self.rng
        self.item_kg = rng.choice((0.5, 0.75, 1.0, 1.5, 2.0))
        self.capacity = round(rng.uniform(20.0, 40.0) / self.item_kg)
        self.items = rng.randint(self.capacity // 4, self.capacity)

    def sample(self) -> list[Leaf]:
        rng = self.rng
        if self.items and rng.random() < PICK_CHANCE:
            self.items = max(0, self.items - rng.randint(1, 3))
        if self.items * self.item_kg < 6.0 and rng.random() < RESTOCK_CHANCE:
            self.items = self.capacity
        weight = max(0.0, self.items * self.item_kg + rng.gauss(0, 0.015))
        return [
            (("weight",), round(weight, 3), "kg"),
            (("items",), self.items, "count"),
        ]


class Machine(Device):
    """A machine tool with a vibration sensor on its spindle bearing."""

    kind = "machine"

    def __init__(self, id: str, index: int, transport: str, seed: int | str) -> None:
        super().__init__(id, index, transport, seed)
        rng = self.rng
        self.baseline = rng.uniform(1.2, 3.5)  # mm/s RMS when healthy
        self.state = "running" if rng.random() < 0.8 else "idle"
        self.spindle = rng.uniform(30.0, 50.0)
        self.spike = 0  # messages left in a vibration spike
        self.spike_level = 0.0

    def sample(self) -> list[Leaf]:
        rng = self.rng
        if self.state == "running" and rng.random() < 0.02:
            self.state = "idle"
        elif self.state != "running" and rng.random() < 0.15:
            self.state = "running"
        if self.state == "running" and not self.spike and rng.random() < SPIKE_CHANCE:
            self.spike = rng.randint(1, 3)
            self.spike_level = rng.uniform(7.5, 14.0)
        if self.spike:
            self.spike -= 1
            vibration = self.spike_level + rng.gauss(0, 0.4)
            if vibration > 11.0:
                self.state = "fault"
        elif self.state == "running":
            vibration = self.baseline + rng.gauss(0, 0.25)
        else:
            vibration = rng.uniform(0.05, 0.3)
        target = 55.0 if self.state == "running" else 28.0
        self.spindle += (target - self.spindle) * 0.05 + rng.gauss(0, 0.2)
        return [
            (("vibration_rms",), round(max(0.0, vibration), 3), "mm/s"),
            (("spindle_temp",), round(self.spindle, 2), "Cel"),
            (("state",), self.state, None),
        ]


DEVICE_CLASSES: dict[str, type[Device]] = {
    "tracker": Tracker,
    "scale": ShelfScale,
    "machine": Machine,
}


def build(
    count: int,
    seed: int | str = 1,
    *,
    prefix: str = "",
    via: str | None = None,
    http_share: float = 0.25,
    glitch_chance: float = 0.0,
) -> list[Device]:
    """``count`` devices in the usual mix, in a seeded sending order.

    ``via`` puts every device on one transport ("mqtt" or "http"); without
    it about ``http_share`` of them post over HTTP. ``glitch_chance`` is the
    share of natural messages in which one value is null, as a device with
    a sensor fault sends it: the server keeps the rest and a dead letter.

    >>> [d.id for d in build(4, seed=7)]
    ['tracker-0002', 'tracker-0001', 'machine-0001', 'tracker-0003']
    """
    rng = random.Random(f"fleet:{seed}")
    counts = {kind: int(count * share) for kind, share in KIND_SHARES.items()}
    counts["tracker"] += count - sum(counts.values())
    devices: list[Device] = []
    for kind in KINDS:
        for number in range(1, counts[kind] + 1):
            transport = via or ("http" if rng.random() < http_share else "mqtt")
            cls = DEVICE_CLASSES[kind]
            device = cls(f"{prefix}{kind}-{number:04d}", 0, transport, seed)
            device.glitch_chance = glitch_chance
            devices.append(device)
    rng.shuffle(devices)
    for index, device in enumerate(devices):
        device.index = index
    return devices


def now_us() -> int:
    return time.time_ns() // 1000


def iso_us(stamp_us: int) -> str:
    """``stamp_us`` as ISO 8601 UTC text with all six fractional digits."""
    seconds, micros = divmod(stamp_us, 1_000_000)
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{whole}.{micros:06d}Z"


def _exactly(leaves: list[Leaf], count: int) -> list[Leaf]:
    """``count`` leaves: the first ones, or more channels of the same sensors."""
    if count <= len(leaves):
        return leaves[:count]
    out = list(leaves)
    channel = 2
    while len(out) < count:
        for path, value, unit in leaves:
            if len(out) == count:
                break
            out.append(((f"{path[0]}_{channel}", *path[1:]), value, unit))
        channel += 1
    return out


def _json(
    leaves: list[Leaf], stamp_us: int, firmware: str | None, glitch: bool
) -> bytes:
    doc: dict[str, Any] = {"ts": iso_us(stamp_us)}
    for path, value, _unit in leaves:
        node = doc
        for step in path[:-1]:
            node = node.setdefault(step, {})
        node[path[-1]] = value
    if glitch:
        doc[leaves[0][0][0]] = None  # a sensor fault: the server rejects it
    if firmware is not None:
        doc["firmware"] = firmware
    return orjson.dumps(doc)


def _senml(device: str, leaves: list[Leaf], stamp_us: int, glitch: bool) -> bytes:
    records: list[dict[str, Any]] = []
    for path, value, unit in leaves:
        record: dict[str, Any] = {"n": ".".join(path)}
        if unit is not None:
            record["u"] = unit
        if type(value) is bool:
            record["vb"] = value
        elif type(value) is str:
            record["vs"] = value
        else:
            record["v"] = value
        records.append(record)
    if glitch:
        records[0]["v"] = None
    # The base name names the device as it knows itself; with the topic or
    # the path as identity the server stores the record names as metrics.
    records[0] = {"bn": f"urn:dev:ops:{device}:", "bt": stamp_us / 1e6, **records[0]}
    return orjson.dumps(records)
