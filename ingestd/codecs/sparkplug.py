"""Sparkplug B (Eclipse Sparkplug 3.0): protobuf payloads from edge nodes.

Topics are ``spBv1.0/{group}/{verb}/{edge node}[/{device}]``, read from
``origin.source`` (the route is ``spBv1.0/#``, so there is no capture). An
edge node is a gateway: the device of a reading is ``group/node`` for node
messages and ``group/node/device`` for device messages, whatever the route
captured. Payloads are parsed by the ``protobuf`` library with our own
definition of the payload (``sparkplug_b.proto``, written from chapter 6 of
the specification, compiled into ``_sparkplug_pb2``).

What each verb does:

- NBIRTH, DBIRTH: define the metrics of the node or device (name, alias,
  datatype, unit) for the DATA messages that follow, and carry current
  values, which are stored as readings like any DATA.
- NDATA, DDATA: readings. A metric given by alias alone is named through the
  table of the last birth; an alias no birth defined (ingestd restarted, and
  brokers do not retain births) is rejected naming the alias and the node.
  A Sparkplug host would then ask for a rebirth (NCMD ``Node Control/
  Rebirth``); a codec cannot publish, so the reject is all that happens.
- NDEATH: the node and every device seen under it go to ``out.offline``,
  unless its ``bdSeq`` differs from that of the node's current NBIRTH (spec
  tck-id-payloads-ndeath-bdseq): a stale will from an older session changes
  nothing. With no NBIRTH seen since start, the death is taken as current.
- DDEATH: the device goes to ``out.offline``.
- NCMD, DCMD, STATE: host traffic seen by a wildcard subscription, not
  telemetry. They produce nothing (no readings, no rejects, no error), and
  the transport acknowledges them as usual.

Sequence: every message of an edge node but NDEATH carries ``seq``, one more
than the previous, 255 wrapping to 0. A jump is rejected at ``$.seq`` naming
the lost range, and the message's readings are still stored; the same seq
twice in a row (a redelivered message) is not a gap. A message without seq
restarts the check.

Values: numbers become floats (integers by their datatype: Int8..Int64 from
two's complement in the low bits or sign-extended to the field, UInt8..UInt64
range-checked; past 2**53 a float rounds). ``Float`` is float32 on the wire:
it is stored as the shortest decimal that names the same float32 (12.1, not
12.100000381469727). NaN and infinities are rejected. Booleans and strings
(String, Text, UUID) as they are; DateTime as ISO 8601 text in UTC; Bytes and
File in ``data``. Arrays (Int8Array..DateTimeArray, packed little-endian in
``bytes_value``; BooleanArray as a little-endian uint32 count followed by
bits, most significant first; StringArray as NUL-terminated UTF-8) become
JSON lists. A DataSet becomes ``{"columns", "types", "rows"}``; a Template
instance ``{"template_ref", "version", "parameters", "metrics"}`` with its
members by name (bytes inside them as base64 text). Template definitions
(in births) are types, not values: skipped. A metric flagged ``is_null``
has no value to store and is skipped; one flagged ``is_transient`` is, by
the specification, not for historians: skipped unless ``transient``.
``bdSeq`` and the ``Node Control/*`` and ``Device Control/*`` metrics are
protocol, not telemetry: skipped unless ``protocol_metrics``.

Time: the metric's timestamp, else the payload's, in milliseconds as the
specification fixes; with neither, the receipt time. Units: the metric's
``unit_property`` property (``engUnit`` by default, as Ignition sends it),
else the one its birth gave, else the route's ``units`` option. A DATA
metric without a datatype takes the one its birth gave; with none known,
the value field decides (integers then read as unsigned).

Rejects name the spot as a path into the payload's fields, as in the
specification's JSON form: ``$.seq``, ``$.metrics[3].alias``,
``$.metrics[0].dataset_value.rows[2].elements[1]``; a bad topic is at
``topic``. The whole message fails (DecodeError) only when the topic is not
Sparkplug, the bytes are not a Sparkplug B payload, or a DATA message
carries no metrics.

State and its limits: birth tables, sequence and bdSeq live in the codec
instance, one per route, and die with the process. So a DATA by alias after
a restart is rejected until the node's next birth, and ingestd workers that
split one subscription (``$share``) do not see each other's births: route
Sparkplug to one worker. At most ``max_nodes`` edge nodes (least recently
heard from forgotten first) and ``max_devices`` devices per node are kept.
Left out: Sparkplug A, multi-part file metadata, metric properties other
than the unit, and the Quality property.
"""

