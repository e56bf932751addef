"""The admin port: Prometheus metrics and health, for operators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import metrics
from .transports.http1 import Request


class AdminEndpoint:
    """``GET /metrics`` and ``GET /health`` (200 when healthy, else 503)."""

    def __init__(self, health: Callable[[], dict[str, Any]]) -> None:
        self.health = health

    def __call__(self, request: Request) -> None:
        path = request.url.split(b"?", 1)[0]
        if path == b"/metrics":
            request.answer(
                200,
                generate_latest(metrics.registry),
                content_type=CONTENT_TYPE_LATEST.encode(),
            )
        elif path in (b"/health", b"/healthz"):
            state = self.health()
            request.answer(200 if state["ok"] else 503, orjson.dumps(state))
        else:
            request.answer(404, b'{"error": "try /metrics or /health"}')
