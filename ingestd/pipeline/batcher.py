"""Collect handled messages; flush on N readings or T ms; then acknowledge.

``submit`` is synchronous and cheap: it appends to the open batch. The
flush loop swaps the batch out, writes it in one transaction, and only after
the commit calls each message's acknowledgement, in arrival order (MQTT
requires PUBACKs in the order the PUBLISHes came). While one batch is being
written the next one fills, so a slow flush makes the next one larger rather
than queueing small ones.

Bounded: ``pending`` counts readings received and not yet committed. Above
``capacity`` the batcher is ``full``; transports stop reading (MQTT) or
answer 503 (HTTP) until ``on_space`` callbacks say it drained below half.
PostgreSQL down or failing: the batch is kept and retried with backoff,
which keeps the batcher full and the senders pushed back; nothing that was
acknowledged depends on a write that has not committed. A write that takes
longer than ``flush_timeout`` (a black-holed link answers nothing, and
neither a task cancellation nor asyncpg's ``command_timeout`` ends a COPY
before its own 60 s) has its connection torn down and is retried like any
other lost connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import asyncpg
import orjson

from .. import log, metrics
from ..codecs.base import Decoded
from ..model import Origin, Reading
from . import writer
from .aliases import Aliases
from .bindings import Bindings

Ack = tuple[Callable[[Any], None], Any]

# A dead letter keeps the raw message, but not without bound: a device must
# not fill the database by sending oversized garbage.
DEAD_LETTER_BYTES = 1024 * 1024
KEPT_OF_OVERSIZED = 4096

# Failures worth retrying the same batch for: the database went away, or is
# restarting, or refused the connection. Anything else is a fault in the
# data of this batch (or a bug of ours that it trips), which is then written
# piecewise (see _salvage).
RETRYABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    # A pooled connection caught mid-operation by the server shutting down
    # ("cannot switch to state 15; another operation is in progress"): seen
    # with PostgreSQL stopped mid-COPY. Dropping the batch instead left its
    # MQTT messages unacknowledged on a live connection, which the broker
    # never redelivers: 200 readings lost in 2 of 5 runs of the test.
    asyncpg.InternalClientError,
)

# What asyncpg raises, before the server sees it, for a value it cannot
# encode: a lone surrogate in text (UnicodeEncodeError), an integer beyond
# 64 bits (OverflowError), a wrong type. It abandons the COPY, and the batch
# is written piecewise like one the server refused.
REFUSED = (asyncpg.PostgresError, ValueError, TypeError, OverflowError)


class Batch:
    __slots__ = ("readings", "dead", "devices", "acks", "weight", "offline", "aliases")

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.dead: list[tuple[Any, ...]] = []
        self.offline: set[str] = set()
        self.aliases: list[tuple[str, str, str]] = []
        # device -> [last seen µs, firmware, {transports}, {formats}]
        self.devices: dict[str, list[Any]] = {}
        self.acks: list[Ack] = []
        self.weight = 0


class Batcher:
    """The single path from decoded messages to committed rows."""

    # Readings and rejects one message may carry (pipeline.max_readings_per_
    # message); a larger message is refused whole, see ``_refuse_oversized``.
    max_readings = 50_000

    def __init__(
        self,
        pool: asyncpg.Pool,
        flush_rows: int,
        flush_interval_ms: float,
        capacity: int,
        bindings: Bindings | None = None,
        on_commit: Callable[[list[Reading]], None] | None = None,
        aliases: Aliases | None = None,
        flush_timeout: float = 30.0,
    ) -> None:
        self.pool = pool
        self.flush_timeout = flush_timeout
        self.flush_rows = flush_rows
        self.interval = flush_interval_ms / 1000
        self.capacity = capacity
        self.bindings = bindings
        self.aliases = aliases or Aliases()
        self.on_commit = on_commit
        self.pending = 0
        self.committed_readings = 0
        self._batch = Batch()
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._space_waiters: list[Callable[[], None]] = []
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    # -- called by transports -------------------------------------------

    @property
    def full(self) -> bool:
        return self.pending >= self.capacity

    def on_space(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when pending readings drop below half."""
        self._space_waiters.append(callback)

    def submit(
        self, origin: Origin, decoded: Decoded, raw: bytes, ack: Ack | None
    ) -> None:
        """Take one handled message; ``ack`` is called after its commit."""
        if len(decoded.readings) + len(decoded.rejects) > self.max_readings:
            _refuse_oversized(decoded, self.max_readings)
        batch = self._batch
        readings = decoded.readings
        received = origin.received
        if decoded.aliases:
            batch.aliases += self.aliases.canonical(decoded)
        if decoded.offline:
            batch.offline.update(decoded.offline)
        if readings:
            if self.bindings is not None and self.bindings.active:
                self.bindings.stamp(readings)
            batch.readings.extend(readings)
            fmt = readings[0].format
            # Usually one device; gateways and aliases can name several
            for name in {r.device for r in readings}:
                self._touch(batch, name, received, origin.transport, fmt)
        if decoded.firmware:
            for name, version in decoded.firmware.items():
                if name in batch.devices:
                    batch.devices[name][1] = version
        if decoded.rejects:
            self.add_dead(origin, decoded, raw)
        if ack is not None:
            batch.acks.append(ack)
        weight = len(readings) + 1
        batch.weight += weight
        self.pending += weight
        if len(batch.readings) >= self.flush_rows:
            self._wake.set()
        else:
            self._arm()

    def _arm(self) -> None:
        """Start the flush timer for the open batch, unless it runs already."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.interval, self._wake.set
            )

    def add_dead(
        self, origin: Origin, decoded: Decoded | None, raw: bytes, reason: str = ""
    ) -> None:
        """Keep a message, or its rejected parts, as a dead letter."""
        rejects = decoded.rejects if decoded is not None else []
        if not reason:
            first = rejects[0] if rejects else None
            more = f" (+{len(rejects) - 1} more)" if len(rejects) > 1 else ""
            reason = f"{first.reason} - at `{first.path}`{more}" if first else "?"
        details = orjson.dumps(decoded.rejected() if decoded is not None else [])
        if len(raw) > DEAD_LETTER_BYTES:  # an oversized message: keep its start
            raw = raw[:KEPT_OF_OVERSIZED]
        device = origin.device
        self._batch.dead.append(
            (
                datetime.fromtimestamp(origin.received / 1e6, tz=timezone.utc),
                origin.transport,
                _printable(origin.source),
                _printable(device) if device is not None else None,
                _printable(reason),
                details.decode().replace("\\u0000", "\\\\0"),
                raw,
            )
        )

    def dead_letter(
        self, origin: Origin, raw: bytes, reason: str, ack: Ack | None
    ) -> None:
        """A whole message that could not be used: keep it, then ack it."""
        self.add_dead(origin, None, raw, reason)
        batch = self._batch
        if ack is not None:
            batch.acks.append(ack)
        batch.weight += 1
        self.pending += 1
        self._arm()

    @staticmethod
    def _touch(batch: Batch, device: str, seen: int, transport: str, fmt: str) -> None:
        entry = batch.devices.get(device)
        if entry is None:
            batch.devices[device] = [seen, None, {transport}, {fmt}]
        else:
            if seen > entry[0]:
                entry[0] = seen
            entry[2].add(transport)
            entry[3].add(fmt)

    # -- the flush loop -------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Flush what is pending, acknowledge it, and stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch = self._batch
            if not batch.weight:
                if self._closing:
                    return
                continue
            self._batch = Batch()
            try:
                await self._flush(batch)
            except Exception:
                # Reached only if the piecewise salvage itself fails. Nothing
                # of this batch is acknowledged: HTTP, CoAP and WebSocket
                # senders wait for an answer that never comes and time out;
                # MQTT gets it again only after a reconnect (a broker does not
                # resend on a live connection). Database trouble belongs in
                # RETRYABLE, never here.
                log.pipeline.exception("flush failed; batch not acknowledged")
                self.pending -= batch.weight
            # What filled meanwhile: flush now if full (or closing), else time it
            if self._closing or len(self._batch.readings) >= self.flush_rows:
                self._wake.set()
            elif self._batch.weight:
                self._arm()

    async def _flush(self, batch: Batch) -> None:
        try:
            rows = [writer.stage_row(r) for r in batch.readings]
        except (TypeError, ValueError):  # a value a codec let through
            rows = self._rows_apart(batch)
        started = time.perf_counter()
        backoff = 0.05
        while True:
            overdue: list[bool] = []
            try:
                async with self.pool.acquire() as conn:
                    # Cancelling the task would not do: the rollback that
                    # follows waits on the same dead link. Aborting the
                    # socket fails every wait on it at once.
                    deadline = asyncio.get_running_loop().call_later(
                        self.flush_timeout, _abort, conn, overdue
                    )
                    try:
                        await writer.write(
                            conn, rows, batch.devices, batch.dead,
                            batch.offline, batch.aliases,
                        )  # fmt: skip
                    except Exception as exc:
                        if isinstance(exc, RETRYABLE) or overdue:
                            raise
                        deadline.cancel()  # piecewise is slow, and not stuck
                        if isinstance(exc, REFUSED):
                            log.pipeline.error("flush refused (%s); salvaging", exc)
                        else:  # a bug of ours: its traceback, once per flush
                            log.pipeline.exception("flush failed; salvaging")
                        await self._salvage(conn, batch, rows)
                    finally:
                        deadline.cancel()
                break
            except RETRYABLE as exc:
                metrics.flush_failures.inc()
                cause: BaseException = exc
                if overdue:
                    cause = TimeoutError(f"no answer within {self.flush_timeout}s")
                log.pipeline.warning(
                    "flush of %d readings failed (%s: %s); retrying in %.2fs",
                    len(rows), type(cause).__name__, cause, backoff,
                )  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

        metrics.flush_seconds.observe(time.perf_counter() - started)
        metrics.flush_rows.observe(len(rows))
        metrics.flushes.inc()
        metrics.readings.inc(len(rows))
        if batch.dead:
            metrics.dead_letters.inc(len(batch.dead))
        self.committed_readings += len(rows)

        # Acknowledge in arrival order, now that everything is committed
        for callback, token in batch.acks:
            try:
                callback(token)
            except Exception:
                log.pipeline.exception("acknowledgement failed")
        self.pending -= batch.weight
        metrics.pending.set(self.pending)
        if self._space_waiters and self.pending < self.capacity // 2:
            waiters, self._space_waiters = self._space_waiters, []
            for wake in waiters:
                wake()
        if self.on_commit is not None and batch.readings:
            try:
                self.on_commit(batch.readings)
            except Exception:  # the rules' trouble; the readings are stored
                log.pipeline.exception("handing committed readings on failed")

    def _rows_apart(self, batch: Batch) -> list[tuple[Any, ...]]:
        """Stage rows one by one; a reading that cannot be one is a dead letter."""
        rows = []
        now = datetime.now(timezone.utc)
        for r in batch.readings:
            try:
                rows.append(writer.stage_row(r))
            except (TypeError, ValueError) as exc:
                log.pipeline.error("reading of %s not storable: %s", r.device, exc)
                raw = repr(r).encode()[:4096]
                batch.dead.append(
                    (now, r.transport, "flush", _printable(r.device),
                     f"not storable: {exc}", None, raw)
                )  # fmt: skip
        return rows

    async def _salvage(
        self, conn: asyncpg.Connection, batch: Batch, rows: list[tuple[Any, ...]]
    ) -> None:
        """Write a batch that PostgreSQL refused, one piece at a time.

        A refused reading or dead letter becomes a dead letter with the
        server's reason, so one bad value never holds back or drops the good
        ones. A piece that trips a bug of ours is kept the same way, with
        the error as its reason. Slow, and only reached when a check in the
        codecs missed something; the log line says what.
        """
        now = datetime.now(timezone.utc)
        refused: list[tuple[Any, ...]] = []
        try:
            await writer.write(
                conn, [], batch.devices, [], batch.offline, batch.aliases
            )
        except Exception as exc:
            if isinstance(exc, RETRYABLE):
                raise
            log.pipeline.error("registry update refused, skipped: %s", exc)
        for letter in batch.dead:
            try:
                await writer.write(conn, [], {}, [letter])
            except Exception as exc:
                if isinstance(exc, RETRYABLE):
                    raise
                reason = f"dead letter {_why(exc)}"
                refused.append((now, letter[1], "flush", None, reason, None, letter[6]))
        for row in rows:
            try:
                await writer.write(conn, [row], {}, [])
            except Exception as exc:
                if isinstance(exc, RETRYABLE):
                    raise
                try:
                    raw = orjson.dumps(list(row), default=repr)
                except TypeError:  # text orjson refuses too (a lone surrogate)
                    raw = repr(row).encode()
                refused.append((now, row[10], "flush", None, _why(exc), None, raw))
        if refused:
            await writer.write(conn, [], {}, refused)


def _why(exc: Exception) -> str:
    """A dead letter's reason for a piece the salvage could not write."""
    if isinstance(exc, REFUSED):
        return f"refused: {exc}"
    return f"internal error: {type(exc).__name__}: {exc}"


def _abort(conn: asyncpg.Connection, overdue: list[bool]) -> None:
    overdue.append(True)
    conn.terminate()


def _refuse_oversized(decoded: Decoded, limit: int) -> None:
    """Turn a message of more than ``limit`` readings and rejects into one
    reject of the whole: nothing of it is stored, so the sender can split it
    and send it again without duplicating a part. The limit bounds what one
    message takes of the buffer, of a flush and of its answer."""
    n = len(decoded.readings) + len(decoded.rejects)
    reason = (
        f"{n} readings in one message, over the limit of {limit} "
        "(pipeline.max_readings_per_message): send them in smaller messages"
    )
    decoded.readings.clear()
    decoded.rejects.clear()
    decoded.firmware.clear()
    decoded.offline.clear()
    decoded.aliases.clear()
    decoded.reject("$", reason)


def _printable(text: str) -> str:
    """Text PostgreSQL can store: it refuses NUL in text columns."""
    return text.replace("\x00", "\\0") if "\x00" in text else text
