"""Zigbee2MQTT: the shared zigbee2mqtt fixtures, topics that are not state,
repeat suppression and the ways a state message goes bad."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd import clock
from ingestd.codecs import zigbee2mqtt
from ingestd.codecs.base import Decoded
from ingestd.codecs.zigbee2mqtt import Zigbee2mqttCodec, Zigbee2mqttOptions
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

FOLDER = "zigbee2mqtt"
AQARA_UNITS = {
    "battery": "%", "humidity": "%", "linkquality": "lqi", "pressure": "hPa",
    "temperature": "°C", "voltage": "mV",
}  # fmt: skip

# Route options a user would configure per device type: the units its
# exposes definition lists (the fixtures' unit_source).
ROUTES: dict[str, dict[str, Any]] = {
    "docs_tradfri_bulb_state": {"units": {"color_temp": "mired"}},
    "docs_wsdcgq01lm_temp_humidity": {"units": {"temperature": "°C", "humidity": "%"}},
    "aqara_wsdcgq11lm_burst_duplicates.session": {"units": AQARA_UNITS},
}


def codec(**options: Any) -> Zigbee2mqttCodec:
    return Zigbee2mqttCodec(
        msgspec.convert(options, Zigbee2mqttOptions), clock.Window()
    )


def origin(topic: str, received: int = RECEIVED) -> Origin:
    """What the route ``zigbee2mqtt/{device...}`` makes of a topic."""
    return Origin(topic.removeprefix("zigbee2mqtt/"), "test", received, topic)


def decode(
    payload: bytes, topic: str = "zigbee2mqtt/living/sensor", **options: Any
) -> Decoded:
    out = Decoded()
    codec(**options).decode(payload, origin(topic), out)
    return out


def replay(path: Path, z2m: Zigbee2mqttCodec) -> Decoded:
    """Every message of a session, in order, through one codec instance."""
    out = Decoded()
    for message in json.loads(path.read_text())["messages"]:
        received = clock.from_text(message["received_at"], "")
        payload = json.dumps(message["payload"]).encode()
        z2m.decode(payload, origin(message["topic"], received), out)
    return out


STATE_FIXTURES = [p for p in payloads(FOLDER) if not p.stem.endswith(".session")]
TRADFRI = FIXTURES / FOLDER / "docs_tradfri_bulb_state.json"
BURST = FIXTURES / FOLDER / "aqara_wsdcgq11lm_burst_duplicates.session.json"


@pytest.mark.parametrize("path", STATE_FIXTURES, ids=lambda p: p.stem)
def test_zigbee2mqtt_fixture_readings(path: Path) -> None:
    expected = expected_for(path)
    out = Decoded()
    topic = expected["context"]["mqtt_topic"]
    codec(**ROUTES[path.stem]).decode(path.read_bytes(), origin(topic), out)
    assert not out.rejects
    assert as_rows(out.readings) == expected_rows(expected["readings"])
    assert {r.format for r in out.readings} == {"zigbee2mqtt"}


def test_zigbee2mqtt_fixture_burst_without_suppression_stores_every_copy() -> None:
    # The fixture's policy: all 5 messages parse; 35 rows is correct (each
    # republish has its own receipt time) but wasteful.
    expected = expected_for(BURST)
    out = replay(BURST, codec(**ROUTES[BURST.stem]))
    assert len(out.readings) == expected["readings_without_dedup_count"] == 35
    assert len({(r.device, r.metric, r.ts) for r in out.readings}) == 35
    assert {r.device for r in out.readings} == {"bathroom/humidity_1"}


def test_zigbee2mqtt_fixture_burst_with_suppression_matches_dedup() -> None:
    z2m = codec(**ROUTES[BURST.stem], suppress_repeats_ms=10_000)
    out = replay(BURST, z2m)
    expected = expected_for(BURST)
    assert as_rows(out.readings) == expected_rows(expected["readings_with_dedup"])


def test_zigbee2mqtt_suppression_stores_an_unchanged_value_once_per_window() -> None:
    z2m = codec(suppress_repeats_ms=1000)
    stored = []
    for ms, value in [(0, 1), (400, 1), (999, 1), (1000, 1), (1100, 2), (1200, 1)]:
        out = Decoded()
        z2m.decode(b'{"t": %d}' % value, origin("zigbee2mqtt/a", ms * 1000), out)
        stored += [(r.ts // 1000, r.value) for r in out.readings]
    assert stored == [(0, 1.0), (1000, 1.0), (1100, 2.0), (1200, 1.0)]


def test_zigbee2mqtt_suppression_tells_true_from_one() -> None:
    z2m = codec(suppress_repeats_ms=1000)
    values = []
    for payload in (b'{"x": 1}', b'{"x": true}'):
        out = Decoded()
        z2m.decode(payload, origin("zigbee2mqtt/a"), out)
        values += [r.value for r in out.readings]
    assert values == [1.0, True]


def test_zigbee2mqtt_suppression_memory_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(zigbee2mqtt, "MAX_TRACKED", 2)
    z2m = codec(suppress_repeats_ms=60_000)
    for name in ("a", "b", "c", "a"):
        z2m.decode(b'{"t": 1}', origin(f"zigbee2mqtt/{name}"), Decoded())
    assert list(z2m._last) == [("c", "t"), ("a", "t")]


@pytest.mark.parametrize(
    "topic",
    [
        *expected_for(TRADFRI)["must_not_ingest_topics"][:3],
        "zigbee2mqtt/bridge/state",
        "zigbee2mqtt/bridge/devices",
        "zigbee2mqtt/bridge/response/device/rename",
        "zigbee2mqtt/kitchen/floor_light/set/brightness",
        "zigbee2mqtt/kitchen/floor_light/get/state",
    ],
)
def test_zigbee2mqtt_topics_that_are_not_state_give_nothing(topic: str) -> None:
    out = decode(b'{"state": "ON", "brightness": 10}', topic)
    assert (out.readings, out.rejects, out.offline) == ([], [], [])


@pytest.mark.parametrize(
    ("payload", "offline"),
    [
        (b"offline", ["kitchen/floor_light"]),
        (b'{"state":"offline"}', ["kitchen/floor_light"]),
        (b"online", []),
        (b'{"state":"online"}', []),
        (b"\xff{", []),
    ],
)
def test_zigbee2mqtt_availability_marks_the_device_offline(
    payload: bytes, offline: list[str]
) -> None:
    out = decode(payload, "zigbee2mqtt/kitchen/floor_light/availability")
    assert out.offline == offline
    assert not out.readings and not out.rejects


def test_zigbee2mqtt_without_capture_the_name_comes_from_the_topic() -> None:
    out = Decoded()
    z2m = codec(base_topic="home/z2m")
    z2m.decode(b'{"t": 1}', Origin(None, "test", RECEIVED, "home/z2m/a/b"), out)
    assert [r.device for r in out.readings] == ["a/b"]
    with pytest.raises(DecodeError) as exc:
        z2m.decode(b'{"t": 1}', Origin(None, "test", RECEIVED, "other/a"), Decoded())
    assert exc.value.reason == "no device: topic is not under 'home/z2m/'"


def test_zigbee2mqtt_on_off_stays_text_or_becomes_bool() -> None:
    payload = b'{"state": "ON", "state_l2": "OFF", "mode": "auto"}'
    assert [r.value for r in decode(payload).readings] == ["ON", "OFF", "auto"]
    out = decode(payload, on_off="bool")
    assert [r.value for r in out.readings] == [True, False, "auto"]


def test_zigbee2mqtt_nested_objects_flatten_to_dotted_names() -> None:
    payload = b'{"color": {"x": 0.7, "y": 0.28, "hue": {"deg": 2}}, "list": [1, 2]}'
    out = decode(payload, units={"color.x": "cie"})
    assert [(r.metric, r.value, r.unit) for r in out.readings] == [
        ("color.x", 0.7, "cie"), ("color.y", 0.28, None),
        ("color.hue.deg", 2.0, None), ("list", [1, 2], None),
    ]  # fmt: skip


def test_zigbee2mqtt_nulls_are_no_reading_and_no_reject() -> None:
    out = decode(b'{"action": null, "battery": 90, "update": {"state": null}}')
    assert [r.metric for r in out.readings] == ["battery"]
    assert not out.rejects
    empty = decode(b'{"action": null}')
    assert (empty.readings, empty.rejects) == ([], [])


def test_zigbee2mqtt_ignore_skips_a_metric_and_its_subtree() -> None:
    payload = b'{"t": 1, "update": {"state": "idle"}, "update_available": false}'
    out = decode(payload, ignore=["update", "update_available"])
    assert [r.metric for r in out.readings] == ["t"]


@pytest.mark.parametrize(
    ("last_seen", "iso"),
    [
        (b"1714564790123", "2024-05-01T11:59:50.123000Z"),
        (b'"2024-05-01T13:59:50+02:00"', "2024-05-01T11:59:50Z"),
        (b'"2024-05-01T11:59:50.5Z"', "2024-05-01T11:59:50.500000Z"),
    ],
)
def test_zigbee2mqtt_last_seen_is_the_time(last_seen: bytes, iso: str) -> None:
    out = decode(b'{"t": 1, "last_seen": %s}' % last_seen)
    assert [(r.metric, clock.format_us(r.ts)) for r in out.readings] == [("t", iso)]


def test_zigbee2mqtt_last_seen_is_a_reading_when_time_key_is_off() -> None:
    out = decode(b'{"t": 1, "last_seen": 1714564790123}', time_key=None)
    assert {r.metric for r in out.readings} == {"t", "last_seen"}
    assert {r.ts for r in out.readings} == {RECEIVED}


def test_zigbee2mqtt_device_information_is_an_alias_and_firmware() -> None:
    payload = (
        b'{"t": 21.5, "device": {"friendlyName": "living/sensor", '
        b'"ieeeAddr": "0x00158d0000000001", "softwareBuildID": "3000-0001"}}'
    )
    out = decode(payload)
    assert [r.metric for r in out.readings] == ["t"]
    assert out.aliases == [("zigbee", "0x00158d0000000001", "living/sensor")]
    assert out.firmware == {"living/sensor": "3000-0001"}


@pytest.mark.parametrize(
    ("payload", "reason", "where"),
    [
        (b'{"t": 1', "invalid JSON: unexpected end", "byte 7"),
        (b'{"t": NaN}', "invalid JSON", "byte 6"),
        (b'{"t": "\xff"}', "invalid JSON: str is not valid UTF-8", "byte 0"),
        (b"", "invalid JSON", "byte 0"),
        (b"[1, 2]", "expected an object, got array", "$"),
        (b'"ON"', "expected an object, got string", "$"),
        (b'{"t": 1, "last_seen": "yesterday"}', "not an ISO 8601 time", "$.last_seen"),
        (b'{"t": 1, "last_seen": 4102444800000}', "timestamp 2100-", "$.last_seen"),
        (b'{"t": 1, "last_seen": true}', "timestamp must be", "$.last_seen"),
    ],
)
def test_zigbee2mqtt_unusable_message_names_where(
    payload: bytes, reason: str, where: str
) -> None:
    with pytest.raises(DecodeError) as exc:
        decode(payload)
    assert exc.value.reason.startswith(reason), exc.value.reason
    assert exc.value.path == where


@pytest.mark.parametrize(
    ("payload", "path", "reason"),
    [
        (b'{"ok": 1, "bad": "a\\u0000"}', "$.bad", "text contains a NUL character"),
        (b'{"ok": 1, "bad": ["\\u0000"]}', "$.bad", "text contains a NUL character"),
        (
            b'{"ok": 1, "b\\u0000d": 2}',
            "$.b\\0d",
            "metric name empty or with a NUL character",
        ),
        (b'{"ok": 1, "": 2}', '$.""', "metric name empty or with a NUL character"),
        (b'{"ok": 1, "c": {"": 2}}', '$.c.""', "metric name empty or with a NUL"),
        (b'{"ok": 1, "%s": 2}' % (b"k" * 300), "$." + "k" * 64 + "...", "metric"),
    ],
)
def test_zigbee2mqtt_bad_value_is_rejected_by_path(
    payload: bytes, path: str, reason: str
) -> None:
    out = decode(payload)
    assert [r.path for r in out.rejects] == [path]
    assert out.rejects[0].reason.startswith(reason), out.rejects[0].reason
    assert [r.metric for r in out.readings] == ["ok"]


def test_zigbee2mqtt_deep_nesting_is_rejected_not_recursed() -> None:
    out = decode(b'{"a": ' * 60 + b"1" + b"}" * 60)
    assert not out.readings
    assert [r.reason for r in out.rejects] == ["nested deeper than 32 levels"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "friendly name empty, too long or with a NUL"),
        ("a\x00b", "friendly name empty, too long or with a NUL"),
        ("n" * 300, "friendly name empty, too long or with a NUL"),
    ],
)
def test_zigbee2mqtt_bad_friendly_name_is_refused(name: str, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        codec().decode(b'{"t": 1}', Origin(name, "test", RECEIVED, ""), Decoded())
    assert (exc.value.reason, exc.value.path) == (reason, "$")


def test_zigbee2mqtt_options_are_validated() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"suppress_repeats_ms": -1}, Zigbee2mqttOptions)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"on_off": "yes"}, Zigbee2mqttOptions)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"unit": {}}, Zigbee2mqttOptions)


# Any input: readings, rejects, a documented empty answer, or a DecodeError.

PROFILE = settings(
    max_examples=1000, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=12)
)  # fmt: skip
keys = st.sampled_from(["last_seen", "device", "ieeeAddr", "state", "color"])
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(keys | st.text(max_size=6), inner, max_size=6)
    ),
    max_leaves=25,
)
topics = st.sampled_from(
    ["zigbee2mqtt/a", "zigbee2mqtt/a/b", "zigbee2mqtt/bridge/x", "zigbee2mqtt/a/set"]
)
FUZZ = [codec(), codec(on_off="bool", suppress_repeats_ms=500, time_key=None)]


def _has_value(doc: Any, top: bool = True) -> bool:
    """Whether a state holds a reading: not only nulls, time and device info."""
    if type(doc) is dict:
        registry = ("last_seen", "device") if top else ()
        return any(_has_value(v, False) for k, v in doc.items() if k not in registry)
    return doc is not None


def _check(payload: bytes, topic: str, doc: Any = None) -> None:
    for z2m in FUZZ:
        out = Decoded()
        try:
            z2m.decode(payload, origin(topic, clock.now_us()), out)
        except DecodeError as exc:
            assert exc.path and exc.reason
            continue
        answered = out.readings or out.rejects
        not_state = topic.endswith(("/x", "/set"))
        assert answered or not_state or not _has_value(doc) or z2m._repeat_us
        for r in out.readings:
            assert "\x00" not in r.device + r.metric
            assert isinstance(r.ts, int)
            assert r.value is not None and r.data is None
        assert all("\x00" not in r.path for r in out.rejects)


@PROFILE
@given(documents, topics)
def test_zigbee2mqtt_never_fails_on_any_json(doc: Any, topic: str) -> None:
    _check(json.dumps(doc).encode(), topic, doc)


@PROFILE
@given(st.binary(max_size=200))
def test_zigbee2mqtt_never_fails_on_any_bytes(payload: bytes) -> None:
    _check(payload, "zigbee2mqtt/a")