from __future__ import annotations

import base64
import math
import struct
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import msgspec
from google.protobuf import message as protobuf_message

from .. import clock
from ..errors import DecodeError
from ..model import Origin, Reading
from . import _sparkplug_pb2 as pb
from .base import MAX_NAME, Decoded, check_text

NAMESPACE = "spBv1.0"
NODE_VERBS = frozenset({"NBIRTH", "NDATA", "NDEATH"})
DEVICE_VERBS = frozenset({"DBIRTH", "DDATA", "DDEATH"})
HOST_VERBS = frozenset({"NCMD", "DCMD", "STATE"})  # not telemetry
SEQ_MODULUS = 256
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Datatype numbers (spec sec. 6.4.16), named from the compiled enum
TYPE_NAMES: dict[int, str] = {
    v.number: v.name for v in pb.DESCRIPTOR.enum_types_by_name["DataType"].values
}
_T = {name: number for number, name in TYPE_NAMES.items()}
SIGNED_BITS = {_T["Int8"]: 8, _T["Int16"]: 16, _T["Int32"]: 32, _T["Int64"]: 64}
UNSIGNED_BITS = {_T["UInt8"]: 8, _T["UInt16"]: 16, _T["UInt32"]: 32, _T["UInt64"]: 64}
FLOAT, DOUBLE, BOOLEAN = _T["Float"], _T["Double"], _T["Boolean"]
DATETIME, DATASET, TEMPLATE = _T["DateTime"], _T["DataSet"], _T["Template"]
TEXT_TYPES = frozenset({_T["String"], _T["Text"], _T["UUID"]})
BYTES_TYPES = frozenset({_T["Bytes"], _T["File"]})
BOOLEAN_ARRAY, STRING_ARRAY = _T["BooleanArray"], _T["StringArray"]
DATETIME_ARRAY = _T["DateTimeArray"]
PACKED_ARRAYS = {  # struct codes of the little-endian packed arrays
    _T["Int8Array"]: "b", _T["Int16Array"]: "h", _T["Int32Array"]: "i",
    _T["Int64Array"]: "q", _T["UInt8Array"]: "B", _T["UInt16Array"]: "H",
    _T["UInt32Array"]: "I", _T["UInt64Array"]: "Q", _T["FloatArray"]: "f",
    _T["DoubleArray"]: "d", DATETIME_ARRAY: "q",
}  # fmt: skip
INTEGER_KINDS = ("int_value", "long_value")
FLOAT_KINDS = ("float_value", "double_value")


class SparkplugOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    protocol_metrics: bool = False  # store bdSeq, Node/Device Control/* too
    transient: bool = False  # store metrics flagged is_transient too
    unit_property: str = "engUnit"  # metric property naming its unit; "" = none
    units: dict[str, str] = msgspec.field(default_factory=dict)  # metric -> unit
    max_nodes: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    max_devices: Annotated[int, msgspec.Meta(ge=1)] = 1_000  # per edge node


class _Scope:
    """What the last birth of a node or device said about its metrics."""

    __slots__ = ("names", "types", "units")

    def __init__(self) -> None:
        self.names: dict[int, str] = {}  # alias -> name
        self.types: dict[str, int] = {}  # name -> datatype
        self.units: dict[str, str] = {}  # name -> unit


class _Node:
    """One edge node as this codec has heard it since start."""

    __slots__ = ("scope", "devices", "bdseq", "next_seq")

    def __init__(self) -> None:
        self.scope: _Scope | None = None  # None until its NBIRTH
        self.devices: dict[str, _Scope | None] = {}  # device id -> its DBIRTH
        self.bdseq: int | None = None
        self.next_seq: int | None = None


