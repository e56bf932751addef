"""LoRaWAN network servers: the ttn_v3 and chirpstack_v4 fixtures, bad uplinks,
and any input at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd import clock
from ingestd.codecs.base import Decoded
from ingestd.codecs.lorawan import (
    ChirpstackCodec,
    ChirpstackOptions,
    TtnCodec,
    TtnOptions,
)
from ingestd.errors import DecodeError
from ingestd.model import Origin

from .fixture_readings import RECEIVED, as_rows, expected_for, expected_rows, payloads

# Route options per fixture, as a user would configure that application, and
# the receipt time. The default assumed receipt (2024-05-01T12:00:00Z) comes
# before three of the captures: a network server time after receipt is out
# of the plausible window, so those are received just after they were sent.
# Where a fixture lists radio readings (optional_radio_metadata_readings) the
# route keeps the default radio metrics and the test expects those rows too;
# elsewhere the route switches radio metrics off, as the fixture lists none.
NO_RADIO: dict[str, Any] = {"radio": []}
ROUTES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "ttn_dragino_soil_values_as_strings_with_units": (None, NO_RADIO),
    "tts_decoded_float32_artifacts": (None, NO_RADIO),
    "tts_docs_uplink_example": (None, {}),
    "tts_event_stream_as_up_data_forward": ("2025-11-07T08:52:15Z", NO_RADIO),
    "decentlab_dl5tm_data_only": ("2024-11-12T12:51:51Z", NO_RADIO),
    "docs_up_event_no_object": (None, {}),
    "dragino_tracker_object_mixed_types": (None, NO_RADIO),
    "helium_mapper_object_clock_skew": ("2024-07-23T03:15:38Z", NO_RADIO),
}

TTS_UPLINK: dict[str, Any] = {
    "end_device_ids": {"device_id": "dev1", "dev_eui": "70B3D57ED0000A01"},
    "uplink_message": {
        "decoded_payload": {"t": 4.5},
        "received_at": "2024-05-01T11:59:59.5Z",
    },
}
CS_UPLINK: dict[str, Any] = {
    "time": "2024-05-01T11:59:59.5+00:00",
    "deviceInfo": {"devEui": "0101010101010101", "deviceName": "Test device"},
    "fPort": 1,
    "object": {"t": 4.5},
}


def received_for(stem: str) -> int:
    iso = ROUTES[stem][0]
    return RECEIVED if iso is None else clock.from_text(iso, "")


def decode(
    codec: str,
    payload: bytes | dict[str, Any],
    identity: str | None = None,
    received: int = RECEIVED,
    **options: Any,
) -> Decoded:
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    made = (
        TtnCodec(TtnOptions(**options), clock.Window())
        if codec == "ttn"
        else ChirpstackCodec(ChirpstackOptions(**options), clock.Window())
    )
    out = Decoded()
    made.decode(payload, Origin(identity, "mqtt", received), out)
    return out


def uplink(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``base`` with ``__``-separated paths set (``...`` deletes)."""
    doc: dict[str, Any] = json.loads(json.dumps(base))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = doc
        for step in parents:
            node = node.setdefault(step, {})
        if value is ...:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


def fixture_case(folder: str, path: Path) -> tuple[Decoded, list[Any]]:
    expected = expected_for(path)
    _, options = ROUTES[path.stem]
    codec = "ttn" if folder == "ttn_v3" else "chirpstack"
    out = decode(codec, path.read_bytes(), received=received_for(path.stem), **options)
    rows = list(expected["readings"])
    if options.get("radio") != []:
        rows += expected.get("optional_radio_metadata_readings", [])
    return out, expected_rows(rows)


# -- the shared fixtures ------------------------------------------------------


@pytest.mark.parametrize("path", payloads("ttn_v3"), ids=lambda p: p.stem)
def test_ttn_fixture_readings(path: Path) -> None:
    out, expected = fixture_case("ttn_v3", path)
    assert as_rows(out.readings) == expected
    assert not out.rejects


@pytest.mark.parametrize("path", payloads("chirpstack_v4"), ids=lambda p: p.stem)
def test_chirpstack_fixture_readings(path: Path) -> None:
    out, expected = fixture_case("chirpstack_v4", path)
    assert as_rows(out.readings) == expected
    assert not out.rejects


