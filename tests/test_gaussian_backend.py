"""The `gaussian` backend end to end on CPU at debug resolution: a person enrolled from a real
clip by the server's own command (``python -m stream_server enrol --tiny``), listed as an avatar,
rendered through ``render`` and streamed in a live loopback session; the enrolment API's
refusals and cancel."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from engines.base import AvatarError
from tests.cli_runs import cli as run_cli
from tests.conftest import StartServer
from tests.media import corpus_clip, shared_media

CLIP = corpus_clip("AniPortrait_pose_ref_video.mp4")


@pytest.fixture(scope="module")
def avatars(tmp_path_factory: pytest.TempPathFactory):
    """An avatars directory with one tiny head, enrolled by the CLI; the CPU debug mode on."""
    root = tmp_path_factory.mktemp("avatars")
    saved = {k: os.environ.get(k) for k in ("LIPSYNC_AVATARS_DIR", "LIPSYNC_GAUSSIAN_CPU")}
    os.environ.update(LIPSYNC_AVATARS_DIR=str(root), LIPSYNC_GAUSSIAN_CPU="1")
    result = run_cli("enrol", "--video", str(CLIP), "--name", "ani", "--tiny", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "enrolled ani" in result.stdout and "held-out PSNR" in result.stderr  # the progress line
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_the_cli_refuses_a_video_it_cannot_enrol_without_a_traceback(avatars: Path, tmp_path: Path) -> None:
    short = run_cli("enrol", "--video", str(tmp_path / "missing.mp4"), "--name", "nobody", "--tiny")
    assert short.returncode == 2 and "does not exist" in short.stderr and "Traceback" not in short.stderr
    bad_name = run_cli("enrol", "--video", str(CLIP), "--name", "../x", "--tiny")
    assert bad_name.returncode == 2 and "is not allowed" in bad_name.stderr


def test_without_a_gpu_it_is_unavailable_unless_the_debug_mode_is_asked_for(avatars: Path, monkeypatch) -> None:
    from engines.gaussian.backend import GaussianBackend

    assert GaussianBackend.unavailable_reason() is None
    monkeypatch.delenv("LIPSYNC_GAUSSIAN_CPU")
    reason = GaussianBackend.unavailable_reason()
    assert reason and "needs an NVIDIA GPU for real time" in reason and "LIPSYNC_GAUSSIAN_CPU=1" in reason


def test_an_enrolled_head_is_an_avatar_and_only_heads_are_animated(avatars: Path) -> None:
    from engines.gaussian.backend import GaussianBackend
    from stream_server.avatars import AvatarLibrary

    library = AvatarLibrary(enrolled=avatars)
    assert "ani" in library.names() and library.source("ani").to_json()["enrolled"] is True
    backend = GaussianBackend()
    backend.load()
    with pytest.raises(AvatarError, match="not the live camera"):
        backend.prepare_avatar("camera", None)
    with pytest.raises(AvatarError, match="enrol a video first"):
        backend.prepare_avatar("astronaut", np.zeros((64, 64, 3), np.uint8))


def test_render_drives_the_head_with_the_voice(avatars: Path, tmp_path: Path) -> None:
    from engines.lipsync_measures import mouth_track
    from stream_server.render import render

    out = tmp_path / "ani.mp4"
    result = render("ani", shared_media("audio", "makeittalk_M6_04_16k.wav"), out, "gaussian", progress=False)
    assert result.counts["generated"] == result.frames > 100 and result.counts["failed"] == 0
    opening, _, _ = mouth_track(out)
    assert np.mean(~np.isnan(opening)) > 0.9  # FaceMesh finds the rendered face
    assert np.nanstd(opening) > 0.005  # and its mouth moves


def test_heads_of_different_sizes_share_one_rasterization() -> None:
    import torch

    from engines.gaussian.backend import pad_and_join
    from engines.gaussian.raster_torch import rasterize
    from tests.test_gaussian_raster import random_scene

    keys = ("means", "quats", "scales", "opacities", "colors")
    small = dict(zip(keys, random_scene(40, 24, 24, batch=2, seed=1)[:5]))
    large = dict(zip(keys, random_scene(90, 24, 24, batch=1, seed=2)[:5]))
    Ks = torch.eye(3).repeat(3, 1, 1)
    joined = pad_and_join([small, large])
    assert joined["means"].shape == (3, 90, 3)
    rgb, alpha = rasterize(*(joined[k] for k in keys), Ks, 24, 24, z0=50.0)
    for rows, scene in ((slice(0, 2), small), (slice(2, 3), large)):
        want_rgb, want_alpha = rasterize(*(scene[k] for k in keys), Ks[rows], 24, 24, z0=50.0)
        assert torch.allclose(rgb[rows], want_rgb, atol=1e-5) and torch.allclose(alpha[rows], want_alpha, atol=1e-5)


def test_a_tick_of_two_people_renders_as_each_alone(avatars: Path) -> None:
    from engines.base import AudioWindow, FrameJob
    from engines.gaussian.backend import GaussianBackend

    backend = GaussianBackend()
    backend.load()
    frames = int(round((backend.context_s + backend.lookahead_s) * 100))
    rng = np.random.default_rng(0)

    def speech_window(t: float) -> AudioWindow:  # log-mel noise at speech level: the mouth moves
        mel = rng.normal(-4.0, 2.0, (frames, 80)).astype(np.float32)
        return AudioWindow(t, backend.context_s, backend.lookahead_s, np.zeros(frames * 160, np.float32), mel)

    base = np.zeros((128, 128, 3), np.uint8)
    one = backend.prepare_avatar("ani", base)
    other = backend.prepare_avatar("ani", base)  # a second head object: rendered as another person
    jobs = [FrameJob(f"s{i}", i, 0.4 * i, speech_window(0.4 * i + 1.0), base, avatar)
            for i, avatar in enumerate((one, other, one))]
    together = backend.generate(jobs)
    alone = [backend.generate([job])[0] for job in jobs]
    for a, b in zip(together, alone):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding, same pixels
    assert np.abs(together[0].astype(int) - together[1].astype(int)).max() > 0  # different times, frames differ


async def test_a_live_session_streams_the_enrolled_head(avatars: Path, start_server: StartServer) -> None:
    from benchmarks.peer import output_fps, stream_clip

    live = await start_server(avatars_dir=avatars)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}/avatars") as response:
            listed = {a["name"]: a for a in (await response.json())["avatars"]}
    assert listed["ani"]["enrolled"] is True
    received = await stream_clip(live.url, shared_media("video", "pcavs_vox2_00086.mp4"), seconds=4.0,
                                 options={"backend": "gaussian", "avatar": "ani", "fps": 25, "width": 128, "height": 128})
    assert received.answer["options"]["backend"] == "gaussian"
    fps = output_fps(received)
    assert 22.0 <= fps <= 27.0, f"output video at {fps:.1f} fps"


async def test_the_enrolment_api_refuses_clearly_and_cancels(avatars: Path, start_server: StartServer) -> None:
    live = await start_server(avatars_dir=avatars)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{live.url}/avatars?name=junk", data=b"not a video at all", headers={"Content-Type": "video/mp4"}) as response:
            assert response.status == 415 and "not a video file" in (await response.json())["error"]
        async with http.get(f"{live.url}/avatars/nobody/enrolment") as response:
            assert response.status == 404
        async with http.post(f"{live.url}/avatars?name=astronaut", data=CLIP.read_bytes(), headers={"Content-Type": "video/mp4"}) as response:
            assert response.status == 409 and "not an enrolled one" in (await response.json())["error"]
        video = CLIP.read_bytes()
        async with http.post(f"{live.url}/avatars?name=ani2", data=video, headers={"Content-Type": "video/mp4"}) as response:
            job = await response.json()
            assert response.status == 202 and job["state"] == "running" and job["tiny"] is True, job
        async with http.post(f"{live.url}/avatars?name=ani3", data=video, headers={"Content-Type": "video/mp4"}) as response:
            assert response.status == 409 and "one at a time" in (await response.json())["error"]
        async with http.delete(f"{live.url}{job['url']}") as response:
            assert response.status == 200
        for _ in range(120):
            async with http.get(f"{live.url}{job['url']}") as response:
                job = {**job, **await response.json()}
            if job["state"] != "running":
                break
            await asyncio.sleep(0.5)
        assert job["state"] == "cancelled", job
        assert not (avatars / "ani2.gshead").exists()
