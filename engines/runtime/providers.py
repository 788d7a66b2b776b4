"""Which ONNX Runtime execution provider a model runs on.

Best first: TensorRT, then CUDA, then CPU. The user can force one with ``LIPSYNC_PROVIDER``
(``tensorrt``, ``cuda`` or ``cpu``) or the ``provider`` argument; forcing one that this
machine does not have is an error that says what is available, never a silent fallback.

TensorRT is optional and found by itself: ``onnxruntime-gpu`` offers its TensorRT provider
whether or not TensorRT is installed, so the provider counts as available only when TensorRT's
library loads too (NVIDIA's ``tensorrt`` wheel, or ``libnvinfer`` on the loader's path).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess

from engines import machine

PROVIDER_ENV = "LIPSYNC_PROVIDER"

# short name -> ONNX Runtime provider name, best first
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class ProviderChoiceError(RuntimeError):
    """The provider asked for does not exist or is not available here."""


def onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def available_providers() -> list[str]:
    """Short names of the providers this onnxruntime build offers, best first ([] without it)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    found = set(onnxruntime.get_available_providers())
    names = [short for short, full in PROVIDERS.items() if full in found]
    if "tensorrt" in names and not tensorrt_loads():
        names.remove("tensorrt")
    return names


@functools.lru_cache(maxsize=1)
def tensorrt_loads() -> bool:
    """Whether TensorRT 10's runtime library can be loaded here (what ONNX Runtime's TensorRT
    provider needs): NVIDIA's ``tensorrt`` package imports (it loads the library into the
    process), or ``libnvinfer.so.10`` is on the loader's path."""
    try:
        import tensorrt  # type: ignore[import-not-found]  # noqa: F401
    except Exception:
        try:
            ctypes.CDLL("libnvinfer.so.10")
        except OSError:
            return False
    return True


def select_providers(forced: str | None = None, available: list[str] | None = None) -> list[str]:
    """The ONNX Runtime provider names to create a session with, best first.

    ``forced`` (or the ``LIPSYNC_PROVIDER`` environment variable) picks one provider; CPU is
    always kept last as ONNX Runtime's fallback for the operators a GPU provider lacks.
    """
    forced = forced or os.environ.get(PROVIDER_ENV) or None
    have = available_providers() if available is None else available
    if not have:
        raise ProviderChoiceError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu for CUDA/TensorRT)")
    if forced is not None:
        forced = forced.strip().lower()
        if forced not in PROVIDERS:
            raise ProviderChoiceError(f"unknown provider {forced!r}: choose one of {', '.join(PROVIDERS)}")
        if forced not in have:
            raise ProviderChoiceError(
                f"provider {forced!r} is not available here (this onnxruntime offers: {', '.join(have)}); "
                + ("install onnxruntime-gpu with a matching CUDA/TensorRT" if forced != "cpu" else "")
            )
        chosen = [forced]
    else:
        chosen = list(have)
    if "cpu" not in chosen:
        chosen.append("cpu")
    return [PROVIDERS[name] for name in chosen]


def tensorrt_version() -> str:
    """The TensorRT version engines are built with (the tensorrt package's, else ONNX Runtime's)."""
    return machine.tensorrt_version() or f"onnxruntime-{onnxruntime_version()}"


def gpu_name() -> str:
    """The first NVIDIA GPU's name (nvidia-smi), or "none"."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "none"
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "none"