class SparkplugCodec:
    """Sparkplug B messages of one route, with the birth state they need."""

    name = "sparkplug"

    def __init__(self, options: SparkplugOptions, window: clock.Window) -> None:
        self.options = options
        self.window = window
        self._nodes: dict[str, _Node] = {}

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        topic = _topic(origin.source)
        if topic is None:
            return  # host traffic: see the module note
        verb, node_id, device = topic
        try:
            msg = pb.Payload.FromString(payload)
        except (protobuf_message.DecodeError, UnicodeDecodeError) as exc:
            # upb hands bad UTF-8 in proto2 strings over as bytes (checked per
            # field below); protobuf's pure-Python parser refuses the message
            raise DecodeError(f"not a Sparkplug B payload: {exc}", "$") from None
        node = self._node(node_id)

        if verb == "NDEATH":
            self._ndeath(msg, node_id, node, out)
            return
        self._sequence(msg, verb, node, out)
        if verb == "NBIRTH":
            node.scope, node.devices = _Scope(), dict.fromkeys(node.devices)
            node.bdseq = _bdseq(msg)
            self._metrics(msg, node_id, node.scope, True, origin, out)
        elif verb == "NDATA":
            self._data(msg, verb, node_id, node.scope, origin, out)
        elif verb == "DBIRTH":
            scope = _Scope()
            self._device(node, device, scope)
            self._metrics(msg, device, scope, True, origin, out)
        elif verb == "DDATA":
            if device not in node.devices:
                self._device(node, device, None)
            self._data(msg, verb, device, node.devices[device], origin, out)
        else:  # DDEATH
            node.devices.pop(device, None)
            out.offline.append(device)

    # -- state ----------------------------------------------------------

    def _node(self, node_id: str) -> _Node:
        # Most recently heard from last, so the first is the one to forget
        nodes = self._nodes
        node = nodes.pop(node_id, None)
        if node is None:
            node = _Node()
            if len(nodes) >= self.options.max_nodes:
                del nodes[next(iter(nodes))]
        nodes[node_id] = node
        return node

    def _device(self, node: _Node, device: str, scope: _Scope | None) -> None:
        devices = node.devices
        devices.pop(device, None)
        if len(devices) >= self.options.max_devices:
            del devices[next(iter(devices))]
        devices[device] = scope

    def _sequence(self, msg: Any, verb: str, node: _Node, out: Decoded) -> None:
        if not msg.HasField("seq"):
            node.next_seq = None
            return
        seq = msg.seq
        if seq >= SEQ_MODULUS:
            out.reject("$.seq", f"seq {seq} outside 0..255")
            node.next_seq = None
            return
        expected = node.next_seq
        if verb != "NBIRTH" and expected is not None and seq != expected:
            lost = (seq - expected) % SEQ_MODULUS
            if lost == SEQ_MODULUS - 1:
                return  # the previous message again: redelivered, not lost
            last = (seq - 1) % SEQ_MODULUS
            span = f"seq {expected}" if lost == 1 else f"seq {expected}..{last}"
            out.reject(
                "$.seq",
                f"sequence gap: expected seq {expected}, got {seq}; {lost} "
                f"message(s) lost ({span}); a Sparkplug host would request a "
                "rebirth (NCMD Node Control/Rebirth), which ingestd does not send",
            )
        node.next_seq = (seq + 1) % SEQ_MODULUS

    def _ndeath(self, msg: Any, node_id: str, node: _Node, out: Decoded) -> None:
        bdseq = _bdseq(msg)
        if node.bdseq is not None and bdseq is not None and bdseq != node.bdseq:
            return  # the will of an older session: the node is still online
        out.offline.append(node_id)
        out.offline.extend(node.devices)
        del self._nodes[node_id]

    # -- metrics --------------------------------------------------------

    def _data(
        self,
        msg: Any,
        verb: str,
        device: str,
        scope: _Scope | None,
        origin: Origin,
        out: Decoded,
    ) -> None:
        if not msg.metrics:
            raise DecodeError(f"{verb} carries no metrics", "$.metrics")
        self._metrics(msg, device, scope, False, origin, out)

    def _metrics(
        self,
        msg: Any,
        device: str,
        scope: _Scope | None,
        birth: bool,
        origin: Origin,
        out: Decoded,
    ) -> None:
        options = self.options
        received, transport, fmt = origin.received, origin.transport, self.name
        payload_ts: int | None = None  # µs, once a metric needed it
        payload_bad = False
        for i, metric in enumerate(msg.metrics):
            path = f"$.metrics[{i}]"
            try:
                name = _name(metric, scope, birth, device, path)
                datatype = metric.datatype if metric.HasField("datatype") else 0
                if birth and scope is not None:
                    _define(metric, name, datatype, scope, path, options, out)
                elif not datatype and scope is not None:
                    datatype = scope.types.get(name, 0)
                if _skipped(metric, name, options):
                    continue
                unit = _unit(metric, name, scope, path, options)
                value, data = _metric_value(metric, datatype, path)

                # When: the metric's own time, else the payload's
                if metric.HasField("timestamp"):
                    ts = self._ms(metric.timestamp, origin, f"{path}.timestamp")
                else:
                    if payload_ts is None and not payload_bad:
                        try:
                            payload_ts = self._payload_ms(msg, origin)
                        except DecodeError as exc:
                            # One reject for every metric that leans on it
                            payload_bad = True
                            out.reject(exc.path, exc.reason)
                    if payload_ts is None:
                        continue
                    ts = payload_ts
            except DecodeError as exc:
                out.reject(exc.path, exc.reason)
                continue
            out.readings.append(
                Reading(device, name, ts, value, data, unit, received, transport, fmt)
            )

    def _payload_ms(self, msg: Any, origin: Origin) -> int:
        if not msg.HasField("timestamp"):
            return origin.received
        return self._ms(msg.timestamp, origin, "$.timestamp")

    def _ms(self, ms: int, origin: Origin, path: str) -> int:
        return self.window.check(ms * 1000, origin.received, path)


