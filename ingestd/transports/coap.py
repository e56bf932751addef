"""CoAP in: ``POST /v1/devices/{device_id}/telemetry`` over UDP and TCP.

The protocol stack is aiocoap's (RFC 7252 over UDP, RFC 8323 over TCP and
over TLS on its own port with ``coap.certificate``); this module is one
resource.
Content-Format picks the codec (50 JSON, 110 SenML JSON by default; a request
without one is JSON). Block1 transfers (RFC 7959) are reassembled by aiocoap
before the resource sees them, up to ``coap.max_payload_bytes``.

Answers, each after the commit that makes it true, with a JSON diagnostic
payload: 2.04 ``{"stored": n, "rejected": [...]}``; 4.00 when nothing could
be used (naming where); 4.04 for another path; 4.05 for another method; 4.13
over the size limit; 4.15 for an unknown Content-Format; 5.03 with Max-Age
while the buffers are full (nothing kept; the device retries). A confirmable
request is acknowledged by aiocoap at once if the commit takes a while (a
separate response, RFC 7252 5.2.2) after 0.1 s; its response still follows
the commit.

Known shortcoming: aiocoap's UDP server reads one datagram per loop wake-up
with the default socket receive buffer, so bursts queue in the kernel and,
past about 6,000 readings/s here, overflow it (see tuning.md); a larger
SO_RCVBUF on that socket or a batched receive path would fix it.

Left out: Observe and GET of stored readings (ingestd takes telemetry in, it
does not serve it), and DTLS (devices that need security use CoAP over TLS;
see the mTLS scope convention).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Literal

import aiocoap
import aiocoap.error
import aiocoap.resource
import orjson
from aiocoap.numbers.codes import Code

from .. import clock, log, metrics
from ..codecs import catalog
from ..codecs.base import MAX_NAME, Codec, Decoded
from ..codecs.mapping import Mapping
from ..config import JSON, Coap, Security
from ..errors import (
    DecodeError,
    Forbidden,
    IngestError,
    PayloadTooLarge,
    UnsupportedFormat,
)
from ..model import Origin
from ..pipeline.batcher import Batcher
from ..security.gate import Gate, Peer

TRANSPORTS = {"udp": "udp6", "tcp": "tcpserver"}


def _unparsable_on_bad_text() -> None:
    """Make aiocoap treat an option that is not valid UTF-8 as unparsable.

    aiocoap 0.4 catches only ``UnparsableMessage`` around its decoders; a
    Uri-Path of invalid UTF-8 raised ``UnicodeDecodeError`` out of the UDP
    callback (an unhandled loop exception per datagram) and out of the TCP
    reader. As ``UnparsableMessage`` it is ignored over UDP with a warning
    naming the peer, and aborts the connection over TCP, as RFC 8323 5.6
    asks. Remove once aiocoap converts it itself.
    """
    from aiocoap.message import Message
    from aiocoap.transports import tcp

    def strict(decode: Any) -> Any:
        def decoding(*args: Any, **kwargs: Any) -> Any:
            try:
                return decode(*args, **kwargs)
            except ValueError as exc:
                raise aiocoap.error.UnparsableMessage(str(exc)) from exc

        decoding.strict = True  # type: ignore[attr-defined]
        return decoding

    if not getattr(Message.decode, "strict", False):
        Message.decode = classmethod(strict(Message.decode.__func__))  # type: ignore[method-assign]
        tcp._decode_message = strict(tcp._decode_message)


_unparsable_on_bad_text()


class Telemetry(aiocoap.resource.Resource, aiocoap.resource.PathCapable):
    """The ``v1/devices`` subtree: ``{device}/telemetry`` under it."""

    def __init__(
        self,
        config: Coap,
        batcher: Batcher,
        window: clock.Window,
        mappings: dict[str, Mapping] | None = None,
        gate: Gate | None = None,
    ) -> None:
        super().__init__()
        mappings = mappings or {}
        self.config = config
        self.gate = gate
        # aiocoap tells a resource nothing of connections, so a TLS
        # connection's certificate is read at its first request and kept here
        self._peers: weakref.WeakKeyDictionary[Any, Peer | None] = (
            weakref.WeakKeyDictionary()
        )
        self.batcher = batcher
        self.codecs: dict[int, Codec] = {
            r.content_format: catalog.build(
                r.codec, r.options, window, mapping=mappings.get(r.mapping or "")
            )
            for r in config.routes
        }
        self.requests = 0
        self.stopping = False

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        self.requests += 1
        path = request.opt.uri_path
        scheme = request.remote.scheme or "coap"
        origin = Origin(None, scheme, clock.now_us(), str(request.remote.hostinfo))
        if len(path) != 2 or path[1] != "telemetry":
            return _diagnostic(Code.NOT_FOUND, {"error": "no such resource"})
        device = path[0]
        if not device or "\x00" in device or len(device) > MAX_NAME:
            return _diagnostic(Code.NOT_FOUND, {"error": "bad device id in path"})
        origin.device = device
        peer: Peer | None = None
        if self.gate is not None and scheme == "coaps+tcp":
            admitted = self._admit(request.remote)
            if admitted is False:
                reason = f"certificate revoked; may not write as {device!r}"
            elif admitted is not None and not admitted.may_write_as(device):
                reason = admitted.refusal(device)
            else:
                peer, reason = admitted, ""
            if reason:
                metrics.tls_wrong_identity.labels("coap").inc()
                await self._commit(origin, None, request.payload[:4096], reason)
                return _diagnostic(Code.FORBIDDEN, {"error": reason})
        if request.code != Code.POST:
            return _diagnostic(Code.METHOD_NOT_ALLOWED, {"error": "use POST"})
        if self.batcher.full or self.stopping:
            metrics.pushback.labels("coap").inc()
            answer = _diagnostic(Code.SERVICE_UNAVAILABLE, {"error": "busy"})
            answer.opt.max_age = self.config.retry_after_s
            return answer

        payload = request.payload
        fmt = request.opt.content_format
        codec = self.codecs.get(JSON if fmt is None else int(fmt))
        decoded = Decoded()
        try:
            if len(payload) > self.config.max_payload_bytes:
                limit = self.config.max_payload_bytes
                raise PayloadTooLarge(f"payload over {limit} bytes", "byte 0")
            if codec is None:
                raise UnsupportedFormat(
                    f"unsupported Content-Format {fmt}", "content-format"
                )
            codec.decode(payload, origin, decoded)
            if peer is not None and (
                other := peer.stranger_in(decoded, self.batcher.aliases)
            ):
                metrics.tls_wrong_identity.labels("coap").inc()
                raise Forbidden(peer.refusal(other))
        except IngestError as exc:
            body = {"error": getattr(exc, "reason", str(exc))}
            if isinstance(exc, DecodeError) and not isinstance(exc, UnsupportedFormat):
                body["path"] = exc.path
            await self._commit(origin, None, payload[:4096], str(exc))
            return _diagnostic(Code(_code(exc.coap_code)), body)

        await self._commit(origin, decoded, payload, "")
        code = Code.CHANGED if decoded.usable else Code.BAD_REQUEST
        return _diagnostic(code, decoded.answer())

    def _admit(self, remote: Any) -> Peer | None | Literal[False]:
        """The certificate of ``remote``'s connection; False if refused."""
        try:
            return self._peers[remote]
        except KeyError:
            pass
        # RFC 8323 connections keep their asyncio transport here (aiocoap
        # has no public accessor for the TLS session)
        transport = remote._transport
        ref = weakref.ref(remote)

        def cut() -> None:
            connection = ref()
            if connection is not None and connection._transport is not None:
                connection._transport.abort()

        try:
            peer = self.gate.admit(transport.get_extra_info("ssl_object"), cut)  # type: ignore[union-attr]
        except PermissionError as exc:
            log.security.warning("refused %s: %s", remote.hostinfo, exc)
            transport.abort()
            return False
        self._peers[remote] = peer
        weakref.finalize(remote, self.gate.forget, peer, cut)  # type: ignore[union-attr]
        return peer

    async def _commit(
        self, origin: Origin, decoded: Decoded | None, raw: bytes, reason: str
    ) -> None:
        """Hand the message to the batcher and wait for its commit."""
        done = asyncio.get_running_loop().create_future()
        ack = (_settle, done)
        if decoded is None:
            self.batcher.dead_letter(origin, raw, reason, ack)
        else:
            self.batcher.submit(origin, decoded, raw, ack)
        await done


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _code(dotted: str) -> int:
    klass, detail = dotted.split(".")
    return int(klass) << 5 | int(detail)


