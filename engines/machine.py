"""Facts about this machine that backend speed depends on: the CPU, the NVIDIA GPUs, TensorRT.

Read by the calibration cache's machine key (``engines.auto``), by ``doctor`` and by the
benchmarks' result headers. Each function answers None or an empty list, with a note where one
helps, rather than raising: a machine without a GPU or TensorRT is a normal machine.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where there is no such file or line)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def gpus() -> tuple[list[dict[str, Any]], str]:
    """NVIDIA GPUs from nvidia-smi, and a note when there are none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], "no NVIDIA GPU found (nvidia-smi is not on PATH): neural backends run on CPU only, far from real time"
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,memory.used,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi failed: {exc}"
    found = []
    for line in out.strip().splitlines():
        name, total, used, driver = [part.strip() for part in line.split(",")]
        found.append({"name": name, "memory_total_mib": int(float(total)), "memory_used_mib": int(float(used)), "driver": driver})
    return found, "" if found else "nvidia-smi lists no GPU"


def tensorrt_version() -> str | None:
    """The installed tensorrt package's version (None where it is missing or does not import)."""
    try:
        import tensorrt  # type: ignore[import-not-found]
    except Exception:
        return None
    return str(tensorrt.__version__)
