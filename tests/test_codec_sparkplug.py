"""Sparkplug B: the shared sparkplug_b fixtures, birth/death/sequence state,
datatypes, and the ways a payload goes bad."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import msgspec
import pytest
from google.protobuf.internal import api_implementation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd import clock
from ingestd.codecs import _sparkplug_pb2 as pb
from ingestd.codecs.base import Decoded
from ingestd.codecs.sparkplug import SparkplugCodec, SparkplugOptions
from ingestd.errors import DecodeError
from ingestd.model import Origin

from .fixture_readings import (
    RECEIVED,
    as_rows,
    binary_payloads,
    expected_for,
    expected_rows,
    payloads,
    read_b64,
    session_messages,
)

FOLDER = "sparkplug_b"
T = pb.DataType  # datatype numbers by name: T.Value("Int8")
NODE = "spBv1.0/G/{verb}/N"
DEVICE = "spBv1.0/G/{verb}/N/D"
MS = 1_714_564_800_000  # RECEIVED in ms

# The benthos-umh vectors carry 2025-06-25T12:47:23.474Z. Received at the
# fixtures' default 2024-05-01 they would lie 420 days in the future, which
# the plausible window rejects; they are received one second after their own
# time instead (a difference from the README's made-up context, not from
# the expected readings).
UMH_RECEIVED = clock.from_text("2025-06-25T12:47:24.474Z", "")

# Route options a user would configure for each fixture: all are plain
# Sparkplug routes (spBv1.0/#) with the defaults.
ROUTES: dict[str, dict[str, Any]] = {
    "spec_array_metrics_little_endian": {},
    "spec_dbirth_device": {},
    "spec_ddata_device": {},
    "spec_ddeath_device": {},
    "spec_nbirth_edge_node": {},
    "spec_ncmd_rebirth_request": {},
    "spec_ndata_edge_node": {},
    "spec_ndeath_edge_node": {},
    "umh_ndata_before_birth": {},
    "umh_ndata_seq_wraparound": {},
    "umh_birth_then_alias_ndata.session": {},
    "umh_sequence_gap.session": {},
    "umh_stale_ndeath_bdseq_mismatch.session": {},
}
# Besides readings: the rejects (paths) and offline devices each fixture gives;
# the tests further down check reasons and state in detail.
REJECTS = {
    "umh_ndata_before_birth": ["$.metrics[0].alias"],
    "umh_sequence_gap.session": ["$.seq"],
}
OFFLINE = {
    "spec_ddeath_device": ["Sparkplug B Devices/Raspberry Pi/Pibrella"],
    "spec_ndeath_edge_node": ["Sparkplug B Devices/Raspberry Pi"],
}


def codec(**options: Any) -> SparkplugCodec:
    return SparkplugCodec(SparkplugOptions(**options), clock.Window())


def feed(
    c: SparkplugCodec, topic: str, payload: bytes, received: int = RECEIVED
) -> Decoded:
    out = Decoded()
    c.decode(payload, Origin(None, "test", received, topic), out)
    return out


def received_for(stem: str) -> int:
    return UMH_RECEIVED if stem.startswith("umh_") else RECEIVED


def same(actual: Any, expected: Any) -> bool:
    """Rows equal, floats to a relative 1e-6 (Sparkplug Float is float32)."""
    if isinstance(actual, float) and isinstance(expected, float):
        return math.isclose(actual, expected, rel_tol=1e-6)
    if isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(actual) == len(expected) and all(
            same(a, e) for a, e in zip(actual, expected, strict=True)
        )
    return bool(actual == expected) and type(actual) is type(expected)


def metric(name: str | None = None, **fields: Any) -> Any:
    m = pb.Payload.Metric(**fields)
    if name is not None:
        m.name = name
    return m


def payload(*metrics: Any, seq: int | None = None, ts: int | None = MS) -> bytes:
    p = pb.Payload(metrics=list(metrics))
    if seq is not None:
        p.seq = seq
    if ts is not None:
        p.timestamp = ts
    return p.SerializeToString()


def nbirth(*metrics: Any, bdseq: int = 0, seq: int = 0) -> bytes:
    bd = metric("bdSeq", datatype=T.Value("Int64"), long_value=bdseq)
    return payload(bd, *metrics, seq=seq)


def one(out: Decoded) -> Any:
    assert not out.rejects, out.rejects
    assert len(out.readings) == 1, out.readings
    r = out.readings[0]
    return r.value if r.data is None else r.data


def value_of(datatype: str, **value: Any) -> Any:
    """The stored value of one NDATA metric of ``datatype``."""
    m = metric("m", datatype=T.Value(datatype), **value)
    return one(feed(codec(), NODE.format(verb="NDATA"), payload(m, seq=1)))


def rejected(datatype: str | int, **value: Any) -> tuple[str, str]:
    """(path, reason) of the one reject of an NDATA metric."""
    m = metric("m", **value)
    m.datatype = datatype if isinstance(datatype, int) else T.Value(datatype)
    out = feed(codec(), NODE.format(verb="NDATA"), payload(m, seq=1))
    assert not out.readings
    assert len(out.rejects) == 1, out.rejects
    return out.rejects[0].path, out.rejects[0].reason


# -- the shared fixtures ----------------------------------------------------

FIXTURES_B64 = {p.name.removesuffix(".b64"): p for p in binary_payloads(FOLDER)}


@pytest.mark.parametrize(
    "path", binary_payloads(FOLDER) + payloads(FOLDER), ids=lambda p: p.stem
)
def test_sparkplug_fixture_readings(path: Path) -> None:
    expected = expected_for(path)
    stem = path.name.removesuffix(".json").removesuffix(".b64")
    c = codec(**ROUTES[stem])
    received = received_for(stem)
    if path.suffix == ".b64":
        messages = [(expected["context"]["mqtt_topic"], read_b64(path))]
    else:
        messages = session_messages(path)
    if stem == "umh_ndata_seq_wraparound":
        _prime_up_to_seq_255(c, messages[0][0])

    readings, rejects, offline = [], [], []
    for topic, raw in messages:
        out = feed(c, topic, raw, received)
        readings += out.readings
        rejects += [r.path for r in out.rejects]
        offline += out.offline
    assert all(r.format == "sparkplug" and r.transport == "test" for r in readings)
    actual, wanted = as_rows(readings), expected_rows(expected["readings"])
    assert same(actual, wanted), (actual, wanted)
    assert rejects == REJECTS.get(stem, [])
    assert offline == OFFLINE.get(stem, [])


def _prime_up_to_seq_255(c: SparkplugCodec, topic: str) -> None:
    # The fixture's context: the NBIRTH mapped alias 100 to Temperature
    # (Double), and the previous message had seq 255.
    birth_topic = topic.replace("/NDATA/", "/NBIRTH/")
    temperature = metric("Temperature", alias=100, datatype=T.Value("Double"))
    temperature.double_value = 20.0
    out = feed(c, birth_topic, nbirth(temperature), UMH_RECEIVED)
    assert not out.rejects
    for seq in range(1, 256):
        m = metric(alias=100, double_value=20.0 + seq / 100)
        out = feed(c, topic, payload(m, seq=seq), UMH_RECEIVED)
        assert not out.rejects, (seq, out.rejects)


@pytest.mark.parametrize(
    "stem",
    [
        "spec_nbirth_edge_node",
        "umh_birth_then_alias_ndata.session",
    ],
)
def test_sparkplug_fixture_protocol_metrics_on_request(stem: str) -> None:
    # bdSeq and Node Control/* are protocol, not telemetry; a route may keep them
    path = next(p for p in binary_payloads(FOLDER) + payloads(FOLDER) if stem in p.name)
    expected = expected_for(path)
    c = codec(protocol_metrics=True)
    if path.suffix == ".b64":
        messages = [(expected["context"]["mqtt_topic"], read_b64(path))]
    else:
        messages = session_messages(path)
    readings = []
    for topic, raw in messages:
        readings += feed(c, topic, raw, received_for(stem)).readings
    wanted = expected_rows(expected["readings"])
    wanted += expected_rows(expected["protocol_metrics_not_telemetry"])
    assert same(as_rows(readings), sorted(wanted, key=repr))


def test_sparkplug_fixture_float32_is_stored_as_its_shortest_decimal() -> None:
    path = FIXTURES_B64["spec_nbirth_edge_node"]
    out = feed(codec(), expected_for(path)["context"]["mqtt_topic"], read_b64(path))
    voltage = next(r for r in out.readings if r.metric == "Supply Voltage")
    assert voltage.value == 12.1  # on the wire: 12.100000381469727
    assert struct.pack("<f", voltage.value) == struct.pack("<f", 12.100000381469727)


def test_sparkplug_fixture_ncmd_produces_nothing() -> None:
    path = FIXTURES_B64["spec_ncmd_rebirth_request"]
    out = feed(codec(), expected_for(path)["context"]["mqtt_topic"], read_b64(path))
    assert (out.readings, out.rejects, out.offline) == ([], [], [])


def test_sparkplug_fixture_ddeath_marks_the_device_offline() -> None:
    path = FIXTURES_B64["spec_ddeath_device"]
    expected = expected_for(path)
    out = feed(codec(), expected["context"]["mqtt_topic"], read_b64(path))
    assert expected["expected_state_change"]["online"] is False
    assert out.offline == [expected["expected_state_change"]["device"]]
    assert not out.readings and not out.rejects


def test_sparkplug_fixture_ndeath_after_its_nbirth_marks_node_and_devices() -> None:
    c = codec()
    for stem in ("spec_nbirth_edge_node", "spec_dbirth_device"):
        path = FIXTURES_B64[stem]
        feed(c, expected_for(path)["context"]["mqtt_topic"], read_b64(path))
    path = FIXTURES_B64["spec_ndeath_edge_node"]
    expected = expected_for(path)
    out = feed(c, expected["context"]["mqtt_topic"], read_b64(path))
    # bdSeq 0 matches the NBIRTH's; "also: all devices under this edge node"
    assert out.offline == [
        expected["expected_state_change"]["device"],
        "Sparkplug B Devices/Raspberry Pi/Pibrella",
    ]
    assert not out.readings and not out.rejects


def test_sparkplug_fixture_ndeath_with_no_birth_seen_is_taken_as_current() -> None:
    path = FIXTURES_B64["spec_ndeath_edge_node"]
    expected = expected_for(path)
    out = feed(codec(), expected["context"]["mqtt_topic"], read_b64(path))
    assert out.offline == ["Sparkplug B Devices/Raspberry Pi"]


def test_sparkplug_fixture_stale_ndeath_changes_nothing() -> None:
    path = next(p for p in payloads(FOLDER) if "stale_ndeath" in p.name)
    c = codec()
    outs = [feed(c, t, raw, UMH_RECEIVED) for t, raw in session_messages(path)]
    assert outs[1].offline == []  # bdSeq 0 against the NBIRTH's 88
    assert not outs[1].readings and not outs[1].rejects
    # ...and the node's birth still holds: its aliases still resolve
    m = metric(alias=100, double_value=23.0)
    out = feed(c, "spBv1.0/FactoryA/NDATA/EdgeNode1", payload(m, seq=1), UMH_RECEIVED)
    assert one(out) == 23.0


def test_sparkplug_fixture_sequence_gap_is_rejected_and_readings_kept() -> None:
    path = next(p for p in payloads(FOLDER) if "sequence_gap" in p.name)
    c = codec()
    outs = [feed(c, t, raw, UMH_RECEIVED) for t, raw in session_messages(path)]
    assert [o.rejects for o in outs[:2]] == [[], []]
    gap = outs[2]
    assert [r.path for r in gap.rejects] == ["$.seq"]
    assert gap.rejects[0].reason.startswith(
        "sequence gap: expected seq 2, got 5; 3 message(s) lost (seq 2..4)"
    )
    assert "rebirth" in gap.rejects[0].reason
    assert [r.value for r in gap.readings] == [27.0]


def test_sparkplug_fixture_ndata_before_birth_names_the_alias() -> None:
    path = FIXTURES_B64["umh_ndata_before_birth"]
    expected = expected_for(path)
    out = feed(codec(), expected["context"]["mqtt_topic"], read_b64(path), UMH_RECEIVED)
    # "do not invent a metric name": no reading; the reject says why
    assert out.readings == [] == expected["readings"]
    assert [r.path for r in out.rejects] == ["$.metrics[0].alias"]
    assert out.rejects[0].reason.startswith(
        "alias 100 unknown: no birth of FactoryA/EdgeNode1 in force (none seen since "
        "ingestd started"
    )
    assert "request a rebirth" in out.rejects[0].reason


def test_sparkplug_fixture_seq_wraparound_is_not_a_gap() -> None:
    path = FIXTURES_B64["umh_ndata_seq_wraparound"]
    topic = expected_for(path)["context"]["mqtt_topic"]
    c = codec()
    _prime_up_to_seq_255(c, topic)
    out = feed(c, topic, read_b64(path), UMH_RECEIVED)
    assert one(out) == 30.0


# -- state: births, deaths, sequence -----------------------------------------


def test_sparkplug_birth_units_and_types_carry_to_alias_only_data() -> None:
    c = codec(units={"rpm": "1/min"})
    props = pb.Payload.PropertySet(
        keys=["engUnit"], values=[pb.Payload.PropertyValue(type=12, string_value="°C")]
    )
    temp = metric("temp", alias=1, datatype=T.Value("Int16"), int_value=5)
    temp.properties.CopyFrom(props)
    rpm = metric("rpm", alias=2, datatype=T.Value("UInt32"), int_value=900)
    out = feed(c, NODE.format(verb="NBIRTH"), nbirth(temp, rpm))
    assert [(r.metric, r.value, r.unit) for r in out.readings] == [
        ("temp", 5.0, "°C"),
        ("rpm", 900.0, "1/min"),
    ]
    # No datatype in DATA: the birth's Int16 reads 0xFFFF as -1
    data = payload(
        metric(alias=1, int_value=0xFFFF), metric(alias=2, int_value=7), seq=1
    )
    out = feed(c, NODE.format(verb="NDATA"), data)
    assert [(r.metric, r.value, r.unit) for r in out.readings] == [
        ("temp", -1.0, "°C"),
        ("rpm", 7.0, "1/min"),
    ]


def test_sparkplug_device_aliases_are_per_device_and_reset_by_nbirth() -> None:
    c = codec()
    feed(c, NODE.format(verb="NBIRTH"), nbirth())
    m = metric("level", alias=1, datatype=T.Value("Double"), double_value=1.5)
    feed(c, DEVICE.format(verb="DBIRTH"), payload(m, seq=1))
    out = feed(
        c,
        DEVICE.format(verb="DDATA"),
        payload(metric(alias=1, double_value=2.5), seq=2),
    )
    assert (out.readings[0].device, out.readings[0].metric) == ("G/N/D", "level")
    # Alias 1 means nothing for the node itself
    out = feed(
        c, NODE.format(verb="NDATA"), payload(metric(alias=1, double_value=3.5), seq=3)
    )
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$.metrics[0].alias", "alias 1 is not in the last birth of G/N")
    ]
    # A new NBIRTH voids the device's table until its DBIRTH comes again
    feed(c, NODE.format(verb="NBIRTH"), nbirth(bdseq=1))
    out = feed(
        c,
        DEVICE.format(verb="DDATA"),
        payload(metric(alias=1, double_value=4.5), seq=1),
    )
    assert out.rejects[0].reason.startswith("alias 1 unknown: no birth of G/N/D in")


def test_sparkplug_ndeath_forgets_the_node_and_lists_its_devices() -> None:
    c = codec()
    feed(c, NODE.format(verb="NBIRTH"), nbirth(bdseq=7))
    feed(c, "spBv1.0/G/DBIRTH/N/D1", payload(seq=1))
    feed(c, "spBv1.0/G/DDATA/N/D2", payload(metric("x", double_value=1.0), seq=2))
    death = payload(metric("bdSeq", datatype=T.Value("UInt64"), long_value=7), ts=MS)
    out = feed(c, NODE.format(verb="NDEATH"), death)
    assert out.offline == ["G/N", "G/N/D1", "G/N/D2"]
    # Forgotten: the next death of this node cannot be checked, so it applies
    out = feed(c, NODE.format(verb="NDEATH"), death)
    assert out.offline == ["G/N"]


def test_sparkplug_ddeath_removes_the_device_from_the_node() -> None:
    c = codec()
    feed(c, NODE.format(verb="NBIRTH"), nbirth())
    feed(c, DEVICE.format(verb="DBIRTH"), payload(seq=1))
    assert feed(c, DEVICE.format(verb="DDEATH"), payload(seq=2)).offline == ["G/N/D"]
    death = payload(metric("bdSeq", long_value=0))
    assert feed(c, NODE.format(verb="NDEATH"), death).offline == ["G/N"]


@pytest.mark.parametrize(
    ("seqs", "reason"),
    [
        ([0, 1, 2], None),
        ([0, 1, 1], None),  # the same message again: redelivered, not lost
        ([0, 2], "expected seq 1, got 2; 1 message(s) lost (seq 1)"),
        ([0, 1, 0], "expected seq 2, got 0; 254 message(s) lost (seq 2..255)"),
    ],
)
def test_sparkplug_sequence(seqs: list[int], reason: str | None) -> None:
    c = codec()
    out = feed(c, NODE.format(verb="NBIRTH"), nbirth(seq=seqs[0]))
    for seq in seqs[1:]:
        out = feed(
            c,
            NODE.format(verb="NDATA"),
            payload(metric("x", double_value=1.0), seq=seq),
        )
    assert len(out.readings) == 1
    if reason is None:
        assert out.rejects == []
    else:
        assert [r.path for r in out.rejects] == ["$.seq"]
        assert out.rejects[0].reason.startswith(f"sequence gap: {reason}")


def test_sparkplug_sequence_gap_across_the_wrap_names_the_range() -> None:
    c = codec()
    feed(c, NODE.format(verb="NBIRTH"), nbirth(seq=0))
    for seq in range(1, 254):
        feed(
            c,
            NODE.format(verb="NDATA"),
            payload(metric("x", double_value=1.0), seq=seq),
        )
    out = feed(
        c, NODE.format(verb="NDATA"), payload(metric("x", double_value=1.0), seq=1)
    )
    assert (
        "expected seq 254, got 1; 3 message(s) lost (seq 254..0)"
        in out.rejects[0].reason
    )


def test_sparkplug_device_messages_share_the_node_sequence() -> None:
    c = codec()
    feed(c, NODE.format(verb="NBIRTH"), nbirth())
    assert feed(c, DEVICE.format(verb="DBIRTH"), payload(seq=1)).rejects == []
    out = feed(
        c, NODE.format(verb="NDATA"), payload(metric("x", double_value=1.0), seq=3)
    )
    assert out.rejects[0].reason.startswith("sequence gap: expected seq 2, got 3")


def test_sparkplug_oldest_node_is_forgotten_past_max_nodes() -> None:
    c = codec(max_nodes=2)
    m = metric("t", alias=1, datatype=T.Value("Double"), double_value=1.0)
    for node in ("A", "B", "C"):
        feed(c, f"spBv1.0/G/NBIRTH/{node}", nbirth(m))
    by_alias = payload(metric(alias=1, double_value=2.0), seq=1)
    assert feed(c, "spBv1.0/G/NDATA/C", by_alias).readings
    assert (
        feed(c, "spBv1.0/G/NDATA/A", by_alias).rejects[0].path == "$.metrics[0].alias"
    )


@pytest.mark.parametrize("option", ["max_nodes", "max_devices"])
def test_sparkplug_state_limits_must_be_positive(option: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=f"at `\\$.{option}`"):
        msgspec.convert({option: 0}, SparkplugOptions)


@pytest.mark.parametrize(
    "topic",
    [
        "spBv1.0/G/NCMD/N",
        "spBv1.0/G/DCMD/N/D",
        "spBv1.0/STATE/host-1",
        "STATE/host-1",
    ],
)
def test_sparkplug_host_traffic_produces_nothing(topic: str) -> None:
    for raw in (payload(metric("Node Control/Rebirth", boolean_value=True)), b"\xff"):
        out = feed(codec(), topic, raw)
        assert (out.readings, out.rejects, out.offline) == ([], [], [])


# -- metrics and datatypes --------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "raw", "value"),
    [
        ("Int8", {"int_value": 0x7F}, 127.0),
        ("Int8", {"int_value": 0xFF}, -1.0),  # two's complement in 8 bits
        ("Int8", {"int_value": 0xFFFFFF80}, -128.0),  # sign-extended to 32
        ("Int8", {"long_value": 2**64 - 1}, -1.0),  # sign-extended to 64
        ("Int16", {"int_value": 0x8000}, -32768.0),
        ("Int32", {"int_value": 0xFFFFFFFF}, -1.0),
        ("Int64", {"long_value": 2**63}, float(-(2**63))),
        ("UInt8", {"int_value": 255}, 255.0),
        ("UInt32", {"long_value": 2**32 - 1}, 4294967295.0),
        ("UInt64", {"long_value": 2**64 - 1}, 18446744073709551615.0),
        ("Float", {"float_value": 0.1}, 0.1),
        ("Double", {"double_value": 0.1}, 0.1),
        ("Boolean", {"boolean_value": True}, True),
        ("String", {"string_value": "ok"}, "ok"),
        ("Text", {"string_value": "long text"}, "long text"),
        ("UUID", {"string_value": "6ba7b810-9dad"}, "6ba7b810-9dad"),
        ("DateTime", {"long_value": 1486144502122}, "2017-02-03T17:55:02.122Z"),
        ("Bytes", {"bytes_value": b"\x00\x01"}, b"\x00\x01"),
        ("File", {"bytes_value": b"%PDF"}, b"%PDF"),
        ("Unknown", {"int_value": 3}, 3.0),
    ],
)
def test_sparkplug_scalar_datatypes(
    datatype: str, raw: dict[str, Any], value: Any
) -> None:
    stored = value_of(datatype, **raw)
    assert stored == value and type(stored) is type(value)


@pytest.mark.parametrize(
    ("datatype", "raw", "value"),
    [
        ("Int8Array", b"\xff\x7f", [-1, 127]),
        ("Int16Array", struct.pack("<2h", -2, 300), [-2, 300]),
        ("Int32Array", bytes.fromhex("15cd5b07b168de3a"), [123456789, 987654321]),
        ("Int64Array", struct.pack("<q", -(2**63)), [-(2**63)]),
        ("UInt8Array", b"\xff", [255]),
        ("UInt16Array", struct.pack("<H", 65535), [65535]),
        ("UInt32Array", struct.pack("<I", 2**32 - 1), [2**32 - 1]),
        ("UInt64Array", bytes.fromhex("3400000000000000d99e02d1b27637e4"),
         [52, 16444743074749521625]),
        ("FloatArray", bytes.fromhex("a4709d3f98aeb242"), [1.23, 89.341]),
        ("DoubleArray", struct.pack("<2d", 12.354213, 1022.9123213),
         [12.354213, 1022.9123213]),
        # spec sec. 6.4.17 examples: a uint32 count, then bits MSB first...
        ("BooleanArray", bytes.fromhex("0c00000034d0"),
         [False, False, True, True, False, True, False, False, True, True, False,
          True]),
        ("BooleanArray", bytes(4), []),
        # ...and NUL-terminated strings
        ("StringArray", b"ABC\x00hello\x00", ["ABC", "hello"]),
        ("StringArray", b"", []),
        ("DateTimeArray", struct.pack("<q", 1486144502122),
         ["2017-02-03T17:55:02.122Z"]),
    ],
)  # fmt: skip
def test_sparkplug_array_datatypes(datatype: str, raw: bytes, value: list[Any]) -> None:
    assert value_of(datatype, bytes_value=raw) == value


def test_sparkplug_dataset_becomes_columns_types_rows() -> None:
    ds = pb.Payload.DataSet(
        num_of_columns=2, columns=["id", "temp"], types=[T.Value("Int8"), 9]
    )
    for ident, temp in ((0xFF, 20.5), (2, 21.25)):
        row = ds.rows.add()
        row.elements.add(int_value=ident)
        row.elements.add(float_value=temp)
    row = ds.rows.add()
    row.elements.add(int_value=3)
    row.elements.add()  # no value: null cell
    assert value_of("DataSet", dataset_value=ds) == {
        "columns": ["id", "temp"],
        "types": ["Int8", "Float"],
        "rows": [[-1, 20.5], [2, 21.25], [3, None]],
    }


def test_sparkplug_template_instance_becomes_an_object() -> None:
    inner = pb.Payload.Template(template_ref="Motor", is_definition=False)
    inner.parameters.add(name="rated", type=T.Value("Float"), float_value=1.1)
    inner.metrics.add(name="rpm", datatype=T.Value("UInt16"), int_value=1500)
    inner.metrics.add(name="raw", datatype=T.Value("Bytes"), bytes_value=b"\x01")
    inner.metrics.add(name="fault", datatype=T.Value("Boolean"), is_null=True)
    outer = pb.Payload.Template(template_ref="Line", version="2")
    m = outer.metrics.add(name="motor", datatype=T.Value("Template"))
    m.template_value.CopyFrom(inner)
    assert value_of("Template", template_value=outer) == {
        "template_ref": "Line",
        "version": "2",
        "parameters": {},
        "metrics": {
            "motor": {
                "template_ref": "Motor",
                "parameters": {"rated": 1.1},
                "metrics": {"rpm": 1500, "raw": "AQ==", "fault": None},
            }
        },
    }


def test_sparkplug_skips_definitions_nulls_and_transients() -> None:
    definition = metric("_types_/Motor", datatype=T.Value("Template"))
    definition.template_value.is_definition = True
    null = metric("gone", datatype=T.Value("Double"), is_null=True)
    transient = metric("live", datatype=T.Value("Double"), double_value=1.0)
    transient.is_transient = True
    raw = nbirth(definition, null, transient)
    out = feed(codec(), NODE.format(verb="NBIRTH"), raw)
    assert (out.readings, out.rejects) == ([], [])
    out = feed(codec(transient=True), NODE.format(verb="NBIRTH"), raw)
    assert [r.metric for r in out.readings] == ["live"]


def test_sparkplug_historical_metrics_keep_their_own_time() -> None:
    m = metric("t", datatype=T.Value("Double"), double_value=1.0, timestamp=MS - 60_000)
    m.is_historical = True
    out = feed(codec(), NODE.format(verb="NDATA"), payload(m, seq=1))
    assert out.readings[0].ts == (MS - 60_000) * 1000


def test_sparkplug_without_any_timestamp_uses_receipt_time() -> None:
    m = metric("t", double_value=1.0)
    out = feed(codec(), NODE.format(verb="NDATA"), payload(m, seq=1, ts=None))
    assert out.readings[0].ts == RECEIVED


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "raw", "path", "reason"),
    [
        ("spBv1.0/G/NDATA/N", b"\xff\xff", "$", "not a Sparkplug B payload"),
        ("spBv1.0/G/NDATA/N", b"\x12\x05", "$", "not a Sparkplug B payload"),
        ("spBv1.0/G/NDATA/N", b"", "$.metrics", "NDATA carries no metrics"),
        ("spBv1.0/G/DDATA/N/D", payload(seq=0), "$.metrics", "DDATA carries no metrics"),
        ("tele/x/SENSOR", b"", "topic", "not a Sparkplug B topic"),
        ("spBv1.0/G/NDATA", b"", "topic", "not a Sparkplug B topic"),
        ("spBv1.0/G/NFOO/N", b"", "topic", "unknown Sparkplug verb 'NFOO'"),
        ("spBv1.0/G/NDATA/N/D", b"", "topic",
         "NDATA topic must be spBv1.0/group/NDATA/node"),
        ("spBv1.0/G/DDATA/N", b"", "topic",
         "DDATA topic must be spBv1.0/group/DDATA/node/device"),
        ("spBv1.0//NDATA/N", b"", "topic", "NDATA topic must be"),
        ("spBv1.0/G/NDATA/N\x00", b"", "topic", "topic contains a NUL character"),
        ("spBv1.0/G/NDATA/" + "n" * 300, b"", "topic", "device id longer than 256"),
    ],
)  # fmt: skip
def test_sparkplug_unusable_message_names_where(
    topic: str, raw: bytes, path: str, reason: str
) -> None:
    with pytest.raises(DecodeError) as info:
        feed(codec(), topic, raw)
    assert info.value.path == path
    assert info.value.reason.startswith(reason), info.value.reason
    assert str(info.value).endswith(f"`{path}`")


@pytest.mark.parametrize(
    ("datatype", "raw", "path", "reason"),
    [
        ("Int8", {"int_value": 300}, "$.metrics[0]", "300 out of range for Int8"),
        ("UInt8", {"int_value": 256}, "$.metrics[0]", "256 out of range for UInt8"),
        ("Int16", {"long_value": 2**40}, "$.metrics[0]",
         "1099511627776 out of range for Int16"),
        ("Double", {"double_value": math.nan}, "$.metrics[0]",
         "value nan is not a finite number"),
        ("Float", {"float_value": math.inf}, "$.metrics[0]",
         "value inf is not a finite number"),
        ("Boolean", {"string_value": "true"}, "$.metrics[0]",
         "datatype Boolean does not match string_value"),
        ("Float", {"int_value": 1}, "$.metrics[0]",
         "datatype Float does not match int_value"),
        ("PropertySet", {"int_value": 1}, "$.metrics[0]",
         "datatype PropertySet does not match int_value"),
        (99, {"int_value": 1}, "$.metrics[0]",
         "unknown datatype 99"),
        ("String", {"string_value": "a\x00b"}, "$.metrics[0]",
         "text contains a NUL character"),
        ("Double", {}, "$.metrics[0]",
         "metric has no value and is not flagged is_null"),
        ("Int32", {"extension_value": pb.Payload.Metric.MetricValueExtension()},
         "$.metrics[0]", "extension_value is a private extension"),
        ("DateTime", {"long_value": 2**63}, "$.metrics[0]",
         "DateTime 9223372036854775808 ms is past the year 9999"),
        ("Int32Array", {"bytes_value": b"\x00" * 7}, "$.metrics[0]",
         "Int32Array of 7 bytes is not a whole number of 4-byte items"),
        ("BooleanArray", {"bytes_value": b"\x01\x00"}, "$.metrics[0]",
         "BooleanArray shorter than its 4-byte count"),
        ("BooleanArray", {"bytes_value": b"\x09\x00\x00\x00\xff"}, "$.metrics[0]",
         "BooleanArray of 9 values needs 2 bytes after its count, has 1"),
        ("StringArray", {"bytes_value": b"abc"}, "$.metrics[0]",
         "StringArray does not end with a NUL"),
        ("StringArray", {"bytes_value": b"a\x00\xff\x00"}, "$.metrics[0]",
         "StringArray is not UTF-8 at byte 0"),
        ("FloatArray", {"bytes_value": struct.pack("<f", math.nan)}, "$.metrics[0]",
         "value nan is not a finite number"),
        ("Double", {"double_value": 1.0, "timestamp": 4102444800000},
         "$.metrics[0].timestamp",
         "timestamp 2100-01-01T00:00:00Z out of plausible range"),
        ("Double", {"double_value": 1.0, "timestamp": 2**64 - 1},
         "$.metrics[0].timestamp", "timestamp year"),
    ],
)  # fmt: skip
def test_sparkplug_bad_metric_is_rejected_by_path(
    datatype: str | int, raw: dict[str, Any], path: str, reason: str
) -> None:
    got = rejected(datatype, **raw)
    assert got[0] == path
    assert got[1].startswith(reason), got[1]


def test_sparkplug_bad_dataset_and_template_name_the_cell() -> None:
    ds = pb.Payload.DataSet(num_of_columns=2, columns=["a", "b"], types=[3, 3])
    ds.rows.add().elements.add(int_value=1)
    assert rejected("DataSet", dataset_value=ds) == (
        "$.metrics[0].dataset_value.rows[0]",
        "row has 1 of 2 cells",
    )
    ds = pb.Payload.DataSet(num_of_columns=3, columns=["a", "b"], types=[3, 3])
    assert rejected("DataSet", dataset_value=ds) == (
        "$.metrics[0].dataset_value",
        "DataSet has 3 columns, 2 names, 2 types",
    )
    ds = pb.Payload.DataSet(columns=["a"], types=[11])
    ds.rows.add().elements.add(string_value="yes")
    assert rejected("DataSet", dataset_value=ds) == (
        "$.metrics[0].dataset_value.rows[0].elements[0]",
        "datatype Boolean does not match string_value",
    )
    t = pb.Payload.Template(template_ref="T")
    t.metrics.add(datatype=T.Value("Int8"), int_value=1)
    assert rejected("Template", template_value=t) == (
        "$.metrics[0].template_value.metrics[0].name",
        "name empty or longer than 256 characters",
    )


def test_sparkplug_bad_names_and_aliases_are_rejected_by_path() -> None:
    c = codec()
    bad_utf8 = payload(metric("x", double_value=1.0), seq=0).replace(
        b"\x01x", b"\x01\xff"
    )
    if api_implementation.Type() == "python":  # refuses the whole message
        with pytest.raises(DecodeError, match="not a Sparkplug B payload"):
            feed(c, NODE.format(verb="NBIRTH"), bad_utf8)
    else:  # upb (the wheels' default) parses it: the field is rejected
        out = feed(c, NODE.format(verb="NBIRTH"), bad_utf8)
        assert [(r.path, r.reason) for r in out.rejects] == [
            ("$.metrics[0].name", "text is not valid UTF-8")
        ]
    dup = nbirth(
        metric("a", alias=5, double_value=1.0), metric("b", alias=5, double_value=2.0)
    )
    out = feed(c, NODE.format(verb="NBIRTH"), dup)
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$.metrics[2].alias", "alias 5 already names 'a' in this birth")
    ]
    assert [r.metric for r in out.readings] == ["a", "b"]  # named: still stored
    out = feed(c, NODE.format(verb="NBIRTH"), nbirth(metric(alias=9, double_value=1.0)))
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$.metrics[1].name", "a birth metric needs a name")
    ]
    out = feed(c, NODE.format(verb="NDATA"), payload(metric(double_value=1.0), seq=1))
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$.metrics[0]", "metric has neither name nor alias")
    ]
    out = feed(
        c, NODE.format(verb="NDATA"), payload(metric("", double_value=1.0), seq=2)
    )
    assert out.rejects[0].path == "$.metrics[0].name"


def test_sparkplug_bad_payload_timestamp_is_rejected_once() -> None:
    raw = payload(
        metric("a", double_value=1.0),
        metric("b", double_value=2.0),
        metric("c", double_value=3.0, timestamp=MS),
        seq=1,
        ts=4102444800000,
    )
    out = feed(codec(), NODE.format(verb="NDATA"), raw)
    assert [r.path for r in out.rejects] == ["$.timestamp"]
    assert [r.metric for r in out.readings] == ["c"]


def test_sparkplug_seq_out_of_range_is_rejected() -> None:
    out = feed(
        codec(),
        NODE.format(verb="NDATA"),
        payload(metric("x", double_value=1.0), seq=300),
    )
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$.seq", "seq 300 outside 0..255")
    ]
    assert len(out.readings) == 1


def test_sparkplug_unit_property_must_be_text() -> None:
    m = metric("t", datatype=T.Value("Double"), double_value=1.0)
    m.properties.keys.append("engUnit")
    m.properties.values.add(type=12, string_value="a\x00")
    out = feed(codec(), NODE.format(verb="NDATA"), payload(m, seq=1))
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$.metrics[0].properties.values[0]", "text contains a NUL character")
    ]


# -- any input ------------------------------------------------------------------

PROFILE = settings(
    max_examples=1000, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
TOPICS = [NODE.format(verb=v) for v in ("NBIRTH", "NDATA", "NDEATH", "NCMD")] + [
    DEVICE.format(verb=v) for v in ("DBIRTH", "DDATA", "DDEATH")
]
DATATYPES = st.integers(0, 36)
NAMES = ["a", "b", "c", "d", "bdSeq", "Node Control/Rebirth", ""]
UINT64 = st.integers(0, 2**64 - 1)
scalars = st.one_of(
    st.builds(dict, int_value=st.integers(0, 2**32 - 1)),
    st.builds(dict, long_value=UINT64),
    st.builds(dict, float_value=st.floats(width=32)),
    st.builds(dict, double_value=st.floats()),
    st.builds(dict, boolean_value=st.booleans()),
    st.builds(dict, string_value=st.text(max_size=8)),
)
metric_values = scalars | st.builds(dict, bytes_value=st.binary(max_size=24))
MATCHING_TYPES = {  # datatypes that fit each value field, to reach readings often
    "int_value": [1, 2, 3, 5, 6, 7, 13],
    "long_value": [4, 7, 8, 13],
    "float_value": [9],
    "double_value": [10],
    "boolean_value": [11],
    "string_value": [12, 14, 15],
    "bytes_value": [17, 18, *range(22, 35)],
}


@st.composite
def metrics(draw: st.DrawFn, depth: int = 0) -> Any:
    m = pb.Payload.Metric()
    if draw(st.integers(0, 3)):
        m.name = draw(st.sampled_from(NAMES))
    if draw(st.booleans()):
        m.alias = draw(st.integers(0, 3))
    if draw(st.integers(0, 3)) == 0:
        m.datatype = draw(DATATYPES)
    if draw(st.integers(0, 9)) == 0:
        m.timestamp = draw(UINT64)
    m.is_null = draw(st.integers(0, 9)) == 0
    m.is_transient = draw(st.integers(0, 9)) == 0
    kind = draw(st.integers(0, 9))
    if kind == 0:
        ds = m.dataset_value
        ds.columns.extend(draw(st.lists(st.text(max_size=3), max_size=3)))
        ds.types.extend(draw(st.lists(DATATYPES, max_size=3)))
        if draw(st.booleans()):
            ds.num_of_columns = draw(st.integers(0, 4))
        for row in draw(st.lists(st.lists(scalars, max_size=3), max_size=3)):
            r = ds.rows.add()
            for cell in row:
                r.elements.add(**cell)
    elif kind == 1 and depth < 2:
        t = m.template_value
        t.is_definition = draw(st.booleans())
        if draw(st.booleans()):
            t.template_ref = draw(st.text(max_size=4))
        for p in draw(st.lists(scalars, max_size=2)):
            t.parameters.add(name=draw(st.text(max_size=3)), type=draw(DATATYPES), **p)
        for member in draw(st.lists(metrics(depth + 1), max_size=2)):
            t.metrics.append(member)
    elif kind > 1:
        for field, value in draw(metric_values).items():
            setattr(m, field, value)
            if not m.HasField("datatype") and draw(st.booleans()):
                m.datatype = draw(st.sampled_from(MATCHING_TYPES[field]))
    if draw(st.integers(0, 9)) == 0:
        m.properties.keys.append("engUnit")
        m.properties.values.add(**draw(scalars))
    return m


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes]:
    p = pb.Payload(metrics=draw(st.lists(metrics(), max_size=4)))
    if draw(st.booleans()):
        p.timestamp = draw(st.sampled_from([MS, 0, 2**64 - 1]) | UINT64)
    if draw(st.booleans()):
        p.seq = draw(st.integers(0, 300))
    return draw(st.sampled_from(TOPICS)), p.SerializeToString()


def _check(c: SparkplugCodec, topic: str, raw: bytes) -> None:
    try:
        out = feed(c, topic, raw, clock.now_us())
    except DecodeError as exc:
        assert exc.path and exc.reason
        return
    if "DATA" in topic and not out.readings and not out.rejects:
        # Only metrics the module note says are skipped may vanish
        skippable = all(map(_may_be_skipped, pb.Payload.FromString(raw).metrics))
        assert skippable, raw
    for r in out.readings:
        assert "\x00" not in r.device + r.metric
        assert isinstance(r.ts, int)
        assert (r.value is None) != (r.data is None)
        assert _storable(r.value)
    for j in out.rejects:
        assert j.path and j.reason


def _may_be_skipped(m: Any) -> bool:
    return bool(
        m.is_null
        or m.is_transient
        or m.template_value.is_definition
        or not m.HasField("name")  # an alias may name bdSeq or Node Control/*
        or m.name in ("bdSeq", "Node Control/Rebirth")
    )


def _storable(value: Any) -> bool:
    # As the writer stores it: a finite double, or JSON within 64-bit ints
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    if isinstance(value, dict):
        return all(_storable(v) for v in value.values())
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**64
    return value is None or isinstance(value, (bool, str))


@PROFILE
@given(st.lists(messages(), min_size=1, max_size=4))
def test_sparkplug_never_fails_on_any_message_sequence(
    session: list[tuple[str, bytes]],
) -> None:
    c = codec()
    for topic, raw in session:
        _check(c, topic, raw)


@PROFILE
@given(st.sampled_from(TOPICS), st.binary(max_size=200))
def test_sparkplug_never_fails_on_any_bytes(topic: str, raw: bytes) -> None:
    _check(codec(), topic, raw)
