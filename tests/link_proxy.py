"""A TCP proxy that can break the link it carries, for fault tests.

Put between ingestd and PostgreSQL (or the broker), it forwards bytes both
ways until told otherwise:

- ``cut()`` closes every carried connection on both sides (with a TCP reset
  when ``reset`` is asked for) and refuses new ones until ``resume()``: a
  cable pulled out, or a peer's host gone.
- ``stall()`` stops forwarding in both directions but keeps the sockets
  open, and holds new connections unanswered: a black-holed route, the case
  that only a timeout can end. ``resume()`` forwards what was held.
- ``throttle(bytes_per_s)`` limits the client-to-server direction, so that
  a fast server behind a slow link has a low, known sustainable rate.

The upstream is a TCP port or a Unix socket path (pgserver's PostgreSQL
listens on a Unix socket only). ``upstream_bytes`` counts what the clients
sent; ``sent_since(marker)`` counts what they sent after the last chunk that
held ``marker`` (a ``COPY ... FROM STDIN`` statement), so that a test can
break the link in the middle of a large COPY.
"""

from __future__ import annotations

import asyncio
import socket
import struct

CHUNK = 64 * 1024


class LinkProxy:
    """Listens on 127.0.0.1:``port`` and forwards to ``upstream``."""

    def __init__(self, upstream: int | str) -> None:
        self.upstream = upstream
        self.port = 0
        self.upstream_bytes = 0
        self.markers: dict[bytes, int] = {}  # marker -> upstream_bytes at its chunk
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._rate: float | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> LinkProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._drop_all(reset=False)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- faults ---------------------------------------------------------

    def cut(self, reset: bool = True) -> int:
        """Close every carried connection, refuse new ones; returns how many."""
        self._refusing = True
        count = len(self._links)
        self._drop_all(reset)
        return count

    def stall(self) -> None:
        """Stop forwarding; sockets stay open and new connections wait."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again and accept new connections."""
        self._refusing = False
        self._flowing.set()

    def watch(self, marker: bytes) -> None:
        """Note where ``marker`` next passes upstream (see ``sent_since``)."""
        self.markers[marker] = -1

    def sent_since(self, marker: bytes) -> int:
        """Bytes sent upstream after ``marker`` last passed; -1 if it has not."""
        at = self.markers[marker]
        return -1 if at < 0 else self.upstream_bytes - at

    def throttle(self, bytes_per_s: float | None) -> None:
        """Limit client-to-server bytes per second (None: no limit)."""
        self._rate = bytes_per_s

    # -- forwarding -----------------------------------------------------

    async def _accept(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        if self._refusing:
            _abort(client_w)
            return
        await self._flowing.wait()  # a stalled link answers nobody
        try:
            if isinstance(self.upstream, str):
                server_r, server_w = await asyncio.open_unix_connection(self.upstream)
            else:
                server_r, server_w = await asyncio.open_connection(
                    "127.0.0.1", self.upstream
                )
        except OSError:
            _abort(client_w)
            return
        if self._refusing:  # cut while connecting
            _abort(client_w)
            _abort(server_w)
            return
        self.connections += 1
        link = (client_w, server_w)
        self._links.add(link)
        up = asyncio.create_task(self._pipe(client_r, server_w, upstream=True))
        down = asyncio.create_task(self._pipe(server_r, client_w, upstream=False))
        for task in (up, down):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        # One side ended: end the other, as a real connection would
        for task in (up, down):
            task.cancel()
        self._links.discard(link)
        for writer in link:
            writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                await self._flowing.wait()
                if upstream:
                    self.upstream_bytes += len(data)
                    for marker in self.markers:
                        if marker in data:
                            self.markers[marker] = self.upstream_bytes
                    if self._rate:
                        await asyncio.sleep(len(data) / self._rate)
                        await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    def _drop_all(self, reset: bool) -> None:
        for link in list(self._links):
            for writer in link:
                if reset:
                    _abort(writer)
                else:
                    writer.close()
        self._links.clear()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0) where the socket allows it."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
