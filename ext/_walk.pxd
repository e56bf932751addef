# Declarations of the compiled twin of ingestd/codecs/_walk.py; see _walk.pyx.

cdef extern from *:
    """
    #ifndef INGESTD_DEBUG
    #define INGESTD_DEBUG 0
    #endif
    """
    # setup.py defines it to 1 under INGESTD_DEBUG_BUILD=1; the C compiler
    # drops every `if INGESTD_DEBUG:` block of a release build.
    const bint INGESTD_DEBUG


cpdef enum:
    MAX_DEPTH = 32  # nesting below a document's root, in objects


cdef class Walker:
    # Typed as _walk.py annotates them: a value of another type is a
    # TypeError here at assignment, where the pure class would fail later
    # or not at all.
    cdef public str base
    cdef public object out
    cdef public object received
    cdef public str transport
    cdef public str format
    cdef public str value_key
    cdef public tuple time_keys
    cdef public str time_unit
    cdef public frozenset ignore
    cdef public dict units
    cdef public object window

    cpdef leaves(self, object node, object prefix, object device, object ts,
                 object skip, int depth)
    cpdef leaf(self, object name, object value, object device, object ts,
               int depth)
    cdef int _entry(self, object key, object value, object prefix,
                    object device, object ts, object skip,
                    int depth) except -1
    cdef int _object(self, dict node, object name, object device, object ts,
                     int depth) except -1
    cdef int _reject(self, object path, str reason) except -1
