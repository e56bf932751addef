"""Tasmota telemetry: ``tele/%topic%/SENSOR`` and ``STATE`` JSON.

The device is Tasmota's ``%topic%``, which the route captures
(``tele/{device}/SENSOR``); without a capture it is the topic between the
prefix and the last level. Metric = ``Sensor.Field`` (``SCD40.eCO2``,
``ENERGY.Power``), nested objects joined with ``.``; a top-level value is
its own metric (``Switch1``, ``POWER``); arrays (per-phase values) are JSON
values. ``ENERGY.TotalStartTime`` is the date the counter was reset: an
attribute, not a reading. ``{"StatusSNS": ...}`` and ``{"StatusSTS": ...}``
(answers to ``Status 10``/``11``) are unwrapped.

Gateways. A Tasmota device that relays other sensors names them inside the
payload, and each becomes its own device ``<topic>/<sub>``, with the field
as metric:

- Zigbee: every entry of ``ZbReceived``, named by its ``Name`` (the short
  address key, e.g. ``0x8F20``, can change when the device rejoins, so it
  serves only when there is no name); ``Device``, ``Name``, ``Endpoint``,
  ``Group``, ``ModelId`` and ``Manufacturer`` are not readings,
  ``SWBuildID`` is the device's firmware version;
- a sensor object with an ``Id`` (``id_key``): DS18x20 probes are numbered
  ``DS18B20-1..n`` in discovery order, which changes when a probe is added,
  so the probe's ROM id is the identity;
- BLE sensors named ``<model>-<last 3 MAC bytes>`` (``LYWSD03-5a0001``),
  as MiBLE names them, unless ``ble_names = false``.

Time. ``Epoch`` (Unix seconds, UTC) when present. Otherwise ``Time``, which
is the device's local time and carries no offset unless Tasmota's
``TimeZone`` option adds one: an offset in the text wins, else the route's
``utc_offset`` (fixed, ``"+01:00"``) or ``timezone`` (IANA name, follows
daylight saving; in the repeated hour of autumn the first occurrence is
taken). Without either, a zone-less ``Time`` cannot be placed and the
message is refused with that reason. No ``Time`` at all (Zigbee bridges)
means receipt time. A retained message repeats on every resubscribe; with
a device time its readings keep their identity (device, metric, ts) and
storage keeps the first copy.

Units. ``TempUnit``, ``PressureUnit`` and ``SpeedUnit`` declare the unit of
the matching fields of their object and everything below it (a temperature
field is one named ``*Temperature*``, ``DewPoint`` or ``HeatIndex``);
Tasmota's ``C``/``F`` are written ``°C``/``°F``. Every other unit (ENERGY
kWh/W/VA, humidity %, CO2 ppm) is documented by Tasmota, not sent, so the
route names it in ``units``, by metric (``ENERGY.Total``) or by field
(``Humidity``); the payload's own declaration wins over the route.

Also: ``tele/%topic%/LWT`` with ``Offline`` marks the device offline (no
readings, no error; ``Online`` gives nothing); ``Info1.Version`` and
``StatusFWR.Version`` are the firmware version, not readings. JSON that
does not parse is refused with its byte offset; nothing is salvaged.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from .. import clock
from ..errors import DecodeError
from ..model import Origin, Reading
from ._walk import array_problem
from .base import MAX_NAME, Decoded, json_type, parse_json_object

MAX_DEPTH = 32  # nesting below the payload's root, in objects
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_OFFSET = r"^(Z|[+-](0\d|1[0-4]):[0-5]\d)$"
_BLE_NAME = re.compile(r"-[0-9A-Fa-f]{6}$")
_TIME_KEYS = frozenset(("Time", "Epoch"))
_UNIT_KEYS = {"TempUnit": "temp", "PressureUnit": "pressure", "SpeedUnit": "speed"}
_UNIT_SPELLING = {"C": "°C", "F": "°F"}
_ZIGBEE_META = frozenset(
    ("Device", "Name", "Endpoint", "Group", "ModelId", "Manufacturer", "SWBuildID")
)
_FIRMWARE = ("Info1", "StatusFWR")
_WRAPPERS = ("StatusSNS", "StatusSTS")
_ATTRIBUTES = frozenset(("ENERGY.TotalStartTime",))
_NONE: frozenset[str] = frozenset()


class TasmotaOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How one route reads Tasmota telemetry; every field has a default."""

    utc_offset: Annotated[str, msgspec.Meta(pattern=_OFFSET)] | None = None
    timezone: str | None = None
    units: dict[str, str] = msgspec.field(default_factory=dict)
    id_key: str | None = "Id"
    ble_names: bool = True
    ignore: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.utc_offset is not None and self.timezone is not None:
            raise ValueError("set utc_offset or timezone, not both")
        if self.timezone is not None:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {self.timezone!r}") from None


