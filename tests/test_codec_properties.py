"""Any input: a codec answers with storable readings, rejects that name their
place, or a DecodeError, never another exception (the oracle is
``fuzz_oracle.decode_soundly``).

Every codec of the catalog gets a fixed budget of ``FUZZ_EXAMPLES`` inputs
(10,000 in CI, ``INGESTD_FUZZ_EXAMPLES`` for a longer run), drawn from four
sources: the codec's own structured strategy from its test module (one in
ten), the fixtures with their document reshaped (a node replaced by a nasty
value, a key added or dropped, a subtree buried deep), the fixtures with
their bytes mutated, and plain bytes. Each input meets one of the codec's
configurations and origins in ``fuzz_oracle.TARGETS``. The codecs with a
compiled hot loop (``json`` and ``msgpack`` walk with ``_walk``, ``influx``
parses with ``_lineproto``) decode every input twice, compiled and pure,
and the two must agree exactly. Runs are derandomized, so CI is repeatable
and a failure prints the seed and the shrunk input.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import random
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd import clock
from ingestd.codecs.json import JsonCodec, JsonOptions
from ingestd.codecs.senml import SenmlCodec, SenmlOptions
from ingestd.model import Origin

from . import fuzz_oracle
from . import test_codec_lorawan as lorawan_cases
from . import test_codec_msgpack as msgpack_cases
from . import test_codec_senml_cbor as senml_cbor_cases
from . import test_codec_shelly as shelly_cases
from . import test_codec_sparkplug as sparkplug_cases
from . import test_codec_tasmota as tasmota_cases
from . import test_codec_zigbee2mqtt as zigbee_cases
from .fuzz_oracle import decode_soundly
from .test_codec_influx import line_protocol

FUZZ_EXAMPLES = int(os.environ.get("INGESTD_FUZZ_EXAMPLES", "10000"))

CODECS = [
    JsonCodec(JsonOptions(), clock.Window()),
    JsonCodec(JsonOptions(layout="gateway"), clock.Window()),
    SenmlCodec(SenmlOptions(), clock.Window()),
]
PROFILE = settings(
    max_examples=1500, derandomize=True, deadline=None, database=None,
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
json_documents = st.recursive(
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
@given(json_documents, st.sampled_from([None, "dev-1"]))
def test_codecs_never_fail_on_any_json(doc: Any, device: str | None) -> None:
    _check(json.dumps(doc).encode(), device)


@PROFILE
@given(st.binary(max_size=200))
def test_codecs_never_fail_on_any_bytes(payload: bytes) -> None:
    _check(payload, "dev-1")


# -- reshaped and mutated fixtures ---------------------------------------------
#
# Both draw one seed and make their edits with random.Random(seed): one draw
# per input instead of dozens keeps hypothesis' own cost (most of the time
# per input, measured) low enough for 10,000 inputs per codec. The seed and
# the payload are in the falsifying example.

NASTY_TEXT = [
    "", "\x00", "a\x00b", "\ud800", "x\udfff", "\ufeff", "\u202e", "\uffff",
    "\U0010ffff", "\U0001f600" * 3, "\x7f\x1b[2J", "x" * 257, "y" * 5000,
    "NaN", "Infinity", "-0", "1e400", "2024-05-01T12:00:00Z",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z",
    "'); DROP TABLE ingestd.readings; --", "1; DELETE FROM ingestd.devices",
    "\\.\n",  # the end-of-data marker of COPY's text format
    "a\tb\nc\\N",  # COPY text format's separators and NULL marker
]  # fmt: skip
NASTY_NUMBERS = [
    0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30,
    -(10**30), 1e308, -1e308, 5e-324, -0.0, 1.7976931348623157e308,
    float("inf"), float("-inf"), float("nan"), 946684800, 1714564800000,
    1714564800000000, 1714564800000000000, 2**28, 253402300800, True, False, None,
]  # fmt: skip


def nasty(rng: random.Random) -> Any:
    """A value devices get wrong, or one that is hard to store."""
    pick = rng.randrange(6)
    if pick == 0:
        return rng.choice(NASTY_TEXT)
    if pick == 1:
        return rng.choice(NASTY_NUMBERS)
    if pick == 2:
        return (
            [nasty(rng) for _ in range(rng.randrange(4))] if rng.random() < 0.9 else []
        )
    if pick == 3:
        return {rng.choice(NASTY_TEXT): rng.choice(NASTY_NUMBERS)}
    if pick == 4:
        return _deep(rng.choice(NASTY_NUMBERS), rng.randrange(1, 60), rng.randrange(2))
    return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(6)))


def _deep(value: Any, depth: int, kind: int) -> Any:
    for _ in range(depth):
        value = [value] if kind else {"d": value}
    return value


def _paths(doc: Any) -> list[tuple[Any, ...]]:
    """Every place in ``doc``, the root first."""
    found: list[tuple[Any, ...]] = [()]
    stack: list[tuple[Any, tuple[Any, ...]]] = [(doc, ())]
    while stack:
        node, path = stack.pop()
        if type(node) in (dict, list):
            items = node.items() if type(node) is dict else enumerate(node)
            for key, inner in items:
                found.append((*path, key))
                stack.append((inner, (*path, key)))
    return found


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def reshape(name: str, seed: int) -> bytes:
    """A fixture document of ``name`` with a few places changed: a value
    replaced by a nasty one, a key dropped or added, a subtree buried."""
    rng = random.Random(seed)
    doc = copy.deepcopy(rng.choice(_documents(name)))
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(_paths(doc))
        how = rng.randrange(4)
        if not path:  # the root: wrap or replace it
            doc = [doc] if how == 0 else nasty(rng) if how == 1 else doc
            continue
        parent, key = _at(doc, path[:-1]), path[-1]
        if how == 0:
            parent[key] = nasty(rng)
        elif how == 1:
            del parent[key]
        elif how == 2 and type(parent) is dict:
            parent[rng.choice(NASTY_TEXT)] = nasty(rng)
        else:
            parent[key] = _deep(parent[key], rng.randint(1, 40), how % 2)
    try:
        return fuzz_oracle.encode(name, doc)
    except (TypeError, ValueError, OverflowError):
        return b""  # not expressible in the format (a surrogate in CBOR)


TOKENS = [
    b"\x00", b"\\u0000", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800", b'"',
    b"\\", b"{", b"}", b"[", b"]", b",", b":", b"NaN", b"-Infinity", b"1e400",
    b"-1e400", b"18446744073709551616", b"-9223372036854775809", b"1e308",
    b"[" * 300, b'{"a":' * 40, b"\n", b"\r\n", b" ", b"=", b"i", b"u", b"#",
    b"\x80", b"\xf9\x7e\x00", b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00",
    b"\xd9\xd9\xf7", b"\xc1", b"\xd4\xff", b"\x9f", b"\xbf", b"\xff\xff\xff\xff\x0f",
]  # fmt: skip


def mutate(name: str, seed: int) -> bytes:
    """A fixture payload of ``name`` with a few byte-level edits: bytes
    replaced, inserted, deleted, a span repeated, the end cut off, or
    another fixture spliced in."""
    rng = random.Random(seed)
    pool = _seeds(name)
    data = bytearray(rng.choice(pool))
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(data) + 1)
        if rng.random() < 0.5:
            piece = rng.choice(TOKENS)
        else:
            piece = rng.randbytes(rng.randint(1, 6))
        kind = rng.randrange(6)
        if kind == 0:
            data[at : at + len(piece)] = piece
        elif kind == 1:
            data[at:at] = piece
        elif kind == 2:
            del data[at : at + rng.randint(1, 24)]
        elif kind == 3:
            data[at:at] = data[at : at + rng.randint(1, 32)] * rng.randint(1, 8)
        elif kind == 4:
            del data[at:]
        else:
            other = rng.choice(pool)
            data[at:] = other[rng.randrange(len(other) + 1) :]
    return bytes(data)


@functools.cache
def _seeds(name: str) -> list[bytes]:
    return fuzz_oracle.seeds(name)


@functools.cache
def _documents(name: str) -> list[Any]:
    return fuzz_oracle.documents(name)


# -- each codec's own structured inputs ---------------------------------------


def structured(name: str) -> st.SearchStrategy[Any]:
    """The payloads shaped like the format that its test module builds:
    one payload, or for Sparkplug a session of (topic, payload)."""
    if name == "sparkplug":
        return st.lists(sparkplug_cases.messages(), min_size=1, max_size=4)
    if name in ("json", "senml"):
        return json_documents.map(lambda d: json.dumps(d).encode())
    if name == "senml_cbor":
        import cbor2

        docs = senml_cbor_cases.documents | senml_cbor_cases.packs
        return docs.map(cbor2.dumps)
    if name == "msgpack":
        return msgpack_cases.documents.map(msgpack_cases.encode)
    if name == "influx":
        return line_protocol()
    docs = {
        "ttn": lorawan_cases.tts | lorawan_cases.documents,
        "chirpstack": lorawan_cases.chirpstack | lorawan_cases.documents,
        "zigbee2mqtt": zigbee_cases.documents,
        "tasmota": tasmota_cases.documents,
        "shelly": shelly_cases.notifications | shelly_cases.status,
    }[name]
    return docs.map(lambda d: json.dumps(d).encode())


FUZZ = settings(
    max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip


def _payload(name: str, seed: int, data: st.DataObject) -> Any:
    """One input: structured one time in ten (a hypothesis strategy, the
    costly kind), else from the seed: plain bytes, mutated or reshaped.
    The source is the seed's, not a drawn number: hypothesis favours small
    numbers, and would draw the costly source half the time."""
    source = seed % 10
    if source == 0:
        return data.draw(structured(name), label="structured")
    if source == 1:
        rng = random.Random(seed)
        return rng.randbytes(rng.randrange(300))
    seed //= 10
    if source < 6 or not _documents(name):
        return mutate(name, seed)
    return reshape(name, seed)


@pytest.mark.parametrize("name", list(fuzz_oracle.TARGETS))
def test_codec_survives_its_fuzz_budget(name: str, record_property: Any) -> None:
    twins: tuple[str, ...] = ("",)
    if name in fuzz_oracle.HAS_TWIN:
        if not fuzz_oracle.compiled_built():
            pytest.skip("compiled twins not built: make build")
        twins = fuzz_oracle.TWINS
    stats = {"inputs": 0, "with_readings": 0}

    @FUZZ
    @given(st.integers(0, 2**32 - 1), st.integers(0, 63), st.data())
    def fuzz(seed: int, choice: int, data: st.DataObject) -> None:
        payload = _payload(name, seed, data)
        received = clock.now_us()
        stats["inputs"] += 1
        if isinstance(payload, list):  # a Sparkplug session on its topics
            codecs = fuzz_oracle.codecs(name)  # fresh: it keeps births
            codec = codecs[choice % len(codecs)]
            for topic, raw in payload:
                origin = Origin(None, "fuzz", received, topic)
                out = decode_soundly(codec, raw, origin)
                stats["with_readings"] += bool(out and out.readings)
            return
        useful = fuzz_oracle.run(name, payload, choice, received, twins)
        stats["with_readings"] += useful

    started = time.perf_counter()
    fuzz()
    elapsed = time.perf_counter() - started
    paths = " and ".join(t for t in twins if t) or "one path"
    print(
        f"\nfuzz {name}: {stats['inputs']} inputs ({paths}), "
        f"{stats['with_readings']} with readings, {elapsed:.1f} s"
    )
    record_property("fuzz_inputs", stats["inputs"])
    # The budget was spent, and on inputs that reach the readings too
    assert stats["inputs"] >= FUZZ_EXAMPLES * 0.9
    assert stats["with_readings"] >= stats["inputs"] // 20
