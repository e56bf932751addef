"""The JSON codec's walker, pure against compiled, on real device payloads.

    python setup.py build_ext --inplace
    python -m pytest bench/test_bench_walk.py --benchmark-only --noconftest

Each group holds one payload walked by both twins, so pytest-benchmark's
table shows them side by side; compare medians (the mean suffers from a
shared machine). The codec is built once and ``ingestd.codecs.json.Walker``
is patched per parameter, the same selection the import does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from ingestd.clock import Window
from ingestd.codecs import _walk
from ingestd.codecs import json as json_codec
from ingestd.codecs.base import Decoded
from ingestd.codecs.json import JsonCodec, JsonOptions
from ingestd.model import Origin

WalkerClass = type[_walk.Walker]

PURE: WalkerClass = _walk.Walker
COMPILED: WalkerClass | None
try:
    from ingestd.codecs._walk_ext import Walker as _Compiled

    COMPILED = cast(WalkerClass, _Compiled)
except ImportError:  # not built
    COMPILED = None


RECEIVED = 1_714_564_800_000_000  # 2024-05-01T12:00:00Z
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
SHADOW = FIXTURES / "json_plain" / "asset_tracker_shadow_nested_broken_ts.json"

# A refrigerated trailer's tracker: its own time in ms, eight readings at the
# top level, the position as a nested object, firmware as an attribute.
REEFER = orjson.dumps(
    {
        "ts": 1714564790123,
        "fw_version": "4.2.1",
        "temp": 3.9,
        "setpoint": 4.0,
        "return_air": 5.25,
        "humidity": 81.5,
        "door": False,
        "compressor": True,
        "battery": 3.71,
        "rssi": -87,
        "gps": {"lat": 59.913868, "lng": 10.752245, "speed": 62.5, "sats": 9},
    }
)

WALKERS = [
    pytest.param("pure"),
    pytest.param(
        "compiled",
        marks=pytest.mark.skipif(
            COMPILED is None,
            reason="ingestd.codecs._walk_ext is not built: "
            "run `python setup.py build_ext --inplace`",
        ),
    ),
]


@pytest.fixture(params=WALKERS)
def walker(request: pytest.FixtureRequest) -> Iterator[WalkerClass]:
    cls = PURE if request.param == "pure" else COMPILED
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(json_codec, "Walker", cls)
        assert cls is not None
        yield cls


def decoder(
    benchmark: BenchmarkFixture, codec: JsonCodec, payload: bytes, origin: Origin
) -> Decoded:
    """Benchmark one full decode per round; the last round's result."""
    last: list[Decoded] = []

    def decode() -> None:
        out = Decoded()
        codec.decode(payload, origin, out)
        last[:] = [out]

    benchmark(decode)
    return last[0]


def test_bench_walk_decode_reefer(
    benchmark: BenchmarkFixture, walker: WalkerClass
) -> None:
    benchmark.group = "JsonCodec.decode: reefer tracker, 12 readings"
    codec = JsonCodec(JsonOptions(), Window())
    out = decoder(benchmark, codec, REEFER, Origin("reefer-17", "mqtt", RECEIVED))
    assert len(out.readings) == 12 and not out.rejects
    assert out.firmware == {"reefer-17": "4.2.1"}


def test_bench_walk_decode_shadow(
    benchmark: BenchmarkFixture, walker: WalkerClass
) -> None:
    if not SHADOW.exists():
        pytest.skip(f"fixture missing: {SHADOW}")
    benchmark.group = "JsonCodec.decode: asset tracker shadow, 7 readings 4 rejects"
    codec = JsonCodec(JsonOptions(root="reported", ignore=["cfg"]), Window())
    origin = Origin("asset-tracker-1", "mqtt", RECEIVED)
    out = decoder(benchmark, codec, SHADOW.read_bytes(), origin)
    assert (len(out.readings), len(out.rejects)) == (7, 4)


def test_bench_walk_decode_shadow_whole(
    benchmark: BenchmarkFixture, walker: WalkerClass
) -> None:
    # The whole shadow, config sections too: more leaves, fewer timed ones
    if not SHADOW.exists():
        pytest.skip(f"fixture missing: {SHADOW}")
    benchmark.group = "JsonCodec.decode: asset tracker shadow, whole"
    codec = JsonCodec(JsonOptions(), Window())
    origin = Origin("asset-tracker-1", "mqtt", RECEIVED)
    out = decoder(benchmark, codec, SHADOW.read_bytes(), origin)
    assert (len(out.readings), len(out.rejects)) == (20, 4)


def test_bench_walk_leaves_reefer(
    benchmark: BenchmarkFixture, walker: WalkerClass
) -> None:
    # The walk alone: the parsed document, a reused walker and output
    benchmark.group = "Walker.leaves: reefer tracker, 12 readings"
    doc: dict[str, Any] = orjson.loads(REEFER)
    out = Decoded()
    w = walker(
        out, RECEIVED, "mqtt", "json", "v", ("ts",), "auto", frozenset(), {}, Window()
    )
    skip = frozenset({"ts", "fw_version"})

    def leaves() -> None:
        out.readings.clear()
        w.leaves(doc, "", "reefer-17", RECEIVED, skip, 0)

    benchmark(leaves)
    assert len(out.readings) == 12