# -- the topic ------------------------------------------------------------


def _topic(topic: str) -> tuple[str, str, str] | None:
    """(verb, node id, device id) of a telemetry topic; None for host traffic.

    The device id is the node id for node verbs.
    """
    parts = topic.split("/")
    if parts[0] == "STATE" or (len(parts) > 1 and parts[1] == "STATE"):
        return None  # host application state, 2.2 and 3.0 forms
    if parts[0] != NAMESPACE or len(parts) < 4:
        raise DecodeError(
            f"not a Sparkplug B topic ({NAMESPACE}/group/verb/node[/device])",
            "topic",
        )
    verb = parts[2]
    if verb in HOST_VERBS:
        return None
    if verb in NODE_VERBS:
        levels = 4
    elif verb in DEVICE_VERBS:
        levels = 5
    else:
        raise DecodeError(f"unknown Sparkplug verb {verb[:20]!r}", "topic")
    if len(parts) != levels or not all(parts):
        raise DecodeError(
            f"{verb} topic must be {NAMESPACE}/group/{verb}/node"
            + ("/device" if levels == 5 else ""),
            "topic",
        )
    node_id = f"{parts[1]}/{parts[3]}"
    device = node_id if levels == 4 else f"{node_id}/{parts[4]}"
    problem = check_text(device, "topic")
    if problem is None and len(device) > MAX_NAME:
        problem = f"device id longer than {MAX_NAME} characters"
    if problem is not None:
        raise DecodeError(problem, "topic")
    return verb, node_id, device


# -- one metric -----------------------------------------------------------


def _name(
    metric: Any, scope: _Scope | None, birth: bool, device: str, path: str
) -> str:
    if metric.HasField("name"):
        return _text(metric.name, f"{path}.name", name=True)
    if birth:
        raise DecodeError("a birth metric needs a name", f"{path}.name")
    if not metric.HasField("alias"):
        raise DecodeError("metric has neither name nor alias", path)
    alias = metric.alias
    if scope is None:
        raise DecodeError(
            f"alias {alias} unknown: no birth of {device} in force (none seen "
            "since ingestd started, or voided by a newer NBIRTH); a Sparkplug "
            "host would request a rebirth (NCMD Node Control/Rebirth), which "
            "ingestd does not send",
            f"{path}.alias",
        )
    name = scope.names.get(alias)
    if name is None:
        raise DecodeError(
            f"alias {alias} is not in the last birth of {device}",
            f"{path}.alias",
        )
    return name


def _define(
    metric: Any,
    name: str,
    datatype: int,
    scope: _Scope,
    path: str,
    options: SparkplugOptions,
    out: Decoded,
) -> None:
    # Recorded even when the value turns out unusable: the definition holds
    if metric.HasField("alias"):
        alias = metric.alias
        known = scope.names.get(alias)
        if known is not None and known != name:
            out.reject(
                f"{path}.alias", f"alias {alias} already names {known!r} in this birth"
            )
        else:
            scope.names[alias] = name
    if datatype:
        scope.types[name] = datatype
    unit = _property_unit(metric, path, options)
    if unit is not None:
        scope.units[name] = unit


def _skipped(metric: Any, name: str, options: SparkplugOptions) -> bool:
    if metric.is_null:
        return True
    if metric.is_transient and not options.transient:
        return True
    if not options.protocol_metrics and (
        name == "bdSeq"
        or name.startswith("Node Control/")
        or name.startswith("Device Control/")
    ):
        return True
    kind = metric.WhichOneof("value")
    return kind == "template_value" and bool(metric.template_value.is_definition)


