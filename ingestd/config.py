"""The TOML configuration, validated into structs at start-up.

An unknown key or a bad value stops start-up with a message that names it
(``ConfigError``). Every field has a default that runs on one machine, so
an empty file is a valid configuration.
"""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from . import clock
from .codecs import catalog, mapping
from .codecs.mapping import Mapping
from .errors import ConfigError, DecodeError
from .transports import routes as topics
from .transports.amqp import AmqpFeed
from .transports.nats import NatsFeed


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class Database(_Section):
    dsn: str = ""  # empty: $INGESTD_DSN, else an embedded server in state_dir
    state_dir: str = ".ingestd"
    pool_size: int = msgspec.field(default=4)
    connect_timeout_s: float = 10.0


class Pipeline(_Section):
    flush_rows: int = 2000  # flush when this many readings wait
    flush_interval_ms: float = 20.0  # ... or when the oldest waited this long
    ring_capacity: int = 100_000  # readings held before senders are pushed back
    heartbeat_timeout_s: float = 120.0  # silent this long: device is offline
    plausible_from: str = "2000-01-01T00:00:00Z"
    plausible_future_s: float = 86400.0
    retry_after_s: int = 1  # what a 503 tells HTTP senders
    flush_timeout_s: float = 30.0  # a flush unanswered this long: reconnect, retry
    # One message with more (readings and rejected parts) is refused whole
    max_readings_per_message: Annotated[int, msgspec.Meta(ge=1)] = 50_000


class Route(_Section):
    """Where messages come from and which codec reads them.

    ``topic`` is an MQTT topic pattern with named captures, e.g.
    ``devices/{device}/telemetry``; ``{device}`` becomes the transport
    identity, ``{device...}`` takes the rest of the topic. A route without
    ``{device}`` is a shared gateway topic. On MQTT 5, ``content_type`` and
    ``user_properties`` narrow a route to messages that carry them; routes
    are tried in order and the first that matches reads the message.
    """

    topic: str
    codec: str = "json"
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    mapping: str | None = None  # a device type in [mappings]
    content_type: str | None = None
    user_properties: dict[str, str] = msgspec.field(default_factory=dict)


def bus_routes() -> list[Route]:
    """The default routes of the AMQP and NATS feeds: dotted subjects."""
    return [
        Route(topic="devices.{device}.telemetry", codec="json"),
        Route(topic="devices.{device}.senml", codec="senml"),
    ]


class HttpRoute(_Section):
    """Which codec reads a request body of this Content-Type."""

    content_type: str
    codec: str = "json"
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    mapping: str | None = None


