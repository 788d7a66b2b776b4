"""``vasa``: VASA-style motion diffusion on Ant Group's published Ditto models (not VASA-1, whose
weights were never released), through ONNX Runtime.

Audio drives Ditto's LMDM, a diffusion transformer in LivePortrait's face-motion space; the
LivePortrait networks draw the frames. Per stream: HuBERT features from the stream's audio in
Ditto's online chunking (``audio.py``), the LMDM's online windowing with its carried state and
emotion conditioning (``motion.py``), motion stitching (``stitch.py``), then per frame the
stitching network, the warp, the decoder and a feathered paste-back (``crop.py``). The avatar is
prepared once: crop seeded by MediaPipe FaceMesh (InsightFace is not used), landmark203, the
appearance features and source keypoints. The camera avatar animates the first camera frame with
a face, prepared for each stream.

Ditto runs at 25 fps; a stream at another rate takes the motion of the nearest 25 fps frame.
Windows and LMDM steps of several streams due in one ``generate`` call are batched when the
graphs take a batch (else run one stream at a time), and so are the per-frame networks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engines.base import EMOTIONS, Avatar, Backend, BackendError, BackendFiles, ClosedStreams, Expression, FrameJob
from engines.face import FaceLandmarker, portrait_face
from engines.runtime.providers import PROVIDER_ENV
from engines.vasa import audio as A
from engines.vasa import motion as M
from engines.vasa.cfg import ConfigError, DittoConfig, load_config
from engines.vasa.crop import (Putback, crop_from_lmk203, lmk203_to_image, seed_crop, to_lmk203_input,
                               to_model_input)
from engines.vasa.files import PUBLISHED, find_layout, vasa_files
from engines.vasa.models import DittoModels, load_models
from engines.vasa.stitch import MotionStitch, as_info, info_to_motion

log = logging.getLogger(__name__)

OVERLAP_ENV = "LIPSYNC_VASA_OVERLAP"  # 75 (default: 485 ms of lookahead) or 70 (885 ms, as Ditto ships)
DEFAULT_OVERLAP = 75
MOTION_FPS = 25.0


def overlap(strict: bool = True) -> int:
    """The LMDM overlap this process runs (``LIPSYNC_VASA_OVERLAP``); an invalid value is a
    BackendError when loading (``strict``), the default when only declaring the lookahead."""
    value = os.environ.get(OVERLAP_ENV, str(DEFAULT_OVERLAP))
    if value not in {str(o) for o in M.ALLOWED_OVERLAPS}:
        if strict:
            raise BackendError(f"{OVERLAP_ENV}={value}: must be one of {M.ALLOWED_OVERLAPS}")
        return DEFAULT_OVERLAP
    return int(value)


@dataclass
class Source:
    """One prepared face: what every frame of it reuses (spec §5.1)."""

    info: dict[str, np.ndarray]  # the motion extractor's outputs, flat
    features: np.ndarray  # f_s (1, 32, 16, 64, 64)
    putback: Putback
    image: np.ndarray  # the picture the face is pasted back into


@dataclass
class _Stream:
    audio: A.StreamAudio
    motion: M.OnlineMotion
    stitch: MotionStitch
    source: Source
    next_window: int = 0  # the next HuBERT window to run
    expression: Expression | None = None
    last_vector: np.ndarray | None = None  # motion shown when a frame's is not there (late audio)
    lmdm_windows: int = 0
    late_frames: int = 0


def emotion_weights(expression: Expression) -> np.ndarray:
    """The LMDM's (8,) emotion condition: the chosen class's softmax, mixed with neutral's by the
    intensity (Ditto's conditioning is a probability vector over the 8 classes)."""
    chosen = M.emotion_vector(EMOTIONS.index(expression.emotion))  # the same label order
    neutral = M.emotion_vector(EMOTIONS.index("neutral"))
    return (expression.emotion_intensity * chosen + (1.0 - expression.emotion_intensity) * neutral).astype(np.float32)


class VasaBackend(Backend):
    name = "vasa"
    description = ("VASA-style motion diffusion on Ant Group's Ditto models (LMDM + LivePortrait renderer, "
                   "ONNX Runtime); emotion control; needs the published Ditto files")
    lookahead_s = M.lookahead_s(overlap(strict=False))  # what the LMDM windowing needs (spec §4.4)
    context_s = 0.2
    batch_size = 8
    # not chosen by --backend auto until its look is measured with the real weights (none here)
    quality_rank = None

    @classmethod
    def files(cls) -> BackendFiles:
        return vasa_files()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        layout = find_layout()
        missing = [part for part, path in layout.found.items() if path is None]
        if missing:
            return (f"{len(missing)} of Ditto's files are missing under {layout.root} ({', '.join(missing)}); "
                    f"`python -m stream_server doctor` says where each is looked for, and they are published at "
                    f"{PUBLISHED} (to try the backend without them: python -m engines.vasa.standins DIR)")
        return None

    @classmethod
    def calibration_key(cls) -> str:
        layout = find_layout()
        stamps = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in layout.found.values() if p]
        return "|".join(stamps) + "|" + os.environ.get(PROVIDER_ENV, "") + "|" + os.environ.get(OVERLAP_ENV, "")

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._closed = ClosedStreams()
        self._models: DittoModels | None = None
        self._config: DittoConfig | None = None
        self._silence: np.ndarray | None = None
        self._plan: M.SamplerPlan | None = None
        self._overlap = overlap()
        self._camera_faces: FaceLandmarker | None = None

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        layout = find_layout()
        missing = layout.missing()
        if missing:
            raise BackendError("; ".join(missing))
        try:
            self._config = config = load_config(layout.path("cfg"))
        except ConfigError as exc:
            raise BackendError(str(exc)) from exc
        flags = M.CondFlags(config.use_emo, config.use_eye_open, config.use_eye_ball, config.use_sc)
        if config.ch_info is None and (flags.use_eye_open or flags.use_eye_ball):
            raise BackendError(f"{config.path}: no ch_info, so the LMDM would be conditioned on the avatar's own eyes; "
                               f"that path (eye features from FaceMesh) is not implemented yet: use the published "
                               f"online config, which conditions on its reference character")
        self._flags = flags
        self._models = load_models(layout, config.cond_dim, layout.root / "ort-cache")
        self._plan = M.sampler_plan(config.sampling_steps)
        self._silence = A.silence_features(self._hubert, self._overlap, key=str(layout.path("hubert")))
        log.info("vasa: overlap %d (lookahead %.0f ms), %d sampling steps, warp %s%s", self._overlap,
                 M.lookahead_s(self._overlap) * 1000, config.sampling_steps, self._models.warp_form,
                 "; STAND-IN MODELS" if self._models.standins else "")

    def _hubert(self, window: np.ndarray) -> np.ndarray:
        assert self._models is not None
        return self._models.run("hubert", {"input_values": np.asarray(window, np.float32)[None]})[0]

    # -- avatars ---------------------------------------------------------------------------
    def prepare_avatar(self, name: str, image: np.ndarray | None) -> Avatar:
        if image is None:
            return Avatar(name=name, image=None)  # each stream's first camera frame with a face
        face, notice = portrait_face(image, name)
        return Avatar(name=name, image=image, data={"source": self._source(image, face.landmarks)}, notice=notice)

    def _source(self, image: np.ndarray, landmarks: np.ndarray) -> Source:
        assert self._models is not None and self._config is not None
        models, config = self._models, self._config
        crop224, m_seed = seed_crop(landmarks, image)
        points = lmk203_to_image(models.run("landmark203", {"input": to_lmk203_input(crop224)})[0], m_seed)
        crop512, m_c2o = crop_from_lmk203(points, image, scale=config.crop_scale, vy_ratio=config.crop_vy_ratio,
                                          flag_do_rot=config.crop_do_rot)
        x = to_model_input(crop512)
        names = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")
        info = as_info(dict(zip(names, models.run("motion_extractor", {"image": x}))))
        features = models.run("appearance_extractor", {"image": x})[0]
        return Source(info, features, Putback(m_c2o, image.shape[:2]), image)

    # -- streams ---------------------------------------------------------------------------
    def _stream(self, job: FrameJob) -> _Stream | None:
        stream = self._streams.get(job.stream_id)
        if stream is not None or job.stream_id in self._closed:
            return stream  # (None for a closed stream: its session ended while this job waited)
        assert self._config is not None and self._silence is not None
        if job.avatar.is_camera:
            if self._camera_faces is None:  # one detector for every camera stream's first face
                self._camera_faces = FaceLandmarker()
            faces = self._camera_faces.faces(job.base_frame)
            if not faces:
                return None  # no face yet: the frame goes out as it came
            source = self._source(job.base_frame, faces[0].landmarks)
        else:
            source = job.avatar.data["source"]
        config, ch = self._config, self._config.ch_info
        seed = sum(job.stream_id.encode())  # different sessions move differently, each reproducibly
        ref = as_info(ch["x_s_info_lst"][0]) if ch else source.info
        motion = M.OnlineMotion(
            self._silence, info_to_motion(ref), overlap=self._overlap, flags=self._flags,
            emo=emotion_weights(job.expression),
            eye_open=None if not ch else np.asarray(ch["eye_open_lst"][0], np.float32).reshape(-1),
            eye_ball=None if not ch else np.asarray(ch["eye_ball_lst"][0], np.float32).reshape(-1),
            sc=np.asarray(ch["sc"] if ch else source.info["kp"], np.float32).reshape(-1),
            fix_kp_cond=config.fix_kp_cond, fix_kp_cond_dim=config.fix_kp_cond_dim, smo_k_d=config.smo_k_d,
            v_min_max=config.v_min_max, plan=self._plan, seed=seed,
        )
        stitch = MotionStitch(
            source.info, drive_eye=True if config.drive_eye is None else bool(config.drive_eye),
            delta_eye_arr=config.delta_eye, delta_eye_open_n=config.delta_eye_open_n, ch_info=ch,
            overall_ctrl_info=config.overall_ctrl, rng=np.random.default_rng(seed),
        )
        stream = _Stream(A.StreamAudio(), motion, stitch, source, expression=job.expression)
        self._streams[job.stream_id] = stream
        return stream

    def _feed(self, stream: _Stream, job: FrameJob) -> None:
        """The job's audio into the stream, and every HuBERT window it completes into the LMDM."""
        window = job.audio
        start = int(round((window.center_s - window.before_s) * A.SAMPLE_RATE))
        stream.audio.add(start, window.pcm)
        if job.expression != stream.expression:  # a new emotion enters from this frame on
            stream.motion.set_emotion(emotion_weights(job.expression), from_frame=self._frame_of(job))
            stream.expression = job.expression
        for w in A.windows_due(stream.next_window, stream.audio.available_until()):
            stream.motion.push_features(A.features_from_encoding(self._hubert(stream.audio.window(w))))
            stream.next_window = w + 1

    def _sample_due(self, streams: list[_Stream]) -> None:
        """Run every due LMDM window of these streams, the streams batched step by step."""
        assert self._models is not None and self._plan is not None
        while True:
            due = [(s, w) for s in streams if (w := s.motion.pending()) is not None]
            if not due:
                return
            x0 = M.sample(self._denoise, np.stack([w.x_T for _, w in due]), np.stack([w.cond for _, w in due]),
                          np.stack([w.cond_frame for _, w in due]), np.stack([w.zs for _, w in due]), self._plan)
            for (stream, _), pred in zip(due, x0):
                stream.motion.accept(pred)
                stream.lmdm_windows += 1

    def _denoise(self, x: np.ndarray, cond_frame: np.ndarray, cond: np.ndarray, time_cond: np.ndarray) -> np.ndarray:
        assert self._models is not None
        feeds = {"x": x.astype(np.float32), "cond_frame": cond_frame.astype(np.float32),
                 "cond": cond.astype(np.float32), "time_cond": time_cond.astype(np.int64)}
        return self._models.run_rows("lmdm", feeds)[1]  # x_start

    @staticmethod
    def _frame_of(job: FrameJob) -> int:
        return int(round(job.time_s * MOTION_FPS))

    # -- frames ----------------------------------------------------------------------------
    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        assert self._models is not None
        streams: list[_Stream | None] = []
        for job in jobs:
            stream = self._stream(job)
            if stream is not None:
                self._feed(stream, job)
            streams.append(stream)
        self._sample_due(list({id(s): s for s in streams if s is not None}.values()))
        drawn = [(i, job, stream) for i, (job, stream) in enumerate(zip(jobs, streams)) if stream is not None]
        frames = [job.base_frame for job in jobs]
        if not drawn:
            return frames
        kp_s, kp_d = [], []
        for _, job, stream in drawn:
            vector = self._vector(stream, self._frame_of(job))
            x_s, x_d = stream.stitch.driving(vector, self._frame_of(job), d0=stream.motion.d0)
            kp_s.append(x_s)
            kp_d.append(x_d)
        kp_s_arr, kp_d_arr = np.stack(kp_s).astype(np.float32), np.stack(kp_d).astype(np.float32)
        models = self._models
        if drawn[0][2].stitch.flag_stitching:
            kp_d_arr = models.run_rows("stitch_network", {"kp_source": kp_s_arr, "kp_driving": kp_d_arr})[0]
        warped = models.run_each("warp_network", [
            {"feature_3d": stream.source.features, "kp_source": kp_s_arr[j: j + 1], "kp_driving": kp_d_arr[j: j + 1]}
            for j, (_, _, stream) in enumerate(drawn)])
        renders = models.run_each("decoder", [{"feature": out[0]} for out in warped])  # (1, 3, 512, 512) in [0, 1]
        for (i, job, stream), (render,) in zip(drawn, renders):
            render = render[0]
            # a portrait's base frame is its picture; a camera stream animates its first face
            frames[i] = stream.source.putback.paste(stream.source.image, render.transpose(1, 2, 0))
        return frames

    def _vector(self, stream: _Stream, frame: int) -> np.ndarray:
        """Frame ``frame``'s motion; before the first emitted frame, or when its audio came too
        late for the LMDM, the last one shown (the source's own pose at the very start)."""
        vector = stream.motion.motion(frame)
        stream.motion.release_before(frame)  # another rate than 25 fps may show a frame twice
        if vector is None:
            stream.late_frames += frame >= 0 and stream.lmdm_windows > 1
            vector = stream.last_vector if stream.last_vector is not None else stream.motion.d0
            if vector is None:
                vector = info_to_motion(stream.source.info)
        stream.last_vector = vector
        return vector

    def close_stream(self, stream_id: str) -> None:
        self._closed.add(stream_id)
        self._streams.pop(stream_id, None)  # its audio, LMDM state and RNGs go with it

    def stream_stats(self, stream_id: str) -> dict[str, Any]:
        stream = self._streams.get(stream_id)
        if stream is None:
            return {}
        return {"lmdm_windows": stream.lmdm_windows, "hubert_windows": stream.next_window,
                "late_frames": int(stream.late_frames), "motion_frames_buffered": stream.motion.buffered()["emitted"]}
