"""Every route, fed bad input: each gets the right 4xx and a clear message, while a normal
session streaming alongside is unaffected."""

from __future__ import annotations

import asyncio
import re
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

import aiohttp
import cv2
import numpy as np

from benchmarks.synthetic_peer import PeerRun, run_peer
from stream_server.avatars import BUNDLED
from tests.conftest import StartServer, offer_sdp

UPLOAD_LIMIT = 200 * 1024


def only_codec(sdp: str, kind: str, codec: str) -> str:
    """The offer with ``kind``'s codecs replaced by one the server does not have."""
    out, section = [], ""
    for line in sdp.splitlines():
        if line.startswith("m="):
            section = line[2:].split()[0]
            if section == kind:
                line = re.sub(r"^(m=\S+ \S+ \S+) .*$", r"\1 120", line)
        elif section == kind and line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            continue
        elif section == kind and line.startswith("a=mid:"):
            out.append(line)
            out.append(f"a=rtpmap:120 {codec}")
            continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(image: np.ndarray, ext: str = ".png") -> bytes:
    return cv2.imencode(ext, image)[1].tobytes()


def gif(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="GIF")
    return out.getvalue()


@dataclass
class Case:
    name: str
    method: str
    path: str
    status: int
    message: str
    json: Any = None
    data: bytes | None = None
    valid: list[Any] | None = None


async def cases() -> list[Case]:
    offer = await offer_sdp()
    video_only = await offer_sdp(audio=False)
    gradient = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    face = BUNDLED["astronaut"].read_bytes()
    assert len(face) < UPLOAD_LIMIT
    body = lambda options: {"sdp": offer, "type": "offer", "options": options}  # noqa: E731
    return [
        # POST /offer: the body
        Case("malformed JSON", "POST", "/offer", 400, "must be JSON", data=b'{"sdp": '),
        Case("not an object", "POST", "/offer", 400, "JSON object", json=[offer]),
        Case("sdp of the wrong type", "POST", "/offer", 400, "sdp must be a session description", json={"sdp": 42, "type": "offer"}),
        Case("type missing", "POST", "/offer", 400, 'type must be "offer"', json={"sdp": offer}, valid=["offer"]),
        Case("huge body", "POST", "/offer", 413, "request body too large", data=b"{" + b" " * 400_000 + b"}"),
        Case("SDP garbage", "POST", "/offer", 400, "the offer could not be applied", json={"sdp": "v=0\r\nm=video garbage\r\n", "type": "offer"}),
        Case("SDP without media", "POST", "/offer", 400, "no media sections", json={"sdp": "v=0\r\ns=-\r\n", "type": "offer"}),
        Case("unsupported video codec", "POST", "/offer", 400, "could not be applied", json={"sdp": only_codec(offer, "video", "H265/90000"), "type": "offer"}),
        Case("audio-only offer", "POST", "/offer", 400, "no video section", json={"sdp": await offer_sdp(video=False), "type": "offer"}),
        # POST /offer: the options
        Case("options of the wrong type", "POST", "/offer", 400, "options must be a JSON object", json=body(["mesh"])),
        Case("unknown option", "POST", "/offer", 400, "unknown option(s) volume", json=body({"volume": 11})),
        Case("unknown backend", "POST", "/offer", 400, "unknown backend 'wav2lip'", json=body({"backend": "wav2lip"})),
        Case("backend of the wrong type", "POST", "/offer", 400, "unknown backend 42", json=body({"backend": 42})),
        Case("unknown avatar", "POST", "/offer", 400, "unknown avatar 'nobody'", json=body({"avatar": "nobody"})),
        Case("path traversal in the avatar", "POST", "/offer", 400, "unknown avatar '../../etc/passwd'", json=body({"avatar": "../../etc/passwd"})),
        Case("absolute path as the avatar", "POST", "/offer", 400, "unknown avatar", json=body({"avatar": "/etc/passwd"})),
        Case("fps of the wrong type", "POST", "/offer", 400, "fps must be a whole number", json=body({"fps": "25"}), valid=[1, 60]),
        Case("fps out of range", "POST", "/offer", 400, "fps must be from 1 to 60", json=body({"fps": 1000})),
        Case("fractional width", "POST", "/offer", 400, "width must be a whole number", json=body({"width": 100.5, "height": 100})),
        Case("huge size", "POST", "/offer", 400, "width must be from 64 to 1920", json=body({"width": 100000, "height": 100000})),
        # POST /avatars (upload)
        Case("upload: not an image", "POST", "/avatars", 415, "not an image", data=b"%PDF-1.4 this is not a picture"),
        Case("upload: empty", "POST", "/avatars", 400, "the upload is empty", data=b""),
        Case("upload: no face", "POST", "/avatars", 422, "no face was found", data=encoded(gradient)),
        Case("upload: too many pixels", "POST", "/avatars", 413, "5000x5000 = 25000000 pixels: the limit is 16777216", data=png_header_claiming(5000, 5000)),
        Case("upload: decompression bomb", "POST", "/avatars", 413, "the limit is 16777216 pixels", data=png_header_claiming(60000, 60000)),
        Case("upload: too many bytes", "POST", "/avatars", 413, "limit", data=b"\xff\xd8" + b"\0" * (UPLOAD_LIMIT + 10)),
        Case("upload: too small", "POST", "/avatars", 422, "too small", data=encoded(gradient[:32, :32])),
        Case("upload: GIF", "POST", "/avatars", 415, "GIF images are not accepted", data=gif(gradient)),
        Case("upload: truncated PNG", "POST", "/avatars", 415, "could not be decoded", data=encoded(gradient)[:400]),
        Case("upload: path traversal in the name", "POST", "/avatars?name=../../etc/passwd", 400, "is not allowed", data=face),
        Case("upload: name too long", "POST", "/avatars?name=" + "a" * 40, 400, "is not allowed", data=face),
        # the other routes
        Case("delete an unknown session", "DELETE", "/sessions/deadbeef", 404, "no such session"),
        Case("stats of an unknown session", "GET", "/ws/stats?session=../x", 404, "no such session"),
        Case("stats without a session", "GET", "/ws/stats", 404, "no such session"),
        Case("thumbnail of an unknown avatar", "GET", "/avatars/nobody.jpg", 404, "no image avatar named 'nobody'"),
        Case("thumbnail outside the avatars", "GET", "/avatars/..%2F..%2Fetc%2Fpasswd.jpg", 404, "no image avatar"),
        Case("thumbnail of the camera", "GET", "/avatars/camera.jpg", 404, "no image avatar"),
        Case("wrong method on /offer", "PUT", "/offer", 405, "Method Not Allowed"),
        Case("wrong method on /backends", "POST", "/backends", 405, "Method Not Allowed"),
        # and the good ones, so the table shows the line between them
        Case("upload: a real portrait", "POST", "/avatars?name=portrait", 201, ""),
        Case("video-only offer", "POST", "/offer", 200, "", json={"sdp": video_only, "type": "offer", "options": {"backend": "passthrough"}}),
    ]


