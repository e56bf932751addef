"""Leaves of a JSON document to readings, compiled: the twin of ``_walk.py``.

``ingestd/codecs/_walk.py`` is the reference and this module must behave
exactly as it does: the same readings in the same order, the same reject
paths and reasons, the same exceptions. Change both together;
``tests/test_walk.py`` runs the two side by side on generated documents.

Built as ``ingestd.codecs._walk_ext`` by ``setup.py``; ``ingestd.codecs.json``
imports it unless ``INGESTD_NO_EXTENSIONS=1``. What makes it faster: C
dispatch on exact types, dict iteration without an items view, names joined
in one allocation, and no Python frame per leaf. Timestamps (``clock``),
readings (a msgspec struct) and array checks (``array_problem``) stay calls
into the same code the pure twin uses.
"""

from ingestd.clock import parse
from ingestd.codecs._walk import array_problem
from ingestd.codecs.base import MAX_NAME
from ingestd.errors import DecodeError
from ingestd.model import Reading

DEBUG = INGESTD_DEBUG  # True in a build made with INGESTD_DEBUG_BUILD=1

cdef object _Reading = Reading
cdef Py_ssize_t _MAX_NAME = MAX_NAME
cdef frozenset _NOTHING = frozenset()
cdef str _TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"
cdef str _NUL_TEXT = "text contains a NUL character"
cdef str _BAD_NAME = "metric name empty or with a NUL character"


cdef class Walker:
    """Flattens nested objects into dotted metric names.

    A leaf is a number, string, boolean or array (stored as JSON). An object
    holding ``value_key`` next to one of ``time_keys`` is a timed leaf: its
    value is taken at its own time (``{"v": 4234, "ts": 1584532083267}``).
    """

    def __init__(
        self,
        out,
        received,
        str transport,
        str format,
        str value_key,
        tuple time_keys,
        str time_unit,
        frozenset ignore,
        dict units,
        window,
    ):
        self.base = "$"  # path of the document being walked, for rejects
        self.out = out
        self.received = received
        self.transport = transport
        self.format = format
        self.value_key = value_key
        self.time_keys = time_keys
        self.time_unit = time_unit
        self.ignore = ignore
        self.units = units
        self.window = window

    cpdef leaves(self, object node, object prefix, object device, object ts,
                 object skip, int depth):
        """Emit one reading per leaf of ``node``, names prefixed by ``prefix``."""
        cdef object key
        cdef object value

        # A JSON object is an exact dict: PyDict_Next, no items view
        if type(node) is dict:
            for key, value in (<dict>node).items():
                self._entry(key, value, prefix, device, ts, skip, depth)
        else:
            for key, value in node.items():
                self._entry(key, value, prefix, device, ts, skip, depth)
        return None

    cpdef leaf(self, object name, object value, object device, object ts,
               int depth):
        """Emit ``value`` as metric ``name``, or descend if it is an object."""
        cdef type kind
        cdef object unit

        if self.ignore and name in self.ignore:
            return None

        # Exact types, as in the pure twin: a bool is not an int, a dict
        # subclass is an unsupported value.
        kind = type(value)
        if kind is float or kind is bool:
            pass
        elif kind is int:
            value = float(value)
        elif kind is str:
            if "\x00" in <str>value:
                self._reject(self.base + "." + name, _NUL_TEXT)
                return None
        elif kind is dict:
            if depth >= MAX_DEPTH:
                self._reject(self.base + "." + name, _TOO_DEEP)
                return None
            self._object(<dict>value, name, device, ts, depth + 1)
            return None
        elif kind is list:
            problem = array_problem(value)
            if problem is not None:
                self._reject(self.base + "." + name, problem)
                return None
        elif value is None:
            self._reject(self.base + "." + name, "null is not a value")
            return None
        else:
            self._reject(
                self.base + "." + name, f"unsupported value type {kind.__name__}"
            )
            return None

        if len(name) > _MAX_NAME:
            self._reject(self.base + "." + name[:64] + "...", "metric name too long")
            return None
        if INGESTD_DEBUG:
            assert type(value) in (float, bool, str, list), type(value)
            assert type(self.out.readings) is list
        unit = self.units.get(name) if self.units else None
        self.out.readings.append(
            _Reading(
                device,
                name,
                ts,
                value,
                None,
                unit,
                self.received,
                self.transport,
                self.format,
            )
        )
        return None

    cdef int _entry(self, object key, object value, object prefix,
                    object device, object ts, object skip,
                    int depth) except -1:
        # One member of an object: skipped, rejected, or a leaf named
        # prefix.key (key alone at the root).
        cdef object name

        if key in skip:
            return 0
        if type(key) is str and type(prefix) is str:
            # f-string of two exact str: one allocation, where + makes two
            name = f"{<str>prefix}.{<str>key}" if <str>prefix else key
        else:
            # Keys from decoders other than JSON (msgpack ints, ...): the
            # pure twin's operators, so its TypeErrors too.
            name = prefix + "." + key if prefix else key
        if not key or "\x00" in key:
            self._reject(
                self.base + "." + (name.replace("\x00", "\\0") or '""'), _BAD_NAME
            )
            return 0
        self.leaf(name, value, device, ts, depth)
        return 0

    cdef int _object(self, dict node, object name, object device, object ts,
                     int depth) except -1:
        cdef object time_key
        cdef object path

        if INGESTD_DEBUG:
            # leaf() refuses a dict at MAX_DEPTH before descending into it
            assert depth <= MAX_DEPTH, depth

        # A timed leaf carries its own time next to its value.
        if self.value_key in node:
            for time_key in self.time_keys:
                if time_key in node:
                    path = self.base + "." + name + "." + time_key
                    try:
                        ts = parse(node[time_key], self.time_unit, path)
                        ts = self.window.check(ts, self.received, path)
                    except DecodeError as exc:
                        self._reject(exc.path, exc.reason)
                        return 0
                    self.leaf(name, node[self.value_key], device, ts, depth)
                    if len(node) > 2:  # siblings: readings at the same time
                        self.leaves(node, name, device, ts,
                                    frozenset((self.value_key, time_key)), depth)
                    return 0
        self.leaves(node, name, device, ts, _NOTHING, depth)
        return 0

    cdef int _reject(self, object path, str reason) except -1:
        self.out.reject(path, reason)
        return 0
