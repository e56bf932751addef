"""Generic JSON telemetry.

Accepted shapes, each anywhere in an array of documents (one or two levels
of array wrapping):

- a flat object ``{"temp": 4.1, "door": false}``, taken at receipt time or
  at the time under one of ``time_keys`` (unit guessed from magnitude);
- nested objects, flattened to dotted names (``{"env": {"t": 4}}`` gives
  ``env.t``), with ``{"v": ..., "ts": ...}`` leaves carrying their own time;
- ``{"ts": 1451649600512, "values": {...}}``, the ThingsBoard shape, whose
  ``ts`` is milliseconds as ThingsBoard defines it;
- with ``layout = "gateway"``, ``{"Device A": [...], "Device B": {...}}``.

A route may unwrap an envelope key, descend to a root path, ignore paths
that are not telemetry, take the device from a payload key (shared gateway
topics only) and attach units to metrics. Arrays become JSON values; nulls,
NUL characters and unplaceable times are rejects that name their path.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import msgspec

from .. import clock
from ..errors import DecodeError
from ..model import Origin
from .base import MAX_NAME, Decoded, json_type, parse_json

if os.environ.get("INGESTD_NO_EXTENSIONS") == "1":
    from ._walk import Walker
else:
    try:
        from ._walk_ext import Walker  # type: ignore[assignment]
    except ImportError:  # not built: the pure twin has the same behaviour
        from ._walk import Walker

MAX_ARRAY_NESTING = 3  # the document array and two wrappers around it


class JsonOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How one route reads generic JSON; every field has a working default."""

    time_keys: list[str] = msgspec.field(
        default_factory=lambda: ["ts", "timestamp", "time"]
    )
    time_unit: Literal["auto", "s", "ms", "us", "ns"] = "auto"
    values_key: str = "values"
    value_key: str = "v"
    device_key: str | None = None
    envelope: str | None = None
    root: str | None = None
    ignore: list[str] = msgspec.field(default_factory=list)
    attributes: list[str] = msgspec.field(default_factory=list)
    firmware_keys: list[str] = msgspec.field(
        default_factory=lambda: ["firmware", "fw_version", "firmware_version"]
    )
    layout: Literal["device", "gateway"] = "device"
    units: dict[str, str] = msgspec.field(default_factory=dict)


class JsonCodec:
    """Generic JSON, configured for one route."""

    name = "json"

    def __init__(self, options: JsonOptions, window: clock.Window) -> None:
        self.options = options
        self.window = window
        self._time_keys = tuple(options.time_keys)
        self._ignore = frozenset(options.ignore)
        self._firmware_keys = tuple(options.firmware_keys)
        self._skip = frozenset(
            [*options.time_keys, *options.attributes, *options.firmware_keys]
            + ([options.device_key] if options.device_key else [])
        )
        self._root = options.root.split(".") if options.root else []

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        doc = parse_json(payload)
        self.decode_document(doc, origin, out)

    def decode_document(self, doc: Any, origin: Origin, out: Decoded) -> None:
        """Fill ``out`` from a document already decoded to JSON's types.

        For formats that carry the same documents in another encoding
        (MessagePack): ``doc`` holds only dicts with text keys, lists, text,
        numbers, booleans and None. Raises ``DecodeError`` when nothing in
        it could be used and ``out`` is still empty.
        """
        walker = Walker(
            out,
            origin.received,
            origin.transport,
            self.name,
            self.options.value_key,
            self._time_keys,
            self.options.time_unit,
            self._ignore,
            self.options.units,
            self.window,
        )
        if self.options.layout == "gateway":
            self._gateway(doc, origin, walker, out)
        else:
            self._documents(doc, "$", origin.device, origin, walker, out, 0)
        if not out.readings and not out.rejects:
            raise DecodeError("no readings in payload", "$")

    def _gateway(self, doc: Any, origin: Origin, walker: Walker, out: Decoded) -> None:
        if type(doc) is not dict:
            raise DecodeError("expected an object keyed by device name", "$")
        for device, docs in doc.items():
            if not device or "\x00" in device or len(device) > MAX_NAME:
                shown = device[:64].replace("\x00", "\\0")
                out.reject(f"$.{shown}", "device name empty, too long or with NUL")
                continue
            self._documents(docs, f"$.{device}", device, origin, walker, out, 0)

    def _documents(
        self,
        doc: Any,
        path: str,
        device: str | None,
        origin: Origin,
        walker: Walker,
        out: Decoded,
        nesting: int,
    ) -> None:
        if type(doc) is list:
            if nesting >= MAX_ARRAY_NESTING:
                out.reject(path, "arrays nested too deep")
                return
            for i, item in enumerate(doc):
                self._documents(
                    item, f"{path}[{i}]", device, origin, walker, out, nesting + 1
                )
        elif type(doc) is dict:
            self._document(doc, path, device, origin, walker, out)
        else:
            out.reject(path, f"expected an object, got {json_type(doc)}")

    def _document(
        self,
        doc: dict[str, Any],
        path: str,
        device: str | None,
        origin: Origin,
        walker: Walker,
        out: Decoded,
    ) -> None:
        opts = self.options
        if opts.envelope is not None:
            if opts.envelope not in doc or type(doc[opts.envelope]) is not dict:
                out.reject(path, f"no object under envelope key {opts.envelope!r}")
                return
            doc = doc[opts.envelope]
            path = f"{path}.{opts.envelope}"

        # Which device: the transport's identity unless the route names a key
        if opts.device_key is not None and opts.device_key in doc:
            named = doc[opts.device_key]
            if type(named) is not str or not named or len(named) > MAX_NAME:
                out.reject(f"{path}.{opts.device_key}", "device id must be text")
                return
            device = named
        if device is None:
            out.reject(path, "no device id: no transport identity and none named")
            return

        # When: the document's own time, else receipt
        values = doc.get(opts.values_key)
        timed_values = type(values) is dict
        ts = origin.received
        for key in self._time_keys:
            if key in doc:
                unit = "ms" if timed_values and opts.time_unit == "auto" else None
                try:
                    ts = clock.parse(doc[key], unit or opts.time_unit, f"{path}.{key}")
                    ts = self.window.check(ts, origin.received, f"{path}.{key}")
                except DecodeError as exc:
                    out.reject(exc.path, exc.reason)
                    return
                break

        for key in self._firmware_keys:
            version = doc.get(key)
            if type(version) is str and "\x00" not in version:
                out.firmware[device] = version[:MAX_NAME]

        node: Any = doc
        for step in self._root:
            node = node.get(step) if type(node) is dict else None
        if type(node) is not dict:
            out.reject(path, f"no object at root {opts.root!r}")
            return
        walker.base = path if not self._root else f"{path}.{opts.root}"
        if timed_values:
            walker.base = f"{path}.{opts.values_key}"
            walker.leaves(values, "", device, ts, frozenset(), 0)
        else:
            walker.leaves(node, "", device, ts, self._skip, 0)
