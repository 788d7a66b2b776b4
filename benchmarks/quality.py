"""Lip-sync quality on real talking clips (DESIGN.md's measures).

For each clip with audio in ../shared/testdata/video/: its first frame becomes the portrait,
driven by the clip's own audio through ``render`` (the live pipeline on a simulated clock, every
frame generated); then the inner-lip opening of the output is compared with the real speaker's,
and the face above the nose with the portrait (identity kept). Writes a contact sheet PNG per clip
(output frames, and the opening curves: output in orange, real in blue) and a JSON summary.

    python -m benchmarks.quality [--backend mesh] [--clips NAME ...] [--no-headaudio]
    python -m benchmarks.quality --held-out    # mesh: each clip driven by an audio-to-mouth model whose
                                               # real-clip blend was fitted without that clip (honest)
    python -m benchmarks.quality --held-out-speakers 5 --fold-weights DIR
                                               # mesh: each clip driven by the shipped recipe trained
                                               # without the clip's speaker (5 speaker folds; DIR: the
                                               # fold models saved by python -m engines.audio2mouth.train
                                               # --folds 5 --fold-dir DIR)
    python -m benchmarks.quality ... --corpus [N]  # also render clips of ../shared/corpus (at most N per speaker,
                                               # default 3; every one of its 33 speakers): means over speakers
                                               # and per source (GRID, LRS2, HDTF, Vox, ...); the shipped
                                               # model never trained on them, so plain and --held-out are
                                               # held out there too

The committed ``mesh`` model's ``open`` blend (engines/audio2mouth/blend.py) is fitted on these same
clips, so the plain figure flatters it; ``--held-out`` refits that blend on the other clips for each
clip (every choice included) and renders through ``LIPSYNC_MOUTH_WEIGHTS``.

Beside the rendered output, two predictor columns (no face rendered; each per-frame track is scored
against the same real opening with the same ``agreement``): ``loudness`` (frame loudness: the log
energy of the server's mel frames in 40 ms around each frame, as ``engines.audio2mouth.evaluate``)
and ``headaudio`` (the npm peer ``@met4citizen/headaudio`` run in node, its Oculus visemes mapped to an
opening by ``benchmarks.headaudio.OPENING``; needs node and npm, installed on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Iterator

import av
import cv2
import numpy as np

from benchmarks.results_io import RESULTS, ROOT, save
from engines.face import FaceLandmarker
from engines.audio2mouth.clips import track
from engines.lipsync_measures import agreement, at_times, identity_ssim, mouth_track, smooth3
from engines.media_io import load_audio, video_fps, video_frames
from stream_server.render import render

VIDEOS = ROOT.parent / "shared" / "testdata" / "video"
# An output whose opening varies less than this has a still mouth: its "correlation" would only
# be coding noise, so it scores 0.
STILL_STD = 0.002
HEADAUDIO_COLUMN = True  # the peer column (main() turns it off with --no-headaudio)


def clips_with_audio() -> list[Path]:
    found = []
    for path in sorted(VIDEOS.glob("*.mp4")):
        with av.open(str(path)) as container:
            if container.streams.audio:
                found.append(path)
    return found


@dataclass(frozen=True)
class Speaking:
    """A clip to render, with whose voice and face it is (a test clip is its own speaker)."""

    path: Path
    speaker: str
    source: str


def clip_set(corpus_per_speaker: int = 0) -> list[Speaking]:
    """The test clips with audio, plus at most ``corpus_per_speaker`` clips of each corpus speaker (spread
    over that speaker's clips in MANIFEST order)."""
    from engines.audio2mouth.clips import corpus_speakers, source_of, testdata_speaker

    out = [Speaking(p, testdata_speaker(p), "testdata") for p in clips_with_audio()]
    if corpus_per_speaker:
        by_speaker: dict[str, list[Path]] = {}
        for path, speaker in corpus_speakers():
            by_speaker.setdefault(speaker, []).append(path)
        for speaker, paths in by_speaker.items():
            picks = np.unique(np.linspace(0, len(paths) - 1, min(corpus_per_speaker, len(paths))).round().astype(int))
            out += [Speaking(paths[i], speaker, source_of(speaker)) for i in picks]
    return out


def contact_sheet(frames: list[np.ndarray], output: np.ndarray, real: np.ndarray, title: str) -> np.ndarray:
    """Eight output frames in a strip above the two opening curves."""
    picks = np.linspace(0, len(frames) - 1, 8).astype(int)
    tile = 160
    strip = np.concatenate([cv2.resize(frames[i], (tile, tile), interpolation=cv2.INTER_AREA) for i in picks], axis=1)
    width, height = strip.shape[1], 200
    plot = np.full((height, width, 3), 255, np.uint8)
    top = np.nanmax([np.nanmax(output), np.nanmax(real), 0.05])
    for curve, colour in ((smooth3(real), (40, 90, 200)), (smooth3(output), (230, 120, 20))):
        xs = np.linspace(10, width - 10, len(curve))
        ys = height - 20 - curve / top * (height - 50)
        points = np.stack([xs, ys], axis=1).astype(np.int32)
        cv2.polylines(plot, [points], False, colour, 2, cv2.LINE_AA)
    for i in picks:  # where the strip's frames are on the curves
        x = int(10 + i / max(1, len(frames) - 1) * (width - 20))
        cv2.line(plot, (x, height - 18), (x, height - 8), (0, 0, 0), 1)
    cv2.putText(plot, title, (10, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(plot, "output", (width - 180, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (230, 120, 20), 1, cv2.LINE_AA)
    cv2.putText(plot, "real", (width - 90, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (40, 90, 200), 1, cv2.LINE_AA)
    return np.concatenate([strip, plot], axis=0)


def predictor_columns(clip: Path, times: np.ndarray, real: np.ndarray, headaudio: bool) -> dict[str, Any]:
    """r at lag 0, best lag and r there of the audio-only predictors against the real opening."""
    from engines import features
    from engines.audio2mouth.scores import mel_loudness

    tracks = {"loudness": mel_loudness(load_audio(clip, features.SAMPLE_RATE), times)}
    if headaudio:
        from benchmarks.headaudio import headaudio_track

        peer = headaudio_track(clip, times)
        tracks["headaudio"], tracks["headaudio_labels"] = peer["values"], peer["labels"]
    row: dict[str, Any] = {}
    for name, track in tracks.items():
        r0, lag, r_best = agreement(track, real)
        row.update({f"{name}_r_lag0": round(r0, 3), f"{name}_best_lag": lag, f"{name}_r_best": round(r_best, 3)})
    return row


def headaudio_info() -> dict[str, Any]:
    """What the headaudio column ran: the package, its version, and the viseme-to-opening table."""
    if not HEADAUDIO_COLUMN:
        return {}
    from benchmarks.headaudio import OPENING, installed_version

    return {"headaudio": {"package": "@met4citizen/headaudio", "version": installed_version(), "opening": OPENING}}


def measure_clip(clip: Path, backend: str, work: Path, sheets: Path) -> dict[str, Any]:
    first = next(video_frames(clip))[1]
    portrait = work / f"{clip.stem}.png"
    cv2.imwrite(str(portrait), cv2.cvtColor(first, cv2.COLOR_RGB2BGR))
    fps = video_fps(clip)
    output = work / f"{clip.stem}_{backend}.mp4"
    started = time.perf_counter()
    result = render(str(portrait), clip, output, backend, fps=fps, progress=False)
    render_s = time.perf_counter() - started
    real_track = track(clip, with_audio=False)  # the measure's mouth_track of the real clip, cached
    real, real_times = real_track["opening"], real_track["times"]
    produced, _, produced_times = mouth_track(output)
    # compare at the output's frame times: some clips are stored at a variable frame rate (and
    # may start late), and frame k of one is then not frame k of the other
    real = at_times(real, real_times, produced_times)
    still = float(np.nanstd(produced)) < STILL_STD
    r0, lag, r_best = (0.0, 0, 0.0) if still else agreement(produced, real)
    frames = [frame for _, frame in video_frames(output)]
    with FaceLandmarker() as landmarker:
        faces = landmarker.faces(first)
    kept = identity_ssim(frames, first, faces[0].landmarks) if faces else float("nan")
    sheet = contact_sheet(frames, produced, real, f"{clip.stem}  r={r0:.2f}  lag={lag:+d}  ssim={kept:.3f}")
    cv2.imwrite(str(sheets / f"{clip.stem}.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return {
        "clip": clip.name,
        "frames": result.frames,
        "fps": round(fps, 3),
        "r_lag0": round(r0, 3),
        "best_lag": lag,
        "r_best": round(r_best, 3),
        "still_mouth": still,
        "identity_ssim": round(kept, 4),
        "face_found_output": float(np.mean(~np.isnan(produced))),
        "render_s": round(render_s, 1),
        **predictor_columns(clip, produced_times, real, HEADAUDIO_COLUMN),
    }


@contextmanager
def serving_weights(path: Path) -> Iterator[None]:
    """``mesh`` serves the audio-to-mouth weights in ``path`` while inside (``LIPSYNC_MOUTH_WEIGHTS``)."""
    from engines.mesh.backend import WEIGHTS_ENV

    previous = os.environ.get(WEIGHTS_ENV)
    os.environ[WEIGHTS_ENV] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(WEIGHTS_ENV, None)
        else:
            os.environ[WEIGHTS_ENV] = previous


class HeldOutWeights:
    """Audio-to-mouth weights whose real-clip blend never saw a given clip, served to ``mesh``."""

    def __init__(self, work: Path) -> None:
        from engines.audio2mouth.clips import real_clips
        from engines.mesh.backend import mouth_model

        self.work = work
        self.net = mouth_model()  # the committed weights, or LIPSYNC_MOUTH_WEIGHTS's
        if not self.net.config.ridge_frames:
            raise SystemExit("--held-out refits the ridge blend of a synthetic-speech model (--recipe synthetic); the "
                             "shipped model has none and trained on these clips: use --held-out-speakers. (The "
                             "previous model: git show bafbe11:engines/audio2mouth/weights.npz > old.npz, then "
                             "LIPSYNC_MOUTH_WEIGHTS=old.npz with --held-out.)")
        self.clips = real_clips(VIDEOS, cache=work / "tracks", log=lambda s: None)

    @contextmanager
    def without(self, clip: Path) -> Iterator[None]:
        from engines.audio2mouth.blend import fit_blend

        if clip.parent.resolve() != VIDEOS.resolve():  # a corpus clip: the shipped blend never saw it
            yield
            return
        others = [c for c in self.clips if c.name != clip.stem]
        if len(others) == len(self.clips):
            raise SystemExit(f"{clip.name} has no mouth track to leave out")
        model, choice = fit_blend(self.net, others)
        path = self.work / f"without_{clip.stem}.npz"
        model.save(path)
        print(f"  {clip.stem}: blend fitted on the other {len(others)} clips (ridge {choice['ridge_shape']}, "
              f"alpha {choice['alpha']:g}, network weight {choice['net_weight']})", flush=True)
        with serving_weights(path):
            yield


class SpeakerHeldOutWeights:
    """Audio-to-mouth weights trained (``python -m engines.audio2mouth.train --folds K --fold-dir DIR``)
    without the held-out clip's SPEAKER: speakers of ../shared/corpus and of these clips dealt into ``folds``
    folds (``clips.speaker_folds``), one model per fold, served to ``mesh``."""

    def __init__(self, folds: int, fold_weights: Path | None) -> None:
        from engines.audio2mouth import clips as clip_sets

        clips = clip_sets.corpus_clips(log=lambda s: None) + clip_sets.testdata_clips(VIDEOS, log=lambda s: None)
        self.folds = clip_sets.speaker_folds(clips, folds)
        if fold_weights is None or not (fold_weights / "folds.json").exists():
            raise SystemExit(f"--held-out-speakers needs the fold models: python -m engines.audio2mouth.train "
                             f"--folds {folds} --fold-dir DIR, then --fold-weights DIR")
        if json.loads((fold_weights / "folds.json").read_text()) != self.folds:
            raise SystemExit(f"{fold_weights}/folds.json holds other folds than these {folds}")
        self.paths = {k: fold_weights / f"fold{k}.npz" for k in range(folds)}
        print(f"  speaker-fold models from {fold_weights}", flush=True)

    def fold_of(self, speaker: str) -> int:
        return next(k for k, f in enumerate(self.folds) if speaker in f)

    def without(self, speaker: str) -> ContextManager[None]:
        return serving_weights(self.paths[self.fold_of(speaker)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="mesh")
    parser.add_argument("--clips", nargs="*", help="clip file names (default: every clip with audio)")
    parser.add_argument("--held-out", action="store_true",
                        help="mesh only: per clip, the audio-to-mouth blend refitted without that clip")
    parser.add_argument("--no-headaudio", action="store_true",
                        help="leave out the headaudio peer column (it needs node and npm)")
    parser.add_argument("--held-out-speakers", type=int, nargs="?", const=5, default=0, metavar="FOLDS",
                        help="mesh only: per clip, the audio-to-mouth model of the speaker fold that left that clip's "
                             "speaker out (FOLDS speaker folds, default 5; needs --fold-weights)")
    parser.add_argument("--fold-weights", type=Path, default=None,
                        help="with --held-out-speakers: the fold models saved by "
                             "python -m engines.audio2mouth.train --folds FOLDS --fold-dir DIR")
    parser.add_argument("--corpus", type=int, nargs="?", const=3, default=0, metavar="N",
                        help="also render corpus clips, at most N per speaker (default 3), and report means over "
                             "speakers and per source")
    args = parser.parse_args()
    global HEADAUDIO_COLUMN
    HEADAUDIO_COLUMN = not args.no_headaudio
    if args.held_out_speakers and args.backend != "mesh":
        raise SystemExit("--held-out-speakers applies to the mesh backend")
    if args.held_out and args.backend != "mesh":
        raise SystemExit("--held-out applies to the mesh backend (its audio-to-mouth blend is fitted on these clips)")
    clips = clip_set(args.corpus)
    if args.clips:
        clips = [c for c in clips if c.path.name in args.clips or c.path.stem in args.clips]
    if not clips:
        raise SystemExit(f"no clips with audio found in {VIDEOS}")
    name = f"quality_{args.backend}" + ("_heldout" if args.held_out else "") + (
        "_speakers" if args.held_out_speakers else "") + ("_corpus" if args.corpus else "")
    sheets = RESULTS / name
    sheets.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        held_out = HeldOutWeights(Path(work)) if args.held_out else None
        by_speaker = SpeakerHeldOutWeights(args.held_out_speakers, args.fold_weights) \
            if args.held_out_speakers else None
        if by_speaker is not None:  # one model per fold: render the clips fold by fold
            clips = sorted(clips, key=lambda c: by_speaker.fold_of(c.speaker))
        for n, clip in enumerate(clips, 1):
            weights = by_speaker.without(clip.speaker) if by_speaker is not None else \
                held_out.without(clip.path) if held_out is not None else nullcontext()
            with weights:
                row = measure_clip(clip.path, args.backend, Path(work), sheets)
            row["speaker"], row["source"] = clip.speaker, clip.source
            if by_speaker is not None:
                row["fold"] = by_speaker.fold_of(clip.speaker)
            rows.append(row)
            print(f"[{n}/{len(clips)}] {row['clip']}: r {row['r_lag0']:+.3f} at lag 0, best lag {row['best_lag']:+d} "
                  f"(r {row['r_best']:+.3f}), identity SSIM {row['identity_ssim']:.3f}; loudness r {row['loudness_r_lag0']:+.3f}"
                  + (f", headaudio r {row['headaudio_r_lag0']:+.3f}" if "headaudio_r_lag0" in row else ""), flush=True)
    summary = summarise(rows)
    if by_speaker is not None:
        summary["speaker_folds"] = by_speaker.folds
    out = save(name, {"benchmark": "quality", "backend": args.backend, "held_out": args.held_out,
                      "held_out_speakers": args.held_out_speakers, "corpus_per_speaker": args.corpus,
                      "summary": summary, "clips": rows, **headaudio_info()})
    print(json.dumps({k: v for k, v in summary.items() if k != "speaker_folds"}, indent=2))
    print(f"wrote {out.relative_to(ROOT)} and contact sheets in {sheets.relative_to(ROOT)}/")


COLUMNS = ("", "loudness_", "headaudio_", "headaudio_labels_")  # the rendered output, then the predictors


def means(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean r at lag 0 over clips and over speakers (each speaker's clips averaged first), and mean best
    lag, of the output and of each predictor column present."""
    from engines.audio2mouth.scores import speaker_mean

    out: dict[str, Any] = {"clips": len(rows), "speakers": len({r["speaker"] for r in rows})}
    for column in COLUMNS:
        if f"{column}r_lag0" not in rows[0]:
            continue
        out[f"{column}mean_r_lag0"] = round(float(np.mean([r[f"{column}r_lag0"] for r in rows])), 3)
        out[f"{column}mean_r_lag0_over_speakers"] = round(speaker_mean(rows, f"{column}r_lag0"), 3)
        out[f"{column}mean_best_lag"] = round(float(np.mean([r[f"{column}best_lag"] for r in rows])), 2)
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The means over every clip, identity SSIM, and (with more than one source) the means per source."""
    summary = means(rows)
    summary["mean_identity_ssim"] = round(float(np.nanmean([r["identity_ssim"] for r in rows])), 4)
    sources = sorted({r["source"] for r in rows})
    if len(sources) > 1:
        summary["by_source"] = {s: means([r for r in rows if r["source"] == s]) for s in sources}
    return summary


if __name__ == "__main__":
    main()