@pytest.mark.parametrize(
    ("folder", "stem", "alias"),
    [
        ("ttn_v3", "ttn_dragino_soil_values_as_strings_with_units",
         ("lorawan", "a840410000000c01", "eui-a840410000000c01")),
        ("ttn_v3", "tts_decoded_float32_artifacts",
         ("lorawan", "70b3d5499000e001", "dev4")),
        ("ttn_v3", "tts_docs_uplink_example", ("lorawan", "70b3d57ed0000a01", "dev1")),
        ("ttn_v3", "tts_event_stream_as_up_data_forward",
         ("lorawan", "0025ca0000000d01", "rs261-demo-01")),
        ("chirpstack_v4", "decentlab_dl5tm_data_only",
         ("lorawan", "70b3d57ba0000b02", "70b3d57ba0000b02")),
        ("chirpstack_v4", "docs_up_event_no_object",
         ("lorawan", "0101010101010101", "0101010101010101")),
    ],
)  # fmt: skip
def test_lorawan_fixture_reports_lowercase_deveui_alias(
    folder: str, stem: str, alias: tuple[str, str, str]
) -> None:
    path = next(p for p in payloads(folder) if p.stem == stem)
    out, _ = fixture_case(folder, path)
    assert out.aliases == [alias]


def test_ttn_fixture_all_radio_metrics_of_the_best_gateway() -> None:
    # Dragino soil: f_cnt is absent (proto3 JSON drops a zero), frequency is
    # uint64 text, the spreading factor sits under settings.data_rate.lora.
    path = next(p for p in payloads("ttn_v3") if p.stem.startswith("ttn_dragino"))
    radio = ["rssi", "snr", "frequency", "sf", "f_cnt", "f_port", "gateways"]
    out = decode("ttn", path.read_bytes(), radio=radio, radio_prefix="lora.")
    found = {r.metric: (r.value, r.unit) for r in out.readings if "." in r.metric}
    assert found == {
        "lora.rssi": (-42.0, "dBm"), "lora.snr": (5.8, "dB"),
        "lora.frequency": (867500000.0, "Hz"), "lora.sf": (12.0, None),
        "lora.f_cnt": (0.0, None), "lora.f_port": (2.0, None),
        "lora.gateways": (1.0, None),
    }  # fmt: skip


def test_chirpstack_fixture_missing_fcnt_is_zero() -> None:
    path = next(p for p in payloads("chirpstack_v4") if p.stem.startswith("docs_up"))
    radio = ["f_cnt", "f_port", "frequency", "sf"]
    out = decode("chirpstack", path.read_bytes(), radio=radio)
    assert {r.metric: r.value for r in out.readings} == {
        "rx.f_cnt": 0.0, "rx.f_port": 1.0, "rx.frequency": 867100000.0,
        "rx.sf": 11.0,
    }  # fmt: skip


def test_chirpstack_fixture_without_object_stores_the_frame_on_request() -> None:
    # Default: no decoded object, no telemetry (the fixture's readings: []).
    # With raw_metric the frame is kept as bytes for a later decoder.
    path = next(p for p in payloads("chirpstack_v4") if p.stem.startswith("decentlab"))
    received = received_for(path.stem)
    out = decode("chirpstack", path.read_bytes(), received=received, radio=[])
    assert out.readings == [] and out.rejects == []
    out = decode(
        "chirpstack", path.read_bytes(), received=received, radio=[], raw_metric="frame"
    )
    assert [(r.metric, r.value, r.data) for r in out.readings] == [
        ("frame", None, bytes.fromhex("02023b0003003702710c60"))
    ]
    assert clock.format_us(out.readings[0].ts) == "2024-11-10T12:51:50Z"


def test_ttn_fixture_malformed_frame_is_ignored_when_decoded() -> None:
    # frm_payload has a broken base64 tail; decoded_payload is authoritative.
    path = next(p for p in payloads("ttn_v3") if p.stem.startswith("tts_decoded"))
    out = decode("ttn", path.read_bytes(), radio=[], raw_metric="frame")
    assert "frame" not in {r.metric for r in out.readings}
    assert not out.rejects


