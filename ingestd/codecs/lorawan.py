"""LoRaWAN network servers: The Things Stack v3 and ChirpStack v4 uplinks.

A network server is a gateway for its devices, so the uplink names the
device: TTS ``end_device_ids.device_id`` (or the DevEUI with ``device =
"dev_eui"``), ChirpStack ``deviceInfo.devEui`` (or ``deviceInfo.deviceName``
with ``device = "device_name"``). Only when the payload names none does the
transport identity serve. Every uplink that carries a well-formed DevEUI
also reports the alias ``("lorawan", DevEUI, device)`` with the DevEUI as 16
lowercase hex digits (TTS spells it in capitals, ChirpStack in lowercase;
one spelling keeps one alias row), so an operator can point it at the
device that the tracker is known as over other protocols.

Metrics are the decoded object (TTS ``uplink_message.decoded_payload``,
ChirpStack ``object``) flattened to dotted key paths (``{"Device Status":
{"Sensor Fault": "No"}}`` gives ``Device Status.Sensor Fault``). Numbers
become doubles, exactly as received (a payload formatter's float32
artifacts such as 20.700000762939453 are kept); booleans, text and arrays
stay what they are; null is a reject. Vendor formatters that return
``"<number> <unit>"`` text ("30.11 °C", "0 uS/cm") are split into the
number and its unit (``unit_text = false`` keeps the text). Other text,
"FALSE" or "ON" included, is stored as text, never coerced.

Radio metadata become readings under ``radio_prefix`` (default ``rx.``),
chosen by ``radio``: ``rssi`` (dBm) and ``snr`` (dB) of the best gateway
(highest SNR, then highest RSSI; both from that one gateway), by default;
``frequency`` (Hz), ``sf`` (spreading factor), ``f_cnt``, ``f_port`` and
``gateways`` (how many heard the uplink) on request; an empty list switches
them off. Proto3 JSON omits zero values, so a missing f_cnt or f_port is 0.

Time: TTS ``uplink_message.received_at``, else the top-level
``received_at``; ChirpStack the top-level ``time``. Both are network server
clocks and checked against the plausible window; ChirpStack's
``rxInfo[].gwTime`` and ``nsTime`` are ignored because real captures
disagree with ``time`` by days. A message without any of them is taken at
receipt. Fractional digits beyond microseconds are truncated.

An uplink without a decoded object (no payload formatter configured) yields
no telemetry and is not an error: the radio readings and the alias only.
With ``raw_metric`` set, its FRMPayload is stored as opaque bytes under that
metric for later decoding. The TTS event-stream envelope (``{"name":
"as.up.data.forward", "data": {...}}``, optionally inside ``{"result":
...}``) is unwrapped. Messages that are not uplinks (joins, acks, status
and log events) are decode errors: routes subscribe to the uplink topics.
Not handled: ChirpStack ``status`` events (battery, margin), TTS
``normalized_payload``, gateway locations.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal

import msgspec

from .. import clock
from ..errors import DecodeError
from ..model import Origin, Reading
from ._walk import array_problem
from .base import MAX_NAME, Decoded, json_type, parse_json_object

MAX_DEPTH = 32  # nesting of the decoded object, in objects
DEVEUI = re.compile(r"[0-9A-Fa-f]{16}")
# "30.11 °C": a plain decimal, one space, a unit that does not start like a number
UNIT_TEXT = re.compile(r"([-+]?\d{1,20}(?:\.\d{1,20})?) ([^\s\d.+-]\S{0,15})")
RADIO_UNITS = {"rssi": "dBm", "snr": "dB", "frequency": "Hz"}

RadioMetric = Literal["rssi", "snr", "frequency", "sf", "f_cnt", "f_port", "gateways"]


class LorawanOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What both network server codecs share."""

    radio: list[RadioMetric] = msgspec.field(default_factory=lambda: ["rssi", "snr"])
    radio_prefix: str = "rx."
    unit_text: bool = True
    units: dict[str, str] = msgspec.field(default_factory=dict)
    ignore: list[str] = msgspec.field(default_factory=list)
    raw_metric: str | None = None


