"""Milliseconds per frame of a backend at 512x512 on ONE core: portrait mode and camera mode.

Portrait: the bundled astronaut, prepared once, driven by real speech. Camera: a real talking
clip's frames (scaled to 512x512) as the live camera, so face tracking is included in each frame.
The process is pinned to one core and OpenCV / BLAS use one thread.

    python -m benchmarks.backend_speed [--backend mesh] [--frames 250]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"  # before numpy loads

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.results_io import ROOT, save  # noqa: E402
from engines.base import FrameJob  # noqa: E402
from engines.images import fit_cover, read_image  # noqa: E402
from engines.media_io import load_audio, video_frames  # noqa: E402
from engines.registry import BackendRegistry  # noqa: E402
from stream_server.audio_in import AudioIn  # noqa: E402
from stream_server.avatars import BUNDLED  # noqa: E402
from stream_server.render import audio_frames  # noqa: E402

TESTDATA = ROOT.parent / "shared" / "testdata"
CLIP = TESTDATA / "video" / "vretalking_face_2.mp4"
SIZE = 512


def timings(backend_name: str, frames: int) -> dict[str, dict[str, float]]:
    backend = BackendRegistry(BUNDLED["astronaut"]).get(backend_name)
    audio = AudioIn(capacity_s=60.0)
    for n, frame in enumerate(audio_frames(load_audio(CLIP, 48000))):
        audio.push(frame, arrival=n * 0.02)
    camera = [fit_cover(rgb, SIZE, SIZE) for _, rgb in video_frames(CLIP)]
    portrait = fit_cover(read_image(BUNDLED["astronaut"]), SIZE, SIZE)
    results = {}
    for mode, avatar in (("portrait", backend.prepare_avatar("astronaut", portrait)), ("camera", backend.prepare_avatar("camera", None))):
        elapsed = []
        for k in range(frames):
            time_s = (k % len(camera)) / 25.0
            base = portrait if mode == "portrait" else camera[k % len(camera)]
            job = FrameJob(mode, k, time_s, audio.window(time_s, backend.context_s, backend.lookahead_s), base, avatar)
            started = time.perf_counter()
            backend.generate([job])
            elapsed.append((time.perf_counter() - started) * 1000.0)
        backend.close_stream(mode)
        steady = np.asarray(elapsed[5:])  # the first frames warm caches and the tracker
        results[mode] = {
            "p50_ms": round(float(np.percentile(steady, 50)), 2),
            "p95_ms": round(float(np.percentile(steady, 95)), 2),
            "mean_ms": round(float(steady.mean()), 2),
            "fps_one_core": round(1000.0 / float(steady.mean()), 1),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="mesh")
    parser.add_argument("--frames", type=int, default=250)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)
    result = {
        "benchmark": "backend_speed",
        "backend": args.backend,
        "size": f"{SIZE}x{SIZE}",
        "cores": 1,
        **timings(args.backend, args.frames),
    }
    out = save(f"speed_{args.backend}", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
