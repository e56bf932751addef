"""A raw HTTP/1.1 client: keep-alive and pipelining as devices do them."""

from __future__ import annotations

import asyncio

import orjson


class RawHttp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawHttp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(
        self,
        path: str,
        body: bytes,
        content_type: str = "application/json",
        method: str = "POST",
        extra: str = "",
    ) -> None:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: test\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n"
        )
        self.writer.write(head.encode() + body)

    async def response(self, timeout: float = 10.0) -> tuple[int, dict[str, str], dict]:
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        if not line:
            raise ConnectionError("closed")
        status = int(line.split()[1])
        headers: dict[str, str] = {}
        while True:
            h = await asyncio.wait_for(self.reader.readline(), timeout)
            if h in (b"\r\n", b""):
                break
            name, _, value = h.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", 0)))
        return status, headers, orjson.loads(body) if body else {}

    async def post(self, path: str, body: bytes, **kw: str) -> tuple[int, dict, dict]:
        self.send(path, body, **kw)
        return await self.response()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass
