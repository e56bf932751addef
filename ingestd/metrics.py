"""Prometheus metrics, served on the admin port.

Counters move once per flush or per connection event, never per reading on
the hot path: each update takes a lock in prometheus-client.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

registry = CollectorRegistry(auto_describe=True)

messages = Counter(
    "ingestd_messages",
    "Messages handled, by transport",
    ["transport"],
    registry=registry,
)
readings = Counter(
    "ingestd_readings_committed",
    "Readings in committed flushes (duplicates too)",
    registry=registry,
)
dead_letters = Counter(
    "ingestd_dead_letters",
    "Messages with rejected parts, kept as dead letters",
    registry=registry,
)
flushes = Counter("ingestd_flushes", "Committed flushes", registry=registry)
flush_failures = Counter(
    "ingestd_flush_failures",
    "Flush attempts that failed and were retried",
    registry=registry,
)
flush_seconds = Histogram(
    "ingestd_flush_seconds",
    "Time to write and commit one flush",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=registry,
)
flush_rows = Histogram(
    "ingestd_flush_rows",
    "Readings per flush",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000),
    registry=registry,
)
pending = Gauge(
    "ingestd_pending_readings",
    "Readings received, not yet committed",
    registry=registry,
)
pushback = Counter(
    "ingestd_pushback",
    "Times a transport pushed back on senders",
    ["transport"],
    registry=registry,
)
order_updates = Counter(
    "ingestd_order_updates",
    "Order updates written to the outbox",
    registry=registry,
)
dispatcher_dropped = Counter(
    "ingestd_dispatcher_overflow",
    "Readings the full dispatcher ring refused",
    registry=registry,
)
tls_refused = Counter(
    "ingestd_tls_refused",
    "TLS connections refused after the handshake, by reason",
    ["reason"],  # revoked, identity (no device in the certificate)
    registry=registry,
)
tls_wrong_identity = Counter(
    "ingestd_tls_wrong_identity",
    "Requests refused for writing as a device other than the certificate's",
    ["transport"],
    registry=registry,
)
