"""What every codec must do with any input, for the property tests."""

from __future__ import annotations

from ingestd.codecs.base import Codec, Decoded
from ingestd.errors import DecodeError
from ingestd.model import Origin


def decode_soundly(codec: Codec, payload: bytes, origin: Origin) -> Decoded | None:
    """Decode; a DecodeError must say where and why (then None), anything
    else must be storable readings and rejects that name their place."""
    out = Decoded()
    try:
        codec.decode(payload, origin, out)
    except DecodeError as exc:
        assert exc.path and exc.reason
        return None
    for r in out.readings:
        assert "\x00" not in r.device + r.metric
        assert isinstance(r.ts, int)
        assert (r.value is None) != (r.data is None)
    return out
