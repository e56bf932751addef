"""Senders whose answer follows the commit: CoAP and WebSocket.

``bench load`` hands each sender a paced stream of messages through
``send``; a sender here needs no database to know what was stored, because
ingestd answers each message only after the commit that stores it:

- CoAP (RFC 7252 over UDP, RFC 8323 over TCP), through aiocoap's client: a
  confirmable POST per message, answered 2.04 ``{"stored": n}``. Over UDP
  aiocoap keeps one confirmable exchange open per server and endpoint
  (NSTART = 1, RFC 7252 4.7) and queues the rest: an endpoint sends its
  next request when the ACK comes, which carries the answer if the server
  had it within 0.1 s (aiocoap's EMPTY_ACK_DELAY). So an endpoint moves
  about one request per commit, like a keep-alive HTTP connection. Over
  TCP there is no such limit; many requests share the connection, told
  apart by token. A device always uses the same endpoint. 5.03 is
  honoured: the request waits Max-Age and is sent again.
- WebSocket, through aiohttp's client: a connection per device, one binary
  message per payload sent without waiting, each answered in order with
  ``{"ack": seq, "stored": n}``, ``seq`` counting this connection's
  messages from 1. The server stops reading while its buffers are full;
  the send then waits for TCP to drain, and the pacing shows it.

Latency is per reading, from the stamp a message carries (made just before
it is sent) to the answer, queueing in the client included: the same
measure as ``HttpPosters`` in ``load.py``, whose counters live here in
``Answers``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiocoap
import aiocoap.error
import aiohttp
import orjson
from aiocoap.numbers.codes import Code
from hdrh.histogram import HdrHistogram

from . import fleet
from .fleet import Device, Message

LOWEST_US, HIGHEST_US = 1, 120_000_000  # histogram range: 1 µs to 2 min
MAX_ERRORS = 20  # kept for the result file; the rest are only counted
COAP_JSON, COAP_SENML_JSON = 50, 110  # Content-Formats, RFC 7252 12.3
COAP_MAX_AGE_S = 60  # Max-Age when a 5.03 carries none, RFC 7252 5.10.5
OPENING_AT_ONCE = 32  # WebSocket handshakes in flight while starting


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, 3)


def record(histogram: HdrHistogram, micros: int, count: int = 1) -> None:
    histogram.record_value(min(max(micros, LOWEST_US), HIGHEST_US), count)


class Answers:
    """What a sender counts when every message gets an answer after commit.

    ``statuses`` counts answers by their status as the transport spells it
    ("202", "2.04", "ack"); ``latency`` holds one value per stored reading.
    """

    answer = "the answer"  # what ends a message's latency, for the summary

    def __init__(self) -> None:
        self.latency = new_histogram()  # stamp to answer, per reading
        self.statuses: dict[str, int] = {}
        self.stored_readings = 0
        self.answered_messages = 0
        self.retried = 0  # sent again after push-back (503, 5.03)
        self.most_queued = 0  # messages waiting for a free connection
        self.most_inflight = 0  # messages sent and not yet answered
        self.failures = 0
        self.errors: list[str] = []

    def answered(
        self, message: Message, status: str, stored: int | None, body: bytes
    ) -> None:
        """Count an answer; ``stored`` is None unless readings were stored."""
        answered_us = fleet.now_us()
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.answered_messages += 1
        if stored is None:
            self.failed(message.device.id, f"{status} {body[:200]!r}")
            return
        self.stored_readings += stored
        if stored:
            record(self.latency, answered_us - message.stamp_us, stored)

    def failed(self, device: str, what: str) -> None:
        """Count a message that got no answer, or an answer out of place."""
        self.failures += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(f"{device}: {what}")


# -- CoAP -----------------------------------------------------------------


class CoapPosters(Answers):
    """Client endpoints posting each message as a confirmable request.

    Each endpoint is an aiocoap client context of its own: its own UDP
    port, or its own TCP connection. Every message runs as a task, so the
    pacing never waits for an answer.
    """

    answer = "the 2.04"

    def __init__(self, host: str, port: int, endpoints: int, tcp: bool) -> None:
        super().__init__()
        self.scheme = "coap+tcp" if tcp else "coap"
        self.base = f"{self.scheme}://{host}:{port}"
        self.endpoints = endpoints
        self.contexts: list[aiocoap.Context] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open the endpoints and see that the server answers on each.

        The check is a GET, which ingestd answers 4.05 without storing
        anything. Over TCP it also opens the connection: aiocoap opens one
        connection per request that finds none open yet, and keeps only the
        last, so the concurrent requests must not be the first.
        """
        transport = "tcpclient" if self.scheme == "coap+tcp" else "udp6"
        for _ in range(self.endpoints):
            self.contexts.append(
                await aiocoap.Context.create_client_context(
                    transports=[transport], loggername="bench.coap"
                )
            )
        uri = f"{self.base}/v1/devices/bench-probe/telemetry"
        answers = await asyncio.gather(
            *(
                context.request(
                    aiocoap.Message(
                        code=Code.GET, uri=uri, transport_tuning=aiocoap.Reliable
                    )
                ).response
                for context in self.contexts
            )
        )
        wrong = {a.code.dotted for a in answers} - {Code.METHOD_NOT_ALLOWED.dotted}
        if wrong:
            raise RuntimeError(f"{self.base}: a GET was answered {wrong}, not 4.05")

    async def send(self, message: Message) -> None:
        context = self.contexts[message.device.index % len(self.contexts)]
        task = asyncio.get_running_loop().create_task(self._deliver(context, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if len(self._tasks) > self.most_inflight:
            self.most_inflight = len(self._tasks)

    async def _deliver(self, context: aiocoap.Context, message: Message) -> None:
        device = message.device
        uri = f"{self.base}{device.path}"
        fmt = COAP_SENML_JSON if device.format == "senml" else COAP_JSON
        try:
            while True:
                request = aiocoap.Message(
                    code=Code.POST, uri=uri, payload=message.payload,
                    content_format=fmt, transport_tuning=aiocoap.Reliable,
                )  # fmt: skip
                response = await context.request(request).response
                if response.code != Code.SERVICE_UNAVAILABLE:
                    break
                self.retried += 1
                max_age = response.opt.max_age
                await asyncio.sleep(COAP_MAX_AGE_S if max_age is None else max_age)
        except aiocoap.error.Error as exc:
            self.failed(device.id, repr(exc))
            return
        stored = None
        if response.code == Code.CHANGED:
            stored = int(orjson.loads(response.payload)["stored"])
        self.answered(message, response.code.dotted, stored, response.payload)

    async def drain(self, timeout: float) -> bool:
        """Wait until every request has its final answer or gave up."""
        if not self._tasks:
            return True
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return not pending

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.shutdown() for c in self.contexts))
        self.contexts.clear()


