"""The contract between transports and codecs."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from ..clock import Window
from ..errors import DecodeError
from ..model import Origin, Reading, Reject

MAX_NAME = 256  # longest device id or metric name accepted, in characters


class Decoded:
    """What one message became: readings, rejects, and registry facts.

    ``firmware`` maps a device to the firmware version its payload reported.
    ``offline`` lists devices the message says are gone (a Sparkplug death
    certificate). ``aliases`` lists ``(namespace, external id, device)``: the
    payload knows a device by another id (a LoRaWAN DevEUI); the batcher
    rewrites the readings to the canonical device when the alias table
    already maps that id elsewhere, and records the alias when it does not.
    """

    __slots__ = ("readings", "rejects", "firmware", "offline", "aliases")

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.rejects: list[Reject] = []
        self.firmware: dict[str, str] = {}
        self.offline: list[str] = []
        self.aliases: list[tuple[str, str, str]] = []

    def reject(self, path: str, reason: str) -> None:
        self.rejects.append(Reject(path, reason))

    @property
    def usable(self) -> bool:
        """Something was stored, or nothing was wrong (a status message)."""
        return bool(self.readings) or not self.rejects

    def rejected(self) -> list[dict[str, str]]:
        """The rejects as the answer and the dead letter list them."""
        return [{"path": r.path, "reason": r.reason} for r in self.rejects]

    def answer(self) -> dict[str, Any]:
        """The body every answered transport sends once this is committed:
        ``{"stored": n, "rejected": [...]}``, or, when nothing was usable,
        ``{"error": ..., "path": ..., "rejected": [...]}``."""
        if self.usable:
            body: dict[str, Any] = {"stored": len(self.readings)}
        else:
            first = self.rejects[0]
            body = {"error": f"nothing usable: {first.reason}", "path": first.path}
        if self.rejects:
            body["rejected"] = self.rejected()
        return body


class Codec(Protocol):
    """One payload format, configured for one route."""

    name: str

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        """Fill ``out``; raise ``DecodeError`` if nothing could be used."""
        ...


def parse_json(payload: bytes) -> Any:
    """A JSON document, or DecodeError naming the byte where it went wrong."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        reason = str(exc).split(":", 1)[0]
        raise DecodeError(f"invalid JSON: {reason}", f"byte {exc.pos}") from None


def parse_json_object(payload: bytes) -> dict[str, Any]:
    """A JSON object, or DecodeError: for formats whose messages are objects."""
    doc = parse_json(payload)
    if type(doc) is not dict:
        raise DecodeError(f"expected an object, got {json_type(doc)}", "$")
    return doc  # type: ignore[no-any-return]


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages to devices."""
    if value is None:
        return "null"
    names = {str: "string", bool: "boolean", int: "number", float: "number",
             list: "array", dict: "object", bytes: "bytes"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def check_text(text: str, what: str) -> str | None:
    """Why ``text`` cannot be stored as a name or value, or None if it can."""
    if "\x00" in text:
        return f"{what} contains a NUL character"
    return None


__all__ = ["Codec", "Decoded", "Window", "check_text", "MAX_NAME"]
