"""Time normalization shared by every codec.

Every timestamp a device sends becomes integer microseconds since the Unix
epoch, UTC. A time that lands outside the plausible window is rejected with
the reason rather than clamped: a wrong clock must be visible.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from .errors import DecodeError

US_PER_S = 1_000_000
UNIT_SCALE = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def now_us() -> int:
    return time.time_ns() // 1000


class Window:
    """The plausible span for device times, re-evaluated per message."""

    __slots__ = ("earliest", "future")

    def __init__(self, earliest: int = 946_684_800_000_000, future_s: float = 86400):
        self.earliest = earliest
        self.future = int(future_s * US_PER_S)

    def check(self, ts: int, received: int, path: str) -> int:
        if ts < self.earliest or ts > received + self.future:
            raise DecodeError(f"timestamp {format_us(ts)} out of plausible range", path)
        return ts


def guess_unit(value: float) -> str:
    """The unit a bare epoch number most likely has, from its magnitude.

    Seconds reach 1e11 only in the year 5138, milliseconds 1e14 in 5138 too;
    anything between is placed, then checked against the plausible window.
    """
    a = abs(value)
    if a < 1e11:
        return "s"
    if a < 1e14:
        return "ms"
    if a < 1e17:
        return "us"
    return "ns"


def from_number(value: float | int, unit: str, path: str) -> int:
    """Epoch ``value`` in ``unit`` ('s', 'ms', 'us', 'ns' or 'auto') to µs."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodeError("timestamp must be a number or ISO 8601 text", path)
    if value != value or value in (float("inf"), float("-inf")):
        raise DecodeError("timestamp is not finite", path)
    if unit == "auto":
        unit = guess_unit(value)
    if isinstance(value, int):
        # Integers stay exact: nanoseconds since 1970 exceed a double's 2**53.
        return value // 1000 if unit == "ns" else value * int(UNIT_SCALE[unit])
    scaled = value * UNIT_SCALE[unit]
    if not -(2.0**62) < scaled < 2.0**62:  # beyond any datetime, even as µs
        raise DecodeError(f"timestamp {value!r} out of plausible range", path)
    return round(scaled)


def from_text(text: str, path: str) -> int:
    """ISO 8601 text to µs; text without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(_trim_fraction(text))
    except ValueError:
        raise DecodeError(f"not an ISO 8601 time: {text[:40]!r}", path) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * US_PER_S + delta.microseconds


def _trim_fraction(text: str) -> str:
    # fromisoformat takes at most 6 fractional digits; network servers send 9.
    dot = text.find(".")
    if dot < 0:
        return text
    end = dot + 1
    while end < len(text) and text[end].isdigit():
        end += 1
    if end - dot - 1 <= 6:
        return text
    return text[: dot + 7] + text[end:]


def parse(value: object, unit: str, path: str) -> int:
    """A timestamp as a device sent it (number or text) to µs."""
    if isinstance(value, str):
        return from_text(value, path)
    return from_number(value, unit, path)  # type: ignore[arg-type]


def format_us(ts: int) -> str:
    """µs to ISO 8601 text, for messages; years past 9999 are spelled out."""
    try:
        moment = _EPOCH + timedelta(microseconds=ts)
    except OverflowError:
        return f"year {ts // (31_556_952 * US_PER_S) + 1970}"
    return moment.isoformat().replace("+00:00", "Z")
