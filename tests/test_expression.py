"""Expressiveness a user sets (``Expression``, the ``mouth_gain`` option): validated the same way
on every path, carried on every frame job, and in ``mesh`` a wider mouth on speech, a closed one
in silence."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import numpy as np
import pytest

from engines import features
from engines.audio2mouth.model import mel_windows
from engines.base import DEFAULT_MOUTH_GAIN, MOUTH_GAIN_RANGE, AudioWindow, Expression, FrameJob
from engines.face import FaceLandmarker, mouth_opening
from engines.images import read_image
from engines.media_io import load_audio
from engines.mesh.backend import MeshBackend, mouth_model
from engines.mouth import MouthParams
from engines.passthrough.backend import PassthroughBackend
from engines.registry import BackendRegistry
from stream_server.audio_in import AudioIn
from stream_server.avatars import BUNDLED, AvatarLibrary
from stream_server.config import Settings
from stream_server.options import OptionError, parse_options
from stream_server.pipeline import Generation, Portrait, StreamPipeline
from tests.cli_runs import cli as run_cli, render_arguments
from tests.conftest import StartServer
from tests.media import shared_media


def parse(raw: object):
    settings = Settings(port=0)
    return parse_options(raw, settings, AvatarLibrary(), BackendRegistry(BUNDLED["astronaut"]))


def test_the_gain_has_a_default_is_checked_and_states_its_range() -> None:
    assert parse({}).mouth_gain == DEFAULT_MOUTH_GAIN == Expression().mouth_gain
    assert 1.0 < DEFAULT_MOUTH_GAIN <= MOUTH_GAIN_RANGE[1]
    low, high = MOUTH_GAIN_RANGE
    for good in (low, 1, 1.25, high):
        options = parse({"mouth_gain": good})
        assert options.mouth_gain == good and isinstance(options.mouth_gain, float)
        assert options.expression == Expression(mouth_gain=good)
        assert options.to_json()["mouth_gain"] == good
    for bad, message in ((0.49, "from 0.5 to 3.0"), (3.01, "from 0.5 to 3.0"), (-1, "from 0.5 to 3.0"),
                         (float("nan"), "a number"), (float("inf"), "from 0.5 to 3.0"), ("2", "a number"),
                         (False, "a number"), ([2], "a number"), (None, "a number")):
        with pytest.raises(OptionError, match=message) as error:
            parse({"mouth_gain": bad})
        assert error.value.valid == [low, high], bad


def test_the_gain_scales_the_opening_about_the_closed_mouth_and_keeps_the_shape() -> None:
    said = MouthParams(open=0.3, width=-0.4, closure=0.2)
    assert said.with_gain(2.0) == MouthParams(0.6, -0.4, 0.2)
    assert said.with_gain(1.0) is said
    assert said.with_gain(0.5).open == pytest.approx(0.15)
    assert MouthParams(0.8).with_gain(3.0).open == 1.0  # at most wide open
    assert MouthParams(0.0, 0.5, 1.0).with_gain(3.0) == MouthParams(0.0, 0.5, 1.0)  # closed stays closed


def test_every_job_of_a_stream_carries_its_expression() -> None:
    backend = PassthroughBackend()
    portrait = np.full((64, 48, 3), 200, np.uint8)
    expression = Expression(mouth_gain=2.5)
    pipeline = StreamPipeline("s", Generation(backend, backend.prepare_avatar("grey", portrait)), 25, 0.0, 0.04,
                              Portrait(portrait), AudioIn(), expression=expression)
    assert [pipeline.job(slot)().expression for slot in range(3)] == [expression] * 3
    plain = StreamPipeline("p", pipeline.generation, 25, 0.0, 0.04, Portrait(portrait), AudioIn())
    assert plain.job(0)().expression == Expression()


@pytest.fixture(scope="module")
def still_mesh() -> MeshBackend:
    backend = MeshBackend()
    backend.head_motion = False  # no head motion or blink between the frames compared
    return backend


def window_at(backend: MeshBackend, pcm16: np.ndarray, mel: np.ndarray, time_s: float) -> AudioWindow:
    windows = mel_windows(mel, np.array([time_s]), backend.context_s, backend.lookahead_s)
    start = int((time_s - backend.context_s) * 16000)
    pcm = pcm16[start: start + int((backend.context_s + backend.lookahead_s) * 16000)]
    return AudioWindow(time_s, backend.context_s, backend.lookahead_s, pcm, windows[0])


def test_mesh_opens_wider_with_more_gain_and_keeps_silence_closed(still_mesh: MeshBackend) -> None:
    pcm16 = load_audio(shared_media("audio", "sadtalker_RD_Radio31_000.wav"), 16000)
    mel = features.LogMel().frames(pcm16)
    times = np.arange(1.0, 7.0, 0.04)
    opens = mouth_model().predict_batch(mel_windows(mel, times, still_mesh.context_s, still_mesh.lookahead_s))[:, 0]
    # a clearly open vowel that no gain here clips at open = 1 (the loudest ones would, at 2 and 3)
    vowel = window_at(still_mesh, pcm16, mel, float(times[np.argmin(np.abs(opens - 0.3))]))
    frames = round((still_mesh.context_s + still_mesh.lookahead_s) * 100)
    silence = AudioWindow(0.0, still_mesh.context_s, still_mesh.lookahead_s, np.zeros(frames * 160, np.float32),
                          np.full((frames, 80), features.SILENCE, np.float32))
    portrait = read_image(BUNDLED["astronaut"])
    avatar = still_mesh.prepare_avatar("astronaut", portrait)
    gains = (1.0, DEFAULT_MOUTH_GAIN, MOUTH_GAIN_RANGE[1])
    jobs = [FrameJob("gain", 0, 0.0, window, portrait, avatar, Expression(mouth_gain=gain))
            for window in (vowel, silence) for gain in gains]
    out = still_mesh.generate(jobs)
    with FaceLandmarker() as landmarker:
        spoken, quiet = np.split(np.array([mouth_opening(landmarker.faces(f)[0].landmarks) for f in out]), 2)
    still_mesh.close_stream("gain")
    # FaceMesh reads the output: each step of gain opens the vowel visibly wider
    assert spoken[1] > spoken[0] + 0.04 and spoken[2] > spoken[1] + 0.02, spoken
    # silence stays closed at any gain (no wider than at gain 1, and shut)
    assert quiet.max() < 0.03 and quiet[2] <= quiet[0] + 0.01, (quiet, spoken)


def test_render_takes_the_gain_on_the_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    audio = str(shared_media("audio", "makeittalk_M6_04_16k.wav"))
    base = ("--avatar", "astronaut", "--audio", audio, "-o", str(tmp_path / "x.mp4"))
    code, seen = render_arguments(monkeypatch, *base, "--mouth-gain", "1.5")
    assert code == 2 and seen["mouth_gain"] == 1.5
    code, seen = render_arguments(monkeypatch, *base)
    assert code == 2 and seen["mouth_gain"] == DEFAULT_MOUTH_GAIN


def test_render_refuses_a_gain_out_of_range_clearly(tmp_path: Path) -> None:
    audio = str(shared_media("audio", "makeittalk_M6_04_16k.wav"))
    result = run_cli("render", "--avatar", "astronaut", "--audio", audio, "-o", str(tmp_path / "x.mp4"), "--mouth-gain", "9")
    assert result.returncode == 2 and "mouth_gain must be from 0.5 to 3.0" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.mp4").exists()
    assert "--mouth-gain" in run_cli("render", "--help").stdout


async def test_channels_take_the_gain_and_the_page_is_told_its_range(start_server: StartServer) -> None:
    live = await start_server(channels=["studio"])
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{live.url}/channels", json={"name": "loud", "options": {"mouth_gain": 2.5}}) as response:
            assert response.status == 201 and (await response.json())["options"]["mouth_gain"] == 2.5
        async with http.get(f"{live.url}/channels") as response:
            gains = {c["name"]: c["options"]["mouth_gain"] for c in await response.json()}
        assert gains == {"studio": DEFAULT_MOUTH_GAIN, "loud": 2.5}  # serve --channel: the default
        async with http.get(f"{live.url}/config") as response:
            config = await response.json()
        assert config["mouth_gain"] == {"default": DEFAULT_MOUTH_GAIN, "min": MOUTH_GAIN_RANGE[0], "max": MOUTH_GAIN_RANGE[1]}
