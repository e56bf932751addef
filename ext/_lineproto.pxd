# Declarations of the compiled twin of ingestd/codecs/_lineproto.py; see
# _lineproto.pyx.

cdef extern from *:
    """
    #ifndef INGESTD_DEBUG
    #define INGESTD_DEBUG 0
    #endif
    """
    # setup.py defines it to 1 under INGESTD_DEBUG_BUILD=1; the C compiler
    # drops every `if INGESTD_DEBUG:` block of a release build.
    const bint INGESTD_DEBUG


cdef enum:
    # Bits of _CLASS[byte]: which tokens a byte ends, which escapes it ends.
    STOP_MEASUREMENT = 1   # , space, control characters
    STOP_NAME = 2          # , = space, control characters
    STOP_VALUE = 4         # , space CR LF
    STOP_STAMP = 8         # space CR LF
    ESCAPE_MEASUREMENT = 16  # \, and \space
    ESCAPE_NAME = 32         # \, \= and \space
    ESCAPE_STRING = 64       # \" and \\


cdef enum:
    # Bytes the grammar names
    LF = 0x0A
    CR = 0x0D
    SPACE = 0x20
    QUOTE = 0x22
    HASH = 0x23
    COMMA = 0x2C
    EQUALS = 0x3D
    BACKSLASH = 0x5C


cdef enum:
    # What a token is, for the reason when it is not UTF-8
    TEXT_MEASUREMENT = 0
    TEXT_TAG_KEY = 1
    TEXT_TAG_VALUE = 2
    TEXT_FIELD_KEY = 3
    TEXT_STRING = 4


cdef tuple _entry(const unsigned char* buf, Py_ssize_t n, Py_ssize_t pos,
                  Py_ssize_t line, Py_ssize_t* end)
cdef tuple _field(const unsigned char* buf, Py_ssize_t n, Py_ssize_t* pos,
                  str key)
cdef int _digits(const unsigned char* buf, Py_ssize_t start, Py_ssize_t end,
                 bint minus, bint* negative,
                 unsigned long long* magnitude) noexcept nogil
cdef object _integer(bint negative, unsigned long long magnitude)
cdef int _boolean(const unsigned char* token, Py_ssize_t size) noexcept nogil
cdef bint _is_float(const unsigned char* buf, Py_ssize_t start,
                    Py_ssize_t end) noexcept nogil
cdef Py_ssize_t _scan(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t n,
                      unsigned char stop, unsigned char escapes,
                      bint* escaped) noexcept nogil
cdef str _text(const unsigned char* buf, Py_ssize_t start, Py_ssize_t end,
               bint escaped, unsigned char escapes, int what, str key)
cdef Py_ssize_t _lines(const unsigned char* buf, Py_ssize_t start,
                       Py_ssize_t end) noexcept nogil
