"""The command line: help on every command, offline render to a playable MP4, clear errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import av
import numpy as np
import pytest

from stream_server.render import Mp4Writer, render
from tests.cli_runs import cli
from tests.media import shared_media, video_frames




@pytest.mark.parametrize("command", [[], ["serve"], ["render"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0 and "usage: python -m stream_server" in result.stdout


def probe(path: Path) -> dict[str, float]:
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        frames = sum(1 for _ in container.decode(video))  # every frame decodes
        return {
            "video_codec": video.codec_context.name,
            "audio_codec": audio.codec_context.name,
            "frames": frames,
            "video_s": float(video.duration * video.time_base),
            "audio_s": float(audio.duration * audio.time_base),
            "width": video.codec_context.width,
            "height": video.codec_context.height,
        }


def test_render_portrait_to_a_browser_playable_mp4(tmp_path: Path) -> None:
    out = tmp_path / "astronaut.mp4"
    result = cli("render", "--avatar", "astronaut", "--audio", str(shared_media("audio", "makeittalk_M6_04_16k.wav")), "-o", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    info = probe(out)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert (info["width"], info["height"]) == (512, 512)
    assert info["frames"] == summary["frames"] == int(np.ceil(summary["duration_s"] * 25 - 1e-6))
    assert summary["counts"]["generated"] == summary["frames"]  # ideal timing generates every frame
    assert abs(info["video_s"] - info["audio_s"]) <= 0.04  # within one frame


def test_render_writes_mouths_nearly_losslessly(tmp_path: Path) -> None:
    # lip-sync lives in a few pixels around the mouth: coding noise there moved FaceMesh's reading
    # of the output (crf 20 gave 39.8 dB here and changed the lip-sync measure by up to 0.15)
    frames = [frame for _, frame in video_frames(shared_media("video", "pcavs_vox2_00373.mp4"))][:25]
    out = tmp_path / "clip.mp4"
    writer = Mp4Writer(out, frames[0].shape[1], frames[0].shape[0], 25)
    for frame in frames:
        writer.add_video(frame)
    writer.add_audio(np.zeros(48000, np.float32))
    writer.close()
    # against the frames as yuv420p holds them (the chroma subsampling is the format's, not the coder's)
    held = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p").to_ndarray(format="rgb24") for f in frames]
    back = [frame for _, frame in video_frames(out)]
    assert len(back) == len(frames)
    mse = np.mean([(a.astype(np.float64) - b) ** 2 for a, b in zip(held, back)])
    psnr = 10 * np.log10(255.0**2 / mse)
    print(f"PSNR {psnr:.1f} dB")
    assert psnr >= 42.0, f"render's H.264 output is only {psnr:.1f} dB PSNR"


def test_render_from_a_recorded_camera_keeps_its_frames_in_time(tmp_path: Path) -> None:
    clip = shared_media("video", "pcavs_vox2_00086.mp4")
    out = tmp_path / "camera.mp4"
    result = render(str(clip), clip, out, "passthrough", fps=25, progress=False)
    assert result.counts["generated"] == result.frames
    source = [frame for _, frame in video_frames(clip)]
    rendered = [frame for _, frame in video_frames(out)]
    assert len(rendered) == result.frames and rendered[0].shape == source[0].shape
    # passthrough: output frame k is the clip's frame k (25 fps both), up to coding noise
    for k in (10, 60, 110):
        errors = [np.abs(rendered[k].astype(int) - source[j].astype(int)).mean() for j in range(k - 3, k + 4)]
        assert int(np.argmin(errors)) == 3, f"output frame {k} shows source frame {k - 3 + int(np.argmin(errors))}"


def test_realtime_timing_runs_the_backend_at_its_measured_speed(tmp_path: Path) -> None:
    audio = shared_media("audio", "makeittalk_M6_04_16k.wav")
    result = render("astronaut", audio, tmp_path / "rt.mp4", "passthrough", timing="realtime", progress=False)
    counts = result.counts
    assert counts["generated"] + counts["interpolated"] + counts["repeated"] == result.frames


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--avatar", "astronaut", "--audio", "/no/such.wav"], "audio file /no/such.wav does not exist"),
        (["--avatar", "nobody", "--audio", "AUDIO"], "neither a bundled avatar"),
        (["--avatar", "NOT_IMAGE", "--audio", "AUDIO"], "is not an image"),
        (["--avatar", "astronaut", "--audio", "NOT_IMAGE"], "cannot read audio"),
        (["--avatar", "astronaut", "--audio", "AUDIO", "--width", "320"], "give both --width and --height"),
    ],
)
def test_render_errors_say_what_is_wrong(tmp_path: Path, args: list[str], message: str) -> None:
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is text, not a picture")
    audio = str(shared_media("audio", "makeittalk_M6_04_16k.wav"))
    args = [audio if a == "AUDIO" else str(not_image) if a == "NOT_IMAGE" else a for a in args]
    result = cli("render", *args, "-o", str(tmp_path / "x.mp4"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_serve_says_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--port", str(port), timeout=60)
    assert result.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in result.stderr


def test_serve_refuses_an_unreadable_avatar_file(tmp_path: Path) -> None:
    bad = tmp_path / "me.jpg"
    bad.write_bytes(b"\x00" * 100)
    result = cli("serve", "--avatar-file", str(bad), "--port", "0", timeout=60)
    assert result.returncode == 2 and "is not an image" in result.stderr
