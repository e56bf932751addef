"""Topic patterns with named captures, e.g. ``devices/{device}/telemetry``.

A capture ``{name}`` is one topic level (an MQTT ``+``); ``{name...}`` is
the rest of the topic, slashes included (an MQTT ``#``, last only), for
Zigbee2MQTT friendly names such as ``zigbee2mqtt/hall/lamp``. ``{device}``
is the transport identity of the message. Buses that separate levels with
``.`` (AMQP routing keys, NATS subjects) pass their separator.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Mapping as Headers
from typing import Any, Generic, Protocol, TypeVar

from ..clock import Window
from ..codecs import catalog
from ..codecs.base import MAX_NAME, Codec, Decoded
from ..codecs.mapping import Mapping
from ..errors import NoRoute, PayloadTooLarge
from ..model import Origin

T = TypeVar("T")
_CAPTURE = re.compile(r"\{(\w+)(\.\.\.)?\}")
CACHE_LIMIT = 100_000  # distinct topics remembered before the cache restarts


class TopicRoutes(Generic[T]):
    """Matches topics against patterns in order; results cached per topic."""

    def __init__(
        self,
        patterns: list[tuple[str, T]],
        separator: str = "/",
        one_level: str = "+",
        rest: str = "#",
    ) -> None:
        self.separator = separator
        self._routes = [(_compile(p, separator), target) for p, target in patterns]
        filters = [_filter(p, one_level, rest) for p, _ in patterns]
        self.filters = list(dict.fromkeys(filters))  # each once, in order
        self._cache: dict[str, list[tuple[T, str | None]]] = {}

    def match_all(self, topic: str) -> list[tuple[T, str | None]]:
        """Every (target, device) whose pattern takes ``topic``, in order."""
        try:
            return self._cache[topic]
        except KeyError:
            pass
        found = []
        for regex, target in self._routes:
            m = regex.fullmatch(topic)
            if m is not None:
                found.append((target, m.groupdict().get("device")))
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = found
        return found

    def match(self, topic: str) -> tuple[T, str | None] | None:
        """The first (target, device) for ``topic``, or None."""
        found = self.match_all(topic)
        return found[0] if found else None


def check(pattern: str, separator: str = "/", one_level: str = "+",
          rest: str = "#") -> str | None:  # fmt: skip
    """Why ``pattern`` cannot be a route, or None.

    A capture or a wildcard is a whole level, and only the last level may
    take the rest of the topic; anything else makes a filter the broker
    refuses (``v3/+@ttn/...``).
    """
    levels = pattern.split(separator)
    for i, level in enumerate(levels):
        last = i == len(levels) - 1
        if level == rest or (m := _CAPTURE.fullmatch(level)) and m.group(2):
            if not last:
                return f"{level!r} takes the rest of the topic: last level only"
        elif "{" in level or "}" in level or one_level in level or rest in level:
            if level != one_level and not _CAPTURE.fullmatch(level):
                return f"level {level!r}: a capture or wildcard is a whole level"
    return None


def _compile(pattern: str, separator: str) -> re.Pattern[str]:
    parts = _CAPTURE.split(pattern)
    regex = ""
    level = f"[^{re.escape(separator)}]+"
    # split() yields text, name, '...' or None, text, name, ...
    for i in range(0, len(parts), 3):
        # Literal MQTT wildcards match as they would at the broker
        text = re.escape(parts[i]).replace(r"\+", level).replace(r"\#", ".*")
        regex += text
        if i + 1 < len(parts):
            name, rest = parts[i + 1], parts[i + 2]
            regex += f"(?P<{name}>.+)" if rest else f"(?P<{name}>{level})"
    return re.compile(regex)


def _filter(pattern: str, one_level: str, rest: str) -> str:
    return _CAPTURE.sub(lambda m: rest if m.group(2) else one_level, pattern)


class RouteConfig(Protocol):
    """What a configured route gives (``config.Route``, read by attribute so
    this module does not import the configuration that imports it)."""

    topic: str
    codec: str
    options: dict[str, Any]
    mapping: str | None
    content_type: str | None
    user_properties: dict[str, str]


class RouteTarget:
    """A route's codec, and the content type and properties it asks of a
    message: MQTT 5 content type and user properties, AMQP content type and
    headers, NATS Content-Type and headers."""

    __slots__ = ("codec", "content_type", "properties", "conditional")

    def __init__(self, codec: Codec, route: RouteConfig) -> None:
        self.codec = codec
        wanted = route.content_type
        self.content_type = wanted.lower() if wanted else None
        self.properties = route.user_properties
        self.conditional = bool(self.content_type or self.properties)

    def takes(
        self, content_type: str | None, properties: Headers[str, Any] | None
    ) -> bool:
        if self.content_type is not None:
            media = (
                content_type.split(";", 1)[0].strip().lower() if content_type else None
            )
            if media != self.content_type:
                return False
        if self.properties:
            sent = properties or {}
            for key, value in self.properties.items():
                got = sent.get(key)
                if isinstance(got, bytes):  # AMQP long strings may stay bytes
                    got = got.decode("utf-8", "replace")
                if got != value:
                    return False
        return True


def build(
    routes: list[Any],
    window: Window,
    mappings: dict[str, Mapping] | None,
    section: str,
    separator: str = "/",
    one_level: str = "+",
    rest: str = "#",
) -> TopicRoutes[RouteTarget]:
    """The routes of one transport section, each with its codec and mapping."""
    mappings = mappings or {}
    targets = []
    for i, r in enumerate(routes):
        codec = catalog.build(
            r.codec, r.options, window, f"{section}.routes[{i}]",
            mapping=mappings.get(r.mapping or ""),
        )  # fmt: skip
        targets.append((r.topic, RouteTarget(codec, r)))
    return TopicRoutes(targets, separator, one_level, rest)


def decode(
    table: TopicRoutes[RouteTarget],
    key: str,
    payload: bytes,
    max_payload: int,
    origin: Origin,
    out: Decoded,
    message: Any,
    properties: Callable[[Any], tuple[str | None, Headers[str, Any] | None]],
    what: str = "topic",
) -> None:
    """Route one message by its ``what`` (topic, routing key, subject) and
    decode it.

    The first route whose pattern takes ``key`` and, where it asks for them,
    whose content type and properties ``properties(message)`` gives, reads
    the message (a module-level function: no closure per message). Its
    ``{device}`` capture becomes ``origin.device``. Raises NoRoute or
    PayloadTooLarge, or what the codec raises.
    """
    found = None
    for target, device in table.match_all(key):
        if not target.conditional or target.takes(*properties(message)):
            found = target, device
            break
    if found is None:
        raise NoRoute(f"no route for {what}", what)
    target, device = found
    if device is not None and (len(device) > MAX_NAME or "\x00" in device):
        raise NoRoute(f"device id in {what} too long or with NUL", what)
    origin.device = device
    if len(payload) > max_payload:
        raise PayloadTooLarge(f"payload over {max_payload} bytes", "byte 0")
    target.codec.decode(payload, origin, out)
