"""What ``doctor`` shows of MuseTalk's files: each published part found or missing (the paths
looked at, where it is published), the optional face parser and which mask it leaves the
portraits with, and how far the ONNX export has got."""

from __future__ import annotations

from engines.base import BackendFile, BackendFiles
from engines.musetalk.export import FACE_PARSE, FILES, onnx_dir
from engines.musetalk.weights import MODELS_DIR_ENV, PUBLISHED, Layout, find_layout

EXPORT_HINT = "run: python -m stream_server export musetalk"


def musetalk_files(layout: Layout | None = None) -> BackendFiles:
    """The parts under the models directory (``LIPSYNC_MODELS_DIR``), found or not."""
    layout = layout or find_layout()
    onnx = onnx_dir(layout)
    parts = {  # each part's files, read together: found only when all are there
        "musetalk": (layout.unet, layout.unet_config),
        "sd-vae": (layout.vae_config, layout.vae),
        "whisper": (layout.whisper_config, layout.whisper),
    }
    entries = [
        BackendFile(part, tuple(p for p in found if p) if all(found) else (), (layout.looked_for(part),), PUBLISHED[part])
        for part, found in parts.items()
    ]
    if layout.face_parse is None:
        state = "using the FaceMesh mask"
    elif (onnx / FACE_PARSE).is_file():
        state = "exported: portraits use the BiSeNet mask"
    else:
        state = f"not exported yet ({EXPORT_HINT}); using the FaceMesh mask until then"
    entries.append(BackendFile(
        "face-parse-bisent", (layout.face_parse,) if layout.face_parse else (), (layout.looked_for("face-parse-bisent"),),
        PUBLISHED["face-parse-bisent"], optional=True, state=state,
    ))
    exported = [name for name in FILES if (onnx / name).is_file()]
    progress = "complete" if len(exported) == len(FILES) else EXPORT_HINT
    return BackendFiles(
        layout.root.resolve(), MODELS_DIR_ENV, tuple(entries), (f"exported ONNX: {', '.join(exported) or 'none'} ({progress})",)
    )
