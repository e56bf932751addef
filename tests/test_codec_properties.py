"""Any input: a codec answers with readings, rejects or a DecodeError, never
another exception. Fixed example budgets, derandomized so CI is repeatable."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd import clock
from ingestd.codecs.json import JsonCodec, JsonOptions
from ingestd.codecs.senml import SenmlCodec, SenmlOptions
from ingestd.model import Origin

from .fuzz_oracle import decode_soundly

CODECS = [
    JsonCodec(JsonOptions(), clock.Window()),
    JsonCodec(JsonOptions(layout="gateway"), clock.Window()),
    SenmlCodec(SenmlOptions(), clock.Window()),
]
PROFILE = settings(
    max_examples=1500, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=12)
)  # fmt: skip
SENML_KEYS = ["bn", "bt", "bu", "bv", "bs", "n", "u", "v", "vs", "vb", "vd", "s", "t"]
keys = st.sampled_from(SENML_KEYS + ["ts", "values", "v", "time", "x_"]) | st.text(
    max_size=6
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=6)
    ),
    max_leaves=25,
)


def _check(payload: bytes, device: str | None) -> None:
    for codec in CODECS:
        origin = Origin(device, "fuzz", clock.now_us())
        out = decode_soundly(codec, payload, origin)
        if out is None:
            continue
        assert out.readings or out.rejects


@PROFILE
@given(documents, st.sampled_from([None, "dev-1"]))
def test_codecs_never_fail_on_any_json(doc: Any, device: str | None) -> None:
    _check(json.dumps(doc).encode(), device)


@PROFILE
@given(st.binary(max_size=200))
def test_codecs_never_fail_on_any_bytes(payload: bytes) -> None:
    _check(payload, "dev-1")
