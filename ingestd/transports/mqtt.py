"""MQTT in: a gmqtt subscriber that acknowledges after commit.

Accepts PUBLISH on the configured topic patterns at QoS 0 and 1 (a QoS 2
subscription is granted as 1). The device is the ``{device}`` capture of the
route that matched; a topic no route takes is a dead letter.

Acknowledgement: gmqtt, even with ``optimistic_acknowledgement=False``,
runs one task per message and PUBACKs when that task ends, in whatever order
tasks end; MQTT requires PUBACKs in arrival order (3.1.1 sec. 4.6), and the
task per message doubled the CPU per message when measured. So this module
takes over gmqtt's QoS 1 publish hook: messages are decoded inline, and the
batcher sends their PUBACKs after the flush that holds them commits, in
arrival order. A PUBACK is only sent on the connection its PUBLISH came in
on: after a reconnect the broker redelivers the unacknowledged ones from the
persistent session, and their second copies are stored idempotently.

Push-back: the broker sends at most ``receive_maximum`` (MQTT 5) or its
``max_inflight_messages`` (3.1.1) unacknowledged messages; when the batcher
is full, this subscriber also stops reading the socket until it drains.

On MQTT 5, a route may ask for a content type or user properties, so one
topic can carry several formats; the first route that takes a message reads
it. A message that no route takes is a dead letter (reason 0x90).

TLS: with ``mqtt.tls`` the connection is TLS, verified against
``mqtt.ca_file`` (else the system's trust), and ingestd shows its own client
certificate when ``mqtt.certificate`` is set: what ``ingestd certs
broker-config`` sets the broker up to require.

Left out: QoS 2 exactly-once handshakes (readings are idempotent, QoS 1 is
enough).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import UNLIMITED_RECONNECTS, MQTTv50, MQTTv311

from .. import clock, log, metrics
from ..codecs.base import Decoded
from ..codecs.mapping import Mapping
from ..config import Mqtt
from ..errors import DecodeError, IngestError, NoRoute
from ..model import Origin
from ..pipeline.batcher import Batcher
from . import routes

DRAIN_S = 0.2  # at stop, reading (and dropping) before DISCONNECT
RECEIVE_MAXIMUM = 20_000  # MQTT 5: unacknowledged PUBLISHes the broker may send


class MqttSubscriber:
    """Subscribes to the routes' topic filters and feeds the batcher."""

    def __init__(
        self,
        config: Mqtt,
        batcher: Batcher,
        window: clock.Window,
        mappings: dict[str, Mapping] | None = None,
    ) -> None:
        mappings = mappings or {}
        self.config = config
        self.batcher = batcher
        self.routes = routes.build(config.routes, window, mappings, "mqtt")
        self.messages = 0
        self.connected = asyncio.Event()
        self._generation = 0
        self._paused = False
        self._stopping = False
        self._holding = False
        self._v5 = config.version == 5
        self._tls = tls_context(config) if config.tls else False
        properties: dict[str, Any] = {}
        if self._v5:
            properties["session_expiry_interval"] = config.session_expiry_s
            properties["receive_maximum"] = RECEIVE_MAXIMUM
        worker = os.environ.get("INGESTD_WORKER")
        self.client = gmqtt.Client(
            f"{config.client_id}-{worker}" if worker else config.client_id,
            clean_session=config.clean_session,
            optimistic_acknowledgement=False,
            **properties,
        )
        self.client.set_config(
            {"reconnect_retries": UNLIMITED_RECONNECTS, "reconnect_delay": 1}
        )
        if config.username:
            self.client.set_auth_credentials(config.username, config.password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_qos0
        handler = self.client._package_handler
        handler._handle_qos_1_publish_packet = self._on_qos1
        self._puback = handler._send_puback

    # -- lifecycle ------------------------------------------------------

    async def start(self) -> None:
        """Connect, retrying with backoff until the broker answers."""
        delay = 0.2
        version = MQTTv50 if self._v5 else MQTTv311
        while True:
            try:
                await self.client.connect(
                    self.config.host, self.config.port, ssl=self._tls,
                    keepalive=self.config.keepalive_s, version=version,
                )  # fmt: skip
                return
            except (OSError, gmqtt.mqtt.handler.MQTTConnectError) as exc:
                log.mqtt.warning(
                    "broker %s:%d not reachable (%s); retrying in %.1fs",
                    self.config.host, self.config.port, exc, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def hold(self) -> None:
        """Take no more messages; those not taken stay with the broker."""
        self._holding = True
        transport = self._transport()
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    async def stop(self) -> None:
        """Stop taking messages; unacknowledged ones stay with the broker.

        The socket is read (and what arrives dropped, unacknowledged) for a
        moment before DISCONNECT: closing it with unread bytes would reset
        the connection, and the broker would lose the last PUBACKs with it.
        """
        self._stopping = True
        transport = self._transport()
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
            await asyncio.sleep(DRAIN_S)
        self._generation += 1  # nothing more is acknowledged on this link
        await self.client.disconnect()

    def _on_connect(self, client: Any, flags: Any, rc: Any, properties: Any) -> None:
        self._generation += 1
        prefix = f"$share/{self.config.share_group}/" if self.config.share_group else ""
        for topic_filter in self.routes.filters:
            client.subscribe(prefix + topic_filter, qos=1)
        log.mqtt.info(
            "connected to %s:%d, subscribed to %s",
            self.config.host, self.config.port, ", ".join(self.routes.filters),
        )  # fmt: skip
        self._paused = False
        self.connected.set()

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        self.connected.clear()
        if not self._stopping:
            log.mqtt.warning("disconnected from broker; gmqtt reconnects")

    # -- messages -------------------------------------------------------

    def _on_qos0(self, client: Any, topic: str, payload: bytes, qos: int, props: Any):
        self._handle(topic, payload, props, None)
        return 0

    def _on_qos1(self, mid: int, payload: bytes, topic: str, props: Any) -> None:
        self._handle(topic, payload, props, mid)

    def _handle(self, topic: Any, payload: bytes, props: Any, mid: int | None) -> None:
        """Decode one message and hand it on; a QoS 1 message (``mid``) is
        acknowledged after its commit, with what its PUBACK is to say."""
        if self._holding:
            return  # unacknowledged: the broker delivers it again
        self.messages += 1
        batcher = self.batcher
        if type(topic) is not str:  # gmqtt passes undecodable topics as bytes
            topic = topic.decode("utf-8", "replace")
        origin = Origin(None, "mqtt", clock.now_us(), topic)
        decoded = Decoded()
        # One token per message: (connection, mid, what decides the reason)
        try:
            self._decode(topic, payload, props, origin, decoded)
        except IngestError as exc:  # MQTT 5 says why in the PUBACK
            ack = (
                None
                if mid is None
                else (self._acknowledge, (self._generation, mid, exc))
            )
            batcher.dead_letter(origin, payload, str(exc), ack)
        except Exception as exc:  # a codec bug must not kill the stream
            log.mqtt.exception("decoding a message on %s failed", topic)
            ack = (
                None
                if mid is None
                else (self._acknowledge, (self._generation, mid, None))
            )
            batcher.dead_letter(origin, payload, f"internal error: {exc}", ack)
        else:  # judged at commit: 0x99 if nothing of it was usable
            ack = (
                None
                if mid is None
                else (self._acknowledge, (self._generation, mid, decoded))
            )
            batcher.submit(origin, decoded, payload, ack)
        if batcher.full and not self._paused:
            self._pause()

    def _decode(
        self, topic: str, payload: bytes, props: Any, origin: Origin, out: Decoded
    ) -> None:
        # A character is 1 to 4 bytes: encode only when it could be too long
        limit = self.config.max_topic_bytes
        if len(topic) > limit or (
            len(topic) * 4 > limit and len(topic.encode()) > limit
        ):
            raise NoRoute("topic too long", "topic")
        routes.decode(
            self.routes, topic, payload, self.config.max_payload_bytes, origin, out,
            props, _properties,
        )  # fmt: skip

    def _acknowledge(self, token: tuple[Any, ...]) -> None:
        if token[0] != self._generation:
            return  # its connection is gone; the broker will redeliver it
        outcome = token[2] if self._v5 else None
        if outcome is None:
            reason = 0
        elif isinstance(outcome, Decoded):  # the batcher may have refused it
            # whole since (pipeline.max_readings_per_message)
            reason = 0 if outcome.usable else DecodeError.mqtt_reason
        else:
            reason = outcome.mqtt_reason
        self._puback(token[1], reason_code=reason)

    # -- push-back ------------------------------------------------------

    def _transport(self) -> asyncio.Transport | None:
        connection = self.client._connection
        protocol = getattr(connection, "_protocol", None)
        return getattr(protocol, "_transport", None)

    def _pause(self) -> None:
        transport = self._transport()
        if transport is None or transport.is_closing():
            return
        transport.pause_reading()
        self._paused = True
        metrics.pushback.labels("mqtt").inc()
        self.batcher.on_space(self._resume)

    def _resume(self) -> None:
        transport = self._transport()
        self._paused = False
        if self._holding:
            return
        if transport is not None and not transport.is_closing():
            transport.resume_reading()


def tls_context(config: Mqtt) -> ssl.SSLContext:
    """Client TLS to the broker: its certificate checked against
    ``ca_file`` and its host name, ours shown when configured."""
    context = ssl.create_default_context(cafile=config.ca_file)
    if config.certificate:
        context.load_cert_chain(config.certificate, config.private_key)
    return context


def _properties(props: Any) -> tuple[str | None, dict[str, Any]]:
    """MQTT 5 content type and user properties, as gmqtt hands them over."""
    props = props or {}
    sent = props.get("content_type")
    return (sent[0] if sent else None), dict(props.get("user_property") or ())
