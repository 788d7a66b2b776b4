"""Real talking clips for the audio-to-mouth model: the mouth track FaceMesh measures on each
frame, with the clip's own audio as input.

Two sets, both read in place and never copied into the repository:

* ``../shared/testdata/video`` (:func:`real_clips`, 9 clips with audio; each its own speaker);
* ``../shared/corpus`` (:func:`corpus_clips`, 189 clips, 33 speakers, a ``speaker`` id per clip in
  its MANIFEST.json).

:func:`track` extracts a clip's mouth track once (inner-lip opening as DESIGN.md defines it, mouth
width = corners 61-291 over the eye distance 33-263, frame times from the video's pts) and caches it
under ``~/.cache/lipsync-stream/mouth-tracks/`` keyed by the file's content hash and
:data:`TRACK_VERSION`. :func:`live_audio` gives the audio the server would see: decoded to 48 kHz
mono, round-tripped through Opus (libopus, 32 kbit/s, 20 ms frames, as a browser sends it; the
codec's 312-sample pre-skip removed so the timing is the source's), resampled to 16 kHz with
PyAV's resampler as ``stream_server.audio_in`` does; cached beside the tracks.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines import features

SR = features.SAMPLE_RATE

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
VIDEO_DIR = SHARED / "testdata" / "video"
CORPUS_DIR = SHARED / "corpus"
CACHE_DIR = Path(os.environ.get("LIPSYNC_CACHE", Path.home() / ".cache" / "lipsync-stream")) / "mouth-tracks"
TRACK_VERSION = "facemesh-0.10.21-tracking-v1"  # change when the extraction changes: old caches are ignored
AUDIO_VERSION = "opus48k-32kbps-20ms-preskip312-av16k-v1"
OPUS_RATE = 48000
OPUS_FRAME = 960  # 20 ms
OPUS_PRESKIP = 312  # libopus's encoder delay at 48 kHz (samples), removed after decoding
OPUS_BITRATE = 32000


@dataclass
class Clip:
    """A real talking clip: its audio, and the FaceMesh mouth track per video frame."""

    name: str
    pcm: np.ndarray
    times: np.ndarray  # video frame times, s
    opening: np.ndarray  # engines.face.mouth_opening per frame
    width: np.ndarray  # mouth-corner distance / eye distance per frame
    speaker: str = ""  # speaker id (corpus MANIFEST ``speaker``; a test clip is its own speaker)
    source: str = ""  # GRID, LRS2, HDTF, Vox, CREMA-D, MEAD-style, news, other, testdata
    path: Path | None = field(default=None, compare=False)


def real_clips(video_dir: Path = VIDEO_DIR, cache: Path | None = None, log=print) -> list[Clip]:
    """Mouth tracks of every clip with audio in ``video_dir`` (cached as .npz in ``cache``, if given)."""
    from engines import media_io

    paths = sorted(p for p in video_dir.glob("*.mp4"))
    if not paths:
        raise SystemExit(f"no clips in {video_dir}")
    clips = []
    for path in paths:
        cached = cache / f"{path.stem}.npz" if cache else None
        if cached is not None and cached.exists():
            d = np.load(cached)
            clips.append(Clip(path.stem, d["pcm"], d["times"], d["opening"], d["width"]))
            continue
        try:
            pcm = media_io.load_audio(path, SR)
        except ValueError:
            log(f"  {path.name}: no audio, skipped")
            continue
        track = extract_track(path)
        clip = Clip(path.stem, pcm, track["times"], track["opening"], track["width"])
        if cached is not None:
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(cached, pcm=clip.pcm, times=clip.times, opening=clip.opening, width=clip.width)
        log(f"  {path.name}: {len(clip.times)} frames, {np.isnan(clip.opening).sum()} without a face")
        clips.append(clip)
    return clips


def clip_targets(clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    """(targets, mask) per video frame: open = opening / 0.35; width centred on the clip's median."""
    from engines.mouth import OPENING_AT_FULL

    open_ = np.clip(clip.opening / OPENING_AT_FULL, 0, 1)
    width = np.clip((clip.width - np.nanmedian(clip.width)) * 8.0, -1, 1)
    targets = np.stack([open_, width, np.zeros_like(open_)], 1).astype(np.float32)
    mask = np.stack([np.isfinite(open_), np.isfinite(width) * 0.3, np.zeros_like(open_)], 1).astype(np.float32)
    return np.nan_to_num(targets), mask


def content_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:20]


def extract_track(path: Path) -> dict[str, np.ndarray]:
    """FaceMesh (tracking) per video frame: times (pts, s), opening (DESIGN.md's, by the measure's
    own ``mouth_track``), width; NaN without a face."""
    from engines.face import MOUTH_CORNERS, face_scale
    from engines.lipsync_measures import mouth_track

    opening, landmarks, times = mouth_track(path)
    a, b = MOUTH_CORNERS
    width = [np.nan if lm is None else float(np.linalg.norm(lm[a, :2] - lm[b, :2])) / max(face_scale(lm), 1e-6)
             for lm in landmarks]
    return {"times": times, "opening": opening, "width": np.array(width, np.float64)}


