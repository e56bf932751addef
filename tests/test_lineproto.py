"""The pure line protocol parser (``_lineproto.py``) and its compiled twin.

Every example test runs on both (the ``parse`` fixture); the property tests
run the two on the same generated payloads and compare everything they
produce by ``repr``, so 1 against 1.0, True against 1 and -0.0 against 0.0
count as differences, as do line numbers and reasons. Hypothesis runs
derandomized with a fixed budget, so a failure reproduces as is; it prints
the shrunk payload.

The compiled parameters skip when the extension is not built
(``python setup.py build_ext --inplace``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from ingestd.codecs import _lineproto
from ingestd.codecs import influx as influx_codec
from ingestd.codecs._lineproto import LineError, Point

Parse = Callable[[bytes], list[Point | LineError]]

PURE: Parse = _lineproto.parse
COMPILED: Parse | None
try:
    from ingestd.codecs._lineproto_ext import parse as _compiled

    COMPILED = _compiled
except ImportError:  # not built
    COMPILED = None

NOT_BUILT = (
    "ingestd.codecs._lineproto_ext is not built: "
    "run `python setup.py build_ext --inplace`"
)
needs_compiled = pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
LP_FIXTURES = sorted((FIXTURES / "influx_line_protocol").glob("*.lp"))


@pytest.fixture(
    params=[
        pytest.param("pure"),
        pytest.param("compiled", marks=needs_compiled),
    ]
)
def parse(request: pytest.FixtureRequest) -> Parse:
    if request.param == "pure":
        return PURE
    assert COMPILED is not None
    return COMPILED


def errors(entries: list[Point | LineError]) -> list[tuple[int, str]]:
    return [(e.line, e.reason) for e in entries if type(e) is LineError]


# Examples, each on both implementations


def test_lineproto_point_parts(parse: Parse) -> None:
    entries = parse(b'cpu,host=a,region=eu load=0.5,n=-3i,m=7u,up=T,s="x" 17')
    assert entries == [
        (
            1,
            "cpu",
            {"host": "a", "region": "eu"},
            [
                ("load", 0.5, "float"),
                ("n", -3, "int"),
                ("m", 7, "uint"),
                ("up", True, "bool"),
                ("s", "x", "string"),
            ],
            17,
        )
    ]
    fields = entries[0][3]  # type: ignore[index]
    assert [type(v) for _, v, _ in fields] == [float, int, int, bool, str]


def test_lineproto_bare_number_is_a_float(parse: Parse) -> None:
    (point,) = parse(b"m v=1")
    assert repr(point) == "(1, 'm', {}, [('v', 1.0, 'float')], None)"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"t", True), (b"T", True), (b"true", True), (b"True", True),
        (b"TRUE", True), (b"f", False), (b"F", False), (b"false", False),
        (b"False", False), (b"FALSE", False),
    ],
)  # fmt: skip
def test_lineproto_boolean_spellings(parse: Parse, text: bytes, value: bool) -> None:
    assert parse(b"m v=" + text) == [(1, "m", {}, [("v", value, "bool")], None)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"-1.234456e+78", -1.234456e78),
        (b".5", 0.5),
        (b"1.", 1.0),
        (b"-.5E-3", -0.0005),
        (b"007", 7.0),
        (b"-0", -0.0),
        (b"1e-999", 0.0),
        (b"0.1", 0.1),
        (b"123456789012345678901234567890", 1.2345678901234568e29),
    ],
)
def test_lineproto_float_forms(parse: Parse, text: bytes, value: float) -> None:
    ((_, _, _, [(_, got, kind)], _),) = parse(b"m v=" + text)  # type: ignore[misc]
    assert kind == "float" and repr(got) == repr(value)


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        (b"9223372036854775807i", 2**63 - 1, "int"),
        (b"-9223372036854775808i", -(2**63), "int"),
        (b"-0i", 0, "int"),
        (b"00012i", 12, "int"),
        (b"18446744073709551615u", 2**64 - 1, "uint"),
        (b"0u", 0, "uint"),
    ],
)
def test_lineproto_integer_limits(
    parse: Parse, text: bytes, value: int, kind: str
) -> None:
    assert parse(b"m v=" + text) == [(1, "m", {}, [("v", value, kind)], None)]


@pytest.mark.parametrize(
    ("payload", "measurement", "tags", "field"),
    [
        (rb"c\,pu v=1", "c,pu", {}, "v"),
        (rb"c\ pu v=1", "c pu", {}, "v"),
        (rb"c=pu v=1", "c=pu", {}, "v"),
        (rb"c\=pu v=1", "c\\=pu", {}, "v"),
        (rb"m,k\,\=\ =v\,\=\  f=1", "m", {"k,= ": "v,= "}, "f"),
        (rb"m,host=two\\ words f=1", "m", {"host": "two\\ words"}, "f"),
        (rb"m,host=two\\\ words f=1", "m", {"host": "two\\\\ words"}, "f"),
        (rb"m va\lue=1", "m", {}, "va\\lue"),
        (rb"m f\,\=\ =1", "m", {}, "f,= "),
        (rb"m\ f=1", "m f=1", {}, None),  # the space is escaped: no fields
    ],
)
def test_lineproto_name_escapes(
    parse: Parse,
    payload: bytes,
    measurement: str,
    tags: dict[str, str],
    field: str | None,
) -> None:
    (entry,) = parse(payload)
    if field is None:
        assert entry == LineError(1, "line has no fields")
        return
    assert entry[1:3] == (measurement, tags)
    assert entry[3][0][0] == field  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (rb'"how\"dy"', 'how"dy'),
        (rb'"how\\dy"', "how\\dy"),
        (rb'"\n\t"', "\\n\\t"),
        (rb'"a\\"', "a\\"),
        (rb'"a\\\""', 'a\\"'),
        (rb'"a,b c=d"', "a,b c=d"),
        (b'"4\n2"', "4\n2"),
        (b'"nul\x00inside"', "nul\x00inside"),
        ('"Launch 🚀"'.encode(), "Launch 🚀"),
        (b'""', ""),
    ],
)
def test_lineproto_string_escapes(parse: Parse, body: bytes, text: str) -> None:
    assert parse(b"m v=" + body) == [(1, "m", {}, [("v", text, "string")], None)]


def test_lineproto_line_numbers_count_newlines_inside_strings(parse: Parse) -> None:
    payload = b'a v="x\ny"\r\nb v=1 12\n  # comment\n\n   \nc,x=1 v=1 1 2\nd v=2'
    assert parse(payload) == [
        (1, "a", {}, [("v", "x\ny", "string")], None),
        (3, "b", {}, [("v", 1.0, "float")], 12),
        LineError(7, "unexpected text after the timestamp"),
        (8, "d", {}, [("v", 2.0, "float")], None),
    ]


def test_lineproto_blank_comment_and_empty_payloads(parse: Parse) -> None:
    assert parse(b"") == []
    assert parse(b"\n\r\n   \n# only \t\x01 a comment \xff") == []
    assert parse(b"  m v=1  \r\n") == [(1, "m", {}, [("v", 1.0, "float")], None)]


def test_lineproto_spaces_between_sections(parse: Parse) -> None:
    assert parse(b"m,t=1   v=1   5   ") == [
        (1, "m", {"t": "1"}, [("v", 1.0, "float")], 5)
    ]


def test_lineproto_bad_line_skips_to_the_next_newline(parse: Parse) -> None:
    # The error is before the string, so its newline ends the bad line
    payload = b'm,a= v="x\ny"\nok v=1'
    assert parse(payload) == [
        LineError(1, "tag 'a' has an empty value"),
        LineError(2, "line has no fields"),  # 'y"' is a measurement
        (3, "ok", {}, [("v", 1.0, "float")], None),
    ]


def test_lineproto_unterminated_string_takes_the_rest(parse: Parse) -> None:
    payload = b'm v="open\nm v=1\nm v=2\n'
    assert parse(payload) == [
        LineError(1, "field 'v': string has no closing quote"),
    ]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"cpu value=9223372036854775808i",
         "field 'value': '9223372036854775808i' is out of range for int64"),
        (b"cpu value=-9223372036854775809i",
         "field 'value': '-9223372036854775809i' is out of range for int64"),
        (b"cpu value=18446744073709551616u",
         "field 'value': '18446744073709551616u' is out of range for uint64"),
        (b"cpu value=-1u", "field 'value': '-1u' is not a valid uint64"),
        (b"cpu value=1.5i", "field 'value': '1.5i' is not a valid int64"),
        (b"cpu value=1e999", "field 'value': '1e999' is out of range for float64"),
        (b"cpu value=1e", "field 'value': '1e' is not a valid float"),
        (b"cpu value=.", "field 'value': '.' is not a valid float"),
        (b"cpu value=0x10", "field 'value': '0x10' is not a valid float"),
        (b"cpu value=1_0", "field 'value': '1_0' is not a valid float"),
        (b"cpu value=NaN", "field 'value': value 'NaN' has no known type"),
        (b"cpu value=+1", "field 'value': value '+1' has no known type"),
        (b"cpu value=invalid", "field 'value': value 'invalid' has no known type"),
        (b"cpu value=tru", "field 'value': 'tru' is not a boolean"),
        (b"cpu value=", "field 'value' has no value"),
        (b"cpu value= 1", "field 'value' has no value"),
        (b'cpu value="open', "field 'value': string has no closing quote"),
        (b'cpu value="a"b', "field 'value': unexpected 'b' after the value"),
        (b"cpu,something= value=42", "tag 'something' has an empty value"),
        (b"cpu_load_short,host=server01,region=us-west", "line has no fields"),
        (b"cpu", "line has no fields"),
        (b"cpu   ", "line has no fields"),
        (b"cpu,a=b\r", "line has no fields"),
        (b"\tm v=1", "invalid character '\\t' at start of measurement"),
        (b",m v=1", "invalid character ',' at start of measurement"),
        (b"m, x=1", "expected a tag key after ','"),
        (b"m,", "expected a tag key after ','"),
        (b"m,=x v=1", "empty tag key"),
        (b"m,a\x01=x v=1", "expected '=' after tag key 'a', found '\\x01'"),
        (b"m,\x01a=x v=1", "invalid character '\\x01' in tag key"),
        (b"m,a v=1", "expected '=' after tag key 'a', found ' '"),
        (b"m,a=b=c v=1", "invalid character '=' after tag 'a'"),
        (b"x\x01y v=1", "invalid character '\\x01' in measurement"),
        (b"m =1", "empty field key"),
        (b"m v=1,", "expected a field key, found end of line"),
        (b"m v=1,\x7f=1", "invalid character '\\x7f' in field key"),
        (b"m v", "expected '=' after field key 'v', found end of line"),
        (b"m v=1 1.5", "invalid timestamp '1.5'"),
        (b"m v=1 -", "invalid timestamp '-'"),
        (b"m v=1 9223372036854775808",
         "timestamp '9223372036854775808' is out of range for int64"),
        (b"m v=1 1 2", "unexpected text after the timestamp"),
        (b"m v=1\rx", "carriage return without a line feed"),
        (b"\rm v=1", "invalid character '\\r' at start of measurement"),
        (b"\xffm v=1", "invalid UTF-8 in measurement"),
        (b"m,\xff=a v=1", "invalid UTF-8 in tag key"),
        (b"m,a=\xc3 v=1", "invalid UTF-8 in tag value"),
        (b"m \xed\xa0\x80=1", "invalid UTF-8 in field key"),
        (b'm v="\xff"', "invalid UTF-8 in field 'v'"),
        (b"m v=" + b"9" * 60 + b"i",
         "field 'v': '" + "9" * 40 + "...' is out of range for int64"),
    ],
)  # fmt: skip
def test_lineproto_bad_lines_say_why(parse: Parse, payload: bytes, reason: str) -> None:
    assert parse(payload) == [LineError(1, reason)]
    if b'"' not in payload:  # an open string takes the next line in
        ok = (2, "ok", {}, [("v", 1.0, "float")], None)
        assert parse(payload + b"\nok v=1") == [LineError(1, reason), ok]


def test_lineproto_many_backslashes_without_a_closing_quote(parse: Parse) -> None:
    # The pure twin's patterns never backtrack: this is linear, not 2**n
    payload = b'm v="' + b"\\\\" * 20_000 + b"\\"
    assert parse(payload) == [LineError(1, "field 'v': string has no closing quote")]


@needs_compiled
def test_lineproto_compiled_flags() -> None:
    from ingestd.codecs import _lineproto_ext

    assert _lineproto_ext.DEBUG in (True, False)


@needs_compiled
def test_lineproto_compiled_refuses_what_is_not_bytes() -> None:
    assert COMPILED is not None
    for wrong in (None, bytearray(b"m v=1"), "m v=1"):
        with pytest.raises(TypeError):
            COMPILED(wrong)  # type: ignore[arg-type]


def test_lineproto_influx_codec_picks_the_compiled_twin() -> None:
    chosen = vars(influx_codec)["parse"]
    if os.environ.get("INGESTD_NO_EXTENSIONS") == "1" or COMPILED is None:
        assert chosen is PURE
    else:
        assert chosen is COMPILED


# Both implementations on the same input


def same(payload: bytes) -> list[Point | LineError]:
    """Both twins' entries, which must be identical down to their reprs."""
    assert COMPILED is not None
    pure = PURE(payload)
    compiled = COMPILED(payload)
    assert repr(compiled) == repr(pure)
    assert compiled == pure
    return pure


