"""HTTP/1.1 connections on httptools: parsing, limits and answer order.

A small protocol rather than a framework: on uvloop, httptools parses in C
and each request costs no task; measured against aiohttp for the telemetry
endpoint in ``bench/test_bench_http.py``. Requests on one keep-alive
connection may be pipelined, and are answered in the order they came even
when a later one is answered first (a 400 while a 202 awaits its commit).

Limits: header bytes, body bytes (413 as soon as Content-Length or the
body passes it), idle connections, and the time a request head may take to
arrive, which ends a slowloris sender whose bytes keep the link "active".
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import httptools

from .. import log
from ..security.gate import Gate, Peer

HEAD_S = 10.0  # the longest a request line and headers may take to arrive
BODY_S = 30.0  # the longest a request body may take once its head is in
LINGER_S = 2.0  # how long a refused connection's remaining bytes are drained


class Request:
    """One parsed request and its place in its connection's answer order."""

    __slots__ = ("method", "url", "headers", "body", "conn", "answered", "upgrade")

    def __init__(self, conn: HttpConnection, method: str, url: bytes) -> None:
        self.conn = conn
        self.method = method
        self.url = url
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.answered: bytes | None = None
        self.upgrade = False

    @property
    def peer(self) -> str:
        return self.conn.peer

    def answer(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json",
        extra: bytes = b"",
    ) -> None:
        """Queue the response; it is written once those before it are."""
        if self.answered is not None:
            return
        keep = self.conn.keep_alive and (status < 500 or status == 503)
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n"
            % (
                status,
                _REASONS.get(status, b"Unknown"),
                content_type,
                len(body),
                extra,
                b"" if keep else b"Connection: close\r\n",
            )
        )
        self.answered = head + body
        self.conn.flush_answers(close=not keep)


