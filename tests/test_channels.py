"""Channels: WHIP in, WHEP out, recording and speaking events, and the protocol's errors."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiortc.contrib.media import MediaPlayer

from benchmarks.peer import (
    PacedAudio, Received, StampedVideo, av_offsets, loop_clip, output_fps, read_stamp, whep_play, whip_publish,
)
from engines.media_io import load_audio
from stream_server.channels import ChannelTimeline
from tests.conftest import StartServer
from tests.media import shared_media, video_fps

pytestmark = pytest.mark.usefixtures("steady_gc")  # timed streams in this process

CLIP = ("video", "pcavs_vox2_00086.mp4")  # 224x224, 25 fps, 5.2 s of speech
CAMERA = {"backend": "passthrough", "avatar": "camera", "fps": 25, "width": 224, "height": 224}
TOKEN = "channel-token"


def recording_offsets(path: Path, clip: Path) -> tuple[np.ndarray, float]:
    """A/V offset per recorded frame (s): when the file shows source instant s minus when it
    plays the audio of s (frames carry their source index; audio is found by cross-correlation),
    and the file's video frame rate."""
    with av.open(str(path)) as container:
        frames = [(float(f.pts * f.time_base), read_stamp(f.to_ndarray(format="rgb24"))) for f in container.decode(video=0)]
    audio = load_audio(path, 48000)
    source = load_audio(clip, 48000)
    probe = source[24000:96000]  # 1.5 s of speech from 0.5 s in
    origin = (int(np.argmax(np.abs(np.correlate(audio, probe, mode="valid")))) - 24000) / 48000  # file time of source 0
    clip_fps = video_fps(clip)
    offsets = np.array([t - (origin + index / clip_fps) for t, index in frames if index > 0])
    times = [t for t, _ in frames]
    return offsets, (len(times) - 1) / (times[-1] - times[0])


def session_frames(first_slot: int, slots: int, media_origin_s: float) -> list[av.VideoFrame | av.AudioFrame]:
    """What a producer's session hands out, stamped as it stamps them: 25 fps video from slot
    ``first_slot`` and 20 ms audio chunks from media time 0 (time bases 1/90000 and 1/48000),
    every media time offset by ``media_origin_s``."""
    frames: list[av.VideoFrame | av.AudioFrame] = []
    for n in range(slots * 2):  # two audio chunks a slot
        audio = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
        audio.sample_rate, audio.pts, audio.time_base = 48000, round((media_origin_s + n * 0.02) * 48000), Fraction(1, 48000)
        frames.append(audio)
    for slot in range(first_slot, slots):
        video = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        video.pts, video.time_base = round((media_origin_s + slot * 0.04) * 90000), Fraction(1, 90000)
        frames.append(video)
    return frames


def test_the_channel_timeline_keeps_a_producers_audio_and_video_aligned_across_producers() -> None:
    """A producer whose session started behind sends its first video frame three slots after its
    first audio chunk: the channel keeps them 120 ms apart. The next producer continues where the
    first stopped, with its own alignment."""
    timeline = ChannelTimeline()
    times: dict[str, list[float]] = {"audio": [], "video": []}
    for first_slot, origin in [(3, 0.0), (0, 1000.0)]:
        timeline.restart()
        for frame in session_frames(first_slot, 10, origin):
            timeline.place(frame, 25)
            kind = "audio" if isinstance(frame, av.AudioFrame) else "video"
            times[kind].append(float(frame.pts * frame.time_base))
    assert times["audio"][0] == 0.0 and times["video"][0] == pytest.approx(0.12)
    # the second producer starts where the first one's frames end (0.4 s), both kinds together
    assert times["audio"][20] == pytest.approx(0.4) and times["video"][7] == pytest.approx(0.4)
    assert np.allclose(np.diff(times["audio"][20:]), 0.02) and np.allclose(np.diff(times["video"][7:]), 0.04)