@needs_compiled
@pytest.mark.parametrize("path", LP_FIXTURES, ids=lambda p: p.stem)
def test_lineproto_fixtures_parse_the_same(path: Path) -> None:
    entries = same(path.read_bytes())
    assert entries, "the fixture gave no entries at all"


@needs_compiled
def test_lineproto_fixture_lines_one_by_one_parse_the_same() -> None:
    # Each line alone too: an error then sits at the end of the payload
    for path in LP_FIXTURES:
        for line in path.read_bytes().split(b"\n"):
            same(line)
            same(line + b"\r\n")


# Generated line protocol: mostly well formed, with the grammar's corners

PLAIN_NAMES = st.sampled_from(["cpu", "host", "v", "value", "usage_idle", "région"])
NAME_CHARS = st.sampled_from(
    list("abz_-.09") + [",", "=", " ", "\\", '"', "#", "é", "🚀"]
)
CONTROLS = st.sampled_from(["\t", "\x00", "\x01", "\x7f", "\n", "\r"])
MEASUREMENT_ESCAPES = ", "
NAME_ESCAPES = ",= "


@st.composite
def names(draw: st.DrawFn, escapes: str) -> str:
    """A name: mostly plain, else escaped as a writer should, or raw."""
    kind = draw(st.integers(0, 19))
    if kind < 12:
        return draw(PLAIN_NAMES)
    chars = draw(st.lists(NAME_CHARS, min_size=kind % 2, max_size=6))
    if kind == 19:  # raw: specials unescaped, maybe a control character
        at = draw(st.integers(0, len(chars)))
        return "".join(chars[:at] + draw(st.lists(CONTROLS, max_size=1)) + chars[at:])
    return "".join("\\" + c if c in escapes else c for c in chars)


