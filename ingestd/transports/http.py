"""HTTP in: ``POST /v1/devices/{device_id}/telemetry``.

The path names the device; Content-Type picks the codec (JSON when absent;
``application/senml+json`` for SenML). Answers, each only after the commit
that makes it true:

- 202 ``{"stored": n, "rejected": [...]}``: ``n`` readings were committed;
  rejected parts name their path and are kept as a dead letter.
- 400 when nothing in the body could be used, naming where it went wrong.
- 404 for another path, 405 for another method, 413 over the body limit,
  415 for an unknown Content-Type, 431 for oversized headers. All but 405
  and 431 are kept as dead letters (an oversized body: its first 4 KiB).
- 503 with Retry-After while the buffers are full; nothing is kept, the
  sender retries.

``GET /v1/ws?device=<id>`` upgrades to a WebSocket (``websocket``).

Over TLS (``http.tls_port``) with a client certificate, a connection may
write only as the device its certificate names: another device in the path
or in the payload is refused with 403 and kept as a dead letter.
"""

from __future__ import annotations

from urllib.parse import unquote

import orjson

from .. import clock, metrics
from ..codecs import catalog
from ..codecs.base import MAX_NAME, Codec, Decoded
from ..codecs.mapping import Mapping
from ..config import Http
from ..errors import DecodeError, IngestError
from ..model import Origin
from ..pipeline.batcher import Batcher
from . import websocket
from .http1 import HttpConnection, Request

PREFIX = b"/v1/devices/"
SUFFIX = b"/telemetry"
KEPT_OF_REFUSED = 4096  # bytes of an oversized body kept as its dead letter


