"""Generic JSON: the shared json_plain fixtures and the ways JSON goes bad."""

from __future__ import annotations

from typing import Any

import pytest

from ingestd import clock
from ingestd.codecs.base import Decoded
from ingestd.codecs.json import JsonCodec, JsonOptions
from ingestd.errors import DecodeError
from ingestd.model import Origin

from .fixture_readings import RECEIVED, as_rows, expected_for, expected_rows, payloads

# Route options a user would configure for each device type in json_plain.
ROUTES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "asset_tracker_shadow_nested_broken_ts": (
        "asset-tracker-1",
        {"root": "reported", "ignore": ["cfg", "nrfcloud__dfu_v1__app_v"],
         "time_keys": ["ts"]},
    ),
    "nodered_capture_duplicates_seconds_ts": (
        None,
        {"envelope": "payload", "device_key": "node-id", "attributes": ["sensor"],
         "time_keys": ["timestamp"],
         "units": {"hum-percent": "%", "temp-C": "°C", "heatindex-C": "°C",
                   "co2-ppm": "ppm"}},
    ),
    "thingsboard_array_of_flat_objects": ("tb-device-1", {}),
    "thingsboard_array_ts_values": ("tb-device-1", {}),
    "thingsboard_flat_server_time": ("tb-device-1", {}),
    "thingsboard_gateway_multi_device": (None, {"layout": "gateway"}),
    "thingsboard_ts_values": ("tb-device-1", {}),
}  # fmt: skip


def decode(payload: bytes, device: str | None = "dev-1", **options: Any) -> Decoded:
    codec = JsonCodec(JsonOptions(**options), clock.Window())
    out = Decoded()
    codec.decode(payload, Origin(device, "test", RECEIVED), out)
    return out


@pytest.mark.parametrize("path", payloads("json_plain"), ids=lambda p: p.stem)
def test_json_fixture_readings(path: Any) -> None:
    expected = expected_for(path)
    device, options = ROUTES[path.stem]
    out = decode(path.read_bytes(), device, **options)

    # Redelivered duplicates (the Node-RED capture) are one reading each:
    # storage keeps the first write of (device, metric, ts).
    assert sorted(set(as_rows(out.readings)), key=repr) == expected_rows(
        expected["readings"]
    )


def test_json_fixture_implausible_times_are_rejected_by_path() -> None:
    path = next(p for p in payloads("json_plain") if p.stem.startswith("asset"))
    device, options = ROUTES[path.stem]
    out = decode(path.read_bytes(), device, **options)
    assert {r.path for r in out.rejects} == {
        "$.reported.bat.ts", "$.reported.gps.ts", "$.reported.roam.ts",
        "$.reported.acc.ts",
    }  # fmt: skip
    assert all("out of plausible range" in r.reason for r in out.rejects)


def test_json_fixture_messages_without_device_are_rejected() -> None:
    path = next(p for p in payloads("json_plain") if p.stem.startswith("nodered"))
    device, options = ROUTES[path.stem]
    out = decode(path.read_bytes(), device, **options)
    assert [r.path for r in out.rejects] == ["$[4][0].payload", "$[7][0][0].payload"]
    assert all(r.reason.startswith("no device id") for r in out.rejects)


def test_json_nested_objects_flatten_to_dotted_names() -> None:
    out = decode(b'{"env": {"t": 4.5, "deep": {"x": true}}, "tags": [1, 2]}')
    assert {(r.metric, repr(r.value)) for r in out.readings} == {
        ("env.t", "4.5"), ("env.deep.x", "True"), ("tags", "[1, 2]"),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "unit", "iso"),
    [
        (1714564800, "s", "2024-05-01T12:00:00Z"),
        (1714564800123, "ms", "2024-05-01T12:00:00.123000Z"),
        (1714564800123456, "us", "2024-05-01T12:00:00.123456Z"),
        (1714564800123456789, "ns", "2024-05-01T12:00:00.123456Z"),
        ('"2024-05-01T14:00:00.5+02:00"', "iso", "2024-05-01T12:00:00.500000Z"),
        ('"2024-05-01T12:00:00.123456789Z"', "iso", "2024-05-01T12:00:00.123456Z"),
    ],
)
def test_json_time_units_are_guessed_from_magnitude(
    raw: object, unit: str, iso: str
) -> None:
    out = decode(b'{"ts": %s, "t": 1}' % str(raw).encode())
    assert clock.format_us(out.readings[0].ts) == iso


@pytest.mark.parametrize(
    ("payload", "reason", "where"),
    [
        (b'{"t": NaN}', "invalid JSON", "byte 6"),
        (b'{"t": Infinity}', "invalid JSON", "byte 6"),
        (b'{"t": 1e999}', "invalid JSON: number is infinity", "byte 6"),
        (b'{"t": "\xff\xfe"}', "invalid JSON: str is not valid UTF-8", "byte 0"),
        (b'{"t": 1', "invalid JSON: unexpected end", "byte 7"),
        (b"", "invalid JSON", "byte 0"),
        (b"42", "expected an object, got number", "$"),
        (b'"text"', "expected an object, got string", "$"),
        (b"{}", "no readings in payload", "$"),
        (b"[" * 2000 + b"]" * 2000, "invalid JSON", "byte"),
    ],
)
def test_json_bad_payload_names_where(payload: bytes, reason: str, where: str) -> None:
    try:
        out = decode(payload)
    except DecodeError as exc:
        assert exc.reason.startswith(reason), exc.reason
        assert exc.path.startswith(where)
        assert str(exc).endswith(f"`{exc.path}`")
    else:
        assert not out.readings
        assert out.rejects[0].reason.startswith(reason)
        assert out.rejects[0].path == where


@pytest.mark.parametrize(
    ("payload", "path", "reason"),
    [
        (b'{"ok": 1, "bad": null}', "$.bad", "null is not a value"),
        (b'{"ok": 1, "bad": "a\\u0000b"}', "$.bad", "text contains a NUL character"),
        (b'{"ok": 1, "bad": ["a\\u0000"]}', "$.bad", "text contains a NUL character"),
        (b'{"ok": 1, "ts": "yesterday"}', "$.ts", "not an ISO 8601 time"),
        (b'{"ok": 1, "ts": 4102444800}', "$.ts", "timestamp 2100-01-01"),
        (b'{"ok": 1, "ts": true}', "$.ts", "timestamp must be a number"),
        (b'[{"ok": 1}, 7]', "$[1]", "expected an object, got number"),
        (
            b'{"ok": 1, "bad": ' + b"[" * 900 + b"]" * 900 + b"}",
            "$.bad",
            "nested deeper than 32 levels",
        ),
    ],
)
def test_json_bad_reading_is_rejected_by_path(
    payload: bytes, path: str, reason: str
) -> None:
    out = decode(payload)
    assert [r.path for r in out.rejects] == [path]
    assert out.rejects[0].reason.startswith(reason), out.rejects[0].reason
    if path != "$.ts":
        assert [r.metric for r in out.readings] == ["ok"]


def test_json_deep_nesting_is_rejected_not_recursed() -> None:
    payload = b'{"a": ' * 60 + b"1" + b"}" * 60
    out = decode(payload)
    assert not out.readings
    assert out.rejects[0].reason == "nested deeper than 32 levels"


def test_json_huge_integer_becomes_a_double() -> None:
    out = decode(b'{"big": 123456789012345678901234567890}')
    assert out.readings[0].value == pytest.approx(1.2345678901234568e29)


def test_json_firmware_is_an_attribute_not_a_reading() -> None:
    out = decode(b'{"firmware": "2.1.0", "t": 4}')
    assert [r.metric for r in out.readings] == ["t"]
    assert out.firmware == {"dev-1": "2.1.0"}


def test_json_without_device_identity_or_key_is_rejected() -> None:
    out = decode(b'{"t": 1}', device=None)
    assert out.rejects[0].reason.startswith("no device id")


def test_json_gateway_device_names_are_checked() -> None:
    out = decode(b'{"ok": {"t": 1}, "": {"t": 2}, "a\\u0000b": {"t": 3}}', None,
                 layout="gateway")  # fmt: skip
    assert [r.device for r in out.readings] == ["ok"]
    assert [r.path for r in out.rejects] == ["$.", "$.a\\0b"]
