"""HTTP routes: signalling, backends, avatars, health, metrics, live stats, and the web client."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web

from engines.base import DEFAULT_EMOTION, DEFAULT_MOUTH_GAIN, EMOTIONS, MOTIONS, MOUTH_GAIN_RANGE
from engines.registry import BackendRegistry
from engines import features
from stream_server import metrics, whip
from stream_server.config import FPS_CHOICES, Settings
from stream_server.http_errors import ApiError, error_response
from engines.images import DEFAULT_FRAMING, FRAMINGS
from stream_server.heap import collect_garbage
from stream_server.hub import SERVER, Server
from stream_server.opening import open_or_refuse
from stream_server.options import OptionError, parse_options
from stream_server.security import HEALTH_PATH, cors_middleware, token_middleware
from stream_server.enrolments import VIDEO_TYPES, EnrolmentError, is_video
from stream_server.session import Session
from stream_server.uploads import UploadError, check_name, decode_upload, require_face

log = logging.getLogger(__name__)

WEB_CLIENT = Path(__file__).resolve().parents[1] / "web_client"
STATS_INTERVAL_S = 0.5


# -- middleware ------------------------------------------------------------------------------
@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """API errors are JSON with a readable ``error``; nothing unexpected reaches the client raw."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SERVER].settings.max_body_bytes
        return error_response(413, f"request body too large: the limit is {limit} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal server error; the server log has the details")


# -- routes ----------------------------------------------------------------------------------
async def offer(request: web.Request) -> web.Response:
    server: Server = request.app[SERVER]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error_response(400, "the body must be JSON: {\"sdp\": ..., \"type\": \"offer\", \"options\": {...}}")
    if not isinstance(body, dict):
        return error_response(400, "the body must be a JSON object with sdp, type and options")
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer":
        return error_response(400, f"type must be \"offer\", got {kind!r}", ["offer"])
    if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
        return error_response(400, "sdp must be a session description (text starting with \"v=0\")")
    if "\nm=" not in sdp:
        return error_response(400, "the SDP has no media sections (m= lines): send the offer of a peer connection with a video transceiver")
    try:
        options = parse_options(body.get("options"), server.settings, server.avatars, server.registry)
    except OptionError as exc:
        return error_response(400, str(exc), exc.valid)
    session, answer = await open_or_refuse(
        server, sdp, options, f"avatar {options.avatar!r} cannot be used with {options.backend}"
    )
    return web.json_response(
        {
            "sdp": answer.sdp,
            "type": answer.type,
            "session_id": session.id,
            "options": options.to_json(),
            "notice": session.avatar.notice,
        }
    )


async def delete_session(request: web.Request) -> web.Response:
    server: Server = request.app[SERVER]
    session = server.sessions.get(request.match_info["session_id"])
    if session is None:
        return error_response(404, "no such session (it may have ended already)")
    await session.close("closed by the client")
    return web.json_response({"closed": session.id})


async def backends(request: web.Request) -> web.Response:
    server: Server = request.app[SERVER]
    infos = await asyncio.to_thread(server.registry.infos)
    body: dict[str, Any] = {"default": server.settings.backend, "backends": [i.to_json() for i in infos]}
    if server.auto is not None:
        body["auto"] = server.auto.to_json()
    return web.json_response(body)


async def avatars(request: web.Request) -> web.Response:
    server: Server = request.app[SERVER]
    listed = [server.avatars.source(name).to_json() for name in server.avatars.names()]
    return web.json_response({"default": server.settings.avatar, "avatars": listed})


async def avatar_thumbnail(request: web.Request) -> web.Response:
    server: Server = request.app[SERVER]
    name = request.match_info["name"]
    if name not in server.avatars.names() or server.avatars.source(name).kind != "image":
        return error_response(404, f"no image avatar named {name!r}", server.avatars.names())
    jpeg = await asyncio.to_thread(server.avatars.thumbnail_jpeg, name)
    return web.Response(body=jpeg, content_type="image/jpeg")


