"""Leaves of a JSON document to readings: the hot loop of the JSON codec.

This is the reference implementation. ``ext/_walk.pyx`` is its compiled
twin with the same behaviour; ``ingestd.codecs.json`` picks the twin unless
``INGESTD_NO_EXTENSIONS=1``. Change both together; ``tests/test_walk.py``
runs the two side by side.
"""

from __future__ import annotations

from typing import Any

from ..clock import Window, parse
from ..errors import DecodeError
from ..model import Reading
from .base import MAX_NAME, Decoded

MAX_DEPTH = 32  # nesting below a document's root, in objects


class Walker:
    """Flattens nested objects into dotted metric names.

    A leaf is a number, string, boolean or array (stored as JSON). An object
    holding ``value_key`` next to one of ``time_keys`` is a timed leaf: its
    value is taken at its own time (``{"v": 4234, "ts": 1584532083267}``).
    """

    __slots__ = (
        "base",
        "out",
        "received",
        "transport",
        "format",
        "value_key",
        "time_keys",
        "time_unit",
        "ignore",
        "units",
        "window",
    )

    def __init__(
        self,
        out: Decoded,
        received: int,
        transport: str,
        format: str,
        value_key: str,
        time_keys: tuple[str, ...],
        time_unit: str,
        ignore: frozenset[str],
        units: dict[str, str],
        window: Window,
    ) -> None:
        self.base = "$"  # path of the document being walked, for rejects
        self.out = out
        self.received = received
        self.transport = transport
        self.format = format
        self.value_key = value_key
        self.time_keys = time_keys
        self.time_unit = time_unit
        self.ignore = ignore
        self.units = units
        self.window = window

    def leaves(
        self,
        node: dict[str, Any],
        prefix: str,
        device: str,
        ts: int,
        skip: frozenset[str],
        depth: int,
    ) -> None:
        """Emit one reading per leaf of ``node``, names prefixed by ``prefix``."""
        for key, value in node.items():
            if key in skip:
                continue
            name = prefix + "." + key if prefix else key
            if not key or "\x00" in key:
                where = self.base + "." + (name.replace("\x00", "\\0") or '""')
                self.out.reject(where, "metric name empty or with a NUL character")
                continue
            self.leaf(name, value, device, ts, depth)

    def leaf(self, name: str, value: Any, device: str, ts: int, depth: int) -> None:
        """Emit ``value`` as metric ``name``, or descend if it is an object."""
        out = self.out
        if self.ignore and name in self.ignore:
            return
        kind = type(value)
        if kind is float or kind is bool:
            pass
        elif kind is int:
            value = float(value)
        elif kind is str:
            if "\x00" in value:
                out.reject(self.base + "." + name, "text contains a NUL character")
                return
        elif kind is dict:
            if depth >= MAX_DEPTH:
                out.reject(
                    self.base + "." + name, f"nested deeper than {MAX_DEPTH} levels"
                )
                return
            self._object(value, name, device, ts, depth + 1)
            return
        elif kind is list:
            problem = array_problem(value)
            if problem is not None:
                out.reject(self.base + "." + name, problem)
                return
        elif value is None:
            out.reject(self.base + "." + name, "null is not a value")
            return
        else:
            out.reject(
                self.base + "." + name, f"unsupported value type {kind.__name__}"
            )
            return
        if len(name) > MAX_NAME:
            out.reject(self.base + "." + name[:64] + "...", "metric name too long")
            return
        out.readings.append(
            Reading(
                device,
                name,
                ts,
                value,
                None,
                self.units.get(name) if self.units else None,
                self.received,
                self.transport,
                self.format,
            )
        )

    def _object(
        self, node: dict[str, Any], name: str, device: str, ts: int, depth: int
    ) -> None:
        # A timed leaf carries its own time next to its value.
        if self.value_key in node:
            for time_key in self.time_keys:
                if time_key in node:
                    path = self.base + "." + name + "." + time_key
                    try:
                        ts = parse(node[time_key], self.time_unit, path)
                        ts = self.window.check(ts, self.received, path)
                    except DecodeError as exc:
                        self.out.reject(exc.path, exc.reason)
                        return
                    self.leaf(name, node[self.value_key], device, ts, depth)
                    if len(node) > 2:  # siblings: readings at the same time
                        beside = frozenset((self.value_key, time_key))
                        self.leaves(node, name, device, ts, beside, depth)
                    return
        self.leaves(node, name, device, ts, _NOTHING, depth)


_NOTHING: frozenset[str] = frozenset()


def array_problem(value: Any) -> str | None:
    """Why a JSON array cannot be stored as one value, or None if it can.

    PostgreSQL refuses NUL in any text or key, and the JSON column is
    written by orjson, which stops at 254 levels; arrays also count toward
    MAX_DEPTH like objects do. Iterative: orjson reads arrays 1,024 deep,
    past Python's recursion limit.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            if "\x00" in item:
                return "text contains a NUL character"
        elif kind is list or kind is dict:
            if depth > MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            if kind is list:
                stack.extend((inner, depth + 1) for inner in item)
            else:
                for key, inner in item.items():
                    if "\x00" in key:
                        return "text contains a NUL character"
                    stack.append((inner, depth + 1))
    return None
