"""Server side of ``bench/test_bench_http.py``: one telemetry app per stack.

    python -m bench.http_stacks httptools PORT
    python -m bench.http_stacks aiohttp PORT
    python -m bench.http_stacks endpoint PORT DSN

Each runs on uvloop in its own process, so the benchmark's client never
shares an event loop (or, on two cores, a core) with the server it measures.

- ``httptools``: ``ingestd.transports.http1`` with a handler doing the
  endpoint's work minus the database: the path as ``TelemetryEndpoint``
  reads it, the codec by Content-Type, a full ``JsonCodec`` decode, then
  202 ``{"stored": n}`` at once.
- ``aiohttp``: the same work in an ``aiohttp.web.Application``, written the
  way an aiohttp app would be: its router takes the device from the path.
  Access logging is off, as ingestd logs no line per request.
- ``endpoint``: the real ``TelemetryEndpoint`` and ``Batcher`` on a pool to
  ``DSN`` (migrated beforehand), answering after the commit.

SIGTERM stops a server cleanly; ``endpoint`` flushes what it took first.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from urllib.parse import unquote

import orjson
import uvloop
from aiohttp import web

from ingestd import clock
from ingestd.codecs import catalog
from ingestd.codecs.base import Codec, Decoded
from ingestd.config import Http
from ingestd.errors import DecodeError
from ingestd.model import Origin
from ingestd.transports import http1
from ingestd.transports.http import PREFIX, SUFFIX

MAX_BODY = 1024 * 1024  # ingestd's defaults (config.Http)
MAX_HEADER = 16 * 1024
IDLE_TIMEOUT = 60.0
STACKS = ("httptools", "aiohttp", "endpoint")
JSON = "application/json"  # the endpoint's type when none is given


class Telemetry:
    """The endpoint's per-request work without the batcher and database."""

    def __init__(self) -> None:
        window = clock.Window()
        self.codecs: dict[str, Codec] = {
            r.content_type: catalog.build(r.codec, r.options, window)
            for r in Http().routes
        }

    def accept(
        self, device: str, media: str, body: bytes, peer: str
    ) -> tuple[int, bytes]:
        """Decode ``body`` for ``device``; the status and body to answer."""
        codec = self.codecs.get(media)
        if codec is None:
            return 415, orjson.dumps({"error": f"unsupported type {media!r}"})
        decoded = Decoded()
        try:
            codec.decode(body, Origin(device, "http", clock.now_us(), peer), decoded)
        except DecodeError as exc:
            return exc.http_status, orjson.dumps({"error": str(exc)})
        return 202, orjson.dumps({"stored": len(decoded.readings)})


def httptools_handler(work: Telemetry) -> Callable[[http1.Request], None]:
    """A ``http1.serve`` handler reading path and type as the endpoint does."""

    def handle(request: http1.Request) -> None:
        url = request.url.split(b"?", 1)[0]
        if not (url.startswith(PREFIX) and url.endswith(SUFFIX)):
            request.answer(404, b'{"error": "no such endpoint"}')
            return
        if request.method != "POST":
            request.answer(405, b'{"error": "use POST"}', extra=b"Allow: POST\r\n")
            return
        device = unquote(url[len(PREFIX) : -len(SUFFIX)].decode("utf-8", "replace"))
        content_type = request.headers.get(b"content-type", b"application/json")
        media = content_type.split(b";", 1)[0].strip().decode("latin-1").lower()
        status, body = work.accept(device, media, b"".join(request.body), request.peer)
        request.answer(status, body)

    return handle


def aiohttp_app(work: Telemetry) -> web.Application:
    """The same work as an aiohttp application with a routed handler."""

    async def telemetry(request: web.Request) -> web.Response:
        body = await request.read()
        media = request.content_type  # application/octet-stream when absent
        if "Content-Type" not in request.headers:
            media = JSON
        status, answer = work.accept(
            request.match_info["device"], media, body, request.remote or "?"
        )
        return web.Response(status=status, body=answer, content_type=JSON)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/v1/devices/{device}/telemetry", telemetry)
    return app


async def serve_httptools(port: int, stop: asyncio.Event) -> None:
    server, connections, sweeper = await http1.serve(
        httptools_handler(Telemetry()), "127.0.0.1", port, MAX_BODY, MAX_HEADER,
        IDLE_TIMEOUT,
    )  # fmt: skip
    await stop.wait()
    server.close()
    _close_connections(connections)
    sweeper.cancel()


async def serve_aiohttp(port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(aiohttp_app(Telemetry()), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await stop.wait()
    await runner.cleanup()


async def serve_endpoint(port: int, dsn: str, stop: asyncio.Event) -> None:
    # Imported here: the two database-free stacks need none of it
    from ingestd.config import Http, Pipeline
    from ingestd.pipeline.batcher import Batcher
    from ingestd.storage import database
    from ingestd.transports.http import TelemetryEndpoint

    pool = await database.connect_pool(dsn, 4, 10.0)
    p = Pipeline()
    batcher = Batcher(pool, p.flush_rows, p.flush_interval_ms, p.ring_capacity)
    batcher.start()
    endpoint = TelemetryEndpoint(Http(), batcher, clock.Window())
    server, connections, sweeper = await http1.serve(
        endpoint, "127.0.0.1", port, MAX_BODY, MAX_HEADER, IDLE_TIMEOUT,
        refused=endpoint.refused,
    )  # fmt: skip
    await stop.wait()
    server.close()
    await batcher.close()
    _close_connections(connections)
    sweeper.cancel()
    await pool.close()


def _close_connections(connections: set[http1.HttpConnection]) -> None:
    for conn in list(connections):
        if conn.transport is not None:
            conn.transport.close()


async def main(stack: str, port: int, dsn: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if stack == "httptools":
        await serve_httptools(port, stop)
    elif stack == "aiohttp":
        await serve_aiohttp(port, stop)
    else:
        await serve_endpoint(port, dsn, stop)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (2, 3) or args[0] not in STACKS:
        sys.exit(__doc__.split("\n\n")[1] if __doc__ else "bad arguments")
    if args[0] == "endpoint" and len(args) != 3:
        sys.exit("endpoint needs a DSN")
    uvloop.run(main(args[0], int(args[1]), args[2] if len(args) == 3 else ""))
