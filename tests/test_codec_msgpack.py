"""MessagePack: the shared msgpack fixtures, read as the JSON they encode."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd import clock
from ingestd.codecs.base import Decoded
from ingestd.codecs.json import JsonCodec, JsonOptions
from ingestd.codecs.msgpack import MsgpackCodec, MsgpackOptions
from ingestd.errors import DecodeError
from ingestd.model import Origin

from .fixture_readings import (
    FIXTURES,
    RECEIVED,
    as_rows,
    binary_payloads,
    expected_for,
    expected_rows,
    read_b64,
)
from .fuzz_oracle import decode_soundly

# Route options a user would configure for each device type in msgpack/
# (device = the transport identity the fixture's context gives).
ROUTES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "float32_and_ts_transcoded": ("tb-device-1", {}),
    "msgpack_org_front_page_example": ("mp-device-1", {}),
    "senml_over_msgpack_invalid_v_bool": (None, {"senml": {}}),
    "thingsboard_array_transcoded": ("tb-device-1", {}),
    "timestamp_extension_type_minus1": ("tb-device-1", {}),
}

encode = msgspec.msgpack.encode


def decode(payload: bytes, device: str | None = "dev-1", **options: Any) -> Decoded:
    opts = msgspec.convert(options, MsgpackOptions)  # as the route's TOML gives it
    out = Decoded()
    MsgpackCodec(opts, clock.Window()).decode(
        payload, Origin(device, "test", RECEIVED), out
    )
    return out


def _stem(path: Path) -> str:
    return path.name.removesuffix(".msgpack.b64")


@pytest.mark.parametrize("path", binary_payloads("msgpack"), ids=_stem)
def test_msgpack_fixture_readings(path: Path) -> None:
    device, options = ROUTES[_stem(path)]
    out = decode(read_b64(path), device, **options)
    assert as_rows(out.readings) == expected_rows(expected_for(path)["readings"])
    assert {r.format for r in out.readings} <= {"msgpack"}


@pytest.mark.parametrize("path", binary_payloads("msgpack"), ids=_stem)
def test_msgpack_fixture_hex_and_base64_agree(path: Path) -> None:
    hex_path = path.with_name(path.name.removesuffix(".b64") + ".hex")
    assert bytes.fromhex(hex_path.read_text().strip()) == read_b64(path)


def test_msgpack_fixture_senml_v_boolean_is_not_accepted() -> None:
    # expected_outcome: accept false; "v" is a boolean next to "vd" (sec. 4.2:
    # exactly one value, v a number). No lenient coercion to vb is made.
    path = next(p for p in binary_payloads("msgpack") if "senml" in p.name)
    assert expected_for(path)["expected_outcome"]["accept"] is False
    device, options = ROUTES[_stem(path)]
    out = decode(read_b64(path), device, **options)
    assert not out.readings
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$[1]", "record has several values: v, vd")
    ]


def test_msgpack_senml_v_boolean_alone_is_rejected() -> None:
    pack = [{"bn": "urn:dev:xbee:1:"}, {"n": "D0", "v": True}]
    out = decode(encode(pack), None, senml={})
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$[1].v", "expected a number, got boolean")
    ]


def test_msgpack_senml_reads_bin_vd_and_rejects_other_keys() -> None:
    pack = [{"bn": "d:", "n": "raw", "vd": b"ef\x00"}, {1: "x", "n": "t", "v": 1}]
    out = decode(encode(pack), None, senml={"metric": "name"})
    assert [(r.device, r.metric, r.data) for r in out.readings] == [
        ("d", "raw", b"ef\x00")
    ]
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$[1]", "map key 1 is not a SenML label")
    ]


def test_msgpack_fixture_thingsboard_equals_the_json_fixture() -> None:
    path = next(p for p in binary_payloads("msgpack") if "thingsboard" in p.name)
    json_out = Decoded()
    JsonCodec(JsonOptions(), clock.Window()).decode(
        (FIXTURES / "json_plain" / "thingsboard_array_ts_values.json").read_bytes(),
        Origin("tb-device-1", "test", RECEIVED),
        json_out,
    )
    assert as_rows(decode(read_b64(path), "tb-device-1").readings) == as_rows(
        json_out.readings
    )


def test_msgpack_float32_is_kept_as_its_exact_double() -> None:
    # ca 3dcccccd: 0.1 as float32; no rounding to digits the device never sent
    out = decode(bytes.fromhex("81a178ca3dcccccd"))
    assert out.readings[0].value == 0.10000000149011612
    assert out.readings[0].value == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize(
    ("moment", "iso"),
    [
        (datetime(2024, 5, 1, 11, tzinfo=timezone.utc), "2024-05-01T11:00:00Z"),
        (datetime(2024, 5, 1, 11, 0, 0, 250000, tzinfo=timezone.utc),
         "2024-05-01T11:00:00.250000Z"),
        (datetime(2600, 1, 1, tzinfo=timezone.utc), None),  # 96-bit form
    ],
)  # fmt: skip
def test_msgpack_timestamp_extension_is_a_time(
    moment: datetime, iso: str | None
) -> None:
    out = decode(encode({"ts": moment, "t": 1}))
    if iso is None:
        assert [(r.path, r.reason) for r in out.rejects] == [
            ("$.ts", "timestamp 2600-01-01T00:00:00Z out of plausible range")
        ]
    else:
        assert clock.format_us(out.readings[0].ts) == iso


def test_msgpack_timestamp_as_a_value_is_iso_text() -> None:
    out = decode(encode({"last_seen": datetime(2024, 5, 1, tzinfo=timezone.utc)}))
    assert out.readings[0].value == "2024-05-01T00:00:00+00:00"


def test_msgpack_timestamp_beyond_datetime_fails_the_payload() -> None:
    # 96-bit form, seconds = 2**40 (year 36812): msgspec refuses it outright
    payload = bytes.fromhex("81a27473c70cff00000000" + (2**40).to_bytes(8).hex())
    with pytest.raises(DecodeError) as caught:
        decode(payload)
    assert caught.value.reason == "invalid MessagePack: Timestamp is out of range"


def test_msgpack_bin_becomes_data() -> None:
    out = decode(encode({"blob": b"\x00\x01", "nested": {"raw": b"x"}, "t": 2}))
    assert sorted((r.metric, r.value, r.data) for r in out.readings) == [
        ("blob", None, b"\x00\x01"), ("nested.raw", None, b"x"), ("t", 2.0, None),
    ]  # fmt: skip


def test_msgpack_bin_in_timed_leaf_becomes_data_at_its_time() -> None:
    out = decode(encode({"img": {"v": b"\xff", "ts": 1714560000000}}))
    assert [(r.metric, r.data, clock.format_us(r.ts)) for r in out.readings] == [
        ("img", b"\xff", "2024-05-01T10:40:00Z")
    ]


@pytest.mark.parametrize(
    ("doc", "path", "reason"),
    [
        ({"ok": 1, 7: 2}, "$", "map key 7 is not text"),
        ({"ok": 1, b"k": 2}, "$", "map key b'k' is not text"),
        ({"ok": 1, "env": {(1, 2): 3}}, "$.env", "map key (1, 2) is not text"),
        ({"ok": 1, "bad": float("nan")}, "$.bad", "number is not finite"),
        ({"ok": 1, "bad": float("-inf")}, "$.bad", "number is not finite"),
        ({"ok": 1, "bad": [1, b"x"]}, "$.bad[1]",
         "bytes inside an array has no JSON form"),
        ({"ok": 1, "bad": [{"a": float("inf")}]}, "$.bad[0].a", "number is not finite"),
        ({"ok": 1, "bad": [{1: 2}]}, "$.bad[0]", "map key 1 is not text"),
        ({"ok": 1, "bad": msgspec.msgpack.Ext(5, b"x")}, "$.bad",
         "MessagePack extension type 5 has no JSON form"),
        ({"ok": 1, "bad": None}, "$.bad", "null is not a value"),
        ({"ok": 1, "bad\x00": float("nan")}, "$.bad\\0", "number is not finite"),
        ({"ok": 1, "a": {"bad": "x\x00"}}, "$.a.bad", "text contains a NUL character"),
    ],
)  # fmt: skip
def test_msgpack_bad_reading_is_rejected_by_path(
    doc: dict[Any, Any], path: str, reason: str
) -> None:
    out = decode(encode(doc))
    assert [r.metric for r in out.readings] == ["ok"]
    assert [(r.path, r.reason) for r in out.rejects] == [(path, reason)]


@pytest.mark.parametrize(
    ("doc", "path", "reason"),
    [
        ({"ts": b"\x01", "t": 1}, "$.ts",
         "timestamp must be a number or ISO 8601 text"),
        ({"ts": "yesterday", "t": 1}, "$.ts", "not an ISO 8601 time: 'yesterday'"),
        ([{"t": 1}, b"x"], "$[1]", "expected an object, got bytes"),
        ([{"t": 1}, 1.5], "$[1]", "expected an object, got number"),
    ],
)  # fmt: skip
def test_msgpack_bad_document_is_rejected_as_json_would(
    doc: Any, path: str, reason: str
) -> None:
    out = decode(encode(doc))
    assert [(r.path, r.reason) for r in out.rejects] == [(path, reason)]


def test_msgpack_gateway_layout_refuses_keys_that_are_not_text() -> None:
    out = decode(encode({"Device A": [{"t": 1}], 5: {"t": 2}}), None, layout="gateway")
    assert [(r.device, r.metric) for r in out.readings] == [("Device A", "t")]
    assert [(r.path, r.reason) for r in out.rejects] == [("$", "map key 5 is not text")]


def test_msgpack_json_options_apply() -> None:
    doc = {"payload": {"node-id": "n-7", "temp": 4.5}}
    out = decode(
        encode(doc),
        None,
        envelope="payload",
        device_key="node-id",
        units={"temp": "Cel"},
    )
    assert [(r.device, r.metric, r.value, r.unit) for r in out.readings] == [
        ("n-7", "temp", 4.5, "Cel")
    ]


def test_msgpack_deep_maps_are_left_to_the_walker() -> None:
    doc: Any = 1
    for _ in range(80):
        doc = {"k": doc}
    out = decode(encode(doc))
    assert [r.reason for r in out.rejects] == ["nested deeper than 32 levels"]


def test_msgpack_deep_arrays_are_rejected() -> None:
    doc: Any = [1]
    for _ in range(80):
        doc = [doc]
    out = decode(encode({"ok": 1, "deep": doc}))
    assert [r.metric for r in out.readings] == ["ok"]
    assert [r.reason for r in out.rejects] == ["nested deeper than 64 levels"]


@pytest.mark.parametrize(
    ("payload", "reason", "where"),
    [
        (bytes.fromhex("82a1"), "invalid MessagePack: Input data was truncated",
         "byte 2"),
        (bytes.fromhex("ddffffffff"), "invalid MessagePack: Input data was truncated",
         "byte 5"),
        (b"\xc1", "invalid MessagePack: invalid opcode '\\xc1'", "byte 0"),
        (b"\x80\x01", "invalid MessagePack: trailing characters", "byte 1"),
        (b"\xa2\xff\xfe", "invalid MessagePack: Invalid UTF-8 encoded string", "$"),
        (b"\x91" * 5000 + b"\x01", "invalid MessagePack: nested too deep", "$"),
        (b"", "invalid MessagePack: Input data was truncated", "byte 0"),
        (b"\x2a", "expected an object, got number", "$"),
        (b"\x80", "no readings in payload", "$"),
    ],
)  # fmt: skip
def test_msgpack_bad_payload_names_where(
    payload: bytes, reason: str, where: str
) -> None:
    try:
        out = decode(payload)
    except DecodeError as exc:
        assert (exc.reason, exc.path) == (reason, where)
        assert str(exc).endswith(f"`{where}`")
    else:
        assert not out.readings
        assert [(r.reason, r.path) for r in out.rejects] == [(reason, where)]


def test_msgpack_senml_needs_an_array() -> None:
    with pytest.raises(DecodeError, match="a SenML pack is an array of records"):
        decode(encode({"bn": "d:"}), None, senml={})


# Any input: a DecodeError or a Decoded with readings or rejects, nothing else

PROFILE = settings(
    max_examples=1000, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats() | st.floats(width=32) | st.text(max_size=10) | st.binary(max_size=8)
    | st.datetimes(min_value=datetime(1, 1, 2), timezones=st.just(timezone.utc))
    | st.builds(msgspec.msgpack.Ext, st.integers(0, 127), st.binary(max_size=4))
    | st.sampled_from([1714564800000, "2024-05-01T12:00:00Z", "urn:dev:x:"])
)  # fmt: skip
keys = (
    st.sampled_from(["ts", "values", "v", "time", "bn", "n", "vd", "vb", "t", "x_"])
    | st.text(max_size=6) | st.integers(-3, 3) | st.binary(max_size=2)
)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=6)
    ),
    max_leaves=25,
)
CODECS = [
    MsgpackCodec(MsgpackOptions(), clock.Window()),
    MsgpackCodec(MsgpackOptions(layout="gateway"), clock.Window()),
    MsgpackCodec(msgspec.convert({"senml": {}}, MsgpackOptions), clock.Window()),
]


def _check(payload: bytes, device: str | None) -> None:
    for codec in CODECS:
        origin = Origin(device, "fuzz", RECEIVED)
        out = decode_soundly(codec, payload, origin)
        if out is None:
            continue
        assert out.readings or out.rejects


@PROFILE
@given(st.binary(max_size=200))
def test_msgpack_never_fails_on_any_bytes(payload: bytes) -> None:
    _check(payload, "dev-1")


@PROFILE
@given(documents, st.sampled_from([None, "dev-1"]))
def test_msgpack_never_fails_on_any_document(doc: Any, device: str | None) -> None:
    _check(encode(doc), device)
