"""Stub of the compiled twin of ``_walk`` (``ext/_walk.pyx``).

Same interface as ``ingestd.codecs._walk.Walker``; the attributes are typed
in C, so assigning a value of another type raises ``TypeError``.
"""

from typing import Any

from ..clock import Window
from .base import Decoded

DEBUG: bool
MAX_DEPTH: int

class Walker:
    base: str
    out: Decoded
    received: int
    transport: str
    format: str
    value_key: str
    time_keys: tuple[str, ...]
    time_unit: str
    ignore: frozenset[str]
    units: dict[str, str]
    window: Window

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
    ) -> None: ...
    def leaves(
        self,
        node: dict[str, Any],
        prefix: str,
        device: str,
        ts: int,
        skip: frozenset[str],
        depth: int,
    ) -> None: ...
    def leaf(self, name: str, value: Any, device: str, ts: int, depth: int) -> None: ...
