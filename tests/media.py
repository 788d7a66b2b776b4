"""Test media from ../shared/testdata (never copied into the repository)."""

from __future__ import annotations

from pathlib import Path

from engines.media_io import load_audio, video_fps, video_frames  # noqa: F401  (re-exported)

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"


def shared_media(*parts: str) -> Path:
    """Path of a test media file; fails (never skips) with a clear message when it is missing."""
    path = TESTDATA.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"test media {path} is missing: the suite reads real clips from ../shared/testdata "
            "beside the checkout (see its README and MANIFEST.json)"
        )
    return path


CORPUS_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "video"


def corpus_clip(name: str) -> Path:
    """A real clip of ../shared/corpus, read in place."""
    path = CORPUS_VIDEO / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: these tests read real clips from ../shared/corpus "
                                "beside the checkout (see its README and MANIFEST.json)")
    return path
