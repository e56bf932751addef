"""Zigbee2MQTT device state.

Zigbee2MQTT publishes the whole state of a device as one JSON object on
``<base topic>/<friendly name>``, again every time any attribute changes.
The friendly name may itself contain ``/`` (``kitchen/floor_light``), so
the route captures every level after the base topic
(``zigbee2mqtt/{device...}``) and that capture is the device. Without a
capture, the name is the topic with ``base_topic`` removed.

- Metric = key; nested objects flatten to dotted names (``color.x``);
  arrays are JSON values. ``"ON"``/``"OFF"`` stay text unless
  ``on_off = "bool"``.
- Time: the receipt time, since Zigbee2MQTT stamps nothing, except when
  its ``last_seen`` option is on: then ``time_key`` (epoch milliseconds or
  ISO 8601, as Zigbee2MQTT writes it) is the time and not a reading.
- Units are not in the payload; they live in the device's "exposes"
  definition, so a route gives them as ``units`` (metric to unit).
- ``null`` is how Zigbee2MQTT says it has not heard an attribute yet: no
  reading and no reject. A state whose every value is null yields nothing.
- ``device`` (Zigbee2MQTT's ``include_device_information``) is registry
  information, not telemetry: ``ieeeAddr`` becomes the alias
  ``("zigbee", ieeeAddr, device)``, so readings follow the device through a
  rename, and ``softwareBuildID`` its firmware version.

Not telemetry, answered with nothing (no readings, no error): bridge
topics (``<base>/bridge/...``), commands (``.../set``, ``.../get``, also
``.../set/<attribute>``) and availability. An availability message that
says ``offline`` (plain text or ``{"state": "offline"}``) marks the device
offline. The attribute output mode (one topic per attribute, plain values)
is not supported: route the JSON output.

Republished state. Aqara sensors report each attribute separately and
Zigbee2MQTT republishes the full state each time, so one change arrives as
five identical messages within a second. With receipt times each is a new
reading (correct, wasteful). ``suppress_repeats_ms`` drops a value equal to
the last one stored for the same (device, metric) less than that many
milliseconds after it, so an unchanged value is still stored once per
window. The memory is per codec instance and bounded; with several
workers sharing a subscription it is best effort, as any instance sees
only its share of the messages.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson

from .. import clock
from ..errors import DecodeError
from ..model import Origin, Reading
from ._walk import array_problem
from .base import MAX_NAME, Decoded, parse_json_object

MAX_DEPTH = 32  # nesting below the state object, in objects
MAX_TRACKED = 65_536  # (device, metric) pairs remembered for repeat suppression
_COMMANDS = frozenset(("set", "get"))


class Zigbee2mqttOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How one route reads Zigbee2MQTT state; every field has a default."""

    base_topic: str = "zigbee2mqtt"
    units: dict[str, str] = msgspec.field(default_factory=dict)
    on_off: Literal["string", "bool"] = "string"
    time_key: str | None = "last_seen"
    ignore: list[str] = msgspec.field(default_factory=list)
    suppress_repeats_ms: Annotated[int, msgspec.Meta(ge=0)] = 0


