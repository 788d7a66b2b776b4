"""The Ditto ONNX models of one process: loaded once, each checked against its published
signature, run batched where the graph takes a batch and one item at a time where it does not.

The warp network is loaded as published (``warp_network_ori.onnx``, standard ONNX GridSample on
5-D tensors at opset 17). If ONNX Runtime refuses it, the metadata patch the spec describes
(opset import 20, IR version 9, GridSample ``bilinear`` -> ``linear``; no weight changes) is
applied to a copy in the engine cache, named by the source file's hash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.base import BackendError
from engines.runtime.cache import file_sha256
from engines.runtime.session import ModelLoadError, ModelSession
from engines.vasa.audio import WINDOW_SAMPLES
from engines.vasa.files import ONNX_PARTS, TRT_ONLY_WARP, DittoLayout
from engines.vasa.signatures import batchable, check_signature

log = logging.getLogger(__name__)

# fp16 where Ditto's own TensorRT build uses it (the motion extractor, HuBERT and the LMDM stay
# fp32); the warp too in Ditto, with its GridSample forced to fp32, which ORT cannot do per layer,
# so here it stays fp32. Only TensorRT reads the flag.
FP16_PARTS = ("appearance_extractor", "landmark203", "stitch_network", "decoder")
# HuBERT's one dynamic dimension is its length, not a batch: always fed one 6480-sample window
# (Ditto's TensorRT profile allows 3240..12960), so its TensorRT profile pins that
PROFILES = {"hubert": {"input_values": ((1, WINDOW_SAMPLES), (1, WINDOW_SAMPLES))}}
STANDIN_PRODUCER = "lipsync-stream standins"
_AXES_BECAME_INPUT = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                      "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


def patched_warp(path: Path, cache_dir: Path) -> Path:
    """``path`` with GridSample declared the opset-20 way, written once to ``cache_dir``: the
    opset import raised to 20 and IR version 9 (as the voxta repack did), GridSample's mode
    renamed, and the reductions whose ``axes`` became an input at opset 18 rewritten to match."""
    try:
        import onnx
    except ImportError as exc:
        raise BackendError(f"{path}: ONNX Runtime refused it as published, and patching it needs the onnx "
                           f"package (pip install 'onnx>=1.16,<1.19')") from exc
    out = cache_dir / f"warp_network_ori-opset20-{file_sha256(path)[:16]}.onnx"
    if out.is_file():
        return out
    model = onnx.load(str(path))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 20
    model.ir_version = 9
    renamed = 0
    for node in model.graph.node:
        if node.op_type in _AXES_BECAME_INPUT:  # opset 18 moved these ops' axes to an input
            axes = [a for a in node.attribute if a.name == "axes"]
            if axes:
                name = f"{node.name or node.output[0]}_axes"
                model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(axes[0].ints, np.int64), name))
                node.attribute.remove(axes[0])
                node.input.append(name)
        if node.op_type == "GridSample":
            for attr in node.attribute:
                if attr.name == "mode" and attr.s in (b"bilinear", b"bicubic"):
                    attr.s = {b"bilinear": b"linear", b"bicubic": b"cubic"}[attr.s]
                    renamed += 1
    cache_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    log.warning("vasa: %s patched to opset 20 (%d GridSample modes renamed): %s", path.name, renamed, out)
    return out


@dataclass
class DittoModels:
    """One session per part, and how each is run."""

    sessions: dict[str, ModelSession] = field(default_factory=dict)
    batched: dict[str, bool] = field(default_factory=dict)
    warp_form: str = ""  # "as published" or "patched to opset 20"
    standins: bool = False  # the files are this project's stand-ins, not Ditto's weights

    def run(self, part: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in the published order (Ditto reads them by position)."""
        session = self.sessions[part]
        result = session.run(feeds)
        return [result[name] for name in session.output_names]

    def run_rows(self, part: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run ``feeds`` whose dimension 0 is a batch: in one call when the graph takes a batch,
        else row by row; outputs concatenated along dimension 0."""
        n = len(next(iter(feeds.values())))
        if self.batched[part] or n == 1:
            return self.run(part, feeds)
        rows = self.run_each(part, [{k: v[i: i + 1] for k, v in feeds.items()} for i in range(n)])
        return [np.concatenate(parts) for parts in zip(*rows)]

    def run_each(self, part: str, rows: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """Each row's outputs (each with its batch axis of 1), from one batched call when the graph
        takes a batch, else one call a row: large per-row inputs (a 8 MiB feature volume) are
        then never copied into a stack."""
        if not self.batched[part] or len(rows) == 1:
            return [self.run(part, row) for row in rows]
        outs = self.run(part, {k: np.concatenate([row[k] for row in rows]) for k in rows[0]})
        return [[out[i: i + 1] for out in outs] for i in range(len(rows))]


def _load(part: str, path: Path, cond_dim: int, cache_dir: Path) -> tuple[ModelSession, str]:
    if path.name == TRT_ONLY_WARP:
        raise BackendError(f"{path}: warp_network.onnx uses the TensorRT-only op GridSample3D; use "
                           f"warp_network_ori.onnx from the same folder")
    form = "as published"
    try:
        session = ModelSession(path, fp16=part in FP16_PARTS, shapes=PROFILES.get(part))
    except ModelLoadError as exc:
        message = str(exc)
        if "GridSample3D" in message:
            raise BackendError(f"{path}: uses the TensorRT-only op GridSample3D (that is warp_network.onnx's form); "
                               f"use warp_network_ori.onnx as published") from exc
        if part != "warp_network" or "GridSample" not in message:
            raise BackendError(message) from exc  # it names the file
        session = ModelSession(patched_warp(path, cache_dir), fp16=False)
        form = "patched to opset 20"
    check_signature(part, path, session.inputs, session.outputs, cond_dim)
    return session, form


def _producer(path: Path) -> str:
    try:
        import onnx
    except ImportError:
        return ""
    return onnx.load(str(path), load_external_data=False).producer_name


def load_models(layout: DittoLayout, cond_dim: int, cache_dir: Path) -> DittoModels:
    models = DittoModels()
    for part in ONNX_PARTS:
        path = layout.path(part)
        session, form = _load(part, path, cond_dim, cache_dir)
        models.sessions[part] = session
        models.batched[part] = batchable(session.inputs)
        if part == "warp_network":
            models.warp_form = form
        log.info("vasa: %s (%s, %s, %s)", path.name, session.provider, form,
                 "batched" if models.batched[part] else "one at a time")
    models.standins = _producer(layout.path("decoder")) == STANDIN_PRODUCER
    if models.standins:
        log.warning("vasa: these are stand-in models (python -m engines.vasa.standins), not Ditto's weights: "
                    "the frames are not a talking head")
    return models
