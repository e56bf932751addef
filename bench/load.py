"""The load generator: a simulated fleet at a fixed rate, latency in HDR.

``python -m bench load`` offers ``--rate`` readings per second from
``--devices`` simulated devices for ``--seconds``, each message holding
``--readings-per-message`` readings, over one transport:

- MQTT: a few gmqtt connections publish at QoS 1. The broker acknowledges
  a PUBLISH when it has it, not when ingestd committed it, so the latency
  of a reading is read back from the database after the run: every payload
  carries its send time as the measurement time, and the writer stamps
  ``stored_at`` with the time of the statement that commits it, so
  ``stored_at - ts`` is the send-to-commit latency of each reading.
- HTTP: keep-alive connections post one request at a time; ingestd answers
  202 only after the commit, so the latency is the time until the 202.
- CoAP over UDP (``coap``) or TCP (``coap+tcp``): a confirmable POST per
  message from ``--connections`` client endpoints, answered 2.04 after the
  commit.
- WebSocket: a connection per device, messages sent without waiting and
  each acknowledged after the commit by its sequence number.

The answering transports (all but MQTT) are also read back from the
database, so their result holds ``stored_at - ts`` next to the answer's
latency. The CoAP and WebSocket senders are in ``senders.py``.

Pacing is open-loop from one schedule: a sender that falls behind catches
up in a burst, and how far behind it ever was goes into the result, so a
load generator starved of CPU is visible rather than hidden in a lower
latency. Results are printed and written as JSON to
``bench/results/<name>.json``, with the HDR histogram encoded for plots.

Self-contained (the default when no port is given), the run gets its own
embedded PostgreSQL with a fresh database, a private Mosquitto and an
ingestd process configured by ``--flush-rows``, ``--flush-interval-ms`` and
``--ring-capacity``. With ``--rules`` the fresh database is first seeded
with orders, a binding for every device and one rule of each kind
(``rule_set.py``), so the run measures ingest with the order dispatcher
at work; the result then counts the effects the rules wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import gmqtt
import orjson
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.storage import PersistentStorage
from hdrh.histogram import HdrHistogram

from . import fleet, harness, rule_set
from .fleet import Device, Message
from .senders import Answers, CoapPosters, WebSocketLinks, new_histogram, record

RESULTS = harness.ROOT / "bench" / "results"
BENCH_PG = harness.ROOT / ".ingestd" / "bench-pg"
VIAS = ("mqtt", "http", "coap", "coap+tcp", "websocket")
MAX_INFLIGHT = 10_000  # unacknowledged PUBLISHes per publisher connection
TICK_S = 0.002  # pacing step
DRAIN_TIMEOUT_S = 60.0


def percentiles(histogram: HdrHistogram) -> dict[str, float]:
    """P50 to max in milliseconds, as the result file and the summary show."""

    def ms(value: float) -> float:
        return round(value / 1000, 3)

    return {
        "count": histogram.get_total_count(),
        "p50": ms(histogram.get_value_at_percentile(50)),
        "p90": ms(histogram.get_value_at_percentile(90)),
        "p99": ms(histogram.get_value_at_percentile(99)),
        "p99_9": ms(histogram.get_value_at_percentile(99.9)),
        "max": ms(histogram.get_max_value()),
        "mean": ms(histogram.get_mean_value()),
    }


# -- MQTT -----------------------------------------------------------------


class AckedStorage(PersistentStorage):
    """gmqtt's store of unacknowledged PUBLISHes, told what each one carries.

    gmqtt has no callback for a PUBACK: it drops the packet from this store.
    Set ``carrying`` just before ``publish``; ``on_ack(carried, sent_ns)``
    is called when the broker acknowledges that PUBLISH.
    """

    def __init__(self, on_ack: Callable[[Any, int], None]) -> None:
        super().__init__()
        self.on_ack = on_ack
        self.carrying: Any = None
        self.inflight: dict[int, tuple[Any, int]] = {}

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        if self.carrying is not None:
            self.inflight[mid] = (self.carrying, time.perf_counter_ns())
            self.carrying = None

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        sent = self.inflight.pop(mid, None)
        if sent is not None:
            self.on_ack(*sent)


class MqttPublishers:
    """A few QoS 1 publisher connections; a device always uses the same one.

    Counts what the broker acknowledged. That is receipt by the broker, not
    a commit by ingestd: the commit is read back from the database.
    """

    def __init__(
        self, host: str, port: int, connections: int, version: int, name: str
    ) -> None:
        self.host = host
        self.port = port
        self.version = MQTTv50 if version == 5 else MQTTv311
        self.acked_messages = 0
        self.acked_readings = 0
        self.broker_ack = new_histogram()  # PUBLISH to PUBACK, per message
        self._room = asyncio.Event()
        self._room.set()
        self._stores = [AckedStorage(self._acked) for _ in range(connections)]
        self._clients = [
            gmqtt.Client(f"{name}-{i}", clean_session=True, persistent_storage=s)
            for i, s in enumerate(self._stores)
        ]

    async def start(self) -> None:
        for client in self._clients:
            await client.connect(
                self.host, self.port, keepalive=60, version=self.version
            )

    @property
    def inflight(self) -> int:
        return sum(len(s.inflight) for s in self._stores)

    async def send(self, message: Message) -> None:
        """Publish at QoS 1; waits only while the connection has too many
        unacknowledged messages."""
        slot = message.device.index % len(self._clients)
        store = self._stores[slot]
        while len(store.inflight) >= MAX_INFLIGHT:
            self._room.clear()
            await self._room.wait()
        store.carrying = message
        self._clients[slot].publish(message.device.topic, message.payload, qos=1)

    def _acked(self, message: Message, sent_ns: int) -> None:
        self.acked_messages += 1
        self.acked_readings += message.readings
        record(self.broker_ack, (time.perf_counter_ns() - sent_ns) // 1000)
        if not self._room.is_set():
            self._room.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until the broker acknowledged everything published."""
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.inflight

    async def stop(self) -> None:
        for client in self._clients:
            await client.disconnect()


