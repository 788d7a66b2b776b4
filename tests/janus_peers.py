"""The peers of tests/test_janus_egress.py, run inside the test's network namespace (where Janus is
reachable over the veth pair): ``python -m tests.janus_peers prepare|watch ...``.

``prepare`` waits for Janus and simple-whip-server and creates the WHIP endpoint that feeds the
VideoRoom. ``watch`` publishes a real clip to our server's channel over WHIP (the channel's
producer), waits for the channel's egress to be live in Janus, subscribes viewers through Janus's
HTTP API (VideoRoom subscribers, as Janus's own JavaScript client does), records what each
decodes, then stops the egress; it prints one JSON report for the test to judge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from benchmarks.peer import PacedAudio, Received, SenderTime, StampedVideo, av_offsets, loop_clip, output_fps, read_stamp, whip_publish
from benchmarks.peer.receive import audio_origin, record
from engines.media_io import load_audio

ROOM = 1234


async def until_ok(http: aiohttp.ClientSession, url: str, timeout: float) -> None:
    """Wait for ``url`` to answer 200 (a service starting up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer 200 within {timeout} s")
        await asyncio.sleep(0.2)


async def prepare(args: argparse.Namespace) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        await until_ok(http, f"{args.janus}/info", 20)
        await until_ok(http, f"{args.whip}/healthcheck", 20)
        endpoint = {"id": args.endpoint, "room": ROOM, "token": args.whip_token, "label": "lipsync channel"}
        async with http.post(f"{args.whip}/create", json=endpoint) as response:
            assert response.status == 200, f"creating the WHIP endpoint: {response.status} {await response.text()}"
    return {"endpoint": f"{args.whip}/endpoint/{args.endpoint}"}


class Janus:
    """One Janus session with one VideoRoom handle, over Janus's HTTP API (long polls for events)."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base
        self.session = self.handle = 0
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._poll: asyncio.Task[None] | None = None

    async def request(self, body: dict[str, Any], path: str = "") -> dict[str, Any]:
        async with self.http.post(f"{self.base}{path}", json={**body, "transaction": uuid.uuid4().hex}) as response:
            reply = await response.json()
        if reply.get("janus") == "error" or "error" in reply.get("plugindata", {}).get("data", {}):
            raise RuntimeError(f"Janus refused {body}: {reply}")
        return reply

    async def open(self) -> None:
        self.session = (await self.request({"janus": "create"}))["data"]["id"]
        self.handle = (await self.request({"janus": "attach", "plugin": "janus.plugin.videoroom"}, f"/{self.session}"))["data"]["id"]
        self._poll = asyncio.create_task(self._long_poll())

    async def message(self, body: dict[str, Any], jsep: dict[str, str] | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {"janus": "message", "body": body, **({"jsep": jsep} if jsep else {})}
        return await self.request(request, f"/{self.session}/{self.handle}")

    async def _long_poll(self) -> None:
        """Janus's events (the subscriber's offer, webrtcup...); the polls also keep the session alive."""
        while True:
            async with self.http.get(f"{self.base}/{self.session}?maxev=5", timeout=aiohttp.ClientTimeout(total=40)) as response:
                events = await response.json()
            for event in events if isinstance(events, list) else [events]:
                if event.get("janus") != "keepalive":
                    self.events.put_nowait(event)

    async def next_event(self, wanted: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = await asyncio.wait_for(self.events.get(), max(0.1, deadline - time.monotonic()))
            if event.get("janus") == wanted:
                return event

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
        try:
            await self.request({"janus": "destroy"}, f"/{self.session}")
        except (aiohttp.ClientError, RuntimeError):
            pass


async def publisher_feed(janus: Janus, timeout: float) -> int:
    """The id of the VideoRoom's publisher (our channel's egress), once it has published."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = await janus.message({"request": "listparticipants", "room": ROOM})
        feeds = [p["id"] for p in reply["plugindata"]["data"]["participants"] if p.get("publisher")]
        if feeds:
            return feeds[0]
        await asyncio.sleep(0.25)
    raise SystemExit(f"no publisher in the VideoRoom {ROOM} within {timeout} s: the channel's egress did not reach Janus")


async def subscribe(http: aiohttp.ClientSession, base: str, feed: int, received: Received) -> tuple[Janus, RTCPeerConnection, list[asyncio.Task[None]]]:
    """A VideoRoom subscriber to ``feed``: Janus offers, we answer with ``start``."""
    janus = Janus(http, base)
    await janus.open()
    await janus.message({"request": "join", "ptype": "subscriber", "room": ROOM, "streams": [{"feed": feed}]})
    offer = (await janus.next_event("event"))["jsep"]
    pc = RTCPeerConnection()
    tasks: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.create_task(record(track, received))))
    await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
    for transceiver in pc.getTransceivers():
        received.sender_time[transceiver.kind] = SenderTime(transceiver.receiver, 90000 if transceiver.kind == "video" else 48000)
    await pc.setLocalDescription(await pc.createAnswer())  # every candidate is in it: no trickle
    await janus.message({"request": "start", "room": ROOM}, {"type": "answer", "sdp": pc.localDescription.sdp})
    return janus, pc, tasks