class Mqtt(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 1883
    client_id: str = "ingestd"
    username: str | None = None
    password: str | None = None
    share_group: str = ""  # subscribe as $share/<group>/<filter> when set
    keepalive_s: int = 30
    clean_session: bool = False
    session_expiry_s: int = 86400
    version: Literal[3, 5] = 5
    max_topic_bytes: int = 512
    max_payload_bytes: int = 256 * 1024
    # TLS to the broker; with certificate and private_key, ingestd's own
    # client certificate (`ingestd certs broker-config` issues one)
    tls: bool = False
    ca_file: str | None = None  # broker's CA bundle; None: the system's
    certificate: str | None = None  # PEM chain: leaf, then intermediates
    private_key: str | None = None
    routes: list[Route] = msgspec.field(
        default_factory=lambda: [
            Route(topic="devices/{device}/telemetry", codec="json"),
            Route(topic="devices/{device}/senml", codec="senml"),
        ]
    )


class Http(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: int = 1024 * 1024
    max_header_bytes: int = 16 * 1024
    idle_timeout_s: float = 60.0
    header_timeout_s: float = 10.0  # a request head slower than this: closed
    body_timeout_s: float = 30.0  # a request body slower than this: closed
    tls_port: Port = 8443  # HTTPS and WSS, when security.certificate is set
    routes: list[HttpRoute] = msgspec.field(
        default_factory=lambda: [
            HttpRoute(content_type="application/json", codec="json"),
            HttpRoute(content_type="text/json", codec="json"),
            HttpRoute(content_type="application/senml+json", codec="senml"),
            HttpRoute(content_type="application/sensml+json", codec="senml"),
            HttpRoute(content_type="application/senml+cbor", codec="senml_cbor"),
            HttpRoute(content_type="application/msgpack", codec="msgpack"),
            HttpRoute(content_type="application/x-msgpack", codec="msgpack"),
            HttpRoute(content_type="text/plain", codec="influx"),
        ]
    )


# CoAP Content-Formats from the IANA registry
JSON, SENML_JSON, SENML_CBOR = 50, 110, 112


class CoapRoute(_Section):
    """Which codec reads a CoAP payload of this Content-Format."""

    content_format: int
    codec: str = "json"
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    mapping: str | None = None


class Coap(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 5683  # UDP, and TCP (RFC 8323) on the same number
    tls_port: Port = 5684  # CoAP over TLS (RFC 8323), when "tls" is listed
    transports: list[Literal["udp", "tcp", "tls"]] = msgspec.field(
        default_factory=lambda: ["udp", "tcp"]
    )
    certificate: str | None = None  # PEM chain for "tls"
    private_key: str | None = None
    max_payload_bytes: int = 64 * 1024
    retry_after_s: int = 1
    routes: list[CoapRoute] = msgspec.field(
        default_factory=lambda: [
            CoapRoute(content_format=JSON, codec="json"),
            CoapRoute(content_format=SENML_JSON, codec="senml"),
            CoapRoute(content_format=SENML_CBOR, codec="senml_cbor"),
        ]
    )


class Security(_Section):
    """TLS on ingestd's own listeners and the device PKI.

    With ``certificate`` and ``private_key`` set, HTTPS/WSS listen on
    ``http.tls_port`` and CoAP over TLS uses them too. ``mtls`` requires a
    client certificate chaining to ``client_ca`` on every TLS listener and
    turns the plain listeners (HTTP, CoAP over UDP and TCP) off unless
    ``allow_plain`` says they serve a trusted gateway network.
    """

    mtls: bool = False
    certificate: str | None = None  # server chain (PEM): leaf, then intermediates
    private_key: str | None = None
    client_ca: str | None = None  # CA bundle device certificates chain to
    allow_plain: bool = False  # with mtls: keep plain listeners (trusted nets)
    pki_dir: str | None = None  # `ingestd certs` files; default <state_dir>/pki
    revocation_poll_s: float = 0.5  # revoked devices' connections closed by then
    handshake_timeout_s: float = 10.0


class Admin(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9464


class Orders(_Section):
    """The order dispatcher: rules on committed readings (ingestd/orders)."""

    enabled: bool = True
    dispatcher_ring: Annotated[int, msgspec.Meta(ge=1)] = 50_000
    bindings_refresh_s: float = 5.0
    rules_refresh_s: float = 5.0
    # Catch-up from the readings table: re-read this many ingest sequence
    # numbers below the watermark (flushes in flight), in pages this large
    catchup_margin: Annotated[int, msgspec.Meta(ge=0)] = 20_000
    catchup_page: Annotated[int, msgspec.Meta(ge=1)] = 5_000
    history_s: Annotated[float, msgspec.Meta(gt=0)] = 86_400.0  # read back at most
    condition_every_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0  # per shipment
    watermark_every_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0


class Config(_Section):
    database: Database = msgspec.field(default_factory=Database)
    pipeline: Pipeline = msgspec.field(default_factory=Pipeline)
    mqtt: Mqtt = msgspec.field(default_factory=Mqtt)
    http: Http = msgspec.field(default_factory=Http)
    coap: Coap = msgspec.field(default_factory=Coap)
    admin: Admin = msgspec.field(default_factory=Admin)
    orders: Orders = msgspec.field(default_factory=Orders)
    security: Security = msgspec.field(default_factory=Security)
    amqp: AmqpFeed = msgspec.field(default_factory=AmqpFeed)
    nats: NatsFeed = msgspec.field(default_factory=NatsFeed)
    mappings: dict[str, Mapping] = msgspec.field(default_factory=dict)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def load(path: str | os.PathLike[str] | None, files: bool = True) -> Config:
    """Read and validate a TOML file; ``None`` gives the defaults.

    Errors name the file and, where it can be found, the line:
    ``ingestd.toml:12: Invalid enum value 'xml' - at `mqtt.routes[0].codec```.
    Without ``files`` the certificate and key files it names need not exist
    yet: ``ingestd certs`` is what makes them.
    """
    if path is None:
        return Config()
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return parse(raw, str(path), files)
    except ConfigError as exc:
        where = re.search(r"at `([^`]+)`|: ([\w.\[\]]+): ", str(exc))
        line = locate(text, where.group(1) or where.group(2)) if where else None
        if line is None:
            raise
        name = str(path)
        message = str(exc).removeprefix(f"{name}: ")
        raise ConfigError(f"{name}:{line}: {message}") from None


def parse(raw: dict[str, object], name: str = "config", files: bool = True) -> Config:
    """Validate an already-parsed TOML document (``files``: see ``load``)."""
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        # msgspec says "... - at `$.mqtt.routes[0].codec`"; show it TOML-style
        message = _toml_path(str(exc))
        if "`mappings[...]" in message:
            message = _name_mapping(raw, message)
        raise ConfigError(f"{name}: {message}") from None
    _check(config, name, files)
    return config


def locate(text: str, where: str) -> int | None:
    """The line of ``text`` that sets ``where`` (``mqtt.routes[1].codec``).

    Array tables are counted as TOML numbers them, so the second
    ``[[mqtt.routes]]`` is ``mqtt.routes[1]``. Falls back to the line of the
    nearest enclosing table; None if nothing in the file leads there.
    """
    arrays: dict[str, int] = {}
    table = ""
    best: tuple[int, int] | None = None  # (length of matched prefix, line)
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"^(\[\[?)\s*([^\]]+?)\s*\]\]?", stripped)
        if header:
            name = header.group(2).replace('"', "")
            if header.group(1) == "[[":
                arrays[name] = arrays.get(name, 0) + 1
                for nested in [k for k in arrays if k.startswith(name + ".")]:
                    del arrays[nested]
            table = _indexed(name, arrays)
            path = table
        else:
            key = re.match(r"^([\w\-\"'.]+)\s*=", stripped)
            if not key:
                continue
            name = key.group(1).replace('"', "").replace("'", "")
            path = f"{table}.{name}" if table else name
        if path == where:
            return number
        if where.startswith(path) and where[len(path) : len(path) + 1] in ".[":
            if best is None or len(path) > best[0]:
                best = (len(path), number)
    return best[1] if best else None


def _indexed(name: str, arrays: dict[str, int]) -> str:
    parts = name.split(".")
    out = []
    for i in range(len(parts)):
        out.append(parts[i])
        prefix = ".".join(parts[: i + 1])
        if prefix in arrays:
            out[-1] += f"[{arrays[prefix] - 1}]"
    return ".".join(out)


def _name_mapping(raw: dict[str, object], message: str) -> str:
    # msgspec does not name dict keys in its paths; find the device type
    mappings = raw.get("mappings")
    if isinstance(mappings, dict):
        for type_name, value in mappings.items():
            try:
                msgspec.convert(value, Mapping)
            except msgspec.ValidationError:
                return message.replace("`mappings[...]", f"`mappings.{type_name}")
    return message


def _toml_path(message: str) -> str:
    return message.replace("`$.", "`").replace("`$", "`")


def _check(config: Config, name: str, files: bool = True) -> None:
    p = config.pipeline
    if p.flush_rows < 1 or p.ring_capacity < p.flush_rows:
        raise ConfigError(
            f"{name}: pipeline.ring_capacity must be at least pipeline.flush_rows"
        )
    if p.flush_interval_ms <= 0:
        raise ConfigError(f"{name}: pipeline.flush_interval_ms must be positive")
    if p.max_readings_per_message > p.ring_capacity:
        raise ConfigError(
            f"{name}: pipeline.max_readings_per_message must be at most "
            "pipeline.ring_capacity"
        )
    if p.flush_timeout_s <= 0:
        raise ConfigError(f"{name}: pipeline.flush_timeout_s must be positive")
    try:
        clock.from_text(p.plausible_from, "pipeline.plausible_from")
    except DecodeError as exc:
        raise ConfigError(f"{name}: pipeline.plausible_from: {exc.reason}") from None
    c = config.coap
    own = c.certificate and c.private_key
    if "tls" in c.transports and not (own or config.security.certificate):
        raise ConfigError(
            f"{name}: coap.transports: 'tls' needs coap.certificate and "
            "coap.private_key, or security.certificate"
        )
    _check_security(config, name, files)
    _check_mqtt_tls(config.mqtt, name, files)
    for type_name, device_type in config.mappings.items():
        problem = mapping.check(device_type)
        if problem:
            raise ConfigError(f"{name}: mappings.{type_name}.{problem}")
    routes: list[tuple[str, Route | HttpRoute | CoapRoute]] = [
        *((f"mqtt.routes[{i}]", r) for i, r in enumerate(config.mqtt.routes)),
        *((f"http.routes[{i}]", r) for i, r in enumerate(config.http.routes)),
        *((f"coap.routes[{i}]", r) for i, r in enumerate(config.coap.routes)),
        *((f"amqp.routes[{i}]", r) for i, r in enumerate(config.amqp.routes)),
        *((f"nats.routes[{i}]", r) for i, r in enumerate(config.nats.routes)),
    ]
    for where, route in routes:
        if isinstance(route, Route) and route.topic.count("{device}") > 1:
            raise ConfigError(f"{name}: {where}.topic: one {{device}} only")
        if where.startswith("mqtt.") and (problem := topics.check(route.topic)):
            raise ConfigError(f"{name}: {where}.topic: {problem}")
        _check_codec(name, where, route.codec, route.options)
        if route.mapping is not None and route.mapping not in config.mappings:
            raise ConfigError(
                f"{name}: {where}.mapping: no device type {route.mapping!r} "
                "in [mappings]"
            )
    if config.database.pool_size < 2:
        raise ConfigError(f"{name}: database.pool_size must be at least 2")


def _check_security(config: Config, name: str, files: bool) -> None:
    s = config.security
    if bool(s.certificate) != bool(s.private_key):
        raise ConfigError(
            f"{name}: security.certificate and security.private_key go together"
        )
    if s.mtls and not (s.certificate and s.client_ca):
        raise ConfigError(
            f"{name}: security.mtls needs security.certificate, "
            "security.private_key and security.client_ca"
        )
    for field in ("certificate", "private_key", "client_ca"):
        path = getattr(s, field)
        if files and path and not Path(path).expanduser().is_file():
            raise ConfigError(f"{name}: security.{field}: no file {path!r}")
    if s.revocation_poll_s <= 0 or s.handshake_timeout_s <= 0:
        raise ConfigError(f"{name}: security timeouts must be positive")


def _check_mqtt_tls(m: Mqtt, name: str, files: bool) -> None:
    if bool(m.certificate) != bool(m.private_key):
        raise ConfigError(f"{name}: mqtt.certificate and mqtt.private_key go together")
    if (m.certificate or m.ca_file) and not m.tls:
        raise ConfigError(f"{name}: mqtt.ca_file and mqtt.certificate need mqtt.tls")
    for field in ("ca_file", "certificate", "private_key"):
        path = getattr(m, field)
        if files and path and not Path(path).expanduser().is_file():
            raise ConfigError(f"{name}: mqtt.{field}: no file {path!r}")
    if files and m.tls and m.certificate:
        try:  # a key that does not fit the certificate: say so now
            ssl.create_default_context().load_cert_chain(m.certificate, m.private_key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{name}: mqtt.certificate/private_key: {exc}") from None


def _check_codec(name: str, where: str, codec: str, options: dict[str, Any]) -> None:
    try:
        catalog.options(codec, options, where)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def state_dir(config: Config) -> Path:
    return Path(config.database.state_dir).expanduser()
