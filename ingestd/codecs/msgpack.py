"""MessagePack documents, read as the JSON they encode.

A MessagePack payload carries the documents the generic JSON codec reads
(flat or nested objects, ThingsBoard ``ts``/``values``, gateway layout), so
the route takes ``JsonOptions`` and the document goes through
``JsonCodec.decode_document`` once it is in JSON's terms:

- a timestamp (extension type -1, any of its three widths) becomes ISO 8601
  text, so under a time key it is that time, and elsewhere a text value;
- a binary (``bin``) leaf becomes a reading with ``data`` (opaque bytes,
  ``value`` None); under a time, device or firmware key it stays bytes and
  is refused there as JSON would refuse a number;
- what JSON cannot say is a reject naming its path: a map key that is not
  text, NaN or an infinity, another extension type, and bytes or those
  inside an array (an array is stored as a JSON value).

float32 values are kept as the double they are exactly (``0.1`` sent as
float32 is 0.10000000149011612): which floats were float32 is not visible
after decoding, and rounding them would invent digits the device never
sent. Compare them with a relative tolerance of 1e-6.

With ``senml`` set (``SenmlOptions``), the payload is a SenML pack with
the JSON form's text labels (RFC 8428 defines no MessagePack form) and
resolves as SenML JSON does, ``vd`` as ``bin`` or base64url text; the JSON
options are then unused. A record whose ``v`` is a boolean is rejected:
booleans belong in ``vb`` (sec. 4.2), and no coercion is made.

Malformed MessagePack is a ``DecodeError`` at the byte offset msgspec
gives (the payload's end when it is truncated). A timestamp outside
datetime's years 1 to 9999 fails the whole payload: msgspec decodes
timestamps itself and refuses those before any hook could see them.
"""

from __future__ import annotations

import math
import re
import secrets
from datetime import datetime
from typing import Any

import msgspec

from .. import clock
from ..errors import DecodeError
from ..model import Origin
from .base import Decoded, json_type
from .json import MAX_ARRAY_NESTING, JsonCodec, JsonOptions
from .senml import SenmlOptions, UnitTable, binary_record, resolve

# Maps and arrays inside a document. Deeper than the walker reads objects
# (32 levels below a route's root): past it nothing is read, so nothing needs
# converting, and our own recursion stays bounded.
MAX_DEPTH = 64
_AT_BYTE = re.compile(r"\s*\(byte (\d+)\)$")
_AT_PATH = re.compile(r"\s*- at `[^`]*`$")  # msgspec's, "$[...]" for map values


class MsgpackOptions(JsonOptions, forbid_unknown_fields=True, kw_only=True):
    """JSON's options for the documents; ``senml`` for SenML packs instead."""

    senml: SenmlOptions | None = None


class _Documents(JsonCodec):
    # the generic JSON logic, stamping its readings as MessagePack
    name = "msgpack"


