"""WebSocket in: a device streams messages, each acknowledged after commit."""

from __future__ import annotations

import time

import aiohttp
import orjson
import pytest

from .conftest import Deployment


def url(d: Deployment, query: str) -> str:
    return f"ws://127.0.0.1:{d.server.http_port}/v1/ws?{query}"


async def test_websocket_messages_are_acknowledged_in_order_after_commit(
    deployment: Deployment,
) -> None:
    base = int(time.time() * 1000) - 60_000
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url(deployment, "device=ws-1")) as ws,
    ):
        for i in range(50):
            await ws.send_str(orjson.dumps({"ts": base + i, "t": i, "h": 2}).decode())
        await ws.send_bytes(b'{"t": NaN}')
        await ws.send_str('{"ok": 1, "bad": null}')
        answers = [orjson.loads((await ws.receive(timeout=10)).data) for _ in range(52)]

        # Acknowledged means committed: the rows are there now
        count = await deployment.fetchval(
            "SELECT count(*) FROM ingestd.readings WHERE device_id = 'ws-1'"
        )
    assert [a["ack"] for a in answers] == list(range(1, 53))
    assert all(a["stored"] == 2 for a in answers[:50])
    assert answers[50]["error"].startswith("invalid JSON")
    assert answers[50]["path"] == "byte 6"
    assert answers[51]["stored"] == 1
    assert answers[51]["rejected"] == [
        {"path": "$.bad", "reason": "null is not a value"}
    ]
    assert count == 101
    transports = await deployment.fetchval(
        "SELECT transports FROM ingestd.devices WHERE id = 'ws-1'"
    )
    assert transports == ["websocket"]


async def test_websocket_senml_format(deployment: Deployment) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url(deployment, "device=ws-2&format=senml")) as ws,
    ):
        await ws.send_str('[{"n": "w", "u": "kg", "v": 2.5}]')
        answer = orjson.loads((await ws.receive(timeout=10)).data)
    assert answer == {"ack": 1, "stored": 1}


async def test_websocket_device_id_with_a_slash(deployment: Deployment) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url(deployment, "device=ws-hall%2Flamp")) as ws,
    ):
        await ws.send_str('{"on": true}')
        answer = orjson.loads((await ws.receive(timeout=10)).data)
    assert answer == {"ack": 1, "stored": 1}
    stored = await deployment.fetchval(
        "SELECT count(*) FROM ingestd.readings WHERE device_id = 'ws-hall/lamp'"
    )
    assert stored == 1


@pytest.mark.parametrize(
    ("query", "status"),
    [("", 400), ("device=a&format=xml", 415), ("device=a%00b", 400)],
)
async def test_websocket_bad_handshake_is_refused(
    deployment: Deployment, query: str, status: int
) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(url(deployment, query))
    assert caught.value.status == status


async def test_websocket_oversize_message_closes_with_1009(
    deployment: Deployment,
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url(deployment, "device=ws-3"), max_msg_size=0) as ws,
    ):
        await ws.send_str('{"x": "' + "a" * (1024 * 1024 + 10) + '"}')
        message = await ws.receive(timeout=10)
    assert message.type == aiohttp.WSMsgType.CLOSE
    assert message.data == 1009


async def test_websocket_ping_is_answered(deployment: Deployment) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url(deployment, "device=ws-4"), autoping=False) as ws,
    ):
        await ws.ping(b"hi")
        message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.PONG and message.data == b"hi"


async def test_websocket_plain_http_still_works_beside_it(
    deployment: Deployment,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"http://127.0.0.1:{deployment.server.http_port}/v1/devices/ws-5/telemetry",
            data=b'{"t": 1}',
            headers={"Content-Type": "application/json"},
        ) as answer:
            assert answer.status == 202
