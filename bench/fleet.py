"""A simulated fleet: three kinds of device, and what happens to them in a run.

- Refrigerated shipment trackers (generic JSON) on trucks along one lane,
  Rotterdam to Milan: cargo temperature held near 4 °C, humidity, battery,
  cargo vibration in g RMS, a GPS fix as a nested object (``gps.lat``,
  ``gps.lon``), the door state, and now and then their firmware version.
- Warehouse shelf scales (SenML): the shelf's weight in kg and the battery.
  The scale knows nothing of units; its binding gives the unit weight.
- Factory machines (generic JSON): vibration RMS in mm/s at the spindle
  bearing (ISO 10816 alarm level 7.1 mm/s), spindle temperature, and the
  machine state (``running``, ``stopped``, ``fault``).

The scenario. Every device follows a script laid over a run of
``scenario_s`` seconds, counted from its first message (it repeats in a
longer run), so that one run of the demo holds each kind of incident, long
enough to count, next to look-alikes too brief to count. Shares of the run:

- trackers, by number: the 1st of every ten has a reefer failure (cargo at
  10-12 °C for ``REEFER_FAILURE``), the 2nd a detour (3.5 km off the lane
  for ``DETOUR``), the 3rd a rough road (cargo vibration near 1.2 g for
  ``ROUGH_ROAD``); the 4th, and a third of all others at random, open the
  door for ``DOOR_OPEN``: warm air, out of range only briefly.
- machines: the 1st of every ten wears its bearing (8-10 mm/s for
  ``BEARING_WEAR``) and later faults, the 2nd stops in the first half (no
  material), the 3rd faults in the second half; every running machine
  shows vibration spikes shorter than ``SPIKE_MAX`` now and then.
- scales: picks of 1-3 units, booked by the OMS; a hand on the shelf for
  ``HAND_ON_SHELF`` now and then (the 1st of every five at least once);
  the 2nd of every ten loses units nobody booked, the 5th misses a pick
  the OMS booked. ``expected_units`` is what the OMS believes remains.

This is time-lapse: a minute holds what a day on the road or on the shop
floor would. Rules judging the fleet take their durations in the same
shares (``bench/demo.py``).

Each device publishes one dialect over one transport: most over MQTT, some
over HTTP, as a mixed real fleet does. A message carries its measurement
time (the caller passes it, normally the send time): ISO 8601 text with
microseconds for JSON, ``bt`` in seconds for SenML. A device never stamps
two messages with the same time, so no reading is taken for a redelivery
of another (the server's reading identity is device, metric and time).

Deterministic: a device draws its script and its values from its own
generator, seeded from the fleet seed and its id, so a run with the same
seed, length and pace sends the same story; only the time stamps differ.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import orjson

KINDS = ("tracker", "scale", "machine")
KIND_SHARES = {"tracker": 0.5, "machine": 0.3, "scale": 0.2}
FORMATS = {"tracker": "json", "scale": "senml", "machine": "json"}

# A leaf of a sample: its path in the JSON document (its metric name joined
# by dots), the value, and the SenML unit where one is registered.
Leaf = tuple[tuple[str, ...], Any, str | None]

# A stretch of the scenario: (start, end) as shares of the run
Window = tuple[float, float]

# How long the scripted incidents last, as shares of the run
REEFER_FAILURE = 0.30
DETOUR = 0.20
ROUGH_ROAD = 0.20
DOOR_OPEN = 0.04
BEARING_WEAR = 0.25
STOPPED = 0.15
FAULT = 0.12
SPIKE_MAX = 0.02
HAND_ON_SHELF = 0.015
AIR_TAU = 0.015  # how fast the cargo air follows its cooling, or warm air

SETPOINT_C = 4.0  # every reefer on the lane holds chilled goods
DOOR_AIR_C = 9.5  # what the cargo air warms towards while the door is open
DETOUR_M = 3500.0  # how far off the lane a detour takes the truck
SPIKE_CHANCE = 0.004  # per machine message while running
FIRMWARE_EVERY = 50  # trackers report their firmware on every n-th message
TRACKER_FIRMWARE = ("2.4.1", "2.4.3", "2.5.0-rc1")

# The lane every truck drives, Rotterdam to Milan by Cologne, Frankfurt,
# Basel and the Gotthard: [lat, lon] waypoints, legs under 150 km so that
# the server's planar corridor distance stays exact to a few metres
LANE: list[list[float]] = [
    [51.92, 4.48], [51.37, 6.17], [50.94, 6.96], [50.36, 7.59], [50.11, 8.68],
    [49.49, 8.47], [49.01, 8.40], [47.99, 7.84], [47.56, 7.59], [47.05, 8.31],
    [46.56, 8.56], [46.00, 8.95], [45.46, 9.19],
]  # fmt: skip

# What the shelves hold: SKU and kg per unit
CATALOG = (
    ("BOLT-M8-BOX100", 0.52),
    ("GLOVE-NITRILE-L", 0.62),
    ("OIL-HYD-1L", 0.95),
    ("TAPE-PACK-6", 1.10),
    ("FILTER-H13", 1.45),
    ("PAINT-RAL7035-2L", 2.60),
)
SLOT = 0.08  # scale events fall in slots this long, from 0.06 to 0.86
SLOTS = 10

EARTH_M = 6_371_000.0
M_PER_DEG = math.pi / 180 * EARTH_M


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

    def __init__(
        self,
        id: str,
        index: int,
        transport: str,
        seed: int | str,
        number: int = 1,
        scenario_s: float = 60.0,
    ) -> None:
        self.id = id
        self.index = index  # position in the fleet; picks its connection
        self.number = number  # 1, 2, ... within its kind: picks its script
        self.transport = transport
        self.format = FORMATS[self.kind]
        self.rng = random.Random(f"{seed}:{id}")
        self.scenario_s = scenario_s
        self.glitch_chance = 0.0
        self.sent = 0
        self._first_stamp: int | None = None
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
        if self._first_stamp is None:
            self._first_stamp = self._last_stamp = stamp_us
        dt = (stamp_us - self._last_stamp) / 1e6
        self._last_stamp = stamp_us
        at = (stamp_us - self._first_stamp) / 1e6 / self.scenario_s
        leaves = self.sample(at, dt)
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

    def sample(self, at: float, dt: float) -> list[Leaf]:
        """Values at ``at`` (runs since the first message), ``dt`` s on."""
        raise NotImplementedError

    def firmware(self) -> str | None:
        return None

    def _window(self, earliest: float, latest: float, length: float) -> Window:
        """A stretch of ``length`` beginning between ``earliest`` and ``latest``."""
        start = self.rng.uniform(earliest, latest)
        return start, start + length

    def _follow(self, value: float, target: float, dt: float, tau: float) -> float:
        """``value`` moved towards ``target`` for ``dt`` s; ``tau`` in runs."""
        return value + (target - value) * (1 - math.exp(-dt / (tau * self.scenario_s)))


class Tracker(Device):
    """A refrigerated shipment tracker on a truck driving the lane."""

    kind = "tracker"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        rng = self.rng
        self.temperature = rng.gauss(SETPOINT_C, 0.2)
        self.humidity = rng.uniform(82.0, 93.0)
        self.battery = rng.uniform(55.0, 100.0)
        self.along = rng.uniform(0.0, LANE_M)  # metres from Rotterdam
        self.lane_side = rng.uniform(-150.0, 150.0)  # metres right of the line
        self.side = self.lane_side
        self.speed = rng.uniform(19.0, 25.0)  # m/s
        self.shake = rng.uniform(0.12, 0.3)  # g RMS on a good road
        self.version = rng.choice(TRACKER_FIRMWARE)
        role = self.number % 10
        self.failure = self._window(0.15, 0.45, REEFER_FAILURE) if role == 1 else None
        self.failure_c = rng.uniform(10.0, 12.0)
        self.detour = self._window(0.15, 0.5, DETOUR) if role == 2 else None
        if self.detour is not None:
            # Mid-leg: near a bend the other leg could be closer than the detour
            self.along = _mid_leg(rng.randrange(len(LEG_M)))
        self.rough = self._window(0.15, 0.55, ROUGH_ROAD) if role == 3 else None
        self.door = None
        if role == 4 or rng.random() < 0.3:
            self.door = self._window(0.1, 0.8, DOOR_OPEN)

    def sample(self, at: float, dt: float) -> list[Leaf]:
        rng = self.rng
        phase = at % 1.0
        door_open = _inside(self.door, phase)
        target = SETPOINT_C
        if _inside(self.failure, phase):
            target = self.failure_c
        elif door_open:
            target = DOOR_AIR_C
        self.temperature = self._follow(self.temperature, target, dt, AIR_TAU)
        self.temperature += rng.gauss(0, 0.1)
        self.humidity = min(99.0, max(60.0, self.humidity + rng.gauss(0, 0.4)))
        self.battery = max(3.0, self.battery - rng.uniform(0.0, 0.02))
        vibration = abs(self.shake + rng.gauss(0, 0.03))
        if _inside(self.rough, phase):
            vibration = rng.gauss(1.2, 0.08)
        side = DETOUR_M if _inside(self.detour, phase) else self.lane_side
        self.side = self._follow(self.side, side, dt, 0.01)
        self.along = (self.along + self.speed * dt) % LANE_M
        lat, lon = lane_point(self.along, self.side + rng.gauss(0, 5.0))
        return [
            (("temperature",), round(self.temperature, 2), "Cel"),
            (("humidity",), round(self.humidity, 1), "%RH"),
            (("battery",), round(self.battery, 1), "%EL"),
            (("vibration_g",), round(vibration, 3), "g"),
            (("gps", "lat"), round(lat, 6), "lat"),
            (("gps", "lon"), round(lon, 6), "lon"),
            (("door_open",), door_open, None),
        ]

    def firmware(self) -> str | None:
        if self.sent % FIRMWARE_EVERY == 0:
            return self.version
        return None


class ShelfScale(Device):
    """A warehouse shelf scale under one SKU at one location."""

    kind = "scale"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        rng = self.rng
        n = self.number - 1
        self.sku, self.unit_kg = rng.choice(CATALOG)
        self.location = f"A{n // 40 + 1:02d}-{n // 4 % 10 + 1:02d}-{n % 4 + 1}"
        capacity = round(rng.uniform(18.0, 36.0) / self.unit_kg)
        self.initial_units = round(capacity * rng.uniform(0.6, 0.95))
        self.battery = rng.uniform(40.0, 100.0)

        # The run in slots: a pick, a hand on the shelf, or nothing in each
        self.picks: list[tuple[float, int]] = []  # (when, units taken)
        self.blips: list[tuple[float, float, float]] = []  # (from, to, kg)
        left = expected = self.initial_units  # on the shelf, in the OMS's books
        role = self.number % 10
        for slot in range(SLOTS):
            start = 0.06 + slot * SLOT + rng.uniform(0.0, 0.01)
            draw = rng.random()
            if role == 2 and slot == 3:  # gone, and nobody booked it
                taken = min(left, rng.randint(1, 3))
                self.picks.append((start, taken))
                left -= taken
            elif role == 5 and slot == 4:  # booked, never picked
                expected -= min(expected, rng.randint(1, 3))
            elif (self.number % 5 == 1 and slot == 1) or 0.4 <= draw < 0.55:
                # A hand on the shelf: at least two units' worth, briefly
                kg = max(rng.uniform(1.5, 4.0), 2 * self.unit_kg)
                at = start + 0.02
                self.blips.append((at, at + HAND_ON_SHELF, kg))
            elif draw < 0.4 or slot == SLOTS - 1 and not self.picks:
                taken = min(left, rng.randint(1, 3))
                self.picks.append((start, taken))
                left -= taken
                expected = max(0, expected - taken)
        self.expected_units = expected

    def units_at(self, phase: float) -> int:
        """Units on the shelf at ``phase`` of the run."""
        return self.initial_units - sum(n for at, n in self.picks if at <= phase)

    def sample(self, at: float, dt: float) -> list[Leaf]:
        rng = self.rng
        phase = at % 1.0  # a new run begins with the shelf restocked
        weight = self.units_at(phase) * self.unit_kg + rng.gauss(0, 0.01)
        for start, end, kg in self.blips:
            if start <= phase < end:
                weight += kg
        self.battery = max(3.0, self.battery - rng.uniform(0.0, 0.005))
        return [
            (("weight",), round(max(0.0, weight), 3), "kg"),
            (("battery",), round(self.battery, 1), "%EL"),
        ]


class Machine(Device):
    """A machine tool with a vibration sensor on its spindle bearing."""

    kind = "machine"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        rng = self.rng
        self.baseline = rng.uniform(1.2, 3.5)  # mm/s RMS when healthy
        self.spindle = rng.uniform(30.0, 50.0)
        self.wear_level = rng.uniform(8.3, 9.5)
        self.spike_until = -1.0  # in runs since the first message
        self.spike_level = 0.0
        role = self.number % 10
        self.wear = self._window(0.1, 0.2, BEARING_WEAR) if role == 1 else None
        self.down: list[tuple[Window, str]] = []
        if role == 1:
            self.down.append((self._window(0.6, 0.65, FAULT), "fault"))
        elif role == 2:
            self.down.append((self._window(0.12, 0.25, STOPPED), "stopped"))
        elif role == 3:
            self.down.append((self._window(0.55, 0.65, FAULT), "fault"))

    def sample(self, at: float, dt: float) -> list[Leaf]:
        rng = self.rng
        phase = at % 1.0
        state = "running"
        for window, cause in self.down:
            if _inside(window, phase):
                state = cause
        if state != "running":
            vibration = rng.uniform(0.05, 0.3)
        elif _inside(self.wear, phase):
            vibration = self.wear_level + rng.gauss(0, 0.3)
        elif at < self.spike_until:
            vibration = self.spike_level + rng.gauss(0, 0.4)
        elif rng.random() < SPIKE_CHANCE:
            self.spike_until = at + rng.uniform(0.005, SPIKE_MAX)
            self.spike_level = rng.uniform(7.5, 12.0)
            vibration = self.spike_level
        else:
            vibration = self.baseline + rng.gauss(0, 0.25)
        target = 55.0 if state == "running" else 28.0
        self.spindle = self._follow(self.spindle, target, dt, 0.3)
        self.spindle += rng.gauss(0, 0.1)
        return [
            (("vibration_rms",), round(max(0.0, vibration), 3), "mm/s"),
            (("spindle_temp",), round(self.spindle, 2), "Cel"),
            (("state",), state, None),
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
    scenario_s: float = 60.0,
) -> list[Device]:
    """``count`` devices in the usual mix, in a seeded sending order.

    ``via`` puts every device on one transport ("mqtt" or "http"); without
    it about ``http_share`` of them post over HTTP. ``glitch_chance`` is the
    share of natural messages in which one value is null, as a device with
    a sensor fault sends it: the server keeps the rest and a dead letter.
    ``scenario_s`` is the length of the run the devices' scripts fill.

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
            device = cls(
                f"{prefix}{kind}-{number:04d}", 0, transport, seed,
                number=number, scenario_s=scenario_s,
            )  # fmt: skip
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


