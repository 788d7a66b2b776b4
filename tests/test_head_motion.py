"""Head motion, brows and blinks from the voice (engines/head_motion), and the `mesh` renderer moving
the whole head: deterministic per seed, calm in silence, more motion with speech, blinks at a
human rate, and a pose that FaceMesh reads back from the rendered picture."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import numpy as np
import pytest

from engines.base import MOTIONS, Expression
from engines.face import FaceLandmarker
from engines.gaussian.rig import RIGID, umeyama
from engines.head_motion.model import AMOUNTS, CHANNELS, HeadMotion, HeadPose, MotionWeights, motion_amount
from engines.head_motion.tracks import euler_degrees, face_measures, normalised
from engines.images import read_image
from engines.media_io import load_audio
from engines.mesh.prepare import prepare_face
from engines.mesh.render import render_mouth
from engines.mouth import MouthParams
from engines.registry import BackendRegistry
from stream_server.avatars import BUNDLED, AvatarLibrary
from stream_server.config import Settings
from stream_server.options import OptionError, SessionOptions, parse_options
from tests.cli_runs import cli as run_cli, render_arguments
from tests.conftest import StartServer, offer_sdp
from tests.media import shared_media

ASTRONAUT = Path(__file__).resolve().parents[1] / "stream_server" / "assets" / "astronaut.jpg"
FPS = 25.0


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(shared_media("video", "vretalking_face_2.mp4"), 16000)


def track(motion: HeadMotion, pcm: np.ndarray, seconds: float, amount: float = 1.0) -> np.ndarray:
    times = np.arange(0.0, seconds, 1.0 / FPS)
    return np.array([[*(getattr(motion.at(t, pcm, t, amount), c) for c in CHANNELS), motion.at(t, pcm, t, amount).blink]
                     for t in times])


def test_the_same_seed_gives_the_same_take_in_any_order_and_another_seed_another(speech: np.ndarray) -> None:
    weights = MotionWeights.load()
    times = np.arange(0.0, 4.0, 1.0 / FPS)
    a, b = HeadMotion(weights, seed=3), HeadMotion(weights, seed=3)
    forward = [a.at(t, speech, t) for t in times]
    backward = [b.at(t, speech, t) for t in times[::-1]][::-1]
    assert forward == backward
    other = [HeadMotion(weights, seed=4).at(t, speech, t) for t in times]
    assert forward != other


def test_silence_is_calm_but_not_frozen_and_speech_moves_the_head_more(speech: np.ndarray) -> None:
    motion = HeadMotion(MotionWeights.load(), seed=1)
    silent = track(motion, np.zeros(16000 * 12), 12.0)
    talking = track(motion, speech, min(12.0, len(speech) / 16000))
    speed = lambda rows: np.median(np.linalg.norm(np.diff(rows[:, :3], axis=0), axis=1)) * FPS  # noqa: E731
    assert 0.2 < speed(silent) < speed(talking), (speed(silent), speed(talking))
    # no drift: over 12 s of silence the head stays near its rest pose
    assert np.abs(silent[:, :3]).max() < 12.0 and abs(silent[:, :3].mean()) < 3.0


def test_blinks_come_every_two_to_eight_seconds() -> None:
    motion = HeadMotion(MotionWeights.load(), seed=7)
    blinks = np.array([motion.at(t, np.zeros(0), 0.0).blink for t in np.arange(0, 120, 1 / FPS)])
    starts = np.flatnonzero((blinks[1:] > 0) & (blinks[:-1] == 0))
    assert blinks.max() > 0.9
    assert 2.0 <= 120.0 / len(starts) <= 8.0, len(starts)


def test_still_adds_nothing_lively_more_and_the_camera_only_when_asked(speech: np.ndarray) -> None:
    weights = MotionWeights.load()
    still = track(HeadMotion(weights, seed=2), speech, 4.0, AMOUNTS["still"])
    natural = track(HeadMotion(weights, seed=2), speech, 4.0, AMOUNTS["natural"])
    lively = track(HeadMotion(weights, seed=2), speech, 4.0, AMOUNTS["lively"])
    assert not still[:, :6].any() and still[:, 6].max() > 0  # still: blinks only
    assert np.abs(lively[:, :3]).mean() > 1.3 * np.abs(natural[:, :3]).mean()
    assert motion_amount(None, camera=True) == 0.0 and motion_amount(None, camera=False) == 1.0
    assert motion_amount("lively", camera=True) == AMOUNTS["lively"]


def test_weights_for_other_channels_are_refused_with_what_to_do(tmp_path: Path) -> None:
    weights = MotionWeights.load()
    path = tmp_path / "w.npz"
    weights.save(path)
    data = dict(np.load(path))
    data["channels"] = np.array(["yaw", "pitch"])
    np.savez(path, **data)
    with pytest.raises(ValueError, match="retrain with python -m engines.head_motion.train"):
        MotionWeights.load(path)


def test_facemesh_reads_the_rendered_turn_and_brow_lift_back() -> None:
    image = read_image(ASTRONAUT)
    with FaceLandmarker() as landmarker:
        rest = landmarker.faces(image)[0].landmarks
        face = prepare_face(image, rest)
        params = MouthParams(face.rest_open, 0.0, 0.0)
        turned = landmarker.faces(render_mouth(face, params, HeadPose(yaw=6.0, pitch=-4.0, roll=3.0)))[0].landmarks
        landmarks_after = landmarker.faces(render_mouth(face, params, HeadPose(brow=0.05)))[0].landmarks
    a, b = normalised(rest), normalised(turned)
    _, rotation, _ = umeyama(a[list(RIGID)], b[list(RIGID)], with_scale=False)
    yaw, pitch, roll = euler_degrees(rotation)
    assert abs(roll - 3.0) < 1.0, roll  # in the picture's plane: read back closely
    assert 2.0 < yaw < 10.0 and -8.0 < pitch < -1.0, (yaw, pitch)  # out of plane: FaceMesh guesses depth
    brow_rest, lid_rest = face_measures(normalised(rest))
    brow_up, lid_up = face_measures(normalised(landmarks_after))
    assert 0.035 < brow_up - brow_rest < 0.07, brow_up - brow_rest  # FaceMesh reads back what was asked (BROW_GAIN)
    assert abs(lid_up - lid_rest) < 0.05  # the eyes stay open



def parse(raw: object) -> SessionOptions:
    return parse_options(raw, Settings(port=0), AvatarLibrary(), BackendRegistry(BUNDLED["astronaut"]))


def test_the_motion_option_is_one_of_three_or_unset() -> None:
    assert parse({}).expression.motion is None
    assert parse({"motion": "Lively"}).expression == Expression(motion="lively")
    for bad in ("wild", "", 3, ["still"]):
        with pytest.raises(OptionError, match="motion must be one of still, natural, lively") as error:
            parse({"motion": bad})
        assert error.value.valid == list(MOTIONS)


async def test_offers_channels_and_config_take_the_motion_option(start_server: StartServer) -> None:
    live = await start_server()
    async with aiohttp.ClientSession() as http:
        offer = {"sdp": await offer_sdp(), "type": "offer", "options": {"motion": "wild"}}
        async with http.post(f"{live.url}/offer", json=offer) as response:
            body = await response.json()
        assert response.status == 400 and "motion must be one of" in body["error"] and body["valid"] == list(MOTIONS)
        async with http.get(f"{live.url}/config") as response:
            assert (await response.json())["motion"] == {"default": None, "choices": list(MOTIONS)}
        async with http.post(f"{live.url}/channels", json={"name": "calm", "options": {"motion": "still"}}) as response:
            assert response.status == 201 and (await response.json())["options"]["motion"] == "still"


def test_render_passes_motion_on_and_refuses_a_bad_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, seen = render_arguments(monkeypatch, "--avatar", "astronaut", "--audio", "a.wav", "-o", "o.mp4", "--motion", "still")
    assert seen["motion"] == "still"
    speech = tmp_path / "speech.wav"
    result = run_cli("render", "--avatar", "astronaut", "--audio", str(speech), "-o", str(tmp_path / "o.mp4"), "--motion", "wild")
    assert result.returncode == 2 and "motion must be one of still, natural, lively" in result.stderr