# -- HTTP -----------------------------------------------------------------


class HttpLink:
    """One keep-alive HTTP/1.1 connection, one request at a time.

    Smaller than a client library on purpose: the load generator shares
    the machine's two cores with the server it measures.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(
        self, path: str, body: bytes, content_type: str
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of the answer.

        A connection the server closed while idle is reopened and the
        request sent again: readings carry their time, so a request that
        did arrive the first time is stored once.
        """
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        for attempt in (1, 2):
            try:
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection(
                        self.host, self.port
                    )
                self._writer.write(head + body)
                return await self._answer()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _answer(self) -> tuple[int, dict[str, str], bytes]:
        assert self._reader is not None
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionResetError("server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class HttpPosters(Answers):
    """Keep-alive connections posting queued messages; 202 ends a message.

    A connection carries one request at a time and ingestd answers after the
    commit, so one connection moves at most about one request per flush
    interval plus commit (some 40 requests/s at the default 20 ms): give a
    high rate enough connections, or the queue, and with it the latency,
    grows. ``most_queued`` shows it. A 503 is honoured: the message waits
    Retry-After and is sent again, so push-back shows in the latency and
    nothing offered is dropped.
    """

    answer = "the 202"

    def __init__(self, host: str, port: int, connections: int) -> None:
        super().__init__()
        self.links = [HttpLink(host, port) for _ in range(connections)]
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work(link)) for link in self.links]

    async def send(self, message: Message) -> None:
        self.queue.put_nowait(message)
        if self.queue.qsize() > self.most_queued:
            self.most_queued = self.queue.qsize()

    async def _work(self, link: HttpLink) -> None:
        while True:
            message = await self.queue.get()
            try:
                await self._deliver(link, message)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.failed(message.device.id, repr(exc))
            finally:
                self.queue.task_done()

    async def _deliver(self, link: HttpLink, message: Message) -> None:
        device = message.device
        while True:
            status, headers, body = await link.post(
                device.path, message.payload, device.content_type
            )
            if status != 503:
                break
            self.retried += 1
            await asyncio.sleep(float(headers.get("retry-after", "1")))
        stored = int(orjson.loads(body)["stored"]) if status == 202 else None
        self.answered(message, str(status), stored, body)

    async def drain(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.queue.join(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for link in self.links:
            link.close()


# -- pacing ---------------------------------------------------------------


@dataclass
class Offered:
    """What the schedule handed to the senders."""

    messages: int = 0
    readings: int = 0
    seconds: float = 0.0
    behind_s: float = 0.0  # the furthest the senders ever fell behind


async def drive(
    devices: list[Device],
    rate: float,
    seconds: float,
    send: Callable[[Message], Awaitable[None]],
    readings_per_message: int | None = None,
) -> Offered:
    """Hand messages to ``send`` at ``rate`` readings/s, devices in turn.

    Each message is stamped when it is made, just before it is sent.
    """
    loop = asyncio.get_running_loop()
    offered = Offered()
    count = len(devices)
    turn = 0
    start = loop.time()
    while True:
        elapsed = loop.time() - start
        if elapsed >= seconds:
            break
        due = rate * elapsed
        if due - offered.readings > rate * offered.behind_s:
            offered.behind_s = (due - offered.readings) / rate
        while offered.readings < due:
            device = devices[turn % count]
            turn += 1
            message = device.message(fleet.now_us(), readings_per_message)
            await send(message)
            offered.messages += 1
            offered.readings += message.readings
        await asyncio.sleep(TICK_S)
    offered.seconds = loop.time() - start
    return offered


# -- reading back from the database ---------------------------------------

COUNT_READINGS = """
SELECT count(*) FROM ingestd.readings WHERE starts_with(device_id, $1)
"""

READING_LATENCIES = """
SELECT (extract(epoch FROM stored_at - ts) * 1000000)::bigint
FROM ingestd.readings
WHERE starts_with(device_id, $1) AND transport = $2
"""

COMMIT_SPAN = """
SELECT extract(epoch FROM max(stored_at) - min(ts))::float8
FROM ingestd.readings WHERE starts_with(device_id, $1)
"""


async def wait_committed(
    conn: asyncpg.Connection, prefix: str, expected: int, quiet_s: float = 10.0
) -> int:
    """How many readings of the devices named ``prefix...`` are committed.

    Waits until ``expected`` are, or the count stood still for ``quiet_s``.
    """
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        count = int(await conn.fetchval(COUNT_READINGS, prefix))
        if count >= expected or time.monotonic() > deadline:
            return count
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since > quiet_s:
            return count
        await asyncio.sleep(0.2)


async def latencies_from_rows(
    conn: asyncpg.Connection, prefix: str, transport: str
) -> tuple[HdrHistogram, int]:
    """``stored_at - ts`` of each reading, and how many came out negative.

    A negative latency means the clock stepped back during the run; such
    readings are counted at the histogram's lowest value.
    """
    histogram = new_histogram()
    negative = 0
    async with conn.transaction():
        async for row in conn.cursor(READING_LATENCIES, prefix, transport):
            micros = row[0]
            if micros < 0:
                negative += 1
            record(histogram, micros)
    return histogram, negative


async def _effects_settled(dsn: str, quiet_s: float = 2.0) -> dict[str, int]:
    """The rules' effects once the dispatcher is done with the run.

    It evaluates after each commit, so its last writes can follow the last
    reading's commit; the counts are read until they stand still.
    """
    conn = await asyncpg.connect(dsn)
    try:
        last: dict[str, int] = {}
        since = time.monotonic()
        deadline = since + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            counts = await rule_set.effects(conn)
            if counts != last:
                last, since = counts, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
            await asyncio.sleep(0.2)
        return last
    finally:
        await conn.close()


# -- the local stack for self-contained runs --------------------------------


@dataclass
class LocalStack:
    """Embedded PostgreSQL, a broker and ingestd, started for one run."""

    database: str
    pg_dir: Path = BENCH_PG
    pipeline: dict[str, float] = field(default_factory=dict)
    broker_kind: str = "mosquitto"  # or "amqtt", MQTT 3.1.1 only
    workdir: Path | None = None
    dsn: str = ""
    pg_uri: str = ""
    broker: harness.Mosquitto | harness.Amqtt | None = None
    server: harness.IngestdProcess | None = None
    http_port: int = 0
    admin_port: int = 0
    coap_port: int = 0  # UDP and TCP
    _own_workdir: bool = False

    @property
    def mqtt_version(self) -> int:
        return 3 if self.broker_kind == "amqtt" else 5

    @property
    def broker_port(self) -> int:
        assert self.broker is not None
        return self.broker.port

    async def start_database(self) -> str:
        """A fresh database, migrated, so that it can be seeded first."""
        from ingestd.storage import database

        if not self.pg_uri:
            self.pg_uri = await asyncio.to_thread(
                harness.embedded_postgres, self.pg_dir
            )
        conn = await asyncpg.connect(self.pg_uri)
        try:
            # A psql left open on the last run's database would block DROP
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                self.database,
            )
        finally:
            await conn.close()
        self.dsn = await harness.create_database(self.pg_uri, self.database)
        conn = await asyncpg.connect(self.dsn)
        try:
            await database.migrate(conn)
        finally:
            await conn.close()
        return self.dsn

    def start_broker(self) -> None:
        if self.broker_kind == "amqtt":
            self.broker = harness.Amqtt().start()
        else:
            self.broker = harness.Mosquitto().start()

    def start_server(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="ingestd-bench-"))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.admin_port = harness.free_port(), harness.free_port()
        self.coap_port = harness.free_port()
        config = harness.config_text(
            self.dsn, self.broker_port, self.http_port, self.admin_port,
            self.workdir, mqtt_version=self.mqtt_version,
            client_id=f"ingestd-{self.database}", pipeline=self.pipeline,
            coap_port=self.coap_port,
        )  # fmt: skip
        self.server = harness.IngestdProcess(
            config, self.workdir, self.http_port, self.admin_port
        )
        self.server.start()

    async def start(
        self, seed: Callable[[asyncpg.Connection], Awaitable[Any]] | None = None
    ) -> None:
        """Database, broker, server; ``seed`` writes to the database first."""
        await self.start_database()
        if seed is not None:
            conn = await asyncpg.connect(self.dsn)
            try:
                await seed(conn)
            finally:
                await conn.close()
        try:
            self.start_broker()
            self.start_server()
        except BaseException:
            self.stop()
            raise
        # Healthy means connected; give the SUBSCRIBE a moment to be granted
        await asyncio.sleep(0.5)

    def stop(self) -> int | None:
        """Stop ingestd (SIGTERM) and the broker; ingestd's exit status."""
        code = None
        if self.server is not None:
            code = self.server.stop()
            self.server = None
        if self.broker is not None:
            self.broker.stop()
            data = getattr(self.broker, "data", None)
            if isinstance(self.broker, harness.Mosquitto) and data is not None:
                shutil.rmtree(data, ignore_errors=True)
            self.broker = None
        if self._own_workdir and self.workdir is not None and code == 0:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    def server_pipeline(self) -> dict[str, float]:
        """The batching settings the running server read from its config."""
        from ingestd import config

        assert self.server is not None
        p = config.load(self.server.config).pipeline
        return {
            "flush_rows": p.flush_rows,
            "flush_interval_ms": p.flush_interval_ms,
            "ring_capacity": p.ring_capacity,
        }

    def server_cpu_s(self) -> float | None:
        """CPU seconds ingestd has used (user and system), where /proc says."""
        if self.server is None or self.server.proc is None:
            return None
        try:
            fields = Path(f"/proc/{self.server.proc.pid}/stat").read_text()
        except OSError:
            return None
        # After the parenthesised command name: utime and stime, fields 14-15
        utime, stime = fields.rpartition(")")[2].split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def server_log_tail(self, chars: int = 3000) -> str:
        if self.workdir is None:
            return ""
        log = self.workdir / "ingestd.log"
        return log.read_text()[-chars:] if log.exists() else ""


