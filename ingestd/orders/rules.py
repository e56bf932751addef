"""Rules from ``ingestd.rules`` and how each kind judges readings.

A judge sees the readings of one device for one rule, in time order, and
answers per reading: ``BAD`` (the condition holds), ``GOOD`` (back to
normal), ``HOLD`` (no change: inside a hysteresis band, or cumulative
state that cannot recover) or ``None`` (the reading says nothing, e.g. a
latitude still waiting for its longitude). Turning those answers into
incidents (minimum duration, open, close) is the dispatcher's job; judging
is all that happens here, so every kind is testable on its own.

Rule types and their ``params`` (schemas/oms-tables.md has the full table):

- ``threshold``: ``op threshold`` is bad; back to normal past
  ``hysteresis`` on the safe side.
- ``rate``: the change per minute between consecutive readings, judged
  like a threshold.
- ``excursion``: minutes out of ``[low, high]`` and degree-minutes summed
  over the binding; bad once ``max_minutes`` or ``max_degree_minutes`` is
  reached. Gaps longer than ``max_gap_s`` count only that long.
- ``geofence``: a position (``metric`` latitude, ``lon_metric``) outside a
  ``corridor`` (polyline, ``width_m`` either side) or ``polygon``.
- ``count``: ``count`` readings at or above ``g`` within ``window_s``;
  normal again once the window holds none.
- ``state``: a text value in ``states`` (a machine's ``fault``).
- ``stock``: shelf weight to units (``settle_s``, ``hysteresis`` in units);
  judged by :class:`StockLevel`, not as an incident.

Every rule may set ``min_duration_s``: the condition must hold that long,
in the readings' own time, before an incident opens.
"""

from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import orjson

BAD, GOOD, HOLD = 1, -1, 0

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}

# Which binding kinds an action can act for
ACTION_BINDINGS = {
    "order_update": ("shipment", "production", "stock"),
    "shipment_condition": ("shipment",),
    "service_ticket": ("shipment", "production"),
    "reroute": ("shipment",),
    "downtime": ("production",),
    "stock": ("stock",),
}

EARTH_M = 6_371_000.0


class RuleError(ValueError):
    """A rule row that cannot be used; it is skipped and logged."""


class Rule:
    """One row of ``ingestd.rules``, checked and ready to judge."""

    def __init__(
        self,
        id: str,
        metric: str,
        op: str | None,
        threshold: float | None,
        kind: str,
        rule_type: str,
        action: str,
        params: dict[str, Any],
        product: str | None,
    ) -> None:
        self.id = id
        self.metric = metric
        self.op = op
        self.threshold = threshold
        self.kind = kind
        self.rule_type = rule_type
        self.action = action
        self.params = params
        self.product = product
        self.bindings = ACTION_BINDINGS[action]
        self.min_duration_us = int(float(params.get("min_duration_s", 0)) * 1e6)
        self.metrics: tuple[str, ...] = (metric,)
        if rule_type == "geofence":
            self.metrics = (metric, _text(params, "lon_metric"))
        if (rule_type == "stock") != (action == "stock"):
            raise RuleError("stock rules and the stock action go together")
        self.judge()  # a malformed rule fails here, at load, not per reading

    @classmethod
    def from_row(cls, row: Any) -> Rule:
        params = row["params"]
        if isinstance(params, str):
            params = orjson.loads(params)
        if not isinstance(params, dict):
            raise RuleError(f"rule {row['id']}: params must be a JSON object")
        limit = row["threshold"]
        if limit is not None and not math.isfinite(limit):
            raise RuleError(f"rule {row['id']}: threshold must be a finite number")
        try:
            return cls(
                row["id"], row["metric"], row["op"], limit, row["kind"],
                row["rule_type"], row["action"], params, row["product"],
            )  # fmt: skip
        except (TypeError, AttributeError) as exc:  # a param of the wrong shape
            raise RuleError(f"rule {row['id']}: bad params: {exc}") from None

    @property
    def signature(self) -> tuple[Any, ...]:
        """What changes the rule's judgement; state is dropped when it does."""
        return (
            self.metric, self.op, self.threshold, self.kind, self.rule_type,
            self.action, orjson.dumps(self.params, option=orjson.OPT_SORT_KEYS),
            self.product,
        )  # fmt: skip

    def judge(self) -> Judge:
        """A fresh judge for one device under this rule."""
        maker = JUDGES.get(self.rule_type)
        if maker is None:
            raise RuleError(f"unknown rule_type {self.rule_type!r}")
        try:
            return maker(self)
        except (KeyError, TypeError, ValueError) as exc:
            raise RuleError(f"rule {self.id}: bad params: {exc}") from None


