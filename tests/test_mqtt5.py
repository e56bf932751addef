"""MQTT 5 routing by content type and user properties, multi-level device
captures, and shared subscriptions splitting one stream over instances."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from bench import harness

from .conftest import Deployment, deploy
from .mqtt_publisher import Publisher, wait_for

SERVER_CONFIG = """
[[mqtt.routes]]
topic = "multi/{device}/up"
codec = "senml"
content_type = "application/senml+json"

[[mqtt.routes]]
topic = "multi/{device}/up"
codec = "json"
user_properties = {format = "flat-json"}

[[mqtt.routes]]
topic = "zigbee2mqtt/{device...}"
codec = "json"
"""


async def test_mqtt5_content_type_and_user_properties_pick_the_codec(
    deployment: Deployment,
) -> None:
    pub = await Publisher("m5-pub").connect(deployment.broker_port)
    client = pub.client
    senml = orjson.dumps([{"n": "w", "u": "kg", "v": 3.5}])
    client.publish("multi/m5/up", senml, qos=1, content_type="application/senml+json")
    client.publish(
        "multi/m5/up", b'{"t": 4}', qos=1, user_property=[("format", "flat-json")]
    )
    client.publish("multi/m5/up", b'{"t": 5}', qos=1)  # neither: no route
    client.publish("zigbee2mqtt/hall/lamp", b'{"brightness": 254}', qos=1)
    await pub.wait_acked(4)
    await pub.close()

    async def stored() -> Any:
        rows = await deployment.fetch(
            "SELECT device_id, metric, format FROM ingestd.readings "
            "WHERE device_id IN ('m5', 'hall/lamp') ORDER BY metric"
        )
        return rows if len(rows) == 3 else None

    rows = await wait_for(stored)
    assert rows is not None
    assert [tuple(r) for r in rows] == [
        ("hall/lamp", "brightness", "json"),
        ("m5", "t", "json"),
        ("m5", "w", "senml"),
    ]
    letters = await deployment.fetch(
        "SELECT reason FROM ingestd.dead_letters WHERE source = 'multi/m5/up'"
    )
    assert [r["reason"] for r in letters] == ["no route for topic - at `topic`"]


async def test_mqtt5_shared_subscription_splits_the_stream(
    pg_uri: str, run_id: str, broker: harness.Mosquitto, tmp_path: Path
) -> None:
    shared = '\nshare_group = "ingest"\n'
    first = await _deploy_shared(pg_uri, run_id, broker, tmp_path / "a", "a", shared)
    second = await _deploy_shared(pg_uri, run_id, broker, tmp_path / "b", "b", shared)
    try:
        pub = await Publisher("share-pub").connect(broker.port)
        base = int(time.time() * 1000) - 60_000
        for i in range(400):
            pub.publish(
                f"devices/sh-{i % 8}/telemetry", orjson.dumps({"ts": base + i, "x": i})
            )
        await pub.wait_acked(400)
        await pub.close()

        async def all_stored() -> bool:
            count = await first.fetchval(
                "SELECT count(*) FROM ingestd.readings WHERE device_id LIKE 'sh-%'"
            )
            return count == 400

        assert await wait_for(all_stored)
        committed = [_health(d)["committed_readings"] for d in (first, second)]
        assert sum(committed) == 400 and min(committed) > 0, committed
        # Feeds not configured are null, not "connected"
        health = _health(first)
        feeds = [health[f"{f}_connected"] for f in ("mqtt", "amqp", "nats")]
        assert (health["ok"], feeds) == (True, [True, None, None]), health
    finally:
        for d in (first, second):
            await asyncio.to_thread(d.server.stop)


async def _deploy_shared(
    pg_uri: str,
    run_id: str,
    broker: harness.Mosquitto,
    tmp: Path,
    name: str,
    mqtt_extra: str,
) -> Deployment:
    tmp.mkdir()
    return await deploy(
        pg_uri, f"t_shared_{run_id}", broker, tmp, client_id=f"share-{name}",
        mqtt_extra=mqtt_extra, fresh=name == "a",
    )  # fmt: skip


def _health(d: Deployment) -> dict[str, Any]:
    url = f"http://127.0.0.1:{d.server.admin_port}/health"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())