STRING_CHARS = st.sampled_from(list('ab \\"\n,=') + ["\x00", "é"])


@st.composite
def strings(draw: st.DrawFn) -> str:
    chars = draw(st.lists(STRING_CHARS, max_size=8))
    body = "".join(chars)
    if draw(st.integers(0, 5)) > 0:
        body = body.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + body + '"' * draw(st.sampled_from([1, 1, 1, 1, 0, 2]))


BOOLS = ["t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"]
JUNK_VALUES = st.sampled_from(
    ["", "+1", ".", "-", "1e", "1e+", "0x10", "1_0", "1.5.2", "--1", ".5",
     "1.", "-.5e-3", "00012i", "-i", "1.5i", "1.5u", "-u", "u", "1e999",
     "-1e999", "1\r", "1\rx", '"a"b', "1,"]
)  # fmt: skip
VALUES = st.one_of(
    st.floats().map(repr),
    st.floats(-1e6, 1e6).map(lambda f: f"{f:.3f}"),
    st.integers(-(2**64), 2**65).map(lambda i: f"{i}i"),
    st.integers(-9, 2**65).map(lambda i: f"{i}u"),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1]).map(lambda i: f"{i}i"),
    st.sampled_from([2**64 - 1, 2**64, -1, 0]).map(lambda i: f"{i}u"),
    st.sampled_from(BOOLS + ["tru", "yes", "Fa"]),
    strings(),
    JUNK_VALUES,
    JUNK_VALUES,  # twice: bad values are half the point
)
STAMPS = st.one_of(
    st.none(),
    st.integers(-(2**64), 2**64).map(str),
    st.integers(0, 2**62).map(str),
    st.sampled_from(["", "1.5", "-", "x", "0", "1 2", "12 ", "-0", "5 x", "1e3"]),
)


