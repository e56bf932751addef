"""Field mapping per device type: names, units, conversions, the order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingestd import clock, config
from ingestd.codecs.base import Decoded
from ingestd.codecs.json import JsonCodec, JsonOptions
from ingestd.codecs.mapping import Field, MappedCodec, Mapping
from ingestd.errors import ConfigError
from ingestd.model import Origin

from .conftest import Deployment
from .mqtt_publisher import Publisher, wait_for

REEFER = Mapping(
    fields=[
        Field(path="tempF", metric="temperature", unit="Cel",
              convert="fahrenheit_to_celsius"),
        Field(path="load.raw", metric="load_kg", unit="kg", scale=0.1),
        Field(path="shipment", order=True),
    ]
)  # fmt: skip


def decode(payload: bytes, mapping: Mapping) -> Decoded:
    codec = MappedCodec(JsonCodec(JsonOptions(), clock.Window()), mapping)
    out = Decoded()
    codec.decode(payload, Origin("r-1", "test", clock.now_us()), out)
    return out


def test_mapping_renames_converts_and_names_the_order() -> None:
    out = decode(
        b'{"tempF": 46.4, "load": {"raw": 125}, "shipment": "SO-9", "door": false}',
        REEFER,
    )
    got = sorted((r.metric, r.value, r.unit, r.order) for r in out.readings)
    assert got == [
        ("door", False, None, "SO-9"),
        ("load_kg", 12.5, "kg", "SO-9"),
        ("temperature", pytest.approx(8.0), "Cel", "SO-9"),
    ]
    assert not out.rejects


def test_mapping_drops_unmapped_when_asked_and_rejects_text_conversions() -> None:
    strict = Mapping(fields=REEFER.fields, keep_unmapped=False)
    out = decode(b'{"tempF": "hot", "door": false, "shipment": 7}', strict)
    assert out.readings == []
    assert [(r.path, r.reason) for r in out.rejects] == [
        ("$.tempF", "conversion needs a number"),
        ("$.shipment", "order id must be text"),
    ]


CONFIG_WITH_ERRORS: list[tuple[str, str]] = [
    (
        """\
[[mqtt.routes]]
topic = "a/{device}"

[[mqtt.routes]]
topic = "b/{device}"
mapping = "reefer"
""",
        ":6: mqtt.routes[1].mapping: no device type 'reefer' in [mappings]",
    ),
    (
        """\
[mappings.reefer]

[[mappings.reefer.fields]]
path = "tempF"

[[mappings.reefer.fields]]
path = "tempC"
convert = "f_to_c"
""",
        ":8: Invalid enum value 'f_to_c' - at `mappings.reefer.fields[1].convert`",
    ),
    (
        """\
[mqtt]
port = 1883

[[mqtt.routes]]
topic = "a/{device}"
codec = "xml"
""",
        ":6: mqtt.routes[0].codec: unknown codec 'xml'",
    ),
    (
        """\
[mappings.reefer]
[[mappings.reefer.fields]]
path = "x"
order = true
unit = "C"
""",
        ":4: mappings.reefer.fields[0].order: an order field has no metric",
    ),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_WITH_ERRORS)
def test_mapping_config_errors_name_the_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "ingestd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value).startswith(str(path) + message.split(" ")[0])
    assert message.split(" ", 1)[1] in str(caught.value)


SERVER_CONFIG = """
[[mqtt.routes]]
topic = "reefer/{device}/up"
mapping = "reefer"

[mappings.reefer]
[[mappings.reefer.fields]]
path = "tempF"
metric = "temperature"
unit = "Cel"
convert = "fahrenheit_to_celsius"
[[mappings.reefer.fields]]
path = "shipment"
order = true
"""


async def test_mapping_applies_on_a_configured_route(deployment: Deployment) -> None:
    pub = await Publisher("map-pub").connect(deployment.broker_port)
    pub.publish(
        "reefer/rf-1/up", b'{"ts": 1714564800000, "tempF": 50, "shipment": "SO-4"}'
    )
    await pub.wait_acked(1)
    await pub.close()

    async def stored() -> Any:
        rows = await deployment.fetch(
            "SELECT metric, value_num, unit, order_id FROM ingestd.readings "
            "WHERE device_id = 'rf-1'"
        )
        return rows or None

    rows = await wait_for(stored)
    assert rows is not None
    assert [tuple(r) for r in rows] == [("temperature", 10.0, "Cel", "SO-4")]
