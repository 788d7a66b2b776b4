"""The TensorRT engine cache key: an engine is valid only for the exact model, GPU, TensorRT
version, precision and input shapes it was built for."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def engine_cache_key(
    model_path: Path,
    gpu: str,
    tensorrt_version: str,
    precision: str,
    shapes: Mapping[str, Sequence[int]],
) -> str:
    """A short hex key naming the engine cache folder of one model build.

    The model is identified by the hash of its file and of its external-data file(s) beside it
    (``<name>.onnx.data``), so re-exporting a model invalidates its engines.
    """
    model_path = Path(model_path)
    parts = {
        "model": file_sha256(model_path),
        "external": {p.name: file_sha256(p) for p in sorted(model_path.parent.glob(model_path.name + ".data*"))},
        "gpu": gpu,
        "tensorrt": tensorrt_version,
        "precision": precision,
        "shapes": {name: [int(d) for d in dims] for name, dims in sorted(shapes.items())},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
