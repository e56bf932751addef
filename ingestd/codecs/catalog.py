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
from .json import JsonCodec, JsonOptions
from .senml import SenmlCodec, SenmlOptions


class Spec(NamedTuple):
    options: type[msgspec.Struct]
    make: Callable[[Any, Window], Codec]


CODECS: dict[str, Spec] = {
    "json": Spec(JsonOptions, JsonCodec),
    "senml": Spec(SenmlOptions, SenmlCodec),
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


def build(name: str, raw: dict[str, Any], window: Window, where: str = "") -> Codec:
    """A codec for one route."""
    return CODECS[name].make(options(name, raw, where or name), window)