def test_ttn_fixture_unit_text_can_stay_text() -> None:
    path = next(p for p in payloads("ttn_v3") if p.stem.startswith("ttn_dragino"))
    out = decode("ttn", path.read_bytes(), radio=[], unit_text=False)
    assert {r.metric: (r.value, r.unit) for r in out.readings}["temp_SOIL"] == (
        "30.11 °C",
        None,
    )


def test_chirpstack_fixture_time_is_top_level_not_gateway_clocks() -> None:
    path = next(p for p in payloads("chirpstack_v4") if p.stem.startswith("helium"))
    out = decode("chirpstack", path.read_bytes(), received=received_for(path.stem))
    assert {clock.format_us(r.ts) for r in out.readings} == {
        "2024-07-23T03:15:37.161000Z"
    }


def test_ttn_fixture_event_stream_too_early_for_default_receipt() -> None:
    # The capture is from 2025-11-07: received at the default assumed time it
    # would lie in the future, which the plausible window refuses.
    path = next(p for p in payloads("ttn_v3") if p.stem.startswith("tts_event"))
    with pytest.raises(DecodeError) as caught:
        decode("ttn", path.read_bytes())
    assert caught.value.path == "$.data.received_at"
    assert "out of plausible range" in caught.value.reason


# -- device, time and radio rules ---------------------------------------------


def test_ttn_device_by_dev_eui_or_device_id() -> None:
    out = decode("ttn", TTS_UPLINK, identity="topic-dev", device="dev_eui")
    assert {r.device for r in out.readings} == {"70b3d57ed0000a01"}
    assert out.aliases == [("lorawan", "70b3d57ed0000a01", "70b3d57ed0000a01")]
    # The network server is the gateway: its device id wins over the topic's
    out = decode("ttn", TTS_UPLINK, identity="topic-dev")
    assert {r.device for r in out.readings} == {"dev1"}


def test_ttn_without_device_in_payload_takes_transport_identity() -> None:
    doc = uplink(TTS_UPLINK, end_device_ids=...)
    out = decode("ttn", doc, identity="topic-dev")
    assert {r.device for r in out.readings} == {"topic-dev"}
    assert out.aliases == []


def test_chirpstack_device_by_name_keeps_deveui_alias() -> None:
    out = decode("chirpstack", CS_UPLINK, device="device_name")
    assert {r.device for r in out.readings} == {"Test device"}
    assert out.aliases == [("lorawan", "0101010101010101", "Test device")]


def test_chirpstack_uppercase_deveui_is_lowercased() -> None:
    doc = uplink(CS_UPLINK, deviceInfo__devEui="A84041000000F004")
    out = decode("chirpstack", doc)
    assert {r.device for r in out.readings} == {"a84041000000f004"}


def test_ttn_time_falls_back_to_top_level_then_receipt() -> None:
    doc = uplink(TTS_UPLINK, uplink_message__received_at=...)
    doc["received_at"] = "2024-05-01T11:00:00Z"
    assert clock.format_us(decode("ttn", doc).readings[0].ts) == "2024-05-01T11:00:00Z"
    del doc["received_at"]
    assert decode("ttn", doc).readings[0].ts == RECEIVED


def test_lorawan_best_gateway_is_highest_snr_then_rssi() -> None:
    gateways = [
        {"rssi": -30, "snr": 2.0},
        {"rssi": -90, "snr": 9.5},
        {"channel_rssi": -80},
        {"rssi": -95, "snr": 9.5},
    ]
    doc = uplink(TTS_UPLINK, uplink_message__rx_metadata=gateways)
    out = decode("ttn", doc, radio=["rssi", "snr", "gateways"])
    assert {r.metric: r.value for r in out.readings} == {
        "t": 4.5, "rx.rssi": -90.0, "rx.snr": 9.5, "rx.gateways": 4.0,
    }  # fmt: skip
    doc = uplink(CS_UPLINK, rxInfo=[{"rssi": -100}, {"rssi": -60}])
    out = decode("chirpstack", doc)
    assert {r.metric: r.value for r in out.readings} == {"t": 4.5, "rx.rssi": -60.0}