class TtnOptions(LorawanOptions):
    device: Literal["device_id", "dev_eui"] = "device_id"


class ChirpstackOptions(LorawanOptions):
    device: Literal["dev_eui", "device_name"] = "dev_eui"


class Uplink:
    """The parts of one uplink, located by a server-specific reader."""

    __slots__ = ("device", "eui", "ts", "decoded", "frame", "gateways", "fields")

    def __init__(self, device: str, eui: str | None, ts: int) -> None:
        self.device = device
        self.eui = eui
        self.ts = ts
        # (value, JSON path) pairs; the value is None where the field is absent
        self.decoded: tuple[Any, str] = (None, "")
        self.frame: tuple[Any, str] = (None, "")
        self.gateways: tuple[Any, str] = (None, "")
        self.fields: dict[str, tuple[Any, str]] = {}


class _NetworkServer:
    name = ""

    def __init__(self, options: LorawanOptions, window: clock.Window) -> None:
        self.options = options
        self.window = window
        self._radio = tuple(dict.fromkeys(options.radio))
        self._ignore = frozenset(options.ignore)

    def decode(self, payload: bytes, origin: Origin, out: Decoded) -> None:
        doc = parse_json_object(payload)
        up = self._read(doc, origin, out)
        if up.eui is not None:
            out.aliases.append(("lorawan", up.eui, up.device))

        # Telemetry: the decoded object, else the raw frame if asked for
        decoded, where = up.decoded
        if type(decoded) is dict:
            self._flatten(decoded, "", where, up, origin, out, 0)
        elif decoded is not None:
            out.reject(where, f"expected an object, got {json_type(decoded)}")
        elif self.options.raw_metric and up.frame[0] is not None:
            self._frame(up, origin, out)
        if self._radio:
            self._radio_readings(up, origin, out)

    def _read(self, doc: dict[str, Any], origin: Origin, out: Decoded) -> Uplink:
        raise NotImplementedError

    def _time(self, value: Any, path: str, received: int) -> int:
        if type(value) is not str:
            raise DecodeError(f"expected ISO 8601 text, got {json_type(value)}", path)
        return self.window.check(clock.from_text(value, path), received, path)

    def _flatten(
        self,
        node: dict[str, Any],
        prefix: str,
        path: str,
        up: Uplink,
        origin: Origin,
        out: Decoded,
        depth: int,
    ) -> None:
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else key
            where = f"{path}.{_printable(key)}"
            if not key or "\x00" in key:
                out.reject(where, "metric name empty or with a NUL character")
                continue
            if name in self._ignore:
                continue
            if type(value) is dict:
                if depth >= MAX_DEPTH:
                    out.reject(where, f"nested deeper than {MAX_DEPTH} levels")
                else:
                    self._flatten(value, name, where, up, origin, out, depth + 1)
                continue
            self._leaf(name, value, where, up, origin, out)

    def _leaf(
        self,
        name: str,
        value: Any,
        where: str,
        up: Uplink,
        origin: Origin,
        out: Decoded,
    ) -> None:
        unit = self.options.units.get(name)
        kind = type(value)
        if kind is int or kind is float:
            value = float(value)
        elif kind is str:
            if "\x00" in value:
                out.reject(where, "text contains a NUL character")
                return
            if self.options.unit_text and (split := UNIT_TEXT.fullmatch(value)):
                value, unit = float(split[1]), split[2]
        elif kind is list:
            problem = array_problem(value)
            if problem is not None:
                out.reject(where, problem)
                return
        elif kind is not bool:
            out.reject(where, f"{json_type(value)} is not a value")
            return
        if len(name) > MAX_NAME:
            out.reject(where, "metric name too long")
            return
        out.readings.append(
            Reading(
                up.device,
                name,
                up.ts,
                value,
                None,
                unit,
                origin.received,
                origin.transport,
                self.name,
            )
        )

    def _frame(self, up: Uplink, origin: Origin, out: Decoded) -> None:
        text, where = up.frame
        try:
            if type(text) is not str:
                raise ValueError
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            out.reject(where, "frame is not base64 text")
            return
        metric = self.options.raw_metric or ""
        out.readings.append(
            Reading(
                up.device,
                metric,
                up.ts,
                None,
                data,
                None,
                origin.received,
                origin.transport,
                self.name,
            )
        )

    def _radio_readings(self, up: Uplink, origin: Origin, out: Decoded) -> None:
        values: dict[str, float] = {}
        if {"rssi", "snr", "gateways"}.intersection(self._radio):
            values.update(_best_gateway(*up.gateways, out))
        for key, (raw, where) in up.fields.items():
            if key not in self._radio:
                continue
            try:
                values[key] = _number(raw, where)
            except DecodeError as exc:
                out.reject(exc.path, exc.reason)
        prefix = self.options.radio_prefix
        for key in self._radio:
            if key in values:
                out.readings.append(
                    Reading(
                        up.device,
                        prefix + key,
                        up.ts,
                        values[key],
                        None,
                        RADIO_UNITS.get(key),
                        origin.received,
                        origin.transport,
                        self.name,
                    )
                )