async def config(request: web.Request) -> web.Response:
    server: Server = request.app[SERVER]
    return web.json_response(
        {
            "fps_choices": list(FPS_CHOICES),
            "default_fps": server.settings.fps,
            "ice_servers": server.settings.ice_servers,
            "token_required": bool(server.settings.token),
            "max_sessions": server.settings.max_sessions,
            "max_upload_bytes": server.settings.max_upload_bytes,
            "mouth_gain": {"default": DEFAULT_MOUTH_GAIN, "min": MOUTH_GAIN_RANGE[0], "max": MOUTH_GAIN_RANGE[1]},
            "emotion": {"default": DEFAULT_EMOTION, "choices": list(EMOTIONS)},
            "framing": {"default": DEFAULT_FRAMING, "choices": list(FRAMINGS)},
            "motion": {"default": None, "choices": list(MOTIONS)},
        }
    )


async def healthz(request: web.Request) -> web.Response:
    """Liveness and load, for probes and load balancers (answered without the token). With
    ``?ready=1`` a server with no free session slot answers 503: a balancer's health check
    then stops sending it new sessions, while its sessions' follow-ups still reach it."""
    server: Server = request.app[SERVER]
    free = server.free_slots()
    full = request.query.get("ready") == "1" and free == 0
    return web.json_response(
        {"status": "full" if full else "ok", "instance": server.settings.instance,
         "sessions": len(server.sessions), "max_sessions": server.settings.max_sessions, "free": free,
         "loop_lag_ms": round(server.loop_lag.worst_s() * 1000, 1)},
        status=503 if full else 200,
    )


async def metrics_route(request: web.Request) -> web.Response:
    server: Server = request.app[SERVER]
    metrics.SESSIONS.set(len(server.sessions))
    for session in server.sessions.values():
        fps = session.ledger.stats.fps_out()
        metrics.FPS_OUT.labels(session.id).set(fps or 0.0)
    metrics.LOOP_LAG.set(server.loop_lag.worst_s())
    return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")


