"""What every codec must do with any input, shared by the property tests
(``tests/test_codec_properties.py`` and the per-codec ones) and the atheris
harness (``bench/fuzz_atheris.py``).

The oracle: a codec either raises ``DecodeError`` with a reason and a place,
or fills a ``Decoded`` whose every part can be written by one COPY and
answered to the device as JSON. "Can be written" is checked as the writer
and PostgreSQL see it: text without NUL (``text`` refuses it) that encodes
as UTF-8 (asyncpg refuses lone surrogates, and a refused COPY row would
hold back the good readings of its flush), finite doubles, JSON values that
``orjson`` writes without a ``\\u0000`` (``jsonb`` refuses it), and times
inside the plausible window. Any other exception escapes and fails the
caller.

``TARGETS`` names, for each codec in ``catalog.CODECS``, the configurations
fuzzed, the topics a message may come on and the fixture files its
mutations start from; ``twin`` switches a codec module to its pure-Python
or compiled hot loop in-process.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import orjson

from ingestd import clock
from ingestd.codecs import _lineproto, _walk, catalog
from ingestd.codecs import influx as influx_module
from ingestd.codecs import json as json_module
from ingestd.codecs.base import MAX_NAME, Codec, Decoded
from ingestd.errors import DecodeError
from ingestd.model import Origin, Reading
from ingestd.pipeline import writer

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
INT64 = 2**63
WINDOW = clock.Window()


# -- the oracle ---------------------------------------------------------------


def decode_soundly(
    codec: Codec, payload: bytes, origin: Origin, window: clock.Window = WINDOW
) -> Decoded | None:
    """Decode; a DecodeError must say where and why (then None), anything
    else must be storable readings and rejects that name their place."""
    return sound_outcome(codec, payload, origin, window)[0]


def sound_outcome(
    codec: Codec, payload: bytes, origin: Origin, window: clock.Window = WINDOW
) -> tuple[Decoded | None, str]:
    """``decode_soundly``, and the error's text when it raised one."""
    out = Decoded()
    try:
        codec.decode(payload, origin, out)
    except DecodeError as exc:
        assert exc.path and exc.reason, repr(exc)
        # The reason becomes a dead letter's text and the answer's JSON
        _text(str(exc), "error", nul=True)
        orjson.dumps({"error": exc.reason, "path": exc.path})
        return None, str(exc)
    check_storable(out, origin, window)
    return out, ""


def check_storable(out: Decoded, origin: Origin, window: clock.Window) -> None:
    """Every part of ``out`` can be COPYed, registered and answered."""
    for r in out.readings:
        _reading(r, origin, window)
    for j in out.rejects:
        assert j.path and j.reason, j
        _text(j.path, "reject path", nul=True)
        _text(j.reason, "reject reason", nul=True)
    for device, version in out.firmware.items():
        _text(device, "firmware device")
        _text(version, "firmware version")
    for device in out.offline:
        _text(device, "offline device")
    for alias in out.aliases:
        for part in alias:
            _text(part, "alias")
    # The answer to the device, and the dead letter's details (the batcher
    # escapes a NUL in them itself)
    orjson.dumps(out.answer())


def _reading(r: Reading, origin: Origin, window: clock.Window) -> None:
    _text(r.device, "device")
    _text(r.metric, "metric")
    assert r.device and r.metric, r
    assert len(r.device) <= MAX_NAME and len(r.metric) <= MAX_NAME, r
    if r.unit is not None:
        _text(r.unit, "unit")
    assert type(r.ts) is int, r
    # Receipt time, or a device time the window let through
    assert r.ts == origin.received or (
        window.earliest <= r.ts <= origin.received + window.future
    ), r
    assert (r.value is None) != (r.data is None), r
    if r.data is not None:
        assert type(r.data) is bytes, r
    _value(r.value)
    row = writer.stage_row(r)  # what the COPY gets; raises if it cannot
    if row[7] is not None:  # the JSON column
        assert "\\u0000" not in row[7].replace("\\\\", ""), r
        _text(row[7], "JSON value")


def _value(value: Any) -> None:
    kind = type(value)
    if kind is float:
        assert math.isfinite(value), value
    elif kind is str:
        _text(value, "text value")
    elif kind is list or kind is dict:
        # Iterative: a codec may hand over arrays deeper than the recursion limit
        stack = [value]
        while stack:
            item = stack.pop()
            k = type(item)
            if k is list:
                stack.extend(item)
            elif k is dict:
                for key, inner in item.items():
                    assert type(key) is str, key
                    _text(key, "JSON key")
                    stack.append(inner)
            elif k is str:
                _text(item, "JSON text")
            elif k is int:
                assert -INT64 <= item < 2 * INT64, item  # orjson writes 64 bits
            elif k is float:
                assert math.isfinite(item), item
            else:
                assert item is None or k is bool, item
    else:
        assert value is None or kind is bool, value


