"""HTTP in, end to end: a real server process, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from .conftest import Deployment
from .http_client import RawHttp

SERVER_CONFIG = ""


def path(device: str) -> str:
    return f"/v1/devices/{device}/telemetry"


async def test_http_post_is_answered_after_commit(deployment: Deployment) -> None:
    client = await RawHttp.open(deployment.server.http_port)
    ts = int(time.time() * 1000)
    status, _, body = await client.post(
        path("h-commit"), orjson.dumps({"ts": ts, "temp": 4.5, "door": False})
    )
    await client.close()
    assert (status, body) == (202, {"stored": 2})
    # The answer came after the commit: the rows are there, no waiting
    rows = await deployment.fetch(
        "SELECT metric, value_num, value_bool FROM ingestd.readings "
        "WHERE device_id = 'h-commit' ORDER BY metric"
    )
    assert [tuple(r) for r in rows] == [("door", None, False), ("temp", 4.5, None)]


async def test_http_keep_alive_and_pipelined_answers_keep_order(
    deployment: Deployment,
) -> None:
    client = await RawHttp.open(deployment.server.http_port)
    base = int(time.time() * 1000)
    # Pipelined: a good request, a bad one, a good one, sent before any answer
    client.send(path("h-pipe"), orjson.dumps({"ts": base, "a": 1}))
    client.send(path("h-pipe"), b"{not json")
    client.send(path("h-pipe"), orjson.dumps({"ts": base + 1, "a": 2, "b": 3}))
    answers = [await client.response() for _ in range(3)]
    assert [(s, b.get("stored")) for s, _, b in answers] == [
        (202, 1), (400, None), (202, 2),
    ]  # fmt: skip
    # ...and the connection is still good for more
    for i in range(20):
        status, _, _ = await client.post(
            path("h-pipe"), orjson.dumps({"ts": base + 10 + i, "a": i})
        )
        assert status == 202
    await client.close()
    count = await deployment.fetchval(
        "SELECT count(*) FROM ingestd.readings WHERE device_id = 'h-pipe'"
    )
    assert count == 23


async def test_http_partly_bad_body_stores_the_good_readings(
    deployment: Deployment,
) -> None:
    client = await RawHttp.open(deployment.server.http_port)
    status, _, body = await client.post(
        path("h-partial"), b'{"temp": 4.5, "bad": null, "ts2": {"v": 1, "ts": -5}}'
    )
    await client.close()
    assert status == 202
    assert body["stored"] == 1
    assert {r["path"] for r in body["rejected"]} == {"$.bad", "$.ts2.ts"}
    letter = await deployment.fetch(
        "SELECT reason, details, payload FROM ingestd.dead_letters "
        "WHERE device_id = 'h-partial'"
    )
    assert len(letter) == 1
    assert letter[0]["reason"].startswith("null is not a value - at `$.bad`")
    assert b'"bad": null' in letter[0]["payload"]


BAD_INPUTS = [
    # (body, content type, status, error starts with, path)
    (b'{"t": NaN}', "application/json", 400, "invalid JSON", "byte 6"),
    (b'{"t": Infinity}', "application/json", 400, "invalid JSON", "byte 6"),
    (b'{"t": "\xff"}', "application/json", 400, "invalid JSON: str is not valid UTF-8",
     "byte 0"),
    (b'{"t": "x\\u0000"}', "application/json", 400, "nothing usable: text contains",
     "$.t"),
    (b'{"t": [1, {"a": null}]', "application/json", 400, "invalid JSON", "byte 22"),
    (b'[{"bn": "x", "v": "hot"}]', "application/senml+json", 400,
     "nothing usable: expected a number", "$[0].v"),
    (b"t=4", "application/x-www-form-urlencoded", 415, "unsupported type", None),
]  # fmt: skip


@pytest.mark.parametrize(("body", "ctype", "status", "error", "where"), BAD_INPUTS)
async def test_http_bad_input_is_answered_and_kept(
    deployment: Deployment,
    body: bytes,
    ctype: str,
    status: int,
    error: str,
    where: str | None,
) -> None:
    device = f"h-bad-{abs(hash(body)) % 10**8}"
    client = await RawHttp.open(deployment.server.http_port)
    got, _, answer = await client.post(path(device), body, content_type=ctype)
    assert got == status
    assert answer["error"].startswith(error), answer
    assert answer.get("path") == where
    # The server keeps serving on the same connection
    ok, _, _ = await client.post(path(device), b'{"fine": 1}')
    assert ok == 202
    await client.close()
    kept = await deployment.fetch(
        "SELECT payload FROM ingestd.dead_letters WHERE device_id = $1", device
    )
    assert [r["payload"] for r in kept] == [body]


async def test_http_oversize_body_is_413_and_kept(deployment: Deployment) -> None:
    client = await RawHttp.open(deployment.server.http_port)
    big = b'{"x": "' + b"a" * (1024 * 1024 + 10) + b'"}'
    status, headers, answer = await client.post(path("h-big"), big)
    assert status == 413 and "larger than" in answer["error"]
    assert headers.get("connection") == "close"
    await client.close()
    await asyncio.sleep(0.2)
    reasons = await deployment.fetch(
        "SELECT reason, length(payload) AS n FROM ingestd.dead_letters "
        "WHERE reason LIKE '413%'"
    )
    assert reasons and reasons[0]["n"] <= 4096


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("POST", "/v1/devices/x/other", 404),
        ("POST", "/nowhere", 404),
        ("GET", path("h-get"), 405),
        ("POST", "/v1/devices/a%00b/telemetry", 404),
        ("POST", "/v1/devices/hall/lamp/telemetry", 404),  # hall%2Flamp is one id
    ],
)
async def test_http_unknown_route_or_method(
    deployment: Deployment, method: str, url: str, status: int
) -> None:
    client = await RawHttp.open(deployment.server.http_port)
    got, _, answer = await client.post(url, b'{"t": 1}', method=method)
    await client.close()
    assert got == status and answer["error"]


async def test_http_device_id_with_a_slash_is_percent_encoded(
    deployment: Deployment,
) -> None:
    # Ids with "/" come from MQTT routes (zb/{device...}); HTTP takes them as
    # %2F, so the same device can be written over either
    client = await RawHttp.open(deployment.server.http_port)
    status, _, answer = await client.post(
        "/v1/devices/h-hall%2Flamp/telemetry", b'{"ts": 1700000000000, "on": true}'
    )
    await client.close()
    assert (status, answer) == (202, {"stored": 1})
    stored = await deployment.fetch(
        "SELECT device_id FROM ingestd.readings WHERE device_id LIKE 'h-hall%'"
    )
    assert [r["device_id"] for r in stored] == ["h-hall/lamp"]


async def test_http_malformed_request_line_gets_400(deployment: Deployment) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", deployment.server.http_port
    )
    writer.write(b"HELLO THERE\r\n\r\n")
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert line.startswith(b"HTTP/1.1 400")


async def test_http_oversize_headers_get_431(deployment: Deployment) -> None:
    client = await RawHttp.open(deployment.server.http_port)
    status, _, _ = await client.post(
        path("h-hdr"), b"{}", extra=f"X-Junk: {'j' * 20000}\r\n"
    )
    await client.close()
    assert status == 431


async def test_http_registry_records_device_and_firmware(
    deployment: Deployment,
) -> None:
    client = await RawHttp.open(deployment.server.http_port)
    await client.post(path("h-reg"), b'{"firmware": "3.2.1", "t": 1}')
    await client.post(
        path("h-reg"), b'[{"n": "w", "v": 2}]', content_type="application/senml+json"
    )
    await client.close()
    row = (await deployment.fetch(
        "SELECT status, firmware, transports, formats FROM ingestd.devices "
        "WHERE id = 'h-reg'"
    ))[0]  # fmt: skip
    assert tuple(row) == ("online", "3.2.1", ["http"], ["json", "senml"])
