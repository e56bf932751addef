"""HTTP stacks for the telemetry endpoint, on the same work, on uvloop.

    python -m pytest bench/test_bench_http.py --benchmark-only

Group ``http-stack``; each server runs in a child process of its own
(``bench/http_stacks.py``), the client here on the session's uvloop loop:

- ``httptools``: ``ingestd.transports.http1`` with the endpoint's work
  minus the database (path, codec by Content-Type, JSON decode, 202);
- ``aiohttp``: the same work in an ``aiohttp.web.Application``;
- ``endpoint``: the real ``TelemetryEndpoint`` and ``Batcher`` writing to a
  fresh database, answering after the commit, at the default flush settings
  (2,000 rows or 20 ms): what the database adds.

A round is 2,000 POSTs of a ~190-byte tracker document (ten readings) over
eight keep-alive connections, each sending its next request once the last
is answered, as devices do. Every request names one of 100 devices and a
time never sent before, so the ``endpoint`` stack stores every reading.
Requests are made in pedantic's setup, outside the timing:
requests/s = 2,000 / median. ``extra_info["server_cpu_us"]`` is the server
process's CPU time per request, warm-up included (``--benchmark-json``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench import harness

REQUESTS = 2_000
CONNECTIONS = 8
ROUNDS = 5
DEVICES = [f"tracker-{i:03d}" for i in range(100)]
READINGS = 10  # in each tracker document
ANSWER = b'{"stored":%d}' % READINGS
STACKS = ["httptools", "aiohttp", "endpoint"]

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Server:
    """A stack of ``bench/http_stacks.py`` in a child process."""

    def __init__(self, stack: str, port: int, dsn: str, log: Path) -> None:
        self.stack = stack
        self.port = port
        self.dsn = dsn
        self.log = log
        command = [sys.executable, "-m", "bench.http_stacks", stack, str(port)]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                command + ([dsn] if dsn else []), cwd=harness.ROOT,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            harness.wait_port(port, 30)
        except TimeoutError:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(
                f"{stack} did not listen: {log.read_text()[-3000:]}"
            ) from None

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (Linux)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1]
        utime, stime = fields.split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        assert code == 0, f"{self.stack} exited {code}: {self.log.read_text()[-3000:]}"


@pytest.fixture(scope="module", params=STACKS)
def server(
    request: pytest.FixtureRequest,
    fresh_database: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    stack: str = request.param
    dsn = fresh_database("http") if stack == "endpoint" else ""
    log = tmp_path_factory.mktemp("http") / f"{stack}.log"
    running = Server(stack, harness.free_port(), dsn, log)
    yield running
    running.stop()


class Requests:
    """Rounds of tracker POSTs, each with a device and time not sent before."""

    def __init__(self) -> None:
        self.start = time.time_ns() // 1000 - 3_600_000_000  # an hour ago
        self.sent = itertools.count()

    def request(self, k: int) -> bytes:
        device = DEVICES[k % len(DEVICES)]
        stamp = self.start + k * 1_000
        seconds, micros = divmod(stamp, 1_000_000)
        whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        body = orjson.dumps(
            {
                "ts": f"{whole}.{micros:06d}Z",
                "temperature": round(3.6 + (k % 17) * 0.05, 2),
                "humidity": 80.0 + (k % 13),
                "battery": round(90.0 - (k % 400) * 0.1, 1),
                "door_open": k % 97 == 0,
                "rssi": -70 - k % 30,
                "gps": {
                    "lat": round(52.520008 + (k % 1000) * 1e-5, 6),
                    "lon": round(13.404954 - (k % 1000) * 1e-5, 6),
                    "speed": 62.5,
                    "heading": 271.4,
                    "sats": 9,
                },
            }
        )
        head = (
            f"POST /v1/devices/{device}/telemetry HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    def round(self) -> list[list[bytes]]:
        """One round's requests, dealt out to the connections."""
        made = [self.request(next(self.sent)) for _ in range(REQUESTS)]
        return [made[i::CONNECTIONS] for i in range(CONNECTIONS)]


async def send(stream: Stream, requests: list[bytes]) -> None:
    """Send each request once the previous one is answered; check the answers."""
    reader, writer = stream
    for request in requests:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        at = head.lower().index(b"content-length:") + 15
        length = int(head[at : head.index(b"\r\n", at)])
        body = await reader.readexactly(length)
        if head[9:12] != b"202" or body != ANSWER:
            raise AssertionError(f"unexpected answer: {head!r} {body!r}")


def test_bench_http_stack(
    benchmark: BenchmarkFixture,
    bench_loop: asyncio.AbstractEventLoop,
    server: Server,
) -> None:
    benchmark.group = "http-stack"
    benchmark.extra_info["requests"] = REQUESTS
    requests = Requests()

    async def connect() -> list[Stream]:
        return [
            await asyncio.open_connection("127.0.0.1", server.port)
            for _ in range(CONNECTIONS)
        ]

    streams = bench_loop.run_until_complete(connect())

    async def send_all(dealt: list[list[bytes]]) -> None:
        await asyncio.gather(*map(send, streams, dealt))

    async def close() -> None:
        for _, writer in streams:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for _, writer in streams))

    def one_round(dealt: list[list[bytes]]) -> None:
        bench_loop.run_until_complete(send_all(dealt))

    def setup() -> tuple[tuple[list[list[bytes]]], dict[str, Any]]:
        return (requests.round(),), {}

    cpu = server.cpu_seconds()
    try:
        benchmark.pedantic(
            one_round, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1
        )
    finally:
        bench_loop.run_until_complete(close())
    # CPU time per request: unlike wall time, not capped by the client's speed
    spent = server.cpu_seconds() - cpu
    benchmark.extra_info["server_cpu_us"] = spent / (ROUNDS + 1) / REQUESTS * 1e6

    if server.dsn:  # every reading of every answered request is stored
        stored = bench_loop.run_until_complete(count_readings(server.dsn))
        assert stored == (ROUNDS + 1) * REQUESTS * READINGS


async def count_readings(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ingestd.readings"))
    finally:
        await conn.close()
