"""The logger hierarchy.

Lifecycle events at info, peer misbehaviour at warning (with the peer),
our own faults at error with the traceback. Nothing is logged per message at
normal levels: counters in ``ingestd.metrics`` carry the volume.
"""

from __future__ import annotations

import logging
import sys

root = logging.getLogger("ingestd")
mqtt = logging.getLogger("ingestd.mqtt")
http = logging.getLogger("ingestd.http")
coap = logging.getLogger("ingestd.coap")
pipeline = logging.getLogger("ingestd.pipeline")
orders = logging.getLogger("ingestd.orders")
security = logging.getLogger("ingestd.security")
storage = logging.getLogger("ingestd.storage")
amqp = logging.getLogger("ingestd.amqp")
nats = logging.getLogger("ingestd.nats")


def configure(level: str = "info") -> None:
    """Send ingestd's records to stderr in one greppable line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