class TtnCodec(_NetworkServer):
    """The Things Stack v3 application uplinks, configured for one route."""

    name = "ttn"

    def __init__(self, options: TtnOptions, window: clock.Window) -> None:
        super().__init__(options, window)
        self._by_eui = options.device == "dev_eui"

    def _read(self, doc: dict[str, Any], origin: Origin, out: Decoded) -> Uplink:
        # Event stream: {"result": {"name": ..., "data": <ApplicationUp>}}
        path = "$"
        if len(doc) == 1 and type(doc.get("result")) is dict:
            doc, path = doc["result"], "$.result"
        if "uplink_message" not in doc and type(doc.get("data")) is dict:
            doc, path = doc["data"], f"{path}.data"
        message = doc.get("uplink_message")
        if type(message) is not dict:
            raise DecodeError("not an uplink: no uplink_message object", path)
        at = f"{path}.uplink_message"

        # Which device: device_id, or the DevEUI
        ids = doc.get("end_device_ids")
        ids = ids if type(ids) is dict else {}
        eui = _eui(ids.get("dev_eui"), f"{path}.end_device_ids.dev_eui", out)
        if self._by_eui:
            device = eui
        else:
            device = _text(ids.get("device_id"), f"{path}.end_device_ids.device_id")
        device = device or origin.device
        if device is None:
            raise DecodeError("no device id in end_device_ids", path)

        # When: the network server's receipt
        if "received_at" in message:
            ts = self._time(
                message["received_at"], f"{at}.received_at", origin.received
            )
        elif "received_at" in doc:
            ts = self._time(doc["received_at"], f"{path}.received_at", origin.received)
        else:
            ts = origin.received

        up = Uplink(device, eui, ts)
        up.decoded = (message.get("decoded_payload"), f"{at}.decoded_payload")
        up.frame = (message.get("frm_payload"), f"{at}.frm_payload")
        up.gateways = (message.get("rx_metadata"), f"{at}.rx_metadata")
        up.fields["f_cnt"] = (message.get("f_cnt", 0), f"{at}.f_cnt")
        up.fields["f_port"] = (message.get("f_port", 0), f"{at}.f_port")
        settings = _object(message.get("settings"))
        if "frequency" in settings:
            up.fields["frequency"] = (settings["frequency"], f"{at}.settings.frequency")
        lora = _object(_object(settings.get("data_rate")).get("lora"))
        if "spreading_factor" in lora:
            where = f"{at}.settings.data_rate.lora.spreading_factor"
            up.fields["sf"] = (lora["spreading_factor"], where)
        return up


