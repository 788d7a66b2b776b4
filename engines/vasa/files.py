"""Ditto's published file set under the models directory, as Hugging Face lays it out.

    models/ditto/                                  (``LIPSYNC_MODELS_DIR``, default ./models)
      ditto_cfg/v0.4_hubert_cfg_trt_online.pkl     the online config (numbers and flags only)
      ditto_onnx/hubert.onnx                       or ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx
      ditto_onnx/lmdm_v0.4_hubert.onnx
      ditto_onnx/appearance_extractor.onnx  motion_extractor.onnx  landmark203.onnx
      ditto_onnx/stitch_network.onnx  warp_network_ori.onnx  decoder.onnx

Published at https://huggingface.co/digital-avatar/ditto-talkinghead (Apache-2.0). The
InsightFace models of that set (``insightface_det.onnx``, ``landmark106.onnx``) are for
non-commercial research only and never read: the seed crop comes from MediaPipe FaceMesh.
``warp_network.onnx`` (a TensorRT-only custom op) and the TensorRT engines are not read either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engines.base import BackendFile, BackendFiles

MODELS_DIR_ENV = "LIPSYNC_MODELS_DIR"  # the directory every backend's files live under
PUBLISHED = "https://huggingface.co/digital-avatar/ditto-talkinghead"

# part -> (paths under models/ditto/ in order of preference, published size)
PARTS: dict[str, tuple[tuple[str, ...], str]] = {
    "cfg": (("ditto_cfg/v0.4_hubert_cfg_trt_online.pkl",), "30.9 kB"),
    "hubert": (("ditto_onnx/hubert.onnx", "ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx"), "1.46 GB"),
    "lmdm": (("ditto_onnx/lmdm_v0.4_hubert.onnx",), "192 MB"),
    "appearance_extractor": (("ditto_onnx/appearance_extractor.onnx",), "3.36 MB"),
    "motion_extractor": (("ditto_onnx/motion_extractor.onnx",), "113 MB"),
    "landmark203": (("ditto_onnx/landmark203.onnx",), "115 MB"),
    "stitch_network": (("ditto_onnx/stitch_network.onnx",), "186 kB"),
    "warp_network": (("ditto_onnx/warp_network_ori.onnx",), "200 MB"),
    "decoder": (("ditto_onnx/decoder.onnx",), "222 MB"),
}
ONNX_PARTS = tuple(part for part in PARTS if part != "cfg")
# in the same folder as warp_network_ori.onnx, and refused by name (it needs a TensorRT plugin)
TRT_ONLY_WARP = "warp_network.onnx"


def models_dir() -> Path:
    return Path(os.environ.get(MODELS_DIR_ENV) or "models")


@dataclass
class DittoLayout:
    """Where each part is (None: not found) and where it was looked for."""

    root: Path  # models/ditto
    found: dict[str, Path | None] = field(default_factory=dict)
    looked_at: dict[str, tuple[Path, ...]] = field(default_factory=dict)

    def path(self, part: str) -> Path:
        found = self.found.get(part)
        if found is None:
            raise KeyError(part)
        return found

    def missing(self) -> list[str]:
        """One line per missing part: the paths looked at and where it is published."""
        return [
            f"{part}: not found (looked for {' or '.join(map(str, self.looked_at[part]))}); published at "
            f"{PUBLISHED} ({' or '.join(PARTS[part][0])}, {PARTS[part][1]})"
            for part in PARTS if self.found.get(part) is None
        ]


def find_layout(root: Path | None = None) -> DittoLayout:
    root = Path(root) if root is not None else models_dir() / "ditto"
    layout = DittoLayout(root)
    for part, (relative, _) in PARTS.items():
        candidates = tuple(root / r for r in relative)
        layout.looked_at[part] = candidates
        layout.found[part] = next((p for p in candidates if p.is_file()), None)
    return layout


def vasa_files(layout: DittoLayout | None = None) -> BackendFiles:
    """What ``doctor`` shows: each part found or not, with where it is published."""
    layout = layout or find_layout()
    entries = tuple(
        BackendFile(
            part, (layout.found[part],) if layout.found[part] else (),
            (" or ".join(map(str, layout.looked_at[part])),),
            f"{PUBLISHED} ({' or '.join(PARTS[part][0])}, {PARTS[part][1]})",
        )
        for part in PARTS
    )
    notes = ("InsightFace's detector and 106-point models in that set are non-commercial and not used "
             "(the crop is seeded from MediaPipe FaceMesh)",
             "stand-in models to try the backend without the weights: python -m engines.vasa.standins DIR")
    return BackendFiles(layout.root.resolve(), MODELS_DIR_ENV, entries, notes)
