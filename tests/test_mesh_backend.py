"""The mesh backend as users meet it: avatars with no face or several, camera mode, the API and CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web

from engines.base import AudioWindow, AvatarError, FrameJob
from engines.face import FaceLandmarker, mouth_opening
from engines.features import SILENCE
from engines.images import fit_cover, read_image
from engines.lipsync_measures import mouth_track
from engines.mesh.backend import MeshBackend
from stream_server.app import create_app
from stream_server.avatars import BUNDLED
from stream_server.config import Settings
from stream_server.render import render
from tests.media import shared_media, video_frames

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def backend() -> MeshBackend:
    return MeshBackend()


@pytest.fixture
def no_face(tmp_path: Path) -> Path:
    """A real picture with no face in it: a crop of the portrait's background."""
    path = tmp_path / "wall.png"
    astronaut = read_image(BUNDLED["astronaut"])
    cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(astronaut[330:500, 330:500]), cv2.COLOR_RGB2BGR))
    return path


def silent_window(backend: MeshBackend) -> AudioWindow:
    frames = round((backend.context_s + backend.lookahead_s) * 100)
    return AudioWindow(0.0, backend.context_s, backend.lookahead_s, np.zeros(int(frames * 160), np.float32), np.full((frames, 80), SILENCE, np.float32))


def test_an_image_without_a_face_is_refused_clearly(backend: MeshBackend, no_face: Path) -> None:
    with pytest.raises(AvatarError, match="no face was found"):
        backend.prepare_avatar("wall", read_image(no_face))


def test_with_several_faces_the_largest_is_animated_and_the_user_told(backend: MeshBackend) -> None:
    big = fit_cover(read_image(shared_media("image", "liveportrait_s1.jpg")), 360, 360)
    small = fit_cover(read_image(shared_media("image", "liveportrait_s11.jpg")), 280, 280)
    canvas = np.full((360, 660, 3), 128, np.uint8)
    canvas[:, :360], canvas[40:320, 370:650] = big, small
    avatar = backend.prepare_avatar("pair", canvas)
    assert avatar.notice == "2 faces found in pair: animating the largest"
    assert avatar.data["landmarks"][:, 0].max() < 360  # the face prepared is the big one on the left


def test_camera_frames_without_a_face_pass_through_and_are_counted(backend: MeshBackend) -> None:
    camera = backend.prepare_avatar("camera", None)
    window = silent_window(backend)
    frames = [np.full((240, 320, 3), value, np.uint8) for value in (40, 90, 140)]
    jobs = [FrameJob("lost", k, k / 25, window, frame, camera) for k, frame in enumerate(frames)]
    out = backend.generate(jobs)
    assert all(o is f for o, f in zip(out, frames))
    assert backend.stream_stats("lost") == {"face_lost": 3}
    backend.close_stream("lost")


def test_camera_mode_moves_the_mouth_of_a_live_face(backend: MeshBackend) -> None:
    clip = shared_media("video", "vretalking_face_2.mp4")
    frames = [fit_cover(rgb, 384, 384) for _, rgb in list(video_frames(clip))[:10]]
    camera = backend.prepare_avatar("camera", None)
    window = silent_window(backend)  # silence: the mouth must close
    out = backend.generate([FrameJob("cam", k, k / 25, window, f, camera) for k, f in enumerate(frames)])
    assert backend.stream_stats("cam") == {"face_lost": 0}
    with FaceLandmarker() as landmarker:
        before = [mouth_opening(landmarker.faces(f)[0].landmarks) for f in frames[-3:]]
        after = [mouth_opening(landmarker.faces(f)[0].landmarks) for f in out[-3:]]
    assert np.mean(after) < 0.05 < np.mean(before), (before, after)
    backend.close_stream("cam")


