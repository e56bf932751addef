"""LwM2M over SenML (JSON and CBOR): the shared lwm2m_senml fixtures.

LwM2M is not a codec of its own: a route reads ``senml`` or ``senml_cbor``
with ``metric = "lwm2m"`` and the units of the OMA object model it serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from ingestd import clock
from ingestd.codecs.base import Decoded
from ingestd.codecs.senml import SenmlCodec, SenmlOptions, UnitTable
from ingestd.codecs.senml_cbor import SenmlCborCodec
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

FOLDER = FIXTURES / "lwm2m_senml"

# The route a user configures for LwM2M devices serving the Device object
# (OMA object 3). The fixture's context also lists "/3/0/13": "s (Unix
# time)", but Current Time is of type Time and has no unit in the object
# model; the fixture's own reading for it has unit null, so the route
# leaves it out.
DEVICE_OBJECT_ROUTE: dict[str, Any] = {
    "metric": "lwm2m",
    "units": {"/3/0/7/*": "mV", "/3/0/8/*": "mA", "/3/0/9": "%", "/3/0/10": "KiB"},
}
ROUTES: dict[str, dict[str, Any]] = {
    "leshan_device_object_3_0": DEVICE_OBJECT_ROUTE,
    "leshan_half_float_value_before_name": {"metric": "lwm2m"},
    "leshan_opaque_vd_bytestring": {"metric": "lwm2m"},
}


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def _endpoint(path: Path) -> str:
    # the CoAP registration endpoint: the transport identity, not in the payload
    return str(expected_for(path)["context"]["endpoint_from_registration"])


def decode(path: Path, options: dict[str, Any], device: str | None = "") -> Decoded:
    opts = msgspec.convert(options, SenmlOptions)  # as the route's TOML gives it
    out = Decoded()
    origin = Origin(_endpoint(path) if device == "" else device, "coap", RECEIVED)
    if path.name.endswith(".cbor.b64"):
        SenmlCborCodec(opts, clock.Window()).decode(read_b64(path), origin, out)
    else:
        SenmlCodec(opts, clock.Window()).decode(path.read_bytes(), origin, out)
    return out


PAYLOADS = binary_payloads("lwm2m_senml") + sorted(FOLDER.glob("*.senml.json"))


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.name)
def test_lwm2m_fixture_readings(path: Path) -> None:
    out = decode(path, ROUTES[_stem(path)])
    assert as_rows(out.readings) == expected_rows(expected_for(path)["readings"])
    assert not out.rejects


def test_lwm2m_json_and_cbor_twins_normalize_identically() -> None:
    cbor = decode(FOLDER / "leshan_device_object_3_0.cbor.b64", DEVICE_OBJECT_ROUTE)
    json = decode(FOLDER / "leshan_device_object_3_0.senml.json", DEVICE_OBJECT_ROUTE)
    assert len(cbor.readings) == 16
    assert as_rows(cbor.readings) == as_rows(json.readings)
    assert {r.format for r in cbor.readings} == {"senml_cbor"}
    assert {r.format for r in json.readings} == {"senml"}


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.name)
def test_lwm2m_full_metric_rule_gives_the_same_paths(path: Path) -> None:
    # metric = "full" (bn + n) already yields /3/0/9 from "/3/0/" and "9";
    # "lwm2m" adds the checks below (identity required, paths only).
    full = decode(path, {**ROUTES[_stem(path)], "metric": "full"})
    assert as_rows(full.readings) == as_rows(decode(path, ROUTES[_stem(path)]).readings)


def test_lwm2m_opaque_security_resource_is_stored_as_bytes() -> None:
    # /0/0/3 is key material of the Security object; the fixture allows
    # "drop or store as opaque bytes": we store the bytes, never as text.
    out = decode(FOLDER / "leshan_opaque_vd_bytestring.cbor.b64", {"metric": "lwm2m"})
    assert [(r.metric, r.data, r.value) for r in out.readings] == [
        ("/0/0/3", bytes.fromhex("abcdef"), None)
    ]


def test_lwm2m_base_name_after_the_value_still_applies() -> None:
    path = FOLDER / "leshan_half_float_value_before_name.cbor.b64"
    assert read_b64(path).hex().startswith("81a202f95cb021")  # v, then bn
    out = decode(path, {"metric": "lwm2m"})
    assert [(r.metric, r.value) for r in out.readings] == [("/3442/0/130", 300.0)]


def test_lwm2m_needs_the_registration_endpoint() -> None:
    path = FOLDER / "leshan_half_float_value_before_name.cbor.b64"
    out = decode(path, {"metric": "lwm2m"}, device=None)
    assert not out.readings
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$[0]", "no device id: LwM2M takes it from the registration endpoint")
    ]


def _pack(records: bytes, **options: Any) -> Decoded:
    out = Decoded()
    codec = SenmlCodec(SenmlOptions(metric="lwm2m", **options), clock.Window())
    codec.decode(records, Origin("urn:imei:1", "coap", RECEIVED), out)
    return out


def test_lwm2m_names_must_be_resource_paths() -> None:
    out = _pack(
        b'[{"bn": "urn:dev:x:", "n": "temp", "v": 1}, {"bn": "/3/0", "v": 2},'
        b' {"bn": "/3/0/1/2/3", "v": 3}, {"bn": "/3/x/1", "v": 4}]'
    )
    assert not out.readings
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$[0]", "not an LwM2M resource path: 'urn:dev:x:temp'"),
        ("$[1]", "not an LwM2M resource path: '/3/0'"),
        ("$[2]", "not an LwM2M resource path: '/3/0/1/2/3'"),
        ("$[3]", "not an LwM2M resource path: '/3/x/1'"),
    ]


def test_lwm2m_paths_get_their_leading_slash() -> None:
    # nRF Cloud writes "14201/0/"; Leshan "/3/0/": both name the same kind
    out = _pack(b'[{"bn": "14201/0/", "n": "0", "v": 1}, {"n": "6/1", "v": 2}]')
    assert [r.metric for r in out.readings] == ["/14201/0/0", "/14201/0/6/1"]


def test_lwm2m_units_payload_wins_then_exact_then_pattern() -> None:
    units = {"/3/0/7/*": "mV", "/3/0/7/1": "V", "/3/*/9": "%"}
    out = _pack(
        b'[{"bn": "/3/0/", "n": "7/0", "v": 1}, {"n": "7/1", "v": 2},'
        b' {"n": "7/2", "u": "uV", "v": 3}, {"n": "9", "v": 4},'
        b' {"bn": "/3/1/", "n": "9", "v": 5}, {"n": "9/0", "v": 6}]',
        units=units,
    )
    assert [(r.metric, r.unit) for r in out.readings] == [
        ("/3/0/7/0", "mV"), ("/3/0/7/1", "V"), ("/3/0/7/2", "uV"),
        ("/3/0/9", "%"), ("/3/1/9", "%"), ("/3/1/9/0", None),
    ]  # fmt: skip


def test_lwm2m_unit_table_matches_whole_segments_only() -> None:
    table = UnitTable({"/3/0/7/*": "mV", "urn:dev:x:temp": "Cel"})
    assert table.get("/3/0/7/12") == "mV"
    assert table.get("/3/0/7") is None
    assert table.get("/3/0/70/1") is None
    assert table.get("urn:dev:x:temp") == "Cel"


def test_lwm2m_misspelt_route_option_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `unit`"):
        msgspec.convert({"metric": "lwm2m", "unit": {}}, SenmlOptions)
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value .oma."):
        msgspec.convert({"metric": "oma"}, SenmlOptions)
