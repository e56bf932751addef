"""Faults with real processes: nothing acknowledged is lost, nothing stored twice.

Each test breaks one thing around a running ingestd (the process itself,
PostgreSQL, the broker, the links to them, or its capacity) while devices
stream, then checks every acknowledged reading against the database.

Acknowledged means: for MQTT, the broker's PUBACK to the publishing device
(from then on the reading is the broker's and ingestd's to keep); for HTTP,
a 202. Readings carry their own time, so a redelivered one is the same row
(the convention "Identity of a reading"): a test counts rows and requires
exactly the acknowledged set, no fewer and no more. Each MQTT message also
carries one reading *without* a device time, numbered in its value. It must
never be lost; it may be stored twice only where the convention allows it,
when a committed message's PUBACK never reached the broker (a kill -9, a
broken broker link), and the tests print how often that happened. Where the
broker link stays whole (PostgreSQL faults, overload) it must not happen.

Every test prints one ``fault:`` line with its figures (``pytest -s``).
Durations follow DESIGN.md: about a minute per test at most, offered rates
relative to a sustainable rate measured in the same test.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import harness

from .conftest import ROOT, Deployment, deploy
from .http_client import RawHttp
from .link_proxy import LinkProxy
from .mqtt_publisher import Publisher, wait_for

pytestmark = pytest.mark.faults


# -- real parts a test may break -------------------------------------------


class PrivatePostgres:
    """pgserver's PostgreSQL in a data directory of its own, so that a test
    can stop and start it without touching the shared test server."""

    def __init__(self, data: Path) -> None:
        import pgserver

        self._server = pgserver.get_server(str(data), cleanup_mode=None)
        info = self._server.get_postmaster_info()
        self.data = self._server.pgdata
        self.socket_dir = info.socket_dir
        self.uri = str(self._server.get_uri())
        # It listens on a Unix socket only; the link proxy forwards TCP to it
        self.socket = f"{info.socket_dir}/.s.PGSQL.{info.port}"
        self.running = True

    def _pg_ctl(self, args: list[str]) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(args, pgdata=self.data, user=self._server.system_user, timeout=60)

    def stop(self) -> None:
        """Fast shutdown: open sessions are ended, as an operator's restart does."""
        self._pg_ctl(["-w", "-m", "fast", "stop"])
        self.running = False

    def start(self) -> None:
        self._pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}",
             "-l", str(self.data / "log"), "start"]
        )  # fmt: skip
        self.running = True

    def remove(self) -> None:
        try:
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.data.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    # Not under pytest's temporary directory: a concurrent pytest session
    # resets its root to mode 0700, and PostgreSQL runs as another user here
    home = ROOT / ".ingestd"
    home.mkdir(exist_ok=True)
    pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="fault-pg-", dir=home)) / "data")
    yield pg
    pg.remove()


async def _serve(
    name: str,
    dsn: str,
    direct_dsn: str,
    mqtt_port: int,
    tmp: Path,
    pipeline: dict[str, float] | None = None,
    database: str = "",
) -> Deployment:
    """Start ingestd on ``dsn`` (maybe through a proxy); checks use ``direct_dsn``."""
    http_port, admin_port = harness.free_port(), harness.free_port()
    text = harness.config_text(
        dsn, mqtt_port, http_port, admin_port, tmp / "state",
        client_id=f"ingestd-{name}", pipeline=pipeline,
    )  # fmt: skip
    text = text.replace("[database]\n", "[database]\n" + database, 1)
    server = harness.IngestdProcess(text, tmp, http_port, admin_port)
    await asyncio.to_thread(server.start)
    return Deployment(direct_dsn, server, mqtt_port)


COPY = b"FROM STDIN"  # asyncpg's COPY statement, on its way to PostgreSQL


def _via(proxy: LinkProxy, name: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}"


# -- devices ----------------------------------------------------------------


