"""Reading the shared fixtures and comparing readings with their expectations."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

from ingestd import clock
from ingestd.model import Reading

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
RECEIVED = clock.from_text("2024-05-01T12:00:00Z", "")


def expected_for(payload: Path) -> dict[str, Any]:
    name = payload.name
    for suffix in (".json", ".b64", ".hex", ".lp"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for suffix in (".cbor", ".msgpack"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return json.loads((payload.parent / f"{name}.expected.json").read_text())


def payloads(folder: str) -> list[Path]:
    return sorted(
        p for p in (FIXTURES / folder).glob("*.json")
        if not p.name.endswith(".expected.json")
    )  # fmt: skip


def as_rows(readings: list[Reading]) -> list[tuple[Any, ...]]:
    """(device, metric, ms, value, unit), sorted: order is not part of it."""
    rows = []
    for r in readings:
        value = r.data.hex() if r.data is not None else r.value
        rows.append((r.device, r.metric, r.ts // 1000, _norm(value), r.unit))
    return sorted(rows, key=repr)


def expected_rows(expected: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    rows = []
    for e in expected:
        ms = clock.from_text(e["ts"], "") // 1000
        rows.append((e["device"], e["metric"], ms, _norm(e["value"]), e["unit"]))
    return sorted(rows, key=repr)


def _norm(value: Any) -> Any:
    # Numbers are stored as doubles: 61 and 61.0 are the same reading.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value) if math.isfinite(value) else value


def binary_payloads(folder: str) -> list[Path]:
    """The base64-encoded binary inputs (``*.b64``) of a fixture folder."""
    return sorted((FIXTURES / folder).glob("*.b64"))


def read_b64(path: Path) -> bytes:
    return base64.b64decode(path.read_text())


def session_messages(path: Path) -> list[tuple[str, bytes]]:
    """(topic, payload) of each message of a ``.session.json``, in order."""
    doc = json.loads(path.read_text())
    return [(m["topic"], base64.b64decode(m["payload_b64"])) for m in doc["messages"]]
