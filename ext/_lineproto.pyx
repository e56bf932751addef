"""Line protocol text to points, compiled: the twin of ``_lineproto.py``.

``ingestd/codecs/_lineproto.py`` is the reference and this module must
behave exactly as it does: the same entries in the same order, the same
line numbers, values and reasons. Change both together;
``tests/test_lineproto.py`` runs the two side by side on the fixtures and on
generated line protocol.

Built as ``ingestd.codecs._lineproto_ext`` by ``setup.py``;
``ingestd.codecs.influx`` imports it unless ``INGESTD_NO_EXTENSIONS=1``.
What makes it faster: one pass over the bytes with a 256-entry class table
instead of a regular expression per token, text decoded straight from the
payload (a copy only for a token with escapes), integers accumulated in C
and floats converted in place by the routine ``float()`` itself uses, so
the two twins round alike. Reasons for bad lines come from the pure module's
helpers, so both say exactly the same.
"""

from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.long cimport PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.ref cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcmp

from ingestd.codecs._lineproto import (
    LONE_CR,
    NO_FIELDS,
    LineError,
    _Bad,
    bad_name,
    bad_start,
    char,
    no_equals,
    not_a,
    out_of_range,
    quote,
    show,
)

cdef extern from "Python.h":
    # float()'s own conversion; NULL: overflow gives +-HUGE_VAL, no error
    double PyOS_string_to_double(const char* s, char** endptr,
                                 PyObject* overflow_exception) except? -1.0
    const double Py_HUGE_VAL

DEBUG = INGESTD_DEBUG  # True in a build made with INGESTD_DEBUG_BUILD=1

cdef unsigned long long _INT64_MAX = 9223372036854775807ULL
cdef unsigned long long _UINT64_MAX = 18446744073709551615ULL
cdef str _FLOAT = "float"
cdef str _INT = "int"
cdef str _UINT = "uint"
cdef str _BOOL = "bool"
cdef str _STRING = "string"
cdef tuple _WHAT = ("measurement", "tag key", "tag value", "field key")

cdef unsigned char _CLASS[256]


cdef void _classes() noexcept:
    cdef int c

    for c in range(256):
        _CLASS[c] = 0
    for c in range(32):
        _CLASS[c] = STOP_MEASUREMENT | STOP_NAME
    _CLASS[0x7F] = STOP_MEASUREMENT | STOP_NAME
    _CLASS[LF] |= STOP_VALUE | STOP_STAMP
    _CLASS[CR] |= STOP_VALUE | STOP_STAMP
    _CLASS[COMMA] = (STOP_MEASUREMENT | STOP_NAME | STOP_VALUE
                     | ESCAPE_MEASUREMENT | ESCAPE_NAME)
    _CLASS[SPACE] = (STOP_MEASUREMENT | STOP_NAME | STOP_VALUE | STOP_STAMP
                     | ESCAPE_MEASUREMENT | ESCAPE_NAME)
    _CLASS[EQUALS] = STOP_NAME | ESCAPE_NAME
    _CLASS[QUOTE] = ESCAPE_STRING
    _CLASS[BACKSLASH] = ESCAPE_STRING


_classes()


def parse(bytes payload not None):
    """Every line of ``payload``: a point or a ``LineError``, in order.

    >>> parse(b"cpu,host=a load=0.5,n=3i 1700000000000000000")
    [(1, 'cpu', {'host': 'a'}, [('load', 0.5, 'float'), ('n', 3, 'int')], \
1700000000000000000)]
    """
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(
        payload
    )
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t line = 1
    cdef Py_ssize_t after = 0
    cdef Py_ssize_t stop
    cdef unsigned char c
    cdef const unsigned char* hit
    cdef list entries = []

    while True:
        # Blank lines, leading spaces, comments
        while pos < n:
            c = buf[pos]
            if c == SPACE:
                pos += 1
            elif c == LF:
                pos += 1
                line += 1
            elif c == CR and pos + 1 < n and buf[pos + 1] == LF:
                pos += 2
                line += 1
            elif c == HASH:
                hit = <const unsigned char*>memchr(buf + pos, LF, n - pos)
                if hit == NULL:
                    pos = n
                else:
                    pos = hit - buf + 1
                    line += 1
            else:
                break
        if pos >= n:
            return entries

        try:
            entries.append(_entry(buf, n, pos, line, &after))
        except _Bad as bad:
            # The rest of the line goes with it: resume after its newline
            entries.append(LineError(line, bad.reason))
            stop = bad.pos
            hit = NULL
            if stop < n:
                hit = <const unsigned char*>memchr(buf + stop, LF, n - stop)
            after = n if hit == NULL else hit - buf + 1
        if INGESTD_DEBUG:
            assert pos < after <= n, (pos, after, n)
        line += _lines(buf, pos, after)
        pos = after