def _diagnostic(code: Code, body: dict[str, Any]) -> aiocoap.Message:
    return aiocoap.Message(code=code, payload=orjson.dumps(body), content_format=JSON)


async def serve(
    config: Coap,
    batcher: Batcher,
    window: clock.Window,
    mappings: dict[str, Mapping] | None = None,
    gate: Gate | None = None,
    plain_allowed: bool = True,
) -> tuple[list[aiocoap.Context], Telemetry]:
    """Listen on the configured CoAP transports; returns their contexts.

    ``gate`` (from ``[security]``) checks client certificates on CoAP over
    TLS; ``plain_allowed=False`` (mTLS required) keeps UDP and TCP closed.
    """
    site = aiocoap.resource.Site()
    telemetry = Telemetry(config, batcher, window, mappings, gate)
    site.add_resource(["v1", "devices"], telemetry)
    contexts = []
    plain = [TRANSPORTS[t] for t in config.transports if t in TRANSPORTS]
    if not plain_allowed:
        plain = []
    if plain:
        context = await aiocoap.Context.create_server_context(
            site,
            bind=(config.host, config.port),
            transports=plain,
            loggername="ingestd.coap.stack",
        )
        _ignore_icmp_errors(context)
        contexts.append(context)
    if "tls" in config.transports:
        # aiocoap takes the server's TLS context through this argument
        tls = _tls_context(config, gate)
        contexts.append(
            await aiocoap.Context.create_server_context(
                site,
                # aiocoap's TLS server listens on the port it is given plus
                # one (5683 -> 5684), so it is given the one below
                bind=(config.host, config.tls_port - 1),
                transports=["tlsserver"],
                loggername="ingestd.coap.stack",
                _ssl_context=tls,
            )  # fmt: skip
        )
    where = []
    if plain:
        names = ", ".join(t for t in config.transports if t != "tls")
        where.append(f"{config.host}:{config.port} ({names})")
    if "tls" in config.transports:
        where.append(f"{config.host}:{config.tls_port} (TLS)")
    log.coap.info("listening on %s", " and ".join(where) or "nothing")
    return contexts, telemetry


