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


@dataclass
class UsageSampler:
    """Samples a process every ``interval_s``: (seconds since start, CPU cores busy since the last
    sample, RSS in MB, thread count)."""

    pid: int
    interval_s: float = 1.0
    samples: list[tuple[float, float, float, int]] = field(default_factory=list)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = last_t = loop.time()
        last_cpu = cpu_seconds(self.pid)
        while True:
            await asyncio.sleep(self.interval_s)
            now, cpu = loop.time(), cpu_seconds(self.pid)
            self.samples.append((round(now - start, 2), round((cpu - last_cpu) / (now - last_t), 3), round(rss_mb(self.pid), 1), threads(self.pid)))
            last_t, last_cpu = now, cpu

    def summary(self, skip_s: float = 0.0) -> dict[str, float]:
        steady = [s for s in self.samples if s[0] >= skip_s] or self.samples
        return {
            "cpu_cores_mean": round(sum(s[1] for s in steady) / len(steady), 2),
            "rss_mb_max": max(s[2] for s in steady),
            "rss_mb_first": steady[0][2],
            "rss_mb_last": steady[-1][2],
            "threads_max": max(s[3] for s in steady),
        }
