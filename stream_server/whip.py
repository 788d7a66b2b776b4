"""Channels over HTTP: WHIP ingest (RFC 9725), WHEP playback, the channel API, recording, events,
and the viewer page.

WHIP: ``POST /whip/{channel}`` with an ``application/sdp`` offer -> ``201 Created``, the answer,
and a ``Location`` to ``DELETE`` when done. WHEP: the same at ``/whep/{channel}`` for viewers.
ICE candidates are all in the answer (aiortc gathers before answering), so there is no trickle:
``PATCH`` gets 405. With a token configured, clients send it as ``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import RTCSessionDescription

from stream_server.channels import Channel, ChannelTrack
from stream_server.http_errors import ApiError, error_response
from stream_server.hub import SERVER, Server
from stream_server.ids import new_id
from stream_server.opening import open_or_refuse
from stream_server.options import OptionError
from stream_server.recording import Recorder
from stream_server.session import peer_connection

log = logging.getLogger(__name__)

SDP = "application/sdp"
VIEW_PAGE = Path(__file__).resolve().parents[1] / "web_client" / "view.html"


def _server(request: web.Request) -> Server:
    return request.app[SERVER]


def _channel(request: web.Request) -> Channel:
    """The channel the path names; raises a 404 ApiError listing the channels there are."""
    server = _server(request)
    name = request.match_info["channel"]
    channel = server.channels.get(name)
    if channel is None:
        raise ApiError(404, f"no channel {name!r}: create it with POST /channels or serve --channel {name}", sorted(server.channels))
    return channel


async def _channel_and_offer(request: web.Request) -> tuple[Channel, str]:
    """The channel a WHIP / WHEP POST names and its SDP offer; raises ApiError for either."""
    channel = _channel(request)
    return channel, await _offer_text(request)


async def _offer_text(request: web.Request) -> str:
    if request.content_type != SDP:
        raise ApiError(415, f"the offer must be sent as Content-Type: {SDP} (got {request.content_type or 'none'})")
    sdp = await request.text()
    if not sdp.lstrip().startswith("v=0") or "\nm=" not in sdp:
        raise ApiError(400, "the body must be an SDP offer (text starting with v=0, with media sections)")
    return sdp


def _created(answer: str, location: str) -> web.Response:
    return web.Response(status=201, text=answer, content_type=SDP, headers={"Location": location, "ETag": f'"{location.rsplit("/", 1)[1]}"'})


# -- WHIP: the producer ----------------------------------------------------------------------
async def whip_post(request: web.Request) -> web.Response:
    channel, sdp = await _channel_and_offer(request)
    if channel.producer is not None:
        return error_response(409, f"channel {channel.name!r} already has a producer; DELETE its resource "
                                   f"(/whip/{channel.name}/{channel.producer_resource}) or wait for it to end")
    session, answer = await open_or_refuse(
        _server(request), sdp, channel.options, "the channel's avatar cannot be used", send_back=False
    )
    if channel.producer is not None:  # another producer won the race while this one was answered
        await session.close("the channel got another producer first")
        return error_response(409, f"channel {channel.name!r} already has a producer")
    resource = new_id(_server(request).settings.instance)
    channel.attach(session, resource)
    asyncio.create_task(_detach_when_closed(channel, session))
    log.info("channel %s: producer %s connected (session %s)", channel.name, resource, session.id)
    return _created(answer.sdp, f"/whip/{channel.name}/{resource}")


async def _detach_when_closed(channel: Channel, session: Any) -> None:
    await session.closed.wait()
    if channel.producer is session:
        await channel.detach(f"producer ended: {session.close_reason}")


async def whip_delete(request: web.Request) -> web.Response:
    channel = _channel(request)
    resource = request.match_info["resource"]
    if channel.producer_resource != resource:
        return error_response(404, f"no producer {resource!r} on channel {channel.name!r}")
    await channel.detach("the producer ended the stream")
    return web.Response(status=200)


async def no_trickle(request: web.Request) -> web.Response:
    return error_response(405, "trickle ICE and ICE restarts are not supported: all candidates are in the answer",
                  headers={"Allow": "POST, DELETE" if "resource" not in request.match_info else "DELETE"})


# -- WHEP: the viewers -----------------------------------------------------------------------
async def whep_post(request: web.Request) -> web.Response:
    channel, sdp = await _channel_and_offer(request)
    server = _server(request)
    if len(channel.viewers) >= server.settings.max_viewers:
        return error_response(503, f"channel {channel.name!r} has its maximum of {server.settings.max_viewers} viewers",
                      headers={"Retry-After": str(server.settings.retry_after_s)})
    pc = peer_connection(server.settings.ice_servers)
    subscriber = channel.subscribe()
    resource = new_id(_server(request).settings.instance)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        kinds = {t.kind for t in pc.getTransceivers()}
        if "video" not in kinds:
            raise ValueError("the offer has no video section: add a receive-only video transceiver")
        for kind in ("video", "audio"):
            if kind in kinds:
                pc.addTrack(ChannelTrack(kind, subscriber))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        channel.unsubscribe(subscriber)
        await pc.close()
        return error_response(400, f"the offer could not be answered: {exc or type(exc).__name__}")
    channel.viewers[resource] = (pc, subscriber)

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            await _drop_viewer(channel, resource)

    return _created(pc.localDescription.sdp, f"/whep/{channel.name}/{resource}")


async def _drop_viewer(channel: Channel, resource: str) -> None:
    viewer = channel.viewers.pop(resource, None)
    if viewer is not None:
        pc, subscriber = viewer
        channel.unsubscribe(subscriber)
        await pc.close()


async def whep_delete(request: web.Request) -> web.Response:
    channel = _channel(request)
    resource = request.match_info["resource"]
    if resource not in channel.viewers:
        return error_response(404, f"no viewer {resource!r} on channel {channel.name!r}")
    await _drop_viewer(channel, resource)
    return web.Response(status=200)


# -- the channel API -------------------------------------------------------------------------
async def list_channels(request: web.Request) -> web.Response:
    return web.json_response([c.describe() for c in _server(request).channels.values()])


async def create_channel(request: web.Request) -> web.Response:
    server = _server(request)
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, 'the body must be JSON: {"name": ..., "options": {"backend", "avatar", "fps"}}')
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return error_response(400, 'the body must be a JSON object: {"name": ..., "options": {...}}')
    try:
        channel = server.create_channel(body["name"], body.get("options"))
    except OptionError as exc:
        return error_response(400, str(exc), exc.valid)
    except ValueError as exc:
        return error_response(409, str(exc))
    return web.json_response(channel.describe(), status=201, headers={"Location": f"/channels/{channel.name}"})


async def delete_channel(request: web.Request) -> web.Response:
    channel = _channel(request)
    await _server(request).remove_channel(channel.name)
    return web.json_response({"deleted": channel.name})


async def start_recording(request: web.Request) -> web.Response:
    channel = _channel(request)
    if channel.recorder is not None:
        return error_response(409, f"channel {channel.name!r} is already recording to {channel.recorder.path.name}")
    directory = _server(request).settings.recordings_dir
    path = directory / f"{channel.name}-{time.strftime('%Y%m%d-%H%M%S')}.mp4"
    channel.recorder = Recorder(path, channel.options.fps)
    channel.notify({"type": "recording", "recording": True, "file": path.name})
    return web.json_response({"recording": True, "file": str(path)}, status=201)


async def stop_recording(request: web.Request) -> web.Response:
    channel = _channel(request)
    recorder, channel.recorder = channel.recorder, None
    if recorder is None:
        return error_response(404, f"channel {channel.name!r} is not recording")
    seconds = await recorder.stop()
    channel.notify({"type": "recording", "recording": False, "file": recorder.path.name})
    if recorder.error:
        return error_response(500, f"the recording failed: {recorder.error}")
    return web.json_response({"recording": False, "file": str(recorder.path), "seconds": round(seconds, 1), "frames_lost": recorder.dropped})


# -- egress: the channel published to a WHIP endpoint (an SFU) -----------------------------------
EGRESS_BODY = '{"url": "https://sfu.example/whip/NAME", "token": "bearer token, if the endpoint needs one"}'


async def start_egress(request: web.Request) -> web.Response:
    channel = _channel(request)
    try:
        body = await request.json()
    except ValueError:
        return error_response(400, f"the body must be JSON: {EGRESS_BODY}")
    if not isinstance(body, dict) or "url" not in body:
        return error_response(400, f"give the WHIP endpoint's URL: {EGRESS_BODY}")
    token = body.get("token")
    if token is not None and not isinstance(token, str):
        return error_response(400, '"token" must be a string (the bearer token), or left out')
    if channel.egress is not None:
        return error_response(409, f"channel {channel.name!r} already publishes to {channel.egress.url}; "
                                   f"DELETE /channels/{channel.name}/egress first")
    try:
        egress = _server(request).start_egress(channel, body["url"], token)
    except ValueError as exc:
        return error_response(400, str(exc))
    return web.json_response(egress.describe(), status=201, headers={"Location": f"/channels/{channel.name}/egress"})


async def get_egress(request: web.Request) -> web.Response:
    channel = _channel(request)
    if channel.egress is None:
        return error_response(404, f"channel {channel.name!r} is not published anywhere: POST /channels/{channel.name}/egress {EGRESS_BODY}")
    return web.json_response(channel.egress.describe())


async def stop_egress(request: web.Request) -> web.Response:
    channel = _channel(request)
    egress, channel.egress = channel.egress, None
    if egress is None:
        return error_response(404, f"channel {channel.name!r} is not published anywhere")
    await egress.stop()
    return web.json_response(egress.describe())


async def channel_events(request: web.Request) -> web.StreamResponse:
    channel = _channel(request)
    socket = web.WebSocketResponse(heartbeat=20)
    await socket.prepare(request)
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(64)
    channel.listeners.add(events)
    try:
        await socket.send_json({"type": "state", **channel.describe()})
        closed = asyncio.create_task(_until_closed(socket))
        while not closed.done():
            getter = asyncio.create_task(events.get())
            done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                await socket.send_json(getter.result())
            else:
                getter.cancel()
    finally:
        channel.listeners.discard(events)
    return socket


async def _until_closed(socket: web.WebSocketResponse) -> None:
    async for message in socket:
        if message.type == WSMsgType.ERROR:
            break


async def view_page(request: web.Request) -> web.StreamResponse:
    channel = _channel(request)
    return web.FileResponse(VIEW_PAGE)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/whip/{channel}", whip_post)
    app.router.add_patch("/whip/{channel}", no_trickle)
    app.router.add_delete("/whip/{channel}/{resource}", whip_delete)
    app.router.add_patch("/whip/{channel}/{resource}", no_trickle)
    app.router.add_post("/whep/{channel}", whep_post)
    app.router.add_delete("/whep/{channel}/{resource}", whep_delete)
    app.router.add_patch("/whep/{channel}/{resource}", no_trickle)
    app.router.add_get("/channels", list_channels)
    app.router.add_post("/channels", create_channel)
    app.router.add_delete("/channels/{channel}", delete_channel)
    app.router.add_post("/channels/{channel}/recording", start_recording)
    app.router.add_delete("/channels/{channel}/recording", stop_recording)
    app.router.add_post("/channels/{channel}/egress", start_egress)
    app.router.add_get("/channels/{channel}/egress", get_egress)
    app.router.add_delete("/channels/{channel}/egress", stop_egress)
    app.router.add_get("/ws/channels/{channel}", channel_events)
    app.router.add_get("/view/{channel}", view_page)
