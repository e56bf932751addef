"""One logical device: seen over MQTT, over HTTP and as a LoRaWAN DevEUI
through a network server, it is one row in the registry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from .conftest import Deployment
from .http_client import RawHttp
from .mqtt_publisher import Publisher, wait_for

SERVER_CONFIG = """
[orders]
bindings_refresh_s = 0.2

[[mqtt.routes]]
topic = "devices/{device}/telemetry"
codec = "json"

[[mqtt.routes]]
topic = "application/{app}/device/{eui}/event/up"
codec = "chirpstack"
"""

EUI = "a840410000000f99"


def uplink(ts: str) -> bytes:
    return orjson.dumps({
        "time": ts,
        "deviceInfo": {"deviceName": "tracker", "devEui": EUI},
        "fCnt": 3, "fPort": 2,
        "object": {"Tem": 5.5, "BatV": 3.9},
        "rxInfo": [{"gatewayId": "0000000000000f05", "rssi": -70, "snr": 7.5}],
    })  # fmt: skip


async def test_one_device_across_mqtt_http_and_lorawan(deployment: Deployment) -> None:
    # The operator says: this DevEUI is tracker trk-9
    await deployment.fetch(
        "INSERT INTO ingestd.device_aliases VALUES ('lorawan', $1, 'trk-9')", EUI
    )
    await asyncio.sleep(0.5)  # two refreshes of the alias cache
    now_ms = int(time.time() * 1000)

    pub = await Publisher("one-pub").connect(deployment.broker_port)
    pub.publish("devices/trk-9/telemetry", orjson.dumps({"ts": now_ms, "door": True}))
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now_ms / 1000 - 5))
    pub.publish(f"application/app-1/device/{EUI}/event/up", uplink(iso))
    await pub.wait_acked(2)
    await pub.close()
    client = await RawHttp.open(deployment.server.http_port)
    status, _, _ = await client.post(
        "/v1/devices/trk-9/telemetry", orjson.dumps({"ts": now_ms + 1, "temp": 5.1})
    )
    await client.close()
    assert status == 202

    async def three_ways() -> Any:
        rows = await deployment.fetch(
            "SELECT DISTINCT transport, format FROM ingestd.readings "
            "WHERE device_id = 'trk-9' ORDER BY 1, 2"
        )
        return rows if len(rows) == 3 else None

    rows = await wait_for(three_ways)
    assert rows is not None
    assert [tuple(r) for r in rows] == [
        ("http", "json"), ("mqtt", "chirpstack"), ("mqtt", "json"),
    ]  # fmt: skip
    registry = await deployment.fetch(
        "SELECT id, transports, formats FROM ingestd.devices WHERE id = 'trk-9' "
        "OR id = $1", EUI,
    )  # fmt: skip
    assert [tuple(r) for r in registry] == [
        ("trk-9", ["http", "mqtt"], ["chirpstack", "json"])
    ]
