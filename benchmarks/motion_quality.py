"""Head motion, brows and blinks of `mesh` output beside the real speakers (issue 20).

Each test clip with audio (``../shared/testdata/video``: speakers the motion model never saw, it is
fitted on ``../shared/corpus`` only) drives the bundled portrait through ``render`` (`mesh`, whole
picture, default motion); FaceMesh then measures the output exactly as it measured the real
speaker (``engines/head_motion/tracks.py`` and ``measures.py``): head rotation speed, how motion
energy follows speech energy, blinks, the brows after stressed syllables. Identity: SSIM of the
face above the nose against the portrait turned to the head pose FaceMesh reads on that output
frame (the portrait moved rigidly by the `mesh` renderer, mouth at rest, no brows or blink), after
an affine fit of the two pictures' intensities: a turned head is not counted as a changed face;
changed features, smears and seams are. ``identity_ssim_affine`` is the same without the pose
step (an affine map cannot undo a 3-D turn, so a few degrees of yaw cost it 0.05-0.2).
Contact sheets (real frames above, output below, both yaw tracks) go to benchmarks/results/plots.

    python -m benchmarks.motion_quality [--motion natural] [--clips N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.quality import clips_with_audio, contact_sheet
from benchmarks.results_io import RESULTS, save
from engines.audio2mouth.clips import testdata_speaker
from engines.gaussian.rig import RIGID, umeyama
from engines.head_motion.measures import clip_measures
from engines.head_motion.model import HeadPose
from engines.head_motion.tracks import euler_degrees, landmark_track, measure, motion_track, normalised
from engines.head_motion.train import live_pcm, summarise
from engines.images import read_image
from engines.lipsync_measures import identity_ssim, upper_face_box
from engines.media_io import video_frames
from engines.mesh.prepare import PreparedFace, prepare_face
from engines.mesh.render import render_mouth
from engines.mouth import MouthParams
from stream_server.avatars import BUNDLED
from stream_server.render import render

SSIM_TARGET = 0.95


def aligned_to(frame: np.ndarray, base: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``frame`` warped onto ``base`` by the affine map that best aligns the face above the nose
    (``cv2.findTransformECC`` on intensities: landmarks jitter by a pixel, which SSIM would count)."""
    x0, y0, x1, y1 = box
    grey = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) for image in (base, frame)]
    mask = np.zeros(base.shape[:2], np.uint8)
    mask[y0:y1, x0:x1] = 255
    warp = np.eye(2, 3, dtype=np.float32)
    try:
        _, warp = cv2.findTransformECC(grey[0], grey[1], warp, cv2.MOTION_AFFINE,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-5), mask, 5)
    except cv2.error:
        return frame
    return cv2.warpAffine(frame, warp, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def posed_reference(face: PreparedFace, base_landmarks: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The portrait moved rigidly to the head pose of ``landmarks`` (relative to ``base_landmarks``)."""
    a, b = normalised(base_landmarks), normalised(landmarks)
    _, rotation, _ = umeyama(a[list(RIGID)], b[list(RIGID)], with_scale=False)
    yaw, pitch, roll = euler_degrees(rotation)
    shift = (landmarks[list(RIGID), :2].mean(axis=0) - base_landmarks[list(RIGID), :2].mean(axis=0)) / face.scale
    pose = HeadPose(yaw, pitch, roll, float(shift[0]), float(shift[1]))
    return render_mouth(face, MouthParams(face.rest_open, 0.0, 0.0), pose)


def measure_clip(clip: Path, motion: str, work: Path, sheets: Path, base: np.ndarray, base_landmarks: np.ndarray,
                 face: PreparedFace) -> dict[str, Any]:
    output = work / f"{clip.stem}.mp4"
    render("astronaut", clip, output, "mesh", progress=False, motion=motion)
    pcm = live_pcm(clip)
    real = motion_track(clip)
    landmarks, times = landmark_track(output)
    out = {"times": times, **measure(landmarks)}
    frames = [rgb for _, rgb in video_frames(output)]
    found = [(f, lm) for f, lm in zip(frames, landmarks) if lm is not None][::2]
    box = upper_face_box(base_landmarks, base.shape)
    posed, affine = [], []
    for frame, lm in found:
        reference = posed_reference(face, base_landmarks, lm)
        posed.append(identity_ssim([aligned_to(frame, reference, box)], reference, base_landmarks))
        affine.append(identity_ssim([aligned_to(frame, base, box)], base, base_landmarks))
    real_frames = [rgb for _, rgb in video_frames(clip)]
    picks = np.linspace(0, min(len(frames), len(real_frames)) - 1, 8).astype(int)
    strip = np.concatenate([cv2.resize(real_frames[i], (160, 160), interpolation=cv2.INTER_AREA) for i in picks], axis=1)
    yaw_out, yaw_real = np.interp(real["times"], times, np.nan_to_num(out["yaw"])), np.nan_to_num(real["yaw"])
    floor = min(yaw_out.min(), yaw_real.min())  # the sheet plots from 0 up
    sheet = contact_sheet([frames[min(i, len(frames) - 1)] for i in picks], yaw_out - floor, yaw_real - floor,
                          f"{clip.stem}: real (top), output (middle); head yaw")
    # contact_sheet picks 8 of the frames it is given: given 8, it shows them all, under the real ones
    cv2.imwrite(str(sheets / f"motion_{clip.stem}.png"), np.concatenate([strip, sheet], axis=0)[:, :, ::-1])
    return {"speaker": testdata_speaker(clip), "clip": clip.name, "real": clip_measures(real, pcm),
            "output": clip_measures(out, pcm), "identity_ssim_aligned": float(np.mean(posed)) if posed else None,
            "identity_ssim_affine": float(np.mean(affine)) if affine else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--motion", default="natural", choices=("still", "natural", "lively"))
    parser.add_argument("--clips", type=int, default=0, help="only the first N clips (0: all)")
    args = parser.parse_args()
    from engines.face import FaceLandmarker

    base = read_image(BUNDLED["astronaut"])
    with FaceLandmarker() as landmarker:
        base_landmarks = landmarker.faces(base)[0].landmarks
    face = prepare_face(base, base_landmarks)
    clips = clips_with_audio()[: args.clips or None]
    sheets = RESULTS / "plots"
    sheets.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for n, clip in enumerate(clips):
            rows.append(measure_clip(clip, args.motion, Path(work), sheets, base, base_landmarks, face))
            print(f"  {n + 1}/{len(clips)} {clip.name}: {json.dumps(rows[-1]['output'])}", flush=True)
    real, output = summarise(rows, "real"), summarise(rows, "output")
    ssims = [r["identity_ssim_aligned"] for r in rows if r["identity_ssim_aligned"] is not None]
    affines = [r["identity_ssim_affine"] for r in rows if r["identity_ssim_affine"] is not None]
    speed_ratio = output["rotation_speed_median"] / real["rotation_speed_median"] if real["rotation_speed_median"] else None
    coupling_gap = (output["energy_coupling"] - real["energy_coupling"]
                    if output["energy_coupling"] is not None and real["energy_coupling"] is not None else None)
    result = {
        "benchmark": "motion_quality", "backend": "mesh", "avatar": "astronaut", "motion": args.motion,
        "clips": len(rows), "speakers": len({r["speaker"] for r in rows}),
        "real": real, "output": output,
        "rotation_speed_ratio": speed_ratio, "energy_coupling_gap": coupling_gap,
        "identity_ssim_aligned": float(np.mean(ssims)) if ssims else None,
        "identity_ssim_affine": float(np.mean(affines)) if affines else None,
        "targets": {"rotation_speed_ratio": [0.6, 1.6], "energy_coupling_gap_abs": 0.1, "blink_interval_s": [2, 8],
                    "identity_ssim_aligned": SSIM_TARGET},
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    print(f"wrote {save(f'motion_quality_mesh_{args.motion}', result)}")


if __name__ == "__main__":
    main()