def _ignore_icmp_errors(context: aiocoap.Context) -> None:
    """Turn off IP(V6)_RECVERR on the UDP server socket.

    aiocoap asks the kernel for ICMP errors so a client can fail fast; for
    a server they only say a device went away. Worse, after the first
    "port unreachable" (a sender that closed its socket before the answer
    came) aiocoap 0.4.17's UDP endpoint stopped reading datagrams at all
    here, so one such sender silenced CoAP over UDP for everyone
    (``tests/test_coap.py``, garbage test). Without RECVERR the kernel
    keeps those errors to itself.
    """
    import socket

    from aiocoap.util import socknumbers

    if not socknumbers.HAS_RECVERR:
        return
    options = (
        (socket.IPPROTO_IP, socknumbers.IP_RECVERR),
        (socket.IPPROTO_IPV6, socknumbers.IPV6_RECVERR),
    )
    for manager in context.request_interfaces:
        endpoint = getattr(
            getattr(manager, "token_interface", None), "message_interface", None
        )
        transport = getattr(endpoint, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or sock.type != socket.SOCK_DGRAM:
            continue
        for level, option in options:
            try:
                sock.setsockopt(level, option, 0)
            except OSError:  # IPv4-only socket
                pass


def _tls_context(config: Coap, gate: Gate | None) -> Any:
    """The TLS context: ``coap.certificate`` when set, else ``[security]``'s."""
    gate = gate or Gate(Security())
    return gate.context(["coap"], config.certificate, config.private_key)
