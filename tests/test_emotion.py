"""The emotion a user sets (``Expression.emotion`` / ``emotion_intensity``): validated on every
path with the valid values, carried on every frame job, and changed while a session runs over the
page's stats WebSocket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole

from engines.base import DEFAULT_EMOTION, EMOTIONS, Expression
from engines.registry import BackendRegistry
from stream_server.avatars import BUNDLED, AvatarLibrary
from stream_server.config import Settings
from stream_server.options import OptionError, parse_options
from tests.cli_runs import cli as run_cli, render_arguments
from tests.conftest import StartServer, offer_sdp
from tests.media import shared_media


def parse(raw: object):
    return parse_options(raw, Settings(port=0), AvatarLibrary(), BackendRegistry(BUNDLED["astronaut"]))


def test_the_emotion_is_one_of_the_eight_and_its_intensity_from_0_to_1() -> None:
    plain = parse({})
    assert (plain.emotion, plain.emotion_intensity) == (DEFAULT_EMOTION, 1.0) and plain.expression == Expression()
    happy = parse({"emotion": "Happy", "emotion_intensity": 0.4})
    assert happy.expression == Expression(emotion="happy", emotion_intensity=0.4)
    assert happy.to_json()["emotion"] == "happy" and happy.to_json()["emotion_intensity"] == 0.4
    assert len(EMOTIONS) == 8 and DEFAULT_EMOTION in EMOTIONS
    for bad in ("joy", "", 3, None, ["happy"]):
        with pytest.raises(OptionError, match="emotion must be one of angry, disgust") as error:
            parse({"emotion": bad})
        assert error.value.valid == list(EMOTIONS)
    for bad in (-0.1, 1.5, "1", True, float("nan")):
        with pytest.raises(OptionError, match="emotion_intensity must be a number from 0") as error:
            parse({"emotion_intensity": bad})
        assert error.value.valid == [0.0, 1.0]


async def test_a_bad_emotion_in_an_offer_is_a_400_listing_the_emotions(start_server: StartServer) -> None:
    live = await start_server()
    async with aiohttp.ClientSession() as http:
        offer = {"sdp": await offer_sdp(), "type": "offer", "options": {"emotion": "joy"}}
        async with http.post(f"{live.url}/offer", json=offer) as response:
            body = await response.json()
        assert response.status == 400 and "emotion must be one of" in body["error"] and body["valid"] == list(EMOTIONS)
        async with http.get(f"{live.url}/config") as response:
            assert (await response.json())["emotion"] == {"default": DEFAULT_EMOTION, "choices": list(EMOTIONS)}
        async with http.post(f"{live.url}/channels", json={"name": "sad", "options": {"emotion": "sad"}}) as response:
            assert response.status == 201 and (await response.json())["options"]["emotion"] == "sad"


async def test_a_running_session_changes_its_emotion_over_the_stats_socket(start_server: StartServer) -> None:
    live = await start_server(backend="passthrough")
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendrecv")
    sink = MediaBlackhole()
    pc.on("track", sink.addTrack)
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        offer = {"sdp": pc.localDescription.sdp, "type": "offer", "options": {"emotion": "fear", "emotion_intensity": 0.5}}
        async with http.post(f"{live.url}/offer", json=offer) as response:
            answer = await response.json()
            assert response.status == 200, answer
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        session = live.server.sessions[answer["session_id"]]
        assert session.pipeline.expression == Expression(emotion="fear", emotion_intensity=0.5)
        async with http.ws_connect(f"{live.url}/ws/stats?session={answer['session_id']}") as socket:
            await socket.send_json({"type": "expression", "emotion": "happy", "emotion_intensity": 0.8})
            await socket.send_json({"type": "expression", "emotion": "elated"})
            await socket.send_json({"type": "expression", "loudness": 3})
            replies, stats = [], None
            while len(replies) < 3 or stats is None or stats.get("emotion") != "happy":
                message = await asyncio.wait_for(socket.receive_json(), 10)
                if message["type"] in ("expression", "error"):
                    replies.append(message)
                elif message["type"] == "stats":
                    stats = message
        assert replies[0] == {"type": "expression", "mouth_gain": 1.75, "emotion": "happy", "emotion_intensity": 0.8, "motion": None}
        assert replies[1]["type"] == "error" and replies[1]["valid"] == list(EMOTIONS)
        assert replies[2]["type"] == "error" and "unknown expression field(s) loudness" in replies[2]["error"]
        assert stats["emotion_intensity"] == 0.8
        # the jobs made from now on carry it; a refused change changed nothing
        assert session.pipeline.expression == Expression(emotion="happy", emotion_intensity=0.8)
        assert any("emotion happy (0.8)" in event for event in session.events)
    await pc.close()
    await sink.stop()


def test_render_takes_the_emotion_on_the_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    audio = str(shared_media("audio", "makeittalk_M6_04_16k.wav"))
    out = str(tmp_path / "x.mp4")
    code, seen = render_arguments(monkeypatch, "--avatar", "astronaut", "--audio", audio, "-o", out, "--emotion", "sad",
                                  "--emotion-intensity", "0.3")
    assert code == 2 and (seen["emotion"], seen["emotion_intensity"]) == ("sad", 0.3)
    result = run_cli("render", "--avatar", "astronaut", "--audio", audio, "-o", out, "--emotion", "smug")
    assert result.returncode == 2 and "emotion must be one of" in result.stderr and "Traceback" not in result.stderr
    assert not Path(out).exists()
