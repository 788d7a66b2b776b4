"""HeadAudio, a peer audio-to-viseme model, as a predictor column of ``benchmarks.quality``.

The npm package ``@met4citizen/headaudio`` (0.1.0, MIT; MFCC features, Gaussian prototypes with a
Mahalanobis classifier, 15 Oculus visemes, a 14 kB model trained on Kokoro TTS voices) is what avatar
projects use for audio-driven lip-sync in browsers. ``peers/headaudio/run.mjs`` runs its plain-JS
processor and its node's blend-shape animation in node on a clip's audio (48 kHz, what a browser's
AudioContext runs at), and reports per video frame the 15 viseme values an avatar would be given.

Those are turned into one mouth opening with :data:`OPENING` (the jaw/lip opening of each Oculus
viseme's reference pose, 0 closed .. 1 widest) and scored against the real clip's FaceMesh opening
with the same functions as every other column. It is a predictor column, like loudness: no face is
rendered. Benchmark-only: installed with ``npm ci`` into ``peers/headaudio/node_modules`` on first
use (node >= 18 and npm needed), never imported by the product or the tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from engines import media_io

HERE = Path(__file__).resolve().parent / "peers" / "headaudio"
SAMPLE_RATE = 48_000

# Mouth opening of each Oculus viseme, read from the jaw drop and lip gap of the Oculus viseme
# reference poses: closed lips for silence and the bilabials (sil, PP), lower lip on the teeth (FF),
# teeth nearly together (SS, CH, DD, TH, nn: tongue/teeth consonants), mid for kk and RR, the vowels
# by height: aa (open, low) widest, E and O mid, I and U close.
OPENING: dict[str, float] = {
    "sil": 0.0, "PP": 0.0, "FF": 0.15, "TH": 0.3, "DD": 0.3, "kk": 0.4, "CH": 0.3, "SS": 0.2,
    "nn": 0.3, "RR": 0.4, "aa": 1.0, "E": 0.7, "I": 0.5, "O": 0.8, "U": 0.4,
}


def ensure_installed() -> Path:
    """``peers/headaudio/node_modules`` (``npm ci`` on first use); exits with a message if node or npm
    is missing."""
    package = HERE / "node_modules" / "@met4citizen" / "headaudio" / "package.json"
    if package.exists():
        return HERE
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise SystemExit(f"the headaudio column needs {tool} (node >= 18 and npm): install them, or run "
                             f"without it (--no-headaudio)")
    print(f"installing the headaudio peer (npm ci in {HERE})", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)
    return HERE


def installed_version() -> str:
    """The installed package's version (pinned by peers/headaudio/package-lock.json)."""
    package = ensure_installed() / "node_modules" / "@met4citizen" / "headaudio" / "package.json"
    return json.loads(package.read_text())["version"]


def opening_of(weights: np.ndarray, visemes: list[str]) -> np.ndarray:
    """Opening per frame from (frames, 15) viseme weights: the table's openings weighted by the
    weights (a frame with all weights 0 is silence, 0)."""
    table = np.array([OPENING[v] for v in visemes])
    return np.asarray(weights, np.float64) @ table


def headaudio_run(clip: Path, times: np.ndarray) -> dict:
    """HeadAudio's output on a clip's audio at the given frame times (see run.mjs)."""
    folder = ensure_installed()
    pcm = media_io.load_audio(clip, SAMPLE_RATE).astype("<f4")
    with tempfile.TemporaryDirectory() as work:
        pcm_path, times_path = Path(work) / "audio.f32", Path(work) / "times.json"
        pcm.tofile(pcm_path)
        times_path.write_text(json.dumps([float(t) for t in times]))
        done = subprocess.run(["node", str(folder / "run.mjs"), str(pcm_path), str(SAMPLE_RATE), str(times_path)],
                              capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def headaudio_track(clip: Path, times: np.ndarray) -> dict[str, np.ndarray]:
    """Opening per frame time from HeadAudio: ``values`` (its animated blend shapes, what an avatar
    shows) and ``labels`` (its classifier's current viseme per audio block, averaged over the frame)."""
    out = headaudio_run(clip, times)
    return {kind: opening_of(np.array(out[kind]), out["visemes"]) for kind in ("values", "labels")}
