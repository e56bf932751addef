"""SenML JSON (RFC 8428): the shared senml_json fixtures and bad packs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingestd import clock
from ingestd.codecs.base import Decoded
from ingestd.codecs.senml import SenmlCodec, SenmlOptions
from ingestd.errors import DecodeError
from ingestd.model import Origin

from .fixture_readings import RECEIVED, as_rows, expected_for, expected_rows, payloads


def decode(payload: bytes, device: str | None = None, **options: Any) -> Decoded:
    codec = SenmlCodec(SenmlOptions(**options), clock.Window())
    out = Decoded()
    codec.decode(payload, Origin(device, "test", RECEIVED), out)
    return out


def _with_readings(path: Path) -> bool:
    return "readings" in expected_for(path)


@pytest.mark.parametrize(
    "path", [p for p in payloads("senml_json") if _with_readings(p)],
    ids=lambda p: p.stem,
)  # fmt: skip
def test_senml_fixture_readings(path: Path) -> None:
    # These packs come without a transport identity: bn (or n) names the device
    out = decode(path.read_bytes())
    assert as_rows(out.readings) == expected_rows(expected_for(path)["readings"])
    assert not out.rejects


def test_senml_fixture_milliseconds_base_time_is_rejected() -> None:
    # nRF Cloud sends bt in ms where RFC 8428 says seconds: strict reading
    # places it in the year 55667, so every record is rejected, none stored.
    path = next(p for p in payloads("senml_json") if p.stem.startswith("nrfcloud"))
    device = expected_for(path)["context"]["device_from_topic"]
    out = decode(path.read_bytes(), device, metric="full")
    assert not out.readings
    assert len(out.rejects) == 6
    assert all("out of plausible range" in r.reason for r in out.rejects)
    assert out.rejects[0].path == "$[0].t"


def test_senml_transport_identity_names_the_device() -> None:
    out = decode(
        b'[{"bn": "urn:dev:x:", "n": "temp", "u": "Cel", "v": 4},'
        b' {"u": "%RH", "v": 3}]',
        device="tracker-7",
    )
    assert [(r.device, r.metric, r.unit) for r in out.readings] == [
        ("tracker-7", "temp", "Cel"), ("tracker-7", "%RH", "%RH"),
    ]  # fmt: skip


def test_senml_full_metric_keeps_object_paths_apart() -> None:
    pack = (
        b'[{"bn": "14201/0/", "n": "0", "v": 1}, {"bn": "14230/0/", "n": "0", "v": 2}]'
    )
    out = decode(pack, device="nrf-1", metric="full")
    assert [r.metric for r in out.readings] == ["14201/0/0", "14230/0/0"]


def test_senml_sum_and_base_value_apply() -> None:
    out = decode(b'[{"bn": "d:", "bv": 10, "bs": 100, "n": "e", "v": 1, "s": 5}]')
    assert [(r.metric, r.value) for r in out.readings] == [
        ("e", 11.0),
        ("e.sum", 105.0),
    ]


@pytest.mark.parametrize(
    ("pack", "path", "reason"),
    [
        (b'[{"bn": "d:", "n": "a", "v": true}]', "$[0].v", "expected a number"),
        (b'[{"bn": "d:", "n": "a", "v": "1"}]', "$[0].v", "expected a number"),
        (b'[{"bn": "d:", "n": "a", "vb": 1}]', "$[0].vb", "vb must be a boolean"),
        (b'[{"bn": "d:", "n": "a", "vd": "%%%"}]', "$[0].vd", "vd is not base64url"),
        (b'[{"bn": "d:", "n": "a", "v": 1, "vs": "x"}]', "$[0]", "record has several"),
        (b'[{"bn": "d:", "n": "a", "v": 1, "foo_": 1}]', "$[0]", "mandatory field"),
        (b'[{"bn": 5, "n": "a", "v": 1}]', "$[0].bn", "expected a string"),
        (b'[{"n": "a\\u0000", "v": 1}]', "$[0].n", "text contains a NUL"),
        (b'[{"v": 1}]', "$[0]", "no device id"),
        (b'[{"bn": "d:", "n": "a", "t": 4102444800, "v": 1}]', "$[0].t", "timestamp"),
        # relative to receipt, but years ahead: the window applies as well
        (b'[{"bn": "d:", "n": "a", "t": 127600000, "v": 1}]', "$[0].t", "timestamp"),
        (
            b'[{"bn": "d:", "bt": 100000000, "n": "a", "t": 0.5, "v": 1}]',
            "$[0].t",
            "timestamp",
        ),
        (b"[1]", "$[0]", "a SenML record is an object"),
    ],
)
def test_senml_bad_record_is_rejected_by_path(
    pack: bytes, path: str, reason: str
) -> None:
    out = decode(pack)
    assert not out.readings
    assert [r.path for r in out.rejects] == [path]
    assert out.rejects[0].reason.startswith(reason), out.rejects[0].reason


@pytest.mark.parametrize(
    ("pack", "reason"),
    [
        (b'{"bn": "d"}', "a SenML pack is an array"),
        (b'[{"bn": "d:"}]', "no records with a value"),
        (b"[{", "invalid JSON"),
    ],
)
def test_senml_unusable_pack_raises(pack: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(pack)
    assert caught.value.reason.startswith(reason)
