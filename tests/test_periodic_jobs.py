"""A periodic job (rules, bindings, aliases, offline sweep) that raises
something unexpected is logged and tried again at its next tick: it must
not die silently and leave, say, the rules never re-read again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ingestd.config import Config
from ingestd.server import Server


class _Pool:
    """Hands out a placeholder connection: the job below never uses it."""

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[object]:
        yield object()


async def test_periodic_job_survives_an_unexpected_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server(Config())
    server.pool = _Pool()  # type: ignore[assignment]
    calls: list[int] = []

    async def reload_rules(conn: Any) -> None:
        calls.append(len(calls))
        if len(calls) <= 2:  # e.g. a rule row whose params are a JSON list
            raise AttributeError("'list' object has no attribute 'get'")

    with caplog.at_level(logging.WARNING):
        server._every(0.01, reload_rules)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(calls) >= 4:
                break
        task = server._tasks[0]
        assert not task.done(), task.exception() if task.done() else None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(calls) >= 4
    failed = [r for r in caplog.records if "reload_rules" in r.getMessage()]
    assert len(failed) == 2 and "no attribute 'get'" in (failed[0].exc_text or "")
