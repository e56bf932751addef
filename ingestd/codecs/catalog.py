"""Codec names as the configuration spells them, and their options.

Each route names a codec and may carry an ``options`` table; the options are
validated against the codec's own struct at start-up, so a misspelt option
stops the server with its path (``mqtt.routes[2].options``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from ..clock import Window
from ..errors import ConfigError
from .base import Codec
from .influx import InfluxCodec, InfluxOptions
from .json import JsonCodec, JsonOptions
from .lorawan import ChirpstackCodec, ChirpstackOptions, TtnCodec, TtnOptions
from .mapping import MappedCodec, Mapping
from .msgpack import MsgpackCodec, MsgpackOptions
from .senml import SenmlCodec, SenmlOptions
from .senml_cbor import SenmlCborCodec
from .shelly import ShellyCodec, ShellyOptions
from .sparkplug import SparkplugCodec, SparkplugOptions
from .tasmota import TasmotaCodec, TasmotaOptions
from .zigbee2mqtt import Zigbee2mqttCodec, Zigbee2mqttOptions


class Spec(NamedTuple):
    options: type[msgspec.Struct]
    make: Callable[[Any, Window], Codec]


CODECS: dict[str, Spec] = {
    "json": Spec(JsonOptions, JsonCodec),
    "senml": Spec(SenmlOptions, SenmlCodec),
    "senml_cbor": Spec(SenmlOptions, SenmlCborCodec),
    "msgpack": Spec(MsgpackOptions, MsgpackCodec),
    "influx": Spec(InfluxOptions, InfluxCodec),
    "sparkplug": Spec(SparkplugOptions, SparkplugCodec),
    "ttn": Spec(TtnOptions, TtnCodec),
    "chirpstack": Spec(ChirpstackOptions, ChirpstackCodec),
    "zigbee2mqtt": Spec(Zigbee2mqttOptions, Zigbee2mqttCodec),
    "tasmota": Spec(TasmotaOptions, TasmotaCodec),
    "shelly": Spec(ShellyOptions, ShellyCodec),
}


def options(name: str, raw: dict[str, Any], where: str) -> msgspec.Struct:
    """``raw`` as the options struct of codec ``name``; ConfigError if not."""
    spec = CODECS.get(name)
    if spec is None:
        known = ", ".join(sorted(CODECS))
        raise ConfigError(f"{where}.codec: unknown codec {name!r} (known: {known})")
    try:
        return msgspec.convert(raw, spec.options)
    except msgspec.ValidationError as exc:
        text = str(exc).replace("`$", f"`{where}.options", 1)
        if " - at `" not in text:
            text += f" - at `{where}.options`"
        raise ConfigError(text) from None


def build(
    name: str,
    raw: dict[str, Any],
    window: Window,
    where: str = "",
    *,
    mapping: Mapping | None = None,
) -> Codec:
    """A codec for one route, followed by its device type's mapping if any."""
    codec = CODECS[name].make(options(name, raw, where or name), window)
    return codec if mapping is None else MappedCodec(codec, mapping)
