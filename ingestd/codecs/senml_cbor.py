"""SenML (RFC 8428) in its CBOR form (sec. 6), LwM2M's senml+cbor too.

The pack is the JSON form's array of records with integer map labels
(``bn`` -2, ``bt`` -3, ``bu`` -4, ``bv`` -5, ``bs`` -6, ``bver`` -1, ``n`` 0,
``u`` 1, ``v`` 2, ``vs`` 3, ``vb`` 4, ``s`` 5, ``t`` 6, ``ut`` 7, ``vd`` 8).
Labels are mapped to the JSON names and the pack resolves through
``senml.resolve``, so both forms give the same readings for the same pack
and share ``SenmlOptions`` (``metric = "lwm2m"`` and ``units`` for LwM2M).
Text keys are kept as they are: RFC 8428 reserves them for extensions, and
a producer that writes the JSON names into CBOR is read the same way (a
field given both ways is a reject). Unknown integer labels are ignored, as
unknown fields are. ``vd`` must be a byte string, carried as raw bytes;
half, single and double floats are all numbers; key order in a record does
not matter (a base name after the value still applies to it). Rejects name
fields by their JSON labels (``$[3].v``).

Before cbor2 builds anything, ``scan`` walks the item headers: declared
lengths must fit in the rest of the payload, containers nest at most
``MAX_DEPTH`` deep and nothing may follow the pack. Tags are refused (only
the self-described marker 55799 may open the payload): SenML uses none,
and cbor2 would turn them into datetimes, Decimals, sets, regular
expressions, bignums or shared references that can form cycles. Simple
values other than false, true and null are refused too. Malformed CBOR is
a ``DecodeError`` at the byte offset of the item that broke; text that is
not UTF-8 is found by cbor2, then located by a second scan. The scan costs
about a quarter of a decode (14 µs of 60 for Leshan's 16-record pack).
NaN and infinities are rejected where they would become a value or a
time. LwM2M's object-link value ``vlo`` is not read.
"""

from __future__ import annotations

from typing import Any

import cbor2

from .. import clock
from ..errors import DecodeError
from ..model import Origin
from .base import Decoded
from .senml import SenmlOptions, UnitTable, binary_record, resolve

# RFC 8428 sec. 6, table 4: conclusive, extensions use text labels
CBOR_LABELS = {
    -1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
    0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}  # fmt: skip

MAX_DEPTH = 16  # containers inside containers; a pack needs two
SELF_DESCRIBED = 55799  # RFC 8949 sec. 3.4.6: marks CBOR, means nothing
_MARKER = b"\xd9\xd9\xf7"  # that tag, as it opens a payload

# What the scanner still expects in an open container, when not a count
_ARRAY, _MAP_KEY, _MAP_VALUE, _BYTES, _TEXT = -1, -2, -3, -4, -5
_CHUNK = {_BYTES: 2, _TEXT: 3}  # the major type of their chunks


class SenmlCborCodec:
    """SenML CBOR packs, configured for one route."""

    name = "senml_cbor"

    def __init__(self, options: SenmlOptions, window: clock.Window) -> None:
        self.options = options
        self.window = window
        self._units = UnitTable(options.units) if options.units else None

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        scan(payload)
        body = payload
        if body.startswith(_MARKER):
            body = body[len(_MARKER) :]  # cbor2 would build tuples under it
        try:
            pack = cbor2.loads(body)
        except (cbor2.CBORError, ValueError, TypeError, ArithmeticError) as exc:
            scan(payload, text=True)  # where, if it is bad text
            raise DecodeError(f"invalid CBOR: {str(exc)[:80]}", "$") from None
        if type(pack) is not list:
            raise DecodeError("a SenML pack is an array of records", "$")
        metric = self.options.metric
        resolve(
            pack,
            origin,
            out,
            self.window,
            metric,
            self.name,
            units=self._units,
            relabel=_relabel,
        )
        if not out.readings and not out.rejects:
            raise DecodeError("no records with a value in pack", "$")


def _relabel(record: dict[Any, Any], path: str) -> dict[str, Any]:
    fields = binary_record(record, path, CBOR_LABELS)
    if "vd" in fields and type(fields["vd"]) is not bytes:
        raise DecodeError("vd must be a CBOR byte string", f"{path}.vd")
    return fields