async def stats_socket(request: web.Request) -> web.StreamResponse:
    """Pushes the session's stats twice a second, its events as they happen, then why it closed."""
    server: Server = request.app[SERVER]
    session = server.sessions.get(request.query.get("session", ""))
    if session is None:
        return error_response(404, "no such session: open /ws/stats?session=<session_id from /offer>")
    socket = web.WebSocketResponse(heartbeat=10.0)
    await socket.prepare(request)
    reader = asyncio.create_task(_read_changes(socket, session))
    closed = asyncio.create_task(session.closed.wait())
    sent_events = 0
    try:
        while not socket.closed and not session.closed.is_set():
            new = session.events_total - sent_events
            for message in list(session.events)[-new:] if new > 0 else []:
                await socket.send_json({"type": "event", "message": message})
            sent_events = session.events_total
            await socket.send_json(session.snapshot())
            await asyncio.wait([reader, closed], timeout=STATS_INTERVAL_S, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                break
        if session.closed.is_set() and not socket.closed:
            await socket.send_json({"type": "closed", "reason": session.close_reason})
    except (ConnectionError, RuntimeError):
        pass  # the page went away
    finally:
        reader.cancel()
        closed.cancel()
        await socket.close()
    return socket


async def _read_changes(socket: web.WebSocketResponse, session: Session) -> None:
    """Read what the page sends: ``{"type": "expression", "emotion": ..., "emotion_intensity": ...,
    "mouth_gain": ...}`` changes the running stream's expression (answered with the expression in
    force, or an error with the valid values); anything else is ignored. A close is noticed."""
    async for message in socket:
        if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break
        if message.type != WSMsgType.TEXT:
            continue
        try:
            change = json.loads(message.data)
        except ValueError:
            change = None
        if not isinstance(change, dict) or change.get("type") != "expression":
            continue
        change.pop("type")
        try:
            expression = session.set_expression(change)
        except OptionError as exc:
            await socket.send_json({"type": "error", "error": str(exc), "valid": exc.valid})
        else:
            await socket.send_json({"type": "expression", **dataclasses.asdict(expression)})


async def upload_avatar(request: web.Request) -> web.Response:
    """``POST /avatars?name=NAME`` with an image file as the body: a new avatar (kept in memory);
    with a video (``Content-Type: video/...``): the enrolment of that person starts (202), its
    progress at ``GET /avatars/NAME/enrolment``."""
    server: Server = request.app[SERVER]
    if request.content_type.startswith(VIDEO_TYPES):
        return await _enrol_upload(request, server)
    try:
        name = check_name(request.query.get("name", "upload"))
        data = await _read_upload(request, server.settings.max_upload_bytes, "upload")
        rgb = await asyncio.to_thread(decode_upload, data, server.settings.max_upload_pixels)
        await asyncio.to_thread(require_face, rgb)
    except UploadError as exc:
        return error_response(exc.status, str(exc), exc.valid)
    name, forgotten = server.avatars.add_upload(name, rgb)
    for old in forgotten:
        server.forget_avatar(old)
    return web.json_response(
        {"avatar": server.avatars.source(name).to_json(), "width": rgb.shape[1], "height": rgb.shape[0]}, status=201
    )


async def _read_upload(request: web.Request, limit: int, what: str) -> bytes:
    """The body, refused (413) past ``limit`` bytes before or while it is read."""
    if request.content_length is not None and request.content_length > limit:
        raise UploadError(413, f"the {what} is {request.content_length} bytes; the limit is {limit}")
    # read(n) returns what has arrived so far, not the whole body: a browser sends a file in
    # several pieces, so the pieces are gathered until the end of the body
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"the {what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _enrol_upload(request: web.Request, server: Server) -> web.Response:
    try:
        name = check_name(request.query.get("name", "upload"))
        data = await _read_upload(request, server.settings.max_video_bytes, "video")
        if not is_video(data[:12]):
            raise UploadError(415, "that is not a video file (MP4, MOV, WebM or AVI)")
        if name in server.avatars.names() and not server.avatars.source(name).enrolled:
            raise UploadError(409, f"an avatar named {name!r} exists and is not an enrolled one: pick another name")
        job = server.enrolments.start(name, data)
    except UploadError as exc:
        return error_response(exc.status, str(exc), exc.valid)
    except EnrolmentError as exc:
        return error_response(exc.status, str(exc))
    return web.json_response({**job.to_json(), "url": f"/avatars/{name}/enrolment"}, status=202)


async def enrolment(request: web.Request) -> web.Response:
    """``GET``: an enrolment's state and progress; ``DELETE``: cancel it."""
    server: Server = request.app[SERVER]
    job = server.enrolments.get(request.match_info["name"])
    if job is None:
        return error_response(404, f"no enrolment of {request.match_info['name']!r}: POST a video to /avatars?name=NAME")
    if request.method == "DELETE":
        job.cancel.set()
    return web.json_response(job.to_json())


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_CLIENT / "index.html")


def create_app(settings: Settings, registry: BackendRegistry | None = None) -> web.Application:
    middlewares = [cors_middleware(settings.cors_origins)]
    if settings.token:
        middlewares.append(token_middleware(settings.token))
    middlewares.append(json_errors)
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares)
    server = Server(settings, registry)
    app[SERVER] = server
    app.router.add_post("/offer", offer)
    app.router.add_delete("/sessions/{session_id}", delete_session)
    app.router.add_get("/backends", backends)
    app.router.add_get("/avatars", avatars)
    app.router.add_post("/avatars", upload_avatar)
    app.router.add_get("/avatars/{name}.jpg", avatar_thumbnail)
    app.router.add_get("/avatars/{name}/enrolment", enrolment)
    app.router.add_delete("/avatars/{name}/enrolment", enrolment)
    app.router.add_get("/config", config)
    app.router.add_get(HEALTH_PATH, healthz)
    app.router.add_get("/metrics", metrics_route)
    app.router.add_get("/ws/stats", stats_socket)
    whip.add_routes(app)
    for name in settings.channels:
        server.create_channel(name)
    app.router.add_get("/", index)
    app.router.add_static("/", WEB_CLIENT, show_index=False)

    async def on_startup(app: web.Application) -> None:
        # every session's log-mel needs librosa's filters, and librosa's first import takes ~2 s:
        # built here, off the loop, the first session does not stall every other one for it
        await asyncio.to_thread(features.mel_filterbank)
        collect_garbage(idle=True)  # what start-up made lives as long as the server: later collections skip it
        server.start_background()

    async def on_shutdown(app: web.Application) -> None:
        await server.shutdown()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app
