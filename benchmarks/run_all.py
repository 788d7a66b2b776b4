"""``make bench``: the CPU benchmark set in one go (about 12 minutes on 2 cores), then the report.

Each benchmark runs in its own process and writes its JSON to benchmarks/results/; the README's
performance section and the plots are regenerated from them at the end. The 10-minute long run is
separate (``make bench-long``).
"""

from __future__ import annotations

import subprocess
import sys
import time

STEPS: list[list[str]] = [
    ["benchmarks.backend_speed", "--backend", "mesh"],
    ["benchmarks.loopback", "--backend", "passthrough", "--seconds", "30"],
    ["benchmarks.loopback", "--backend", "passthrough", "--avatar", "astronaut", "--seconds", "30"],
    ["benchmarks.loopback", "--backend", "mesh", "--seconds", "30"],
    ["benchmarks.loopback", "--backend", "mesh", "--avatar", "astronaut", "--seconds", "30"],
    ["benchmarks.glass_to_glass", "--backend", "mesh", "--events", "100"],
    ["benchmarks.glass_to_glass_browser", "--seconds", "125"],
    ["benchmarks.stress", "--seconds", "45"],
    ["benchmarks.concurrency", "--backend", "mesh", "--sessions", "1,2,4,8", "--seconds", "30"],
    ["benchmarks.report"],
]


def main() -> int:
    started = time.monotonic()
    for number, (module, *args) in enumerate(STEPS, 1):
        print(f"[{number}/{len(STEPS)}] python -m {module} {' '.join(args)}  ({time.monotonic() - started:.0f} s so far)", flush=True)
        status = subprocess.run([sys.executable, "-m", module, *args]).returncode
        if status:
            print(f"{module} failed with exit code {status}", file=sys.stderr)
            return status
    print(f"all benchmarks done in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
