"""``python -m stream_server doctor``: what this machine can run, and why not.

Providers found (ONNX Runtime, TensorRT), the GPU and its memory, every backend available or
not with the reason, and MuseTalk's files found or missing (the paths looked at and where they
are published).
"""

from __future__ import annotations

import json
from typing import Any

from engines.machine import gpus, tensorrt_version


def report() -> dict[str, Any]:
    from engines.musetalk.export import FACE_PARSE, FILES, onnx_dir
    from engines.musetalk.weights import PUBLISHED, find_layout
    from engines.registry import BackendRegistry
    from engines.runtime.providers import PROVIDER_ENV, ProviderChoiceError, available_providers, onnxruntime_version, select_providers
    from stream_server.avatars import BUNDLED

    try:
        chosen: str | list[str] = select_providers()
    except ProviderChoiceError as exc:
        chosen = f"error: {exc}"
    found_gpus, gpu_note = gpus()
    layout = find_layout()
    weights = {
        "models_dir": str(layout.root.resolve()),
        "musetalk": str(layout.unet) if layout.unet else None,
        "musetalk_config": str(layout.unet_config) if layout.unet_config else None,
        "sd-vae": str(layout.vae) if layout.vae else None,
        "whisper": str(layout.whisper) if layout.whisper else None,
        "face-parse-bisent (optional)": str(layout.face_parse) if layout.face_parse else None,
        "missing": layout.missing(),
        "looked_at": {part: [str(p) for p in paths] for part, paths in layout.looked_at.items()},
        "published": PUBLISHED,
        "onnx": {name: (onnx_dir(layout) / name).is_file() for name in FILES},
        "face_parse_onnx": (onnx_dir(layout) / FACE_PARSE).is_file(),  # optional: the BiSeNet mask
    }
    registry = BackendRegistry(BUNDLED["astronaut"])
    return {
        "onnxruntime": onnxruntime_version(),
        "providers": available_providers(),
        "provider_env": PROVIDER_ENV,
        "providers_chosen": chosen,
        "tensorrt": tensorrt_version(),
        "gpus": found_gpus,
        "gpu_note": gpu_note,
        "backends": [info.to_json() for info in registry.infos()],
        "musetalk_weights": weights,
    }


def print_report(data: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    print(f"ONNX Runtime: {data['onnxruntime'] or 'not installed (pip install onnxruntime)'}")
    print(f"  providers found: {', '.join(data['providers']) or 'none'}")
    print(f"  sessions will use: {data['providers_chosen']} (force one with {data['provider_env']}=tensorrt|cuda|cpu)")
    print(f"TensorRT: {data['tensorrt'] or 'not installed (Python package tensorrt)'}")
    if data["gpus"]:
        for gpu in data["gpus"]:
            print(f"GPU: {gpu['name']}, {gpu['memory_used_mib']} / {gpu['memory_total_mib']} MiB used, driver {gpu['driver']}")
    else:
        print(f"GPU: {data['gpu_note']}")
    print("Backends:")
    for info in data["backends"]:
        state = "available" if info["available"] else f"unavailable: {info['reason']}"
        print(f"  {info['name']}: {state}")
    w = data["musetalk_weights"]
    print(f"MuseTalk files (models directory {w['models_dir']}; set LIPSYNC_MODELS_DIR to change it):")
    for part in ("musetalk", "musetalk_config", "sd-vae", "whisper"):
        print(f"  {part}: {w[part] or 'missing'}")
    parse = w["face-parse-bisent (optional)"]
    if parse is None:
        print(f"  face-parse-bisent (optional): not found, using the FaceMesh mask "
              f"(looked for {w['looked_at']['face-parse-bisent'][0]}; {w['published']['face-parse-bisent']})")
    elif w["face_parse_onnx"]:
        print(f"  face-parse-bisent (optional): {parse}, exported: portraits use the BiSeNet mask")
    else:
        print(f"  face-parse-bisent (optional): {parse}, not exported yet (run: python -m stream_server export musetalk); "
              "using the FaceMesh mask until then")
    for line in w["missing"]:
        print(f"  {line}")
    exported = [name for name, ok in w["onnx"].items() if ok]
    print(f"  exported ONNX: {', '.join(exported) if exported else 'none'} "
          f"({'complete' if len(exported) == len(w['onnx']) else 'run: python -m stream_server export musetalk'})")