def scan(data: bytes, text: bool = False) -> None:
    """Check that ``data`` is one well-formed CBOR item fit for SenML.

    Raises ``DecodeError`` with the byte offset of the first item that is
    malformed, declares more than the payload holds, nests too deep, or is
    a tag or simple value that SenML does not use; with ``text``, also of
    the first text string that is not UTF-8 (cbor2 checks that anyway, so
    the decoder asks only once cbor2 has failed).
    """
    end = len(data)
    pos = 0
    todo = [1]  # per open container: items still due, or an _ARRAY.. marker
    while todo:
        top = todo[-1]
        if top == 0:
            todo.pop()
            continue
        if pos >= end:
            raise DecodeError("CBOR ends inside an item", f"byte {pos}")
        start = pos
        head = data[pos]
        pos += 1
        info = head & 0x1F
        if top > 0 and head < 0x78 and info < 24 and (head < 0x40 or info <= end - pos):
            # Fast path, most of a pack: a small integer or a short string
            if head >= 0x40:
                pos += info
                if text and head >= 0x60:
                    _utf8(data, start + 1, pos, start)
            todo[-1] = top - 1
            continue
        major = head >> 5

        # A break closes an indefinite-length container or string
        if head == 0xFF:
            if top == _MAP_VALUE:
                raise DecodeError("map ends between a key and its value", _at(start))
            if top not in (_ARRAY, _MAP_KEY, _BYTES, _TEXT):
                raise DecodeError("break outside an indefinite-length item", _at(start))
            todo.pop()
            continue
        if top in (_BYTES, _TEXT) and (major != _CHUNK[top] or info == 31):
            # sec. 3.2.3: chunks are definite strings of the same type
            raise DecodeError("bad chunk in an indefinite-length string", _at(start))

        # The argument: a count, a length, a tag number or float bits
        if info < 24:
            arg = info
        elif info < 28:
            size = 1 << (info - 24)
            if pos + size > end:
                raise DecodeError("CBOR ends inside an item", _at(start))
            arg = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        elif info == 31 and major in (2, 3, 4, 5):
            arg = -1
        else:
            raise DecodeError(f"malformed CBOR head 0x{head:02x}", _at(start))

        if major == 6:
            # the tagged item follows and fills this slot
            if arg != SELF_DESCRIBED or start != 0:
                raise DecodeError(f"CBOR tag {arg} not accepted", _at(start))
            continue
        if major == 7 and (info < 20 or info in (23, 24)):
            # false, true, null pass; undefined and other simple values do not
            raise DecodeError(f"CBOR simple value {arg} not accepted", _at(start))

        # This item fills a slot of its container
        if top > 0:
            todo[-1] = top - 1
        elif top == _MAP_KEY:
            todo[-1] = _MAP_VALUE
        elif top == _MAP_VALUE:
            todo[-1] = _MAP_KEY

        if major in (2, 3):
            if arg < 0:
                todo.append(_BYTES if major == 2 else _TEXT)
                continue
            if arg > end - pos:
                raise DecodeError(f"length {arg} runs past the payload", _at(start))
            if text and major == 3:
                _utf8(data, pos, pos + arg, start)
            pos += arg
        elif major in (4, 5):
            if len(todo) > MAX_DEPTH:
                raise DecodeError(f"nested deeper than {MAX_DEPTH} levels", _at(start))
            if arg < 0:
                todo.append(_ARRAY if major == 4 else _MAP_KEY)
                continue
            items = arg * 2 if major == 5 else arg
            if items > end - pos:  # every item takes at least a byte
                kind = "map" if major == 5 else "array"
                raise DecodeError(f"{kind} of {arg} runs past the payload", _at(start))
            todo.append(items)
    if pos != end:
        raise DecodeError("bytes after the end of the CBOR item", _at(pos))


def _utf8(data: bytes, begin: int, end: int, head: int) -> None:
    try:
        data[begin:end].decode()
    except UnicodeDecodeError:
        raise DecodeError("text is not UTF-8", _at(head)) from None


def _at(pos: int) -> str:
    return f"byte {pos}"