class TasmotaCodec:
    """Tasmota SENSOR/STATE JSON, configured for one route."""

    name = "tasmota"

    def __init__(self, options: TasmotaOptions, window: clock.Window) -> None:
        self.options = options
        self.window = window
        self._zone: timezone | ZoneInfo | None = None
        if options.timezone is not None:
            self._zone = ZoneInfo(options.timezone)
        elif options.utc_offset is not None:
            self._zone = _fixed_offset(options.utc_offset)
        self._ignore = frozenset(options.ignore) | _ATTRIBUTES
        self._id_skip = frozenset([options.id_key] if options.id_key else [])

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        device = _topic_device(origin)
        if origin.source.endswith("/LWT"):
            if payload.strip() == b"Offline":
                out.offline.append(device)
            return
        doc = parse_json_object(payload)
        base = "$"
        for wrapper in _WRAPPERS:
            if len(doc) == 1 and type(doc.get(wrapper)) is dict:
                doc, base = doc[wrapper], f"$.{wrapper}"
                break

        ts = self._time(doc, base, origin.received)
        emit = _Emitter(self, origin, ts, out)
        units = emit.declared(doc, {}, base)
        for key, value in doc.items():
            path = _at(base, key)
            if key in _TIME_KEYS or key in _UNIT_KEYS:
                continue
            if key in _FIRMWARE and type(value) is dict:
                version = value.get("Version")
                if type(version) is str and version and "\x00" not in version:
                    out.firmware[device] = version[:MAX_NAME]
                continue
            if key == "ZbReceived" and type(value) is dict:
                self._zigbee(value, path, device, units, emit, out)
                continue
            sub = self._sub_device(key, value, path)
            if sub is not None:
                name = emit.device(device, *sub)
                if name is not None:
                    emit.tree(value, "", path, name, units, self._id_skip, 0)
                continue
            emit.leaf(key, key, value, path, device, units, 0)

        if not out.readings and not out.rejects and not out.firmware:
            raise DecodeError("no readings in payload", base)

    def _time(self, doc: dict[str, Any], base: str, received: int) -> int:
        if "Epoch" in doc:
            path = f"{base}.Epoch"
            ts = clock.from_number(doc["Epoch"], "s", path)
        elif "Time" in doc:
            path = f"{base}.Time"
            ts = self._local_time(doc["Time"], path)
        else:
            return received
        return self.window.check(ts, received, path)

    def _local_time(self, text: Any, path: str) -> int:
        if type(text) is not str:
            raise DecodeError(f"Time must be text, got {json_type(text)}", path)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise DecodeError(f"not an ISO 8601 time: {text[:40]!r}", path) from None
        if moment.tzinfo is None:
            if self._zone is None:
                raise DecodeError(
                    "Time has no UTC offset and the route sets neither "
                    "utc_offset nor timezone",
                    path,
                )
            moment = moment.replace(tzinfo=self._zone)
        try:
            delta = moment - _EPOCH
        except OverflowError:
            raise DecodeError(f"Time out of range: {text[:40]!r}", path) from None
        return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds

    def _sub_device(self, key: str, value: Any, path: str) -> tuple[str, str] | None:
        """The sub-device a top-level sensor object stands for, and where."""
        if type(value) is not dict:
            return None
        id_key = self.options.id_key
        if id_key is not None and id_key in value:
            ident = value[id_key]
            return (ident if type(ident) is str else "", f"{path}.{id_key}")
        if self.options.ble_names and _BLE_NAME.search(key):
            return key, path
        return None

    def _zigbee(
        self,
        devices: dict[str, Any],
        path: str,
        gateway: str,
        units: dict[str, str],
        emit: _Emitter,
        out: Decoded,
    ) -> None:
        for key, node in devices.items():
            where = _at(path, key)
            if type(node) is not dict:
                out.reject(where, f"expected an object, got {json_type(node)}")
                continue
            named = node.get("Name")
            sub = named if type(named) is str and named else key
            device = emit.device(gateway, sub, where)
            if device is None:
                continue
            build = node.get("SWBuildID")
            if type(build) is str and build and "\x00" not in build:
                out.firmware[device] = build[:MAX_NAME]
            emit.tree(node, "", where, device, units, _ZIGBEE_META, 0)


