"""The HTTP API: listings, health, metrics, and clear 4xx answers to bad input."""

from __future__ import annotations

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from tests.conftest import offer_sdp

AUDIO_ONLY_SDP_NOTE = "no video section"


async def test_listings_health_and_metrics(server_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server_url}/backends") as response:
            body = await response.json()
            listed = {b["name"]: b for b in body["backends"]}
            assert body["default"] == "mesh" and listed["mesh"]["available"] is True
            assert listed["mesh"]["lookahead_ms"] == 100.0 and listed["mesh"]["reason"] == ""
            assert listed["passthrough"]["available"] is True and listed["passthrough"]["lookahead_ms"] == 0.0
        async with http.get(f"{server_url}/avatars") as response:
            avatars = {a["name"]: a for a in (await response.json())["avatars"]}
            assert avatars["camera"]["kind"] == "camera" and avatars["astronaut"]["kind"] == "image"
        async with http.get(f"{server_url}{avatars['astronaut']['url']}") as response:
            assert response.status == 200 and response.content_type == "image/jpeg"
        async with http.get(f"{server_url}/healthz") as response:
            assert (await response.json())["status"] == "ok"
        async with http.get(f"{server_url}/metrics") as response:
            text = await response.text()
            assert "lipsync_sessions " in text and "lipsync_server_latency_seconds" in text
        async with http.get(f"{server_url}/") as response:
            assert response.status == 200 and "<video" in await response.text()


@pytest.mark.parametrize(
    ("body", "status", "message", "valid"),
    [
        (b"{not json", 400, "must be JSON", None),
        (b"[1, 2]", 400, "JSON object", None),
        (b'{"sdp": "v=0", "type": "answer"}', 400, 'type must be "offer"', ["offer"]),
        (b'{"sdp": 42, "type": "offer"}', 400, "sdp must be a session description", None),
        (b'{"sdp": "hello world", "type": "offer"}', 400, "sdp must be a session description", None),
        (b'{"sdp": "v=0\\r\\no=- 1 1 IN IP4 0.0.0.0\\r\\n", "type": "offer"}', 400, "no media sections", None),
    ],
)
async def test_malformed_offers_get_a_clear_400(server_url: str, body: bytes, status: int, message: str, valid: list | None) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server_url}/offer", data=body) as response:
            reply = await response.json()
    assert response.status == status and message in reply["error"], reply
    if valid is not None:
        assert reply["valid"] == valid


@pytest.mark.parametrize(
    ("options", "message", "valid"),
    [
        ({"backend": "wav2lip"}, "unknown backend 'wav2lip'", ["mesh", "passthrough", "musetalk", "vasa", "gaussian", "slow", "batching", "broken", "faulty", "badload"]),
        ({"avatar": "../../etc/passwd"}, "unknown avatar", ["camera", "astronaut"]),
        ({"fps": 0}, "fps must be from 1 to 60", [1, 60]),
        ({"fps": "fast"}, "fps must be a whole number", [1, 60]),
        ({"width": 100}, "both width and height", ["width", "height"]),
        ({"width": 10, "height": 10}, "width must be from 64 to 1920", [64, 1920]),
        ({"framing": "crop"}, "framing must be one of face, whole", ["face", "whole"]),
        ({"colour": "blue"}, "unknown option(s) colour", ["backend", "avatar", "fps", "width", "height", "mouth_gain", "emotion", "emotion_intensity", "motion", "framing"]),
        ("camera", "options must be a JSON object", ["backend", "avatar", "fps", "width", "height", "mouth_gain", "emotion", "emotion_intensity", "motion", "framing"]),
        ({"mouth_gain": 10}, "mouth_gain must be from 0.5 to 3.0", [0.5, 3.0]),
        ({"mouth_gain": 0.1}, "mouth_gain must be from 0.5 to 3.0", [0.5, 3.0]),
        ({"mouth_gain": "loud"}, "mouth_gain must be a number from 0.5 to 3.0, got 'loud'", [0.5, 3.0]),
        ({"mouth_gain": True}, "mouth_gain must be a number", [0.5, 3.0]),
        ({"mouth_gain": None}, "mouth_gain must be a number", [0.5, 3.0]),
    ],
)
async def test_unknown_options_are_rejected_with_the_valid_values(server_url: str, options: object, message: str, valid: list) -> None:
    body = {"sdp": await offer_sdp(), "type": "offer", "options": options}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server_url}/offer", json=body) as response:
            reply = await response.json()
    assert response.status == 400 and message in reply["error"], reply
    assert reply["valid"] == valid


async def test_an_audio_only_offer_is_refused_because_the_avatar_needs_video(server_url: str) -> None:
    body = {"sdp": await offer_sdp(video=False), "type": "offer"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server_url}/offer", json=body) as response:
            reply = await response.json()
    assert response.status == 400 and AUDIO_ONLY_SDP_NOTE in reply["error"]


async def test_a_body_over_the_limit_gets_413_and_the_server_keeps_serving(server_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server_url}/offer", data=b"x" * (300 * 1024)) as response:
            reply = await response.json()
        assert response.status == 413 and "too large" in reply["error"]
        async with http.get(f"{server_url}/healthz") as response:
            assert response.status == 200


async def test_unknown_sessions_and_thumbnails_are_404(server_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.delete(f"{server_url}/sessions/nope") as response:
            assert response.status == 404 and "no such session" in (await response.json())["error"]
        async with http.get(f"{server_url}/ws/stats?session=nope") as response:
            assert response.status == 404
        async with http.get(f"{server_url}/avatars/camera.jpg") as response:
            assert response.status == 404


async def test_a_session_streams_stats_and_is_closed_by_delete(server_url: str) -> None:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "options": {"avatar": "astronaut", "mouth_gain": 1.5}}
        async with http.post(f"{server_url}/offer", json=body) as response:
            answer = await response.json()
        assert response.status == 200 and answer["options"]["width"] == 512
        assert answer["options"]["mouth_gain"] == 1.5  # echoed, and in the stats below
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        async with http.ws_connect(f"{server_url}/ws/stats?session={answer['session_id']}") as socket:
            stats = [await socket.receive_json(timeout=5) for _ in range(4)]
            stats = [s for s in stats if s["type"] == "stats"]
            assert stats[-1]["session_id"] == answer["session_id"] and stats[-1]["fps_target"] == 25
            assert stats[-1]["mouth_gain"] == 1.5
            assert stats[-1]["fps_out"] is not None and stats[-1]["fps_out"] > 15
            async with http.delete(f"{server_url}/sessions/{answer['session_id']}") as response:
                assert response.status == 200
            last = None
            while (message := await socket.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
                last = message.json()
            assert last == {"type": "closed", "reason": "closed by the client"}
        async with http.get(f"{server_url}/healthz") as response:
            assert (await response.json())["sessions"] == 0
    await pc.close()


async def test_an_upload_sent_in_pieces_is_read_whole(server_url: str) -> None:
    """A browser sends a file in several pieces: the server reads to the end of the body."""
    import asyncio

    from stream_server.avatars import BUNDLED

    image = BUNDLED["astronaut"].read_bytes()

    async def pieces():
        for start in range(0, len(image), 4096):
            yield image[start:start + 4096]
            await asyncio.sleep(0.001)  # each piece its own network write

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server_url}/avatars?name=pieces", data=pieces(),
                             headers={"Content-Type": "image/jpeg"}) as response:
            reply = await response.json()
    assert response.status == 201, reply
    assert reply["avatar"]["name"] == "pieces"