async def _stream(
    pub: Publisher,
    n: int,
    rate: float,
    devices: int,
    base_ms: int,
    prefix: str = "crash",
    first: int = 0,
    until: asyncio.Event | None = None,
) -> int:
    """Publish ``n`` QoS 1 messages of 3 timed readings each at about
    ``rate``/s, and as many of one untimed reading to ``<prefix>-untimed``
    whose value numbers it (stored at receipt time, so a second delivery
    would be a second row). ``first`` numbers the messages of a later phase.
    With ``until``, it goes on past ``n`` until that is set (faults take
    longer on a busy machine); returns how many messages it sent."""
    started = time.monotonic()
    k = 0
    while k < n or (until is not None and not until.is_set()):
        i = first + k
        payload = {"ts": base_ms + i, "temp": 4.0 + i % 7, "hum": 50, "door": False}
        pub.publish(f"devices/{prefix}-{i % devices}/telemetry", orjson.dumps(payload))
        pub.publish(f"devices/{prefix}-untimed/telemetry", orjson.dumps({"seq": i}))
        k += 1
        if k % 50 == 0:
            ahead = k / rate - (time.monotonic() - started)
            await asyncio.sleep(max(ahead, 0))
    return k


async def _until_subscribed(d: Deployment, pub: Publisher) -> None:
    """Publish a probe until ingestd stores it. Its health turns green on
    CONNACK, before the broker has its subscription; what is published
    in between reaches no one, which is no fault of ingestd's."""

    async def arrived() -> object:
        pub.publish("devices/probe/telemetry", b'{"up": 1}')
        return await d.fetchval(
            "SELECT 1 FROM ingestd.readings WHERE device_id = 'probe' LIMIT 1"
        )

    assert await wait_for(arrived, timeout=30, every=0.2), "never subscribed"
    await asyncio.sleep(0.2)
    pub.acked = 0  # count the test's own messages only


@dataclass
class Tally:
    """What the database holds of a stream of ``messages`` MQTT messages."""

    messages: int
    timed: int  # rows of timed readings (3 per message expected)
    untimed_kept: int  # distinct untimed readings
    untimed_rows: int

    @property
    def lost(self) -> int:
        return max(3 * self.messages - self.timed, 0) + (
            self.messages - self.untimed_kept
        )

    @property
    def extra(self) -> int:
        """Timed rows beyond the acknowledged set (a wrong or second time)."""
        return max(self.timed - 3 * self.messages, 0)

    @property
    def untimed_twice(self) -> int:
        return self.untimed_rows - self.untimed_kept

    def line(self, fault: str, survived: int) -> str:
        return (
            f"fault: {fault}: survived {survived}; readings acknowledged "
            f"{4 * self.messages}, lost {self.lost}, duplicated {self.extra} "
            f"timed / {self.untimed_twice} untimed"
        )


async def _tally(d: Deployment, prefix: str, messages: int) -> Tally:
    """Wait until all ``messages`` are stored (or 120 s: a backlog on a
    machine busy with other tests drains slowly), then count."""

    async def count() -> Tally:
        row = (await d.fetch(
            "SELECT count(*) FILTER (WHERE device_id <> $2) AS timed,"
            " count(DISTINCT value_num) FILTER (WHERE device_id = $2) AS kept,"
            " count(*) FILTER (WHERE device_id = $2) AS untimed "
            "FROM ingestd.readings WHERE device_id LIKE $1",
            f"{prefix}-%", f"{prefix}-untimed",
        ))[0]  # fmt: skip
        return Tally(messages, row["timed"], row["kept"], row["untimed"])

    async def complete() -> Tally | None:
        tally = await count()
        return tally if tally.lost == 0 else None

    return await wait_for(complete, timeout=120, every=0.5) or await count()


