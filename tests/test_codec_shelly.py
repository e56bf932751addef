"""Shelly Gen2: the shelly_gen2 fixtures, bad notifications, and any input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd import clock
from ingestd.codecs.base import Decoded
from ingestd.codecs.shelly import ShellyCodec, ShellyOptions
from ingestd.errors import DecodeError
from ingestd.model import Origin

from .fixture_readings import RECEIVED, as_rows, expected_for, expected_rows, payloads

# Units from the Shelly Gen2 API docs (Switch component), as a route for
# Shelly Plus/Pro switches and meters would configure them.
SHELLY_UNITS = {
    "apower": "W", "voltage": "V", "current": "A", "freq": "Hz",
    "aenergy.total": "Wh", "aenergy.by_minute": "mWh",
    "ret_aenergy.total": "Wh", "ret_aenergy.by_minute": "mWh",
    "temperature.tC": "°C", "temperature.tF": "°F",
}  # fmt: skip
SWITCH: dict[str, Any] = {"units": SHELLY_UNITS}

# Per fixture: the transport identity (MQTT topic capture, None on a route
# without capture), the topic, the receipt time and the route options.
ROUTES: dict[str, tuple[str | None, str, str | None, dict[str, Any]]] = {
    "docs_notifystatus_switch_output": (
        "shellypro4pm-f008d1d8b8b8", "shellypro4pm-f008d1d8b8b8/events/rpc",
        None, SWITCH,
    ),
    "mini_notifystatus_mqtt_connected_no_readings": (
        "shelly1pmmini-sat", "shelly1pmmini-sat/events/rpc", None, SWITCH,
    ),
    "plus2pm_notifystatus_aenergy_delta": (
        None, "shellyplus2pm-garage/events/rpc", None, SWITCH,
    ),
    "plus2pm_status_switch0_full": (
        "shellyplus2pm-garage", "shellyplus2pm-garage/status/switch:0",
        "2023-11-03T08:26:00Z", SWITCH,
    ),
}  # fmt: skip

# The status topic's payload names no device, and project convention makes
# the topic capture the device: the fixture expects the Shelly's own id
# ("map to src id via config"), we store the capture.
DEVICE_DIFFERS = {"plus2pm_status_switch0_full": "shellyplus2pm-garage"}

NOTIFY: dict[str, Any] = {
    "src": "shellyplus1pm-0000000000c1",
    "method": "NotifyStatus",
    "params": {"ts": 1714564790.25, "switch:0": {"id": 0, "apower": 12.5}},
}


def decode(
    payload: bytes | dict[str, Any],
    identity: str | None = None,
    topic: str = "shelly/events/rpc",
    received: int = RECEIVED,
    **options: Any,
) -> Decoded:
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    codec = ShellyCodec(ShellyOptions(**options), clock.Window())
    out = Decoded()
    codec.decode(payload, Origin(identity, "mqtt", received, topic), out)
    return out


def fixture_case(path: Path, **extra: Any) -> Decoded:
    identity, topic, received, options = ROUTES[path.stem]
    at = RECEIVED if received is None else clock.from_text(received, "")
    return decode(path.read_bytes(), identity, topic, at, **options, **extra)


def fixture(prefix: str) -> Path:
    return next(p for p in payloads("shelly_gen2") if p.stem.startswith(prefix))


# -- the shared fixtures ------------------------------------------------------


@pytest.mark.parametrize("path", payloads("shelly_gen2"), ids=lambda p: p.stem)
def test_shelly_fixture_readings(path: Path) -> None:
    expected = expected_for(path)["readings"]
    if path.stem in DEVICE_DIFFERS:
        expected = [{**e, "device": DEVICE_DIFFERS[path.stem]} for e in expected]
    out = fixture_case(path)
    assert as_rows(out.readings) == expected_rows(expected)
    assert not out.rejects


def test_shelly_fixture_system_notification_is_nothing_not_an_error() -> None:
    # {"mqtt": {"connected": true}}: neither readings nor rejects nor an error.
    # The topic capture differs from src, so the alias is still reported.
    out = fixture_case(fixture("mini_notifystatus"))
    assert (out.readings, out.rejects) == ([], [])
    assert out.aliases == [
        ("shelly", "shelly1pmmini-0000000000b2", "shelly1pmmini-sat")
    ]


def test_shelly_fixture_by_minute_rows_on_request() -> None:
    path = fixture("plus2pm_notifystatus")
    expected = expected_for(path)
    out = fixture_case(path, by_minute=True)
    assert as_rows(out.readings) == expected_rows(
        expected["readings"] + expected["optional_readings"]
    )


def test_shelly_fixture_custom_prefix_capture_reports_src_alias() -> None:
    # The same notification on a route that captures the custom MQTT prefix:
    # readings go to the capture, the Shelly's own id becomes an alias of it.
    path = fixture("plus2pm_notifystatus")
    out = decode(path.read_bytes(), "shellyplus2pm-garage", **SWITCH)
    assert {r.device for r in out.readings} == {"shellyplus2pm-garage"}
    assert out.aliases == [
        ("shelly", "shellyplus2pm-0000000000a1", "shellyplus2pm-garage")
    ]


def test_shelly_fixture_fahrenheit_on_request() -> None:
    path = fixture("plus2pm_status")
    out = fixture_case(path, fahrenheit=True)
    temps = {r.metric: (r.value, r.unit) for r in out.readings if "temp" in r.metric}
    assert temps == {
        "switch:0.temperature.tC": (44.9, "°C"),
        "switch:0.temperature.tF": (112.9, "°F"),
    }


def test_shelly_fixture_status_needs_its_topic() -> None:
    path = fixture("plus2pm_status")
    with pytest.raises(DecodeError) as caught:
        decode(path.read_bytes(), "shellyplus2pm-garage", "shellyplus2pm-garage/x")
    assert caught.value.path == "$"
    assert caught.value.reason == (
        "a component status needs its topic <prefix>/status/<component>"
    )


# -- notification rules -------------------------------------------------------


def test_shelly_full_status_skips_system_components_and_nulls() -> None:
    doc = {
        "src": "shellyplus1-0000000000d1",
        "method": "NotifyFullStatus",
        "params": {
            "ts": 1714564790.0,
            "sys": {"uptime": 10, "available_updates": {}},
            "wifi": {"rssi": -60, "ssid": "x"},
            "cloud": {"connected": True},
            "input:0": {"id": 0, "state": None},
            "switch:0": {"id": 0, "output": True, "errors": ["overtemp"]},
            "temperature:100": {"id": 100, "tC": 21.5, "tF": 70.7},
        },
    }
    out = decode(doc, units={"temperature:100.tC": "°C"})
    assert {r.metric: (r.value, r.unit) for r in out.readings} == {
        "switch:0.output": (True, None),
        "switch:0.errors": (["overtemp"], None),
        "temperature:100.tC": (21.5, "°C"),
    }
    assert not out.rejects
    assert {r.device for r in out.readings} == {"shellyplus1-0000000000d1"}
    assert {clock.format_us(r.ts) for r in out.readings} == {"2024-05-01T11:59:50Z"}


def test_shelly_system_components_and_ignored_fields_are_configurable() -> None:
    doc = {**NOTIFY, "params": {"wifi": {"rssi": -60}, "switch:0": {"id": 0}}}
    out = decode(doc, system=[], ignore=["wifi.ssid"])
    assert {r.metric: r.value for r in out.readings} == {
        "wifi.rssi": -60.0, "switch:0.id": 0.0,
    }  # fmt: skip


def test_shelly_notification_without_ts_takes_receipt() -> None:
    doc = {**NOTIFY, "params": {"switch:0": {"output": False}}}
    assert decode(doc).readings[0].ts == RECEIVED


def test_shelly_notify_event_becomes_text_reading_at_event_time() -> None:
    doc = {
        "src": "shellyplus1-0000000000d1",
        "method": "NotifyEvent",
        "params": {
            "ts": 1714564790.0,
            "events": [
                {"component": "input:0", "id": 0, "event": "single_push",
                 "ts": 1714564789.5},
                {"component": "sys", "event": "config_changed", "ts": 1714564789},
                {"component": "input:1", "event": "long_push"},
            ],
        },
    }  # fmt: skip
    out = decode(doc)
    assert [(r.metric, r.value, clock.format_us(r.ts)) for r in out.readings] == [
        ("input:0.event", "single_push", "2024-05-01T11:59:49.500000Z"),
        ("input:1.event", "long_push", "2024-05-01T11:59:50Z"),
    ]
    assert decode(doc, events=False).readings == []


def test_shelly_ret_aenergy_by_minute_follows_minute_ts() -> None:
    counter = {"total": 5.5, "by_minute": [10, 20.5], "minute_ts": 1714564740}
    doc = {**NOTIFY, "params": {"ts": 1714564790, "em1:0": {"ret_aenergy": counter}}}
    out = decode(doc, by_minute=True, units=SHELLY_UNITS)
    assert [
        (r.metric, r.value, r.unit, clock.format_us(r.ts)) for r in out.readings
    ] == [
        ("em1:0.ret_aenergy.total", 5.5, "Wh", "2024-05-01T11:59:50Z"),
        ("em1:0.ret_aenergy.by_minute[0]", 10.0, "mWh", "2024-05-01T11:59:00Z"),
        ("em1:0.ret_aenergy.by_minute[1]", 20.5, "mWh", "2024-05-01T11:58:00Z"),
    ]


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "identity", "topic", "reason", "where"),
    [
        (b"{", None, "x/events/rpc", "invalid JSON: unexpected end of data", "byte 1"),
        (b"true", "d", "d/online", "expected an object, got boolean", "$"),
        ({**NOTIFY, "params": [1]}, None, "x/events/rpc",
         "expected an object, got array", "$.params"),
        ({**NOTIFY, "method": "Switch.Set"}, None, "x/events/rpc",
         "method is not NotifyStatus, NotifyFullStatus or NotifyEvent", "$.method"),
        ({**NOTIFY, "src": ""}, None, "x/events/rpc",
         "no device id: no transport identity or src", "$.src"),
        ({"method": "NotifyStatus", "params": {}}, None, "x/events/rpc",
         "no device id: no transport identity or src", "$.src"),
        ({**NOTIFY, "params": {"ts": "now"}}, None, "x/events/rpc",
         "timestamp must be a number or ISO 8601 text", "$.params.ts"),
        ({**NOTIFY, "params": {"ts": 4102444800}}, None, "x/events/rpc",
         "timestamp 2100-01-01T00:00:00Z out of plausible range", "$.params.ts"),
        ({"id": 1, "src": "shelly-1", "result": {}}, None, "x/rpc",
         "an RPC frame without a method is no notification", "$"),
        ({"id": 0, "apower": 1}, None, "d/status/switch:0",
         "no device id: no transport identity", "$"),
        ({"id": 0, "apower": 1}, "d", "d/status/", 
         "a component status needs its topic <prefix>/status/<component>", "$"),
    ],
)  # fmt: skip
def test_shelly_unusable_message_names_where(
    payload: bytes | dict[str, Any],
    identity: str | None,
    topic: str,
    reason: str,
    where: str,
) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(payload, identity, topic)
    assert caught.value.reason == reason
    assert caught.value.path == where


@pytest.mark.parametrize(
    ("params", "path", "reason"),
    [
        ({"switch:1": 5}, "$.params.switch:1", "expected an object, got number"),
        ({"switch:1": {"a\x00": 1}}, "$.params.switch:1.a\\0",
         "field name empty or with a NUL character"),
        ({"a\x00:1": {"x": 1}}, "$.params.a\\0:1",
         "component name empty, too long or with a NUL character"),
        ({"switch:1": {"s": "a\x00"}}, "$.params.switch:1.s",
         "text contains a NUL character"),
        ({"switch:1": {"s": {"t": ["\x00"]}}}, "$.params.switch:1.s.t",
         "text contains a NUL character"),
        ({"switch:1": {"aenergy": {"by_minute": [1, "x"], "minute_ts": 1714564740}}},
         "$.params.switch:1.aenergy.by_minute[1]", "expected a number, got string"),
        ({"switch:1": {"aenergy": {"by_minute": 7, "minute_ts": 1714564740}}},
         "$.params.switch:1.aenergy.by_minute", "expected an array, got number"),
        ({"switch:1": {"aenergy": {"by_minute": [1], "minute_ts": "x"}}},
         "$.params.switch:1.aenergy.minute_ts",
         "timestamp must be a number or ISO 8601 text"),
    ],
)  # fmt: skip
def test_shelly_bad_part_is_rejected_by_path(
    params: dict[str, Any], path: str, reason: str
) -> None:
    doc = {**NOTIFY, "params": {**NOTIFY["params"], **params}}
    out = decode(doc, by_minute=True)
    assert [(r.path, r.reason) for r in out.rejects] == [(path, reason)]
    assert "switch:0.apower" in {r.metric for r in out.readings}


def test_shelly_bad_event_is_rejected_by_path() -> None:
    events = [{"component": "input:0"}, 3, {"component": "input:0", "event": "x",
              "ts": -5}]  # fmt: skip
    doc = {**NOTIFY, "method": "NotifyEvent", "params": {"events": events}}
    out = decode(doc)
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$.params.events[0]", "an event names its component and event as text"),
        ("$.params.events[1]", "expected an object, got number"),
        ("$.params.events[2].ts",
         "timestamp 1969-12-31T23:59:55Z out of plausible range"),
    ]  # fmt: skip


def test_shelly_bad_src_beside_an_identity_is_rejected_readings_kept() -> None:
    out = decode({**NOTIFY, "src": ["x"]}, identity="shelly-1")
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$.src", "src must be text of 1 to 256 characters, no NUL")
    ]
    assert [(r.device, r.metric) for r in out.readings] == [
        ("shelly-1", "switch:0.apower")
    ]
    assert out.aliases == []


def test_shelly_deep_nesting_is_rejected_not_recursed() -> None:
    deep: dict[str, Any] = {"x": 1}
    for _ in range(30):
        deep = {"a": deep}
    doc = {**NOTIFY, "params": {"switch:0": {"apower": 1, "d": deep}}}
    out = decode(doc)
    assert [r.metric for r in out.readings] == ["switch:0.apower"]
    assert out.rejects[0].reason == "nested deeper than 16 levels"


# -- any input ---------------------------------------------------------------

PROFILE = settings(
    max_examples=1000, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
CODECS = [
    ShellyCodec(ShellyOptions(units=SHELLY_UNITS), clock.Window()),
    ShellyCodec(ShellyOptions(by_minute=True, fahrenheit=True, system=[]),
                clock.Window()),
]  # fmt: skip
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=10) | st.just(1714564790.5)
)  # fmt: skip
keys = st.sampled_from(
    ["ts", "tC", "tF", "by_minute", "minute_ts", "id", "source", "events",
     "component", "event", "switch:0", "mqtt", "aenergy", "apower"]
) | st.text(max_size=6)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5)
    ),
    max_leaves=20,
)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, anything the fourth."""
    pick = st.sampled_from([True, True, True, False])
    return pick.flatmap(lambda ok: good if ok else documents)


