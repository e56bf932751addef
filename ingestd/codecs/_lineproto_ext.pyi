"""Stub of the compiled twin of ``_lineproto`` (``ext/_lineproto.pyx``).

Same interface as ``ingestd.codecs._lineproto.parse``; ``payload`` must be
exactly ``bytes`` (not ``None``, ``bytearray`` or a memoryview).
"""

from ._lineproto import LineError, Point

DEBUG: bool

def parse(payload: bytes) -> list[Point | LineError]: ...