async def test_a_whip_producer_reaches_whep_viewers_in_sync_and_is_recorded(start_server: StartServer, tmp_path: Path) -> None:
    live = await start_server(recordings_dir=tmp_path)
    live.server.create_channel("studio", CAMERA)
    # longer than the test, so the producer never runs dry; made off the loop the server runs on
    clip = await asyncio.to_thread(loop_clip, shared_media(*CLIP), 12.0, tmp_path)
    player = MediaPlayer(str(clip))
    producer, producer_url = await whip_publish(live.url, "studio", [PacedAudio(player.audio), StampedVideo(player.video)])
    received = Received()
    viewer, viewer_url, tasks = await whep_play(live.url, "studio", received)
    events: list[dict] = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{live.url}/ws/channels/studio") as socket:
            async with http.post(f"{live.url}/channels/studio/recording") as response:
                assert response.status == 201, await response.text()
            async with http.post(f"{live.url}/channels/studio/recording") as response:
                assert response.status == 409  # one recording at a time
            async with http.get(f"{live.url}/channels") as response:
                (state,) = await response.json()
            assert state["producer"] and state["viewers"] == 1 and state["recording"]
            deadline = asyncio.get_running_loop().time() + 5.0  # stream and record for 5 s
            try:
                while (left := deadline - asyncio.get_running_loop().time()) > 0:
                    events.append(await socket.receive_json(timeout=left))
            except asyncio.TimeoutError:
                pass
            async with http.delete(f"{live.url}/channels/studio/recording") as response:
                recording = await response.json()
                assert response.status == 200, recording
            for url in (viewer_url, producer_url):
                async with http.delete(url) as response:
                    assert response.status == 200
            async with http.get(f"{live.url}/channels") as response:
                (state,) = await response.json()
            assert state["producer"] is None and state["viewers"] == 0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await viewer.close()
    await producer.close()
    player.audio.stop()
    player.video.stop()

    # the viewer: full frame rate, and its video in sync with its audio
    fps = output_fps(received)
    offsets = av_offsets(received, clip, video_fps(clip))
    print(f"viewer: {fps:.2f} fps, A/V offset median {np.median(offsets) * 1000:.1f} ms over {len(offsets)} frames")
    assert 23.0 <= fps <= 27.0
    assert len(offsets) > 50 and abs(float(np.median(offsets))) <= 0.040

    # speaking events came from the clip's speech
    speaking = [e["speaking"] for e in events if e["type"] == "speaking"]
    assert speaking and speaking[0] is True, events

    # the recording: an MP4 whose audio and video stay within one frame of each other
    path = Path(recording["file"])
    assert path.parent == tmp_path and path.suffix == ".mp4" and recording["frames_lost"] == 0
    file_offsets, file_fps = recording_offsets(path, clip)
    print(f"recording: {file_fps:.2f} fps, A/V offset median {np.median(file_offsets) * 1000:.1f} ms, "
          f"range {file_offsets.min() * 1000:.1f}..{file_offsets.max() * 1000:.1f} ms")
    assert len(file_offsets) > 50 and 24.0 <= file_fps <= 26.0
    assert np.all(np.abs(np.percentile(file_offsets, [5, 50, 95])) <= 0.040)


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "says"),
    [
        ("POST", "/whip/studio", {"Content-Type": "application/json"}, "{}", 415, "application/sdp"),
        ("POST", "/whip/nowhere", {"Content-Type": "application/sdp"}, "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", 404, "no channel"),
        ("POST", "/whip/studio", {"Content-Type": "application/sdp"}, "hello", 400, "SDP offer"),
        ("DELETE", "/whip/studio/unknown", {}, None, 404, "no producer"),
        ("DELETE", "/whep/studio/unknown", {}, None, 404, "no viewer"),
        ("PATCH", "/whip/studio/unknown", {"Content-Type": "application/trickle-ice-sdpfrag"}, "a=x", 405, "trickle"),
        ("POST", "/whep/studio", {"Content-Type": "text/plain"}, "v=0", 415, "application/sdp"),
        ("POST", "/channels", {"Content-Type": "application/json"}, '{"name": "a b"}', 400, "bad channel name"),
        ("POST", "/channels", {"Content-Type": "application/json"}, '{"name": "studio"}', 409, "exists already"),
        ("POST", "/channels", {"Content-Type": "application/json"}, '{"name": "x", "options": {"backend": "nope"}}', 400, "unknown backend"),
        ("POST", "/channels", {"Content-Type": "application/json"}, '{"name": "x", "options": {"mouth_gain": 9}}', 400, "mouth_gain must be from 0.5 to 3.0"),
        ("DELETE", "/channels/studio/recording", {}, None, 404, "not recording"),
        ("GET", "/view/nowhere", {}, None, 404, "no channel"),
    ],
)
async def test_protocol_errors_get_the_right_status_and_a_message(
    start_server: StartServer, method: str, path: str, headers: dict, body: str | None, status: int, says: str
) -> None:
    live = await start_server(channels=["studio"])
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{live.url}{path}", headers=headers, data=body) as response:
            reply = await response.json()
    assert response.status == status and says in reply["error"], reply


async def test_a_second_producer_is_refused_and_the_token_is_required(start_server: StartServer) -> None:
    live = await start_server(channels=["studio"], token=TOKEN)
    clip = shared_media(*CLIP)
    player = MediaPlayer(str(clip))
    with pytest.raises(AssertionError, match="401"):
        await whip_publish(live.url, "studio", [PacedAudio(player.audio)])
    producer, url = await whip_publish(live.url, "studio", [PacedAudio(player.audio)], token=TOKEN)
    try:
        second = MediaPlayer(str(clip))
        with pytest.raises(AssertionError, match="409.*already has a producer"):
            await whip_publish(live.url, "studio", [PacedAudio(second.audio)], token=TOKEN)
        second.audio.stop()
        received = Received()
        with pytest.raises(AssertionError, match="401"):
            await whep_play(live.url, "studio", received)
        async with aiohttp.ClientSession() as http:
            async with http.delete(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 200
    finally:
        await producer.close()
        player.audio.stop()
