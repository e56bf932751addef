"""Shelly Gen2 devices: status notifications and component status topics.

Two shapes arrive, both JSON objects:

- RPC notifications on ``<prefix>/events/rpc`` (or a WebSocket or an HTTP
  hook): ``{"src": ..., "method": "NotifyStatus", "params": {"ts": 1631186545.04,
  "switch:0": {"output": true}}}``. ``NotifyStatus`` carries only what
  changed, ``NotifyFullStatus`` every component; both are stored as they come
  (overlaying a delta on the last known status is the registry's business,
  not a codec's). ``params.ts`` is Unix seconds with a fraction; without it
  the receipt time serves. ``NotifyEvent`` (button pushes and the like) gives
  one text reading ``<component>.event`` per event at the event's own ``ts``;
  ``events = false`` drops them.
- A component's full status on ``<prefix>/status/<component>``: no device
  id, no time and no component name in the payload, so the component is the
  topic's last level, the device the topic capture and the time the receipt.

Device: the transport identity (topic capture, HTTP path), else ``src``.
When both are there and differ (a custom MQTT prefix such as
``shellyplus2pm-garage``), the readings go to the identity and the alias
``("shelly", src, identity)`` is reported, so an operator can map the
device's own id onto another canonical device.

Metric: ``<component>.<field path>``, e.g. ``switch:0.aenergy.total`` or
``switch:0.temperature.tC``. Field paths listed in ``ignore`` (default
``id`` and ``source``: the component number and what caused a change are
metadata) and components listed in ``system`` (connectivity and system
state such as ``mqtt`` or ``wifi``) are not telemetry: a notification made
only of them, like ``{"mqtt": {"connected": true}}``, yields nothing and is
not an error. ``tF`` next to ``tC`` repeats it in Fahrenheit and is dropped
unless ``fahrenheit = true``. Shelly reports null for what does not apply
(the state of an input in button mode, a missing sensor), so nulls are
skipped, not rejected.

Energy counters (``aenergy``, ``ret_aenergy``) keep ``total``;
``by_minute`` (mWh for the last three minutes, index 0 the most recent) is
off by default because its timing is unverified; with ``by_minute = true``
element i becomes ``<...>.by_minute[i]`` at ``minute_ts`` minus i minutes.
``minute_ts`` itself is never a reading.

Shelly payloads name no units. The vendor's documented units (apower W,
aenergy.total Wh, tC °C, ...) come from the route's ``units`` table, keyed
by field path (``apower``) or by full metric (``switch:0.apower``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import clock
from ..errors import DecodeError
from ..model import Origin, Reading
from ._walk import array_problem
from .base import MAX_NAME, Decoded, json_type, parse_json_object

MAX_DEPTH = 16  # nesting inside one component, in objects
STATUS_METHODS = ("NotifyStatus", "NotifyFullStatus")
MINUTE_US = 60_000_000


class ShellyOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How one route reads Shelly Gen2; the module docstring explains each."""

    units: dict[str, str] = msgspec.field(default_factory=dict)
    ignore: list[str] = msgspec.field(default_factory=lambda: ["id", "source"])
    system: list[str] = msgspec.field(
        default_factory=lambda: ["sys", "wifi", "eth", "cloud", "mqtt", "ws", "ble"]
    )
    fahrenheit: bool = False
    by_minute: bool = False
    events: bool = True


