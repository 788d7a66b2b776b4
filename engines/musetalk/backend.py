"""``musetalk``: MuseTalk 1.5 on exported ONNX models, through ONNX Runtime (TensorRT, CUDA or CPU).

Serving needs no PyTorch: ``python -m stream_server export musetalk`` turns the official files
into ONNX once; this backend loads those, one session per model per process, shared by every
stream. Per batch of frames: Whisper-tiny over each frame's 1 s window -> 50 audio tokens; the
UNet's one step at t=0 on [masked face latents, reference latents]; the VAE decoder; the face
pasted back through a feathered lower-face mask.

Portraits are prepared once (face box, crop, latents, mask). The mask is MuseTalk's BiSeNet
face-parsing mask (``parsing.py``) when ``face_parse.onnx`` was exported, else the face oval
from FaceMesh (``face.py``); a parse that finds almost no skin or lips in the lower face (not a
photo of a face, say) falls back to the FaceMesh mask with a notice. In camera mode each new
camera frame is prepared in ``generate`` (FaceMesh + VAE encoder) and always uses the FaceMesh
mask: the face moves, so the parse would have to run on every frame, and BiSeNet (a ResNet-18 at
512x512) takes about 155 ms a parse on a 2-core CPU, four frame intervals at 25 fps. ``stream_stats`` counts the
frames pasted through each mask. A frame without a face goes out unchanged, counted in
``face_lost``. Every frame with a face runs the models, silent ones too:
the registry measures ``typical_fps`` on silence, so skipping silence would make the scheduler's
budget optimistic (a cheap silence path needs a calibration on speech first).

The job's ``expression`` is ignored: the UNet draws the mouth from the audio tokens, with no
opening parameter a ``mouth_gain`` could scale.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from engines.base import Avatar, AvatarError, Backend, BackendExport, BackendFiles, ClosedStreams, FrameJob
from engines.musetalk.audio import CONTEXT_S, LOOKAHEAD_S, frame_features, frame_window, log_mel
from engines.musetalk.export import FACE_PARSE, FILES, onnx_dir
from engines.musetalk.face import CROP, FaceCrop, face_crop, paste
from engines.musetalk.files import musetalk_files
from engines.musetalk.parsing import parse_input, parsing_mask
from engines.musetalk.weights import WeightsError, find_layout
from engines.runtime.providers import PROVIDER_ENV

log = logging.getLogger(__name__)

# fp16 on TensorRT for the UNet only: others' fp16 SD-VAE decoders collapsed to grey faces
# (GroupNorm overflows in half precision), so the decoder stays fp32 until measured on a GPU
FP16_MODELS = ("unet",)
MIN_PARSED_AREA = 0.25  # a BiSeNet mask under this fraction of the FaceMesh one's area is not used
BISENET, FACEMESH = "bisenet", "facemesh"

def _missing_onnx() -> tuple[Path, list[Path]]:
    folder = onnx_dir(find_layout())
    return folder, [folder / name for name in (*FILES, "export.json") if not (folder / name).is_file()]


@dataclass
class _Prepared:
    face: FaceCrop
    latents: np.ndarray  # (8, h, w): masked-face latents then reference latents
    mask: str = FACEMESH  # where face.mask comes from: BISENET or FACEMESH


@dataclass
class _Stream:
    face_lost: int = 0
    masks: dict[str, int] = field(default_factory=lambda: {BISENET: 0, FACEMESH: 0})  # frames pasted through each
    tracker: object | None = None
    last_camera: tuple[np.ndarray, _Prepared | None] | None = None


class MuseTalkBackend(Backend):
    """MuseTalk 1.5's exported models run as one step per frame on the face crop, pasted back into the frame."""

    name = "musetalk"
    description = "MuseTalk 1.5 (UNet one step in SD-VAE latent space, Whisper-tiny audio), ONNX Runtime / TensorRT"
    lookahead_s = LOOKAHEAD_S
    context_s = CONTEXT_S
    batch_size = 4
    quality_rank = 2  # a generated mouth: looks better than mesh's warp (1)
    export = BackendExport(
        entry="engines.musetalk.export:export_musetalk",
        help="MuseTalk's official files to ONNX, each model checked against PyTorch",
        models_dir_help="where the official files are (default $LIPSYNC_MODELS_DIR or ./models)",
        out_help="where the ONNX files go (default <models-dir>/musetalk-onnx, where the backend looks)",
        errors=(WeightsError, RuntimeError),
        needs=("torch",),
    )

    @classmethod
    def files(cls) -> BackendFiles:
        return musetalk_files()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu)"
        folder, missing = _missing_onnx()
        if not missing:
            return None
        layout = find_layout()
        weights = layout.missing()
        if weights:
            return (
                f"MuseTalk weights missing under {layout.root.resolve()}: " + "; ".join(weights)
                + ". Then run: python -m stream_server export musetalk"
            )
        return (
            f"the weights are in {layout.root.resolve()} but not exported ({', '.join(str(p) for p in missing)} missing): "
            "run python -m stream_server export musetalk (needs pip install '.[export]')"
        )

    @classmethod
    def calibration_key(cls) -> str:
        folder, missing = _missing_onnx()
        exported = "" if missing else (folder / "export.json").read_text()
        return exported + "|" + os.environ.get(PROVIDER_ENV, "")

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._closed = ClosedStreams()
        self._sessions: dict[str, object] = {}

    def load(self) -> None:
        from engines.runtime.session import shared_session

        folder = onnx_dir(find_layout())
        self._info = json.loads((folder / "export.json").read_text())
        for name in ("whisper", "unet", "vae_encoder", "vae_decoder"):
            # fp16 only affects TensorRT; see FP16_MODELS and export.py on precision
            self._sessions[name] = shared_session(folder / f"{name}.onnx", fp16=name in FP16_MODELS)
        if "face_parse" in self._info["models"] and (folder / FACE_PARSE).is_file():
            self._sessions["face_parse"] = shared_session(folder / FACE_PARSE)
        log.info("musetalk: portraits blended through the %s mask",
                 "BiSeNet face-parsing" if "face_parse" in self._sessions else f"FaceMesh ({FACE_PARSE} not exported)")

    def _run(self, name: str, value: "np.ndarray | object") -> np.ndarray:
        session = self._sessions[name]
        return next(iter(session.run({session.input_names[0]: value}).values()))  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ avatars

    @property
    def parses_faces(self) -> bool:
        """Whether portraits get the BiSeNet mask (``face_parse.onnx`` exported and loaded)."""
        return "face_parse" in self._sessions

    def _parsed_mask(self, image: np.ndarray, face: FaceCrop) -> np.ndarray | None:
        """MuseTalk's BiSeNet mask for the face, or None if it covers too little to be right."""
        labels = self._run("face_parse", parse_input(image, face.box))[0]
        mask = parsing_mask(labels, face.box)
        return mask if mask.sum() >= MIN_PARSED_AREA * face.mask.sum() else None

    def _prepare(self, image: np.ndarray, landmarks: np.ndarray, parse: bool = False) -> _Prepared | None:
        face = face_crop(image, landmarks)
        if face is None:
            return None
        source = FACEMESH
        if parse and self.parses_faces:
            mask = self._parsed_mask(image, face)
            if mask is not None:
                face, source = replace(face, mask=mask), BISENET
        reference = face.crop.astype(np.float32) / 127.5 - 1.0
        masked = reference.copy()
        masked[CROP // 2 :] = -1.0  # the lower half blacked out, as MuseTalk masks it
        batch = np.stack([masked, reference]).transpose(0, 3, 1, 2)
        latents = self._run("vae_encoder", np.ascontiguousarray(batch))
        return _Prepared(face, np.concatenate([latents[0], latents[1]], axis=0), source)

    def prepare_avatar(self, name: str, image: np.ndarray | None) -> Avatar:
        if image is None:
            return Avatar(name=name, image=None)
        from engines.face import portrait_face

        face, several = portrait_face(image, name)
        prepared = self._prepare(image, face.landmarks, parse=True)
        if prepared is None:
            raise AvatarError("the face is too small or too close to the edge of the picture for MuseTalk's crop")
        notices = [several] if several else []
        if self.parses_faces and prepared.mask != BISENET:
            notices.append(f"face parsing found little skin or lips in the lower face of {name}: "
                           "blending through the FaceMesh mask instead")
        return Avatar(name=name, image=image, data={"musetalk": prepared}, notice="; ".join(notices))

    def _camera(self, stream: _Stream, frame: np.ndarray) -> _Prepared | None:
        if stream.last_camera is not None and stream.last_camera[0] is frame:
            return stream.last_camera[1]
        from engines.face import FaceLandmarker

        if stream.tracker is None:
            stream.tracker = FaceLandmarker(tracking=True)
        faces = stream.tracker.faces(frame)  # type: ignore[attr-defined]
        prepared = self._prepare(frame, faces[0].landmarks) if faces else None
        stream.last_camera = (frame, prepared)
        return prepared

    # ------------------------------------------------------------------ frames

    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        frames: list[np.ndarray | None] = [None] * len(jobs)
        todo: list[tuple[int, _Prepared, np.ndarray]] = []
        for i, job in enumerate(jobs):
            if job.stream_id in self._closed:  # its session ended while this job waited
                frames[i] = job.base_frame
                continue
            stream = self._streams.setdefault(job.stream_id, _Stream())
            if job.avatar.is_camera:
                prepared = self._camera(stream, job.base_frame)
                if prepared is None:
                    stream.face_lost += 1
            else:
                prepared = job.avatar.data["musetalk"]
            if prepared is None:
                frames[i] = job.base_frame
                continue
            pcm = frame_window(job.audio.pcm, job.audio.before_s, job.audio.after_s)
            todo.append((i, prepared, log_mel(pcm)))
        if todo:
            hidden = self._run("whisper", np.stack([mel for _, _, mel in todo]))  # (B, steps, layers, dim)
            audio = np.stack([frame_features(h) for h in hidden]).astype(np.float32)
            latents = np.stack([p.latents for _, p, _ in todo])
            # the UNet's latents go to the VAE decoder where they are (GPU memory on a GPU)
            latents_out = self._sessions["unet"].run_on_device({"latents": latents, "audio": audio})["latents_out"]  # type: ignore[attr-defined]
            images = self._run("vae_decoder", latents_out)
            images = (images.transpose(0, 2, 3, 1) * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
            for (i, prepared, _), image in zip(todo, images):
                frames[i] = paste(jobs[i].base_frame, prepared.face, image)
                self._streams[jobs[i].stream_id].masks[prepared.mask] += 1
        return frames  # type: ignore[return-value]

    def close_stream(self, stream_id: str) -> None:
        self._closed.add(stream_id)
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.tracker is not None:
            stream.tracker.close()  # type: ignore[attr-defined]

    def stream_stats(self, stream_id: str) -> dict[str, int]:
        """Frames without a face, and frames pasted through each mask (``mask_bisenet``, ``mask_facemesh``)."""
        stream = self._streams.get(stream_id) or _Stream()
        return {"face_lost": stream.face_lost, **{f"mask_{source}": n for source, n in stream.masks.items()}}