class Zigbee2mqttCodec:
    """Zigbee2MQTT device state, configured for one route."""

    name = "zigbee2mqtt"

    def __init__(self, options: Zigbee2mqttOptions, window: clock.Window) -> None:
        self.options = options
        self.window = window
        self._prefix = options.base_topic.rstrip("/") + "/"
        self._ignore = frozenset(options.ignore)
        self._bool = options.on_off == "bool"
        self._repeat_us = options.suppress_repeats_ms * 1000
        # (device, metric) -> (type, value, ts) of the last reading emitted
        self._last: dict[tuple[str, str], tuple[type, Any, int]] = {}

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        name = self._friendly_name(origin)
        levels = name.split("/")
        if levels[0] == "bridge":
            return
        if len(levels) >= 2 and levels[-1] in _COMMANDS:
            return
        if len(levels) >= 3 and levels[-2] in _COMMANDS:
            return
        if len(levels) >= 2 and levels[-1] == "availability":
            if _says_offline(payload):
                out.offline.append("/".join(levels[:-1]))
            return

        doc = parse_json_object(payload)

        ts = origin.received
        skip: set[str] = set()
        key = self.options.time_key
        if key is not None and doc.get(key) is not None:
            ts = self._time(doc[key], origin.received, f"$.{key}")
            skip.add(key)
        info = doc.get("device")
        if type(info) is dict and ("ieeeAddr" in info or "friendlyName" in info):
            _device_information(info, name, out)
            skip.add("device")
        emitted = len(out.readings)
        self._leaves(doc, "", "$", name, ts, origin, out, skip, 0)
        if self._repeat_us:
            self._suppress(out, emitted)

    def _friendly_name(self, origin: Origin) -> str:
        name = origin.device
        if name is None:
            topic = origin.source
            if not topic.startswith(self._prefix):
                raise DecodeError(
                    f"no device: topic is not under {self._prefix!r}", "$"
                )
            name = topic[len(self._prefix) :]
        if not name or len(name) > MAX_NAME or "\x00" in name:
            raise DecodeError("friendly name empty, too long or with a NUL", "$")
        return name

    def _time(self, raw: Any, received: int, path: str) -> int:
        # Zigbee2MQTT writes last_seen as epoch milliseconds or ISO 8601 text
        ts = clock.parse(raw, "ms", path)
        return self.window.check(ts, received, path)

    def _leaves(
        self,
        node: dict[str, Any],
        prefix: str,
        path: str,
        device: str,
        ts: int,
        origin: Origin,
        out: Decoded,
        skip: set[str] | frozenset[str],
        depth: int,
    ) -> None:
        for key, value in node.items():
            if key in skip:
                continue
            name = f"{prefix}.{key}" if prefix else key
            where = f"{path}.{key}"
            if not key or "\x00" in key:
                where = where.replace("\x00", "\\0") if key else f'{path}.""'
                out.reject(where, "metric name empty or with a NUL character")
                continue
            if name in self._ignore or value is None:
                continue
            kind = type(value)
            if kind is dict:
                if depth >= MAX_DEPTH:
                    out.reject(where, f"nested deeper than {MAX_DEPTH} levels")
                else:
                    self._leaves(
                        value, name, where, device, ts, origin, out, _NONE, depth + 1
                    )
                continue
            if kind is int:
                value = float(value)
            elif kind is str:
                if "\x00" in value:
                    out.reject(where, "text contains a NUL character")
                    continue
                if self._bool and value in ("ON", "OFF"):
                    value = value == "ON"
            elif kind is list and (problem := array_problem(value)) is not None:
                out.reject(where, problem)
                continue
            if len(name) > MAX_NAME:
                out.reject(f"{path}.{key[:64]}...", "metric name too long")
                continue
            out.readings.append(
                Reading(
                    device,
                    name,
                    ts,
                    value,
                    None,
                    self.options.units.get(name),
                    origin.received,
                    origin.transport,
                    self.name,
                )
            )

    def _suppress(self, out: Decoded, start: int) -> None:
        """Drop the new readings that repeat the last stored value in time."""
        last, window = self._last, self._repeat_us
        kept = []
        for r in out.readings[start:]:
            key = (r.device, r.metric)
            seen = last.get(key)
            if (
                seen is not None
                and seen[0] is type(r.value)
                and seen[1] == r.value
                and 0 <= r.ts - seen[2] < window
            ):
                continue
            last.pop(key, None)  # re-insert: the dict's order is recency
            last[key] = (type(r.value), r.value, r.ts)
            if len(last) > MAX_TRACKED:
                del last[next(iter(last))]
            kept.append(r)
        out.readings[start:] = kept


def _says_offline(payload: bytes) -> bool:
    """Whether an availability payload says offline (text or JSON state)."""
    if payload.strip() == b"offline":
        return True
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return type(doc) is dict and doc.get("state") == "offline"


def _device_information(info: dict[str, Any], device: str, out: Decoded) -> None:
    ieee = info.get("ieeeAddr")
    if type(ieee) is str and ieee and len(ieee) <= MAX_NAME and "\x00" not in ieee:
        out.aliases.append(("zigbee", ieee, device))
    build = info.get("softwareBuildID")
    if type(build) is str and build and "\x00" not in build:
        out.firmware[device] = build[:MAX_NAME]


_NONE: frozenset[str] = frozenset()
