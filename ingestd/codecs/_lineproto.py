"""InfluxDB line protocol text to points: the reference parser.

This is the reference implementation. ``ext/_lineproto.pyx`` is its compiled
twin with the same behaviour; ``ingestd.codecs.influx`` picks the twin unless
``INGESTD_NO_EXTENSIONS=1``. Change both together; ``tests/test_lineproto.py``
runs the two side by side.

``parse`` turns a payload into one entry per line, in order: a point
``(line, measurement, tags, fields, timestamp)`` or a ``LineError(line,
reason)``. ``fields`` is a list of ``(key, value, lp_type)`` with ``lp_type``
one of ``float``, ``int``, ``uint``, ``bool``, ``string``; ``timestamp`` is
the integer as written (in the request's precision), or None. ``line`` is
the 1-based line on which the entry starts. A bad line never stops the
parse: the next one starts after the next newline.

The grammar is that of the InfluxDB v2 reference decoder
(github.com/influxdata/line-protocol, ``lineprotocol``) and of its corpus:

- Names stop at ``,`` and space (tag and field keys and tag values also at
  ``=``) and may not hold control characters. A backslash escapes ``,`` and
  space in a measurement, and ``,``, ``=`` and space in keys and tag values;
  before any other character it is a literal backslash, so ``two\\\\ words``
  is ``two\\ words``.
- A string field is quoted; ``\\"`` and ``\\\\`` are its only escapes (``\\n``
  stays two characters) and a literal newline inside the quotes belongs to
  the string, as the reference decoder has it, not to the next line.
- Numbers are floats (``1`` too), ``i`` int64 and ``u`` uint64, range
  checked; booleans are ``t T true True TRUE`` and ``f F false False FALSE``.
  ``NaN``, ``Inf``, hex and a leading ``+`` are not numbers.
- Lines end with ``\\n`` or ``\\r\\n``. Blank lines, leading spaces and lines
  starting with ``#`` are skipped; a comment runs to the newline whatever it
  holds (the reference decoder refuses control characters in comments).
- Names and strings must be UTF-8. NUL is allowed inside a string by the
  syntax; the codec, not the parser, refuses to store it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

Value = float | int | bool | str
Field = tuple[str, Value, str]
Point = tuple[int, str, dict[str, str], list[Field], int | None]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


class LineError(NamedTuple):
    """A line that is not line protocol, and why."""

    line: int
    reason: str


# Tokens. Possessive repeats: a backslash escape is tried before the plain
# character class, and a failed match never backtracks (no blow-up on a
# long run of backslashes without a closing quote).
_SKIP = re.compile(rb"(?:[ ]++|\r?\n|#[^\n]*+\n?)*+")
_MEASUREMENT = re.compile(rb"(?:\\[, ]|[^, \x00-\x1f\x7f])*+")
_NAME = re.compile(rb"(?:\\[,= ]|[^,= \x00-\x1f\x7f])*+")
_STRING = re.compile(rb'(?:\\[\\"]|[^"])*+')
_VALUE = re.compile(rb"[^, \r\n]*+")
_STAMP = re.compile(rb"[^ \r\n]*+")
_SPACES = re.compile(rb"[ ]*+")

_UNESCAPE_MEASUREMENT = re.compile(rb"\\([, ])")
_UNESCAPE_NAME = re.compile(rb"\\([,= ])")
_UNESCAPE_STRING = re.compile(rb'\\([\\"])')

_FLOAT = re.compile(rb"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_INT = re.compile(rb"-?[0-9]+")
_UINT = re.compile(rb"[0-9]+")
_BOOLS = {
    b"t": True, b"T": True, b"true": True, b"True": True, b"TRUE": True,
    b"f": False, b"F": False, b"false": False, b"False": False, b"FALSE": False,
}  # fmt: skip
_INF = float("inf")

_COMMA, _SPACE, _EQUALS, _QUOTE = 0x2C, 0x20, 0x3D, 0x22
_LF, _CR = 0x0A, 0x0D


class _Bad(Exception):
    """A line fails; ``pos`` is where to look for its end."""

    def __init__(self, reason: str, pos: int) -> None:
        self.reason = reason
        self.pos = pos


def parse(payload: bytes) -> list[Point | LineError]:
    """Every line of ``payload``: a point or a ``LineError``, in order.

    >>> parse(b"cpu,host=a load=0.5,n=3i 1700000000000000000")
    [(1, 'cpu', {'host': 'a'}, [('load', 0.5, 'float'), ('n', 3, 'int')], \
1700000000000000000)]
    """
    entries: list[Point | LineError] = []
    n = len(payload)
    pos = 0
    line = 1
    while True:
        # Blank lines, leading spaces, comments
        end = _SKIP.match(payload, pos).end()  # type: ignore[union-attr]
        line += payload.count(b"\n", pos, end)
        pos = end
        if pos >= n:
            return entries
        try:
            point, after = _entry(payload, pos, n, line)
        except _Bad as bad:
            entries.append(LineError(line, bad.reason))
            after = payload.find(b"\n", bad.pos)
            after = n if after < 0 else after + 1
        else:
            entries.append(point)
        line += payload.count(b"\n", pos, after)
        pos = after


def _entry(data: bytes, pos: int, n: int, line: int) -> tuple[Point, int]:
    # Measurement
    end = _MEASUREMENT.match(data, pos).end()  # type: ignore[union-attr]
    if end == pos:
        raise _Bad(bad_start(data[pos]), pos)
    measurement = _text(data, pos, end, _UNESCAPE_MEASUREMENT, "measurement")
    pos = end
    c = data[pos] if pos < n else _LF
    if c != _COMMA and c != _SPACE:
        if c == _LF or c == _CR:
            raise _Bad(NO_FIELDS, pos)
        raise _Bad(f"invalid character {char(c)} in measurement", pos)

    # Tags: ",key=value" until the space before the fields
    tags: dict[str, str] = {}
    while c == _COMMA:
        pos += 1
        c = data[pos] if pos < n else _LF
        if c == _SPACE or c == _LF or c == _CR:
            raise _Bad("expected a tag key after ','", pos)
        end = _NAME.match(data, pos).end()  # type: ignore[union-attr]
        if end == pos:
            raise _Bad(bad_name(c, "tag key"), pos)
        key = _text(data, pos, end, _UNESCAPE_NAME, "tag key")
        pos = end
        c = data[pos] if pos < n else _LF
        if c != _EQUALS:
            raise _Bad(no_equals("tag key", key, c), pos)
        pos += 1
        end = _NAME.match(data, pos).end()  # type: ignore[union-attr]
        if end == pos:
            raise _Bad(f"tag {quote(key)} has an empty value", pos)
        tags[key] = _text(data, pos, end, _UNESCAPE_NAME, "tag value")
        pos = end
        c = data[pos] if pos < n else _LF
        if c != _COMMA and c != _SPACE:
            if c == _LF or c == _CR:
                raise _Bad(NO_FIELDS, pos)
            raise _Bad(f"invalid character {char(c)} after tag {quote(key)}", pos)

    # Fields: "key=value" separated by commas, after one or more spaces
    pos = _SPACES.match(data, pos).end()  # type: ignore[union-attr]
    c = data[pos] if pos < n else _LF
    if c == _LF or c == _CR:
        raise _Bad(NO_FIELDS, pos)
    fields: list[Field] = []
    while True:
        end = _NAME.match(data, pos).end()  # type: ignore[union-attr]
        if end == pos:
            raise _Bad(bad_name(c, "field key"), pos)
        key = _text(data, pos, end, _UNESCAPE_NAME, "field key")
        pos = end
        c = data[pos] if pos < n else _LF
        if c != _EQUALS:
            raise _Bad(no_equals("field key", key, c), pos)
        field, pos = _field(data, pos + 1, n, key)
        fields.append(field)
        c = data[pos] if pos < n else _LF
        if c != _COMMA:
            break
        pos += 1
        c = data[pos] if pos < n else _LF

    # Timestamp, after one or more spaces
    stamp: int | None = None
    if c == _SPACE:
        pos = _SPACES.match(data, pos).end()  # type: ignore[union-attr]
        c = data[pos] if pos < n else _LF
        if c != _LF and c != _CR:
            end = _STAMP.match(data, pos).end()  # type: ignore[union-attr]
            raw = data[pos:end]
            if _INT.fullmatch(raw) is None:
                raise _Bad(f"invalid timestamp {show(raw)}", pos)
            stamp = int(raw)
            if not INT64_MIN <= stamp <= INT64_MAX:
                raise _Bad(f"timestamp {show(raw)} is out of range for int64", pos)
            pos = _SPACES.match(data, end).end()  # type: ignore[union-attr]
            c = data[pos] if pos < n else _LF
            if c != _LF and c != _CR:
                raise _Bad("unexpected text after the timestamp", pos)
    elif c != _LF and c != _CR:
        raise _Bad(f"field {quote(key)}: unexpected {char(c)} after the value", pos)

    # End of line: LF, CR LF, or the end of the payload (a CR there too)
    if c == _CR:
        if pos + 1 < n and data[pos + 1] != _LF:
            raise _Bad(LONE_CR, pos)
        pos = min(pos + 2, n)
    elif pos < n:
        pos += 1
    return (line, measurement, tags, fields, stamp), pos


def _field(data: bytes, pos: int, n: int, key: str) -> tuple[Field, int]:
    # One value, from just after "key=": the field and where it ends
    c = data[pos] if pos < n else _LF
    if c == _QUOTE:
        end = _STRING.match(data, pos + 1).end()  # type: ignore[union-attr]
        if end >= n:
            raise _Bad(f"field {quote(key)}: string has no closing quote", n)
        text = _text(data, pos + 1, end, _UNESCAPE_STRING, "field", key)
        return (key, text, "string"), end + 1
    end = _VALUE.match(data, pos).end()  # type: ignore[union-attr]
    raw = data[pos:end]
    if not raw:
        raise _Bad(f"field {quote(key)} has no value", pos)
    if c in b"tTfF":
        flag = _BOOLS.get(raw)
        if flag is None:
            raise _Bad(f"field {quote(key)}: {show(raw)} is not a boolean", pos)
        return (key, flag, "bool"), end
    if c not in b"-0123456789.":
        raise _Bad(f"field {quote(key)}: value {show(raw)} has no known type", pos)
    last = raw[-1]
    if last == 0x69:  # i
        if _INT.fullmatch(raw, 0, len(raw) - 1) is None:
            raise _Bad(not_a(key, raw, "int64"), pos)
        number = int(raw[:-1])
        if not INT64_MIN <= number <= INT64_MAX:
            raise _Bad(out_of_range(key, raw, "int64"), pos)
        return (key, number, "int"), end
    if last == 0x75:  # u
        if _UINT.fullmatch(raw, 0, len(raw) - 1) is None:
            raise _Bad(not_a(key, raw, "uint64"), pos)
        number = int(raw[:-1])
        if number > UINT64_MAX:
            raise _Bad(out_of_range(key, raw, "uint64"), pos)
        return (key, number, "uint"), end
    if _FLOAT.fullmatch(raw) is None:
        raise _Bad(not_a(key, raw, "float"), pos)
    value = float(raw)
    if value == _INF or value == -_INF:
        raise _Bad(out_of_range(key, raw, "float64"), pos)
    return (key, value, "float"), end


def _text(
    data: bytes,
    start: int,
    end: int,
    unescape: re.Pattern[bytes],
    what: str,
    key: str | None = None,
) -> str:
    raw = data[start:end]
    if b"\\" in raw:
        raw = unescape.sub(rb"\1", raw)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        label = what if key is None else f"{what} {quote(key)}"
        raise _Bad(f"invalid UTF-8 in {label}", end) from None


# Reasons, shared with the compiled twin so the two say exactly the same

NO_FIELDS = "line has no fields"
LONE_CR = "carriage return without a line feed"


def char(c: int) -> str:
    """A byte as a reason shows it: ``'\\t'``, ``','``, ``byte 0xff``."""
    return repr(chr(c)) if c < 0x80 else f"byte 0x{c:02x}"


def quote(name: str) -> str:
    """A name as a reason quotes it, shortened to 40 characters."""
    return repr(name if len(name) <= 40 else name[:40] + "...")


def show(raw: bytes) -> str:
    """A token as a reason quotes it, shortened to 40 characters."""
    text = raw[:40].decode("utf-8", "backslashreplace")
    return repr(text + "..." if len(raw) > 40 else text)


def bad_start(c: int) -> str:
    return f"invalid character {char(c)} at start of measurement"


def bad_name(c: int, what: str) -> str:
    if c == _EQUALS or c == _COMMA or c == _SPACE:
        return f"empty {what}"
    if c == _LF or c == _CR:
        return f"expected a {what}, found end of line"
    return f"invalid character {char(c)} in {what}"


def no_equals(what: str, key: str, c: int) -> str:
    found = "end of line" if c == _LF or c == _CR else char(c)
    return f"expected '=' after {what} {quote(key)}, found {found}"


def not_a(key: str, raw: bytes, kind: str) -> str:
    return f"field {quote(key)}: {show(raw)} is not a valid {kind}"


def out_of_range(key: str, raw: bytes, kind: str) -> str:
    return f"field {quote(key)}: {show(raw)} is out of range for {kind}"
