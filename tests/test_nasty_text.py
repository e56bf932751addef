"""Nasty text and numbers through a real server into a real PostgreSQL.

Every message below mixes good readings with bad ones (NUL characters,
invalid UTF-8, lone surrogates, numbers past a double or past 64 bits, NaN,
nesting past the limits, SQL-looking and COPY-looking text, very long
names and values, odd Unicode) in device ids, metric names, units, text and
JSON values. All of them, over HTTP and MQTT, are sent at once so that they
are written by one flush. The proof that no bad value aborted that flush's
COPY and took good readings with it: every good reading is stored exactly
as sent, all of them with the one ``stored_at`` of a single flush, no
reading needed the batcher's piecewise salvage (no dead letter of source
``flush``), and each bad part is a dead letter that names its place, with
the message's bytes kept exactly.

The last tests feed the batcher readings no codec would let through (a lone
surrogate, a NUL, a time past 64 bits) and a reading that trips a bug of
ours in the write, to check the last line of defence: the good readings of
the same flush are still stored, and every sender is answered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple
from urllib.parse import quote

import asyncpg
import orjson
import pytest

from bench import harness
from ingestd.codecs.base import Decoded
from ingestd.model import Origin, Reading
from ingestd.pipeline import writer
from ingestd.pipeline.batcher import Batcher
from ingestd.storage import database

from .conftest import Deployment
from .http_client import RawHttp
from .mqtt_publisher import Publisher, wait_for

FLUSH_MS = 1500  # long enough for every message of the test to share a flush

ROUTES = """
[[http.routes]]
content_type = "application/json"
codec = "json"

[[http.routes]]
content_type = "application/senml+json"
codec = "senml"

[[http.routes]]
content_type = "text/plain"
codec = "influx"

[[http.routes]]
content_type = "application/vnd.gateway+json"
codec = "json"
options = { layout = "gateway" }

[[mqtt.routes]]
topic = "devices/{device}/telemetry"
codec = "json"

[[mqtt.routes]]
topic = "devices/{device}/senml"
codec = "senml"

[[mqtt.routes]]
topic = "devices/{device}/lp"
codec = "influx"

