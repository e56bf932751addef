"""Topic patterns with named captures, e.g. ``devices/{device}/telemetry``.

A capture is one topic level (an MQTT ``+``). ``{device}`` is the
transport identity of the message; other names are kept for codecs.
"""

from __future__ import annotations

import re
from typing import Generic, TypeVar

T = TypeVar("T")
_CAPTURE = re.compile(r"\{(\w+)\}")
CACHE_LIMIT = 100_000  # distinct topics remembered before the cache restarts


class TopicRoutes(Generic[T]):
    """Matches topics against patterns, first match wins, results cached."""

    def __init__(self, patterns: list[tuple[str, T]]) -> None:
        self._routes = [(_compile(p), target) for p, target in patterns]
        self.filters = [_filter(p) for p, _ in patterns]
        self._cache: dict[str, tuple[T, str | None] | None] = {}

    def match(self, topic: str) -> tuple[T, str | None] | None:
        """(target, device) for ``topic``, or None if no route takes it."""
        try:
            return self._cache[topic]
        except KeyError:
            pass
        found = None
        for regex, target in self._routes:
            m = regex.fullmatch(topic)
            if m is not None:
                found = (target, m.groupdict().get("device"))
                break
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = found
        return found


def _compile(pattern: str) -> re.Pattern[str]:
    parts = _CAPTURE.split(pattern)
    regex = ""
    for i, part in enumerate(parts):
        regex += f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part)
    return re.compile(regex)


def _filter(pattern: str) -> str:
    return _CAPTURE.sub("+", pattern)