class ShellyCodec:
    """Shelly Gen2 notifications and component status, for one route."""

    name = "shelly"

    def __init__(self, options: ShellyOptions, window: clock.Window) -> None:
        self.options = options
        self.window = window
        self._ignore = frozenset(options.ignore)
        self._system = frozenset(options.system)

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        doc = parse_json_object(payload)
        if "method" in doc:
            self._notification(doc, origin, out)
        elif "src" in doc:
            raise DecodeError("an RPC frame without a method is no notification", "$")
        else:
            self._status(doc, origin, out)

    def _status(self, doc: dict[str, Any], origin: Origin, out: Decoded) -> None:
        # <prefix>/status/<component>: the topic names the component
        levels = origin.source.rsplit("/", 2)
        if len(levels) != 3 or levels[1] != "status" or not levels[2]:
            raise DecodeError(
                "a component status needs its topic <prefix>/status/<component>", "$"
            )
        if origin.device is None:
            raise DecodeError("no device id: no transport identity", "$")
        self._component(
            levels[2], doc, "$", origin.device, origin.received, origin, out
        )

    def _notification(self, doc: dict[str, Any], origin: Origin, out: Decoded) -> None:
        method = doc["method"]
        params = doc.get("params")
        if type(params) is not dict:
            raise DecodeError(
                f"expected an object, got {json_type(params)}", "$.params"
            )

        # Which device: the transport's identity, else src
        device = origin.device
        src = doc.get("src")
        if type(src) is not str or not src or len(src) > MAX_NAME or "\x00" in src:
            if device is None:
                raise DecodeError("no device id: no transport identity or src", "$.src")
            if src is not None:
                out.reject("$.src", "src must be text of 1 to 256 characters, no NUL")
        elif device is None:
            device = src
        elif src != device:
            out.aliases.append(("shelly", src, device))

        # When: params.ts in seconds, else receipt
        ts = origin.received
        if "ts" in params:
            ts = clock.from_number(params["ts"], "s", "$.params.ts")
            ts = self.window.check(ts, origin.received, "$.params.ts")

        if method in STATUS_METHODS:
            for key, node in params.items():
                if key != "ts":
                    self._component(
                        key,
                        node,
                        f"$.params.{_printable(key)}",
                        device,
                        ts,
                        origin,
                        out,
                    )
        elif method == "NotifyEvent":
            if self.options.events:
                self._events(params.get("events"), device, ts, origin, out)
        else:
            raise DecodeError(
                "method is not NotifyStatus, NotifyFullStatus or NotifyEvent",
                "$.method",
            )

    def _component(
        self,
        key: str,
        node: Any,
        path: str,
        device: str,
        ts: int,
        origin: Origin,
        out: Decoded,
    ) -> None:
        if not key or "\x00" in key or len(key) > MAX_NAME:
            out.reject(path, "component name empty, too long or with a NUL character")
            return
        if key.partition(":")[0] in self._system:
            return
        if type(node) is not dict:
            if node is not None:
                out.reject(path, f"expected an object, got {json_type(node)}")
            return
        self._fields(node, key, "", path, device, ts, origin, out, 0)

    def _fields(
        self,
        node: dict[str, Any],
        metric: str,
        field: str,
        path: str,
        device: str,
        ts: int,
        origin: Origin,
        out: Decoded,
        depth: int,
    ) -> None:
        # An energy counter: by_minute belongs to minute_ts, not to ts
        counter = "by_minute" in node and "minute_ts" in node
        for key, value in node.items():
            where = f"{path}.{_printable(key)}"
            if not key or "\x00" in key:
                out.reject(where, "field name empty or with a NUL character")
                continue
            name = f"{metric}.{key}"
            rel = f"{field}.{key}" if field else key
            if rel in self._ignore or name in self._ignore or value is None:
                continue
            if key == "tF" and "tC" in node and not self.options.fahrenheit:
                continue
            if counter and key in ("by_minute", "minute_ts"):
                if key == "by_minute" and self.options.by_minute:
                    self._by_minute(node, name, rel, path, device, origin, out)
                continue
            if type(value) is dict:
                if depth >= MAX_DEPTH:
                    out.reject(where, f"nested deeper than {MAX_DEPTH} levels")
                else:
                    self._fields(
                        value, name, rel, where, device, ts, origin, out, depth + 1
                    )
                continue
            self._leaf(name, rel, value, where, device, ts, origin, out)

    def _leaf(
        self,
        name: str,
        rel: str,
        value: Any,
        where: str,
        device: str,
        ts: int,
        origin: Origin,
        out: Decoded,
    ) -> None:
        kind = type(value)
        if kind is int or kind is float:
            value = float(value)
        elif kind is str or kind is list:
            problem = array_problem(value)
            if problem is not None:
                out.reject(where, problem)
                return
        elif kind is not bool:
            out.reject(where, f"{json_type(value)} is not a value")
            return
        if len(name) > MAX_NAME:
            out.reject(where, "metric name too long")
            return
        units = self.options.units
        out.readings.append(
            Reading(
                device,
                name,
                ts,
                value,
                None,
                units.get(name) or units.get(rel),
                origin.received,
                origin.transport,
                self.name,
            )
        )

    def _by_minute(
        self,
        node: dict[str, Any],
        name: str,
        rel: str,
        path: str,
        device: str,
        origin: Origin,
        out: Decoded,
    ) -> None:
        try:
            start = clock.from_number(node["minute_ts"], "s", f"{path}.minute_ts")
            start = self.window.check(start, origin.received, f"{path}.minute_ts")
        except DecodeError as exc:
            out.reject(exc.path, exc.reason)
            return
        minutes = node["by_minute"]
        if type(minutes) is not list:
            out.reject(
                f"{path}.by_minute", f"expected an array, got {json_type(minutes)}"
            )
            return
        for i, value in enumerate(minutes):
            if type(value) not in (int, float):
                out.reject(
                    f"{path}.by_minute[{i}]",
                    f"expected a number, got {json_type(value)}",
                )
                continue
            self._leaf(
                f"{name}[{i}]",
                rel,
                value,
                f"{path}.by_minute[{i}]",
                device,
                start - i * MINUTE_US,
                origin,
                out,
            )

    def _events(
        self, events: Any, device: str, ts: int, origin: Origin, out: Decoded
    ) -> None:
        if type(events) is not list:
            out.reject("$.params.events", f"expected an array, got {json_type(events)}")
            return
        for i, event in enumerate(events):
            where = f"$.params.events[{i}]"
            if type(event) is not dict:
                out.reject(where, f"expected an object, got {json_type(event)}")
                continue
            component, what = event.get("component"), event.get("event")
            if type(component) is not str or type(what) is not str:
                out.reject(where, "an event names its component and event as text")
                continue
            if array_problem(component) or array_problem(what):
                out.reject(where, "text contains a NUL character")
                continue
            if not component or component.partition(":")[0] in self._system:
                continue
            at = ts
            if "ts" in event:
                try:
                    at = clock.from_number(event["ts"], "s", f"{where}.ts")
                    at = self.window.check(at, origin.received, f"{where}.ts")
                except DecodeError as exc:
                    out.reject(exc.path, exc.reason)
                    continue
            name = f"{component}.event"
            self._leaf(name, "event", what, where, device, at, origin, out)


def _printable(key: str) -> str:
    # Paths end up in the dead-letter table: no NUL, and a bounded length.
    key = key.replace("\x00", "\\0") or '""'
    return key if len(key) <= 64 else key[:64] + "..."