cdef tuple _entry(const unsigned char* buf, Py_ssize_t n, Py_ssize_t pos,
                  Py_ssize_t line, Py_ssize_t* end_of_line):
    # One point from its first byte; end_of_line: after its line ending.
    cdef Py_ssize_t end
    cdef Py_ssize_t start
    cdef bint escaped = False
    cdef bint negative = False
    cdef unsigned long long magnitude = 0
    cdef int status
    cdef unsigned char c
    cdef str measurement
    cdef str key = None
    cdef dict tags = {}
    cdef list fields = []
    cdef object stamp = None

    # Measurement
    end = _scan(buf, pos, n, STOP_MEASUREMENT, ESCAPE_MEASUREMENT, &escaped)
    if end == pos:
        raise _Bad(bad_start(buf[pos]), pos)
    measurement = _text(buf, pos, end, escaped, ESCAPE_MEASUREMENT,
                        TEXT_MEASUREMENT, None)
    pos = end
    c = buf[pos] if pos < n else LF
    if c != COMMA and c != SPACE:
        if c == LF or c == CR:
            raise _Bad(NO_FIELDS, pos)
        raise _Bad(f"invalid character {char(c)} in measurement", pos)

    # Tags: ",key=value" until the space before the fields
    while c == COMMA:
        pos += 1
        c = buf[pos] if pos < n else LF
        if c == SPACE or c == LF or c == CR:
            raise _Bad("expected a tag key after ','", pos)
        end = _scan(buf, pos, n, STOP_NAME, ESCAPE_NAME, &escaped)
        if end == pos:
            raise _Bad(bad_name(c, "tag key"), pos)
        key = _text(buf, pos, end, escaped, ESCAPE_NAME, TEXT_TAG_KEY, None)
        pos = end
        c = buf[pos] if pos < n else LF
        if c != EQUALS:
            raise _Bad(no_equals("tag key", key, c), pos)
        pos += 1
        end = _scan(buf, pos, n, STOP_NAME, ESCAPE_NAME, &escaped)
        if end == pos:
            raise _Bad(f"tag {quote(key)} has an empty value", pos)
        tags[key] = _text(buf, pos, end, escaped, ESCAPE_NAME, TEXT_TAG_VALUE,
                          None)
        pos = end
        c = buf[pos] if pos < n else LF
        if c != COMMA and c != SPACE:
            if c == LF or c == CR:
                raise _Bad(NO_FIELDS, pos)
            raise _Bad(
                f"invalid character {char(c)} after tag {quote(key)}", pos
            )

    # Fields: "key=value" separated by commas, after one or more spaces
    while pos < n and buf[pos] == SPACE:
        pos += 1
    c = buf[pos] if pos < n else LF
    if c == LF or c == CR:
        raise _Bad(NO_FIELDS, pos)
    while True:
        end = _scan(buf, pos, n, STOP_NAME, ESCAPE_NAME, &escaped)
        if end == pos:
            raise _Bad(bad_name(c, "field key"), pos)
        key = _text(buf, pos, end, escaped, ESCAPE_NAME, TEXT_FIELD_KEY, None)
        pos = end
        c = buf[pos] if pos < n else LF
        if c != EQUALS:
            raise _Bad(no_equals("field key", key, c), pos)
        pos += 1
        fields.append(_field(buf, n, &pos, key))
        c = buf[pos] if pos < n else LF
        if c != COMMA:
            break
        pos += 1
        c = buf[pos] if pos < n else LF

    # Timestamp, after one or more spaces
    if c == SPACE:
        while pos < n and buf[pos] == SPACE:
            pos += 1
        c = buf[pos] if pos < n else LF
        if c != LF and c != CR:
            start = pos
            end = pos
            while end < n and not (_CLASS[buf[end]] & STOP_STAMP):
                end += 1
            status = _digits(buf, start, end, True, &negative, &magnitude)
            if status == 1:
                raw = PyBytes_FromStringAndSize(<char*>buf + start, end - start)
                raise _Bad(f"invalid timestamp {show(raw)}", pos)
            if status == 2:
                raw = PyBytes_FromStringAndSize(<char*>buf + start, end - start)
                raise _Bad(
                    f"timestamp {show(raw)} is out of range for int64", pos
                )
            stamp = _integer(negative, magnitude)
            pos = end
            while pos < n and buf[pos] == SPACE:
                pos += 1
            c = buf[pos] if pos < n else LF
            if c != LF and c != CR:
                raise _Bad("unexpected text after the timestamp", pos)
    elif c != LF and c != CR:
        raise _Bad(
            f"field {quote(key)}: unexpected {char(c)} after the value", pos
        )

    # End of line: LF, CR LF, or the end of the payload (a CR there too)
    if c == CR:
        if pos + 1 < n and buf[pos + 1] != LF:
            raise _Bad(LONE_CR, pos)
        pos = pos + 2 if pos + 2 < n else n
    elif pos < n:
        pos += 1
    end_of_line[0] = pos
    return (line, measurement, tags, fields, stamp)