[[mqtt.routes]]
topic = "gateway/{name}/nasty"
codec = "json"
options = { layout = "gateway" }
"""

SQL = "'); DROP TABLE ingestd.readings; --"
COPY_TEXT = "\\.\n\tend\\N"  # COPY text format's end marker, separator, NULL
ODD = "temp\u202e°C\ufeff"  # right-to-left override, byte order mark
LONG = "x" * 200_000
DEEP = "{" + '"a":{' * 40 + '"v":1' + "}" * 41  # 41 objects


class Case(NamedTuple):
    """One message: what it must store and what it must reject."""

    name: str
    kind: str  # json, senml, lp, gateway
    body: bytes
    stored: dict[str, Any]  # metric (or device/metric for gateways) -> value
    rejected: list[str]  # paths; ["*"] when the whole message is refused
    unit: dict[str, str] = {}  # metric -> unit stored with it


CASES = [
    Case("nul-value", "json", b'{"good": 1, "bad": "a\\u0000b"}',
         {"good": 1.0}, ["$.bad"]),
    Case("nul-metric", "json", b'{"good": 1, "a\\u0000b": 2}',
         {"good": 1.0}, ["$.a\\0b"]),
    Case("nul-json", "json", b'{"good": 1, "arr": [1, {"k": "x\\u0000"}]}',
         {"good": 1.0}, ["$.arr"]),
    Case("nul-key-json", "json", b'{"good": 1, "arr": [{"k\\u0000": 1}]}',
         {"good": 1.0}, ["$.arr"]),
    Case("numbers", "json",
         b'{"max": 1.7976931348623157e308, "tiny": 5e-324, "u64": 18446744073709551615,'
         b' "beyond": 1000000000000000000000000000000, "neg": -9223372036854775809,'
         b' "arr": [18446744073709551615, -9223372036854775808, 1e308]}',
         {"max": 1.7976931348623157e308, "tiny": 5e-324, "u64": 2.0**64,
          "beyond": 1e30, "neg": -(2.0**63),
          "arr": [18446744073709551615, -9223372036854775808, 1e308]}, []),
    Case("deep", "json", b'{"good": 1, "deep": ' + DEEP.encode() + b"}",
         {"good": 1.0}, ["$.deep" + ".a" * 32]),
    Case("sql", "json", orjson.dumps({"good": 1, SQL: SQL, "copy": COPY_TEXT}),
         {"good": 1.0, SQL: SQL, "copy": COPY_TEXT}, []),
    Case("long", "json", orjson.dumps({"good": 1, "m" * 300: 1, "long": LONG}),
         {"good": 1.0, "long": LONG}, ["$." + "m" * 64 + "..."]),
    Case("unicode", "json",
         orjson.dumps({ODD: "\U0001f600\U0010ffff", "good": 1, "\u00e9": [ODD]}),
         {ODD: "\U0001f600\U0010ffff", "good": 1.0, "\u00e9": [ODD]}, []),
    # Refused whole: the JSON parser stops, so nothing is left to keep
    Case("invalid-utf8", "json", b'{"good": 1, "bad": "\xff"}', {}, ["*"]),
    Case("surrogate", "json", b'{"good": 1, "bad": "\\ud800"}', {}, ["*"]),
    Case("nan", "json", b'{"good": 1, "bad": NaN}', {}, ["*"]),
    Case("infinity", "json", b'{"good": 1, "bad": -Infinity}', {}, ["*"]),
    Case("e400", "json", b'{"good": 1, "bad": 1e400}', {}, ["*"]),
    Case("deep-array", "json", b'{"good": 1, "a": ' + b"[" * 2000 + b"]" * 2000
         + b"}", {}, ["*"]),
    Case("senml", "senml",
         orjson.dumps([{"n": "good", "v": 1}, {"n": "nul-unit", "u": "a\x00", "v": 2},
                       {"n": "sql", "u": SQL, "v": 3}, {"n": "nul-text", "vs": "x\x00"},
                       {"n": "big", "v": 1e308}, {"n": "odd", "u": ODD, "vs": ODD}]),
         {"good": 1.0, "sql": 3.0, "big": 1e308, "odd": ODD},
         ["$[1].u", "$[3].vs"], {"sql": SQL, "odd": ODD}),
    Case("lp", "lp",
         b'm good=1\nm bad="\xff"\nm surrogate="\xed\xa0\x80"\nm nul="a\x00b"\n'
         b'm big=18446744073709551616i\nm nan=NaN\nm sql="' + SQL.encode() + b'"\n',
         {"m.good": 1.0, "m.sql": SQL},
         ["line 2", "line 3", "line 4", "line 5", "line 6"]),
    Case("gateway", "gateway",
         orjson.dumps({"GOOD": {"t": 1}, "bad\x00dev": {"t": 2}, "d" * 300: {"t": 3},
                       "GOOD " + SQL: {"t": 4}}),
         {"GOOD/t": 1.0, f"GOOD {SQL}/t": 4.0},
         ["$.bad\\0dev", "$." + "d" * 64]),
]  # fmt: skip

CONTENT_TYPES = {
    "json": "application/json",
    "senml": "application/senml+json",
    "lp": "text/plain",
    "gateway": "application/vnd.gateway+json",
}
TOPICS = {"json": "telemetry", "senml": "senml", "lp": "lp"}


def device(case: Case, transport: str) -> str:
    # SQL in every device id too: it is stored as it is, never run
    return f"nx-{case.name}-{transport}{SQL}"


def gateway_device(name: str, case: Case, transport: str) -> str:
    # The gateway layout names devices in the payload; prefixed per transport
    return name.replace("GOOD", f"gw-{transport}-GOOD")


def body_for(case: Case, transport: str) -> bytes:
    if case.kind != "gateway":
        return case.body
    return case.body.replace(b'"GOOD', f'"gw-{transport}-GOOD'.encode())


@pytest.fixture(scope="module")
async def nasty(
    pg_uri: str,
    run_id: str,
    broker: harness.Mosquitto,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Deployment]:
    """A server whose flushes wait long enough to take every message."""
    tmp = tmp_path_factory.mktemp("nasty")
    dsn = await harness.create_database(pg_uri, f"t_nasty_{run_id}")
    http_port, admin_port = harness.free_port(), harness.free_port()
    text = harness.config_text(
        dsn, broker.port, http_port, admin_port, tmp / "state",
        client_id=f"ingestd-nasty-{run_id}",
        pipeline={"flush_interval_ms": FLUSH_MS, "flush_rows": 100_000},
    ) + ROUTES  # fmt: skip
    server = harness.IngestdProcess(text, tmp, http_port, admin_port)
    await asyncio.to_thread(server.start)
    yield Deployment(dsn, server, broker.port)
    code = await asyncio.to_thread(server.stop)
    assert code == 0, server.log.read_text()[-3000:]


async def test_nasty_text_is_stored_exactly_or_rejected_with_its_place(
    nasty: Deployment,
) -> None:
    # Everything at once, into one flush: HTTP pipelined on one connection
    # (answers come after the commit), MQTT from one publisher
    client = await RawHttp.open(nasty.server.http_port)
    pub = await Publisher(f"nasty-{time.time_ns()}").connect(nasty.broker_port)
    for case in CASES:
        if case.kind == "gateway":
            client.send(
                "/v1/devices/gw/telemetry", body_for(case, "http"),
                content_type=CONTENT_TYPES[case.kind],
            )  # fmt: skip
            pub.publish("gateway/g/nasty", body_for(case, "mqtt"))
            continue
        http_path = f"/v1/devices/{quote(device(case, 'http'), safe='')}/telemetry"
        client.send(http_path, case.body, content_type=CONTENT_TYPES[case.kind])
        pub.publish(f"devices/{device(case, 'mqtt')}/{TOPICS[case.kind]}", case.body)
    answers = [await client.response(timeout=30) for _ in CASES]
    await pub.wait_acked(len(CASES))
    await pub.close()
    await client.close()

    # The HTTP answers: stored counts and rejected paths, or 400 naming a byte
    for case, (status, _, answer) in zip(CASES, answers, strict=True):
        if case.rejected == ["*"]:
            assert status == 400 and answer["path"].startswith("byte "), answer
            assert answer["error"].startswith("invalid JSON"), answer
            continue
        assert status == 202, (case.name, answer)
        assert answer["stored"] == len(case.stored), (case.name, answer)
        paths = [r["path"] for r in answer.get("rejected", [])]
        assert paths == case.rejected, (case.name, answer)

    # Every good reading of both transports, exactly as sent
    expected = {}
    for case in CASES:
        for transport in ("http", "mqtt"):
            for key, value in case.stored.items():
                if case.kind == "gateway":
                    name, metric = key.rsplit("/", 1)
                    where = (gateway_device(name, case, transport), metric)
                else:
                    where = (device(case, transport), key)
                expected[where] = (value, case.unit.get(key))

    async def all_stored() -> list[asyncpg.Record] | None:
        rows = await nasty.fetch(
            "SELECT device_id, metric, value_num, value_text, value_json::text AS j,"
            " unit, stored_at FROM ingestd.readings"
        )
        return rows if len(rows) >= len(expected) else None

    rows = await wait_for(all_stored)
    assert rows is not None
    got = {}
    for r in rows:
        value = r["value_num"] if r["value_num"] is not None else r["value_text"]
        if r["j"] is not None:
            value = json.loads(r["j"])
        got[(r["device_id"], r["metric"])] = (value, r["unit"])
    assert got.keys() == expected.keys()
    for key, (value, unit) in expected.items():
        stored_value, stored_unit = got[key]
        assert stored_unit == unit, key
        if isinstance(value, list):  # jsonb keeps integers exactly; 1e308
            assert len(stored_value) == len(value), key  # comes back as digits
            for back, sent in zip(stored_value, value, strict=True):
                assert (
                    back == sent
                    and type(back) is type(sent)
                    or (type(sent) is float and float(back) == sent)
                ), key
        else:
            assert stored_value == value and type(stored_value) is type(value), key
    # ...all written by one flush, and none of them piecewise
    assert len({r["stored_at"] for r in rows}) == 1
    salvaged = await nasty.fetchval(
        "SELECT count(*) FROM ingestd.dead_letters WHERE source = 'flush'"
    )
    assert salvaged == 0

    # Each message with a bad part is one dead letter, its bytes exact
    letters = await nasty.fetch(
        "SELECT transport, device_id, source, reason, details, payload "
        "FROM ingestd.dead_letters"
    )
    for case in CASES:
        if not case.rejected:
            continue
        for transport in ("http", "mqtt"):
            found = [
                r for r in letters
                if r["transport"] == transport and _letter_of(r, case, transport)
            ]  # fmt: skip
            assert len(found) == 1, (case.name, transport, found)
            letter = found[0]
            assert letter["payload"] == body_for(case, transport), case.name
            if case.rejected == ["*"]:
                assert letter["reason"].startswith("invalid JSON"), letter["reason"]
                assert letter["reason"].endswith("`"), letter["reason"]
                continue
            details = json.loads(letter["details"])
            assert [d["path"] for d in details] == case.rejected, case.name
            first = details[0]
            assert letter["reason"].startswith(
                f"{first['reason']} - at `{first['path']}`"
            )


def _letter_of(row: asyncpg.Record, case: Case, transport: str) -> bool:
    if case.kind == "gateway":
        return bool(row["payload"] == body_for(case, transport))
    return bool(row["device_id"] == device(case, transport))


# -- the last line of defence ---------------------------------------------------


@pytest.fixture
async def pool(pg_uri: str, run_id: str) -> AsyncIterator[asyncpg.Pool]:
    dsn = await harness.create_database(pg_uri, f"t_nasty_flush_{run_id}")
    conn = await asyncpg.connect(dsn)
    await database.migrate(conn)
    await conn.close()
    made = await database.connect_pool(dsn, 2, 10)
    yield made
    await made.close()


UNSTORABLE = [
    ("surrogate-text", "x\ud800", 0),
    ("nul-text", "a\x00b", 0),
    ("nul-json", ["a\x00"], 0),
    ("big-json", [2**70], 0),
    ("time-past-64-bits", 1.0, 2**70),
    ("nul\x00metric", 1.0, 0),
    ("surrogate\udfffmetric", 1.0, 0),
]


async def test_nasty_flush_stores_good_readings_beside_unstorable_ones(
    pool: asyncpg.Pool,
) -> None:
    # Readings no codec lets through (fuzz_oracle checks that), handed to the
    # batcher directly: the flush must still store the good ones around them
    now = int(time.time() * 1e6)
    batcher = Batcher(pool, flush_rows=100_000, flush_interval_ms=200, capacity=10**6)
    batcher.start()
    acked: list[str] = []
    for i, (metric, value, ts) in enumerate(UNSTORABLE):
        for name, v, t in ((f"good-{i}", float(i), now), (metric, value, ts or now)):
            decoded = Decoded()
            decoded.readings.append(
                Reading("defence", name, t, v, None, None, now, "test", "json")
            )
            origin = Origin("defence", "test", now, "test")
            batcher.submit(origin, decoded, name.encode("utf-8", "replace"),
                           (acked.append, name))  # fmt: skip
    await batcher.close()

    stored = await pool.fetch(
        "SELECT metric, value_num, stored_at FROM ingestd.readings ORDER BY metric"
    )
    assert [(r["metric"], r["value_num"]) for r in stored] == [
        (f"good-{i}", float(i)) for i in range(len(UNSTORABLE))
    ]
    letters = await pool.fetch(
        "SELECT source, reason FROM ingestd.dead_letters ORDER BY id"
    )
    assert len(letters) == len(UNSTORABLE)
    assert {r["source"] for r in letters} == {"flush"}
    assert all(r["reason"].startswith(("refused: ", "not storable: ")) for r in letters)
    # Every message was answered: nothing waits forever on a lost flush
    assert len(acked) == 2 * len(UNSTORABLE)


async def test_a_bug_of_ours_tripped_by_one_reading_costs_that_reading_only(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault that is neither the database's nor in REFUSED (a bug in our
    # write path that one value trips): the flush is salvaged piecewise, the
    # good readings are stored, the tripping one is a dead letter naming the
    # error, and every sender is acknowledged; none is left waiting
    real_write = writer.write

    async def tripping(conn: Any, rows: Any, *rest: Any) -> None:
        if any(row[1] == "trips-a-bug" for row in rows):
            raise KeyError("a bug of ours")
        await real_write(conn, rows, *rest)

    monkeypatch.setattr(writer, "write", tripping)
    handed_on: list[int] = []

    def failing_rules(readings: list[Reading]) -> None:
        handed_on.append(len(readings))
        raise RuntimeError("a bug in the rules")

    now = int(time.time() * 1e6)
    batcher = Batcher(
        pool, flush_rows=100_000, flush_interval_ms=100, capacity=10**6,
        on_commit=failing_rules,
    )  # fmt: skip
    batcher.start()
    acked: list[str] = []
    metrics = ["good-1", "trips-a-bug", "good-2"]
    for metric in metrics:
        decoded = Decoded()
        decoded.readings.append(
            Reading("bug", metric, now, 1.0, None, None, now, "test", "json")
        )
        origin = Origin("bug", "test", now, "test")
        batcher.submit(origin, decoded, metric.encode(), (acked.append, metric))

    async def flushed() -> bool:
        return len(acked) == len(metrics)

    assert await wait_for(flushed, timeout=10)
    # A failing hand-on to the rules neither stops the batcher nor counts the
    # batch twice: the next message is stored, and nothing stays pending
    decoded = Decoded()
    decoded.readings.append(
        Reading("bug", "after", now, 2.0, None, None, now, "test", "json")
    )
    batcher.submit(Origin("bug", "test", now, "test"), decoded, b"x",
                   (acked.append, "after"))  # fmt: skip
    await batcher.close()

    assert acked == [*metrics, "after"]
    assert (batcher.pending, handed_on) == (0, [3, 1])
    stored = await pool.fetch("SELECT metric FROM ingestd.readings ORDER BY metric")
    assert [r["metric"] for r in stored] == ["after", "good-1", "good-2"]
    letters = await pool.fetch(
        "SELECT source, reason, payload FROM ingestd.dead_letters"
    )
    assert [(r["source"], r["reason"]) for r in letters] == [
        ("flush", "internal error: KeyError: 'a bug of ours'")
    ]
    assert b"trips-a-bug" in letters[0]["payload"]
