"""NATS in: a JetStream pull consumer that acknowledges after commit.

Gateways publish device messages on subjects; the subject is the topic.
Routes match it with ``.`` as the level separator, ``{device}`` taking one
token (a NATS ``*``) and ``{name...}`` the rest (a ``>``). A subject that no
route takes is a dead letter. A route's ``content_type`` (the
``Content-Type`` header) and ``user_properties`` (headers) narrow it, as
on AMQP.

JetStream (the default, ``stream`` set): the stream is created with the
routes' subjects when it does not exist (an existing one is used as it is),
and a durable pull consumer with explicit acknowledgement reads it, so that
several ingestd processes share the work. Each message is acknowledged once
the flush that holds it has committed, a dead letter included. An ack is a
publish to the message's reply subject, valid from any connection, so
commits that straddle a reconnect are still acknowledged. A message left
unacknowledged (a crash, a flush given up) comes again after ``ack_wait_s``;
so does one whose commit takes longer than that, and the copy is stored
idempotently.

Push-back: the server sends no more than ``max_ack_pending`` unacknowledged
messages, and while the batcher is full this consumer fetches nothing;
messages wait in the stream.

Core NATS (``stream = ""``): plain subscriptions in the queue group
``queue_group``. Core NATS has no acknowledgement and no redelivery: a
message that was received and not yet committed when the process dies is
lost, and one that arrives while the client's buffer of
``max_ack_pending`` messages is full is dropped by the client (a slow
consumer, counted in ``dropped``). Use it only where the sender can afford
that; JetStream is the durable path.

Left out: push consumers (pull consumers scale across processes without a
deliver group), ordered consumers, and replies to core NATS requests.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec

from .. import clock, log, metrics
from ..codecs.base import Decoded
from ..codecs.mapping import Mapping
from ..errors import IngestError
from ..model import Origin
from . import routes

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from ..pipeline.batcher import Batcher

logger = log.nats
FETCH_WAIT_S = 1.0  # a pull request lingers this long for messages
IDLE_CHECK = 10  # empty fetches in a row before the consumer is looked up
CORE_PENDING_BYTES = 64 * 1024 * 1024  # core NATS: client buffer per subject
ACK_DRAIN_S = 10.0  # at stop, the longest wait for acknowledgements to go out


class NatsFeed(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[nats]`` table: a JetStream durable consumer, or core NATS.

    ``stream`` names the JetStream stream (created with the routes'
    subjects if missing) and ``durable`` the consumer shared by every
    ingestd process; ``stream = ""`` selects core NATS subscriptions in
    ``queue_group``, without acknowledgement. ``max_ack_pending`` bounds the
    unacknowledged messages, ``ack_wait_s`` is how long JetStream waits for
    an acknowledgement before it delivers again. ``credentials`` is a
    ``.creds`` file; a user and password may also be part of a server URL.

    Example::

        [nats]
        enabled = true
        servers = ["nats://nats-1.example:4222", "nats://nats-2.example:4222"]
        stream = "TELEMETRY"
        routes = [{topic = "devices.{device}.telemetry", codec = "json"}]
    """

    enabled: bool = False
    servers: list[str] = msgspec.field(
        default_factory=lambda: ["nats://127.0.0.1:4222"]
    )
    name: str = "ingestd"
    credentials: str | None = None
    stream: str = "INGESTD"
    durable: str = "ingestd"
    queue_group: str = "ingestd"
    max_ack_pending: int = 20_000
    ack_wait_s: float = 30.0
    fetch_batch: int = 1000
    max_payload_bytes: int = 256 * 1024
    routes: list[config.Route] = msgspec.field(
        default_factory=lambda: config.bus_routes()  # config imports this module
    )

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("servers must not be empty")
        if self.max_ack_pending < 1 or self.fetch_batch < 1:
            raise ValueError("max_ack_pending and fetch_batch must be at least 1")
        if self.ack_wait_s <= 0:
            raise ValueError("ack_wait_s must be positive")
        if self.stream and not self.durable:
            raise ValueError("a JetStream stream needs a durable consumer name")
        if not self.routes:
            raise ValueError("routes must not be empty")


