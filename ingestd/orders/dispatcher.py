"""From committed readings to order effects: ring, catch-up, incidents.

Readings reach the dispatcher after their flush commits. While it keeps up
they come through a fixed-size ring; when the ring is full, or at start,
the dispatcher stops taking from it and catches up from the readings table
by ingest sequence instead (``seq`` above the watermark minus a safety
margin, page by page), then switches back. The watermark is written in the
same transaction as the effects it covers, so a crash re-reads at most what
was not yet written, and effects are keyed (see ``effects``), so re-reading
is harmless.

State is kept per device and rule and is a function of the device's
readings in time order. A device seen for the first time (after a start or
a rule change), and a device whose reading arrives older than one already
evaluated (late data, an offline device's backlog), has its recent history
read back from the readings table and evaluated again in time order: the
effects already written come out with the same keys and are ignored, the
new ones are written with both when they happened and when they were found.
A close found at the next reading known then (a device's live readings came
first) is revised when a backlog brings an earlier normal reading: the
rebuilt state closes the incident there, under the same key, and the
database moves the close (see ``effects``). So incidents found one late
reading at a time end where the readings say and do not overlap. Likewise
an open ticket or downtime found to have begun earlier (the backlog came
after the live readings) takes the earlier start and the rebuilt key. A
duplicate reading (redelivery, the catch-up's margin) is recognised and
skipped without that.

An incident opens when a rule's judge has said BAD for ``min_duration_s``
and closes at GOOD; what opening and closing write depends on the action
(outbox row, ticket, reroute, downtime interval). Stock rules publish a
level instead. Shipment condition rules also feed one condition update per
order and ``condition_every_s``: latest values, excursion summary, position,
at-risk flag.

Evaluation shares the event loop with ingest, so it runs in slices of
``SLICE`` readings with a yield to the loop between them: a dispatch that
takes a whole ring, a catch-up page or a device's history never holds up
flushes and acknowledgements for longer than one slice. A pass judges
under the rules it started with; a reload meanwhile replaces the state
(it does not clear it under the pass), so the devices it touched are
rebuilt under the new rules on their next readings.

Known limits: history is read back ``history_s`` at most, and an incident
older than that is carried by the open tickets, downtime and breaches in
the database, but cumulative excursion sums are not. With ``--workers N``
each process evaluates the readings it ingested, so rules over a device
whose messages are split between workers see only part of its series;
shared MQTT subscriptions split by message, so run rules in one worker.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

import asyncpg

from .. import log, metrics
from ..model import Reading
from ..pipeline.bindings import _FAR, Binding, Bindings, _us
from .effects import Effects
from .rules import BAD, GOOD, Judge, Rule, RuleError, StockLevel

# (metric, ts µs, value, order stamped at ingest, seq or 0 from the ring)
Item = tuple[str, int, Any, str | None, int]

RULES = """
SELECT id, metric, op, threshold, kind, rule_type, action, params, product
FROM ingestd.rules WHERE enabled ORDER BY id
"""

SEQUENCE = (
    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM ingestd.readings_seq"
)

CATCH_UP = """
SELECT seq, device_id, metric, ts, value_num, value_text, value_bool, order_id
FROM ingestd.readings
WHERE seq > $1 AND metric = ANY($2::text[])
ORDER BY seq
LIMIT $3
"""

HISTORY = """
SELECT r.seq, r.device_id, r.metric, r.ts, r.value_num, r.value_text,
       r.value_bool, r.order_id
