"""AMQP 0-9-1 in: a RabbitMQ queue consumer that acknowledges after commit.

Gateways and network servers publish device messages to an exchange; this
module consumes one queue (declared and bound to the exchange unless told
not to) with manual acknowledgement. The routing key is the topic: routes
match it with ``.`` as the level separator (``devices.{device}.telemetry``),
and their patterns, written as AMQP topic patterns, are the default binding
keys. A route's ``content_type`` and ``user_properties`` narrow it to
messages with that content-type property and those headers, so one key can
carry several formats; the first route that takes a message reads it, and
a message that no route takes is a dead letter.

Acknowledgement: a delivery is acknowledged once the flush that holds it
has committed, a dead letter included (bad input is kept, not redelivered
forever). Delivery tags belong to the channel that delivered them (AMQP
0-9-1 sec. 1.8.3.1); once that channel or its connection is gone, the
broker requeues what it had not been told about, so an acknowledgement for
a closed channel is dropped, never sent on the next one, and the second
copy is stored idempotently. Commits arrive in delivery order, so one
``basic.ack`` with ``multiple`` settles a whole flush. Should a flush be
lost (the batcher gives a batch up only on its own fault), its deliveries
can never be acknowledged on their channel: the consumer then reopens the
connection so that the broker delivers them again.

Push-back: ``prefetch`` bounds the unacknowledged deliveries, so a slow
commit stops the broker by itself. When the batcher is full, deliveries
already received wait here, at most ``prefetch`` of them, until it drains.

Reconnects: this module runs its own loop rather than aio-pika's robust
connection, so that every connection gets a fresh channel, QoS, queue
declaration and consumer, and the acknowledgement rule above stays simple.

Left out: publisher-side features (the queue is consumed, never written),
per-message priorities, and ``basic.get`` polling.
"""

from __future__ import annotations

import asyncio
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, cast

import msgspec

from .. import clock, log, metrics
from ..codecs.base import Decoded
from ..codecs.mapping import Mapping
from ..errors import IngestError
from ..model import Origin
from . import routes

if TYPE_CHECKING:
    import aio_pika
    import aiormq
    from aiormq.abc import DeliveredMessage

    from ..pipeline.batcher import Batcher

logger = log.amqp
PREFETCH_LIMIT = 65_535  # basic.qos prefetch-count is a short
ACK_DRAIN_S = 10.0  # at stop, the longest wait for acknowledgements to go out