def _text(text: Any, what: str, nul: bool = False) -> None:
    """``text`` is a str PostgreSQL takes: UTF-8, without NUL unless the
    writer replaces NUL itself there (``nul``)."""
    assert type(text) is str, (what, text)
    assert nul or "\x00" not in text, (what, text)
    text.encode("utf-8")  # UnicodeEncodeError on a lone surrogate


# -- the compiled and the pure hot loops --------------------------------------

TWINS = ("compiled", "pure")
HAS_TWIN = ("json", "msgpack", "influx")  # codecs running _walk or _lineproto


@contextlib.contextmanager
def twin(kind: str) -> Iterator[None]:
    """Run the JSON walker and the line protocol parser as ``kind``: the
    module-level names the codecs call are swapped for the duration."""
    if kind == "pure":
        walker, parse = _walk.Walker, _lineproto.parse
    else:
        from ingestd.codecs._lineproto_ext import parse as compiled_parse
        from ingestd.codecs._walk_ext import Walker as compiled_walker

        walker, parse = compiled_walker, compiled_parse
    saved = json_module.Walker, influx_module.parse
    json_module.Walker, influx_module.parse = walker, parse  # type: ignore[assignment]
    try:
        yield
    finally:
        json_module.Walker, influx_module.parse = saved  # type: ignore[assignment]


def compiled_built() -> bool:
    try:
        import ingestd.codecs._lineproto_ext  # noqa: F401
        import ingestd.codecs._walk_ext  # noqa: F401
    except ImportError:
        return False
    return True


# -- what is fuzzed -----------------------------------------------------------


class Target(NamedTuple):
    """One codec of the catalog as the fuzzers drive it.

    ``configs`` are option tables (as a route gives them); every input goes
    through a codec built from each. ``origins`` are (transport identity,
    topic) pairs a message may arrive with. ``seeds`` are fixture files
    (globs under ``shared/fixtures``); ``encoding`` says how a document is
    written as a payload, for mutations made on the decoded document.
    """

    configs: list[dict[str, Any]]
    origins: list[tuple[str | None, str]]
    seeds: list[str]
    encoding: str  # json, cbor, msgpack, text (line protocol), protobuf


TARGETS: dict[str, Target] = {
    "json": Target(
        [{}, {"layout": "gateway"}, {"device_key": "id", "envelope": "payload"}],
        [("dev-1", "devices/dev-1/telemetry"), (None, "gateway/all")],
        ["json_plain/*.json"],
        "json",
    ),
    "senml": Target(
        [{}, {"metric": "lwm2m", "units": {"/3/0/*": "V"}}, {"metric": "full"}],
        [("dev-1", "devices/dev-1/senml"), (None, "senml/shared")],
        ["senml_json/*.json", "lwm2m_senml/*.senml.json"],
        "json",
    ),
    "senml_cbor": Target(
        [{}, {"metric": "lwm2m", "units": {"/3/0/*": "V"}}],
        [("dev-1", "coap"), (None, "coap")],
        ["senml_cbor/*.b64", "lwm2m_senml/*.b64"],
        "cbor",
    ),
    "msgpack": Target(
        [{}, {"layout": "gateway"}, {"senml": {}}],
        [("dev-1", "devices/dev-1/msgpack"), (None, "gateway/msgpack")],
        ["msgpack/*.b64"],
        "msgpack",
    ),
    "influx": Target(
        [{}, {"precision": "s", "big_integers": "text"}, {"big_integers": "round"}],
        [("dev-1", "http"), (None, "telegraf")],
        ["influx_line_protocol/*.lp"],
        "text",
    ),
    "sparkplug": Target(
        [{}, {"protocol_metrics": True, "transient": True, "max_nodes": 4}],
        [
            (None, f"spBv1.0/G/{verb}/N")
            for verb in ("NBIRTH", "NDATA", "NDEATH", "NCMD")
        ]
        + [(None, f"spBv1.0/G/{verb}/N/D") for verb in ("DBIRTH", "DDATA", "DDEATH")],
        ["sparkplug_b/*.b64", "sparkplug_b/*.session.json"],
        "protobuf",
    ),  # fmt: skip
    "ttn": Target(
        [
            {
                "radio": [
                    "rssi",
                    "snr",
                    "frequency",
                    "sf",
                    "f_cnt",
                    "f_port",
                    "gateways",
                ]
            },
            {"device": "dev_eui", "raw_metric": "frame"},
        ],
        [(None, "v3/app@ttn/devices/x/up"), ("dev-1", "v3/app@ttn/devices/dev-1/up")],
        ["ttn_v3/*.json"],
        "json",
    ),  # fmt: skip
    "chirpstack": Target(
        [
            {"raw_metric": "frame", "radio": ["gateways", "sf"]},
            {"device": "device_name"},
        ],
        [(None, "application/a/device/x/event/up"), ("dev-1", "application/a/up")],
        ["chirpstack_v4/*.json"],
        "json",
    ),  # fmt: skip
    "zigbee2mqtt": Target(
        [{}, {"on_off": "bool", "suppress_repeats_ms": 1000, "units": {"t": "C"}}],
        [
            ("hall/lamp", "zigbee2mqtt/hall/lamp"),
            (None, "zigbee2mqtt/a/b"),
            ("x", "zigbee2mqtt/x/availability"),
            ("x", "zigbee2mqtt/x/set"),
        ],
        ["zigbee2mqtt/*.json"],
        "json",
    ),  # fmt: skip
    "tasmota": Target(
        [
            {},
            {"utc_offset": "+01:00"},
            {"timezone": "Europe/Berlin", "ble_names": False, "id_key": None},
        ],
        [
            ("t1", "tele/t1/SENSOR"),
            ("t1", "tele/t1/STATE"),
            (None, "tele/a/b/SENSOR"),
            ("t1", "tele/t1/LWT"),
        ],
        ["tasmota/*.json"],
        "json",
    ),  # fmt: skip
    "shelly": Target(
        [{}, {"fahrenheit": True, "by_minute": True, "events": False}],
        [
            ("sh-1", "sh-1/events/rpc"),
            (None, "shellies/events/rpc"),
            ("sh-1", "sh-1/status/switch:0"),
            (None, "x/status/"),
        ],
        ["shelly_gen2/*.json"],
        "json",
    ),  # fmt: skip
}
assert set(TARGETS) == set(catalog.CODECS), "every codec in the catalog is fuzzed"