def test_lorawan_nested_and_array_values() -> None:
    decoded = {"env": {"t": 4, "deep": {"ok": True}}, "list": [1, "a"], "n": 2**70}
    doc = uplink(CS_UPLINK, object=decoded)
    out = decode("chirpstack", doc, radio=[], units={"env.t": "Cel"})
    assert {r.metric: (r.value, r.unit) for r in out.readings} == {
        "env.t": (4.0, "Cel"), "env.deep.ok": (True, None),
        "list": ([1, "a"], None), "n": (float(2**70), None),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "value", "unit"),
    [
        ("21.50 °C", 21.5, "°C"),
        ("-3 dBm", -3.0, "dBm"),
        ("0 uS/cm", 0.0, "uS/cm"),
        ("21.5°C", "21.5°C", None),  # no space: not the formatter convention
        ("0x1F", "0x1F", None),
        ("12", "12", None),  # a bare number in text stays text
        ("1 2 V", "1 2 V", None),
        ("FALSE", "FALSE", None),
    ],
)
def test_lorawan_unit_text_splits_number_and_unit_only(
    text: str, value: object, unit: str | None
) -> None:
    out = decode("chirpstack", uplink(CS_UPLINK, object={"x": text}))
    assert [(r.value, r.unit) for r in out.readings] == [(value, unit)]


def test_lorawan_ignored_metrics_are_dropped() -> None:
    doc = uplink(CS_UPLINK, object={"t": 1, "cfg": {"a": 1}, "gps": {"lat": 0}})
    out = decode("chirpstack", doc, ignore=["cfg.a", "gps"])
    assert [r.metric for r in out.readings] == ["t"]


def test_ttn_event_stream_http_result_wrapper_is_unwrapped() -> None:
    wrapped = {"result": {"name": "as.up.data.forward", "data": TTS_UPLINK}}
    out = decode("ttn", wrapped)
    assert [(r.device, r.metric) for r in out.readings] == [("dev1", "t")]


# -- bad uplinks: nothing usable is a DecodeError that says where ---------------


@pytest.mark.parametrize(
    ("codec", "payload", "reason", "where"),
    [
        ("ttn", b"{", "invalid JSON: unexpected end of data", "byte 1"),
        ("ttn", b"[]", "expected an object, got array", "$"),
        ("chirpstack", b'"up"', "expected an object, got string", "$"),
        ("ttn", {"end_device_ids": {"device_id": "d"}},
         "not an uplink: no uplink_message object", "$"),
        ("ttn", {"name": "as.up.join.forward", "data": {"join_accept": {}}},
         "not an uplink: no uplink_message object", "$.data"),
        ("ttn", uplink(TTS_UPLINK, end_device_ids=...),
         "no device id in end_device_ids", "$"),
        ("ttn", uplink(TTS_UPLINK, end_device_ids__device_id=""),
         "device id must be text of 1 to 256 characters",
         "$.end_device_ids.device_id"),
        ("ttn", uplink(TTS_UPLINK, end_device_ids__device_id="d\x00"),
         "device id contains a NUL character", "$.end_device_ids.device_id"),
        ("ttn", uplink(TTS_UPLINK, uplink_message__received_at="yesterday"),
         "not an ISO 8601 time: 'yesterday'", "$.uplink_message.received_at"),
        ("ttn", uplink(TTS_UPLINK, uplink_message__received_at=1714564800),
         "expected ISO 8601 text, got number", "$.uplink_message.received_at"),
        ("ttn", uplink(TTS_UPLINK, uplink_message__received_at="2100-01-01T00:00:00Z"),
         "timestamp 2100-01-01T00:00:00Z out of plausible range",
         "$.uplink_message.received_at"),
        ("chirpstack", {"time": "2024-05-01T11:00:00Z", "object": {"t": 1}},
         "not a device event: no deviceInfo object", "$"),
        ("chirpstack", {"deviceInfo": {"devEui": "0101010101010101"},
                        "devAddr": "00189440"},
         "not an up event: no rxInfo, fPort, data or object", "$"),
        ("chirpstack", uplink(CS_UPLINK, deviceInfo__devEui="0101"),
         "DevEUI must be 16 hex digits", "$.deviceInfo.devEui"),
        ("chirpstack", uplink(CS_UPLINK, deviceInfo__devEui=...),
         "DevEUI must be 16 hex digits", "$.deviceInfo.devEui"),
        ("chirpstack", uplink(CS_UPLINK, time="1999-12-31T23:59:59Z"),
         "timestamp 1999-12-31T23:59:59Z out of plausible range", "$.time"),
    ],
)  # fmt: skip
def test_lorawan_unusable_uplink_names_where(
    codec: str, payload: bytes | dict[str, Any], reason: str, where: str
) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(codec, payload)
    assert caught.value.reason == reason
    assert caught.value.path == where
    assert str(caught.value).endswith(f"`{where}`")