def arrival_offsets(received: Received, clip: Path, clip_fps: float) -> np.ndarray:
    """A/V offset by arrival (s), per video frame: when the frame showing source instant s was
    decoded minus when the audio of s was (audio found in the stream by cross-correlation). It
    needs nothing from the SFU's RTCP, unlike :func:`av_offsets`."""
    first_pts = received.audio[0][1]
    pts = np.array([p for _, p, _ in received.audio])
    audio = np.zeros(int(pts[-1] - first_pts) + 960, np.float32)
    for _, p, samples in received.audio:
        audio[p - first_pts : p - first_pts + len(samples)] = samples
    origin = audio_origin(audio, first_pts, load_audio(clip, 48000), received, clip_fps)
    offsets = []
    for arrival, _, rgb in received.video:
        index = read_stamp(rgb)
        chunk = int(np.searchsorted(pts, origin + round(index / clip_fps * 48000), side="right")) - 1
        if index > 0 and 0 <= chunk < len(pts) - 1:
            offsets.append(arrival - received.audio[chunk][0])
    return np.asarray(offsets)


async def api(http: aiohttp.ClientSession, method: str, url: str, token: str) -> Any:
    async with http.request(method, url, headers={"Authorization": f"Bearer {token}"}) as response:
        return await response.json()


async def watch(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {}
    clip = loop_clip(Path(args.clip), args.seconds + 20, Path(args.workdir))
    player = MediaPlayer(str(clip))
    async with aiohttp.ClientSession() as http:
        await until_ok(http, f"{args.server}/healthz", 30)
        producer, _ = await whip_publish(args.server, args.channel, [PacedAudio(player.audio), StampedVideo(player.video)], token=args.token)
        probe = Janus(http, args.janus)
        await probe.open()
        feed = await publisher_feed(probe, 30)
        egress_api = f"{args.server}/channels/{args.channel}/egress"
        report["egress_live"] = await api(http, "GET", egress_api, args.token)
        viewers = [Received(keep_rows=16) for _ in range(args.viewers)]
        subscribed = [await subscribe(http, args.janus, feed, received) for received in viewers]
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        # what the channel encodes while the viewers watch: one outbound stream, the egress's
        report["channel"] = next(c for c in await api(http, "GET", f"{args.server}/channels", args.token) if c["name"] == args.channel)
        report["watched_s"] = time.monotonic() - started
        for janus, pc, tasks in subscribed:
            for task in tasks:
                task.cancel()
            await pc.close()
            await janus.close()
        report["egress_stopped"] = await api(http, "DELETE", egress_api, args.token)
        await asyncio.sleep(0.5)
        async with http.get(f"{args.whip}/endpoints") as response:  # did the DELETE reach the WHIP server?
            report["whip_endpoints_after"] = await response.json()
        await probe.close()
        await producer.close()
    player.audio.stop()
    player.video.stop()
    report["viewers"] = [measure(received, clip) for received in viewers]
    return report


def measure(received: Received, clip: Path) -> dict[str, Any]:
    """One viewer: frames and audio decoded, frame rate, stamps seen, A/V offsets."""
    out: dict[str, Any] = {"video_frames": len(received.video), "audio_frames": len(received.audio)}
    if len(received.video) > 25 and len(received.audio) > 50:
        out["fps"] = output_fps(received)
        out["audio_s"] = sum(len(s) for _, _, s in received.audio) / 48000
        out["stamps"] = sum(read_stamp(rgb) > 0 for _, _, rgb in received.video)
        arrival = arrival_offsets(received, clip, 25.0)
        out["av_arrival_ms"] = {"median": float(np.median(arrival)) * 1000, "p5": float(np.percentile(arrival, 5)) * 1000,
                                "p95": float(np.percentile(arrival, 95)) * 1000, "frames": len(arrival)}
        try:
            out["av_sender_reports_ms"] = float(np.median(av_offsets(received, clip, 25.0))) * 1000
        except (AssertionError, ValueError) as exc:
            out["av_sender_reports_ms"] = f"not measured: {exc}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.janus_peers")
    parser.add_argument("step", choices=["prepare", "watch"])
    parser.add_argument("--janus", required=True, help="Janus's HTTP API, http://IP:8088/janus")
    parser.add_argument("--whip", required=True, help="simple-whip-server's base, http://IP:7080/whip")
    parser.add_argument("--endpoint", default="lipsync")
    parser.add_argument("--whip-token", default="")
    parser.add_argument("--server", help="our server, http://IP:PORT")
    parser.add_argument("--token", default="")
    parser.add_argument("--channel", default="studio")
    parser.add_argument("--clip")
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--viewers", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    report = asyncio.run(prepare(args) if args.step == "prepare" else watch(args))
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