class TelemetryEndpoint:
    """Turns requests into submissions; answers from the batcher's acks."""

    def __init__(
        self,
        config: Http,
        batcher: Batcher,
        window: clock.Window,
        retry_after_s: int = 1,
        mappings: dict[str, Mapping] | None = None,
    ) -> None:
        mappings = mappings or {}
        self.config = config
        self.batcher = batcher
        self.retry_after = b"Retry-After: %d\r\n" % retry_after_s
        self.codecs: dict[str, Codec] = {
            r.content_type.lower(): catalog.build(
                r.codec, r.options, window, mapping=mappings.get(r.mapping or "")
            )
            for r in config.routes
        }
        self.requests = 0

    def __call__(self, request: Request) -> None:
        self.requests += 1
        url = request.url.split(b"?", 1)[0]
        body = b"".join(request.body)
        received = clock.now_us()
        if not (url.startswith(PREFIX) and url.endswith(SUFFIX)):
            origin = Origin(None, "http", received, _source(request.peer, url))
            self._refuse(request, origin, body, 404, "no such endpoint")
            return
        if request.method != "POST":
            request.answer(405, b'{"error": "use POST"}', extra=b"Allow: POST\r\n")
            return
        device = _device_in(url)
        origin = Origin(device, "http", received, request.peer)
        if not device:
            self._refuse(request, origin, body, 404, "bad device id in path")
            return
        peer = request.conn.identity
        if peer is not None and not peer.may_write_as(device):
            metrics.tls_wrong_identity.labels("http").inc()
            self._refuse(request, origin, body, 403, peer.refusal(device))
            return
        if self.batcher.full:
            metrics.pushback.labels("http").inc()
            request.answer(
                503, b'{"error": "busy, retry later"}', extra=self.retry_after
            )
            return

        content_type = request.headers.get(b"content-type", b"application/json")
        media = content_type.split(b";", 1)[0].strip().decode("latin-1").lower()
        codec = self.codecs.get(media)
        if codec is None:
            self._refuse(request, origin, body, 415, f"unsupported type {media!r}")
            return
        decoded = Decoded()
        try:
            codec.decode(body, origin, decoded)
        except DecodeError as exc:
            self._refuse(request, origin, body, exc.http_status, str(exc), exc.path)
            return
        if peer is not None and (
            other := peer.stranger_in(decoded, self.batcher.aliases)
        ):
            metrics.tls_wrong_identity.labels("http").inc()
            self._refuse(request, origin, body, 403, peer.refusal(other))
            return
        self.batcher.submit(
            origin, decoded, body, (_answer_decoded, (request, decoded))
        )

    def upgrade(self, conn: HttpConnection, request: Request, rest: bytes) -> None:
        """``GET /v1/ws``: hand the connection to a WebSocket session."""
        checked = websocket.handshake(request, self.codecs)
        if isinstance(checked[0], int):
            conn.keep_alive = False
            conn.requeue(request)
            request.answer(checked[0], checked[1])  # type: ignore[arg-type]
            return
        device, codec, reply = checked
        peer = conn.identity
        if peer is not None and not peer.may_write_as(device):
            metrics.tls_wrong_identity.labels("websocket").inc()
            conn.keep_alive = False
            conn.requeue(request)
            origin = Origin(device, "websocket", clock.now_us(),
                            _source(request.peer, request.url))  # fmt: skip
            self._refuse(request, origin, b"", 403, peer.refusal(device))
            return
        conn.transport.write(reply)  # type: ignore[union-attr]
        session = websocket.WebSocketSession(
            conn,
            device,
            codec,
            self.batcher,
            self.config.max_body_bytes,  # type: ignore[arg-type]
        )
        session.start(conn, rest)

    def refused(self, request: Request, status: int, reason: str) -> None:
        """A request the connection cut short (too large, too slow): keep
        what came of its body, up to 4 KiB."""
        url = request.url.split(b"?", 1)[0]
        device = _device_in(url) or None
        why = f"{status}: {reason}"
        peer = request.conn.identity
        if device is not None and peer is not None and not peer.may_write_as(device):
            # Cut before its scope was checked: not filed under that device
            why, device = f"{why}; {peer.refusal(device)}", peer.device
        origin = Origin(device, "http", clock.now_us(), _source(request.peer, url))
        kept = b"".join(request.body)[:KEPT_OF_REFUSED]
        self.batcher.dead_letter(origin, kept, why, None)

    def _refuse(
        self,
        request: Request,
        origin: Origin,
        body: bytes,
        status: int,
        reason: str,
        path: str | None = None,
    ) -> None:
        """Keep the body as a dead letter; answer once that is committed."""
        answer = {"error": reason} if path is None else {"error": reason, "path": path}
        payload = orjson.dumps(answer)
        self.batcher.dead_letter(
            origin, body, reason, (_answer_error, (request, status, payload))
        )


def _device_in(url: bytes) -> str:
    """The device a telemetry path names, or "" if it names none usable
    (a second path segment, not UTF-8 once percent-decoded, NUL, over the
    name limit). A ``/`` in an id is sent as ``%2F``: ``hall/lamp`` (an id
    an MQTT route may capture) is ``/v1/devices/hall%2Flamp/telemetry``."""
    if not (url.startswith(PREFIX) and url.endswith(SUFFIX)):
        return ""
    try:
        raw_id = url[len(PREFIX) : -len(SUFFIX)].decode("ascii")
        device = unquote(raw_id, errors="strict")
    except UnicodeDecodeError:
        return ""
    if "/" in raw_id or "\x00" in device or len(device) > MAX_NAME:
        return ""
    return device


def _source(peer: str, url: bytes) -> str:
    """Peer and path, as the dead letter's source names them."""
    return f"{peer} {url[:200].decode('latin-1')}"


def _answer_decoded(token: tuple[Request, Decoded]) -> None:
    request, decoded = token
    request.answer(202 if decoded.usable else 400, orjson.dumps(decoded.answer()))


def _answer_error(token: tuple[Request, int, bytes]) -> None:
    request, status, payload = token
    request.answer(status, payload)


__all__ = ["TelemetryEndpoint", "IngestError"]
