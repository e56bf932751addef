"""InfluxDB line protocol: the shared influx_line_protocol fixtures and bad lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd import clock
from ingestd.codecs.base import MAX_NAME, Decoded
from ingestd.codecs.influx import InfluxCodec, InfluxOptions
from ingestd.errors import DecodeError
from ingestd.model import Origin

from .fixture_readings import FIXTURES, RECEIVED, as_rows, expected_for, expected_rows
from .test_lineproto import payloads as line_protocol

FOLDER = FIXTURES / "influx_line_protocol"
LP_FIXTURES = sorted(FOLDER.glob("*.lp"))

# Route options a user would configure for each fixture's sender. All come
# from Telegraf or InfluxDB clients writing to a shared endpoint (no
# transport identity), so the device is the device or host tag, else the
# measurement; the fixtures state nanosecond precision.
ROUTES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "corpus_escaping": (None, {"precision": "ns"}),
    "corpus_invalid_lines": (None, {"precision": "ns"}),
    "corpus_newline_inside_string_field": (None, {"precision": "ns"}),
    "corpus_numeric_types_and_limits": (None, {"precision": "ns"}),
    "corpus_partial_batch": (None, {"precision": "ns"}),
    "docs_field_types": (None, {"precision": "ns"}),
    "docs_special_characters": (None, {"precision": "ns"}),
    "telegraf_procstat_real_line": (None, {"precision": "ns"}),
}

# Lines the fixtures reject too, with the reason this codec gives
REJECTS: dict[str, dict[int, str]] = {
    "corpus_invalid_lines": {
        1: "field 'value': '9223372036854775808i' is out of range for int64",
        2: "field 'value': '18446744073709551616u' is out of range for uint64",
        3: "tag 'something' has an empty value",
        4: "line has no fields",
        5: "invalid character '\\t' at start of measurement",
        6: "expected a tag key after ','",
        7: "line has no fields",
        8: "invalid character '\\x01' in measurement",
    },
}

# Where this codec differs from a fixture's expectation, on purpose:
# - int64/uint64 maxima: the fixture stores 9223372036854775807 and
#   18446744073709551615; a reading holds a double, which cannot hold either
#   exactly, and the fixture's own note forbids rounding silently. The
#   default rejects them (``big_integers = "round"`` or ``"text"`` keeps
#   them, see below).
# - timestamp 0: the fixture stores a reading at 1970-01-01. The codec places
#   it there too (not at receipt time), but the server-wide plausible window
#   starts in 2000, so it is rejected like any implausible time.
DIFFERENCES: dict[str, dict[int, str]] = {
    "corpus_numeric_types_and_limits": {
        4: "field 'value': integer 9223372036854775807 is not exact as a double",
        5: "field 'value': integer 18446744073709551615 is not exact as a double",
        8: "timestamp 1970-01-01T00:00:00Z out of plausible range",
    },
}


def decode(
    payload: bytes,
    device: str | None = None,
    window: clock.Window | None = None,
    **options: Any,
) -> Decoded:
    codec = InfluxCodec(InfluxOptions(**options), window or clock.Window())
    out = Decoded()
    codec.decode(payload, Origin(device, "test", RECEIVED), out)
    return out


def decode_fixture(path: Path) -> Decoded:
    device, options = ROUTES[path.stem]
    return decode(path.read_bytes(), device, **options)


def rejects(out: Decoded) -> list[tuple[str, str]]:
    return [(r.path, r.reason) for r in out.rejects]


def expected_rejects(stem: str) -> list[tuple[str, str]]:
    lines = {**REJECTS.get(stem, {}), **DIFFERENCES.get(stem, {})}
    return [(f"line {n}", reason) for n, reason in sorted(lines.items())]


def per_line_readings(stem: str, number: int, line: dict[str, Any]) -> list[Any]:
    """The readings one ``per_line`` entry expects, but for our differences."""
    if number in DIFFERENCES.get(stem, {}) or not line.get("accept", True):
        return []
    if "readings" in line:
        return line["readings"]  # type: ignore[no-any-return]
    # docs_field_types lists value and type only; the rest is its mapping
    # rule: no tags, so the measurement is the device; no time, so receipt
    measurement, _, rest = line["line"].partition(" ")
    return [
        {
            "device": measurement,
            "metric": f"{measurement}.{rest.partition('=')[0]}",
            "value": line["value"],
            "unit": None,
            "ts": "2024-05-01T12:00:00Z",
            "lp_type": line["lp_type"],
        }
    ]


def with_readings(path: Path) -> bool:
    expected = expected_for(path)
    return "readings" in expected or "per_line" in expected


@pytest.mark.parametrize(
    "path", [p for p in LP_FIXTURES if with_readings(p)], ids=lambda p: p.stem
)
def test_influx_fixture_readings(path: Path) -> None:
    expected = expected_for(path)
    out = decode_fixture(path)

    # The whole file as one batch: readings of every good line, in order
    if "per_line" in expected:
        rows = [
            reading
            for number, line in enumerate(expected["per_line"], 1)
            for reading in per_line_readings(path.stem, number, line)
        ]
    else:
        rows = expected["readings"]
    assert as_rows(out.readings) == expected_rows(rows)
    assert rejects(out) == expected_rejects(path.stem)


@pytest.mark.parametrize(
    "path",
    [p for p in LP_FIXTURES if "per_line" in expected_for(p)],
    ids=lambda p: p.stem,
)
def test_influx_fixture_lines_one_per_request(path: Path) -> None:
    # As the fixtures advise: each line alone, so that lines sharing a series
    # and a receipt time are not one (device, metric, ts) identity
    lines = {**REJECTS.get(path.stem, {}), **DIFFERENCES.get(path.stem, {})}
    for number, line in enumerate(expected_for(path)["per_line"], 1):
        out = decode(line["line"].encode(), **ROUTES[path.stem][1])
        wanted = per_line_readings(path.stem, number, line)
        assert as_rows(out.readings) == expected_rows(wanted), line["line"]
        if number in lines:
            assert rejects(out) == [("line 1", lines[number])]
        else:
            assert not out.rejects, line["line"]

        # The source type survives: bool stays bool, every number a double
        kinds = {"bool": bool, "string": str}
        for reading, spec in zip(out.readings, wanted, strict=True):
            assert type(reading.value) is kinds.get(spec["lp_type"], float)


def test_influx_fixture_big_integers_kept_when_the_route_says_so() -> None:
    path = FOLDER / "corpus_numeric_types_and_limits.lp"
    per_line = expected_for(path)["per_line"]
    maxima = [line["readings"][0] for line in per_line[3:5]]

    # round: the fixture's values, as the nearest doubles
    out = decode(path.read_bytes(), big_integers="round")
    assert expected_rows(maxima)[0] in as_rows(out.readings)
    assert [r.value for r in out.readings[3:5]] == [2.0**63, 2.0**64]

    # text: exact, as decimal text
    out = decode(path.read_bytes(), big_integers="text")
    assert [r.value for r in out.readings[3:5]] == [
        "9223372036854775807",
        "18446744073709551615",
    ]
    assert rejects(out) == expected_rejects(path.stem)[-1:]  # only the ts 0


def test_influx_fixture_timestamp_zero_is_1970_not_receipt() -> None:
    # The server-wide window rejects 1970 (see DIFFERENCES); a window that
    # admits it shows where the codec put the time: at 0, not at receipt.
    out = decode(b"cpu value=42 0")
    assert out.readings == []
    assert rejects(out) == [
        ("line 1", "timestamp 1970-01-01T00:00:00Z out of plausible range")
    ]
    out = decode(b"cpu value=42 0", window=clock.Window(earliest=0))
    assert [(r.metric, r.ts, r.value) for r in out.readings] == [("cpu.value", 0, 42.0)]


def test_influx_fixture_newline_inside_string_is_one_point() -> None:
    path = FOLDER / "corpus_newline_inside_string_field.lp"
    expected = expected_for(path)
    assert "never produce two half-lines" in expected["expected_outcome"]
    out = decode_fixture(path)
    # Accepted as one point, as the reference decoder does
    assert as_rows(out.readings) == expected_rows(expected["readings_if_accepted"])
    assert out.readings[0].value == "4\n2"
    assert not out.rejects


def test_influx_fixture_partial_batch_stores_the_good_lines() -> None:
    path = FOLDER / "corpus_partial_batch.lp"
    outcome = expected_for(path)["expected_outcome"]
    assert "must name line 2" in outcome["lines_1_and_3"]
    out = decode_fixture(path)
    # InfluxDB 1.x's partial write: lines 1 and 3 stored, line 2 named
    assert [(r.metric, r.value) for r in out.readings] == [
        ("cpu.value", 42.0),
        ("cpu.value", 42.0),
    ]
    assert rejects(out) == [
        ("line 2", "field 'value': value 'invalid' has no known type")
    ]


def test_influx_readings_carry_origin_and_format() -> None:
    out = decode(b"m,host=h v=1.5 1714564800123456789")
    (r,) = out.readings
    assert (r.device, r.metric, r.ts, r.value, r.data, r.unit) == (
        "h", "m.v", 1714564800123456, 1.5, None, None,
    )  # fmt: skip
    assert (r.received, r.transport, r.format) == (RECEIVED, "test", "influx")


@pytest.mark.parametrize(
    ("line", "identity", "device_tags", "device"),
    [
        (b"m,host=h,device=d v=1", None, ["device", "host"], "d"),
        (b"m,host=h v=1", None, ["device", "host"], "h"),
        (b"m,region=eu v=1", None, ["device", "host"], "m"),
        (b"m,host=h,sensor=s v=1", None, ["sensor"], "s"),
        (b"m,host=h v=1", None, [], "m"),
        (b"m,host=h,device=d v=1", "tracker-7", ["device", "host"], "tracker-7"),
    ],
)
def test_influx_device_identity_then_tags_then_measurement(
    line: bytes, identity: str | None, device_tags: list[str], device: str
) -> None:
    out = decode(line, identity, device_tags=device_tags)
    assert [(r.device, r.metric) for r in out.readings] == [(device, "m.v")]


@pytest.mark.parametrize(
    ("precision", "stamp"),
    [
        ("s", b"1714561200"),
        ("ms", b"1714561200123"),
        ("us", b"1714561200123456"),
        ("ns", b"1714561200123456789"),
    ],
)
def test_influx_precision_is_the_routes(precision: str, stamp: bytes) -> None:
    out = decode(b"m v=1 " + stamp, precision=precision)
    wanted = {"s": 0, "ms": 123000, "us": 123456, "ns": 123456}[precision]
    assert out.readings[0].ts == 1714561200_000000 + wanted


def test_influx_precision_ns_before_1970_truncates_down() -> None:
    out = decode(b"m v=1 -1", window=clock.Window(earliest=-(10**6)))
    assert out.readings[0].ts == -1


def test_influx_units_by_metric_and_tags_left_out() -> None:
    payload = b"env,host=h,room=cold temp=4.5,hum=80i 1714561200000000000"
    out = decode(payload, units={"env.temp": "Cel"})
    assert [(r.metric, r.unit, r.value) for r in out.readings] == [
        ("env.temp", "Cel", 4.5),
        ("env.hum", None, 80.0),
    ]


def test_influx_exact_big_integers_are_kept() -> None:
    out = decode(b"m a=9007199254740992i,b=-9223372036854775808i,c=9007199254740993u")
    assert [r.value for r in out.readings] == [2.0**53, -(2.0**63)]
    assert rejects(out) == [
        ("line 1", "field 'c': integer 9007199254740993 is not exact as a double")
    ]


@pytest.mark.parametrize(
    ("payload", "path", "reason", "stored"),
    [
        (b"cpu v=1\ncpu v=+1\n", "line 2",
         "field 'v': value '+1' has no known type", ["cpu.v"]),
        (b'cpu v="a\x00b",w=1', "line 1",
         "field 'v': text contains a NUL character", ["cpu.w"]),
        (b"cpu v=1 4102444800000000000", "line 1",
         "timestamp 2100-01-01T00:00:00Z out of plausible range", []),
        (b"cpu v=1 -9223372036854775808", "line 1",
         "timestamp 1677-09-21T00:12:43.145224Z out of plausible range", []),
        (b'a v="x\ny"\r\nb v=1\n\n# c\nb v=1,', "line 6",
         "expected a field key, found end of line", ["a.v", "b.v"]),
        (b"m" * (MAX_NAME + 1) + b" v=1\nok v=1", "line 1",
         f"device id longer than {MAX_NAME} characters", ["ok.v"]),
        (b"m," + b"host=" + b"h" * (MAX_NAME + 1) + b" v=1", "line 1",
         f"device id longer than {MAX_NAME} characters", []),
        (b"m v=1," + b"w" * (MAX_NAME - 1) + b"=2", "line 1",
         f"field '{'w' * 40}...': metric name longer than {MAX_NAME} characters",
         ["m.v"]),
        (b"cpu v=1e999", "line 1", "field 'v': '1e999' is out of range for float64",
         []),
        (b"cpu v=\"\xff\"", "line 1", "invalid UTF-8 in field 'v'", []),
        (b"cpu v=1 1.5", "line 1", "invalid timestamp '1.5'", []),
        (b"cpu v=1\rcpu v=2\r\n", "line 1", "carriage return without a line feed",
         []),
    ],
)  # fmt: skip
def test_influx_bad_line_is_rejected_by_line(
    payload: bytes, path: str, reason: str, stored: list[str]
) -> None:
    out = decode(payload)
    assert rejects(out) == [(path, reason)]
    assert [r.metric for r in out.readings] == stored


def test_influx_bad_field_with_transport_identity_keeps_the_others() -> None:
    out = decode(b"m" * MAX_NAME + b" v=1", "dev-1")
    assert rejects(out) == [
        ("line 1", f"field 'v': metric name longer than {MAX_NAME} characters")
    ]


@pytest.mark.parametrize(
    "payload", [b"", b"\n\n", b"   \r\n", b"# only a comment", b"# a\n# b\n"]
)
def test_influx_payload_without_points_is_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(payload)
    assert caught.value.reason == "no points in payload: only blank or comment lines"
    assert caught.value.path == "line 1"


def test_influx_all_lines_bad_is_rejects_not_an_error() -> None:
    out = decode(b"cpu\n\nmem v=\n")
    assert out.readings == []
    assert rejects(out) == [
        ("line 1", "line has no fields"),
        ("line 3", "field 'v' has no value"),
    ]


PROFILE = settings(
    max_examples=1000,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CODECS = [
    InfluxCodec(InfluxOptions(), clock.Window()),
    InfluxCodec(InfluxOptions(precision="s", big_integers="text"), clock.Window()),
]


def _check(payload: bytes, device: str | None) -> None:
    for codec in CODECS:
        out = Decoded()
        try:
            codec.decode(payload, Origin(device, "fuzz", RECEIVED), out)
        except DecodeError as exc:
            assert exc.path == "line 1" and exc.reason
            continue
        assert out.readings or out.rejects
        for r in out.readings:
            assert "\x00" not in r.device + r.metric
            assert len(r.device) <= MAX_NAME and len(r.metric) <= MAX_NAME
            assert type(r.ts) is int
            assert type(r.value) in (float, bool, str)
            assert r.data is None
        for reject in out.rejects:
            assert reject.path.startswith("line ") and reject.reason


@PROFILE
@given(line_protocol(), st.sampled_from([None, "dev-1"]))
def test_influx_never_fails_on_any_line_protocol(
    payload: bytes, device: str | None
) -> None:
    _check(payload, device)


@PROFILE
@given(st.binary(max_size=200))
def test_influx_never_fails_on_any_bytes(payload: bytes) -> None:
    _check(payload, None)