@st.composite
def lines(draw: st.DrawFn) -> str:
    measurement = draw(names(MEASUREMENT_ESCAPES))
    tags = draw(
        st.lists(st.tuples(names(NAME_ESCAPES), names(NAME_ESCAPES)), max_size=3)
    )
    fields = draw(st.lists(st.tuples(names(NAME_ESCAPES), VALUES), max_size=4))
    stamp = draw(STAMPS)
    gap = draw(st.sampled_from([" "] * 8 + ["  ", ""]))
    text = measurement + "".join(f",{k}={v}" for k, v in tags)
    text += gap + ",".join(f"{k}={v}" for k, v in fields)
    if stamp is not None:
        text += draw(st.sampled_from([" ", " ", "   "])) + stamp
    return text + draw(st.sampled_from(["", "", " ", "  "]))


ENDINGS = st.sampled_from(["\n", "\n", "\r\n", "\n\n", "\n# note \x01\n", "\r", " \n"])


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.tuples(lines(), ENDINGS), min_size=1, max_size=5))
    data = "".join(line + end for line, end in parts).encode()
    if data and draw(st.integers(0, 9)) == 0:  # a byte that is not UTF-8
        at = draw(st.integers(0, len(data) - 1))
        data = (
            data[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
            + data[at:]
        )
    return data


# Corners that the random lines reach too rarely to count on
CORNERS = st.sampled_from(
    [b'm v="open', b'm v="open\\', b"m v=1,", b"m v=1,\r\n", b"m v=1 \r", b"m\\"]
)
PAYLOADS = st.one_of(payloads(), payloads(), st.binary(max_size=80), CORNERS)

PROPERTY = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@needs_compiled
@PROPERTY
@given(payload=PAYLOADS)
def test_lineproto_property_generated_payloads_parse_the_same(payload: bytes) -> None:
    same(payload)


@needs_compiled
@PROPERTY
@given(payload=payloads())
def test_lineproto_property_lines_joined_parse_as_alone(payload: bytes) -> None:
    # Without quotes (which may span lines), a batch is its lines one by one
    if b'"' in payload:
        return
    batch = same(payload)
    alone: list[Any] = []
    for number, text in enumerate(payload.split(b"\n"), 1):
        for entry in same(text):
            if type(entry) is LineError:
                alone.append(LineError(number, entry.reason))
            else:
                alone.append((number, *entry[1:]))
    assert batch == alone


REASONS = {
    "bad start": "at start of measurement", "in measurement": "in measurement",
    "after comma": "expected a tag key after", "empty tag key": "empty tag key",
    "empty tag value": "has an empty value", "tag equals": "after tag key",
    "after tag": "after tag '", "no fields": "line has no fields",
    "empty field key": "empty field key", "field equals": "after field key",
    "field key at end": "expected a field key, found end",
    "no value": "has no value", "open string": "no closing quote",
    "not a boolean": "is not a boolean", "no type": "has no known type",
    "bad int": "not a valid int64", "int range": "range for int64",
    "bad uint": "not a valid uint64", "uint range": "range for uint64",
    "bad float": "not a valid float", "float range": "range for float64",
    "bad timestamp": "invalid timestamp", "timestamp range": "timestamp '",
    "after timestamp": "after the timestamp", "after value": "after the value",
    "lone CR": "carriage return", "UTF-8": "invalid UTF-8",
}  # fmt: skip
POINTS = {"float", "int", "uint", "bool", "string", "timestamp", "no timestamp"}


def test_lineproto_property_generator_reaches_every_outcome() -> None:
    # The comparison is only as good as what the payloads exercise: parse a
    # fixed sample with the pure twin and check that every kind of outcome
    # turns up, so a narrowed strategy fails here instead of passing blind.
    seen: set[str] = set()

    def collect(payload: bytes) -> None:
        for entry in PURE(payload):
            if type(entry) is LineError:
                seen.update(k for k, text in REASONS.items() if text in entry.reason)
                continue
            _, _, _, fields, stamp = entry
            seen.update(kind for _, _, kind in fields)
            seen.add("no timestamp" if stamp is None else "timestamp")

    # Up to five fixed seeds of 600 payloads: a rare kind (a bare comma
    # after the measurement) was missed by one 600-payload draw in a full
    # run, and the point is what the strategy can reach, not one draw
    for attempt in range(5):
        seeded = seed(attempt)(
            settings(max_examples=600, database=None, deadline=None)(
                given(payload=PAYLOADS)(collect)
            )
        )
        seeded()
        if not {*REASONS, *POINTS} - seen:
            break
    missing = {*REASONS, *POINTS} - seen
    assert not missing, f"never produced: {sorted(missing)}"