class _Emitter:
    """Readings of one message: shared time, origin and unit rules."""

    __slots__ = ("codec", "origin", "ts", "out", "units", "ignore")

    def __init__(
        self, codec: TasmotaCodec, origin: Origin, ts: int, out: Decoded
    ) -> None:
        self.codec = codec
        self.origin = origin
        self.ts = ts
        self.out = out
        self.units = codec.options.units
        self.ignore = codec._ignore

    def device(self, gateway: str, sub: str, path: str) -> str | None:
        name = f"{gateway}/{sub}"
        if not sub or "\x00" in sub or len(name) > MAX_NAME:
            self.out.reject(path, "sub-device id empty, too long or with a NUL")
            return None
        return name

    def declared(
        self, node: dict[str, Any], inherited: dict[str, str], path: str
    ) -> dict[str, str]:
        """Units this object declares (TempUnit...), over the inherited ones."""
        units = inherited
        for key, kind in _UNIT_KEYS.items():
            if key not in node:
                continue
            unit = node[key]
            if type(unit) is not str or not unit or "\x00" in unit:
                self.out.reject(f"{path}.{key}", "unit must be non-empty text")
                continue
            if units is inherited:
                units = dict(inherited)
            units[kind] = _UNIT_SPELLING.get(unit, unit[:MAX_NAME])
        return units

    def tree(
        self,
        node: dict[str, Any],
        prefix: str,
        path: str,
        device: str,
        units: dict[str, str],
        skip: frozenset[str],
        depth: int,
    ) -> None:
        units = self.declared(node, units, path)
        for key, value in node.items():
            if key in skip or key in _UNIT_KEYS:
                continue
            name = f"{prefix}.{key}" if prefix else key
            self.leaf(key, name, value, _at(path, key), device, units, depth)

    def leaf(
        self,
        key: str,
        name: str,
        value: Any,
        path: str,
        device: str,
        units: dict[str, str],
        depth: int,
    ) -> None:
        out = self.out
        if not key or "\x00" in key:
            out.reject(path, "metric name empty or with a NUL character")
            return
        if name in self.ignore:
            return
        kind = type(value)
        if kind is dict:
            if depth >= MAX_DEPTH:
                out.reject(path, f"nested deeper than {MAX_DEPTH} levels")
            else:
                self.tree(value, name, path, device, units, _NONE, depth + 1)
            return
        if kind is int:
            value = float(value)
        elif kind is str:
            if "\x00" in value:
                out.reject(path, "text contains a NUL character")
                return
        elif value is None:
            out.reject(path, "null is not a value")
            return
        elif kind is list and (problem := array_problem(value)) is not None:
            out.reject(path, problem)
            return
        if len(name) > MAX_NAME:
            out.reject(path[:80] + "...", "metric name too long")
            return
        origin = self.origin
        out.readings.append(
            Reading(
                device,
                name,
                self.ts,
                value,
                None,
                self.unit(name, key, units),
                origin.received,
                origin.transport,
                self.codec.name,
            )
        )

    def unit(self, metric: str, field: str, declared: dict[str, str]) -> str | None:
        if declared:
            if "Temperature" in field or field in ("DewPoint", "HeatIndex"):
                kind = "temp"
            elif "Pressure" in field:
                kind = "pressure"
            elif "Speed" in field:
                kind = "speed"
            else:
                kind = ""
            if kind in declared:
                return declared[kind]
        if not self.units:
            return None
        return self.units.get(metric) or self.units.get(field)


def _at(path: str, key: str) -> str:
    """The path of ``key`` below ``path``, printable even for odd keys."""
    if not key:
        return path + '.""'
    return path + "." + key.replace("\x00", "\\0")


def _topic_device(origin: Origin) -> str:
    device = origin.device
    if device is None:
        # %prefix%/%topic%/<command>: Tasmota's default FullTopic
        levels = origin.source.split("/")
        if len(levels) < 3:
            raise DecodeError("no device: no topic capture, no %topic% in topic")
        device = "/".join(levels[1:-1])
    if not device or len(device) > MAX_NAME or "\x00" in device:
        raise DecodeError("device id empty, too long or with a NUL")
    return device


def _fixed_offset(text: str) -> timezone:
    if text == "Z":
        return timezone.utc
    sign = -1 if text[0] == "-" else 1
    minutes = int(text[1:3]) * 60 + int(text[4:6])
    return timezone(sign * timedelta(minutes=minutes))