def _unit(
    metric: Any,
    name: str,
    scope: _Scope | None,
    path: str,
    options: SparkplugOptions,
) -> str | None:
    unit = _property_unit(metric, path, options)
    if unit is None and scope is not None:
        unit = scope.units.get(name)
    if unit is None:
        unit = options.units.get(name)
    return unit


def _property_unit(metric: Any, path: str, options: SparkplugOptions) -> str | None:
    key = options.unit_property
    if not key or not metric.HasField("properties"):
        return None
    props = metric.properties
    for i, (k, v) in enumerate(zip(props.keys, props.values, strict=False)):
        if k == key and v.WhichOneof("value") == "string_value":
            return _text(v.string_value, f"{path}.properties.values[{i}]")
    return None


def _bdseq(msg: Any) -> int | None:
    for metric in msg.metrics:
        if metric.name == "bdSeq":
            kind = metric.WhichOneof("value")
            if kind in INTEGER_KINDS:
                return int(getattr(metric, kind))
    return None


def _metric_value(metric: Any, datatype: int, path: str) -> tuple[Any, bytes | None]:
    """(value, data) of a reading: numbers as floats, opaque bytes as data."""
    kind = metric.WhichOneof("value")
    if kind is None:
        raise DecodeError("metric has no value and is not flagged is_null", path)
    if kind == "bytes_value" and (datatype in BYTES_TYPES or not datatype):
        return None, metric.bytes_value
    value = _value(metric, kind, datatype, path)
    if type(value) is int:
        value = float(value)
    return value, None


def _value(holder: Any, kind: str | None, datatype: int, path: str) -> Any:
    """The value in ``holder``'s oneof field ``kind``, read as ``datatype``.

    Serves metrics, DataSet cells, template parameters and members alike;
    integers stay ``int`` here (JSON keeps them exact inside lists and
    objects), bytes inside JSON become base64 text.
    """
    if kind is None:
        return None
    if datatype and datatype not in TYPE_NAMES:
        raise DecodeError(f"unknown datatype {datatype}", path)
    raw = getattr(holder, kind)
    if kind in INTEGER_KINDS:
        if datatype == DATETIME:
            return _datetime(raw, path)
        if not datatype or datatype in SIGNED_BITS or datatype in UNSIGNED_BITS:
            return _integer(raw, datatype, path)
    elif kind in FLOAT_KINDS:
        if not datatype or datatype in (FLOAT, DOUBLE):
            return _finite(_single(raw) if kind == "float_value" else raw, path)
    elif kind == "boolean_value":
        if not datatype or datatype == BOOLEAN:
            return raw
    elif kind == "string_value":
        if not datatype or datatype in TEXT_TYPES:
            return _text(raw, path)
    elif kind == "bytes_value":
        if datatype in PACKED_ARRAYS or datatype in (BOOLEAN_ARRAY, STRING_ARRAY):
            return _array(raw, datatype, path)
        if not datatype or datatype in BYTES_TYPES:
            return base64.b64encode(raw).decode("ascii")
    elif kind == "dataset_value":
        if not datatype or datatype == DATASET:
            return _dataset(raw, f"{path}.dataset_value")
    elif kind == "template_value":
        if not datatype or datatype == TEMPLATE:
            return _template(raw, f"{path}.template_value")
    else:
        raise DecodeError(f"{kind} is a private extension ingestd cannot read", path)
    raise DecodeError(f"datatype {TYPE_NAMES[datatype]} does not match {kind}", path)


def _integer(raw: int, datatype: int, path: str) -> int:
    bits = SIGNED_BITS.get(datatype)
    if bits is not None:
        if raw < 1 << (bits - 1):
            return raw
        # Two's complement in the type's own width, or sign-extended to the
        # 32- or 64-bit wire field: writers differ (the spec names only the
        # field), both mean the same number.
        for width in (bits, 32, 64):
            if width >= bits and (1 << width) - (1 << (bits - 1)) <= raw < 1 << width:
                return raw - (1 << width)
    else:
        bits = UNSIGNED_BITS.get(datatype, 64)
        if raw < 1 << bits:
            return raw
    raise DecodeError(f"{raw} out of range for {TYPE_NAMES[datatype]}", path)


def _single(value: float) -> float:
    """The shortest decimal naming the same float32 as ``value``."""
    if not math.isfinite(value):
        return value
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == packed:
            return short
    return value  # unreachable: 9 digits always round-trip a float32


def _finite(value: float, path: str) -> float:
    if not math.isfinite(value):
        raise DecodeError(f"value {value} is not a finite number", path)
    return value


