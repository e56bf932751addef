"""InfluxDB line protocol, as Telegraf and the InfluxDB write APIs send it.

One point per line, ``measurement[,tag=value...] field=value[,...] [time]``
(grammar and escapes in ``_lineproto``, whose compiled twin is used unless
``INGESTD_NO_EXTENSIONS=1``). Each field of a point becomes one reading:

- device: the transport identity when there is one. On a route without one
  (a shared gateway endpoint, such as one Telegraf agent writing for many
  hosts), the value of the first tag named in ``device_tags`` (``device``,
  then ``host``), else the measurement.
- metric: ``measurement.field``, with the unit from the route's ``units``.
- time: the line's timestamp in the route's ``precision`` (default
  nanoseconds, truncated to microseconds), checked against the plausible
  window; a line without one takes the receipt time. A timestamp of 0 is
  1970-01-01, not "no time": the window rejects it like any other
  implausible time, it is never replaced by the receipt time.
- value: floats as they are, booleans, strings; integers (``i``, ``u``) as
  doubles when a double holds them exactly. Beyond 2**53 most do not:
  ``big_integers`` rejects them (default), rounds them, or keeps them as
  decimal text.

A bad line is a reject at ``line N`` (the line it starts on) with the
reason, and the other lines are stored; a bad field (NUL in a string, an
inexact integer, a name too long) is a reject at its line naming the field,
and the line's other fields are stored. A payload with no lines at all is a
``DecodeError``.

Left out on purpose: tags. The reading model has no place for them, so they
are dropped, not folded into metric names. Points that differ only by tags
(Telegraf's ``cpu`` measurement, one series per ``cpu=cpuN`` tag) therefore
share (device, metric, time) and only the first is stored; such series need
a route per tag value, or a tag option that names metrics, still to be
built.
"""

from __future__ import annotations

import os
from typing import Literal

import msgspec

from .. import clock
from ..errors import DecodeError
from ..model import Origin, Reading
from ._lineproto import LineError, quote
from .base import MAX_NAME, Decoded

if os.environ.get("INGESTD_NO_EXTENSIONS") == "1":
    from ._lineproto import parse
else:
    try:
        from ._lineproto_ext import parse
    except ImportError:  # not built: the pure twin has the same behaviour
        from ._lineproto import parse

_SCALE = {"ns": 0, "us": 1, "ms": 1_000, "s": 1_000_000}  # 0: divide by 1000


class InfluxOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How one route reads line protocol; every field has a working default.

    ``precision`` is the unit of the timestamps (the write API's
    ``precision`` parameter); ``device_tags`` the tags that name the device
    when the transport does not, first present wins; ``units`` maps a metric
    (``measurement.field``) to its unit; ``big_integers`` says what becomes
    of an integer that a double cannot hold exactly.
    """

    precision: Literal["ns", "us", "ms", "s"] = "ns"
    device_tags: list[str] = msgspec.field(default_factory=lambda: ["device", "host"])
    units: dict[str, str] = msgspec.field(default_factory=dict)
    big_integers: Literal["reject", "round", "text"] = "reject"


class InfluxCodec:
    """InfluxDB line protocol, configured for one route."""

    name = "influx"

    def __init__(self, options: InfluxOptions, window: clock.Window) -> None:
        self.options = options
        self.window = window
        self._scale = _SCALE[options.precision]
        self._device_tags = tuple(options.device_tags)

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        entries = parse(payload)
        if not entries:
            reason = "no points in payload: only blank or comment lines"
            raise DecodeError(reason, "line 1")
        for entry in entries:
            if type(entry) is LineError:
                out.reject(f"line {entry.line}", entry.reason)
            else:
                self._point(*entry, origin, out)  # type: ignore[misc]

    def _point(
        self,
        line: int,
        measurement: str,
        tags: dict[str, str],
        fields: list[tuple[str, float | int | bool | str, str]],
        stamp: int | None,
        origin: Origin,
        out: Decoded,
    ) -> None:
        path = f"line {line}"

        # Which device: the transport's identity, else a tag, else the name
        device = origin.device
        if device is None:
            device = measurement
            for tag in self._device_tags:
                if tag in tags:
                    device = tags[tag]
                    break
            if len(device) > MAX_NAME:
                out.reject(path, f"device id longer than {MAX_NAME} characters")
                return

        # When: the line's timestamp in the route's precision, else receipt
        received = origin.received
        if stamp is None:
            ts = received
        else:
            ts = stamp // 1000 if self._scale == 0 else stamp * self._scale
            try:
                self.window.check(ts, received, path)
            except DecodeError as exc:
                out.reject(exc.path, exc.reason)
                return

        units = self.options.units
        big = self.options.big_integers
        readings = out.readings
        transport = origin.transport
        for key, value, lp_type in fields:
            metric = f"{measurement}.{key}"
            if len(metric) > MAX_NAME:
                reason = f"metric name longer than {MAX_NAME} characters"
                out.reject(path, f"field {quote(key)}: {reason}")
                continue
            if lp_type == "int" or lp_type == "uint":
                number = float(value)
                if number == value:  # int == float compares exactly
                    value = number
                elif big == "reject":
                    reason = f"integer {value} is not exact as a double"
                    out.reject(path, f"field {quote(key)}: {reason}")
                    continue
                else:
                    value = str(value) if big == "text" else number
            elif lp_type == "string" and "\x00" in value:  # type: ignore[operator]
                out.reject(path, f"field {quote(key)}: text contains a NUL character")
                continue
            readings.append(
                Reading(
                    device,
                    metric,
                    ts,
                    value,
                    None,
                    units.get(metric) if units else None,
                    received,
                    transport,
                    self.name,
                )
            )
