"""The reading model: the one struct every codec produces.

Its JSON form is the unified schema (``schemas/reading.schema.json``),
generated from this module by ``python -m ingestd.model`` so the two cannot
drift; a test compares them.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec


class Reading(msgspec.Struct, gc=False, omit_defaults=True):
    """One measured value of one metric of one device at one time.

    Exactly one of ``value`` and ``data`` is set: ``value`` holds numbers,
    strings, booleans and JSON arrays or objects; ``data`` holds opaque bytes
    (base64 in the JSON form). Its identity is ``(device, metric, ts)``: the
    first write of an identity wins, so redelivery is harmless.
    """

    device: Annotated[str, msgspec.Meta(description="Canonical device id.")]
    metric: Annotated[str, msgspec.Meta(description="Metric name, e.g. 'temp'.")]
    ts: Annotated[
        int, msgspec.Meta(description="Measurement time: µs since 1970, UTC.")
    ]
    value: float | bool | str | list[Any] | dict[str, Any] | None = None
    data: bytes | None = None
    unit: Annotated[
        str | None, msgspec.Meta(description="Unit as the source names it.")
    ] = None
    received: Annotated[
        int, msgspec.Meta(description="Receipt time: µs since 1970, UTC.")
    ] = 0
    transport: Annotated[str, msgspec.Meta(description="mqtt, http, ...")] = ""
    format: Annotated[str, msgspec.Meta(description="json, senml, ...")] = ""
    order: Annotated[
        str | None, msgspec.Meta(description="Order bound to the device.")
    ] = None


class Reject(msgspec.Struct, frozen=True):
    """One part of a message that could not become a reading, and why."""

    path: str
    reason: str


class Origin(msgspec.Struct):
    """What the transport knows about a message before it is decoded.

    ``device`` is the transport's identity (topic capture, HTTP path,
    certificate); ``None`` where there is none and the payload's own id
    serves (a shared gateway topic).
    """

    device: str | None
    transport: str
    received: int
    source: str = ""


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the reading model."""
    return msgspec.json.schema(Reading)


if __name__ == "__main__":
    import orjson

    print(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode())
