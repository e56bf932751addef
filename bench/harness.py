"""Real parts for tests, benchmarks and the demo, started on this machine.

- ``Mosquitto``: a private broker on a free port, with persistence on,
  queue and in-flight limits raised (Mosquitto's default drops QoS 1
  messages silently once about 1,000 are queued for a subscriber) and
  ``set_tcp_nodelay`` on (without it, measured: +18 ms at the median).
- ``Amqtt``: the embedded Python broker, for the demo only, when Mosquitto
  is not installed; it speaks MQTT 3.1.1 only.
- ``embedded_postgres``: pgserver's PostgreSQL, and a fresh database in it.
- ``IngestdProcess``: the server as a real process, so tests can kill it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {data}/
autosave_interval 30
max_queued_messages 1000000
max_queued_bytes 0
max_inflight_messages 20000
max_keepalive 300
set_tcp_nodelay true
log_dest file {data}/mosquitto.log
log_type error
log_type warning
"""


class Mosquitto:
    """A private Mosquitto; ``restart`` keeps its persisted sessions.

    ``extra`` is appended to the configuration: more listeners, TLS, an ACL
    (``ingestd certs broker-config`` writes such a file).
    """

    def __init__(
        self, port: int | None = None, data: Path | None = None, extra: str = ""
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError(
                "mosquitto is not installed: apt-get install mosquitto "
                "(.ci/run does this on a fresh machine)"
            )
        self.binary = binary
        self.port = port or free_port()
        self.data = data or Path(tempfile.mkdtemp(prefix="ingestd-mosquitto-"))
        _hand_to_broker_user(self.data)
        self.conf = self.data / "mosquitto.conf"
        self.conf.write_text(
            MOSQUITTO_CONF.format(port=self.port, data=self.data) + extra
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads its configuration, CRL included."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)


def _hand_to_broker_user(data: Path) -> None:
    """Started as root, Mosquitto drops to user ``mosquitto`` and then cannot
    write its log or its persistence file into a root-owned 0700 directory;
    persistence then does nothing, silently, and a restart loses every
    session and queued message. The directory is handed over to that user."""
    if os.geteuid() != 0:
        return
    import pwd

    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:  # no such user: Mosquitto stays root
        return
    os.chown(data, user.pw_uid, user.pw_gid)


class Amqtt:
    """amqtt in a child process: a demo fallback, MQTT 3.1.1 only."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Amqtt:
        code = (
            "import asyncio, sys\n"
            "from amqtt.broker import Broker\n"
            "cfg = {'listeners': {'default': {'type': 'tcp', "
            f"'bind': '127.0.0.1:{self.port}'}}}}, "
            "'auth': {'allow-anonymous': True}, 'topic-check': {'enabled': False}}\n"
            "async def main():\n"
            "    b = Broker(cfg)\n"
            "    await b.start()\n"
            "    await asyncio.Event().wait()\n"
            "asyncio.run(main())\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port, 30)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def embedded_postgres(data: Path) -> str:
    """URI of pgserver's PostgreSQL with its data in ``data`` (started if not)."""
    import pgserver

    data.mkdir(parents=True, exist_ok=True)
    return str(pgserver.get_server(str(data), cleanup_mode=None).get_uri())


def with_database(uri: str, name: str) -> str:
    """``uri`` pointing at database ``name`` instead of its own."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path="/" + name))


async def create_database(uri: str, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(uri)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(uri, name)


class IngestdProcess:
    """``python -m ingestd serve`` with a generated configuration."""

    def __init__(self, config_text: str, workdir: Path, http_port: int,
                 admin_port: int) -> None:  # fmt: skip
        self.workdir = workdir
        self.config = workdir / "ingestd.toml"
        self.config.write_text(config_text)
        self.http_port = http_port
        self.admin_port = admin_port
        self.log = workdir / "ingestd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> IngestdProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingestd", "serve", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ingestd exited: {self.log.read_text()[-3000:]}")
            if self.healthy():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"ingestd not healthy: {self.log.read_text()[-3000:]}")

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.admin_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def config_text(dsn: str, broker_port: int, http_port: int, admin_port: int,
                state_dir: Path, extra: str = "", mqtt_version: int = 5,
                client_id: str = "ingestd",
                pipeline: dict[str, float] | None = None,
                coap_port: int | None = None) -> str:  # fmt: skip
    """A configuration for one test or demo server.

    ``pipeline`` overrides keys of the ``[pipeline]`` section, e.g.
    ``{"flush_rows": 500, "ring_capacity": 20000}`` for a benchmark. CoAP
    listens on ``coap_port`` (UDP and TCP), a free port when not given.
    """
    settings: dict[str, float] = {
        "flush_rows": 2000, "flush_interval_ms": 20, "heartbeat_timeout_s": 30,
        **(pipeline or {}),
    }  # fmt: skip
    pipeline_lines = "\n".join(f"{key} = {value!r}" for key, value in settings.items())
    return f"""\
log_level = "info"
{extra}
[database]
dsn = "{dsn}"
state_dir = "{state_dir}"

[pipeline]
{pipeline_lines}

[mqtt]
port = {broker_port}
client_id = "{client_id}"
version = {mqtt_version}

[http]
port = {http_port}

[coap]
port = {coap_port or free_port()}

[admin]
port = {admin_port}
"""
