"""WebSocket in: one long connection per device, each message acknowledged.

A device opens ``GET /v1/ws?device=<id>[&format=json|senml]`` on the HTTP
port and then sends one payload per WebSocket message (text or binary).
Every message is answered, in order, once its readings are committed, with a
text message the device can match by sequence number (the message's ordinal
on this connection, from 1)::

    {"ack": 7, "stored": 3}
    {"ack": 8, "stored": 1, "rejected": [{"path": "$.x", "reason": "..."}]}
    {"ack": 9, "error": "invalid JSON: ...", "path": "byte 6"}

Framing is wsproto's (RFC 6455: masking, fragmentation, ping/pong, close);
the handshake is answered here because the HTTP layer already parsed it.
Limits: a message over ``http.max_body_bytes`` closes the connection with
1009; an idle connection is closed by the HTTP idle sweeper. Push-back: while
the batcher is full, the socket is not read, so TCP flow control reaches the
device. Left out: permessage-deflate (devices rarely send large text; the
CPU is better spent on decoding).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import ProtocolError, generate_accept_token

from .. import clock, log, metrics
from ..codecs.base import MAX_NAME, Codec, Decoded
from ..errors import Forbidden, IngestError
from ..model import Origin

if TYPE_CHECKING:
    from ..pipeline.batcher import Batcher
    from .http1 import HttpConnection, Request

PATH = b"/v1/ws"
FORMATS = {"json": "application/json", "senml": "application/senml+json"}
TOO_BIG = 1009  # RFC 6455 7.4.1: message too big to process


def handshake(
    request: Request, codecs: dict[str, Codec]
) -> tuple[int, bytes] | tuple[str, Codec, bytes]:
    """Check an upgrade request: an error answer, or (device, codec, reply)."""
    path, _, query = request.url.partition(b"?")
    if path != PATH:
        return 404, b'{"error": "WebSocket is served at /v1/ws"}'
    key = request.headers.get(b"sec-websocket-key")
    if request.headers.get(b"upgrade", b"").lower() != b"websocket" or not key:
        return 400, b'{"error": "not a WebSocket upgrade"}'
    if request.headers.get(b"sec-websocket-version") != b"13":
        return 426, b'{"error": "WebSocket version 13 only"}'
    params = parse_qs(query.decode("utf-8", "replace"))
    device = (params.get("device") or [""])[0]
    if not device or "\x00" in device or len(device) > MAX_NAME:
        return 400, b'{"error": "name the device: /v1/ws?device=<id>"}'
    media = FORMATS.get((params.get("format") or ["json"])[0])
    codec = codecs.get(media or "")
    if codec is None:
        return 415, b'{"error": "format must be json or senml"}'
    reply = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
        + generate_accept_token(key)
        + b"\r\n\r\n"
    )
    return device, codec, reply


class WebSocketSession(asyncio.Protocol):
    """One device's WebSocket after the handshake."""

    def __init__(
        self,
        http: HttpConnection,
        device: str,
        codec: Codec,
        batcher: Batcher,
        max_message: int,
    ) -> None:
        self.device = device
        self.codec = codec
        self.batcher = batcher
        self.max_message = max_message
        self.transport: Any = http.transport
        self.http = http  # its certificate stays admitted while this lives
        self.peer = http.peer
        self.connections = http.connections
        self.last_active = time.monotonic()
        self.ws = Connection(ConnectionType.SERVER)
        self.received = 0  # messages taken, also the next sequence number - 1
        self._parts: list[bytes | str] = []
        self._size = 0
        self._closed = False
        self._paused = False

    def start(self, http: HttpConnection, rest: bytes) -> None:
        """Take over ``http``'s socket; ``rest`` came after the handshake."""
        self.connections.discard(http)
        self.connections.add(self)  # type: ignore[arg-type]
        self.transport.set_protocol(self)
        if rest:
            self.data_received(rest)

    # -- asyncio.Protocol ---------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._closed:
            return
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                self._event(event)
        except ProtocolError as exc:
            log.http.warning("bad WebSocket data from %s: %s", self.peer, exc)
            self._close(1002, "protocol error")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.connections.discard(self)  # type: ignore[arg-type]
        self.http.connection_lost(exc)  # lets the gate forget the certificate

    def close_if_idle(
        self, now: float, idle: float, head: float = 0.0, body: float = 0.0
    ) -> None:
        if now - self.last_active > idle:
            self._close(1000, "idle")

    # -- events ---------------------------------------------------------

    def _event(self, event: Any) -> None:
        if isinstance(event, Message):
            self._size += len(event.data)
            if self._size > self.max_message:
                self._close(TOO_BIG, f"message over {self.max_message} bytes")
                return
            self._parts.append(event.data)
            if event.message_finished:
                self._message()
        elif isinstance(event, Ping):
            self._send(event.response())
        elif isinstance(event, CloseConnection):
            self._send(event.response())
            self._closed = True
            self.transport.close()

    def _message(self) -> None:
        parts, self._parts, self._size = self._parts, [], 0
        if parts and isinstance(parts[0], str):
            payload = "".join(parts).encode()  # type: ignore[arg-type]
        else:
            payload = b"".join(parts)  # type: ignore[arg-type]
        self.received += 1
        seq = self.received
        origin = Origin(self.device, "websocket", clock.now_us(), self.peer)
        decoded = Decoded()
        try:
            self.codec.decode(payload, origin, decoded)
            peer = self.http.identity
            if peer is not None and (
                other := peer.stranger_in(decoded, self.batcher.aliases)
            ):
                metrics.tls_wrong_identity.labels("websocket").inc()
                raise Forbidden(peer.refusal(other))
        except IngestError as exc:
            error = {"ack": seq, "error": getattr(exc, "reason", str(exc))}
            if hasattr(exc, "path"):
                error["path"] = exc.path
            self.batcher.dead_letter(
                origin, payload, str(exc), (self._answer, orjson.dumps(error))
            )
        else:
            self.batcher.submit(
                origin, decoded, payload, (self._stored, (seq, decoded))
            )
        if self.batcher.full and not self._paused:
            self._paused = True
            self.transport.pause_reading()
            metrics.pushback.labels("websocket").inc()
            self.batcher.on_space(self._resume)

    # -- answers (called by the batcher after the commit) -----------------

    def _stored(self, token: tuple[int, Decoded]) -> None:
        seq, decoded = token
        self._answer(orjson.dumps({"ack": seq, **decoded.answer()}))

    def _answer(self, body: bytes) -> None:
        if not self._closed:
            self._send(TextMessage(data=body.decode()))

    def _send(self, event: Any) -> None:
        if self._closed or self.transport.is_closing():
            return
        self.transport.write(self.ws.send(event))

    def _resume(self) -> None:
        self._paused = False
        if not self._closed and not self.transport.is_closing():
            self.transport.resume_reading()

    def _close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        try:
            self._send(CloseConnection(code=code, reason=reason))
        except ProtocolError:
            pass
        self._closed = True
        self.transport.close()