class NatsConsumer:
    """Reads the feed's subjects and hands each message to the batcher.

    ``start`` returns at once; connecting, and reconnecting after a loss,
    happen in the background (``connected`` tells when the link is up).
    """

    def __init__(
        self,
        feed: NatsFeed,
        batcher: Batcher,
        window: clock.Window,
        mappings: dict[str, Mapping] | None = None,
    ) -> None:
        self.feed = feed
        self.batcher = batcher
        self.routes = routes.build(feed.routes, window, mappings, "nats", ".", "*", ">")
        self.jetstream = bool(feed.stream)
        self.messages = 0
        self.dropped = 0  # core NATS: messages the client dropped (slow consumer)
        self.connected = asyncio.Event()
        self.nc: Client | None = None
        self._space = asyncio.Event()
        self._space.set()
        self._holding = False
        self._stopping = False
        self._outbox: list[tuple[Msg, bool]] = []  # (message, ack or nak)
        self._sender: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._subs: list[Any] = []  # core NATS subscriptions
        self._consuming = False  # subscribed, or bound to the consumer
        self._unsubscribing: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------

    async def start(self) -> None:
        """Start consuming in the background; see ``connected``."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def hold(self) -> None:
        """Take no more messages; JetStream delivers the rest again.

        Core NATS subscriptions end here, so that the queue group sends
        their subjects to the other processes; what this client had
        buffered is lost.
        """
        self._holding = True
        self._space.set()  # wake the fetch loop so that it ends
        if self._subs:
            subs, self._subs = self._subs, []
            self._unsubscribing = asyncio.get_running_loop().create_task(
                _unsubscribe(subs)
            )

    async def stop(self) -> None:
        """Send the acknowledgements due, then close the connection.

        Call after the batcher's last flush, so that what it committed is
        acknowledged before the connection goes.
        """
        self.hold()
        self._stopping = True
        if self._task is not None:
            # A fetch under way ends within FETCH_WAIT_S; what it brings
            # is handed back (nak) rather than left to wait for ack_wait_s.
            done, _ = await asyncio.wait({self._task}, timeout=FETCH_WAIT_S + 1)
            if not done:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._unsubscribing is not None:
            await asyncio.gather(self._unsubscribing, return_exceptions=True)
        if self._sender is not None:  # it also sends what comes meanwhile
            await asyncio.wait({self._sender}, timeout=ACK_DRAIN_S)
        nc = self.nc
        if nc is not None and not nc.is_closed:
            try:
                if nc.is_connected:
                    await nc.flush(timeout=5)  # the acks reach the server
            except Exception as exc:  # the server may be gone already
                logger.warning("acknowledgements not flushed: %s", exc)
            await nc.close()

    async def _run(self) -> None:
        import nats

        try:
            nc = self.nc = await nats.connect(
                self.feed.servers,
                name=self.feed.name,
                user_credentials=self.feed.credentials,
                max_reconnect_attempts=-1,  # the first connection too
                reconnect_time_wait=1,
                pending_size=8 * 1024 * 1024,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except Exception:  # a bad credentials file or URL: retrying won't help
            logger.exception("cannot connect to NATS; feed not started")
            return
        logger.info("connected to %s", _where(nc))
        if self.jetstream:
            await self._pull(nc.jetstream())
        else:
            await self._subscribe(nc)

    async def _on_error(self, exc: Exception) -> None:
        from nats.errors import SlowConsumerError

        if isinstance(exc, SlowConsumerError):
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8, ...
                logger.warning("slow consumer: %d messages dropped", self.dropped)
        elif not self._stopping:
            logger.warning("nats: %s: %s", type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        self.connected.clear()
        if not self._stopping:
            logger.warning("disconnected; reconnecting")

    async def _on_reconnected(self) -> None:
        if self._consuming:
            self.connected.set()
        logger.info("reconnected to %s", _where(self.nc))

    # -- JetStream ------------------------------------------------------

    async def _pull(self, js: JetStreamContext) -> None:
        from nats.errors import ConnectionClosedError
        from nats.errors import Error as NatsError
        from nats.errors import TimeoutError as NatsTimeout

        delay = 0.2
        idle = 0
        sub: Any = None
        while not self._holding:
            try:
                if sub is None:
                    sub = await self._bind(js)
                    delay = 0.2
                await self._space.wait()
                if self._holding:
                    break
                try:
                    msgs = await sub.fetch(self.feed.fetch_batch, timeout=FETCH_WAIT_S)
                except (TimeoutError, NatsTimeout):
                    # Nothing new, or a reconnect ate the request. A deleted
                    # consumer looks the same, so ask now and then.
                    idle += 1
                    if idle % IDLE_CHECK == 0:
                        await sub.consumer_info()
                    continue
            except ConnectionClosedError:
                return
            except NatsError as exc:
                # The stream or consumer went away, or JetStream is not
                # (yet) answering: set both up again.
                logger.warning(
                    "stream %r: %s: %s; retrying in %.1fs",
                    self.feed.stream, type(exc).__name__, exc, delay,
                )  # fmt: skip
                sub = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            except Exception:  # our own fault: keep the feed alive, say so
                logger.exception("pulling from %r failed; restarting", self.feed.stream)
                sub = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            idle = 0
            for msg in msgs:
                self._take(msg)

    async def _bind(self, js: JetStreamContext) -> Any:
        """The stream and the durable consumer, created when missing."""
        from nats.js import api
        from nats.js.errors import BadRequestError, NotFoundError

        feed = self.feed
        filters = self.routes.filters
        try:
            subjects = (await js.stream_info(feed.stream)).config.subjects or []
        except NotFoundError:
            await js.add_stream(name=feed.stream, subjects=filters)
            logger.info("created stream %r for %s", feed.stream, ", ".join(filters))
            subjects = filters
        consumer = api.ConsumerConfig(
            durable_name=feed.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=feed.ack_wait_s,
            max_ack_pending=feed.max_ack_pending,
            max_deliver=-1,  # never give a message up: it is stored or dead
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,  # 2.10+
        )
        v = self.nc.connected_server_version if self.nc else None
        wide = len(filters) > 1 and bool(set(subjects) - set(filters))
        if wide and v and (0, 0) < (v.major, v.minor) < (2, 10):
            logger.warning(
                "nats-server %d.%d takes one filter subject per consumer: %r "
                "reads all of stream %r, and what no route takes becomes a "
                "dead letter", v.major, v.minor, feed.durable, feed.stream,
            )  # fmt: skip
        try:
            await js.add_consumer(feed.stream, consumer)
        except BadRequestError as exc:
            # It exists with settings this one may not change; use it.
            logger.warning("consumer %r kept as it is: %s", feed.durable, exc)
        sub = await js.pull_subscribe_bind(
            durable=feed.durable,
            stream=feed.stream,
            pending_msgs_limit=feed.fetch_batch * 4,
        )
        logger.info("pulling from stream %r as %r", feed.stream, feed.durable)
        self._consuming = True
        self.connected.set()
        return sub

    def _take(self, msg: Msg) -> None:
        if self._holding:
            # Fetched after hold: hand it back, to be delivered again now
            self._outbox.append((msg, False))
            self._schedule()
            return
        self._handle(msg, (self._acknowledge, msg))
        if self.batcher.full and self._space.is_set():
            self._space.clear()
            metrics.pushback.labels("nats").inc()
            self.batcher.on_space(self._space.set)

    def _acknowledge(self, msg: Msg) -> None:
        self._outbox.append((msg, True))
        self._schedule()

    def _schedule(self) -> None:
        if self._sender is None:
            # The batcher calls every acknowledgement of a flush in one go;
            # the task runs after the last of them.
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        from nats.errors import Error as NatsError

        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                try:
                    for msg, done in batch:
                        await (msg.ack() if done else msg.nak())
                except NatsError as exc:
                    logger.warning(
                        "acknowledgements not sent (%s); JetStream delivers "
                        "those messages again", exc,
                    )  # fmt: skip
        finally:
            self._sender = None

    # -- core NATS ------------------------------------------------------

    async def _subscribe(self, nc: Client) -> None:
        group = self.feed.queue_group
        for subject in self.routes.filters:
            sub = await nc.subscribe(
                subject,
                queue=group,
                cb=self._on_core,
                pending_msgs_limit=self.feed.max_ack_pending,
                pending_bytes_limit=CORE_PENDING_BYTES,
            )
            self._subs.append(sub)
        self._consuming = True
        self.connected.set()
        logger.info(
            "core NATS (no acknowledgement): %s in queue group %r",
            ", ".join(self.routes.filters), group,
        )  # fmt: skip

    async def _on_core(self, msg: Msg) -> None:
        if self._holding:
            return
        if not self._space.is_set():
            await self._space.wait()  # the client buffers meanwhile
            if self._holding:
                return
        self._handle(msg, None)
        if self.batcher.full and self._space.is_set():
            self._space.clear()
            metrics.pushback.labels("nats").inc()
            self.batcher.on_space(self._space.set)

    # -- messages -------------------------------------------------------

    def _handle(self, msg: Msg, ack: Any) -> None:
        self.messages += 1
        subject = msg.subject
        data = msg.data
        origin = Origin(None, "nats", clock.now_us(), subject)
        decoded = Decoded()
        try:
            self._decode(msg, origin, decoded)
        except IngestError as exc:
            self.batcher.dead_letter(origin, data, str(exc), ack)
        except Exception as exc:  # a codec bug must not kill the stream
            logger.exception("decoding a message on %s failed", subject)
            self.batcher.dead_letter(origin, data, f"internal error: {exc}", ack)
        else:
            self.batcher.submit(origin, decoded, data, ack)

    def _decode(self, msg: Msg, origin: Origin, out: Decoded) -> None:
        routes.decode(
            self.routes, msg.subject, msg.data, self.feed.max_payload_bytes,
            origin, out, msg, _content, "subject",
        )  # fmt: skip


def _content(msg: Msg) -> tuple[str | None, dict[str, str]]:
    headers = msg.headers or {}
    return headers.get("Content-Type") or headers.get("content-type"), headers


async def _unsubscribe(subs: list[Any]) -> None:
    for sub in subs:
        await sub.unsubscribe()


def _where(nc: Client | None) -> str:
    """host:port of the server ``nc`` is connected to, without credentials."""
    url = nc.connected_url if nc is not None else None
    return f"{url.hostname}:{url.port}" if url is not None else "?"


# Last: ``ingestd.config`` imports NatsFeed from this module, and the feed
# needs config.Route only once it is used, so either module may load first.
from .. import config  # noqa: E402
