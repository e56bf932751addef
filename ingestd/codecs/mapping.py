"""Declarative field mapping per device type, applied after a codec.

A device type's mapping renames what a codec produced into the names the
order side uses, converts units (Fahrenheit to Celsius, scaling), and can
name the order a message belongs to from a payload field::

    [mappings.reefer]
    keep_unmapped = true

    [[mappings.reefer.fields]]
    path = "tempF"                      # the metric as the codec named it
    metric = "temperature"
    unit = "Cel"
    convert = "fahrenheit_to_celsius"

    [[mappings.reefer.fields]]
    path = "shipment"
    order = true                        # its value is the order id

A route opts in with ``mapping = "reefer"``. Conversions apply to numbers
only: a text value on a converted field is a reject naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec

from ..model import Origin
from .base import MAX_NAME, Codec, Decoded

CONVERSIONS: dict[str, Callable[[float], float]] = {
    "none": lambda v: v,
    "fahrenheit_to_celsius": lambda v: (v - 32.0) * 5.0 / 9.0,
    "celsius_to_fahrenheit": lambda v: v * 9.0 / 5.0 + 32.0,
    "kelvin_to_celsius": lambda v: v - 273.15,
    "celsius_to_kelvin": lambda v: v + 273.15,
}


class Field(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: str
    metric: str | None = None
    unit: str | None = None
    convert: Literal[
        "none", "fahrenheit_to_celsius", "celsius_to_fahrenheit",
        "kelvin_to_celsius", "celsius_to_kelvin",
    ] = "none"  # fmt: skip
    scale: float = 1.0
    offset: float = 0.0
    order: bool = False


class Mapping(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    fields: list[Field] = msgspec.field(default_factory=list)
    keep_unmapped: bool = True


def check(mapping: Mapping) -> str | None:
    """What is wrong with a mapping, as ``fields[i].key: reason``, or None."""
    seen: set[str] = set()
    for i, f in enumerate(mapping.fields):
        if f.path in seen:
            return f"fields[{i}].path: {f.path!r} is mapped twice"
        seen.add(f.path)
        if f.order and (f.metric or f.unit or f.convert != "none"):
            return f"fields[{i}].order: an order field has no metric, unit or convert"
        if f.metric is not None and not 0 < len(f.metric) <= MAX_NAME:
            return f"fields[{i}].metric: empty or longer than {MAX_NAME}"
        if f.scale == 0:
            return f"fields[{i}].scale: 0 would erase every value"
    return None


class MappedCodec:
    """A codec followed by a device type's mapping."""

    def __init__(self, codec: Codec, mapping: Mapping) -> None:
        self.inner = codec
        self.name = codec.name
        self.fields = {f.path: f for f in mapping.fields}
        self.keep_unmapped = mapping.keep_unmapped
        self._convert = {f.path: CONVERSIONS[f.convert] for f in mapping.fields}

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        self.inner.decode(payload, origin, out)
        kept = []
        order: str | None = None
        for r in out.readings:
            f = self.fields.get(r.metric)
            if f is None:
                if self.keep_unmapped:
                    kept.append(r)
                continue
            if f.order:
                if type(r.value) is str and r.value:
                    order = r.value
                else:
                    out.reject(f"$.{f.path}", "order id must be text")
                continue
            if f.convert != "none" or f.scale != 1.0 or f.offset != 0.0:
                if type(r.value) is not float:
                    out.reject(f"$.{f.path}", "conversion needs a number")
                    continue
                r.value = self._convert[f.path](r.value) * f.scale + f.offset
            if f.metric is not None:
                r.metric = f.metric
            if f.unit is not None:
                r.unit = f.unit
            kept.append(r)
        if order is not None:
            for r in kept:
                r.order = order
        out.readings[:] = kept