# -- bad parts: the rest of the uplink is kept ---------------------------------

DP = "$.uplink_message.decoded_payload"


@pytest.mark.parametrize(
    ("changes", "path", "reason"),
    [
        ({"uplink_message__decoded_payload__bad": None}, f"{DP}.bad",
         "null is not a value"),
        ({"uplink_message__decoded_payload__bad": "a\x00b"}, f"{DP}.bad",
         "text contains a NUL character"),
        ({"uplink_message__decoded_payload__bad": ["a\x00"]}, f"{DP}.bad",
         "text contains a NUL character"),
        ({"uplink_message__decoded_payload__a\x00b": 1}, f"{DP}.a\\0b",
         "metric name empty or with a NUL character"),
        ({"uplink_message__decoded_payload__": 1}, f'{DP}.""',
         "metric name empty or with a NUL character"),
        ({"uplink_message__decoded_payload__" + "k" * 300: 1},
         f"{DP}.{'k' * 64}...", "metric name too long"),
        ({"end_device_ids__dev_eui": "not-an-eui"}, "$.end_device_ids.dev_eui",
         "DevEUI must be 16 hex digits"),
        ({"uplink_message__rx_metadata": [{"rssi": "strong", "snr": 1}]},
         "$.uplink_message.rx_metadata[0].rssi", "expected a number, got string"),
        ({"uplink_message__rx_metadata": [{"rssi": -40}, 7]},
         "$.uplink_message.rx_metadata[1]", "expected an object, got number"),
        ({"uplink_message__rx_metadata": {"rssi": -40}},
         "$.uplink_message.rx_metadata", "expected an array, got object"),
        ({"uplink_message__f_cnt": "many"}, "$.uplink_message.f_cnt",
         "expected a number, got string"),
    ],
)  # fmt: skip
def test_ttn_bad_part_is_rejected_by_path(
    changes: dict[str, Any], path: str, reason: str
) -> None:
    doc = uplink(TTS_UPLINK, **changes)
    out = decode("ttn", doc, radio=["rssi", "snr", "f_cnt"])
    assert [(r.path, r.reason) for r in out.rejects] == [(path, reason)]
    assert "t" in {r.metric for r in out.readings}


def test_lorawan_decoded_object_of_wrong_type_is_rejected() -> None:
    out = decode("chirpstack", uplink(CS_UPLINK, object=[1, 2]))
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$.object", "expected an object, got array")
    ]
    assert out.aliases == [("lorawan", "0101010101010101", "0101010101010101")]


def test_lorawan_bad_frame_is_rejected_when_kept() -> None:
    doc = uplink(CS_UPLINK, object=..., data="not base64!")
    out = decode("chirpstack", doc, raw_metric="frame")
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$.data", "frame is not base64 text")
    ]


def test_lorawan_deep_nesting_is_rejected_not_recursed() -> None:
    deep: dict[str, Any] = {"x": 1}
    for _ in range(40):
        deep = {"a": deep}
    out = decode("chirpstack", uplink(CS_UPLINK, object={"ok": 1, "d": deep}))
    assert [r.metric for r in out.readings] == ["ok"]
    assert out.rejects[0].reason == "nested deeper than 32 levels"
    assert out.rejects[0].path == "$.object.d" + ".a" * 32


