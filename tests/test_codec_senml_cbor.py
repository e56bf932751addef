"""SenML CBOR (RFC 8428 sec. 6): the shared senml_cbor fixtures, CBOR bombs
and bad records."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd import clock
from ingestd.codecs.base import Decoded
from ingestd.codecs.senml import SenmlCodec, SenmlOptions
from ingestd.codecs.senml_cbor import CBOR_LABELS, SenmlCborCodec
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

# The JSON form of the same RFC packs, in the senml_json folder
JSON_TWINS = {
    "rfc8428_mobile_position_cbor": "rfc8428_5.1.3_mobile_position_units.json",
    "rfc8428_sec6_cbor_example": "rfc8428_5.1.2_relative_negative_t_bver.json",
}


def decode(payload: bytes, device: str | None = None, **options: Any) -> Decoded:
    codec = SenmlCborCodec(SenmlOptions(**options), clock.Window())
    out = Decoded()
    codec.decode(payload, Origin(device, "test", RECEIVED), out)
    return out


def _stem(path: Path) -> str:
    return path.name.removesuffix(".cbor.b64")


@pytest.mark.parametrize("path", binary_payloads("senml_cbor"), ids=_stem)
def test_senml_cbor_fixture_readings(path: Path) -> None:
    # Like the JSON fixtures, these packs come without a transport identity
    out = decode(read_b64(path))
    assert as_rows(out.readings) == expected_rows(expected_for(path)["readings"])
    assert not out.rejects
    assert {r.format for r in out.readings} == {"senml_cbor"}


@pytest.mark.parametrize("path", binary_payloads("senml_cbor"), ids=_stem)
def test_senml_cbor_fixture_equals_its_json_twin(path: Path) -> None:
    json_path = FIXTURES / "senml_json" / JSON_TWINS[_stem(path)]
    json_out = Decoded()
    SenmlCodec(SenmlOptions(), clock.Window()).decode(
        json_path.read_bytes(), Origin(None, "test", RECEIVED), json_out
    )
    assert as_rows(decode(read_b64(path)).readings) == as_rows(json_out.readings)


@pytest.mark.parametrize("path", binary_payloads("senml_cbor"), ids=_stem)
def test_senml_cbor_fixture_hex_and_base64_agree(path: Path) -> None:
    hex_path = path.with_name(path.name.removesuffix(".b64") + ".hex")
    assert bytes.fromhex(hex_path.read_text().strip()) == read_b64(path)


def test_senml_cbor_half_float_and_ms_fraction_of_bt() -> None:
    path = next(p for p in binary_payloads("senml_cbor") if "sec6" in p.name)
    out = decode(read_b64(path))
    # f9 3e00: the IEEE half float 1.5; bt 1276020076.001 keeps its ms
    current = [r for r in out.readings if r.value == 1.5]
    assert len(current) == 1
    assert clock.format_us(current[0].ts).startswith("2010-06-08T18:01:14.001")


def test_senml_cbor_labels_cover_rfc_table_4() -> None:
    assert sorted(CBOR_LABELS.values()) == sorted(
        ["bver", "bn", "bt", "bu", "bv", "bs", "n", "u", "v", "vs", "vb", "s",
         "t", "ut", "vd"]
    )  # fmt: skip


def test_senml_cbor_text_labels_and_unknown_integer_labels() -> None:
    # JSON names written into CBOR read the same; label 99 is not RFC 8428's
    out = decode(cbor2.dumps([{"bn": "d:", "n": "a", "v": 1}, {0: "b", 2: 2, 99: 7}]))
    assert [(r.device, r.metric, r.value) for r in out.readings] == [
        ("d", "a", 1.0), ("d", "b", 2.0),
    ]  # fmt: skip
    assert not out.rejects


def test_senml_cbor_vd_is_raw_bytes() -> None:
    out = decode(cbor2.dumps([{-2: "d:", 0: "blob", 8: b"\x00\xff"}]))
    assert out.readings[0].data == b"\x00\xff"
    assert out.readings[0].value is None


def test_senml_cbor_self_described_marker_opens_a_payload() -> None:
    out = decode(bytes.fromhex("d9d9f7") + cbor2.dumps([{-2: "d:", 0: "a", 2: 1}]))
    assert [(r.metric, r.value) for r in out.readings] == [("a", 1.0)]


def test_senml_cbor_good_records_survive_a_bad_one() -> None:
    pack = [{-2: "d:", 0: "a", 2: 1}, {0: "b", 2: float("nan")}, {0: "c", 2: 3}]
    out = decode(cbor2.dumps(pack))
    assert [r.metric for r in out.readings] == ["a", "c"]
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$[1].v", "number is not finite")
    ]


@pytest.mark.parametrize(
    ("hex_payload", "reason", "where"),
    [
        ("9bffffffffffffffff", "array of 18446744073709551615 runs past the payload",
         "byte 0"),
        ("5a7fffffff00", "length 2147483647 runs past the payload", "byte 0"),
        ("bb0fffffffffffffff", "map of 1152921504606846975 runs past the payload",
         "byte 0"),
        ("81" * 20 + "01", "nested deeper than 16 levels", "byte 16"),
        ("9f" * 20, "nested deeper than 16 levels", "byte 16"),
        ("81c11a514b67b0", "CBOR tag 1 not accepted", "byte 1"),  # datetime
        ("81c0" + "74" + b"2013-03-21T20:04:00Z".hex(),
         "CBOR tag 0 not accepted", "byte 1"),
        ("81c48221196ab3", "CBOR tag 4 not accepted", "byte 1"),  # Decimal
        ("81d90102820102", "CBOR tag 258 not accepted", "byte 1"),  # set
        ("d81c81d81d00", "CBOR tag 28 not accepted", "byte 0"),  # shared, cyclic
        ("81a102c249010000000000000000", "CBOR tag 2 not accepted", "byte 3"),
        ("81d9d9f7a10201", "CBOR tag 55799 not accepted", "byte 1"),
        ("8100ff", "bytes after the end of the CBOR item", "byte 2"),
        ("8162fffe", "text is not UTF-8", "byte 1"),
        ("817802fffe", "text is not UTF-8", "byte 1"),
        ("d9d9f78162fffe", "text is not UTF-8", "byte 4"),
        ("817f616161ffff", "text is not UTF-8", "byte 4"),
        ("81f7", "CBOR simple value 23 not accepted", "byte 1"),  # undefined
        ("81f820", "CBOR simple value 32 not accepted", "byte 1"),
        ("81fb0000", "CBOR ends inside an item", "byte 1"),
        ("9f01", "CBOR ends inside an item", "byte 2"),
        ("", "CBOR ends inside an item", "byte 0"),
        ("81ff", "break outside an indefinite-length item", "byte 1"),
        ("81fc", "malformed CBOR head 0xfc", "byte 1"),
        ("815f41016161ff", "bad chunk in an indefinite-length string", "byte 4"),
        ("81bf01ff", "map ends between a key and its value", "byte 3"),
        ("a10201", "a SenML pack is an array of records", "$"),
        ("80", "no records with a value in pack", "$"),
        ("81a1006161", "no records with a value in pack", "$"),
    ],
)  # fmt: skip
def test_senml_cbor_bad_payload_names_the_byte(
    hex_payload: str, reason: str, where: str
) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(bytes.fromhex(hex_payload), "dev-1")
    assert (caught.value.reason, caught.value.path) == (reason, where)
    assert str(caught.value).endswith(f"`{where}`")


@pytest.mark.parametrize(
    ("record", "path", "reason"),
    [
        ({0: "a", 2: float("nan")}, "$[0].v", "number is not finite"),
        ({0: "a", 2: float("-inf")}, "$[0].v", "number is not finite"),
        ({0: "a", -5: float("inf"), 2: 1}, "$[0].bv", "number is not finite"),
        ({0: "a", 8: "q83v"}, "$[0].vd", "vd must be a CBOR byte string"),
        ({0: "a", 2: 1, "v": 2}, "$[0]", "field 'v' given twice"),
        ({0: "a", b"k": 1, 2: 1}, "$[0]", "map key b'k' is not a SenML label"),
        ({0: "a", (1, 2): 1, 2: 1}, "$[0]", "map key (1, 2) is not a SenML label"),
        ({0: "a", True: 1, 2: 1}, "$[0]", "map key True is not a SenML label"),
        ({0: "a", 4: 1}, "$[0].vb", "vb must be a boolean"),
        ({0: "a", 2: True}, "$[0].v", "expected a number, got boolean"),
        ({0: "a", 2: "1"}, "$[0].v", "expected a number, got string"),
        ({0: "a", 3: b"x"}, "$[0].vs", "expected a string, got bytes"),
        ({0: "a\x00", 2: 1}, "$[0].n", "text contains a NUL character"),
        ({0: "a", 6: 1e303, 2: 1}, "$[0].t", "timestamp 1e+303 out of plausible range"),
        ({0: "a", 6: 4102444800, 2: 1}, "$[0].t",
         "timestamp 2100-01-01T00:00:00Z out of plausible range"),
        ({0: "a", "x_": 1, 2: 1}, "$[0]", "mandatory field 'x_' not understood"),
        ({-2: 5, 0: "a", 2: 1}, "$[0].bn", "expected a string, got number"),
        ({0: "a", 2: 1, 3: "x"}, "$[0]", "record has several values: v, vs"),
        ({0: "a", 2: 1.5e308, -5: 1.5e308}, "$[0].v", "value is not finite"),
    ],
)  # fmt: skip
def test_senml_cbor_bad_record_is_rejected_by_path(
    record: dict[Any, Any], path: str, reason: str
) -> None:
    out = decode(cbor2.dumps([record]), "dev-1")
    assert not out.readings
    assert [(r.path, r.reason) for r in out.rejects] == [(path, reason)]


def test_senml_cbor_non_record_is_rejected() -> None:
    out = decode(cbor2.dumps([5, {0: "a", 2: 1}]), "dev-1")
    assert [r.metric for r in out.readings] == ["a"]
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$[0]", "a SenML record is an object")
    ]


# Any input: a DecodeError or a Decoded with readings or rejects, nothing else

PROFILE = settings(
    max_examples=1000, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats() | st.text(max_size=10) | st.binary(max_size=8)
    | st.datetimes(timezones=st.just(timezone.utc))
    | st.decimals(allow_nan=False, places=2, max_value=Decimal(10**6),
                  min_value=Decimal(-(10**6)))
    | st.sampled_from([1714564800, 1.5, "urn:dev:x:", "/3/0/", b"\xab"])
)  # fmt: skip
labels = (
    st.sampled_from(sorted(CBOR_LABELS)) | st.integers(-10, 12) | st.text(max_size=4)
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(labels, inner, max_size=6)
    ),
    max_leaves=25,
)
packs = st.lists(st.dictionaries(labels, scalars, max_size=7), max_size=6)


CODECS = [
    SenmlCborCodec(SenmlOptions(), clock.Window()),
    SenmlCborCodec(SenmlOptions(metric="lwm2m", units={"/3/0/*": "V"}), clock.Window()),
]


def _check(payload: bytes, device: str | None) -> None:
    for codec in CODECS:
        origin = Origin(device, "fuzz", RECEIVED)
        out = decode_soundly(codec, payload, origin)
        if out is None:
            continue
        assert out.readings or out.rejects
        assert all("\x00" not in r.path + r.reason for r in out.rejects)


@PROFILE
@given(st.binary(max_size=200))
def test_senml_cbor_never_fails_on_any_bytes(payload: bytes) -> None:
    _check(payload, "dev-1")


@PROFILE
@given(documents | packs, st.sampled_from([None, "dev-1"]))
def test_senml_cbor_never_fails_on_any_document(doc: Any, device: str | None) -> None:
    _check(cbor2.dumps(doc), device)


def test_senml_cbor_datetime_document_is_a_tag() -> None:
    # cbor2 writes datetimes as tag 0/1: what the guard refuses
    payload = cbor2.dumps([{0: "a", 2: datetime(2024, 5, 1, tzinfo=timezone.utc)}])
    with pytest.raises(DecodeError, match="CBOR tag 0 not accepted"):
        decode(payload)


def test_senml_cbor_nan_in_an_unread_field_is_ignored() -> None:
    out = decode(cbor2.dumps([{-2: "d:", 0: "a", 2: 1, "ext": float("nan")}]))
    assert [(r.metric, r.value) for r in out.readings] == [("a", 1.0)]
    assert not out.rejects
