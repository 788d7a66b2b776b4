"""The loop-lag monitor: lateness is measured, and a stuck loop is logged with where it is stuck."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from stream_server.loop_lag import LoopLag


def a_blocking_call_on_the_loop(seconds: float) -> None:
    time.sleep(seconds)


async def test_a_stuck_loop_is_logged_with_the_call_that_blocks_it(caplog: pytest.LogCaptureFixture) -> None:
    lag = LoopLag()
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.3)  # a few normal ticks first
    with caplog.at_level(logging.WARNING, logger="stream_server.loop_lag"):
        a_blocking_call_on_the_loop(1.0)
        await asyncio.sleep(0.3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    stuck = [r.getMessage() for r in caplog.records if "blocked" in r.getMessage()]
    assert len(stuck) == 1 and "a_blocking_call_on_the_loop" in stuck[0], caplog.text
    assert any("ran" in r.getMessage() and "late" in r.getMessage() for r in caplog.records)
    assert 0.8 <= lag.worst_s() <= 2.5