class HttpFleet:
    """Devices posting timed readings over HTTP keep-alive, one request in
    flight each. A 503 (or a lost connection) is retried with the same
    readings at the device's next tick, as a device with a local buffer
    does; so the attempt rate is what the fleet offers, whatever the answers.

    Devices keep their own clocks, as a real fleet does: a new rate starts
    each one at a random point of its period, and every period varies by
    10 %. Without that, the 0.6 s period of the overload squeezed all 200
    devices into 0.6 s, kept them there at the quarter load's 5 s period,
    and each tick offered 10,000 readings at once to a ring of 5,000: half
    the posts were refused long after the backlog was written.
    """

    def __init__(self, port: int, prefix: str, devices: int, per_post: int) -> None:
        self.port = port
        self.prefix = prefix
        self.devices = devices
        self.per_post = per_post
        self.base_ms = int(time.time() * 1000) - 3_600_000
        self.rate: float | None = None  # posts per second; None: back to back
        self.acked = 0  # readings answered 202
        self.pushed_back = 0  # 503s
        self.attempts = 0
        self.link_errors = 0
        self.sent_at: list[float] = []  # monotonic time of every attempt
        self._clocks = random.Random(port)
        self._stop = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._device(k)) for k in range(self.devices)
        ]

    async def stop(self) -> None:
        """Stop offering; wait for the answers to requests in flight."""
        self._stop = True
        await asyncio.gather(*self._tasks)

    async def cancel(self) -> None:
        """End at once (a test that failed half-way)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _device(self, k: int) -> None:
        link: RawHttp | None = None
        path = f"/v1/devices/{self.prefix}-{k}/telemetry"
        seq = 0
        tick = time.monotonic()
        paced_at: float | None = None  # the rate this device's clock is set to
        try:
            while not self._stop:
                start = self.base_ms + seq * self.per_post
                body = orjson.dumps(
                    [{"ts": start + j, "load": float(j)} for j in range(self.per_post)]
                )
                self.attempts += 1
                self.sent_at.append(time.monotonic())
                try:
                    link = link or await RawHttp.open(self.port)
                    link.send(path, body)
                    status, _, answer = await link.response(timeout=120)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    if isinstance(exc, TimeoutError):
                        raise
                    self.link_errors += 1
                    if link is not None:
                        await link.close()
                    link = None
                    status, answer = 0, {}
                if status == 202:
                    assert answer["stored"] == self.per_post, answer
                    self.acked += self.per_post
                    seq += 1
                elif status == 503:
                    self.pushed_back += 1
                elif status:
                    raise AssertionError(f"unexpected {status}: {answer}")
                if self.rate is None:
                    await asyncio.sleep(0 if status == 202 else 0.2)
                    tick = time.monotonic()
                else:
                    period = self.devices / self.rate
                    if paced_at != self.rate:
                        paced_at = self.rate
                        tick = time.monotonic() + self._clocks.uniform(0, period)
                    else:
                        period *= self._clocks.uniform(0.9, 1.1)
                        tick = max(tick + period, time.monotonic() - 1)
                    await asyncio.sleep(max(tick - time.monotonic(), 0))
        finally:
            if link is not None:
                await link.close()

    async def stored(self, d: Deployment) -> int:
        return int(
            await d.fetchval(  # type: ignore[arg-type]
                "SELECT count(*) FROM ingestd.readings WHERE device_id LIKE $1",
                f"{self.prefix}-%",
            )
        )


def _admin(d: Deployment, path: str) -> bytes:
    url = f"http://127.0.0.1:{d.server.admin_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return bytes(answer.read())
    except urllib.error.HTTPError as exc:  # /health answers 503 when unwell
        return bytes(exc.read())


async def _health(d: Deployment) -> dict[str, Any]:
    return dict(orjson.loads(await asyncio.to_thread(_admin, d, "/health")))


async def _pushbacks(d: Deployment, transport: str) -> float:
    text = (await asyncio.to_thread(_admin, d, "/metrics")).decode()
    key = f'ingestd_pushback_total{{transport="{transport}"}} '
    for line in text.splitlines():
        if line.startswith(key):
            return float(line[len(key) :])
    return 0.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _log_count(d: Deployment, needle: str) -> int:
    return d.server.log.read_text().count(needle)


# -- the process dies -------------------------------------------------------


async def test_kill_9_repeatedly_mid_stream_loses_nothing(
    pg_uri: str, run_id: str, tmp_path: Path
) -> None:
    broker = harness.Mosquitto().start()
    d = await deploy(pg_uri, f"t_crash_{run_id}", broker, tmp_path)
    n, kills = 20_000, 5
    try:
        pub = await Publisher("crash-pub").connect(broker.port)
        await _until_subscribed(d, pub)
        base = int(time.time() * 1000) - 3_600_000
        faulted = asyncio.Event()
        streaming = asyncio.create_task(_stream(pub, n, 2000, 40, base, until=faulted))

        # Kill it while the stream runs, restarting each time
        for _ in range(kills):
            await asyncio.sleep(1.5)
            assert d.server.proc is not None
            d.server.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(d.server.proc.wait)
            d.server.proc = None
            await asyncio.sleep(0.3)
            await asyncio.to_thread(d.server.start)
        await asyncio.sleep(1.0)
        faulted.set()

        n = await streaming
        await pub.wait_acked(2 * n, timeout=60)
        await pub.close()
        tally = await _tally(d, "crash", n)
        print(tally.line("kill -9 of ingestd", kills))
        assert (tally.lost, tally.extra) == (0, 0)
    finally:
        code = await asyncio.to_thread(d.server.stop)
        broker.stop()
    assert code == 0


# Without the drain before DISCONNECT (transports/mqtt.py, stop), the last
# PUBACKs can be lost to a connection reset and the untimed readings of the
# final flush come back as duplicates. The race is timing-bound: with the
# drain removed, this test failed in 1 of 3 runs (a standalone script at the
# same load, in 2 of 3); with it, never in the runs made so far.
async def test_sigterm_flushes_acknowledges_and_exits_0(
    pg_uri: str, run_id: str, tmp_path: Any
) -> None:
    broker = harness.Mosquitto().start()
    d = await deploy(pg_uri, f"t_sigterm_{run_id}", broker, tmp_path)
    n = 20000
    try:
        pub = await Publisher("term-pub").connect(broker.port)
        await _until_subscribed(d, pub)
        base = int(time.time() * 1000) - 3_600_000
        streaming = asyncio.create_task(_stream(pub, n, 5000, 10, base))
        await asyncio.sleep(1.0)
        code = await asyncio.to_thread(d.server.stop)  # SIGTERM mid-stream
        assert code == 0
        assert "stopped;" in d.server.log.read_text()
        await streaming
        await pub.wait_acked(2 * n)
        await asyncio.to_thread(d.server.start)

        # Acknowledged at the stop means not delivered again after it: no
        # untimed reading is stored twice
        tally = await _tally(d, "crash", n)
        await asyncio.sleep(1.0)  # a late redelivery would land by now
        tally = await _tally(d, "crash", n)
        print(tally.line("SIGTERM of ingestd", 1))
        assert (tally.lost, tally.extra, tally.untimed_twice) == (0, 0, 0)
        await pub.close()
    finally:
        await asyncio.to_thread(d.server.stop)
        broker.stop()


# -- PostgreSQL goes away -----------------------------------------------------


async def test_postgres_stopped_mid_stream_pushes_back_then_resumes(
    private_pg: PrivatePostgres, broker: harness.Mosquitto, run_id: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    name = f"t_pgstop_{run_id}"
    dsn = await harness.create_database(private_pg.uri, name)
    d = await _serve(
        name, dsn, dsn, broker.port, tmp_path,
        pipeline={"ring_capacity": 6000, "flush_rows": 1000,
                  "max_readings_per_message": 1000},
    )  # fmt: skip
    fleet = HttpFleet(d.server.http_port, "http-pgstop", devices=8, per_post=20)
    fleet.rate = 200.0
    n = 15_000
    try:
        pub = await Publisher(f"pgstop-pub-{run_id}").connect(broker.port)
        await _until_subscribed(d, pub)
        base = int(time.time() * 1000) - 3_600_000
        faulted = asyncio.Event()
        streaming = asyncio.create_task(
            _stream(pub, n, 1000, 20, base, "pgstop", until=faulted)
        )
        fleet.start()
        await asyncio.sleep(3.0)

        # Down for 8 s, mid-stream: senders must be held off, not dropped
        await asyncio.to_thread(private_pg.stop)
        committed = (await _health(d))["committed_readings"]
        refused_before = fleet.pushed_back
        mqtt_before = await _pushbacks(d, "mqtt")
        await asyncio.sleep(8.0)
        down = await _health(d)
        refused = fleet.pushed_back - refused_before
        mqtt_paused = await _pushbacks(d, "mqtt") - mqtt_before
        assert down["committed_readings"] == committed
        assert down["pending_readings"] >= 6000, down
        assert mqtt_paused > 0
        # A device that comes now is told to come back later
        probe = await RawHttp.open(d.server.http_port)
        status, headers, _ = await probe.post(
            "/v1/devices/probe/telemetry", b'{"temp": 1}'
        )
        await probe.close()
        assert (status, headers.get("retry-after")) == (503, "1")
        await asyncio.to_thread(private_pg.start)

        faulted.set()
        n = await streaming
        await pub.wait_acked(2 * n, timeout=60)
        await pub.close()
        await fleet.stop()
        tally = await _tally(d, "pgstop", n)
        stored = await fleet.stored(d)
        print(
            tally.line("PostgreSQL stopped for 8 s", 1)
            + f"; HTTP: {fleet.acked} acknowledged, {stored} stored, "
            f"{refused} 503s to the fleet while down (its devices wait for "
            f"answers held until the commit); MQTT paused {mqtt_paused:.0f}x"
        )
        assert (tally.lost, tally.extra, tally.untimed_twice) == (0, 0, 0)
        assert (stored, fleet.link_errors) == (fleet.acked, 0)
        assert _log_count(d, "flush of ") > 0  # it did fail and retry
    finally:
        if not private_pg.running:
            await asyncio.to_thread(private_pg.start)
        await fleet.cancel()
        await asyncio.to_thread(d.server.stop)


# -- the broker goes away ---------------------------------------------------


async def test_broker_restart_delivers_what_was_queued(
    pg_uri: str, run_id: str, tmp_path: Path
) -> None:
    broker = harness.Mosquitto().start()
    proxy = await LinkProxy(broker.port).start()  # ingestd's way to the broker
    name = f"t_brokerrestart_{run_id}"
    dsn = await harness.create_database(pg_uri, name)
    d = await _serve(name, dsn, dsn, proxy.port, tmp_path)
    base = int(time.time() * 1000) - 3_600_000
    live, queued = 6000, 6000
    try:
        # Live: restart the broker while ingestd has messages in flight
        pub = await Publisher(f"restart-pub1-{run_id}").connect(broker.port)
        await _until_subscribed(d, pub)
        await _stream(pub, live, 2000, 20, base, "restart")
        await pub.wait_acked(2 * live)
        await pub.close()
        proxy.cut()  # ingestd stays away from here on...
        await asyncio.to_thread(broker.restart)

        # ...while devices publish to its persistent session, and the broker
        # restarts once more with all of it queued
        pub = await Publisher(f"restart-pub2-{run_id}").connect(broker.port)
        await _stream(pub, queued, 2000, 20, base, "restart", first=live)
        await pub.wait_acked(2 * queued)
        await pub.close()
        await asyncio.to_thread(broker.restart)
        await asyncio.sleep(1.0)
        got = await d.fetchval(
            "SELECT count(*) FROM ingestd.readings WHERE device_id LIKE 'restart-%'"
            " AND device_id <> 'restart-untimed'"
            " AND ts >= 'epoch'::timestamptz + $1 * interval '1 ms'",
            float(base + live),
        )
        assert got == 0, "ingestd was not away"
        proxy.resume()

        # Back: it reconnects, resubscribes, gets the queue, and new messages
        pub = await Publisher(f"restart-pub3-{run_id}").connect(broker.port)
        await _stream(pub, 1000, 1000, 20, base, "restart", first=live + queued)
        await pub.wait_acked(2 * 1000)
        await pub.close()
        tally = await _tally(d, "restart", live + queued + 1000)
        print(tally.line("broker restarted (2x, one with a queue)", 2))
        assert (tally.lost, tally.extra) == (0, 0)
        assert _log_count(d, "connected to 127.0.0.1") >= 2
    finally:
        await asyncio.to_thread(d.server.stop)
        await proxy.close()
        broker.stop()


# -- a broken link ------------------------------------------------------------


async def _when_copying(proxy: LinkProxy, into: int = 100_000) -> None:
    """Return once a COPY has sent ``into`` bytes of its rows: the link then
    breaks in the middle of it (flushes here are several times that)."""
    proxy.watch(COPY)
    deadline = time.monotonic() + 20
    while proxy.sent_since(COPY) < into:
        assert time.monotonic() < deadline, "no COPY under way"
        await asyncio.sleep(0.002)


async def test_postgres_link_cut_and_stalled_mid_copy(
    private_pg: PrivatePostgres, broker: harness.Mosquitto, run_id: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    name = f"t_pglink_{run_id}"
    direct = await harness.create_database(private_pg.uri, name)
    proxy = await LinkProxy(private_pg.socket).start()
    proxy.throttle(4_000_000)  # a flush of 6,000 rows is ~0.2 s on the wire
    d = await _serve(
        name, _via(proxy, name), direct, broker.port, tmp_path,
        pipeline={"flush_rows": 20_000, "flush_interval_ms": 1500,
                  "ring_capacity": 200_000, "flush_timeout_s": 3},
        database="connect_timeout_s = 3\n",
    )  # fmt: skip
    n = 20_000
    faults = 0
    try:
        pub = await Publisher(f"pglink-pub-{run_id}").connect(broker.port)
        await _until_subscribed(d, pub)
        base = int(time.time() * 1000) - 3_600_000
        faulted = asyncio.Event()
        streaming = asyncio.create_task(
            _stream(pub, n, 1000, 20, base, "pglink", until=faulted)
        )

        # Cut twice mid-COPY (reset, then a plain close), down for a second
        for reset in (True, False):
            await _when_copying(proxy)
            assert proxy.cut(reset) > 0
            faults += 1
            await asyncio.sleep(1.0)
            proxy.resume()
        # Stall mid-COPY for less than the flush timeout, then for longer
        for seconds in (1.0, 6.0):
            await _when_copying(proxy)
            proxy.stall()
            faults += 1
            await asyncio.sleep(seconds)
            proxy.resume()
        faulted.set()
        n = await streaming
        await pub.wait_acked(2 * n, timeout=60)
        await pub.close()
        tally = await _tally(d, "pglink", n)
        print(tally.line("PostgreSQL link cut/stalled mid-COPY", faults))
        assert (tally.lost, tally.extra, tally.untimed_twice) == (0, 0, 0)
        # The long stall ended by the flush timeout, not by the link coming back
        assert _log_count(d, "no answer within 3.0s") >= 1
    finally:
        await asyncio.to_thread(d.server.stop)
        await proxy.close()


async def test_broker_link_cut_and_stalled_mid_stream(
    pg_uri: str, broker: harness.Mosquitto, run_id: str, tmp_path: Path
) -> None:
    proxy = await LinkProxy(broker.port).start()
    name = f"t_mqttlink_{run_id}"
    dsn = await harness.create_database(pg_uri, name)
    d = await _serve(name, dsn, dsn, proxy.port, tmp_path)
    n = 16_000
    faults = 0
    try:
        pub = await Publisher(f"mqttlink-pub-{run_id}").connect(broker.port)
        await _until_subscribed(d, pub)
        base = int(time.time() * 1000) - 3_600_000
        faulted = asyncio.Event()
        streaming = asyncio.create_task(
            _stream(pub, n, 1000, 20, base, "mqttlink", until=faulted)
        )
        for action, seconds in (("reset", 1.0), ("stall", 3.0), ("close", 1.0)):
            await asyncio.sleep(2.0)
            if action == "stall":
                proxy.stall()
            else:
                assert proxy.cut(reset=action == "reset") == 1
            faults += 1
            await asyncio.sleep(seconds)
            proxy.resume()
        faulted.set()
        n = await streaming
        await pub.wait_acked(2 * n, timeout=60)
        await pub.close()
        tally = await _tally(d, "mqttlink", n)
        print(tally.line("broker link cut/stalled mid-stream", faults))
        assert (tally.lost, tally.extra) == (0, 0)
        assert proxy.connections >= 3  # it came back by itself after each cut
    finally:
        await asyncio.to_thread(d.server.stop)
        await proxy.close()


# -- more than it can take ----------------------------------------------------


async def test_overload_at_twice_sustainable_stays_bounded_and_recovers(
    private_pg: PrivatePostgres, broker: harness.Mosquitto, run_id: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The database link is throttled, so the sustainable rate is low and
    measured first (saturated, back to back); then the fleet offers twice
    that for 30 s; then a quarter of it, which must be served normally."""
    name = f"t_overload_{run_id}"
    direct = await harness.create_database(private_pg.uri, name)
    proxy = await LinkProxy(private_pg.socket).start()
    proxy.throttle(1_000_000)
    capacity = 5000
    d = await _serve(
        name, _via(proxy, name), direct, broker.port, tmp_path,
        pipeline={"ring_capacity": capacity, "flush_rows": 2000,
                  "max_readings_per_message": 1000},
    )  # fmt: skip
    assert d.server.proc is not None
    pid = d.server.proc.pid
    fleet = HttpFleet(d.server.http_port, "load", devices=200, per_post=50)
    rss: list[tuple[float, float]] = []

    async def sample() -> None:
        while True:
            rss.append((time.monotonic(), _rss_mb(pid)))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    try:
        # 1. Sustainable: committed readings per second while saturated
        fleet.start()
        await asyncio.sleep(3.0)  # the ring fills
        c0, t0 = (await _health(d))["committed_readings"], time.monotonic()
        await asyncio.sleep(8.0)
        c1, t1 = (await _health(d))["committed_readings"], time.monotonic()
        sustainable = (c1 - c0) / (t1 - t0)
        assert sustainable > 0

        # 2. Twice that, offered for 30 s
        fleet.rate = 2 * sustainable / fleet.per_post
        started, attempts, refused = time.monotonic(), fleet.attempts, fleet.pushed_back
        overload_from = len(rss)
        await asyncio.sleep(30.0)
        elapsed = time.monotonic() - started
        offered = (fleet.attempts - attempts) * fleet.per_post / elapsed
        refused = fleet.pushed_back - refused
        during = [mb for _, mb in rss[overload_from:]]
        health = await _health(d)

        # 3. A quarter of it: once the backlog is written, every post is
        # answered 202 again, and all of it is stored
        fleet.rate = sustainable / 4 / fleet.per_post

        async def drained() -> bool:
            return bool((await _health(d))["pending_readings"] < capacity // 2)

        assert await wait_for(drained, timeout=30, every=0.5)
        # Devices refused during the overload send those readings at their
        # next tick, so 503s may linger briefly: watch 5 s windows for up to
        # 60 s, until one has none
        calm_refused, calm_from = -1, 0.0
        recovery_deadline = time.monotonic() + 60.0
        while calm_refused != 0 and time.monotonic() < recovery_deadline:
            before_window, calm_from = fleet.pushed_back, time.monotonic()
            await asyncio.sleep(5.0)
            calm_refused = fleet.pushed_back - before_window
        # The densest second of that last window: near 1/5 of the fleet's
        # 200 devices if their clocks are spread, near 200 if bunched
        calm = [t for t in fleet.sent_at if t >= calm_from]
        densest = max((sum(1 for u in calm if t <= u < t + 1) for t in calm), default=0)
        await fleet.stop()
        stored = await fleet.stored(d)

        baseline = rss[0][1]
        print(
            f"fault: overload: sustainable {sustainable:.0f} readings/s over a "
            f"1 MB/s database link; offered {offered:.0f}/s for {elapsed:.0f} s; "
            f"503s {refused}; pending at the end {health['pending_readings']} "
            f"(ring {capacity}); RSS MB start {baseline:.0f}, during overload "
            f"min {min(during):.0f} max {max(during):.0f}; after: "
            f"{fleet.acked} acknowledged, {stored} stored, lost "
            f"{fleet.acked - stored}; at a quarter load, last 5 s: 503s "
            f"{calm_refused}, {len(calm)} posts, densest second {densest}"
        )
        assert refused > 0  # pushed back
        assert health["pending_readings"] <= capacity + fleet.devices * fleet.per_post
        # Bounded: the ring of 5,000 readings costs a few MB. The overload
        # offers 30 s x sustainable more than is stored; kept in memory that
        # would be ~10^5 readings, well over 40 MB of growth.
        first, last = during[: len(during) // 3], during[-len(during) // 3 :]
        assert max(last) - max(first) < 20, during
        assert max(during) - baseline < 150, during
        # Recovered: a quarter load is served without push-back again
        assert calm_refused == 0, (calm_refused, refused, densest)
        assert (stored, fleet.link_errors) == (fleet.acked, 0)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        await fleet.cancel()
        await asyncio.to_thread(d.server.stop)
        await proxy.close()