def opus_round_trip(pcm48: np.ndarray, bitrate: int = OPUS_BITRATE) -> np.ndarray:
    """48 kHz mono float audio through libopus (encode at ``bitrate``, 20 ms frames, decode), same length
    and timing (the encoder's pre-skip removed)."""
    import fractions

    import av

    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = OPUS_RATE, "mono", "s16", bitrate
    enc.time_base = fractions.Fraction(1, OPUS_RATE)
    enc.open()
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate, dec.layout = OPUS_RATE, "mono"
    s16 = np.clip(np.round(np.asarray(pcm48, np.float64) * 32767), -32768, 32767).astype(np.int16)
    total = len(s16) + OPUS_PRESKIP
    s16 = np.concatenate([s16, np.zeros((-total) % OPUS_FRAME + OPUS_FRAME, np.int16)])
    packets = []
    for i in range(0, len(s16), OPUS_FRAME):
        frame = av.AudioFrame.from_ndarray(s16[None, i:i + OPUS_FRAME], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = OPUS_RATE, i, enc.time_base
        packets += enc.encode(frame)
    packets += enc.encode(None)
    out = [f.to_ndarray().reshape(-1) for p in packets for f in dec.decode(p)]
    y = np.concatenate(out).astype(np.float32) / 32768.0
    y = y[OPUS_PRESKIP:OPUS_PRESKIP + len(pcm48)]
    return np.concatenate([y, np.zeros(len(pcm48) - len(y), np.float32)]) if len(y) < len(pcm48) else y


def to_16k(pcm48: np.ndarray) -> np.ndarray:
    """48 kHz mono float -> 16 kHz with PyAV's resampler (the server's ``AudioIn`` path)."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
    frame = av.AudioFrame.from_ndarray(np.asarray(pcm48, np.float32)[None], format="flt", layout="mono")
    frame.sample_rate = OPUS_RATE
    out = [o.to_ndarray().reshape(-1) for o in resampler.resample(frame)]
    out += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
    y = np.concatenate(out) if out else np.zeros(0, np.float32)
    return y[: len(pcm48) // 3].astype(np.float32)


def live_audio(path: Path) -> np.ndarray:
    """A clip's audio as the server sees it: 48 kHz mono, Opus round trip, 16 kHz."""
    from engines import media_io

    return to_16k(opus_round_trip(media_io.load_audio(path, OPUS_RATE)))


def track(path: Path, cache: Path | None = CACHE_DIR, with_audio: bool = True) -> dict[str, np.ndarray] | None:
    """Cached mouth track (times, opening, width) and live-path 16 kHz audio (pcm) of one clip; None
    without audio."""
    path = Path(path)
    key = content_hash(path)
    tfile = cache / f"{key}.{TRACK_VERSION}.npz" if cache else None
    afile = cache / f"{key}.{AUDIO_VERSION}.npy" if cache else None
    if tfile is not None and tfile.exists():
        d = dict(np.load(tfile))
    else:
        d = extract_track(path)
        if tfile is not None:
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(tfile.with_suffix(".tmp.npz"), **d)
            os.replace(tfile.with_suffix(".tmp.npz"), tfile)
    if with_audio:
        if afile is not None and afile.exists():
            d["pcm"] = np.load(afile)
        else:
            try:
                d["pcm"] = live_audio(path)
            except ValueError:
                return None
            if afile is not None:
                np.save(afile.with_suffix(".tmp.npy"), d["pcm"])
                os.replace(afile.with_suffix(".tmp.npy"), afile)
    return d


def source_of(speaker: str) -> str:
    """The source group of a speaker id (for per-source figures)."""
    for prefix, source in (("GRID", "GRID"), ("LRS2", "LRS2"), ("HDTF", "HDTF"), ("PCAVS", "Vox"),
                           ("pcavs_vox2", "Vox"), ("CREMA-D", "CREMA-D"), ("megactor", "MEAD-style"),
                           ("CNN", "news"), ("Macron", "news")):
        if speaker.startswith(prefix):
            return source
    return "other"


def corpus_speakers(corpus: Path = CORPUS_DIR) -> list[tuple[Path, str]]:
    """(clip path, speaker id) of every corpus clip, in MANIFEST order."""
    manifest = json.loads((corpus / "MANIFEST.json").read_text())
    return [(corpus / entry["file"], entry["speaker"]) for entry in manifest]


def testdata_speaker(path: Path) -> str:
    """The speaker id of a test clip: each is its own speaker."""
    return f"testdata_{Path(path).stem}"


def corpus_clips(corpus: Path = CORPUS_DIR, cache: Path | None = CACHE_DIR, log=print) -> list[Clip]:
    """Every corpus clip with audio and its cached mouth track, with speaker and source."""
    clips = []
    for path, speaker in corpus_speakers(corpus):
        d = track(path, cache)
        if d is None:
            log(f"  {path.name}: no audio, skipped")
            continue
        clips.append(Clip(path.stem, d["pcm"], d["times"], d["opening"], d["width"],
                          speaker=speaker, source=source_of(speaker), path=path))
    return clips


def testdata_clips(video_dir: Path = VIDEO_DIR, cache: Path | None = CACHE_DIR, log=print) -> list[Clip]:
    """The test clips with audio through the live path (each clip its own speaker, source ``testdata``)."""
    clips = []
    for path in sorted(video_dir.glob("*.mp4")):
        d = track(path, cache)
        if d is None:
            continue
        clips.append(Clip(path.stem, d["pcm"], d["times"], d["opening"], d["width"],
                          speaker=testdata_speaker(path), source="testdata", path=path))
    return clips


def speaker_folds(clips: list[Clip], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` groups of speaker ids (every speaker in exactly one); speakers are dealt round-robin in a
    seeded random order, largest (by frames) first so one big speaker (GRID_s1) fills its own fold."""
    frames: dict[str, int] = {}
    for c in clips:
        frames[c.speaker] = frames.get(c.speaker, 0) + len(c.times)
    rng = np.random.default_rng(seed)
    order = sorted(frames, key=lambda s: (-frames[s], s))
    big, rest = order[:1], order[1:]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    folds: list[list[str]] = [list(big)] + [[] for _ in range(k - 1)]
    for i, s in enumerate(rest):
        folds[1 + i % (k - 1)].append(s)
    return folds
