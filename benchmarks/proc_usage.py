"""CPU time and memory of a process, read from /proc (Linux), sampled while a benchmark runs."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (its threads included)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    return int(open(f"/proc/{pid}/statm").read().split()[1]) * PAGE / 2**20


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (a server's worker processes)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                todo += [int(c) for c in open(f"/proc/{current}/task/{task}/children").read().split()]
        except OSError:  # it ended meanwhile
            continue
    return found


def _tree_sum(pid: int, measure) -> float:
    total = 0.0
    for member in process_tree(pid):
        try:
            total += measure(member)
        except OSError:  # it ended meanwhile
            continue
    return total


@dataclass
class UsageSampler:
    """Samples a process every ``interval_s``: (seconds since start, CPU cores busy since the last
    sample, RSS in MB, thread count), its child processes included (``tree``, the default)."""

    pid: int
    interval_s: float = 1.0
    tree: bool = True
    samples: list[tuple[float, float, float, int]] = field(default_factory=list)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = last_t = loop.time()
        last_cpu = self._sum(cpu_seconds)
        while True:
            await asyncio.sleep(self.interval_s)
            now, cpu = loop.time(), self._sum(cpu_seconds)
            self.samples.append((round(now - start, 2), round((cpu - last_cpu) / (now - last_t), 3),
                                 round(self._sum(rss_mb), 1), int(self._sum(threads))))
            last_t, last_cpu = now, cpu

    def _sum(self, measure) -> float:
        return _tree_sum(self.pid, measure) if self.tree else measure(self.pid)

    def summary(self, skip_s: float = 0.0) -> dict[str, float]:
        steady = [s for s in self.samples if s[0] >= skip_s] or self.samples
        return {
            "cpu_cores_mean": round(sum(s[1] for s in steady) / len(steady), 2),
            "rss_mb_max": max(s[2] for s in steady),
            "rss_mb_first": steady[0][2],
            "rss_mb_last": steady[-1][2],
            "threads_max": max(s[3] for s in steady),
        }