class Judge:
    """Answers BAD, GOOD, HOLD or None per reading; ``seen`` is the judged value."""

    seen: Any = None
    summarises = False  # True where ``summary`` can say something

    def step(self, metric: str, ts: int, value: Any) -> int | None:
        raise NotImplementedError

    def summary(self) -> dict[str, Any] | None:
        """What a shipment's condition update reports of this judge."""
        return None


class Limit:
    """``op threshold`` is bad; normal again past the hysteresis."""

    def __init__(self, op: str | None, threshold: float | None, band: float) -> None:
        if op not in OPS or threshold is None:
            raise ValueError("op and threshold are required")
        self.test = OPS[op]
        self.threshold = float(threshold)
        self.clear = self.threshold - band if op[0] == ">" else self.threshold + band

    def __call__(self, x: float) -> int:
        if self.test(x, self.threshold):
            return BAD
        return HOLD if self.test(x, self.clear) else GOOD


class Threshold(Judge):
    def __init__(self, rule: Rule) -> None:
        band = float(rule.params.get("hysteresis", 0.0))
        self.limit = Limit(rule.op, rule.threshold, band)

    def step(self, metric: str, ts: int, value: Any) -> int | None:
        if not _number(value):
            return None
        self.seen = value
        return self.limit(value)


class Rate(Judge):
    """Change per minute between one reading and the one before it."""

    def __init__(self, rule: Rule) -> None:
        band = float(rule.params.get("hysteresis", 0.0))
        self.limit = Limit(rule.op, rule.threshold, band)
        self.last: tuple[int, float] | None = None

    def step(self, metric: str, ts: int, value: Any) -> int | None:
        if not _number(value):
            return None
        last, self.last = self.last, (ts, value)
        if last is None or ts <= last[0]:
            return None
        self.seen = round((value - last[1]) * 60e6 / (ts - last[0]), 6)
        return self.limit(self.seen)


class Excursion(Judge):
    """Time and degree-time out of range, summed over the binding."""

    summarises = True

    def __init__(self, rule: Rule) -> None:
        p = rule.params
        self.low = float(p.get("low", -math.inf))
        self.high = float(p.get("high", math.inf))
        self.max_minutes = float(p.get("max_minutes", math.inf))
        self.max_dm = float(p.get("max_degree_minutes", math.inf))
        if math.isinf(self.max_minutes) and math.isinf(self.max_dm):
            raise ValueError("max_minutes or max_degree_minutes is required")
        self.max_gap_us = int(float(p.get("max_gap_s", 600)) * 1e6)
        self.minutes = 0.0
        self.degree_minutes = 0.0
        self.last: tuple[int, float] | None = None  # (ts, how far out of range)

    def step(self, metric: str, ts: int, value: Any) -> int | None:
        if not _number(value):
            return None
        excess = max(self.low - value, value - self.high, 0.0)
        if self.last is not None and ts > self.last[0] and self.last[1] > 0:
            span = min(ts - self.last[0], self.max_gap_us) / 60e6
            self.minutes += span
            self.degree_minutes += span * self.last[1]
        self.last = (ts, excess)
        self.seen = round(self.minutes, 3)
        if self.minutes >= self.max_minutes or self.degree_minutes >= self.max_dm:
            return BAD
        return HOLD

    def summary(self) -> dict[str, Any]:
        return {
            "minutes_out_of_range": round(self.minutes, 3),
            "degree_minutes": round(self.degree_minutes, 3),
        }


class Geofence(Judge):
    """Outside the planned corridor (or polygon) is bad."""

    summarises = True

    def __init__(self, rule: Rule) -> None:
        p = rule.params
        self.lat_metric, self.lon_metric = rule.metrics
        self.corridor = [(float(a), float(b)) for a, b in p.get("corridor", ())]
        self.polygon = [(float(a), float(b)) for a, b in p.get("polygon", ())]
        if len(self.corridor) < 2 and len(self.polygon) < 3:
            raise ValueError("a corridor of 2+ points or a polygon of 3+ is required")
        self.width = float(p.get("width_m", 1000.0))
        self.band = float(p.get("hysteresis_m", 0.0))
        self.fix: tuple[int, float | None, float | None] = (0, None, None)
        self.position: dict[str, Any] | None = None

    def step(self, metric: str, ts: int, value: Any) -> int | None:
        if not _number(value):
            return None
        at, lat, lon = self.fix
        if at != ts:
            lat = lon = None
        if metric == self.lat_metric:
            lat = value
        else:
            lon = value
        self.fix = (ts, lat, lon)
        if lat is None or lon is None:
            return None
        self.position = {"lat": lat, "lon": lon, "ts": ts}
        if self.polygon:
            inside = _in_polygon(lat, lon, self.polygon)
            self.seen = 0.0 if inside else 1.0
            return GOOD if inside else BAD
        distance = _to_polyline_m(lat, lon, self.corridor)
        self.seen = round(distance, 1)
        if distance > self.width:
            return BAD
        return GOOD if distance <= self.width - self.band else HOLD

    def summary(self) -> dict[str, Any] | None:
        return {"position": self.position} if self.position else None