def _datetime(ms: int, path: str) -> str:
    try:
        moment = _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise DecodeError(f"DateTime {ms} ms is past the year 9999", path) from None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: Any, path: str, name: bool = False) -> str:
    if type(value) is not str:  # protobuf hands proto2 bad UTF-8 over as bytes
        raise DecodeError("text is not valid UTF-8", path)
    problem = check_text(value, "text")
    if problem is not None:
        raise DecodeError(problem, path)
    if name and not 0 < len(value) <= MAX_NAME:
        raise DecodeError(f"name empty or longer than {MAX_NAME} characters", path)
    return value


def _array(raw: bytes, datatype: int, path: str) -> list[Any]:
    name = TYPE_NAMES[datatype]
    if datatype == BOOLEAN_ARRAY:
        if len(raw) < 4:
            raise DecodeError(f"{name} shorter than its 4-byte count", path)
        count = int.from_bytes(raw[:4], "little")
        if len(raw) - 4 != (count + 7) // 8:
            raise DecodeError(
                f"{name} of {count} values needs {(count + 7) // 8} bytes "
                f"after its count, has {len(raw) - 4}",
                path,
            )
        return [bool(raw[4 + i // 8] >> (7 - i % 8) & 1) for i in range(count)]
    if datatype == STRING_ARRAY:
        if not raw:
            return []
        if raw[-1] != 0:
            raise DecodeError(f"{name} does not end with a NUL", path)
        try:
            return [s.decode() for s in raw[:-1].split(b"\x00")]
        except UnicodeDecodeError as exc:
            raise DecodeError(
                f"{name} is not UTF-8 at byte {exc.start}", path
            ) from None
    code = PACKED_ARRAYS[datatype]
    size = struct.calcsize(code)
    if len(raw) % size:
        raise DecodeError(
            f"{name} of {len(raw)} bytes is not a whole number of {size}-byte items",
            path,
        )
    items = list(struct.unpack(f"<{len(raw) // size}{code}", raw))
    if code == "f":
        return [_finite(_single(v), path) for v in items]
    if code == "d":
        return [_finite(v, path) for v in items]
    if datatype == DATETIME_ARRAY:
        return [_datetime(v, path) for v in items]
    return items


def _dataset(ds: Any, path: str) -> dict[str, Any]:
    columns = [_text(c, f"{path}.columns[{i}]") for i, c in enumerate(ds.columns)]
    types = list(ds.types)
    width = ds.num_of_columns if ds.HasField("num_of_columns") else len(columns)
    if not width == len(columns) == len(types):
        raise DecodeError(
            f"DataSet has {width} columns, {len(columns)} names, {len(types)} types",
            path,
        )
    for i, t in enumerate(types):
        if t not in TYPE_NAMES:
            raise DecodeError(f"unknown datatype {t}", f"{path}.types[{i}]")
    rows = []
    for r, row in enumerate(ds.rows):
        where = f"{path}.rows[{r}]"
        if len(row.elements) != width:
            raise DecodeError(f"row has {len(row.elements)} of {width} cells", where)
        rows.append(
            [
                _value(cell, cell.WhichOneof("value"), t, f"{where}.elements[{c}]")
                for c, (cell, t) in enumerate(zip(row.elements, types, strict=True))
            ]
        )
    return {"columns": columns, "types": [TYPE_NAMES[t] for t in types], "rows": rows}


def _template(template: Any, path: str) -> dict[str, Any]:
    if template.is_definition:
        raise DecodeError("a template definition is not a value", path)
    doc: dict[str, Any] = {}
    if template.HasField("template_ref"):
        doc["template_ref"] = _text(template.template_ref, f"{path}.template_ref")
    if template.HasField("version"):
        doc["version"] = _text(template.version, f"{path}.version")
    parameters: dict[str, Any] = {}
    for i, p in enumerate(template.parameters):
        where = f"{path}.parameters[{i}]"
        name = _text(p.name, f"{where}.name", name=True)
        parameters[name] = _value(p, p.WhichOneof("value"), p.type, where)
    members: dict[str, Any] = {}
    for i, m in enumerate(template.metrics):
        where = f"{path}.metrics[{i}]"
        name = _text(m.name, f"{where}.name", name=True)
        kind = None if m.is_null else m.WhichOneof("value")
        members[name] = _value(m, kind, m.datatype, where)
    doc["parameters"] = parameters
    doc["metrics"] = members
    return doc
