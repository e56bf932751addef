"""The line protocol parser, pure against compiled, on Telegraf output.

    python setup.py build_ext --inplace
    python -m pytest bench/test_bench_lineproto.py --benchmark-only --noconftest

Each group holds one payload parsed by both twins, so pytest-benchmark's
table shows them side by side; compare medians (the mean suffers from a
shared machine). The parser groups time ``parse`` alone; the codec group
times the whole ``InfluxCodec.decode`` with ``ingestd.codecs.influx.parse``
patched per parameter, the same selection the import does, to show what the
parser's gain is worth once readings are built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from ingestd.clock import Window
from ingestd.codecs import _lineproto
from ingestd.codecs import influx as influx_codec
from ingestd.codecs._lineproto import LineError, Point
from ingestd.codecs.base import Decoded
from ingestd.codecs.influx import InfluxCodec, InfluxOptions
from ingestd.model import Origin

Parse = Callable[[bytes], list[Point | LineError]]

PURE: Parse = _lineproto.parse
COMPILED: Parse | None
try:
    from ingestd.codecs._lineproto_ext import parse as _compiled

    COMPILED = _compiled
except ImportError:  # not built
    COMPILED = None

RECEIVED = 1_714_564_800_000_000  # 2024-05-01T12:00:00Z
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
TELEGRAF = FIXTURES / "influx_line_protocol" / "telegraf_procstat_real_line.lp"


def telegraf_batch(lines: int = 1000) -> bytes:
    """``lines`` lines as one Telegraf agent flushes them: five input plugins
    (cpu, mem, disk, net, system) over 20 hosts, every 10 s, ns timestamps."""
    out = []
    for i in range(lines):
        host = f"edge-{i % 20:02d}"
        ts = 1_714_564_000_000_000_000 + (i // 20) * 10_000_000_000
        kind = i % 5
        if kind == 0:
            out.append(
                f"cpu,cpu=cpu-total,host={host} usage_guest=0,usage_idle="
                f"{90 + i % 7}.{i % 97},usage_iowait=0.25,usage_irq=0,usage_nice=0,"
                f"usage_softirq=0.05,usage_steal=0,usage_system=2.{i % 89},"
                f"usage_user=5.{i % 83} {ts}"
            )
        elif kind == 1:
            out.append(
                f"mem,host={host} active={3_000_000_000 + i}i,available="
                f"{6_000_000_000 - i}i,available_percent={70 + i % 9}.125,"
                f"buffered=1234944i,cached=2813140992i,free=1046532096i,"
                f"total=8254124032i,used={2_000_000_000 + i}i,"
                f"used_percent=2{i % 9}.5 {ts}"
            )
        elif kind == 2:
            out.append(
                f"disk,device=sda1,fstype=ext4,host={host},mode=rw,path=/ "
                f"free={50_000_000_000 - i}i,inodes_free=3000000i,inodes_total="
                f"3276800i,inodes_used=276800i,total=52710469632i,used="
                f"{2_700_000_000 + i}i,used_percent=5.{i % 100} {ts}"
            )
        elif kind == 3:
            out.append(
                f"net,host={host},interface=eth0 bytes_recv={9_000_000 + i * 13}i,"
                f"bytes_sent={4_000_000 + i * 7}i,drop_in=0i,drop_out=0i,err_in=0i,"
                f"err_out=0i,packets_recv={70_000 + i}i,packets_sent={40_000 + i}i {ts}"
            )
        else:
            out.append(
                f"system,host={host} load1=0.{i % 100},load15=0.27,load5=0.31,"
                f'n_cpus=4i,n_users=1i,uptime={86_400 + i}i,uptime_format="1 day, '
                f'0:{i % 60:02d}" {ts}'
            )
    return ("\n".join(out) + "\n").encode()


BATCH = telegraf_batch()

PARSERS = [
    pytest.param("pure"),
    pytest.param(
        "compiled",
        marks=pytest.mark.skipif(
            COMPILED is None,
            reason="ingestd.codecs._lineproto_ext is not built: "
            "run `python setup.py build_ext --inplace`",
        ),
    ),
]


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> Iterator[Parse]:
    chosen = PURE if request.param == "pure" else COMPILED
    assert chosen is not None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(influx_codec, "parse", chosen)
        yield chosen


def test_bench_lineproto_parse_telegraf_line(
    benchmark: BenchmarkFixture, parser: Parse
) -> None:
    benchmark.group = "lineproto.parse: Telegraf procstat line, 52 fields"
    payload = TELEGRAF.read_bytes()
    entries = benchmark(parser, payload)
    assert len(entries) == 1 and len(entries[0][3]) == 52  # type: ignore[index]


def test_bench_lineproto_parse_batch(
    benchmark: BenchmarkFixture, parser: Parse
) -> None:
    benchmark.group = "lineproto.parse: Telegraf batch, 1,000 lines"
    entries = benchmark(parser, BATCH)
    assert len(entries) == 1000
    assert not [e for e in entries if type(e) is LineError]


def test_bench_lineproto_decode_batch(
    benchmark: BenchmarkFixture, parser: Parse
) -> None:
    benchmark.group = "InfluxCodec.decode: Telegraf batch, 1,000 lines"
    codec = InfluxCodec(InfluxOptions(), Window())
    origin = Origin(None, "http", RECEIVED)
    last: list[Decoded] = []

    def decode() -> None:
        out = Decoded()
        codec.decode(BATCH, origin, out)
        last[:] = [out]

    benchmark(decode)
    assert len(last[0].readings) == 8000 and not last[0].rejects
