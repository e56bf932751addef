"""Codec names as the configuration spells them, and content types."""

from __future__ import annotations

from ..clock import Window
from .base import Codec
from .json import JsonCodec, JsonOptions
from .senml import SenmlCodec, SenmlOptions

CONTENT_TYPES = {
    "application/json": "json",
    "text/json": "json",
    "application/senml+json": "senml",
    "application/sensml+json": "senml",
}


def build(name: str, json: JsonOptions, senml: SenmlOptions, window: Window) -> Codec:
    if name == "json":
        return JsonCodec(json, window)
    if name == "senml":
        return SenmlCodec(senml, window)
    raise ValueError(f"unknown codec {name!r}")