def codecs(name: str, window: clock.Window = WINDOW) -> list[Codec]:
    """One codec of ``name`` per configuration of its target."""
    return [catalog.build(name, raw, window) for raw in TARGETS[name].configs]


def seeds(name: str) -> list[bytes]:
    """The fixture payloads of a codec, as they arrive on the wire."""
    found: list[bytes] = []
    for pattern in TARGETS[name].seeds:
        for path in sorted(FIXTURES.glob(pattern)):
            if path.name.endswith(".expected.json"):
                continue
            if path.name.endswith(".session.json"):
                for message in json.loads(path.read_text())["messages"]:
                    if "payload_b64" in message:
                        found.append(base64.b64decode(message["payload_b64"]))
                    else:
                        found.append(json.dumps(message["payload"]).encode())
            elif path.suffix == ".b64":
                found.append(base64.b64decode(path.read_text()))
            else:
                found.append(path.read_bytes())
    return found


def documents(name: str) -> list[Any]:
    """The fixture payloads of a codec decoded to Python values, for
    mutations of their structure (JSON, CBOR and MessagePack targets)."""
    encoding = TARGETS[name].encoding
    load: Callable[[bytes], Any]
    if encoding == "json":
        load = json.loads
    elif encoding == "cbor":
        import cbor2

        load = cbor2.loads
    elif encoding == "msgpack":
        load = msgspec.msgpack.decode
    else:
        return []
    docs = []
    for raw in seeds(name):
        try:
            docs.append(load(raw))
        except ValueError:  # a fixture that is malformed on purpose
            pass
    return docs


def encode(name: str, doc: Any) -> bytes:
    """``doc`` written as the payload a device of codec ``name`` sends.

    JSON goes through the standard library: it writes NaN, Infinity and
    lone surrogates (as ``\\ud800``) and integers of any size, all of which
    devices send and the codecs must refuse cleanly.
    """
    encoding = TARGETS[name].encoding
    if encoding == "cbor":
        import cbor2

        return cbor2.dumps(doc)
    if encoding == "msgpack":
        return msgspec.msgpack.encode(doc)
    return json.dumps(doc).encode()


def run(
    name: str,
    payload: bytes,
    choice: int,
    received: int,
    twins: tuple[str, ...] = ("",),
) -> bool:
    """Decode one payload with the configuration and origin ``choice``
    picks for codec ``name``, on each of ``twins`` (which must agree
    exactly; "" runs what the import chose). True if it gave readings."""
    target = TARGETS[name]
    config = choice % len(target.configs)
    device, topic = target.origins[choice // len(target.configs) % len(target.origins)]
    seen: list[str] = []
    useful = False
    for kind in twins:
        codec = catalog.build(name, target.configs[config], WINDOW)  # fresh
        origin = Origin(device, "fuzz", received, topic)
        with twin(kind) if kind else contextlib.nullcontext():
            out, error = sound_outcome(codec, payload, origin)
        useful = useful or bool(out is not None and out.readings)
        if out is not None:  # floats by repr: -0.0 and 0.0 differ
            parts = (out.readings, out.rejects, out.firmware, out.offline)
            error = repr((*parts, out.aliases))
        seen.append(error)
    assert all(s == seen[0] for s in seen), (name, twins, config, seen)
    return useful