# -- WebSocket --------------------------------------------------------------


@dataclass
class WebSocketLink:
    """One device's connection and its messages not yet acknowledged."""

    device: Device
    ws: aiohttp.ClientWebSocketResponse
    sent: int = 0  # the sequence number of the last message sent
    waiting: dict[int, Message] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None


class WebSocketLinks(Answers):
    """A WebSocket per device on ``/v1/ws``, acknowledgements matched by seq.

    A connection the server closed (idle for ``http.idle_timeout_s``, at a
    low rate) is opened again at the device's next message, as a device
    would; its sequence numbers start again from 1.
    """

    answer = "the ack"

    def __init__(self, host: str, port: int, devices: list[Device]) -> None:
        super().__init__()
        self.base = f"ws://{host}:{port}/v1/ws"
        self.devices = devices
        self.links: dict[int, WebSocketLink] = {}  # by device index
        self.inflight = 0
        self.reopened = 0
        self._session: aiohttp.ClientSession | None = None
        self._readers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        # A few handshakes at a time: a burst of hundreds of connects can
        # overflow the listener's accept backlog and wait out a SYN retry
        opening = asyncio.Semaphore(OPENING_AT_ONCE)

        async def open_one(device: Device) -> None:
            async with opening:
                self.links[device.index] = await self._open(device)

        await asyncio.gather(*(open_one(d) for d in self.devices))

    async def _open(self, device: Device) -> WebSocketLink:
        assert self._session is not None
        params = {"device": device.id}
        if device.format == "senml":
            params["format"] = "senml"
        ws = await self._session.ws_connect(
            self.base, params=params, decode_text=False,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )  # fmt: skip
        link = WebSocketLink(device, ws)
        reader = asyncio.get_running_loop().create_task(self._read(link))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        return link

    async def send(self, message: Message) -> None:
        """Send without waiting for the ack; waits only while TCP is full."""
        device = message.device
        link = self.links[device.index]
        if link.ws.closed:
            try:
                link = self.links[device.index] = await self._open(device)
            except (aiohttp.ClientError, OSError) as exc:
                self.failed(device.id, f"reconnecting: {exc!r}")
                return
            self.reopened += 1
        link.sent += 1
        seq = link.sent
        link.waiting[seq] = message
        self.inflight += 1
        if self.inflight > self.most_inflight:
            self.most_inflight = self.inflight
        try:
            # Binary: the server takes either, and text would cost a decode
            # here and an encode there for the same bytes
            await link.ws.send_bytes(message.payload)
        except (aiohttp.ClientError, ConnectionError) as exc:
            if link.waiting.pop(seq, None) is not None:
                self.inflight -= 1
            self.failed(device.id, repr(exc))

    async def _read(self, link: WebSocketLink) -> None:
        async for frame in link.ws:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                continue
            try:
                body = orjson.loads(frame.data)
                message = link.waiting.pop(body["ack"])
            except (ValueError, KeyError, TypeError):
                self.failed(link.device.id, f"answer to nothing sent: {frame.data!r}")
                continue
            self.inflight -= 1
            status = "error" if "error" in body else "ack"
            self.answered(message, status, body.get("stored"), frame.data)
        # Closed: whatever is still waiting will never be acknowledged
        code = link.ws.close_code
        for _ in link.waiting:
            self.failed(link.device.id, f"connection closed ({code}) before the ack")
        self.inflight -= len(link.waiting)
        link.waiting.clear()

    async def drain(self, timeout: float) -> bool:
        """Wait until every message sent is acknowledged."""
        deadline = time.monotonic() + timeout
        while self.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.inflight <= 0

    async def stop(self) -> None:
        closing = [link.ws.close() for link in self.links.values()]
        await asyncio.gather(*closing, return_exceptions=True)
        await asyncio.gather(*self._readers, return_exceptions=True)
        self.links.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