# -- the command ----------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    load = parser.add_argument_group("load")
    load.add_argument("--via", choices=VIAS, default="mqtt")
    load.add_argument("--devices", type=int, default=300)
    load.add_argument(
        "--rate", type=float, default=5000.0, help="readings per second offered"
    )
    load.add_argument("--seconds", type=float, default=30.0)
    load.add_argument("--readings-per-message", type=int, default=10)
    load.add_argument(
        "--publishers", type=int, default=4, help="MQTT publisher connections"
    )
    load.add_argument(
        "--connections",
        type=int,
        default=64,
        help="HTTP keep-alive connections, or CoAP client endpoints "
        "(WebSocket: one connection per device)",
    )
    load.add_argument("--seed", default="1", help="fleet seed (values, not times)")
    load.add_argument("--name", help="result name (default: load-<via>-<time>)")
    load.add_argument("--results-dir", type=Path, default=RESULTS)

    target = parser.add_argument_group("a running server")
    target.add_argument("--host", default="127.0.0.1")
    target.add_argument("--broker-port", type=int)
    target.add_argument("--http-port", type=int, help="also for --via websocket")
    target.add_argument("--coap-port", type=int, help="UDP, and TCP for coap+tcp")
    target.add_argument(
        "--dsn", help="its database, to count commits and read stored_at - ts"
    )
    target.add_argument("--mqtt-version", type=int, choices=(3, 5), default=5)

    own = parser.add_argument_group("self-contained (default without ports)")
    own.add_argument("--self-contained", action="store_true")
    own.add_argument("--database", default="ingestd_bench")
    own.add_argument("--pg-dir", type=Path, default=BENCH_PG)
    own.add_argument(
        "--pg-uri", help="a PostgreSQL server to use instead of the embedded one"
    )
    own.add_argument("--flush-rows", type=int)
    own.add_argument("--flush-interval-ms", type=float)
    own.add_argument("--ring-capacity", type=int)
    own.add_argument(
        "--rules",
        action="store_true",
        help="seed orders, bindings for every device and one rule of each "
        "kind before ingestd starts (bench/rule_set.py)",
    )


