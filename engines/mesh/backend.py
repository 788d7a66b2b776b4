"""``mesh``: the default backend. Face landmarks + a small audio-to-mouth network + a mesh warp.

Runs on any CPU with nothing to download: MediaPipe's FaceMesh ships inside its wheel and the
audio-to-mouth weights are committed beside their training script. For a portrait the face is
found, prepared and its mouth opening calibrated once (``calibrate.py``); for the camera, every
frame is tracked (the face's tracker is per stream) and a frame whose face is lost goes out
unchanged, counted in ``face_lost``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from engines.audio2mouth.model import AudioToMouth
from engines.base import Avatar, AvatarError, Backend, BackendError, ClosedStreams, FrameJob
from engines.face import FaceLandmarker, face_scale, portrait_face
from engines.head_motion.model import HeadMotion, MotionWeights, motion_amount
from engines.mesh.calibrate import OpeningMap, calibrate
from engines.mesh.prepare import PreparedFace, prepare_face
from engines.mesh.render import render_mouth
from engines.mouth import MouthParams

MIN_EYE_DISTANCE_PX = 24  # smaller faces cannot be warped convincingly

# another audio-to-mouth weights file (``python -m engines.audio2mouth.train --out FILE``) instead
# of the committed one; read when the backend is created
WEIGHTS_ENV = "LIPSYNC_MOUTH_WEIGHTS"

_MODEL = AudioToMouth.load()
_MOTION = MotionWeights.load()


def mouth_model() -> AudioToMouth:
    """The committed audio-to-mouth model, or the one ``LIPSYNC_MOUTH_WEIGHTS`` names."""
    path = os.environ.get(WEIGHTS_ENV)
    if not path:
        return _MODEL
    try:
        model = AudioToMouth.load(Path(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"{WEIGHTS_ENV}={path}: cannot load audio-to-mouth weights ({exc}); "
                           f"unset it to use the committed weights") from exc
    if (model.context_s, model.lookahead_s) != (_MODEL.context_s, _MODEL.lookahead_s):
        raise BackendError(f"{WEIGHTS_ENV}={path}: its audio window ({model.context_s} s context, "
                           f"{model.lookahead_s} s lookahead) differs from the committed model's "
                           f"({_MODEL.context_s} s, {_MODEL.lookahead_s} s), which the server is built around")
    return model


@dataclass
class _Stream:
    """What one session's frames carry over from one frame to the next."""

    motion: HeadMotion
    tracker: FaceLandmarker | None = None
    face_lost: int = 0
    last_camera: tuple[np.ndarray, PreparedFace | None] | None = None  # (frame, its face)
    lock: threading.Lock = field(default_factory=threading.Lock)  # the tracker: used by one thread at a time


class MeshBackend(Backend):
    name = "mesh"
    description = "Lip-sync on any CPU: face mesh warp with a synthesised mouth interior, driven by a small audio-to-mouth network"
    lookahead_s = _MODEL.lookahead_s
    context_s = _MODEL.context_s
    batch_size = 4
    quality_rank = 1  # a warped mouth: below a generated one (musetalk, 2)
    in_processes = True  # numpy and OpenCV work per frame: spread over worker processes
    head_motion = True  # head, brows and blinks that follow the voice (engines/head_motion)

    def __init__(self) -> None:
        self._model = mouth_model()
        self._streams: dict[str, _Stream] = {}
        self._closed = ClosedStreams()
        self._streams_lock = threading.Lock()  # close_stream comes from another thread

    def prepare_avatar(self, name: str, image: np.ndarray | None) -> Avatar:
        if image is None:
            return Avatar(name=name, image=None)
        face, notice = portrait_face(image, name)
        landmarks = face.landmarks
        eyes = face_scale(landmarks)
        if eyes < MIN_EYE_DISTANCE_PX:
            raise AvatarError(
                f"the face is too small ({eyes:.0f} px between the eye corners, at least "
                f"{MIN_EYE_DISTANCE_PX} needed): use a closer photo or a larger output size"
            )
        face = prepare_face(image, landmarks)
        data = {"face": face, "landmarks": landmarks, "opening": calibrate(face)}
        return Avatar(name=name, image=image, data=data, notice=notice)

    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        predicted = self._model.predict_batch(np.stack([job.audio.mel for job in jobs]))
        frames = []
        for job, raw in zip(jobs, predicted):
            stream = self._stream(job)
            if stream is None:  # its session ended while this job waited
                frames.append(job.base_frame)
                continue
            # no smoothing here: the model's overlapping windows already make its output smooth,
            # and smoothing its output would add lag (measured: mean r 0.145 without, 0.127 with
            # an exponential average of weight 0.65)
            params = MouthParams.from_array(raw).with_gain(job.expression.mouth_gain)
            amount = motion_amount(job.expression.motion, camera=job.avatar.is_camera) if self.head_motion else 0.0
            pose = stream.motion.at(job.time_s, job.audio.pcm, job.audio.before_s, amount)
            if job.avatar.is_camera:
                face = self._track(stream, job.base_frame)
                if face is None:
                    stream.face_lost += 1
                    frames.append(job.base_frame)
                    continue
                # the user's own eyes blink: only the head motion asked for is added
                frames.append(render_mouth(face, params, dataclasses.replace(pose, blink=0.0)))
            else:
                face = job.avatar.data["face"]
                opening: OpeningMap | None = job.avatar.data["opening"]
                if opening is not None:
                    params = opening.apply(params)
                if not self.head_motion:
                    pose = dataclasses.replace(pose, blink=0.0)
                frames.append(render_mouth(face, params, pose))
        return frames

    def _stream(self, job: FrameJob) -> _Stream | None:
        """The job's stream state, made on its first frame; None once the stream is closed."""
        with self._streams_lock:
            if job.stream_id in self._closed:
                return None
            if job.stream_id not in self._streams:
                seed = sum(job.stream_id.encode())  # different sessions move and blink differently
                self._streams[job.stream_id] = _Stream(motion=HeadMotion(_MOTION, seed=seed))
            return self._streams[job.stream_id]

    @staticmethod
    def _track(stream: _Stream, frame: np.ndarray) -> PreparedFace | None:
        """The face in a camera frame (tracked from the stream's previous frames)."""
        if stream.last_camera is not None and stream.last_camera[0] is frame:
            return stream.last_camera[1]  # the same camera frame again (camera slower than output)
        with stream.lock:
            if stream.tracker is None:
                stream.tracker = FaceLandmarker(tracking=True)
            faces = stream.tracker.faces(frame)
        previous = stream.last_camera[1] if stream.last_camera is not None else None
        face = prepare_face(frame, faces[0].landmarks, previous) if faces else None
        stream.last_camera = (frame, face)
        return face

    def close_stream(self, stream_id: str) -> None:
        with self._streams_lock:
            self._closed.add(stream_id)
            stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.tracker is not None:
            with stream.lock:  # not while the worker thread tracks with it
                stream.tracker.close()

    def stream_stats(self, stream_id: str) -> dict[str, int]:
        stream = self._streams.get(stream_id)
        return {"face_lost": stream.face_lost if stream else 0}