class AmqpFeed(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[amqp]`` table: one queue, consumed with manual acknowledgement.

    ``routes`` match the routing key, ``.`` separating levels; ``{device}``
    captures one level and ``{name...}`` the rest; a route's
    ``content_type`` and ``user_properties`` (AMQP headers) narrow it, and
    ``mapping`` names a device type in ``[mappings]``. With ``exchange`` set,
    the queue is bound to it with ``binding_keys``, by default the routes'
    patterns as AMQP topic patterns (``devices.*.telemetry``). With
    ``declare = false`` nothing is declared: the queue must exist.
    ``prefetch`` bounds the unacknowledged deliveries (at most 65535).

    Example::

        [amqp]
        enabled = true
        url = "amqp://ingestd:secret@rabbit.example:5672/telemetry"
        queue = "ingestd"
        exchange = "devices"
        routes = [{topic = "devices.{device}.telemetry", codec = "json"}]
    """

    enabled: bool = False
    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    queue: str = "ingestd"
    durable: bool = True
    queue_arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    declare: bool = True
    exchange: str = ""
    exchange_type: Literal["topic", "direct", "fanout"] = "topic"
    binding_keys: list[str] = msgspec.field(default_factory=list)
    prefetch: int = 5000
    max_payload_bytes: int = 256 * 1024
    routes: list[config.Route] = msgspec.field(
        default_factory=lambda: config.bus_routes()  # config imports this module
    )

    def __post_init__(self) -> None:
        if not 1 <= self.prefetch <= PREFETCH_LIMIT:
            raise ValueError(f"prefetch must be from 1 to {PREFETCH_LIMIT}")
        if not self.queue:
            raise ValueError("queue must not be empty")
        if not self.routes:
            raise ValueError("routes must not be empty")


class AmqpConsumer:
    """Consumes the feed's queue and hands each delivery to the batcher.

    ``start`` returns at once; the connection is made, and remade after
    any loss, in the background (``connected`` tells when it is up).
    """

    def __init__(
        self,
        feed: AmqpFeed,
        batcher: Batcher,
        window: clock.Window,
        mappings: dict[str, Mapping] | None = None,
    ) -> None:
        self.feed = feed
        self.batcher = batcher
        self.routes = routes.build(feed.routes, window, mappings, "amqp", ".", "*", "#")
        self.binding_keys = feed.binding_keys or self.routes.filters
        self.messages = 0
        self.connected = asyncio.Event()
        self._link: _Link | None = None
        self._parked: deque[tuple[_Link, DeliveredMessage]] = deque()
        self._waiting = False
        self._holding = False
        self._stopping = False
        self._dirty: list[_Link] = []
        self._sender: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------

    async def start(self) -> None:
        """Start consuming in the background; see ``connected``."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def hold(self) -> None:
        """Take no more deliveries; those not taken go back to the queue."""
        self._holding = True
        self._parked.clear()

    async def stop(self) -> None:
        """Send the acknowledgements due, then close the connection.

        Call after the batcher's last flush: what it acknowledged is sent
        first; every other delivery returns to the queue.
        """
        self._holding = True
        self._stopping = True
        if self._sender is not None:  # it also sends what comes meanwhile
            await asyncio.wait({self._sender}, timeout=ACK_DRAIN_S)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        import aio_pika
        from aio_pika.exceptions import CONNECTION_EXCEPTIONS

        delay = 0.2
        where = _safe_url(self.feed.url)
        while not self._stopping:
            connection: aio_pika.abc.AbstractConnection | None = None
            try:
                connection = await aio_pika.connect(self.feed.url, timeout=10)
                lost = await self._consume(connection)
                logger.info("consuming queue %r at %s", self.feed.queue, where)
                delay = 0.2
                await lost.wait()
                if not self._stopping:
                    logger.warning("connection to %s lost; reconnecting", where)
            except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                logger.warning(
                    "broker %s: %s: %s; retrying in %.1fs",
                    where, type(exc).__name__, exc, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception:  # our own fault: keep the feed alive, say so
                logger.exception("consumer of %r failed; restarting", self.feed.queue)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                self.connected.clear()
                if self._link is not None:
                    self._link.closed = True
                    self._link = None
                if connection is not None:
                    await _close(connection)

    async def _consume(self, connection: Any) -> asyncio.Event:
        """Open a channel and a consumer; the event fires when either ends."""
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        channel = await connection.channel(publisher_confirms=False)
        channel.close_callbacks.add(lambda *_: lost.set())
        await channel.set_qos(prefetch_count=self.feed.prefetch)
        queue = await self._declare(channel)

        # Consume on aiormq's channel: aio-pika would add a task and an
        # IncomingMessage per delivery, and its tags are the same ones.
        raw: aiormq.abc.AbstractChannel = await channel.get_underlay_channel()
        raw.on_consumer_cancel_callbacks.add(lambda *_: lost.set())  # queue gone
        link = self._link = _Link(raw, lost)
        await raw.basic_consume(
            queue.name, partial(self._on_delivery, link), no_ack=False
        )
        self.connected.set()
        return lost

    async def _declare(self, channel: Any) -> Any:
        feed = self.feed
        if not feed.declare:
            return await channel.declare_queue(feed.queue, passive=True)
        queue = await channel.declare_queue(
            feed.queue, durable=feed.durable, arguments=feed.queue_arguments or None
        )
        if feed.exchange:
            exchange = await channel.declare_exchange(
                feed.exchange, type=feed.exchange_type, durable=True
            )
            for key in self.binding_keys:
                await queue.bind(exchange, routing_key=key)
        return queue

    # -- deliveries -----------------------------------------------------

    async def _on_delivery(self, link: _Link, message: DeliveredMessage) -> None:
        # aiormq starts one task per delivery, in order; this never awaits,
        # so deliveries are handled in delivery-tag order.
        link.outstanding.append(_tag(message))
        if self._holding or link.closed:
            return  # unacknowledged: the broker delivers it again
        if self._parked or self.batcher.full:
            self._park(link, message)
            return
        self._handle(link, message)

    def _handle(self, link: _Link, message: DeliveredMessage) -> None:
        self.messages += 1
        key = message.routing_key or ""
        body = message.body
        origin = Origin(None, "amqp", clock.now_us(), key)
        ack = (self._acknowledge, (link, _tag(message)))
        decoded = Decoded()
        try:
            self._decode(key, message, origin, decoded)
        except IngestError as exc:
            self.batcher.dead_letter(origin, body, str(exc), ack)
        except Exception as exc:  # a codec bug must not kill the stream
            logger.exception("decoding a message with key %r failed", key)
            self.batcher.dead_letter(origin, body, f"internal error: {exc}", ack)
        else:
            self.batcher.submit(origin, decoded, body, ack)

    def _decode(
        self, key: str, message: DeliveredMessage, origin: Origin, out: Decoded
    ) -> None:
        routes.decode(
            self.routes, key, message.body, self.feed.max_payload_bytes, origin, out,
            message.header.properties, _properties, "routing key",
        )  # fmt: skip

    # -- push-back ------------------------------------------------------

    def _park(self, link: _Link, message: DeliveredMessage) -> None:
        self._parked.append((link, message))
        if not self._waiting:
            self._waiting = True
            metrics.pushback.labels("amqp").inc()
            self.batcher.on_space(self._unpark)

    def _unpark(self) -> None:
        self._waiting = False
        parked = self._parked
        while parked and not self.batcher.full:
            link, message = parked.popleft()
            if not link.closed:
                self._handle(link, message)
        if parked:
            self._waiting = True
            self.batcher.on_space(self._unpark)

    # -- acknowledgement ------------------------------------------------

    def _acknowledge(self, token: tuple[_Link, int]) -> None:
        link, tag = token
        if link.closed:
            return  # its channel is gone; the broker delivers it again
        link.done.add(tag)
        if not link.dirty:
            link.dirty = True
            self._dirty.append(link)
        if self._sender is None:
            # The batcher calls every acknowledgement of a flush in one go;
            # the task runs after the last of them and sends one frame.
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._dirty:
                links, self._dirty = self._dirty, []
                for link in links:
                    link.dirty = False
                    await self._settle(link)
        finally:
            self._sender = None

    async def _settle(self, link: _Link) -> None:
        from aiormq.exceptions import AMQPError

        if link.closed:
            return  # the broker delivers these again
        outstanding, done = link.outstanding, link.done
        last = 0
        while outstanding and outstanding[0] in done:
            last = outstanding.popleft()
            done.discard(last)
        try:
            if last:
                await link.channel.basic_ack(last, multiple=True)
            if not done:
                return
            # Committed deliveries behind one that never will be: a flush
            # was given up. Settle these one by one, then reconnect so the
            # broker delivers the lost ones again.
            for tag in sorted(done):
                await link.channel.basic_ack(tag)
        except (AMQPError, ConnectionError, OSError) as exc:
            link.closed = True
            logger.warning("acknowledgements not sent (%s); broker redelivers", exc)
            return
        logger.warning(
            "a flush was given up; reconnecting so that the broker sends "
            "the %d deliveries still unacknowledged again",
            len(outstanding) - len(done),
        )
        link.closed = True
        done.clear()
        link.lost.set()


def _properties(props: Any) -> tuple[str | None, Any]:
    """AMQP content type and headers, for routes that ask for them."""
    return props.content_type, props.headers


class _Link:
    """One channel's deliveries, in delivery order, and which committed."""

    __slots__ = ("channel", "lost", "outstanding", "done", "closed", "dirty")

    def __init__(self, channel: aiormq.abc.AbstractChannel, lost: asyncio.Event):
        self.channel = channel
        self.lost = lost
        self.outstanding: deque[int] = deque()  # delivered, not acknowledged
        self.done: set[int] = set()  # committed, acknowledgement not yet sent
        self.closed = False
        self.dirty = False


def _tag(message: DeliveredMessage) -> int:
    return cast(int, message.delivery_tag)  # always set on basic.deliver


async def _close(connection: Any) -> None:
    try:
        await asyncio.wait_for(connection.close(), 5)
    except Exception as exc:  # closing a broken link may fail in many ways
        logger.debug("closing the connection: %s", exc)


def _safe_url(url: str) -> str:
    """The URL without its password, for the log."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}@{host}"
    return url


# Last: ``ingestd.config`` imports AmqpFeed from this module, and the feed
# needs config.Route only once it is used, so either module may load first.
from .. import config  # noqa: E402
