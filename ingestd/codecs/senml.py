"""SenML (RFC 8428) in its JSON form.

A pack is an array of records; base fields (``bn``, ``bt``, ``bu``, ``bv``,
``bs``) carry forward until a later record changes them (sec. 4.1). A
resolved time below 2**28 is relative to receipt (sec. 4.5.3). Values are
``v`` (number), ``vs``, ``vb`` and ``vd`` (base64url bytes); a sum ``s``
becomes its own reading, metric ``<name>.sum``. A record with no value is
only a carrier of base fields. A field ending in ``_`` must be understood
(sec. 4.4): we understand none, so such a record is rejected.

Device and metric follow the project conventions: with a transport identity
the device is that identity and the metric is the record name ``n`` (the
unit when ``n`` is empty; with ``metric = "full"``, base name plus name, for
producers whose base name is an object path rather than a device). Without
one, the base name (trailing ``:`` or ``/`` removed) is the device and ``n``
the metric; with no base name, ``n`` is the device and the unit the metric.

LwM2M (OMA LwM2M 1.1 sec. 7.4.4, content formats senml+json and
senml+cbor) takes ``metric = "lwm2m"``: base name plus name is a resource
path ``/object/instance/resource[/instance]``, kept with its leading ``/``,
and the device is always the transport's identity (the CoAP registration
endpoint), never the payload. ``units`` attaches units that records do not
carry, such as those of an LwM2M object model: keys are metric names, and a
``*`` segment stands for any one ``/``-separated segment (``/3/0/7/*``); a
unit in the record (``u``, ``bu``) wins. The binary forms (``senml_cbor``,
SenML over MessagePack) resolve through the same ``resolve``, each record
first put in the JSON form's terms by ``binary_record``.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from .. import clock
from ..errors import DecodeError
from ..model import Origin, Reading
from .base import MAX_NAME, Decoded, json_type, parse_json

RELATIVE_LIMIT = 2**28  # sec. 4.5.3: smaller resolved times are relative
_NUMBER = (int, float)
_NUMERIC = frozenset(["bt", "bv", "bs", "v", "s", "t"])  # the fields read as numbers


class SenmlOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    metric: Literal["name", "full", "lwm2m"] = "name"
    units: dict[str, str] = msgspec.field(default_factory=dict)


class UnitTable:
    """Units a route attaches to metrics whose records carry none.

    Keys are metric names; a key segment ``*`` matches any one
    ``/``-separated segment, so ``/3/0/7/*`` covers every instance of
    resource 7. An exact key wins over patterns, patterns apply in order.
    """

    __slots__ = ("_exact", "_patterns")

    def __init__(self, units: dict[str, str]) -> None:
        self._exact = {k: u for k, u in units.items() if "*" not in k}
        self._patterns = [(k.split("/"), u) for k, u in units.items() if "*" in k]

    def get(self, metric: str) -> str | None:
        unit = self._exact.get(metric)
        if unit is not None or not self._patterns:
            return unit
        steps = metric.split("/")
        for pattern, unit in self._patterns:
            if len(pattern) == len(steps) and all(
                p == "*" or p == s for p, s in zip(pattern, steps, strict=True)
            ):
                return unit
        return None


class SenmlCodec:
    """SenML JSON packs, configured for one route."""

    name = "senml"

    def __init__(self, options: SenmlOptions, window: clock.Window) -> None:
        self.options = options
        self.window = window
        self._units = UnitTable(options.units) if options.units else None

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        pack = parse_json(payload)
        if type(pack) is not list:
            raise DecodeError("a SenML pack is an array of records", "$")
        metric = self.options.metric
        resolve(pack, origin, out, self.window, metric, self.name, units=self._units)
        if not out.readings and not out.rejects:
            raise DecodeError("no records with a value in pack", "$")


def resolve(
    pack: list[Any],
    origin: Origin,
    out: Decoded,
    window: clock.Window,
    metric_rule: str,
    format: str,
    units: UnitTable | None = None,
    relabel: Callable[[dict[Any, Any], str], dict[str, Any]] | None = None,
) -> None:
    """Resolve the records of a decoded pack (JSON or CBOR) into readings.

    ``relabel`` puts a record of a binary form in the JSON form's terms
    (``binary_record``); it raises ``DecodeError`` to reject the record.
    """
    bn, bt, bu, bv, bs = "", 0.0, None, 0.0, 0.0
    for i, record in enumerate(pack):
        path = f"$[{i}]"
        if type(record) is not dict:
            out.reject(path, "a SenML record is an object")
            continue
        try:
            if relabel is not None:
                record = relabel(record, path)
            # Base fields first: they apply to this record too (sec. 4.1)
            if "bn" in record:
                bn = _text(record["bn"], f"{path}.bn")
            if "bt" in record:
                bt = _number(record["bt"], f"{path}.bt")
            if "bu" in record:
                bu = _text(record["bu"], f"{path}.bu")
            if "bv" in record:
                bv = _number(record["bv"], f"{path}.bv")
            if "bs" in record:
                bs = _number(record["bs"], f"{path}.bs")
            for key in record:
                if type(key) is str and key.endswith("_"):
                    raise DecodeError(f"mandatory field {key!r} not understood", path)
            _record(
                record,
                path,
                bn,
                bt,
                bu,
                bv,
                bs,
                origin,
                out,
                window,
                metric_rule,
                format,
                units,
            )
        except DecodeError as exc:
            out.reject(exc.path, exc.reason)


def _record(
    record: dict[str, Any],
    path: str,
    bn: str,
    bt: float,
    bu: str | None,
    bv: float,
    bs: float,
    origin: Origin,
    out: Decoded,
    window: clock.Window,
    metric_rule: str,
    format: str,
    units: UnitTable | None,
) -> None:
    # The value: exactly one kind, or none for a base-only record
    kinds = [k for k in ("v", "vs", "vb", "vd") if k in record]
    if len(kinds) > 1:
        raise DecodeError(f"record has several values: {', '.join(kinds)}", path)
    has_sum = "s" in record
    if not kinds and not has_sum:
        return
    value: Any = None
    data: bytes | None = None
    if kinds:
        kind = kinds[0]
        raw = record[kind]
        where = f"{path}.{kind}"
        if kind == "v":
            value = float(_number(raw, where) + bv)
            if not math.isfinite(value):
                raise DecodeError("value is not finite", where)
        elif kind == "vs":
            value = _text(raw, where)
        elif kind == "vb":
            if type(raw) is not bool:
                raise DecodeError("vb must be a boolean", where)
            value = raw
        else:
            data = _data(raw, where)

    # Who and what
    n = _text(record.get("n", ""), f"{path}.n")
    unit = _text(record["u"], f"{path}.u") if "u" in record else bu
    device, metric = _names(bn, n, unit, origin.device, metric_rule, path)
    if unit is None and units is not None:
        unit = units.get(metric)

    # When
    t = bt + _number(record.get("t", 0), f"{path}.t")
    if abs(t) < RELATIVE_LIMIT:
        # Relative to receipt, up to 8.5 years either way: the window holds
        # it to what an absolute time may be (found by atheris)
        ts = window.check(
            origin.received + round(t * 1_000_000), origin.received, f"{path}.t"
        )
    else:
        # from_number: a finite time too large for a µs integer is a reject
        when = clock.from_number(t, "s", f"{path}.t")
        ts = window.check(when, origin.received, f"{path}.t")

    readings = out.readings
    received, transport = origin.received, origin.transport
    if kinds:
        readings.append(
            Reading(device, metric, ts, value, data, unit, received, transport, format)
        )
    if has_sum:
        total = float(_number(record["s"], f"{path}.s") + bs)
        if not math.isfinite(total):
            raise DecodeError("sum is not finite", f"{path}.s")
        readings.append(
            Reading(
                device,
                metric + ".sum",
                ts,
                total,
                None,
                unit,
                received,
                transport,
                format,
            )
        )


def _names(
    bn: str,
    n: str,
    unit: str | None,
    identity: str | None,
    metric_rule: str,
    path: str,
) -> tuple[str, str]:
    if metric_rule == "lwm2m":
        if identity is None:
            raise DecodeError(
                "no device id: LwM2M takes it from the registration endpoint", path
            )
        device, metric = identity, _resource_path(bn + n, path)
    elif identity is not None:
        device = identity
        metric = bn + n if metric_rule == "full" else n
        metric = metric or unit or "value"
    elif bn:
        device = bn.rstrip(":/")
        metric = n or unit or "value"
    elif n:
        device, metric = n, unit or "value"
    else:
        raise DecodeError("no device id: no transport identity, bn or n", path)
    if not device or len(device) > MAX_NAME or len(metric) > MAX_NAME:
        raise DecodeError("device id or metric name empty or too long", path)
    return device, metric


def _resource_path(name: str, path: str) -> str:
    # LwM2M 1.1 sec. 7.4.4: a value's name is /object/instance/resource[/ri]
    steps = name.removeprefix("/").split("/")
    if not 3 <= len(steps) <= 4 or not all(
        s.isascii() and s.isdigit() and len(s) <= 5 for s in steps
    ):
        raise DecodeError(f"not an LwM2M resource path: {name[:64]!r}", path)
    return "/" + "/".join(steps)


def binary_record(
    record: dict[Any, Any], path: str, labels: dict[int, str] | None = None
) -> dict[str, Any]:
    """A record of a binary form (CBOR, MessagePack) in the JSON form's terms.

    Integer keys are looked up in ``labels`` (the CBOR labels of RFC 8428
    sec. 6; an unknown one is dropped, as an unknown field is); other keys
    must be text. Binary forms carry NaN and infinities, which JSON cannot:
    such a number in a field read as a number is rejected here. Raises
    ``DecodeError`` naming the spot.
    """
    fields: dict[str, Any] = {}
    for key, value in record.items():
        if type(key) is str:
            name = key
        elif type(key) is int and labels is not None:
            label = labels.get(key)
            if label is None:
                continue
            name = label
        else:
            shown = repr(key)[:40]
            raise DecodeError(f"map key {shown} is not a SenML label", path)
        if name in fields:
            raise DecodeError(f"field {name!r} given twice", path)
        if name in _NUMERIC and type(value) is float and not math.isfinite(value):
            raise DecodeError("number is not finite", f"{path}.{name}")
        fields[name] = value
    return fields


def _number(value: Any, path: str) -> float:
    if type(value) not in _NUMBER:
        raise DecodeError(f"expected a number, got {json_type(value)}", path)
    return value  # type: ignore[no-any-return]


def _text(value: Any, path: str) -> str:
    if type(value) is not str:
        raise DecodeError(f"expected a string, got {json_type(value)}", path)
    if "\x00" in value:
        raise DecodeError("text contains a NUL character", path)
    return value


def _data(value: Any, path: str) -> bytes:
    if type(value) is bytes:  # CBOR carries vd as a byte string
        return value
    text = _text(value, path)
    try:
        # validate: urlsafe_b64decode alone drops characters outside the alphabet
        padded = text + "=" * (-len(text) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("vd is not base64url", path) from None