class ChirpstackCodec(_NetworkServer):
    """ChirpStack v4 ``up`` events, configured for one route."""

    name = "chirpstack"

    def __init__(self, options: ChirpstackOptions, window: clock.Window) -> None:
        super().__init__(options, window)
        self._by_name = options.device == "device_name"

    def _read(self, doc: dict[str, Any], origin: Origin, out: Decoded) -> Uplink:
        info = doc.get("deviceInfo")
        if type(info) is not dict:
            raise DecodeError("not a device event: no deviceInfo object", "$")
        if not any(key in doc for key in ("rxInfo", "fPort", "data", "object")):
            raise DecodeError("not an up event: no rxInfo, fPort, data or object", "$")

        # Which device: the DevEUI, or the device name
        if self._by_name:
            eui = _eui(info.get("devEui"), "$.deviceInfo.devEui", out)
            device = _text(info.get("deviceName"), "$.deviceInfo.deviceName")
        else:
            raw = info.get("devEui")
            if type(raw) is not str or not DEVEUI.fullmatch(raw):
                raise DecodeError("DevEUI must be 16 hex digits", "$.deviceInfo.devEui")
            device = eui = raw.lower()
        device = device or origin.device
        if device is None:
            raise DecodeError("no device id in deviceInfo", "$.deviceInfo")

        # When: the top-level time, not the gateways' clocks
        ts = origin.received
        if "time" in doc:
            ts = self._time(doc["time"], "$.time", origin.received)

        up = Uplink(device, eui, ts)
        up.decoded = (doc.get("object"), "$.object")
        up.frame = (doc.get("data"), "$.data")
        up.gateways = (doc.get("rxInfo"), "$.rxInfo")
        up.fields["f_cnt"] = (doc.get("fCnt", 0), "$.fCnt")
        up.fields["f_port"] = (doc.get("fPort", 0), "$.fPort")
        tx = _object(doc.get("txInfo"))
        if "frequency" in tx:
            up.fields["frequency"] = (tx["frequency"], "$.txInfo.frequency")
        lora = _object(_object(tx.get("modulation")).get("lora"))
        if "spreadingFactor" in lora:
            where = "$.txInfo.modulation.lora.spreadingFactor"
            up.fields["sf"] = (lora["spreadingFactor"], where)
        return up


def _best_gateway(gateways: Any, path: str, out: Decoded) -> dict[str, float]:
    """RSSI and SNR of the gateway that heard the uplink best, and the count."""
    if gateways is None:
        return {}
    if type(gateways) is not list:
        out.reject(path, f"expected an array, got {json_type(gateways)}")
        return {}
    best: dict[str, float] = {}
    rank = (False, 0.0, False, 0.0)
    for i, gateway in enumerate(gateways):
        where = f"{path}[{i}]"
        if type(gateway) is not dict:
            out.reject(where, f"expected an object, got {json_type(gateway)}")
            continue
        heard: dict[str, float] = {}
        # TTS omits rssi on some gateways and reports channel_rssi only
        for key in ("rssi", "channel_rssi", "snr"):
            name = key.removeprefix("channel_")
            if key in gateway and name not in heard:
                try:
                    heard[name] = _number(gateway[key], f"{where}.{key}")
                except DecodeError as exc:
                    out.reject(exc.path, exc.reason)
        snr, rssi = heard.get("snr"), heard.get("rssi")
        mine = (snr is not None, snr or 0.0, rssi is not None, rssi or 0.0)
        if heard and (not best or mine > rank):
            best, rank = heard, mine
    best["gateways"] = float(len(gateways))
    return best


def _number(value: Any, path: str) -> float:
    kind = type(value)
    if kind is int or kind is float:
        return float(value)
    # proto3 JSON spells 64-bit integers (TTS frequency) as text
    if kind is str and value.isascii() and value.isdigit() and len(value) <= 20:
        return float(int(value))
    raise DecodeError(f"expected a number, got {json_type(value)}", path)


def _eui(value: Any, path: str, out: Decoded) -> str | None:
    if value is None:
        return None
    if type(value) is not str or not DEVEUI.fullmatch(value):
        out.reject(path, "DevEUI must be 16 hex digits")
        return None
    return value.lower()


def _text(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if type(value) is not str or not value or len(value) > MAX_NAME:
        raise DecodeError("device id must be text of 1 to 256 characters", path)
    if "\x00" in value:
        raise DecodeError("device id contains a NUL character", path)
    return value


def _object(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _printable(key: str) -> str:
    # Paths end up in the dead-letter table: no NUL, and a bounded length.
    key = key.replace("\x00", "\\0") or '""'
    return key if len(key) <= 64 else key[:64] + "..."