class Count(Judge):
    """``count`` readings at or above ``g`` within ``window_s``."""

    def __init__(self, rule: Rule) -> None:
        p = rule.params
        self.g = float(p["g"])
        self.count = int(p["count"])
        self.window_us = int(float(p["window_s"]) * 1e6)
        self.events: deque[int] = deque()

    def step(self, metric: str, ts: int, value: Any) -> int | None:
        if not _number(value):
            return None
        events = self.events
        if value >= self.g:
            events.append(ts)
        while events and events[0] <= ts - self.window_us:
            events.popleft()
        self.seen = len(events)
        if len(events) >= self.count:
            return BAD
        return HOLD if events else GOOD


class State(Judge):
    """A text state in ``states`` is bad, any other text is normal."""

    def __init__(self, rule: Rule) -> None:
        states = rule.params["states"]
        if not isinstance(states, list):  # a string would be a set of letters
            raise ValueError("states is a list of texts")
        self.states = frozenset(str(s) for s in states)
        if not self.states:
            raise ValueError("states is empty")

    def step(self, metric: str, ts: int, value: Any) -> int | None:
        if type(value) is not str:
            return None
        self.seen = value
        return BAD if value in self.states else GOOD


class StockLevel(Judge):
    """Units on a shelf from its weight, debounced and with hysteresis.

    A new count is published only once the weight has said the same count
    for ``settle_s`` (a hand on the shelf, a box set down for a moment, is
    not a sale), and only when the weight moved more than half a unit plus
    ``hysteresis`` units from the published count (scale noise at a
    boundary does not flap). ``step`` answers BAD when a count settles.
    """

    def __init__(self, rule: Rule) -> None:
        p = rule.params
        self.settle_us = int(float(p.get("settle_s", 10.0)) * 1e6)
        self.band = 0.5 + float(p.get("hysteresis", 0.2))
        self.unit_weight = 0.0  # set from the binding by the dispatcher
        self.level: int | None = None
        self.weight = 0.0
        self.candidate: tuple[int, int] | None = None  # (units, since ts)
        self.settled_at = 0

    def step(self, metric: str, ts: int, value: Any) -> int | None:
        if not _number(value) or self.unit_weight <= 0:
            return None
        units = value / self.unit_weight
        if self.level is not None and abs(units - self.level) <= self.band:
            self.candidate = None
            return HOLD
        count = max(0, round(units))
        if self.candidate is None or self.candidate[0] != count:
            self.candidate = (count, ts)
        if ts - self.candidate[1] < self.settle_us:
            return HOLD
        self.level, self.weight, self.settled_at = count, value, self.candidate[1]
        self.candidate = None
        self.seen = count
        return BAD


JUDGES: dict[str, Callable[[Rule], Judge]] = {
    "threshold": Threshold,
    "rate": Rate,
    "excursion": Excursion,
    "geofence": Geofence,
    "count": Count,
    "state": State,
    "stock": StockLevel,
}


def _number(value: Any) -> bool:
    kind = type(value)
    return kind is float or kind is int


def _text(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise RuleError(f"params.{name} is required")
    return value


def _to_polyline_m(lat: float, lon: float, line: list[tuple[float, float]]) -> float:
    # Planar distance to each segment, in metres on a plane tangent at the
    # point's latitude (good to 0.1 % within 100 km); corridors are drawn
    # leg by leg, so a leg longer than a few hundred km should be split into
    # shorter ones. Each vertex is projected once, not once per leg it ends:
    # 3.5 against 5.7 µs a fix for a 4-point corridor.
    k = math.pi / 180 * EARTH_M
    c = math.cos(math.radians(lat))
    px, py = lon * k * c, lat * k
    best = math.inf
    points = [(vlon * k * c, vlat * k) for vlat, vlon in line]
    for (ax, ay), (bx, by) in pairwise(points):
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = 0.0 if length2 == 0 else ((px - ax) * dx + (py - ay) * dy) / length2
        t = min(1.0, max(0.0, t))
        best = min(best, math.hypot(px - ax - t * dx, py - ay - t * dy))
    return best


def _in_polygon(lat: float, lon: float, ring: list[tuple[float, float]]) -> bool:
    inside = False
    for (alat, alon), (blat, blon) in zip(ring, ring[1:] + ring[:1], strict=True):
        if (alat > lat) != (blat > lat):
            cross = alon + (lat - alat) * (blon - alon) / (blat - alat)
            if lon < cross:
                inside = not inside
    return inside
