"""CoAP in, over real datagrams (UDP) and RFC 8323 over TCP, via aiocoap."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiocoap
import orjson
import pytest
from aiocoap.numbers.codes import Code

from .conftest import Deployment


@pytest.fixture
async def coap() -> AsyncIterator[aiocoap.Context]:
    context = await aiocoap.Context.create_client_context()
    yield context
    await context.shutdown()


async def post(
    context: aiocoap.Context,
    uri: str,
    payload: bytes,
    content_format: int | None = 50,
    reliable: bool = True,
) -> aiocoap.Message:
    tuning = aiocoap.Reliable if reliable else aiocoap.Unreliable
    request = aiocoap.Message(
        code=Code.POST, uri=uri, payload=payload, transport_tuning=tuning
    )
    if content_format is not None:
        request.opt.content_format = content_format
    return await context.request(request).response


def uri(
    d: Deployment, device: str, scheme: str = "coap", tail: str = "telemetry"
) -> str:
    return f"{scheme}://127.0.0.1:{d.coap_port}/v1/devices/{device}/{tail}"


@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
async def test_coap_post_is_answered_after_commit(
    deployment: Deployment, coap: aiocoap.Context, scheme: str
) -> None:
    device = f"c-{scheme.replace('+', '-')}"
    ts = int(time.time() * 1000)
    answer = await post(coap, uri(deployment, device, scheme),
                        orjson.dumps({"ts": ts, "temp": 4.5, "door": True}))  # fmt: skip
    assert answer.code == Code.CHANGED
    assert orjson.loads(answer.payload) == {"stored": 2}
    rows = await deployment.fetch(
        "SELECT metric, transport FROM ingestd.readings WHERE device_id = $1 "
        "ORDER BY metric", device,
    )  # fmt: skip
    assert [tuple(r) for r in rows] == [("door", scheme), ("temp", scheme)]


async def test_coap_senml_by_content_format_and_non_confirmable(
    deployment: Deployment, coap: aiocoap.Context
) -> None:
    answer = await post(
        coap, uri(deployment, "c-senml"), b'[{"n": "w", "u": "kg", "v": 3}]',
        content_format=110, reliable=False,
    )  # fmt: skip
    assert answer.code == Code.CHANGED
    assert orjson.loads(answer.payload) == {"stored": 1}


async def test_coap_block1_large_payload_is_reassembled(
    deployment: Deployment, coap: aiocoap.Context
) -> None:
    base = int(time.time() * 1000) - 100_000
    body = orjson.dumps([{"ts": base + i, "t": i} for i in range(600)])
    assert len(body) > 4 * 1024  # several 1024-byte blocks
    answer = await post(coap, uri(deployment, "c-block"), body)
    assert answer.code == Code.CHANGED
    assert orjson.loads(answer.payload) == {"stored": 600}


@pytest.mark.parametrize(
    ("payload", "fmt", "tail", "code", "error", "where"),
    [
        (b'{"t": NaN}', 50, "telemetry", Code.BAD_REQUEST, "invalid JSON", "byte 6"),
        (b'{"t": null}', 50, "telemetry", Code.BAD_REQUEST,
         "nothing usable: null is not a value", "$.t"),
        (b"\x01\x02", 42, "telemetry", Code.UNSUPPORTED_CONTENT_FORMAT,
         "unsupported Content-Format", None),
        (b'{"t": 1}', 50, "other", Code.NOT_FOUND, "no such resource", None),
        (b'{"x": "' + b"a" * 70_000 + b'"}', 50, "telemetry",
         Code.REQUEST_ENTITY_TOO_LARGE, "payload over 65536 bytes", "byte 0"),
    ],
)  # fmt: skip
async def test_coap_bad_input_gets_its_code_and_a_diagnostic(
    deployment: Deployment,
    coap: aiocoap.Context,
    payload: bytes,
    fmt: int,
    tail: str,
    code: Code,
    error: str,
    where: str | None,
) -> None:
    answer = await post(coap, uri(deployment, "c-bad", tail=tail), payload, fmt)
    assert answer.code == code
    body = orjson.loads(answer.payload)
    assert body["error"].startswith(error), body
    assert body.get("path") == where
    # and the server keeps serving
    ok = await post(coap, uri(deployment, "c-bad"), b'{"fine": 1}')
    assert ok.code == Code.CHANGED


@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
async def test_coap_garbage_is_ignored_without_unhandled_errors(
    deployment: Deployment, coap: aiocoap.Context, scheme: str
) -> None:
    """Random bytes and a Uri-Path of invalid UTF-8 (which aiocoap 0.4 let
    escape as UnicodeDecodeError) leave no traceback and a working server."""
    import asyncio
    import random
    import socket

    seed = random.randrange(2**32)
    rng = random.Random(seed)
    bad_text = bytes([0x40, 0x02, 0x12, 0x34, 0xB2, 0xFF, 0xFE])
    garbage = [bad_text] + [rng.randbytes(rng.randrange(4, 64)) for _ in range(300)]
    log = deployment.server.log
    before = log.read_text().count("Traceback")
    if scheme == "coap":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for datagram in garbage:
                udp.sendto(datagram, ("127.0.0.1", deployment.coap_port))
    else:
        # RFC 8323 frame: length nibble 0 + TKL 0, code, options (no payload)
        frame = bytes([len(bad_text) - 4 << 4]) + bad_text[1:2] + bad_text[4:]
        for data in (frame, *garbage[1:20]):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", deployment.coap_port
            )
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.close()
    await asyncio.sleep(0.5)

    answer = await post(coap, uri(deployment, f"after-garbage-{scheme}", scheme),
                        orjson.dumps({"temp": 1.5}))  # fmt: skip
    assert answer.code == Code.CHANGED, f"seed {seed}"
    assert log.read_text().count("Traceback") == before, f"seed {seed}"
