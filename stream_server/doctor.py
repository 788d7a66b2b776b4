"""``python -m stream_server doctor``: what this machine can run, and why not.

Providers found (ONNX Runtime, TensorRT), the GPU and its memory, every backend available or
not with the reason, and each backend's files found or missing (the paths looked at and where
they are published), as the backend lists them (``Backend.files()``): nothing here names one.
"""

from __future__ import annotations

import json
from typing import Any

from engines.machine import gpus, tensorrt_version

# TensorRT is optional and not in the gpu extra (PyPI alone cannot resolve it): NVIDIA's index has it
TENSORRT_HINT = ("not installed (optional, for the TensorRT provider: "
                 "pip install tensorrt --extra-index-url https://pypi.nvidia.com; used once installed)")


def report() -> dict[str, Any]:
    from engines.registry import BackendRegistry, importable_backends
    from engines.runtime.providers import PROVIDER_ENV, ProviderChoiceError, available_providers, onnxruntime_version, select_providers
    from stream_server.avatars import BUNDLED

    try:
        chosen: str | list[str] = select_providers()
    except ProviderChoiceError as exc:
        chosen = f"error: {exc}"
    found_gpus, gpu_note = gpus()
    registry = BackendRegistry(BUNDLED["astronaut"])
    classes = importable_backends()
    backends = []
    for info in registry.infos():
        files = classes[info.name].files() if info.name in classes else None
        backends.append({**info.to_json(), "files": files.to_json() if files else None})
    return {
        "onnxruntime": onnxruntime_version(),
        "providers": available_providers(),
        "provider_env": PROVIDER_ENV,
        "providers_chosen": chosen,
        "tensorrt": tensorrt_version(),
        "gpus": found_gpus,
        "gpu_note": gpu_note,
        "backends": backends,
    }


def print_report(data: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    print(f"ONNX Runtime: {data['onnxruntime'] or 'not installed (pip install onnxruntime)'}")
    print(f"  providers found: {', '.join(data['providers']) or 'none'}")
    print(f"  sessions will use: {data['providers_chosen']} (force one with {data['provider_env']}=tensorrt|cuda|cpu)")
    print(f"TensorRT: {data['tensorrt'] or TENSORRT_HINT}")
    if data["gpus"]:
        for gpu in data["gpus"]:
            print(f"GPU: {gpu['name']}, {gpu['memory_used_mib']} / {gpu['memory_total_mib']} MiB used, driver {gpu['driver']}")
    else:
        print(f"GPU: {data['gpu_note']}")
    print("Backends:")
    for info in data["backends"]:
        state = "available" if info["available"] else f"unavailable: {info['reason']}"
        print(f"  {info['name']}: {state}")
    for info in data["backends"]:
        if info["files"]:
            print_files(info["name"], info["files"])


def print_files(backend: str, files: dict[str, Any]) -> None:
    """A backend's files (``BackendFiles.to_json()``): each found, or where it was looked for
    and where it is published; then the backend's notes."""
    print(f"{backend} files (models directory {files['directory']}; set {files['directory_env']} to change it):")
    for entry in files["files"]:
        label = f"{entry['name']} (optional)" if entry["optional"] else entry["name"]
        state = f", {entry['state']}" if entry["state"] else ""
        if entry["found"]:
            print(f"  {label}: {' + '.join(entry['found'])}{state}")
        else:
            print(f"  {label}: not found{state} (looked for {' or '.join(entry['looked_at'])}; published at {entry['published']})")
    for note in files["notes"]:
        print(f"  {note}")
