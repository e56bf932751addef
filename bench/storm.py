"""A connection storm: many devices opening mTLS connections at once.

Each attempt is one device's whole arrival: TCP connect, a TLS handshake
with its client certificate, then one reading (an HTTPS POST, or a WSS
upgrade and one message), and its acknowledgement. An attempt succeeds only
if the reading was acknowledged. Attempts start at ``--rate`` per second,
at most ``--in-flight`` at a time, so a slow server shows as latency and
failures rather than as a client that politely waits.

Reported: the success rate, failures by kind, and percentiles of the
handshake (connect to TLS established, as the client sees it) and of the
whole attempt. ``python -m bench storm --attempts 10000 --via https`` starts
its own stack (embedded PostgreSQL, a fresh PKI) unless ``--port`` points at
a running server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import ssl
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from hdrh.histogram import HdrHistogram

from ingestd.security import pki

from . import harness
from .load import percentiles

WS_KEY = base64.b64encode(b"ingestd-storm-16")


@dataclass
class StormResult:
    via: str
    attempts: int
    succeeded: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    handshake: HdrHistogram = field(
        default_factory=lambda: HdrHistogram(1, 60_000_000, 3)
    )
    total: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, 60_000_000, 3))

    def summary(self) -> dict[str, object]:
        return {
            "via": self.via,
            "attempts": self.attempts,
            "succeeded": self.succeeded,
            "success_rate": self.succeeded / self.attempts if self.attempts else 0.0,
            "failures": dict(self.failures),
            "seconds": round(self.seconds, 2),
            "attempts_per_s": round(self.attempts / self.seconds, 1)
            if self.seconds
            else 0.0,
            "handshake_ms": percentiles(self.handshake),
            "attempt_ms": percentiles(self.total),
        }


def make_pki(folder: Path, devices: int) -> tuple[Path, Path, Path, list[Path]]:
    """A root, an issuing CA, a server certificate for 127.0.0.1 and
    ``devices`` device certificates (chain and key in one PEM each)."""
    root = pki.new_root("storm root")
    issuing = pki.new_intermediate(root, "storm devices")
    server = pki.issue_server(issuing, ["127.0.0.1", "localhost"])
    pki.save(server, folder / "server.key", folder / "server.pem", issuing.cert)
    pki.write_public(folder / "root.pem", pki.pem(root.cert))
    files = []
    for i in range(devices):
        device = pki.issue_device(issuing, f"storm-{i}")
        path = folder / "devices" / f"storm-{i}.pem"
        # one file holding key, leaf and intermediate: load_cert_chain takes it
        pki.write_private(
            path,
            pki.key_pem(device.key) + pki.pem(device.cert) + pki.pem(issuing.cert),
        )
        files.append(path)
    return folder / "root.pem", folder / "server.pem", folder / "server.key", files


def client_contexts(root: Path, files: list[Path]) -> list[ssl.SSLContext]:
    contexts = []
    for path in files:
        ctx = ssl.create_default_context(cafile=root)
        ctx.load_cert_chain(path)
        contexts.append(ctx)
    return contexts


async def _attempt(
    via: str, port: int, ctx: ssl.SSLContext, device: str, result: StormResult
) -> None:
    started = time.perf_counter_ns()
    writer = None
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
        )
        result.handshake.record_value(
            max(1, (time.perf_counter_ns() - started) // 1000)
        )
        body = orjson.dumps({"ts": int(time.time() * 1000), "storm": 1})
        if via == "https":
            writer.write(
                b"POST /v1/devices/%s/telemetry HTTP/1.1\r\nHost: s\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (device.encode(), len(body), body)
            )
            line = await reader.readline()
            ok = line.startswith(b"HTTP/1.1 202")
            kind = "status " + line[9:12].decode() if line else "closed"
        else:
            writer.write(
                b"GET /v1/ws?device=%s HTTP/1.1\r\nHost: s\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: %s\r\n\r\n" % (device.encode(), WS_KEY)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            ok = head.startswith(b"HTTP/1.1 101")
            kind = "upgrade refused"
            if ok:
                writer.write(_masked_text(body))
                answer = await reader.read(512)
                ok = b'"stored"' in answer
                kind = "no ack"
        if ok:
            result.succeeded += 1
            result.total.record_value(
                max(1, (time.perf_counter_ns() - started) // 1000)
            )
        else:
            result.failures[kind] += 1
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        result.failures[type(exc).__name__] += 1
    except asyncio.LimitOverrunError:
        result.failures["bad answer"] += 1
    finally:
        if writer is not None:
            writer.close()


def _masked_text(payload: bytes) -> bytes:
    """One masked WebSocket text frame (RFC 6455 5.2), as clients must send."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2)
    return b"\x81" + length + mask + masked


async def storm(
    via: str,
    port: int,
    contexts: list[ssl.SSLContext],
    attempts: int,
    rate: float,
    in_flight: int,
) -> StormResult:
    """Start ``attempts`` arrivals at ``rate``/s, devices in turn."""
    result = StormResult(via, attempts)
    gate = asyncio.Semaphore(in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        try:
            await _attempt(
                via,
                port,
                contexts[i % len(contexts)],
                f"storm-{i % len(contexts)}",
                result,
            )
        finally:
            gate.release()

    started = time.monotonic()
    for i in range(attempts):
        ahead = i / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
        await gate.acquire()
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    result.seconds = time.monotonic() - started
    return result


def security_config(
    root: Path, cert: Path, key: Path, https_port: int
) -> dict[str, str]:
    """Lines for ``[security]`` and ``[http]`` of a server that requires mTLS."""
    return {
        "security": (
            f'mtls = true\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
            f'client_ca = "{root}"\n'
        ),
        "http": f"tls_port = {https_port}\n",
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--via", choices=["https", "wss"], default="https")
    parser.add_argument("--attempts", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=2_000.0, help="arrivals/s")
    parser.add_argument("--in-flight", type=int, default=1_000)
    parser.add_argument("--out", default="bench/results/storm.json")


def main(args: argparse.Namespace) -> int:
    import uvloop

    return uvloop.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="ingestd-storm-") as tmp:
        work = Path(tmp)
        print(f"issuing {args.devices} device certificates ...", flush=True)
        root, cert, key, files = make_pki(work / "pki", args.devices)
        contexts = client_contexts(root, files)
        pg = await asyncio.to_thread(
            harness.embedded_postgres, harness.ROOT / ".ingestd" / "bench-pg"
        )
        dsn = await harness.create_database(pg, "storm")
        https, http, admin = (harness.free_port() for _ in range(3))
        text = harness.config_text(
            dsn, harness.free_port(), http, admin, work / "state"
        )
        for table, lines in security_config(root, cert, key, https).items():
            if f"[{table}]\n" in text:
                text = text.replace(f"[{table}]\n", f"[{table}]\n{lines}", 1)
            else:
                text += f"\n[{table}]\n{lines}"
        text = text.replace("[mqtt]\n", "[mqtt]\nenabled = false\n", 1)
        server = harness.IngestdProcess(text, work, http, admin)
        await asyncio.to_thread(server.start)
        try:
            result = await storm(
                args.via, https, contexts, args.attempts, args.rate, args.in_flight
            )
        finally:
            await asyncio.to_thread(server.stop)
    summary = result.summary()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0