# -- any input ---------------------------------------------------------------

PROFILE = settings(
    max_examples=1000, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
CODECS = [
    TtnCodec(TtnOptions(radio=["rssi", "snr", "frequency", "sf", "f_cnt"]),
             clock.Window()),
    TtnCodec(TtnOptions(device="dev_eui", raw_metric="frame"), clock.Window()),
    ChirpstackCodec(ChirpstackOptions(raw_metric="frame", radio=["gateways", "sf"]),
                    clock.Window()),
    ChirpstackCodec(ChirpstackOptions(device="device_name"), clock.Window()),
]  # fmt: skip

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["0101010101010101", "A84041000000F004", "21.5 °C",
                       "2024-05-01T11:00:00.123456789+00:00", "qg==", "868100000"])
)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=20,
)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, anything the fourth."""
    pick = st.sampled_from([True, True, True, False])
    return pick.flatmap(lambda ok: good if ok else documents)


def maybe(
    keys: dict[str, st.SearchStrategy[Any]], *required: str
) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with ``required`` and any subset of the other ``keys``; each
    value is well-formed three times in four, anything the rest."""
    fields = {k: mostly(v) for k, v in keys.items()}
    return st.fixed_dictionaries(
        {k: fields[k] for k in required},
        optional={k: v for k, v in fields.items() if k not in required},
    )


names = st.text(min_size=1, max_size=8)
eui = st.sampled_from(["70B3D57ED0000A01", "0101010101010101", "x"])
gateway = maybe({"rssi": st.integers(-140, 0), "snr": st.floats(-20, 15),
                 "channel_rssi": st.integers(-140, 0)})  # fmt: skip
tts = maybe({
    "end_device_ids": maybe({"device_id": names, "dev_eui": eui}, "device_id"),
    "received_at": st.just("2024-05-01T11:00:00Z"),
    "uplink_message": maybe({
        "decoded_payload": st.dictionaries(st.text(max_size=6), documents),
        "frm_payload": st.sampled_from(["qg==", "x"]),
        "rx_metadata": st.lists(gateway, max_size=3), "f_cnt": st.integers(),
        "received_at": st.just("2024-05-01T11:59:00.123456789Z"),
        "settings": maybe({"frequency": st.just("868100000"),
                           "data_rate": maybe({"lora": maybe({
                               "spreading_factor": st.integers(7, 12)})})}),
    }),
}, "end_device_ids", "uplink_message")  # fmt: skip
chirpstack = maybe({
    "deviceInfo": maybe({"devEui": eui, "deviceName": names}, "devEui"),
    "time": st.just("2024-05-01T11:00:00.5+00:00"),
    "object": st.dictionaries(st.text(max_size=6), documents),
    "data": st.sampled_from(["qg==", "x"]), "fPort": st.integers(),
    "rxInfo": st.lists(gateway, max_size=3),
    "txInfo": maybe({"frequency": st.integers(),
                     "modulation": maybe({"lora": maybe({
                         "spreadingFactor": st.integers(7, 12)})})}),
}, "deviceInfo")  # fmt: skip


def check(payload: bytes) -> None:
    for codec in CODECS:
        out = Decoded()
        try:
            codec.decode(payload, Origin(None, "fuzz", clock.now_us()), out)
        except DecodeError as exc:
            assert exc.path and exc.reason
            continue
        # An uplink without a decoded object may carry nothing but its alias
        assert out.readings or out.rejects or out.aliases or payload.startswith(b"{")
        for r in out.readings:
            assert "\x00" not in r.device + r.metric + (r.unit or "")
            assert isinstance(r.ts, int)
            assert (r.value is None) != (r.data is None)
        for j in out.rejects:
            assert "\x00" not in j.path + j.reason
        for alias in out.aliases:
            assert "\x00" not in "".join(alias)


@PROFILE
@given(tts | chirpstack | documents)
def test_lorawan_never_fails_on_any_uplink(doc: Any) -> None:
    check(json.dumps(doc).encode())


@PROFILE
@given(st.binary(max_size=200))
def test_lorawan_never_fails_on_any_bytes(payload: bytes) -> None:
    check(payload)
