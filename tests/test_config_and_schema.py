"""The configuration refuses what it does not know; the schema file is current."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ingestd import config
from ingestd.errors import ConfigError
from ingestd.model import json_schema

ROOT = Path(__file__).resolve().parents[1]


def test_config_empty_file_gives_working_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    cfg = config.load(path)
    assert cfg.http.port == 8080 and cfg.admin.port == 9464
    assert [r.topic for r in cfg.mqtt.routes] == [
        "devices/{device}/telemetry", "devices/{device}/senml",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[mqtt]\nprot = 1\n", "unknown field `prot` - at `mqtt`"),
        ("[pipeline]\nflush_rows = 'many'\n", "Expected `int`, got `str` - at "
         "`pipeline.flush_rows`"),
        ("[[mqtt.routes]]\ntopic = 'a/{device}'\ncodec = 'xml'\n",
         "mqtt.routes[0].codec: unknown codec 'xml' (known: chirpstack, influx"),
        ("[[mqtt.routes]]\ntopic = 'a/{device}'\n[mqtt.routes.options]\nroots = 'x'\n",
         "unknown field `roots` - at `mqtt.routes[0].options`"),
        ("[[mqtt.routes]]\ntopic = 'a/{device}'\n[mqtt.routes.options]\n"
         "time_unit = 'days'\n",
         "Invalid enum value 'days' - at `mqtt.routes[0].options.time_unit`"),
        ("[pipeline]\nflush_rows = 10\nring_capacity = 5\n",
         "ring_capacity must be at least pipeline.flush_rows"),
        ("[mqtt\n", "Expected ']'"),
    ],
)  # fmt: skip
def test_config_bad_key_or_value_is_named(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert message in str(caught.value)


def test_config_error_stops_start_up_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[http]\nport = 'eighty'\n")
    done = subprocess.run(
        [sys.executable, "-m", "ingestd", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "at `http.port`" in done.stderr


def test_schema_file_matches_the_reading_struct() -> None:
    on_disk = json.loads((ROOT / "schemas" / "reading.schema.json").read_text())
    assert on_disk == json_schema(), "run: python -m ingestd schema > schemas/..."


async def test_port_in_use_stops_start_up_with_exit_2(
    tmp_path: Path, pg_uri: str, run_id: str
) -> None:
    import asyncio
    import socket

    from bench import harness

    dsn = await harness.create_database(pg_uri, f"t_clash_{run_id}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "clash.toml"
        path.write_text(
            f'[database]\ndsn = "{dsn}"\n[mqtt]\nenabled = false\n'
            f"[coap]\nenabled = false\n[admin]\nenabled = false\n"
            f"[http]\nport = {port}\n"
        )
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "ingestd", "serve", "--config", str(path)],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot start" in done.stderr and "in use" in done.stderr
