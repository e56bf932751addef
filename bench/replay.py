"""Replay payload files against a running server and show its answers.

``python -m bench replay DIR --via http|mqtt`` sends every ``*.json`` file
of ``DIR`` (not the ``*.expected.json`` beside them) in name order, each as
one message from one device:

- format: SenML when the folder name says ``senml`` or the file is an array
  of objects using only SenML fields; generic JSON otherwise;
- device: ``--device``, else the device a sibling ``.expected.json`` says
  sent it (authenticated as, topic, LwM2M endpoint), else the file name;
- HTTP: ``POST /v1/devices/{device}/telemetry`` with the format's
  Content-Type; prints the status and the body ingestd answered;
- MQTT: QoS 1 on ``devices/{device}/telemetry`` or ``.../senml``; prints
  when the broker acknowledged it (ingestd's own answer to MQTT is its
  PUBACK to the broker, which a publisher does not see: query the
  readings or dead letters to see what it made of the message).

Session files (``*.session.json``: an ordered list of topic and payload
pairs) need topic-aware replay and are skipped with a note. ``--json``
prints one JSON object per file instead, for scripts and tests.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gmqtt
import orjson
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from .load import AckedStorage, HttpLink

SENML_FIELDS = frozenset(
    ("bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s",
     "t", "ut")
)  # fmt: skip
# Where a fixture's expected file names the device that sent it
DEVICE_KEYS = ("device_from_auth", "device_from_topic", "endpoint_from_registration")
CONTENT_TYPES = {"json": "application/json", "senml": "application/senml+json"}
PUBACK_TIMEOUT_S = 10.0


@dataclass
class Payload:
    """One file to send, and as what."""

    path: Path
    body: bytes
    format: str  # "json" or "senml"
    device: str


def is_senml(body: bytes) -> bool:
    """An array of objects whose keys are all SenML fields (RFC 8428 sec. 4)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if type(doc) is not list or not doc:
        return False
    return all(
        type(record) is dict
        and record
        and all(key in SENML_FIELDS or key.endswith("_") for key in record)
        for record in doc
    )


def payloads(folder: Path, device: str | None = None) -> list[Payload]:
    """The files of ``folder`` to send, in name order."""
    found = []
    senml_folder = "senml" in folder.resolve().name.lower()
    for path in sorted(folder.glob("*.json")):
        if path.name.endswith(".expected.json"):
            continue
        body = path.read_bytes()
        fmt = "senml" if senml_folder or is_senml(body) else "json"
        found.append(Payload(path, body, fmt, device or _device_for(path)))
    return found


def _device_for(path: Path) -> str:
    """The device the fixture's expected file names, else the file name."""
    stem = path.name.removesuffix(".json")
    expected = path.with_name(stem + ".expected.json")
    if expected.exists():
        try:
            context = orjson.loads(expected.read_bytes()).get("context") or {}
        except (orjson.JSONDecodeError, AttributeError):
            context = {}
        if type(context) is not dict:
            context = {}
        for key in DEVICE_KEYS:
            named = context.get(key)
            if type(named) is str and named and "/" not in named:
                return named
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", stem)[:64]


async def replay_http(
    items: list[Payload], host: str, port: int
) -> list[dict[str, Any]]:
    link = HttpLink(host, port)
    outcomes = []
    try:
        for item in items:
            path = f"/v1/devices/{item.device}/telemetry"
            started = time.perf_counter()
            try:
                status, _headers, body = await link.post(
                    path, item.body, CONTENT_TYPES[item.format]
                )
            except (OSError, asyncio.IncompleteReadError) as exc:
                outcomes.append(_outcome(item, error=repr(exc)))
                continue
            answer: Any
            try:
                answer = orjson.loads(body)
            except orjson.JSONDecodeError:
                answer = body.decode("utf-8", "replace")
            outcomes.append(
                _outcome(
                    item,
                    status=status,
                    answer=answer,
                    ms=round((time.perf_counter() - started) * 1000, 2),
                )
            )
    finally:
        link.close()
    return outcomes


async def replay_mqtt(
    items: list[Payload], host: str, port: int, version: int
) -> list[dict[str, Any]]:
    def acked(waiter: asyncio.Future[None], _sent_ns: int) -> None:
        if not waiter.done():
            waiter.set_result(None)

    store = AckedStorage(acked)
    client = gmqtt.Client(
        f"bench-replay-{time.time_ns() % 10**9}", persistent_storage=store
    )
    await client.connect(host, port, version=MQTTv50 if version == 5 else MQTTv311)
    outcomes = []
    try:
        for item in items:
            suffix = "senml" if item.format == "senml" else "telemetry"
            topic = f"devices/{item.device}/{suffix}"
            waiter = asyncio.get_running_loop().create_future()
            started = time.perf_counter()
            store.carrying = waiter
            client.publish(topic, item.body, qos=1)
            try:
                await asyncio.wait_for(waiter, PUBACK_TIMEOUT_S)
            except TimeoutError:
                outcomes.append(_outcome(item, topic=topic, error="no PUBACK"))
                continue
            elapsed = round((time.perf_counter() - started) * 1000, 2)
            outcomes.append(_outcome(item, topic=topic, puback=True, ms=elapsed))
    finally:
        await client.disconnect()
    return outcomes


def _outcome(item: Payload, **fields: Any) -> dict[str, Any]:
    return {
        "file": item.path.name,
        "format": item.format,
        "device": item.device,
        **fields,
    }


def _line(outcome: dict[str, Any]) -> str:
    head = f"{outcome['file']} ({outcome['format']}, {outcome['device']}): "
    if "error" in outcome:
        return head + f"FAILED {outcome['error']}"
    if "status" in outcome:
        answer = outcome["answer"]
        shown = orjson.dumps(answer).decode() if type(answer) is not str else answer
        if len(shown) > 300:
            shown = shown[:300] + "..."
        return head + f"{outcome['status']} {shown}"
    return head + f"published, PUBACKed by the broker in {outcome['ms']} ms"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="a folder of payload files")
    parser.add_argument("--via", choices=("http", "mqtt"), default="http")
    parser.add_argument("--device", help="send every file as this device")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--broker-port", type=int, default=1883)
    parser.add_argument("--mqtt-version", type=int, choices=(3, 5), default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object per file")


def main(args: argparse.Namespace) -> int:
    folder: Path = args.folder
    if not folder.is_dir():
        print(f"bench replay: {folder} is not a folder", file=sys.stderr)
        return 2
    items = payloads(folder, args.device)
    skipped = [p for p in items if p.path.name.endswith(".session.json")]
    items = [p for p in items if p not in skipped]
    if not items:
        print(f"bench replay: no payload files in {folder}", file=sys.stderr)
        return 2
    if args.via == "http":
        outcomes = asyncio.run(replay_http(items, args.host, args.http_port))
    else:
        outcomes = asyncio.run(
            replay_mqtt(items, args.host, args.broker_port, args.mqtt_version)
        )
    for outcome in outcomes:
        print(orjson.dumps(outcome).decode() if args.json else _line(outcome))
    for item in skipped:
        note = "skipped: a session file needs topic-aware replay"
        if args.json:
            print(orjson.dumps(_outcome(item, skipped=note)).decode())
        else:
            print(f"{item.path.name}: {note}")
    failed = sum(1 for o in outcomes if "error" in o)
    if not args.json:
        target = f"port {args.http_port}" if args.via == "http" else "the broker"
        files = "1 file" if len(outcomes) == 1 else f"{len(outcomes)} files"
        print(f"{files} sent via {args.via} to {target}, {failed} failed")
    return 1 if failed else 0