cdef tuple _field(const unsigned char* buf, Py_ssize_t n, Py_ssize_t* at,
                  str key):
    # One value, from just after "key=": the field; at: where it ends.
    cdef Py_ssize_t pos = at[0]
    cdef Py_ssize_t end
    cdef Py_ssize_t size
    cdef unsigned char c = buf[pos] if pos < n else LF
    cdef unsigned char b
    cdef bint escaped = False
    cdef bint negative = False
    cdef unsigned long long magnitude = 0
    cdef int status
    cdef int flag
    cdef double number
    cdef char* stop = NULL
    cdef str text

    # A string: to the first quote that no backslash escapes
    if c == QUOTE:
        end = pos + 1
        while end < n:
            b = buf[end]
            if b == QUOTE:
                break
            if b == BACKSLASH and end + 1 < n and (
                _CLASS[buf[end + 1]] & ESCAPE_STRING
            ):
                escaped = True
                end += 2
            else:
                end += 1
        if end >= n:
            raise _Bad(f"field {quote(key)}: string has no closing quote", n)
        text = _text(buf, pos + 1, end, escaped, ESCAPE_STRING, TEXT_STRING,
                     key)
        at[0] = end + 1
        return (key, text, _STRING)

    # Anything else is one token up to , space CR LF
    end = pos
    while end < n and not (_CLASS[buf[end]] & STOP_VALUE):
        end += 1
    at[0] = end
    size = end - pos
    if size == 0:
        raise _Bad(f"field {quote(key)} has no value", pos)

    if c == b"t" or c == b"T" or c == b"f" or c == b"F":
        flag = _boolean(buf + pos, size)
        if flag < 0:
            raw = PyBytes_FromStringAndSize(<char*>buf + pos, size)
            raise _Bad(f"field {quote(key)}: {show(raw)} is not a boolean", pos)
        return (key, flag == 1, _BOOL)
    if not (c == b"-" or c == b"." or b"0" <= c <= b"9"):
        raw = PyBytes_FromStringAndSize(<char*>buf + pos, size)
        raise _Bad(
            f"field {quote(key)}: value {show(raw)} has no known type", pos
        )

    b = buf[end - 1]
    if b == b"i" or b == b"u":
        status = _digits(buf, pos, end - 1, b == b"i", &negative, &magnitude)
        if status != 0:
            raw = PyBytes_FromStringAndSize(<char*>buf + pos, size)
            kind = "int64" if b == b"i" else "uint64"
            if status == 1:
                raise _Bad(not_a(key, raw, kind), pos)
            raise _Bad(out_of_range(key, raw, kind), pos)
        if b == b"i":
            return (key, _integer(negative, magnitude), _INT)
        return (key, PyLong_FromUnsignedLongLong(magnitude), _UINT)

    if not _is_float(buf, pos, end):
        raw = PyBytes_FromStringAndSize(<char*>buf + pos, size)
        raise _Bad(not_a(key, raw, "float"), pos)
    # The token ends at , space CR LF or the bytes object's NUL: the
    # conversion stops there.
    number = PyOS_string_to_double(<const char*>buf + pos, &stop, NULL)
    if INGESTD_DEBUG:
        assert stop == <char*>buf + end, (pos, end)
    if number == Py_HUGE_VAL or number == -Py_HUGE_VAL:
        raw = PyBytes_FromStringAndSize(<char*>buf + pos, size)
        raise _Bad(out_of_range(key, raw, "float64"), pos)
    return (key, number, _FLOAT)


cdef int _digits(const unsigned char* buf, Py_ssize_t start, Py_ssize_t end,
                 bint minus, bint* negative,
                 unsigned long long* magnitude) noexcept nogil:
    # [-]digits as sign and magnitude: 0 fits int64 (minus) or uint64,
    # 1 is not an integer, 2 is out of range. Every byte is checked before
    # a range error is reported, as the pure twin validates, then converts.
    cdef Py_ssize_t i = start
    cdef unsigned long long value = 0
    cdef unsigned long long limit = _UINT64_MAX
    cdef unsigned int digit
    cdef bint over = False

    negative[0] = False
    if minus:
        limit = _INT64_MAX
        if i < end and buf[i] == b"-":
            negative[0] = True
            limit = _INT64_MAX + 1
            i += 1
    if i >= end:
        return 1
    while i < end:
        digit = buf[i] - 0x30
        if digit > 9:
            return 1
        if not over:
            if value > (limit - digit) // 10:
                over = True
            else:
                value = value * 10 + digit
        i += 1
    magnitude[0] = value
    return 2 if over else 0


cdef object _integer(bint negative, unsigned long long magnitude):
    if not negative:
        return PyLong_FromUnsignedLongLong(magnitude)
    if magnitude == 0:
        return 0
    # -(2**63) has no positive int64: negate magnitude - 1, then subtract
    return PyLong_FromLongLong(-<long long>(magnitude - 1) - 1)


cdef int _boolean(const unsigned char* token, Py_ssize_t size) noexcept nogil:
    # 1 true, 0 false, -1 neither; the spellings InfluxDB accepts
    cdef const char* text = <const char*>token

    if size == 1:
        if token[0] == b"t" or token[0] == b"T":
            return 1
        if token[0] == b"f" or token[0] == b"F":
            return 0
    elif size == 4:
        if (memcmp(text, b"true", 4) == 0 or memcmp(text, b"True", 4) == 0
                or memcmp(text, b"TRUE", 4) == 0):
            return 1
    elif size == 5:
        if (memcmp(text, b"false", 5) == 0 or memcmp(text, b"False", 5) == 0
                or memcmp(text, b"FALSE", 5) == 0):
            return 0
    return -1


cdef bint _is_float(const unsigned char* buf, Py_ssize_t start,
                    Py_ssize_t end) noexcept nogil:
    # -?(digits[.digits*] | .digits)([eE][-+]?digits)? and nothing else:
    # no NaN, Inf, hex or underscores, which the conversion would take.
    cdef Py_ssize_t i = start
    cdef Py_ssize_t mark

    if i < end and buf[i] == b"-":
        i += 1
    mark = i
    while i < end and b"0" <= buf[i] <= b"9":
        i += 1
    if i < end and buf[i] == b".":
        i += 1
        if i - mark == 1 and not (i < end and b"0" <= buf[i] <= b"9"):
            return False  # a dot alone
        while i < end and b"0" <= buf[i] <= b"9":
            i += 1
    elif i == mark:
        return False
    if i < end and (buf[i] == b"e" or buf[i] == b"E"):
        i += 1
        if i < end and (buf[i] == b"-" or buf[i] == b"+"):
            i += 1
        mark = i
        while i < end and b"0" <= buf[i] <= b"9":
            i += 1
        if i == mark:
            return False
    return i == end


cdef Py_ssize_t _scan(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t n,
                      unsigned char stop, unsigned char escapes,
                      bint* escaped) noexcept nogil:
    # The end of a name from pos. A backslash before one of `escapes` takes
    # that byte in; before anything else it is itself a byte of the name
    # (no stop class holds a backslash).
    cdef unsigned char c

    escaped[0] = False
    while pos < n:
        c = buf[pos]
        if c == BACKSLASH:
            if pos + 1 < n and (_CLASS[buf[pos + 1]] & escapes):
                escaped[0] = True
                pos += 2
            else:
                pos += 1
        elif _CLASS[c] & stop:
            break
        else:
            pos += 1
    return pos


cdef str _text(const unsigned char* buf, Py_ssize_t start, Py_ssize_t end,
               bint escaped, unsigned char escapes, int what, str key):
    # buf[start:end] as text, escapes resolved; UTF-8 or the line is bad.
    cdef const char* src = <const char*>buf + start
    cdef Py_ssize_t size = end - start
    cdef Py_ssize_t i = start
    cdef Py_ssize_t j = 0
    cdef bytes copy
    cdef unsigned char* out

    if escaped:
        copy = PyBytes_FromStringAndSize(NULL, size)
        out = <unsigned char*>PyBytes_AS_STRING(copy)
        while i < end:
            if buf[i] == BACKSLASH and i + 1 < end and (
                _CLASS[buf[i + 1]] & escapes
            ):
                out[j] = buf[i + 1]
                i += 2
            else:
                out[j] = buf[i]
                i += 1
            j += 1
        src = <const char*>out
        size = j
    try:
        return PyUnicode_DecodeUTF8(<char*>src, size, NULL)
    except UnicodeDecodeError:
        label = f"field {quote(key)}" if what == TEXT_STRING else _WHAT[what]
        raise _Bad(f"invalid UTF-8 in {label}", end) from None


cdef Py_ssize_t _lines(const unsigned char* buf, Py_ssize_t start,
                       Py_ssize_t end) noexcept nogil:
    # Newlines in buf[start:end]: the line ending, and any inside strings
    cdef Py_ssize_t count = 0
    cdef const unsigned char* hit

    while start < end:
        hit = <const unsigned char*>memchr(buf + start, LF, end - start)
        if hit == NULL:
            break
        count += 1
        start = hit - buf + 1
    return count
