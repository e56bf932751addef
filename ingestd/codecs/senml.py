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
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import msgspec
import orjson

from .. import clock
from ..errors import DecodeError
from ..model import Origin, Reading
from .base import MAX_NAME, Decoded, json_type

RELATIVE_LIMIT = 2**28  # sec. 4.5.3: smaller resolved times are relative
_NUMBER = (int, float)


class SenmlOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    metric: Literal["name", "full"] = "name"


class SenmlCodec:
    """SenML JSON packs, configured for one route."""

    name = "senml"

    def __init__(self, options: SenmlOptions, window: clock.Window) -> None:
        self.options = options
        self.window = window

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        try:
            pack = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            reason = str(exc).split(":", 1)[0]
            raise DecodeError(f"invalid JSON: {reason}", f"byte {exc.pos}") from None
        if type(pack) is not list:
            raise DecodeError("a SenML pack is an array of records", "$")
        resolve(pack, origin, out, self.window, self.options.metric, self.name)
        if not out.readings and not out.rejects:
            raise DecodeError("no records with a value in pack", "$")


def resolve(
    pack: list[Any],
    origin: Origin,
    out: Decoded,
    window: clock.Window,
    metric_rule: str,
    format: str,
) -> None:
    """Resolve the records of a decoded pack (JSON or CBOR) into readings."""
    bn, bt, bu, bv, bs = "", 0.0, None, 0.0, 0.0
    for i, record in enumerate(pack):
        path = f"$[{i}]"
        if type(record) is not dict:
            out.reject(path, "a SenML record is an object")
            continue
        try:
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

    # When
    t = bt + _number(record.get("t", 0), f"{path}.t")
    if abs(t) < RELATIVE_LIMIT:
        ts = origin.received + round(t * 1_000_000)
    else:
        ts = window.check(round(t * 1_000_000), origin.received, f"{path}.t")

    readings = out.readings
    received, transport = origin.received, origin.transport
    if kinds:
        readings.append(
            Reading(device, metric, ts, value, data, unit, received, transport, format)
        )
    if has_sum:
        total = float(_number(record["s"], f"{path}.s") + bs)
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
    if identity is not None:
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
