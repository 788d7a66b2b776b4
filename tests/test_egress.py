"""Egress: a channel published over WHIP to another server. The endpoint here is the project's own
WHIP ingest (a second server in the test, whose channel takes the egress as its producer), so
these run anywhere; tests/test_janus_egress.py publishes to Janus."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp
import pytest
from aiortc.contrib.media import MediaPlayer

from benchmarks.peer import PacedAudio, Received, StampedVideo, loop_clip, read_stamp, whep_play, whip_publish
from stream_server.cli import egress_problem
from stream_server.config import Settings
from tests.conftest import Live, StartServer
from tests.media import shared_media

CLIP = ("video", "pcavs_vox2_00086.mp4")  # 224x224, 25 fps, 5.2 s of speech
CAMERA = {"backend": "passthrough", "avatar": "camera", "fps": 25, "width": 224, "height": 224}
TOKEN = "sfu-token"


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something true; AssertionError naming ``what`` if not in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, url, json=body, **kwargs) as response:
        return response.status, await response.json()


async def test_egress_publishes_reconnects_and_deletes_its_resource(start_server: StartServer, tmp_path: Path) -> None:
    """Server A's channel is published to server B's WHIP ingest: B's channel gets it as its
    producer and a WHEP viewer of B sees A's frames. B dropping the producer makes A reconnect;
    stopping the egress (the API, then deleting the channel) DELETEs the resource at B."""
    a, b = await start_server(), await start_server(token=TOKEN)
    a.server.create_channel("studio", CAMERA)
    relay = b.server.create_channel("relay", CAMERA)
    clip = await asyncio.to_thread(loop_clip, shared_media(*CLIP), 20.0, tmp_path)
    player = MediaPlayer(str(clip))
    producer, _ = await whip_publish(a.url, "studio", [PacedAudio(player.audio), StampedVideo(player.video)])
    egress_api = f"{a.url}/channels/studio/egress"
    target = {"url": f"{b.url}/whip/relay", "token": TOKEN}
    received = Received()
    viewer = None
    tasks: list[asyncio.Task[None]] = []
    try:
        async with aiohttp.ClientSession() as http:
            status, state = await call(http, "POST", egress_api, target)
            assert status == 201 and state["state"] == "connecting" and state["token"] is True, state
            assert TOKEN not in str(state)  # the token is never echoed
            status, again = await call(http, "POST", egress_api, target)
            assert status == 409 and "already publishes" in again["error"]
            egress = a.server.channels["studio"].egress
            await until(lambda: egress.state == "live" and relay.producer is not None, 15, "egress live at B")
            first = relay.producer_resource
            assert egress.resource == f"{b.url}/whip/relay/{first}"  # the Location, made absolute

            # B's viewers see A's channel: frames carrying the clip's stamps
            viewer, _, tasks = await whep_play(b.url, "relay", received, token=TOKEN)
            await until(lambda: len(received.video) >= 25, 15, "a second of video at B's viewer")
            assert any(read_stamp(rgb) > 0 for _, _, rgb in received.video)
            status, (listed,) = await call(http, "GET", f"{a.url}/channels")
            assert listed["egress"]["state"] == "live" and listed["encoders"] == 1  # the egress, encoded once
            assert listed["egress"]["frames_sent"]["video"] > 0

            # B drops the producer: A's egress goes again, to a new resource
            async with http.delete(f"{b.url}/whip/relay/{first}", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 200
            await until(lambda: egress.attempts == 2 and egress.state == "live" and relay.producer_resource not in (None, first),
                        20, "the egress reconnected")
            assert egress.error is None  # the failure is shown while retrying, cleared once live again

            # stopping DELETEs the resource: B's channel has no producer any more
            status, stopped = await call(http, "DELETE", egress_api)
            assert status == 200 and stopped["state"] == "stopped" and stopped["resource"] is None
            await until(lambda: relay.producer is None, 5, "B's producer gone after the DELETE")
            status, _ = await call(http, "GET", egress_api)
            assert status == 404

            # so does deleting the channel
            status, _ = await call(http, "POST", egress_api, target)
            assert status == 201
            await until(lambda: relay.producer is not None, 15, "the second egress live at B")
            status, _ = await call(http, "DELETE", f"{a.url}/channels/studio")
            assert status == 200
            await until(lambda: relay.producer is None, 5, "B's producer gone after the channel was deleted")
    finally:
        for task in tasks:
            task.cancel()
        if viewer is not None:
            await viewer.close()
        await producer.close()
        player.audio.stop()
        player.video.stop()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("not json", "must be JSON"),
        ({"token": "x"}, "give the WHIP endpoint's URL"),
        ({"url": "ftp://sfu.example/whip"}, "http:// or https://"),
        ({"url": "http:///whip"}, "no host"),
        ({"url": "http://sfu.example/whip", "token": 5}, '"token" must be a string'),
    ],
)
async def test_bad_egress_requests_get_400_with_a_message(start_server: StartServer, body: Any, says: str) -> None:
    live = await start_server(channels=["studio"])
    async with aiohttp.ClientSession() as http:
        kwargs = {"data": body} if isinstance(body, str) else {"json": body}
        async with http.post(f"{live.url}/channels/studio/egress", **kwargs) as response:
            reply = await response.json()
    assert response.status == 400 and says in reply["error"], reply
    assert live.server.channels["studio"].egress is None


async def wait_error(live: Live, channel: str) -> str:
    egress = live.server.channels[channel].egress
    await until(lambda: egress.state == "retrying", 20, "the egress retrying")
    return egress.error


async def test_an_endpoint_that_refuses_or_cannot_be_reached_is_retried_with_the_reason(start_server: StartServer) -> None:
    b = await start_server(token=TOKEN)
    b.server.create_channel("relay", CAMERA)
    # the endpoint's own words come back: a 404 (no such channel), a 401 (no token)
    a = await start_server()
    for name in ("wrong", "notoken"):
        a.server.create_channel(name, CAMERA)
    a.server.start_egress(a.server.channels["wrong"], f"{b.url}/whip/nowhere", TOKEN)
    a.server.start_egress(a.server.channels["notoken"], f"{b.url}/whip/relay")
    assert "answered 404" in (error := await wait_error(a, "wrong")) and "no channel 'nowhere'" in error, error
    assert "answered 401" in (error := await wait_error(a, "notoken")), error
    # serve --channel NAME --egress-whip URL: started with the server; nothing listens there
    c = await start_server(channels=["studio"], egress_whip="http://127.0.0.1:9/whip/studio")
    assert "cannot reach http://127.0.0.1:9/whip/studio" in (error := await wait_error(c, "studio")), error
    async with aiohttp.ClientSession() as http:
        status, state = await call(http, "GET", f"{c.url}/channels/studio/egress")
    assert status == 200 and state["state"] == "retrying" and state["retry_in_s"] is not None and state["attempts"] >= 1


def test_egress_on_the_command_line_needs_one_channel_and_an_http_url() -> None:
    assert egress_problem(Settings(channels=["a"], egress_whip="https://sfu.example/whip/a")) is None
    assert "exactly one --channel (got 2)" in egress_problem(Settings(channels=["a", "b"], egress_whip="https://x/whip"))
    assert "exactly one --channel (got 0)" in egress_problem(Settings(egress_whip="https://x/whip"))
    assert "http:// or https://" in egress_problem(Settings(channels=["a"], egress_whip="rtmp://x/live"))
    assert "needs --egress-whip" in egress_problem(Settings(channels=["a"], egress_token="t"))