class MsgpackCodec:
    """MessagePack documents (or SenML packs), configured for one route."""

    name = "msgpack"

    def __init__(self, options: MsgpackOptions, window: clock.Window) -> None:
        self.options = options
        self.window = window
        self._json = _Documents(options, window)
        self._decoder = msgspec.msgpack.Decoder()
        senml = options.senml
        self._units = UnitTable(senml.units) if senml and senml.units else None
        # Leaves that keep their bytes: JsonCodec reads them, not the walker
        self._keep = frozenset(
            [*options.time_keys, *options.firmware_keys]
            + ([options.device_key] if options.device_key else [])
        )
        # Stands in for bytes while the walker runs; unguessable by a sender
        self._tag = "\ue000" + secrets.token_hex(8) + ":"

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        doc = self._load(payload)
        senml = self.options.senml
        if senml is not None:
            if type(doc) is not list:
                raise DecodeError("a SenML pack is an array of records", "$")
            resolve(
                doc,
                origin,
                out,
                self.window,
                senml.metric,
                self.name,
                units=self._units,
                relabel=binary_record,
            )
            if not out.readings and not out.rejects:
                raise DecodeError("no records with a value in pack", "$")
            return

        # Put the document in JSON's terms, then read it as JSON
        blobs: dict[str, bytes] = {}
        if self.options.layout == "gateway" and type(doc) is dict:
            self._gateway(doc, out, blobs)
        else:
            self._documents(doc, "$", out, blobs, 0)
        first = len(out.readings)
        self._json.decode_document(doc, origin, out)
        if blobs:
            for reading in out.readings[first:]:
                blob = blobs.get(reading.value) if type(reading.value) is str else None
                if blob is not None:
                    reading.value, reading.data = None, blob

    def _load(self, payload: bytes) -> Any:
        try:
            return self._decoder.decode(payload)
        except msgspec.DecodeError as exc:
            text = str(exc).removeprefix("MessagePack data is malformed: ")
            text = _AT_PATH.sub("", text)
            found = _AT_BYTE.search(text)
            if found:
                where = f"byte {found.group(1)}"
                text = text[: found.start()]
            elif "truncated" in text:
                where = f"byte {len(payload)}"
            else:
                where = "$"
            raise DecodeError(f"invalid MessagePack: {text.strip()}", where) from None
        except RecursionError:
            raise DecodeError("invalid MessagePack: nested too deep", "$") from None

    def _gateway(
        self, doc: dict[Any, Any], out: Decoded, blobs: dict[str, bytes]
    ) -> None:
        # {"Device A": [...], ...}: the keys name devices, the values are documents
        for key in [k for k in doc if type(k) is not str]:
            out.reject("$", f"map key {repr(key)[:40]} is not text")
            del doc[key]
        for device, docs in doc.items():
            self._documents(docs, f"$.{_shown(device)}", out, blobs, 0)

    def _documents(
        self, doc: Any, path: str, out: Decoded, blobs: dict[str, bytes], nesting: int
    ) -> None:
        # Anything but an object or array is JsonCodec's to reject
        if type(doc) is dict:
            self._object(doc, path, out, blobs, 0)
        elif type(doc) is list and nesting < MAX_ARRAY_NESTING:
            for i, item in enumerate(doc):
                self._documents(item, f"{path}[{i}]", out, blobs, nesting + 1)

    def _object(
        self,
        node: dict[Any, Any],
        path: str,
        out: Decoded,
        blobs: dict[str, bytes],
        depth: int,
    ) -> None:
        # An object the walker flattens: its leaves become readings
        dropped = []
        for key, value in node.items():
            if type(key) is not str:
                out.reject(path, f"map key {repr(key)[:40]} is not text")
                dropped.append(key)
                continue
            try:
                where = f"{path}.{_shown(key)}"
                new = self._leaf(key, value, where, out, blobs, depth)
            except DecodeError as exc:
                out.reject(exc.path, exc.reason)
                dropped.append(key)
                continue
            if new is not value:
                node[key] = new
        for key in dropped:
            del node[key]

    def _leaf(
        self,
        key: str,
        value: Any,
        path: str,
        out: Decoded,
        blobs: dict[str, bytes],
        depth: int,
    ) -> Any:
        kind = type(value)
        if kind is dict:
            if depth < MAX_DEPTH:  # the walker refuses it long before
                self._object(value, path, out, blobs, depth + 1)
            return value
        if kind is bytes:
            if key in self._keep:
                return value
            token = f"{self._tag}{len(blobs)}"
            blobs[token] = value
            return token
        return _json_value(value, path, depth)


def _json_value(value: Any, path: str, depth: int) -> Any:
    """``value`` as JSON would carry it, converted in place where it can be.

    Raises ``DecodeError`` at the first part that has no JSON form.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise DecodeError("number is not finite", path)
        return value
    if kind is datetime:
        return value.isoformat()  # msgspec gives UTC; from_text reads it back
    if kind is list or kind is dict:
        if depth >= MAX_DEPTH:
            raise DecodeError(f"nested deeper than {MAX_DEPTH} levels", path)
        if kind is list:
            for i, item in enumerate(value):
                new = _json_value(item, f"{path}[{i}]", depth + 1)
                if new is not item:
                    value[i] = new
            return value
        for key, item in value.items():
            if type(key) is not str:
                raise DecodeError(f"map key {repr(key)[:40]} is not text", path)
            new = _json_value(item, f"{path}.{_shown(key)}", depth + 1)
            if new is not item:
                value[key] = new
        return value
    if kind is msgspec.msgpack.Ext:
        reason = f"MessagePack extension type {value.code} has no JSON form"
        raise DecodeError(reason, path)
    raise DecodeError(f"{json_type(value)} inside an array has no JSON form", path)


def _shown(key: str) -> str:
    # a path names the spot in a dead letter, and PostgreSQL text holds no NUL
    return key.replace("\x00", "\\0")