class HttpConnection(asyncio.Protocol):
    """One client connection; requests go to ``handle`` once complete."""

    def __init__(
        self,
        handle: Callable[[Request], None],
        max_body: int,
        max_header: int,
        connections: set[HttpConnection],
        refused: Callable[[Request, int, str], None] | None = None,
        upgrade: Callable[[HttpConnection, Request, bytes], None] | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.handle = handle
        self.gate = gate
        self.identity: Peer | None = None  # the client certificate, over TLS
        self.refused = refused
        self.upgrade = upgrade
        self._upgrading: Request | None = None
        self.max_body = max_body
        self.max_header = max_header
        self.connections = connections
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.keep_alive = True
        self.last_active = time.monotonic()
        self._queue: deque[Request] = deque()
        self._url = b""
        self._request: Request | None = None
        self._header_bytes = 0
        self._body_bytes = 0
        self._closing = False
        self._head_started = 0.0  # when the request head now arriving began
        self._body_started = 0.0  # when the head of a request with a body ended

    # -- asyncio.Protocol --------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if self.gate is not None:
            try:
                self.identity = self.gate.admit(
                    transport.get_extra_info("ssl_object"), self.cut
                )
            except PermissionError as exc:
                log.security.warning("refused %s: %s", self.peer, exc)
                self._closing = True
                transport.abort()
                return
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self.gate is not None:
            self.gate.forget(self.identity, self.cut)
        self._closing = True

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            request, self._upgrading = self._upgrading, None
            if request is None:
                self._fail(400, b"upgrade not supported here")
            elif self.upgrade is None or len(self._queue) != 1:
                self.keep_alive = False
                request.answer(400, b'{"error": "upgrade not supported here"}')
            else:
                self._queue.clear()
                try:
                    self.upgrade(self, request, data[upgrade.args[0] :])
                except Exception:
                    log.http.exception("upgrade failed for %s", self.peer)
                    if self.transport is not None:
                        self.transport.close()
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised; a limit shows through
            limit = exc.__context__
            if isinstance(limit, _Limit):
                self._fail(limit.status, limit.message)
            elif not self._closing:
                log.http.warning("bad HTTP from %s: %s", self.peer, exc)
                self._fail(400, b"malformed HTTP request")
        except _Limit as limit:
            self._fail(limit.status, limit.message)

    # -- httptools callbacks -----------------------------------------

    def on_message_begin(self) -> None:
        self._head_started = time.monotonic()
        self._url = b""
        self._header_bytes = 0
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header(len(name) + len(value))
        if self._request is None:
            self._request = Request(self, "", self._url)
        self._request.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self._head_started = 0.0
        self._body_started = time.monotonic()
        request = self._request or Request(self, "", self._url)
        self._request = request
        request.method = self.parser.get_method().decode("ascii", "replace")
        request.url = self._url
        self.keep_alive = self.parser.should_keep_alive()
        request.upgrade = self.parser.should_upgrade()
        self._queue.append(request)
        length = request.headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise _Limit(413, b"body larger than %d bytes" % self.max_body)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._request is not None:  # kept even past the limit: the dead
            self._request.body.append(body)  # letter holds its first 4 KiB
        if self._body_bytes > self.max_body:
            raise _Limit(413, b"body larger than %d bytes" % self.max_body)

    def on_message_complete(self) -> None:
        self._body_started = 0.0
        request, self._request = self._request, None
        if request is None:
            return
        if request.upgrade:  # answered when the parser stops at the upgrade
            self._upgrading = request
            return
        try:
            self.handle(request)
        except Exception:
            log.http.exception("handler failed for %s", request.url[:200])
            request.answer(500, b'{"error": "internal error"}')

    # -- answers -------------------------------------------------------

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header:
            raise _Limit(431, b"request headers too large")

    def _fail(self, status: int, message: bytes) -> None:
        request = self._request
        if request is None or request.answered is not None:
            request = Request(self, "", self._url)
        if request not in self._queue:  # cut short before its headers ended
            self._queue.append(request)
        self._request = None
        self.keep_alive = False
        if self.refused is not None and status in (408, 413):
            self.refused(request, status, message.decode())
        request.answer(status, b'{"error": "%s"}' % message)

    def flush_answers(self, close: bool = False) -> None:
        transport = self.transport
        queue = self._queue
        while queue and queue[0].answered is not None:
            data = queue.popleft().answered
            if transport is not None and not transport.is_closing():
                transport.write(data)  # type: ignore[arg-type]
        if close and not queue:
            self._closing = True
            if transport is None or transport.is_closing():
                return
            # Lingering close: a sender still writing a refused body would get
            # a reset, and lose our answer, if we closed with its bytes unread.
            # Send EOF, discard what still comes, close after LINGER_S.
            if transport.can_write_eof():
                transport.write_eof()
                asyncio.get_running_loop().call_later(LINGER_S, transport.close)
            else:
                transport.close()

    def cut(self) -> None:
        """End the connection now (its certificate was revoked)."""
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def requeue(self, request: Request) -> None:
        """Put back a request taken off the queue (a refused upgrade)."""
        if request not in self._queue:
            self._queue.append(request)

    def close_if_idle(
        self, now: float, idle: float, head: float = HEAD_S, body: float = BODY_S
    ) -> None:
        """Close a connection silent for ``idle`` seconds, or one whose
        request head has taken over ``head`` seconds, or its body over
        ``body`` seconds, however slowly its bytes trickle in (slowloris,
        and its slow-body variant)."""
        if self.transport is None:
            return
        if self._body_started and now - self._body_started > body:
            # What arrived of the body is kept as the dead letter
            self._body_started = 0.0
            self._fail(408, b"request body slower than %d s" % body)
            return
        slow_head = self._head_started and now - self._head_started > head
        if now - self.last_active > idle or slow_head:
            self.transport.close()


class _Limit(Exception):
    def __init__(self, status: int, message: bytes) -> None:
        self.status = status
        self.message = message


_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


async def serve(
    handle: Callable[[Request], None],
    host: str,
    port: int,
    max_body: int,
    max_header: int,
    idle_timeout: float,
    refused: Callable[[Request, int, str], None] | None = None,
    upgrade: Callable[[HttpConnection, Request, bytes], None] | None = None,
    reuse_port: bool = False,
    header_timeout: float = HEAD_S,
    gate: Gate | None = None,
    body_timeout: float = BODY_S,
) -> tuple[asyncio.Server, set[HttpConnection], asyncio.Task[None]]:
    """Listen; returns the server, its live connections and the idle sweeper.

    With ``gate``, the listener speaks TLS with the gate's context and each
    connection is admitted by it (client certificate, revocation).
    """
    loop = asyncio.get_running_loop()
    connections: set[HttpConnection] = set()
    tls = gate.context(["http/1.1"]) if gate is not None else None
    server = await loop.create_server(
        lambda: HttpConnection(
            handle, max_body, max_header, connections, refused, upgrade, gate
        ),
        host, port, reuse_port=reuse_port or None, backlog=4096, ssl=tls,
        ssl_handshake_timeout=gate.config.handshake_timeout_s if gate else None,
    )  # fmt: skip

    async def sweep() -> None:
        while True:
            await asyncio.sleep(
                min(1.0, idle_timeout / 4, header_timeout / 4, body_timeout / 4)
            )
            now = time.monotonic()
            for conn in list(connections):
                conn.close_if_idle(now, idle_timeout, header_timeout, body_timeout)

    return server, connections, loop.create_task(sweep())
