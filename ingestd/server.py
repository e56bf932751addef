"""One ingestd process: its listeners, pipeline and background tasks.

Start-up: find PostgreSQL, migrate, open the pool, start the batcher and the
dispatcher, then the listeners. Stop (SIGTERM, SIGINT): stop taking input,
flush and acknowledge what was taken, then close; the exit status is 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import asyncpg

from . import clock, log, metrics
from .admin import AdminEndpoint
from .config import Config, state_dir
from .orders.dispatcher import Dispatcher
from .pipeline.aliases import Aliases
from .pipeline.batcher import Batcher
from .pipeline.bindings import Bindings
from .security.gate import Gate
from .storage import database
from .transports import coap, http1
from .transports.amqp import AmqpConsumer
from .transports.http import TelemetryEndpoint
from .transports.mqtt import MqttSubscriber
from .transports.nats import NatsConsumer

# Ports are shared (SO_REUSEPORT) only between the processes of --workers:
# otherwise a second server on the same port must fail, not split traffic.
WORKERS = "INGESTD_WORKER" in os.environ

OFFLINE = """
UPDATE ingestd.devices SET status = 'offline'
WHERE status = 'online' AND last_seen < now() - make_interval(secs => $1)
"""


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.pool: asyncpg.Pool | None = None
        self.batcher: Batcher | None = None
        self.dispatcher: Dispatcher | None = None
        self.mqtt: MqttSubscriber | None = None
        self.http: TelemetryEndpoint | None = None
        self.coap: coap.Telemetry | None = None
        self.gate: Gate | None = None
        self.amqp: AmqpConsumer | None = None
        self.nats: NatsConsumer | None = None
        self._coap: Any = None
        self._servers: list[asyncio.Server] = []
        self._connections: list[set[http1.HttpConnection]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        dsn = database.resolve_dsn(cfg.database.dsn, state_dir(cfg))
        conn = await asyncpg.connect(dsn, timeout=cfg.database.connect_timeout_s)
        try:
            await database.migrate(conn)
        finally:
            await conn.close()
        self.pool = await database.connect_pool(
            dsn, cfg.database.pool_size, cfg.database.connect_timeout_s
        )

        p = cfg.pipeline
        window = clock.Window(
            clock.from_text(p.plausible_from, "pipeline.plausible_from"),
            p.plausible_future_s,
        )
        bindings = Bindings()
        aliases = Aliases()
        dispatcher = Dispatcher(self.pool, bindings, cfg.orders)
        async with self.pool.acquire() as c:
            await bindings.refresh(c)
            await aliases.refresh(c)
            if cfg.orders.enabled:
                await dispatcher.load(c)
        self.batcher = Batcher(
            self.pool, p.flush_rows, p.flush_interval_ms, p.ring_capacity,
            bindings, dispatcher.offer if cfg.orders.enabled else None,
            aliases, p.flush_timeout_s,
        )  # fmt: skip
        self.batcher.max_readings = p.max_readings_per_message
        self.batcher.start()
        if cfg.orders.enabled:
            self.dispatcher = dispatcher
            dispatcher.start()  # catches up from its watermark first
            self._every(cfg.orders.rules_refresh_s, dispatcher.load)
        self._every(cfg.orders.bindings_refresh_s, lambda c: bindings.refresh(c))
        self._every(cfg.orders.bindings_refresh_s, aliases.refresh)
        timeout = p.heartbeat_timeout_s
        self._every(max(1.0, timeout / 4), lambda c: c.execute(OFFLINE, float(timeout)))

        sec = cfg.security
        plain = not sec.mtls or sec.allow_plain
        if sec.certificate:
            self.gate = Gate(sec)
            self._tasks.append(
                asyncio.get_running_loop().create_task(self.gate.run(self.pool))
            )
        if cfg.http.enabled:
            h = cfg.http
            self.http = TelemetryEndpoint(
                h, self.batcher, window, p.retry_after_s, cfg.mappings
            )
            listeners = [(h.port, None)] if plain else []
            if self.gate is not None:
                listeners.append((h.tls_port, self.gate))
            for port, gate in listeners:
                server, conns, sweeper = await http1.serve(
                    self.http, h.host, port, h.max_body_bytes, h.max_header_bytes,
                    h.idle_timeout_s, refused=self.http.refused,
                    upgrade=self.http.upgrade, reuse_port=WORKERS,
                    header_timeout=h.header_timeout_s, gate=gate,
                    body_timeout=h.body_timeout_s,
                )  # fmt: skip
                self._servers.append(server)
                self._connections.append(conns)
                self._tasks.append(sweeper)
                log.http.info(
                    "listening on %s:%d (%s)", h.host, port,
                    "plain" if gate is None else "TLS, mTLS" if sec.mtls else "TLS",
                )  # fmt: skip
            if not plain:
                log.http.info("mTLS required: plain HTTP on %d is off", h.port)
        if cfg.admin.enabled:
            a = cfg.admin
            server, conns, sweeper = await http1.serve(
                AdminEndpoint(self.health), a.host, a.port, 4096, 16384, 60.0,
                reuse_port=WORKERS,
            )  # fmt: skip
            self._servers.append(server)
            self._tasks.append(sweeper)
        if cfg.coap.enabled:
            self._coap, self.coap = await coap.serve(
                cfg.coap, self.batcher, window, cfg.mappings, self.gate, plain
            )
        if cfg.mqtt.enabled:
            self.mqtt = MqttSubscriber(cfg.mqtt, self.batcher, window, cfg.mappings)
            await self.mqtt.start()
        if cfg.amqp.enabled:
            self.amqp = AmqpConsumer(cfg.amqp, self.batcher, window, cfg.mappings)
            await self.amqp.start()  # connects in the background
        if cfg.nats.enabled:
            self.nats = NatsConsumer(cfg.nats, self.batcher, window, cfg.mappings)
            await self.nats.start()
        self._tasks.append(asyncio.get_running_loop().create_task(self._count()))
        self.ready.set()
        log.root.info("ingestd ready")

    def health(self) -> dict[str, Any]:
        batcher = self.batcher
        # A feed that is not configured is null, so an operator never reads
        # "connected" for a link that does not exist
        feeds = {
            name: None if feed is None else feed.connected.is_set()
            for name, feed in (("mqtt", self.mqtt), ("amqp", self.amqp),
                               ("nats", self.nats))
        }  # fmt: skip
        pending = batcher.pending if batcher else 0
        feeds_ok = all(up is not False for up in feeds.values())
        return {
            "ok": bool(batcher) and feeds_ok and not self.stopping.is_set(),
            **{f"{name}_connected": up for name, up in feeds.items()},
            "pending_readings": pending,
            "committed_readings": batcher.committed_readings if batcher else 0,
            "order_updates": self.dispatcher.written if self.dispatcher else 0,
        }

    async def stop(self) -> None:
        """Stop taking input, flush and acknowledge, close."""
        self.stopping.set()
        for server in self._servers:
            server.close()
        if self.coap is not None:
            self.coap.stopping = True
        if self.mqtt is not None:
            self.mqtt.hold()
        for feed in (self.amqp, self.nats):
            if feed is not None:
                feed.hold()
        if self.batcher is not None:
            await self.batcher.close()
        if self.mqtt is not None:
            await self.mqtt.stop()
        for feed in (self.amqp, self.nats):
            if feed is not None:
                await feed.stop()  # after the last flush, so its acks go out
        for context in self._coap or ():
            await context.shutdown()
        if self.dispatcher is not None:
            await self.dispatcher.close()
        for conns in self._connections:
            for conn in list(conns):
                if conn.transport is not None:
                    conn.transport.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pool is not None:
            await self.pool.close()
        log.root.info(
            "stopped; %d readings committed",
            self.batcher.committed_readings if self.batcher else 0,
        )

    def _every(self, seconds: float, job: Any) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    async with self.pool.acquire() as conn:  # type: ignore[union-attr]
                        await job(conn)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.storage.warning("periodic job failed: %s", exc)
                except Exception:  # a bug or bad data: say so, try again next tick
                    log.root.exception(
                        "periodic job %s failed",
                        getattr(job, "__qualname__", job),
                    )

        self._tasks.append(asyncio.get_running_loop().create_task(loop()))

    async def _count(self) -> None:
        # Per-message counters are plain ints on the hot path; publish deltas.
        seen = {"mqtt": 0, "http": 0, "coap": 0, "amqp": 0, "nats": 0}
        while True:
            await asyncio.sleep(1.0)
            now = {
                "mqtt": self.mqtt.messages if self.mqtt else 0,
                "http": self.http.requests if self.http else 0,
                "coap": self.coap.requests if self.coap else 0,
                "amqp": self.amqp.messages if self.amqp else 0,
                "nats": self.nats.messages if self.nats else 0,
            }
            for name, count in now.items():
                if count > seen[name]:
                    metrics.messages.labels(name).inc(count - seen[name])
            seen = now


async def serve(config: Config) -> int:
    """Run until SIGTERM or SIGINT; returns the exit status."""
    server = Server(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = loop.create_task(server.start())
    waiting = loop.create_task(stop.wait())
    await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is not None:
        waiting.cancel()
        raise starting.exception()  # type: ignore[misc]
    await stop.wait()
    log.root.info("stopping: flushing what was taken")
    if not starting.done():
        starting.cancel()
    await server.stop()
    return 0
