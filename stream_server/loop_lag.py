"""How late the event loop runs: the figure that shows an overloaded server before sessions fail.

Every packet, WebRTC consent check and outgoing frame goes through this one loop. aioice gives a
consent check 0.5 s to be answered and ends the connection after six misses in a row, so a loop
that keeps running half a second late ends every session within about 30 s.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger(__name__)

TICK_S = 0.1
WINDOW_S = 10.0
WARN_S = 0.25  # half of aioice's consent-check timeout
WARN_EVERY_S = 10.0
STALL_S = 0.5  # a loop stuck this long (a missed WebRTC consent check) is logged with where it is stuck


class LoopLag:
    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, float]] = collections.deque()  # (when, lag)
        self._warned = 0.0
        self._ticked = time.monotonic()  # written by the loop, read by the stall watcher

    def worst_s(self) -> float:
        """The longest lateness over the last ``WINDOW_S`` seconds."""
        return max((lag for _, lag in self._samples), default=0.0)

    async def run(self) -> None:
        self._ticked = time.monotonic()
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch_stalls, args=(threading.get_ident(), stop),
                                   name="loop-stall-watcher", daemon=True)
        watcher.start()
        try:
            await self._measure()
        finally:
            stop.set()

    async def _measure(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            self._ticked = now
            lag = max(0.0, now - started - TICK_S)
            self._samples.append((now, lag))
            while self._samples[0][0] < now - WINDOW_S:
                self._samples.popleft()
            if lag > WARN_S and now - self._warned > WARN_EVERY_S:
                self._warned = now
                log.warning("the event loop ran %.0f ms late: the server is overloaded (WebRTC consent checks "
                            "time out after 500 ms; fewer sessions or a smaller output size would help)", lag * 1000)

    def _watch_stalls(self, loop_thread: int, stop: threading.Event) -> None:
        """Lateness is only known once the loop runs again; this thread looks while it is stuck
        and logs the loop thread's stack once per stall, which names the blocking call."""
        reported = 0.0
        while not stop.wait(STALL_S / 4):
            ticked = self._ticked
            if time.monotonic() - ticked < STALL_S or ticked == reported:
                continue
            reported = ticked
            frame = sys._current_frames().get(loop_thread)
            if frame is not None:
                stack = "".join(traceback.format_stack(frame, limit=12))
                log.warning("the event loop has been blocked for over %.0f ms, in:\n%s", STALL_S * 1000, stack)