FROM unnest($1::text[], $2::timestamptz[]) AS k(device, since)
JOIN ingestd.readings r ON r.device_id = k.device AND r.ts >= k.since
WHERE r.metric = ANY($3::text[])
"""

# Incidents still open in the database: (rule, subject, device) -> start
OPEN_INCIDENTS = """
SELECT rule_id, order_id, device_id, opened_at FROM ingestd.service_tickets
WHERE closed_at IS NULL
UNION ALL
SELECT rule_id, order_id, device_id, started_at FROM ingestd.downtime
WHERE ended_at IS NULL
UNION ALL
SELECT rule, subject, device, occurred_at FROM (
    SELECT DISTINCT ON (1, 2, 3)
           payload->>'rule' AS rule,
           coalesce(payload->>'subject', order_id) AS subject,
           payload->>'device' AS device, payload->>'state' AS state, occurred_at
    FROM ingestd.order_updates
    WHERE payload ? 'state'
    ORDER BY 1, 2, 3, occurred_at DESC, id DESC
) newest
WHERE state = 'breach'
"""

TICKET_KINDS = {"service_ticket": "service", "reroute": "reroute"}
OPENED = {"service_ticket": "service_ticket_opened", "reroute": "reroute_requested"}
CLOSED = {"service_ticket": "service_ticket_closed", "reroute": "reroute_closed"}
RECENT = 256  # (metric, ts) per device kept to recognise duplicates

# Readings judged between two yields to the event loop. Judging costs about
# 10 µs a reading here (bench/test_bench_dispatch.py), so a slice holds the
# loop some 5 ms; a whole take in one go (19,130 readings at 25,000/s under
# load) held it 377 ms, in which no flush committed and no PUBACK left.
SLICE = 500
REBUILD_DEVICES = 100  # devices whose history one query reads back


class RuleIndex:
    """The rules that judge a metric, by binding kind and product.

    The filter (action fits the binding's kind, rule limited to a product)
    is the same for every reading of a kind of binding, so it is worked out
    once per combination instead of per reading and rule.
    """

    __slots__ = ("by_metric", "_fit")

    def __init__(self, by_metric: dict[str, list[Rule]]) -> None:
        self.by_metric = by_metric
        self._fit: dict[tuple[str, str, str | None], tuple[Rule, ...]] = {}

    def fit(self, metric: str, kind: str, product: str | None) -> tuple[Rule, ...]:
        key = (metric, kind, product)
        rules = self._fit.get(key)
        if rules is None:
            rules = self._fit[key] = tuple(
                rule
                for rule in self.by_metric.get(metric, ())
                if kind in rule.bindings
                and (rule.product is None or rule.product == product)
            )
        return rules


class Incident:
    """One rule's state for one device and subject (order, or SKU@location)."""

    __slots__ = ("judge", "open", "since", "opened", "peak", "cause")

    def __init__(self, judge: Judge) -> None:
        self.judge = judge
        self.open = False
        self.since: int | None = None  # first BAD of a pending incident
        self.opened = 0  # when the open incident began, µs
        self.peak: Any = None
        self.cause: Any = None


class DeviceState:
    __slots__ = ("incidents", "last", "recent", "covered")

    def __init__(self) -> None:
        self.incidents: dict[tuple[str, str], Incident] = {}
        self.last: dict[str, int] = {}  # metric -> newest ts evaluated
        self.recent: deque[tuple[str, int]] = deque(maxlen=RECENT)
        self.covered = 0  # readings up to this seq were read by a rebuild


class Condition:
    """A shipment's condition as its readings tell it."""

    __slots__ = ("values", "summary", "at_risk", "risks", "latest", "emitted")

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.at_risk = False
        self.risks: list[str] = []
        self.latest = 0
        self.emitted = -1  # the bucket of the last condition update


class Dispatcher:
    """Evaluates rules on committed readings; writes effects in bulk."""

    def __init__(self, pool: asyncpg.Pool, bindings: Bindings, cfg: Any) -> None:
        self.pool = pool
        self.bindings = bindings
        self.capacity = cfg.dispatcher_ring
        self.margin = cfg.catchup_margin
        self.page = cfg.catchup_page
        self.history_us = int(cfg.history_s * 1e6)
        self.every_us = int(cfg.condition_every_s * 1e6)
        self.mark_every = cfg.watermark_every_s
        self.rules: dict[str, Rule] = {}
        self.by_metric: dict[str, list[Rule]] = {}
        self._index = RuleIndex(self.by_metric)
        self.metrics: frozenset[str] = frozenset()
        self.watermark = 0
        self.written = 0
        self.dropped = 0
        self.catch_ups = 0
        self._ring: deque[Reading] = deque()
        self._accepting = False
        self._behind = True  # start by catching up
        self._devices: dict[str, DeviceState] = {}
        self._conditions: dict[str, Condition] = {}
        self._open_at: dict[tuple[str, str, str], int] | None = None
        self._bad_rules: set[tuple[str, str]] = set()
        self._marked = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- rules, open incidents, watermark --------------------------------

    async def load(self, conn: asyncpg.Connection) -> None:
        """Read the rules; at the first call also open incidents and watermark."""
        rules: dict[str, Rule] = {}
        for row in await conn.fetch(RULES):
            try:
                rules[row["id"]] = Rule.from_row(row)
            except (RuleError, KeyError, ValueError) as exc:
                if (row["id"], str(exc)) not in self._bad_rules:
                    self._bad_rules.add((row["id"], str(exc)))
                    log.orders.warning("rule %s skipped: %s", row["id"], exc)
        old = {k: r.signature for k, r in self.rules.items()}
        if old != {k: r.signature for k, r in rules.items()}:
            if self.rules:
                log.orders.info("rules changed; %d in force", len(rules))
            # Next readings rebuild state under the new rules. A new dict,
            # not clear(): a pass in progress keeps the one it started with
            self._devices = {}
        self.rules = rules
        by_metric: dict[str, list[Rule]] = {}
        for rule in rules.values():
            for metric in rule.metrics:
                by_metric.setdefault(metric, []).append(rule)
        self.by_metric = by_metric
        self._index = RuleIndex(by_metric)
        self.metrics = frozenset(by_metric)
        if self._open_at is None:
            self._open_at = {
                (rule, subject, device): _us(at)
                for rule, subject, device, at in await conn.fetch(OPEN_INCIDENTS)
            }
            mark = await conn.fetchval("SELECT seq FROM ingestd.dispatch_watermark")
            if mark is None:  # first start: evaluate from now on
                mark = await conn.fetchval(SEQUENCE)
                await conn.execute(
                    "INSERT INTO ingestd.dispatch_watermark (seq) VALUES ($1) "
                    "ON CONFLICT DO NOTHING",
                    mark,
                )
            self.watermark = mark

    # -- the ring ----------------------------------------------------------

    def offer(self, readings: list[Reading]) -> None:
        """Take the readings of a committed flush; never blocks."""
        metrics_ = self.metrics
        if not self._accepting or not metrics_:
            return
        ring = self._ring
        bindings = self.bindings
        for r in readings:
            if r.metric in metrics_ and (r.order is not None or r.device in bindings):
                if len(ring) >= self.capacity:
                    self._overflow()
                    return
                ring.append(r)
        if ring:
            self._wake.set()

    def _overflow(self) -> None:
        # What the ring holds and what comes next is read from the table
        self.dropped += 1
        metrics.dispatcher_dropped.inc()
        self._ring.clear()
        self._accepting = False
        self._behind = True
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Evaluate what the ring holds, then stop; a catch-up is left for later."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                if self._behind:
                    if self._closing:
                        return
                    await self._catch_up()
                else:
                    await self._dispatch()
                backoff = 0.1
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # State may hold readings whose effects were not written:
                # forget it and re-read from the watermark
                log.orders.warning("dispatch failed (%s); catching up in %.1fs",
                                   exc, backoff)  # fmt: skip
                self._devices = {}
                self._ring.clear()
                self._accepting = False
                self._behind = True
                if self._closing:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if self._closing and not self._ring and not self._behind:
                return
            if not self._ring and not self._behind and not self._closing:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.mark_every)
                except TimeoutError:
                    pass
            self._wake.clear()

    async def _dispatch(self) -> None:
        """Evaluate what the ring holds; move the watermark about once a second."""
        mark = None
        if time.monotonic() - self._marked >= self.mark_every:
            # Read before taking: every reading committed by now is in this
            # take or an earlier one; one committing meanwhile is in the next
            # take, or, after a crash, in the catch-up's margin.
            async with self.pool.acquire() as conn:
                mark = await conn.fetchval(SEQUENCE)
            self._marked = time.monotonic()
        if self._behind:
            return
        taken = list(self._ring)
        self._ring.clear()
        if not taken and mark is None:
            return
        by_device: dict[str, list[Item]] = {}
        for r in taken:
            value = r.value
            by_device.setdefault(r.device, []).append(
                (r.metric, r.ts, value, r.order, 0)
            )
        effects = Effects()
        await self._evaluate(by_device, effects)
        # The ring overflowed meanwhile: the effects stand, the mark does not
        await self._write(effects, None if self._behind else mark)

    async def _catch_up(self) -> None:
        """Evaluate readings from the table until caught up, then use the ring."""
        self._behind = False
        self._accepting = False
        self._ring.clear()
        self.catch_ups += 1
        start = max(0, self.watermark - self.margin)
        log.orders.info("catching up from reading seq %d", start)
        names = sorted(self.metrics)
        evaluated = 0
        while not self._closing:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(CATCH_UP, start, names, self.page)
            final = len(rows) < self.page
            if final and not self._accepting:
                # From here on the ring takes new commits. Read once more,
                # a margin back, for flushes that committed meanwhile.
                self._accepting = True
                start = max(0, start - self.margin)
                continue
            by_device: dict[str, list[Item]] = {}
            for seq, device, metric, ts, num, text, flag, order in rows:
                value = num if num is not None else text if text is not None else flag
                by_device.setdefault(device, []).append(
                    (metric, _us(ts), value, order, seq)
                )
            effects = Effects()
            await self._evaluate(by_device, effects)
            if rows:
                start = max(start, rows[-1]["seq"])
            await self._write(effects, max(self.watermark, start))
            evaluated += len(rows)
            if final:
                break
        log.orders.info("caught up at seq %d (%d readings read)", start, evaluated)

    async def _write(self, effects: Effects, mark: int | None) -> None:
        if mark is not None and mark <= self.watermark:
            mark = None
        if not effects and mark is None:
            return
        async with self.pool.acquire() as conn:
            written = await effects.write(conn, mark)
        if mark is not None:
            self.watermark = mark
        self.written += written
        metrics.order_updates.inc(written)

    # -- evaluation ----------------------------------------------------------

    async def _evaluate(
        self, by_device: dict[str, list[Item]], effects: Effects
    ) -> None:
        """Each device's readings in time order; late or new devices rebuilt.

        Yields to the event loop every ``SLICE`` readings. The rules and the
        device states are the ones in force when the pass began.
        """
        index, devices = self._index, self._devices
        rebuild: dict[str, int] = {}  # device -> first ts that needs history
        touched: set[str] = set()
        budget = SLICE
        for device, items in by_device.items():
            items.sort(key=_time_order)
            state = devices.get(device)
            if state is None:
                rebuild[device] = items[0][1]
                continue
            for item in items:
                metric, ts, _value, _order, seq = item
                if seq and seq <= state.covered:
                    continue
                last = state.last.get(metric)
                if last is not None and ts <= last:
                    if (metric, ts) in state.recent:
                        continue  # a duplicate
                    rebuild[device] = ts  # late: evaluate again in time order
                    break
                self._apply(device, state, item, effects, touched, index)
                budget -= 1
                if not budget:
                    await asyncio.sleep(0)
                    budget = SLICE
        if rebuild:
            await self._rebuild(rebuild, effects, touched, index, devices)
        self._conditions_out(touched, effects)

    async def _rebuild(
        self,
        starts: dict[str, int],
        effects: Effects,
        touched: set[str],
        index: RuleIndex,
        devices: dict[str, DeviceState],
    ) -> None:
        """Fresh state for the devices in ``starts`` from their history.

        ``REBUILD_DEVICES`` devices per query: after a start every device is
        new, and their whole history in one result would be held at once.
        """
        names = sorted(index.by_metric)
        order = sorted(starts)
        budget = SLICE
        for first in range(0, len(order), REBUILD_DEVICES):
            group = order[first : first + REBUILD_DEVICES]
            since = [
                datetime.fromtimestamp(
                    (starts[d] - self.history_us) / 1e6, timezone.utc
                )
                for d in group
            ]
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(HISTORY, group, since, names)
            history: dict[str, list[Item]] = {d: [] for d in group}
            for seq, device, metric, ts, num, text, flag, stamped in rows:
                value = num if num is not None else text if text is not None else flag
                history[device].append((metric, _us(ts), value, stamped, seq))
            for device, items in history.items():
                items.sort(key=_time_order)
                state = DeviceState()
                devices[device] = state
                for item in items:
                    self._apply(device, state, item, effects, touched, index)
                    if item[4] > state.covered:
                        state.covered = item[4]
                    budget -= 1
                    if not budget:
                        await asyncio.sleep(0)
                        budget = SLICE

    def _apply(
        self,
        device: str,
        state: DeviceState,
        item: Item,
        effects: Effects,
        touched: set[str],
        index: RuleIndex,
    ) -> None:
        metric, ts, value, stamped, _seq = item
        state.last[metric] = ts
        state.recent.append((metric, ts))
        binding = self.bindings.binding_for(device, ts)
        if binding is None:
            if stamped is None:
                return
            binding = Binding(-_FAR, _FAR, "shipment", stamped)  # from a mapping
        rules = index.fit(metric, binding.kind, binding.product)
        if not rules:
            return
        subject = binding.subject
        incidents = state.incidents
        for rule in rules:
            incident = incidents.get((rule.id, subject))
            if incident is None:
                incident = self._incident(rule, binding, device, ts)
                incidents[(rule.id, subject)] = incident
            judge = incident.judge
            verdict = judge.step(metric, ts, value)
            if verdict is None:
                continue
            if isinstance(judge, StockLevel):
                if verdict == BAD:
                    self._stock(rule, binding, device, judge, effects)
                continue
            self._judge(rule, binding, device, incident, ts, verdict, effects)
        if binding.kind == "shipment" and binding.order is not None:
            # Once per reading, after every judge took it (nothing else
            # steps them meanwhile): what judging rule by rule observed
            touched.add(binding.order)
            self._observe(binding.order, rules, subject, incidents, metric, ts, value)

    def _incident(self, rule: Rule, binding: Binding, device: str, ts: int) -> Incident:
        incident = Incident(rule.judge())
        if isinstance(incident.judge, StockLevel):
            incident.judge.unit_weight = binding.unit_weight or 0.0
        # An incident the database holds open, begun before this history
        start = (self._open_at or {}).get((rule.id, binding.subject, device))
        if start is not None and start <= ts:
            incident.open, incident.opened = True, start
            if rule.action == "shipment_condition" and binding.order is not None:
                self._risk(binding.order, rule.id)
        return incident

    def _judge(
        self,
        rule: Rule,
        binding: Binding,
        device: str,
        incident: Incident,
        ts: int,
        verdict: int,
        effects: Effects,
    ) -> None:
        seen = incident.judge.seen
        if verdict == BAD:
            if incident.open:
                incident.peak = _worse(rule, incident.peak, seen)
                return
            if incident.since is None:
                incident.since = ts
            if ts - incident.since < rule.min_duration_us:
                return
            incident.open, incident.opened = True, incident.since
            incident.since = None
            incident.peak = incident.cause = seen
            self._opened(rule, binding, device, incident, effects)
        elif verdict == GOOD:
            incident.since = None
            if incident.open:
                incident.open = False
                self._closed(rule, binding, device, incident, ts, effects)

    def _opened(
        self,
        rule: Rule,
        binding: Binding,
        device: str,
        incident: Incident,
        effects: Effects,
    ) -> None:
        order, subject, at = binding.order, binding.subject, incident.opened
        base = f"{rule.id}|{subject}|{device}|{at}"
        assert self._open_at is not None
        self._open_at[(rule.id, subject, device)] = at
        payload = self._payload(rule, binding, device, incident.cause, "breach")
        action = rule.action
        if action in ("order_update", "shipment_condition"):
            if action == "shipment_condition" and order is not None:
                payload["at_risk"] = True
                self._risk(order, rule.id)
            effects.update(order, rule.kind, payload, f"{base}|breach", at)
        elif action in TICKET_KINDS and order is not None:
            ticket = f"{base}|ticket"
            effects.open_ticket(
                ticket, TICKET_KINDS[action], order, device, rule.id, rule.kind, at
            )
            effects.update(order, OPENED[action], payload, f"{base}|opened", at,
                           ticket=ticket)  # fmt: skip
        elif action == "downtime" and order is not None:
            cause = incident.cause if isinstance(incident.cause, str) else rule.kind
            payload["cause"] = cause
            downtime = f"{base}|downtime"
            effects.start_downtime(downtime, order, device, rule.id, cause, at)
            effects.update(order, "downtime_started", payload, f"{base}|started", at,
                           downtime=downtime)  # fmt: skip

    def _closed(
        self,
        rule: Rule,
        binding: Binding,
        device: str,
        incident: Incident,
        ts: int,
        effects: Effects,
    ) -> None:
        order, subject = binding.order, binding.subject
        base = f"{rule.id}|{subject}|{device}|{incident.opened}"
        assert self._open_at is not None
        self._open_at.pop((rule.id, subject, device), None)
        payload = self._payload(rule, binding, device, incident.judge.seen, "recovered")
        payload["began"] = incident.opened
        payload["peak"] = incident.peak
        action = rule.action
        if action in ("order_update", "shipment_condition"):
            key = f"{rule.id}|{subject}|{device}|{ts}|recovered"
            effects.update(order, f"{rule.kind}_recovered", payload, key, ts)
        elif action in TICKET_KINDS and order is not None:
            ticket = f"{base}|ticket"
            peak = incident.peak if _numeric(incident.peak) else None
            effects.close_ticket(ticket, ts, peak)
            effects.update(order, CLOSED[action], payload, f"{base}|closed", ts,
                           ticket=ticket, closes=True)  # fmt: skip
        elif action == "downtime" and order is not None:
            downtime = f"{base}|downtime"
            effects.end_downtime(downtime, ts)
            effects.update(order, "downtime_ended", payload, f"{base}|ended", ts,
                           downtime=downtime, closes=True)  # fmt: skip

    def _stock(
        self, rule: Rule, binding: Binding, device: str, judge: StockLevel,
        effects: Effects,
    ) -> None:  # fmt: skip
        at, units = judge.settled_at, judge.level
        assert units is not None and binding.sku and binding.location
        key = f"{rule.id}|{binding.subject}|{device}|{at}"
        effects.stock_level(
            key, binding.sku, binding.location, device, units, judge.weight, at
        )
        payload = {
            "rule": rule.id, "device": device, "sku": binding.sku,
            "location": binding.location, "units": units,
            "weight_kg": judge.weight,
        }  # fmt: skip
        effects.update(binding.order, "stock_level", payload, f"{key}|level", at,
                       stock=key)  # fmt: skip

    @staticmethod
    def _payload(
        rule: Rule, binding: Binding, device: str, value: Any, state: str
    ) -> dict[str, Any]:
        payload = {
            "rule": rule.id, "rule_type": rule.rule_type, "device": device,
            "subject": binding.subject, "metric": rule.metric, "value": value,
            "state": state,
        }  # fmt: skip
        if rule.op is not None:
            payload["op"], payload["threshold"] = rule.op, rule.threshold
        if binding.line is not None:
            payload["order_line"] = binding.line
        return payload

    # -- shipment condition ------------------------------------------------

    def _observe(
        self,
        order: str,
        rules: tuple[Rule, ...],
        subject: str,
        incidents: dict[tuple[str, str], Incident],
        metric: str,
        ts: int,
        value: Any,
    ) -> None:
        condition = self._conditions.get(order)
        if condition is None:
            condition = self._conditions[order] = Condition()
        if ts >= condition.latest:
            condition.latest = ts
            condition.values[metric] = value
            for rule in rules:
                judge = incidents[(rule.id, subject)].judge
                if judge.summarises:  # most kinds have none: skip the call
                    summary = judge.summary()
                    if summary is not None:
                        condition.summary[rule.id] = summary

    def _risk(self, order: str, rule: str) -> None:
        condition = self._conditions.get(order)
        if condition is None:
            condition = self._conditions[order] = Condition()
        condition.at_risk = True
        if rule not in condition.risks:
            condition.risks.append(rule)

    def _conditions_out(self, orders: set[str], effects: Effects) -> None:
        """One condition update per order and ``condition_every_s`` of its time."""
        for order in sorted(orders):
            c = self._conditions[order]
            bucket = c.latest // self.every_us
            if bucket <= c.emitted:
                continue
            c.emitted = bucket
            payload: dict[str, Any] = {
                "values": dict(c.values), "at_risk": c.at_risk,
                "at_risk_rules": list(c.risks), "as_of": c.latest,
            }  # fmt: skip
            for rule, summary in c.summary.items():
                if "position" in summary:
                    payload["position"] = summary["position"]
                else:
                    payload.setdefault("excursions", {})[rule] = summary
            key = f"condition|{order}|{bucket}"
            effects.update(order, "shipment_condition", payload, key, c.latest)


def _time_order(item: Item) -> tuple[int, str]:
    return item[1], item[0]


def _numeric(value: Any) -> bool:
    return type(value) is float or type(value) is int


def _worse(rule: Rule, peak: Any, seen: Any) -> Any:
    if not (_numeric(peak) and _numeric(seen)):
        return peak
    return min(peak, seen) if (rule.op or ">")[0] == "<" else max(peak, seen)