components = st.sampled_from(["switch:0", "em1:0", "temperature:100", "mqtt"])
status = st.fixed_dictionaries(
    {}, optional={"id": st.integers(0, 3), "apower": st.floats(allow_nan=False),
                  "output": st.booleans(), "tC": st.floats(-40, 100),
                  "tF": st.floats(-40, 200), "errors": documents,
                  "aenergy": st.fixed_dictionaries(
                      {}, optional={"total": st.floats(0, 1e6),
                                    "by_minute": st.lists(scalars, max_size=3),
                                    "minute_ts": st.just(1714564740) | scalars})},
)  # fmt: skip
event = st.fixed_dictionaries(
    {"component": components | st.text(max_size=4), "event": st.text(max_size=8)},
    optional={"ts": st.just(1714564789.5) | scalars},
)  # fmt: skip
params = st.fixed_dictionaries(
    {}, optional={"ts": mostly(st.sampled_from([1714564790.25, 1714564790])),
                  "events": st.lists(event | documents, max_size=3)},
).flatmap(
    lambda head: st.dictionaries(
        components | keys, mostly(status), min_size=1, max_size=4
    ).map(lambda rest: {**rest, **head})
)  # fmt: skip
notifications = st.fixed_dictionaries(
    {"method": mostly(st.sampled_from(["NotifyStatus", "NotifyFullStatus",
                                       "NotifyEvent"])),
     "src": mostly(st.sampled_from(["shelly-1", "d"])),
     "params": mostly(params)},
)  # fmt: skip
topics = st.sampled_from(["d/events/rpc", "d/status/switch:0", "d/status/sys", ""])


def check(payload: bytes, identity: str | None, topic: str) -> None:
    for codec in CODECS:
        out = Decoded()
        try:
            codec.decode(payload, Origin(identity, "fuzz", clock.now_us(), topic), out)
        except DecodeError as exc:
            assert exc.path and exc.reason
            continue
        # Only a well-formed object may hold no telemetry (system components)
        assert out.readings or out.rejects or payload.startswith(b"{")
        for r in out.readings:
            assert "\x00" not in r.device + r.metric + (r.unit or "")
            assert isinstance(r.ts, int)
            assert (r.value is None) != (r.data is None)
        for j in out.rejects:
            assert "\x00" not in j.path + j.reason


@PROFILE
@given(notifications | status | documents, st.sampled_from([None, "d"]), topics)
def test_shelly_never_fails_on_any_message(
    doc: Any, identity: str | None, topic: str
) -> None:
    check(json.dumps(doc).encode(), identity, topic)


@PROFILE
@given(st.binary(max_size=200))
def test_shelly_never_fails_on_any_bytes(payload: bytes) -> None:
    check(payload, "d", "d/status/switch:0")
