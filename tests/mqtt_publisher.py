"""A QoS 1 publisher that knows which of its messages the broker took."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import gmqtt


class Publisher:
    def __init__(self, client_id: str, version: int = 5) -> None:
        self.client = gmqtt.Client(client_id)
        self.version = version
        self.acked = 0
        self.client.on_message = lambda *a: 0
        # PUBACK from the broker: the message is the broker's responsibility
        handler = self.client._package_handler
        original = handler._handle_puback_packet

        def counted(cmd: Any, packet: Any) -> None:
            self.acked += 1
            original(cmd, packet)

        handler._handle_puback_packet = counted

    async def connect(self, port: int) -> Publisher:
        from gmqtt.mqtt.constants import MQTTv50, MQTTv311

        version = MQTTv50 if self.version == 5 else MQTTv311
        await self.client.connect("127.0.0.1", port, version=version)
        return self

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos)

    async def wait_acked(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert self.acked >= n, f"broker acknowledged {self.acked} of {n}"

    async def close(self) -> None:
        await self.client.disconnect()


async def wait_for(check: Any, timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll the async ``check`` until it returns something true."""
    deadline = time.monotonic() + timeout
    result = await check()
    while not result and time.monotonic() < deadline:
        await asyncio.sleep(every)
        result = await check()
    return result
