"""Tasmota: the shared tasmota fixtures, gateways, local time and the ways a
telemetry message goes bad."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd import clock
from ingestd.codecs.base import Decoded
from ingestd.codecs.tasmota import TasmotaCodec, TasmotaOptions
from ingestd.errors import DecodeError
from ingestd.model import Origin

from .fixture_readings import (
    FIXTURES,
    RECEIVED,
    as_rows,
    expected_for,
    expected_rows,
    payloads,
)

FOLDER = "tasmota"
ENERGY_UNITS = {
    "ENERGY.Total": "kWh", "ENERGY.Yesterday": "kWh", "ENERGY.Today": "kWh",
    "ENERGY.Period": "Wh", "ENERGY.Power": "W", "ENERGY.ApparentPower": "VA",
    "ENERGY.ReactivePower": "var", "ENERGY.Voltage": "V", "ENERGY.Current": "A",
}  # fmt: skip

# Route options a user would configure per device: the UTC offset the
# fixture's context states, and the units Tasmota documents but does not send.
ROUTES: dict[str, dict[str, Any]] = {
    "ds18b20_multi_probe": {"utc_offset": "+01:00"},
    "epoch_and_local_time": {},
    "mcp230xx_malformed_json": {},
    "mible_multi_device_gateway": {
        "utc_offset": "+01:00", "units": {"Humidity": "%", "Battery": "%"},
    },
    "scd40_co2": {
        "utc_offset": "+02:00",
        "units": {"CarbonDioxide": "ppm", "eCO2": "ppm", "Humidity": "%"},
    },
    "sonoff_pow_energy": {"utc_offset": "+01:00", "units": ENERGY_UNITS},
    "time_with_offset_switches": {},
    "zigbee_zbreceived_no_time": {
        "units": {"Voltage": "V", "Battery": "%", "Temperature": "°C",
                  "Humidity": "%"},
    },
}  # fmt: skip


def codec(**options: Any) -> TasmotaCodec:
    return TasmotaCodec(msgspec.convert(options, TasmotaOptions), clock.Window())


def origin(topic: str, received: int = RECEIVED) -> Origin:
    """What the route ``tele/{device}/SENSOR`` makes of a topic."""
    return Origin(topic.split("/")[1], "test", received, topic)


def decode(payload: bytes, topic: str = "tele/plug/SENSOR", **options: Any) -> Decoded:
    out = Decoded()
    codec(**options).decode(payload, origin(topic), out)
    return out


def fixture(stem: str) -> tuple[Path, dict[str, Any]]:
    path = FIXTURES / FOLDER / f"{stem}.json"
    return path, expected_for(path)


WITH_READINGS = [p for p in payloads(FOLDER) if expected_for(p)["readings"]]


@pytest.mark.parametrize("path", WITH_READINGS, ids=lambda p: p.stem)
def test_tasmota_fixture_readings(path: Path) -> None:
    expected = expected_for(path)
    out = Decoded()
    topic = expected["context"]["mqtt_topic"]
    codec(**ROUTES[path.stem]).decode(path.read_bytes(), origin(topic), out)
    assert not out.rejects
    assert as_rows(out.readings) == expected_rows(expected["readings"])
    assert {r.format for r in out.readings} == {"tasmota"}


def test_tasmota_fixture_malformed_json_is_refused_with_its_position() -> None:
    path, expected = fixture("mcp230xx_malformed_json")
    assert expected["expected_outcome"]["accept"] is False
    out = Decoded()
    with pytest.raises(DecodeError) as exc:
        codec().decode(path.read_bytes(), origin("tele/tasmota/SENSOR"), out)
    # "MCP230XX": "D0":0 - the ':' after "D0" is where an object had to start
    assert exc.value.reason == "invalid JSON: unexpected character, expected ',' or '}'"
    assert exc.value.path == "byte 46"
    assert path.read_bytes()[46:47] == b":"
    assert exc.value.http_status == 400
    assert not out.readings  # nothing salvaged, not even Time


def test_tasmota_fixture_retained_copy_keeps_its_identity() -> None:
    path, _ = fixture("time_with_offset_switches")
    keys = []
    for received in (RECEIVED, RECEIVED + 3_600_000_000):  # resubscribed later
        out = Decoded()
        codec().decode(
            path.read_bytes(), origin("tele/demo-sensor/SENSOR", received), out
        )
        keys.append({(r.device, r.metric, r.ts) for r in out.readings})
    assert keys[0] == keys[1] and len(keys[0]) == 2


def test_tasmota_explicit_offset_wins_over_the_route() -> None:
    path, expected = fixture("time_with_offset_switches")
    out = decode(path.read_bytes(), "tele/demo-sensor/SENSOR", utc_offset="-05:00")
    assert as_rows(out.readings) == expected_rows(expected["readings"])


def test_tasmota_epoch_wins_over_time_and_route_offset() -> None:
    path, expected = fixture("epoch_and_local_time")
    out = Decoded()
    codec(utc_offset="+09:00").decode(
        path.read_bytes(), origin("tele/tasmota/SENSOR"), out
    )
    assert as_rows(out.readings) == expected_rows(expected["readings"])


@pytest.mark.parametrize(
    "stem", ["scd40_co2", "sonoff_pow_energy", "mible_multi_device_gateway"]
)
def test_tasmota_timezone_follows_daylight_saving(stem: str) -> None:
    # CEST (+02:00) in May, CET (+01:00) in February and March
    path, expected = fixture(stem)
    options = {**ROUTES[stem], "timezone": "Europe/Berlin"}
    del options["utc_offset"]
    out = Decoded()
    codec(**options).decode(
        path.read_bytes(), origin(expected["context"]["mqtt_topic"]), out
    )
    assert as_rows(out.readings) == expected_rows(expected["readings"])


def test_tasmota_zone_less_time_without_route_offset_is_refused() -> None:
    path, _ = fixture("scd40_co2")
    with pytest.raises(DecodeError) as exc:
        decode(path.read_bytes())
    assert exc.value.path == "$.Time"
    assert exc.value.reason == (
        "Time has no UTC offset and the route sets neither utc_offset nor timezone"
    )


def test_tasmota_probe_renumbering_keeps_the_devices() -> None:
    path, _ = fixture("ds18b20_multi_probe")
    doc = json.loads(path.read_text())
    # a probe was added: Tasmota renumbers them in discovery order
    renumbered = {
        "Time": doc["Time"], "DS18B20-1": doc["DS18B20-3"],
        "DS18B20-2": {"Id": "000000000A04", "Temperature": 4.0},
        "DS18B20-3": doc["DS18B20-1"], "DS18B20-4": doc["DS18B20-2"],
        "TempUnit": "C",
    }  # fmt: skip
    before = decode(path.read_bytes(), utc_offset="+01:00")
    after = decode(json.dumps(renumbered).encode(), utc_offset="+01:00")
    series = {(r.device, r.value) for r in before.readings}
    assert series < {(r.device, r.value) for r in after.readings}
    assert ("plug/000000000A04", 4.0) in {(r.device, r.value) for r in after.readings}


def test_tasmota_probe_numbers_are_sensors_when_id_key_is_off() -> None:
    path, _ = fixture("ds18b20_multi_probe")
    out = decode(path.read_bytes(), utc_offset="+01:00", id_key=None)
    assert {(r.device, r.metric) for r in out.readings} == {
        ("plug", "DS18B20-1.Id"), ("plug", "DS18B20-1.Temperature"),
        ("plug", "DS18B20-2.Id"), ("plug", "DS18B20-2.Temperature"),
        ("plug", "DS18B20-3.Id"), ("plug", "DS18B20-3.Temperature"),
    }  # fmt: skip


def test_tasmota_ble_names_off_keeps_sensors_on_the_gateway() -> None:
    path, _ = fixture("mible_multi_device_gateway")
    out = decode(path.read_bytes(), utc_offset="+01:00", ble_names=False)
    assert {r.device for r in out.readings} == {"plug"}
    assert "LYWSD03-5a0001.Temperature" in {r.metric for r in out.readings}


def test_tasmota_energy_total_start_time_is_not_a_reading() -> None:
    path, _ = fixture("sonoff_pow_energy")
    out = decode(path.read_bytes(), utc_offset="+01:00")
    assert "ENERGY.TotalStartTime" not in {r.metric for r in out.readings}
    assert len(out.readings) == 10


def test_tasmota_zigbee_without_name_uses_the_short_address() -> None:
    payload = (
        b'{"ZbReceived": {"0x1A2B": {"Device": "0x1A2B", "Power": 1, '
        b'"SWBuildID": "2.1", "Endpoint": 1}, "0x3C4D": {"Name": "Hall", '
        b'"Occupancy": 0}}}'
    )
    out = decode(payload)
    assert [(r.device, r.metric) for r in out.readings] == [
        ("plug/0x1A2B", "Power"), ("plug/Hall", "Occupancy"),
    ]  # fmt: skip
    assert out.firmware == {"plug/0x1A2B": "2.1"}


def test_tasmota_units_declared_below_apply_below_only() -> None:
    payload = (
        b'{"Time": "2024-05-01T12:00:00Z", "TempUnit": "F", "PressureUnit": "hPa", '
        b'"BME280": {"Temperature": 70.1, "Pressure": 1000, "SeaPressure": 1013}, '
        b'"BMP180": {"PressureUnit": "mmHg", "Pressure": 750, "Temperature": 21}, '
        b'"Wind": {"SpeedUnit": "km/h", "Speed": 12, "Direction": 270}}'
    )
    out = decode(payload, units={"Direction": "deg"})
    assert [(r.metric, r.unit) for r in out.readings] == [
        ("BME280.Temperature", "°F"), ("BME280.Pressure", "hPa"),
        ("BME280.SeaPressure", "hPa"), ("BMP180.Pressure", "mmHg"),
        ("BMP180.Temperature", "°F"), ("Wind.Speed", "km/h"),
        ("Wind.Direction", "deg"),
    ]  # fmt: skip


def test_tasmota_state_message_and_arrays() -> None:
    payload = (
        b'{"Time": "2024-05-01T14:00:00", "UptimeSec": 912, "POWER": "ON", '
        b'"Wifi": {"RSSI": 100, "Signal": -44}, "ENERGY": {"Voltage": [230, 231]}}'
    )
    out = decode(payload, "tele/plug/STATE", utc_offset="+02:00", ignore=["Wifi.RSSI"])
    assert [(r.metric, r.value) for r in out.readings] == [
        ("UptimeSec", 912.0), ("POWER", "ON"), ("Wifi.Signal", -44.0),
        ("ENERGY.Voltage", [230, 231]),
    ]  # fmt: skip
    assert {clock.format_us(r.ts) for r in out.readings} == {"2024-05-01T12:00:00Z"}


def test_tasmota_status_answers_are_unwrapped() -> None:
    payload = b'{"StatusSNS": {"Time": "2024-05-01T12:00:00Z", "SCD40": {"eCO2": 600}}}'
    out = decode(payload, "stat/plug/STATUS10")
    assert [(r.device, r.metric) for r in out.readings] == [("plug", "SCD40.eCO2")]


def test_tasmota_info1_is_firmware_not_readings() -> None:
    payload = b'{"Info1": {"Module": "Sonoff Pow", "Version": "13.2.0(tasmota)"}}'
    out = decode(payload, "tele/plug/INFO1")
    assert out.firmware == {"plug": "13.2.0(tasmota)"}
    assert not out.readings and not out.rejects


@pytest.mark.parametrize(
    ("payload", "offline"), [(b"Offline", ["plug"]), (b"Online", [])]
)
def test_tasmota_lwt_marks_the_device_offline(
    payload: bytes, offline: list[str]
) -> None:
    out = decode(payload, "tele/plug/LWT")
    assert (out.offline, out.readings, out.rejects) == (offline, [], [])


def test_tasmota_without_capture_the_device_is_the_topic_level() -> None:
    out = Decoded()
    codec().decode(
        b'{"Switch1": "ON"}', Origin(None, "t", RECEIVED, "tele/a/b/SENSOR"), out
    )
    assert [r.device for r in out.readings] == ["a/b"]
    with pytest.raises(DecodeError) as exc:
        codec().decode(
            b'{"Switch1": "ON"}', Origin(None, "t", RECEIVED, "x"), Decoded()
        )
    assert exc.value.reason == "no device: no topic capture, no %topic% in topic"
    with pytest.raises(DecodeError) as exc:
        codec().decode(b'{"A": 1}', Origin("a\x00", "t", RECEIVED, ""), Decoded())
    assert exc.value.reason == "device id empty, too long or with a NUL"


@pytest.mark.parametrize(
    ("payload", "reason", "where"),
    [
        (b'{"Time": "2024', "invalid JSON: unexpected end", "byte 14"),
        (b'{"A": nan}', "invalid JSON", "byte 6"),
        (b"", "invalid JSON", "byte 0"),
        (b"[]", "expected an object, got array", "$"),
        (b"null", "expected an object, got null", "$"),
        (b'{"Time": "2024-05-01T12:00:00Z"}', "no readings in payload", "$"),
        (b"{}", "no readings in payload", "$"),
        (b'{"Time": 5, "A": 1}', "Time must be text, got number", "$.Time"),
        (b'{"Time": "noon", "A": 1}', "not an ISO 8601 time: 'noon'", "$.Time"),
        (b'{"Time": "2100-01-01T00:00:00Z", "A": 1}', "timestamp 2100-", "$.Time"),
        (b'{"Time": "0001-01-01T00:00:00Z", "A": 1}', "timestamp 0001-", "$.Time"),
        (b'{"Epoch": "1567595328", "A": 1}', "timestamp must be", "$.Epoch"),
        (b'{"Epoch": 1e300, "A": 1}', "timestamp 1e+300 out of", "$.Epoch"),
        (b'{"Epoch": 15675953, "A": 1}', "timestamp 1970-", "$.Epoch"),
        (b'{"StatusSNS": {"Epoch": 1}}', "timestamp 1970-", "$.StatusSNS.Epoch"),
    ],
)
def test_tasmota_unusable_message_names_where(
    payload: bytes, reason: str, where: str
) -> None:
    with pytest.raises(DecodeError) as exc:
        decode(payload)
    assert exc.value.reason.startswith(reason), exc.value.reason
    assert exc.value.path == where


@pytest.mark.parametrize(
    ("payload", "path", "reason"),
    [
        (b'{"ok": 1, "S": {"T": null}}', "$.S.T", "null is not a value"),
        (b'{"ok": 1, "S": {"T": "\\u0000"}}', "$.S.T", "text contains a NUL"),
        (b'{"ok": 1, "S": {"T": ["\\u0000"]}}', "$.S.T", "text contains a NUL"),
        (b'{"ok": 1, "S\\u0000": 2}', "$.S\\0", "metric name empty or with a NUL"),
        (b'{"ok": 1, "S": {"": 2}}', '$.S.""', "metric name empty or with a NUL"),
        (b'{"ok": 1, "TempUnit": 7}', "$.TempUnit", "unit must be non-empty text"),
        (b'{"ok": 1, "P": {"Id": 7, "T": 1}}', "$.P.Id", "sub-device id empty"),
        (
            b'{"ok": 1, "P": {"Id": "a\\u0000", "T": 1}}',
            "$.P.Id",
            "sub-device id empty, too long or with a NUL",
        ),
        (b'{"ok": 1, "ZbReceived": {"0x1": 5}}', "$.ZbReceived.0x1", "expected an"),
        (
            b'{"ok": 1, "ZbReceived": {"0x1": {"Name": "%s"}}}' % (b"n" * 300),
            "$.ZbReceived.0x1",
            "sub-device id empty, too long or with a NUL",
        ),
        (
            b'{"ok": 1, "S": {"%s": 2}}' % (b"k" * 300),
            "$.S." + "k" * 76 + "...",
            "metric name too long",
        ),
    ],
)
def test_tasmota_bad_part_is_rejected_by_path(
    payload: bytes, path: str, reason: str
) -> None:
    out = decode(payload)
    assert [r.path for r in out.rejects] == [path]
    assert out.rejects[0].reason.startswith(reason), out.rejects[0].reason
    assert [r.metric for r in out.readings] == ["ok"]


def test_tasmota_deep_nesting_is_rejected_not_recursed() -> None:
    out = decode(b'{"ok": 1, "a": ' + b'{"a": ' * 60 + b"1" + b"}" * 61)
    assert [r.metric for r in out.readings] == ["ok"]
    assert [r.reason for r in out.rejects] == ["nested deeper than 32 levels"]


@pytest.mark.parametrize(
    "options",
    [
        {"utc_offset": "+1"},
        {"utc_offset": "+15:00"},
        {"utc_offset": "01:00"},
        {"timezone": "Mars/Olympus"},
        {"timezone": "../etc/passwd"},
        {"timezone": "Europe/Berlin", "utc_offset": "+01:00"},
        {"utc_ofset": "+01:00"},
    ],
)
def test_tasmota_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(options, TasmotaOptions)


@pytest.mark.parametrize(("offset", "iso"), [("Z", "12:00"), ("-03:30", "15:30")])
def test_tasmota_fixed_offsets(offset: str, iso: str) -> None:
    out = decode(b'{"Time": "2024-05-01T12:00:00", "A": 1}', utc_offset=offset)
    assert clock.format_us(out.readings[0].ts) == f"2024-05-01T{iso}:00Z"


# Any input: readings, rejects, firmware, or a DecodeError; nothing else.

PROFILE = settings(
    max_examples=1000, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["2024-05-01T12:00:00", "2024-05-01T12:00:00+02:00", "C"])
)  # fmt: skip
keys = st.sampled_from(
    ["Time", "Epoch", "TempUnit", "PressureUnit", "ZbReceived", "Id", "Name",
     "ENERGY", "TotalStartTime", "StatusSNS", "Info1", "Version", "LYWSD03-5a0001"]
)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(keys | st.text(max_size=6), inner, max_size=6)
    ),
    max_leaves=25,
)
FUZZ = [codec(), codec(timezone="Europe/Berlin", id_key=None, ble_names=False)]


def _check(payload: bytes) -> None:
    for tasmota in FUZZ:
        out = Decoded()
        try:
            tasmota.decode(payload, origin("tele/fuzz/SENSOR", clock.now_us()), out)
        except DecodeError as exc:
            assert exc.path and exc.reason
            continue
        assert out.readings or out.rejects or out.firmware
        for r in out.readings:
            assert "\x00" not in r.device + r.metric
            assert r.device == "fuzz" or r.device.startswith("fuzz/")
            assert isinstance(r.ts, int)
            assert r.value is not None and r.data is None
        assert all("\x00" not in r.path for r in out.rejects)


@PROFILE
@given(documents)
def test_tasmota_never_fails_on_any_json(doc: Any) -> None:
    _check(json.dumps(doc).encode())


@PROFILE
@given(st.binary(max_size=200))
def test_tasmota_never_fails_on_any_bytes(payload: bytes) -> None:
    _check(payload)