# -- the lane ----------------------------------------------------------------


def _leg_m(a: list[float], b: list[float]) -> float:
    mid = math.radians((a[0] + b[0]) / 2)
    return math.hypot(
        (b[0] - a[0]) * M_PER_DEG, (b[1] - a[1]) * M_PER_DEG * math.cos(mid)
    )


LEG_M = [_leg_m(a, b) for a, b in pairwise(LANE)]
LANE_M = sum(LEG_M)


def _mid_leg(leg: int) -> float:
    return sum(LEG_M[:leg]) + LEG_M[leg] / 2


def lane_point(along: float, side: float) -> tuple[float, float]:
    """Latitude and longitude ``along`` metres down the lane, ``side`` to the right."""
    leg = 0
    while leg < len(LEG_M) - 1 and along > LEG_M[leg]:
        along -= LEG_M[leg]
        leg += 1
    (alat, alon), (blat, blon) = LANE[leg], LANE[leg + 1]
    share = min(1.0, max(0.0, along / LEG_M[leg]))
    lat = alat + (blat - alat) * share
    lon = alon + (blon - alon) * share
    # Offset at right angles to the leg, on a plane tangent at the point
    kx = M_PER_DEG * math.cos(math.radians(lat))
    dx, dy = (blon - alon) * kx, (blat - alat) * M_PER_DEG
    norm = math.hypot(dx, dy)
    return lat - side * dx / norm / M_PER_DEG, lon + side * dy / norm / kx


def _inside(window: Window | None, phase: float) -> bool:
    return window is not None and window[0] <= phase < window[1]


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