async def test_bad_input_to_every_route_gets_a_clear_4xx_while_a_session_streams(start_server: StartServer) -> None:
    live = await start_server(max_upload_bytes=UPLOAD_LIMIT, max_sessions=3)
    table = await cases()
    bystander = PeerRun()
    streaming = asyncio.create_task(run_peer(live.url, 1.0e9, {"backend": "passthrough", "avatar": "camera"}, run=bystander, size=(96, 96)))
    while not bystander.session_id:
        assert not streaming.done(), streaming.exception() if streaming.done() else None
        await asyncio.sleep(0.05)
    session = live.server.sessions[bystander.session_id]
    await asyncio.sleep(1.0)
    before = len(bystander.video_arrivals)
    started = time.monotonic()
    problems = []
    async with aiohttp.ClientSession() as http:
        for case in table:
            data = case.data if case.json is None and case.name != "upload: a real portrait" else None
            if case.name == "upload: a real portrait":
                data = BUNDLED["astronaut"].read_bytes()
            async with http.request(case.method, f"{live.url}{case.path}", json=case.json, data=data) as response:
                try:
                    reply = await response.json()
                except aiohttp.ContentTypeError:
                    reply = {"error": f"not JSON: {(await response.text())[:80]!r}"}
            if response.status != case.status or case.message not in reply.get("error", ""):
                problems.append(f"{case.name}: {response.status} {reply} (expected {case.status} with {case.message!r})")
            elif case.valid is not None and reply.get("valid") != case.valid:
                problems.append(f"{case.name}: valid {reply.get('valid')} (expected {case.valid})")
            if case.name == "video-only offer" and response.status == 200:
                async with http.delete(f"{live.url}/sessions/{reply['session_id']}") as done:
                    assert done.status == 200
            if case.name == "upload: a real portrait" and response.status == 201:
                assert reply["avatar"] == {"name": "portrait", "kind": "image", "url": "/avatars/portrait.jpg", "enrolled": False}
                async with http.get(f"{live.url}/avatars/portrait.jpg") as thumb:
                    assert thumb.status == 200 and thumb.content_type == "image/jpeg"
    elapsed = time.monotonic() - started
    await asyncio.sleep(1.0)
    received = len(bystander.video_arrivals) - before
    gaps = np.diff(bystander.video_arrivals[before:])
    streaming.cancel()
    await asyncio.gather(streaming, return_exceptions=True)
    assert not problems, "\n".join(problems)
    # the bystander streamed on through all of it: no failure, no stall, still open
    print(f"{len(table)} bad calls in {elapsed:.1f} s; the bystander received {received} frames, longest gap {gaps.max() * 1000:.0f} ms")
    assert not session.closed.is_set() or session.close_reason == "closed by the client"
    assert session.pipeline.scheduler.counts.failed == 0 and not session.fallbacks
    # (loosely: on a 2-core machine shared with other work, frames come late now and then)
    assert received >= 10 * (elapsed + 1.0) and gaps.max() < 2.0