def test_a_job_that_comes_after_its_stream_closed_leaves_nothing_behind(backend: MeshBackend) -> None:
    """A session can end while one of its jobs waits: that job must not start a new tracker."""
    clip = shared_media("video", "vretalking_face_2.mp4")
    frame = fit_cover(next(iter(video_frames(clip)))[1], 256, 256)
    camera = backend.prepare_avatar("camera", None)
    backend.generate([FrameJob("late", 0, 0.0, silent_window(backend), frame, camera)])
    assert backend._streams["late"].tracker is not None
    backend.close_stream("late")
    out = backend.generate([FrameJob("late", 1, 0.04, silent_window(backend), frame, camera)])
    assert out[0] is frame and "late" not in backend._streams  # as it came; no state made again


async def test_the_api_refuses_a_faceless_avatar_with_a_clear_422(no_face: Path) -> None:
    app = create_app(Settings(port=0, avatar_files=[no_face]))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    from tests.test_http_api import offer_sdp

    body = {"sdp": await offer_sdp(), "type": "offer", "options": {"backend": "mesh", "avatar": "wall"}}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{runner.addresses[0][1]}/offer", json=body) as response:
                reply = await response.json()
    finally:
        await runner.cleanup()
    assert response.status == 422 and "no face was found" in reply["error"]


def test_the_cli_refuses_a_faceless_avatar(no_face: Path, tmp_path: Path) -> None:
    audio = shared_media("audio", "makeittalk_M6_04_16k.wav")
    result = subprocess.run(
        [sys.executable, "-m", "stream_server", "render", "--avatar", str(no_face), "--audio", str(audio), "-o", str(tmp_path / "x.mp4")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "no face was found" in result.stderr and "Traceback" not in result.stderr


def test_render_with_mesh_moves_the_mouth_with_speech(tmp_path: Path) -> None:
    clip = shared_media("video", "vretalking_face_3.mp4")
    first = next(video_frames(clip))[1]
    portrait = tmp_path / "first.png"
    cv2.imwrite(str(portrait), cv2.cvtColor(fit_cover(first, 256, 256), cv2.COLOR_RGB2BGR))
    out = tmp_path / "talk.mp4"
    result = render(str(portrait), clip, out, "mesh", fps=25, progress=False)
    assert result.counts["generated"] == result.frames
    openings, _, _ = mouth_track(out)
    assert np.nanstd(openings) > 0.02  # the mouth moves
    assert np.nanmax(openings) > 0.1


def test_other_audio_to_mouth_weights_are_used_and_bad_ones_refused(monkeypatch, tmp_path: Path) -> None:
    from engines.audio2mouth.model import AudioToMouth
    from engines.mesh.backend import WEIGHTS_ENV

    # a usable file: the committed model with the bias of every network's `open` output raised
    model = AudioToMouth.load()
    params = dict(model._p)
    for key in [k for k in params if k.endswith("out.b")]:
        params[key] = params[key] + np.array([1.0, 0.0, 0.0], np.float32)
    other = tmp_path / "other.npz"
    AudioToMouth(params, model.config).save(other)
    frames = silent_window(MeshBackend()).mel.shape[0]
    loud = np.random.default_rng(0).uniform(-9.0, -2.0, (1, frames, 80)).astype(np.float32)  # speech level
    monkeypatch.setenv(WEIGHTS_ENV, str(other))
    raised = MeshBackend()._model.predict_batch(loud)[0, 0]
    monkeypatch.delenv(WEIGHTS_ENV)
    committed = MeshBackend()._model.predict_batch(loud)[0, 0]
    assert raised > committed + 0.05, (raised, committed)

    # a corrupt file: the render CLI says which variable and file, without a traceback
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a weights file")
    audio = shared_media("audio", "makeittalk_M6_04_16k.wav")
    result = subprocess.run(
        [sys.executable, "-m", "stream_server", "render", "--avatar", "astronaut", "--audio", str(audio), "-o", str(tmp_path / "x.mp4")],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, WEIGHTS_ENV: str(corrupt)},
    )
    assert result.returncode != 0 and WEIGHTS_ENV in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