PORT_OPTIONS = {
    "mqtt": "--broker-port",
    "http": "--http-port",
    "websocket": "--http-port",
    "coap": "--coap-port",
    "coap+tcp": "--coap-port",
}


def main(args: argparse.Namespace) -> int:
    import uvloop

    ports = (args.broker_port, args.http_port, args.coap_port)
    if args.self_contained and any(ports):
        print(
            "bench load: --self-contained starts its own broker and server; "
            "drop --broker-port/--http-port/--coap-port, or drop --self-contained",
            file=sys.stderr,
        )
        return 2
    if not args.self_contained and all(port is None for port in ports):
        args.self_contained = True
    if args.rules and not args.self_contained:
        print(
            "bench load: --rules seeds a fresh database before ingestd starts, "
            "so it needs a self-contained run (drop the ports)",
            file=sys.stderr,
        )
        return 2
    if not args.self_contained:
        needed = PORT_OPTIONS[args.via]
        if getattr(args, needed[2:].replace("-", "_")) is None:
            print(f"bench load: --via {args.via} needs {needed}", file=sys.stderr)
            return 2
    return uvloop.run(_load(args))


async def _load(args: argparse.Namespace) -> int:
    started = datetime.now(timezone.utc)
    name = args.name or f"load-{args.via}-{started:%Y%m%d-%H%M%S}"
    prefix = f"ld{started:%H%M%S}-{os.getpid()}-"  # this run's devices
    # The devices' scripts fill the run, so each run holds every kind of
    # incident the rules of --rules look for, whatever its length
    devices = fleet.build(
        args.devices, args.seed, prefix=prefix, via=args.via,
        scenario_s=args.seconds,
    )  # fmt: skip
    stack: LocalStack | None = None
    target = Target(
        args.host, args.broker_port, args.http_port, args.mqtt_version, args.dsn,
        coap_port=args.coap_port,
    )  # fmt: skip
    if args.self_contained:
        knobs = {
            "flush_rows": args.flush_rows,
            "flush_interval_ms": args.flush_interval_ms,
            "ring_capacity": args.ring_capacity,
        }
        stack = LocalStack(
            args.database,
            args.pg_dir,
            pipeline={k: v for k, v in knobs.items() if v is not None},
            pg_uri=args.pg_uri or "",
        )
        where = "given" if args.pg_uri else f"pgserver, {_shown(args.pg_dir)}"
        print(f"starting PostgreSQL ({where}), Mosquitto and ingestd ...")
        seeded: dict[str, int] = {}

        async def seed(conn: asyncpg.Connection) -> None:
            seeded.update(await rule_set.seed(conn, devices, args.seconds))
            print(
                f"seeded {seeded['orders']} orders, {seeded['bindings']} "
                f"bindings and {seeded['rules']} rules"
            )

        await stack.start(seed if args.rules else None)
        target = Target(
            "127.0.0.1", stack.broker_port, stack.http_port, stack.mqtt_version,
            stack.dsn, stack.server_pipeline(), stack.coap_port,
        )  # fmt: skip

    exit_code: int | None = 0
    cpu_before = stack.server_cpu_s() if stack is not None else None
    try:
        result = await _run(args, name, prefix, target, devices)
        cpu_after = stack.server_cpu_s() if stack is not None else None
    finally:
        if stack is not None:
            exit_code = stack.stop()
    if cpu_before is not None and cpu_after is not None:
        result["server_cpu"] = _cpu(cpu_after - cpu_before, result)
    if stack is not None:
        result["server_exit_status"] = exit_code
        if exit_code != 0:
            print(f"ingestd exited with {exit_code}:\n{stack.server_log_tail()}")

    result.update(
        command=shlex.join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        name=name,
        timestamp=started.isoformat(),
        machine={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{name}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"result: {_shown(path)}")
    lost = result["readings"].get("lost")
    return 1 if lost or exit_code not in (0, None) else 0


@dataclass
class Target:
    """Where the load goes, and the database that shows what was committed."""

    host: str
    broker_port: int | None
    http_port: int | None
    mqtt_version: int
    dsn: str | None
    pipeline: dict[str, float] | None = None  # as the server runs, when known
    coap_port: int | None = None


async def _run(
    args: argparse.Namespace,
    name: str,
    prefix: str,
    target: Target,
    devices: list[Device],
) -> dict[str, Any]:
    print(
        f"load via {args.via}: {args.devices} devices, {args.rate:,.0f} readings/s, "
        f"{args.seconds:g} s, {args.readings_per_message} readings per message"
    )
    sender = await _open_sender(args, name, target, devices)
    first_send = time.monotonic()
    try:
        offered = await drive(
            devices, args.rate, args.seconds, sender.send, args.readings_per_message
        )
        if not await sender.drain(DRAIN_TIMEOUT_S):
            print(f"warning: not all acknowledged after {DRAIN_TIMEOUT_S:g} s")
        span = time.monotonic() - first_send
    finally:
        await sender.stop()

    result = _parameters(args, target)
    result.update(_sender_counts(offered, sender))
    readings = result["readings"]
    committed_latency: HdrHistogram | None = None
    if target.dsn:
        conn = await asyncpg.connect(target.dsn)
        try:
            readings["committed"] = await wait_committed(conn, prefix, offered.readings)
            span = float(await conn.fetchval(COMMIT_SPAN, prefix) or span)
            committed_latency, negative = await latencies_from_rows(
                conn, prefix, args.via
            )
        finally:
            await conn.close()
        if negative:
            readings["negative_latency_readings"] = negative
        if args.rules:
            result["effects"] = await _effects_settled(target.dsn)
    elif isinstance(sender, Answers):
        readings["committed"] = sender.stored_readings
    result["rules"] = args.rules
    if "committed" in readings:
        readings["lost"] = offered.readings - readings["committed"]

    # The latency of record: the answer where it follows the commit (HTTP,
    # CoAP, WebSocket), stored_at - ts for MQTT
    histogram = committed_latency
    if isinstance(sender, Answers):
        histogram = sender.latency
        source = f"until {sender.answer}, which follows the commit"
        result["latency_ms"] = {"source": source}
        if committed_latency is not None:
            result["commit_latency_ms"] = {
                "source": "stored_at - ts",
                **percentiles(committed_latency),
            }
    elif histogram is not None:
        result["latency_ms"] = {"source": "stored_at - ts"}
    else:
        result["latency_ms"] = {"source": "unknown: no --dsn to read stored_at - ts"}
    if histogram is not None:
        result["latency_ms"].update(percentiles(histogram))
        result["hdr_histogram_us"] = histogram.encode().decode("ascii")

    committed = readings.get("committed")
    result["rates"] = {
        "target_readings_per_s": args.rate,
        "offered_readings_per_s": round(offered.readings / offered.seconds, 1),
        "sustained_readings_per_s": (
            round(committed / span, 1) if committed is not None and span else None
        ),
        "senders_behind_max_s": round(offered.behind_s, 4),
    }
    _print_summary(result)
    return result


Sender = MqttPublishers | HttpPosters | CoapPosters | WebSocketLinks


def _cpu(seconds: float, result: dict[str, Any]) -> dict[str, Any]:
    """ingestd's CPU over the run and its drain (effects included), per reading.

    Less noisy than latency on a shared machine: near saturation a little
    more work moves the latency a lot, the CPU per reading only a little.
    """
    committed = result["readings"].get("committed") or 0
    out: dict[str, Any] = {"seconds": round(seconds, 2)}
    if committed:
        out["us_per_reading"] = round(seconds / committed * 1e6, 2)
    print(
        f"ingestd used {seconds:.1f} CPU s"
        + (f", {out['us_per_reading']:.1f} µs per reading" if committed else "")
    )
    return out


async def _open_sender(
    args: argparse.Namespace, name: str, target: Target, devices: list[Device]
) -> Sender:
    """The sender for ``--via``, connected and ready to send."""
    if args.via == "mqtt":
        assert target.broker_port is not None
        publishers = MqttPublishers(
            target.host, target.broker_port, args.publishers,
            target.mqtt_version, name,
        )  # fmt: skip
        await publishers.start()
        return publishers
    if args.via == "http":
        assert target.http_port is not None
        posters = HttpPosters(target.host, target.http_port, args.connections)
        posters.start()
        return posters
    sender: CoapPosters | WebSocketLinks
    if args.via == "websocket":
        assert target.http_port is not None
        sender = WebSocketLinks(target.host, target.http_port, devices)
    else:
        assert target.coap_port is not None
        tcp = args.via == "coap+tcp"
        sender = CoapPosters(target.host, target.coap_port, args.connections, tcp)
    try:
        await sender.start()
    except BaseException:
        await sender.stop()
        raise
    return sender


def _parameters(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    mqtt = args.via == "mqtt"
    connections = args.devices if args.via == "websocket" else args.connections
    return {
        "parameters": {
            "via": args.via,
            "devices": args.devices,
            "rate": args.rate,
            "seconds": args.seconds,
            "readings_per_message": args.readings_per_message,
            "publishers": args.publishers if mqtt else None,
            "connections": None if mqtt else connections,
            "mqtt_version": target.mqtt_version if mqtt else None,
            "seed": args.seed,
            "self_contained": args.self_contained,
            "pipeline": target.pipeline,
        }
    }


def _sender_counts(offered: Offered, sender: Sender) -> dict[str, Any]:
    readings: dict[str, Any] = {"sent": offered.readings}
    messages: dict[str, Any] = {"sent": offered.messages}
    if isinstance(sender, MqttPublishers):
        readings["acknowledged_by_broker"] = sender.acked_readings
        messages["acknowledged_by_broker"] = sender.acked_messages
        messages["broker_puback_ms"] = percentiles(sender.broker_ack)
    else:
        readings["acknowledged"] = sender.stored_readings
        messages.update(
            answered=sender.answered_messages,
            statuses=dict(sorted(sender.statuses.items())),
            retried_after_503=sender.retried,
            failed=sender.failures,
            errors=sender.errors,
        )
        if isinstance(sender, HttpPosters):
            messages["most_queued"] = sender.most_queued
        else:
            messages["most_inflight"] = sender.most_inflight
        if isinstance(sender, WebSocketLinks):
            messages["reconnected"] = sender.reopened
    return {"readings": readings, "messages": messages}


def _print_summary(result: dict[str, Any]) -> None:
    readings, rates, latency = result["readings"], result["rates"], result["latency_ms"]
    print(
        f"sent {readings['sent']:,} readings in {result['messages']['sent']:,} "
        f"messages (offered {rates['offered_readings_per_s']:,.1f}/s; senders at "
        f"most {rates['senders_behind_max_s'] * 1000:.0f} ms behind schedule)"
    )
    if "committed" in readings:
        sustained = rates["sustained_readings_per_s"] or 0.0
        print(
            f"committed {readings['committed']:,} (lost {readings['lost']:,}), "
            f"sustained {sustained:,.1f} readings/s"
        )
    if "p50" in latency:
        print(
            f"latency ({latency['source']}), {latency['count']:,} readings:\n"
            f"  P50 {latency['p50']:.2f} ms   P99 {latency['p99']:.2f} ms   "
            f"P99.9 {latency['p99_9']:.2f} ms   max {latency['max']:.2f} ms"
        )
    else:
        print(f"latency: {latency['source']}")
    if "acknowledged_by_broker" in readings and "committed" not in readings:
        puback = result["messages"]["broker_puback_ms"]
        print(
            f"the broker acknowledged {readings['acknowledged_by_broker']:,} "
            f"readings (PUBACK P50 {puback['p50']:.2f} ms); give --dsn to count "
            "what ingestd committed"
        )
    if "commit_latency_ms" in result:
        c = result["commit_latency_ms"]
        print(
            f"  send-to-commit (stored_at - ts): P50 {c['p50']:.2f} ms   "
            f"P99 {c['p99']:.2f} ms   max {c['max']:.2f} ms"
        )
    effects = result.get("effects")
    if effects is not None:
        print(
            f"rules wrote {effects['outbox']:,} order updates ({effects['tickets']:,}"
            f" tickets, {effects['downtime']:,} downtime intervals, "
            f"{effects['stock_levels']:,} stock levels)"
        )
    messages = result["messages"]
    if messages.get("failed"):
        print(f"{messages['failed']:,} messages failed; first: {messages['errors'][0]}")
    queued = messages.get("most_queued", 0)
    connections = result["parameters"]["connections"] or 0
    if queued > connections:
        print(
            f"note: up to {queued:,} messages waited for one of the "
            f"{connections} connections; that wait is in the latency "
            "(--connections raises it)"
        )
    inflight = messages.get("most_inflight", 0)
    if result["parameters"]["via"] == "coap" and inflight > connections:
        print(
            f"note: up to {inflight:,} requests were open on {connections} "
            "endpoints; over UDP an endpoint has one confirmable request out "
            "at a time (NSTART = 1) and aiocoap queues the others, a wait that "
            "is in the latency (--connections raises it)"
        )


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
