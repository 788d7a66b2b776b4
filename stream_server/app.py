"""HTTP routes: signalling, backends, avatars, health, metrics, live stats, and the web client."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web
from aiortc import RTCSessionDescription

from engines.auto import AutoChoice, choose_backend
from engines import features
from engines.base import Avatar, AvatarError
from engines.images import fit_cover
from engines.registry import BackendRegistry
from stream_server import metrics, whip
from stream_server.avatars import BUNDLED, AvatarLibrary
from stream_server.config import FPS_CHOICES, Settings
from stream_server.loop_lag import LoopLag
from stream_server.options import OptionError, SessionOptions, parse_options
from stream_server.security import cors_middleware, token_middleware
from stream_server.session import OfferError, Replacement, Session, SessionLimits
from stream_server.uploads import UploadError, check_name, decode_upload, require_face
from stream_server.channels import CHANNEL_NAME, Channel
from stream_server.stages import TraceWriter
from stream_server.worker import BackendWorker

log = logging.getLogger(__name__)

WEB_CLIENT = Path(__file__).resolve().parents[1] / "web_client"
SERVER: web.AppKey["Server"] = web.AppKey("server")
STATS_INTERVAL_S = 0.5
WATCHDOG_INTERVAL_S = 0.25
MAX_PREPARED = 32  # prepared avatars kept (backend x avatar x size); the least recently used go


class CapacityError(RuntimeError):
    """The server runs as many sessions as it may; the message is shown to the user."""


def error(status: int, message: str, valid: list[Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if valid is not None:
        body["valid"] = valid
    return web.json_response(body, status=status)


class Server:
    """Everything shared by the sessions of one process: settings, avatars, loaded backends."""

    def __init__(self, settings: Settings, registry: BackendRegistry | None = None) -> None:
        self.settings = settings
        self.avatars = AvatarLibrary(settings.avatar_files, settings.max_uploads)
        self.registry = registry or BackendRegistry(BUNDLED["astronaut"])
        self.sessions: dict[str, Session] = {}
        self._opening = 0  # offers being answered (counted against max_sessions)
        self._workers: dict[str, BackendWorker] = {}
        self._prepared: collections.OrderedDict[tuple[str, str, int | None, int | None], Avatar] = collections.OrderedDict()
        self._load_lock = asyncio.Lock()
        self.trace = TraceWriter(settings.trace_file) if settings.trace_file else None
        self.channels: dict[str, Channel] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self.limits = SessionLimits(settings.idle_timeout_s, settings.max_session_s, settings.failures_before_fallback)
        self.auto: AutoChoice | None = None  # how --backend auto chose the default backend
        self.loop_lag = LoopLag()
        self._loop_lag_task: asyncio.Task[None] | None = None

    async def choose_auto_backend(self) -> None:
        """Resolve ``--backend auto`` once, at start-up: measure (or recall) and pick."""
        self.auto = await asyncio.to_thread(choose_backend, self.registry, self.settings.fps)
        self.settings.backend = self.auto.backend
        log.info("backend auto: %s", self.auto.reason)

    async def worker(self, backend: str) -> BackendWorker:
        """The backend's shared worker, loading the backend on first use (off the loop)."""
        async with self._load_lock:
            if backend not in self._workers:
                loaded = await asyncio.to_thread(self.registry.get, backend)
                self._workers[backend] = BackendWorker(loaded)
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch_workers(), name="backend-watchdog")
            return self._workers[backend]

    async def prepared_avatar(self, options: SessionOptions) -> Avatar:
        key = (options.backend, options.avatar, options.width, options.height)
        if key in self._prepared:
            self._prepared.move_to_end(key)
        else:
            worker = await self.worker(options.backend)
            image = self.avatars.image(options.avatar)
            if image is not None:  # the backend prepares the picture exactly as it will be sent
                assert options.width is not None and options.height is not None
                image = await asyncio.to_thread(fit_cover, image, options.width, options.height)
            self._prepared[key] = await asyncio.to_thread(worker.backend.prepare_avatar, options.avatar, image)
            while len(self._prepared) > MAX_PREPARED:
                self._prepared.popitem(last=False)
        return self._prepared[key]

    def forget_avatar(self, name: str) -> None:
        for key in [key for key in self._prepared if key[1] == name]:
            del self._prepared[key]

    def check_capacity(self) -> None:
        limit = self.settings.max_sessions
        if len(self.sessions) + self._opening >= limit:
            raise CapacityError(
                f"the server is full: it runs at most {limit} session{'s' if limit != 1 else ''} at once; "
                f"try again in about {self.settings.retry_after_s} s"
            )

    async def open_session(
        self, sdp: str, kind: str, options: SessionOptions, send_back: bool = True
    ) -> tuple[Session, RTCSessionDescription]:
        self.check_capacity()
        self._opening += 1
        try:
            worker = await self.worker(options.backend)
            avatar = await self.prepared_avatar(options)
            session = Session(
                options,
                worker.backend,
                worker,
                avatar,
                typical_fps=self.registry.info(options.backend).typical_fps,
                min_budget_s=self.settings.min_budget_ms / 1000.0,
                ice_servers=self.settings.ice_servers,
                limits=self.limits,
                fallback=self.fallback_for,
                trace=self.trace,
            )
            try:
                answer = await session.accept(sdp, kind, send_back)
            except BaseException:
                await session.close("offer rejected")
                raise
            self.sessions[session.id] = session
        finally:
            self._opening -= 1
        metrics.SESSIONS_TOTAL.inc()
        asyncio.create_task(self._forget_when_closed(session))
        return session, answer

    async def fallback_for(self, failed: str, options: SessionOptions) -> Replacement | None:
        """The first fallback backend (in settings order) that is not ``failed``, is available,
        loads, and accepts the session's avatar."""
        for name in self.settings.fallback_backends:
            if name == failed or self.registry.unavailable_reason(name):
                continue
            moved = dataclasses.replace(options, backend=name)
            try:
                worker = await self.worker(name)
                avatar = await self.prepared_avatar(moved)
            except (AvatarError, RuntimeError) as exc:
                log.warning("fallback %s cannot take over from %s: %s", name, failed, exc)
                continue
            return worker.backend, worker, avatar
        return None

    async def _watch_workers(self) -> None:
        """Give up a backend whose generate() has not returned within the hang limit: its jobs
        fail at once (their sessions move to the fallback) and it is listed as unavailable until
        the stuck call returns, if it ever does; then it is back in service for new sessions."""
        limit = self.settings.hang_timeout_s
        abandoned: dict[str, BackendWorker] = {}
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            for name, worker in list(abandoned.items()):
                if worker.busy_s() == 0.0:  # the stuck call came back
                    del abandoned[name]
                    self.registry.clear_failure(name)
            for name, worker in list(self._workers.items()):
                busy = worker.busy_s()
                if busy > limit:
                    reason = f"generate() did not return within {limit:g} s"
                    self.registry.mark_failed(name, f"hung: {reason}; unavailable until that call returns")
                    del self._workers[name]
                    for key in [key for key in self._prepared if key[0] == name]:
                        del self._prepared[key]
                    worker.abandon(f"backend {name} hung: {reason}")
                    abandoned[name] = worker

    async def _forget_when_closed(self, session: Session) -> None:
        await session.closed.wait()
        self.sessions.pop(session.id, None)

    # -- channels (stream_server/whip.py has their routes) ---------------------------------------
    def create_channel(self, name: str, raw_options: Any = None) -> Channel:
        """A new channel; raises OptionError for bad options, ValueError if the name is taken."""
        if not CHANNEL_NAME.match(name):
            raise OptionError(f"bad channel name {name!r}: use 1-64 letters, digits, - or _")
        if name in self.channels:
            raise ValueError(f"channel {name!r} exists already")
        options = parse_options(raw_options, self.settings, self.avatars, self.registry)
        self.channels[name] = Channel(name, options)
        return self.channels[name]

    async def remove_channel(self, name: str) -> None:
        channel = self.channels.pop(name, None)
        if channel is not None:
            await channel.close("the channel was deleted")

    def start_background(self) -> None:
        self._loop_lag_task = asyncio.create_task(self.loop_lag.run(), name="loop-lag")

    async def shutdown(self) -> None:
        if self._loop_lag_task is not None:
            self._loop_lag_task.cancel()
        await asyncio.gather(*(c.close("server shutting down") for c in list(self.channels.values())))
        await asyncio.gather(*(s.close("server shutting down") for s in list(self.sessions.values())))
        if self._watchdog is not None:
            self._watchdog.cancel()
        for worker in self._workers.values():
            worker.stop()
        if self.trace is not None:
            self.trace.close()


# -- middleware ------------------------------------------------------------------------------
@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """API errors are JSON with a readable ``error``; nothing unexpected reaches the client raw."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SERVER].settings.max_body_bytes
        return error(413, f"request body too large: the limit is {limit} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal server error; the server log has the details")


# -- routes ----------------------------------------------------------------------------------
async def offer(request: web.Request) -> web.Response:
    server: Server = request.app[SERVER]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error(400, "the body must be JSON: {\"sdp\": ..., \"type\": \"offer\", \"options\": {...}}")
    if not isinstance(body, dict):
        return error(400, "the body must be a JSON object with sdp, type and options")
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer":
        return error(400, f"type must be \"offer\", got {kind!r}", ["offer"])
    if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
        return error(400, "sdp must be a session description (text starting with \"v=0\")")
    if "\nm=" not in sdp:
        return error(400, "the SDP has no media sections (m= lines): send the offer of a peer connection with a video transceiver")
    try:
        options = parse_options(body.get("options"), server.settings, server.avatars, server.registry)
    except OptionError as exc:
        return error(400, str(exc), exc.valid)
    try:
        session, answer = await server.open_session(sdp, kind, options)
    except CapacityError as exc:
        response = error(503, str(exc))
        response.headers["Retry-After"] = str(server.settings.retry_after_s)
        return response
    except OfferError as exc:
        return error(400, str(exc))
    except AvatarError as exc:
        return error(422, f"avatar {options.avatar!r} cannot be used with {options.backend}: {exc}")
    except RuntimeError as exc:  # the backend failed to load
        return error(503, str(exc))
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
        return error(404, "no such session (it may have ended already)")
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
        return error(404, f"no image avatar named {name!r}", server.avatars.names())
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
        }
    )


async def healthz(request: web.Request) -> web.Response:
    server: Server = request.app[SERVER]
    return web.json_response(
        {"status": "ok", "sessions": len(server.sessions), "max_sessions": server.settings.max_sessions,
         "loop_lag_ms": round(server.loop_lag.worst_s() * 1000, 1)}
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
        return error(404, "no such session: open /ws/stats?session=<session_id from /offer>")
    socket = web.WebSocketResponse(heartbeat=10.0)
    await socket.prepare(request)
    reader = asyncio.create_task(_drain(socket))
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


async def _drain(socket: web.WebSocketResponse) -> None:
    """Read (and ignore) what the page sends, so a close from its side is noticed."""
    async for message in socket:
        if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


async def upload_avatar(request: web.Request) -> web.Response:
    """``POST /avatars?name=NAME`` with an image file as the body: a new avatar (kept in memory)."""
    server: Server = request.app[SERVER]
    limit = server.settings.max_upload_bytes
    try:
        name = check_name(request.query.get("name", "upload"))
        if request.content_length is not None and request.content_length > limit:
            raise UploadError(413, f"the upload is {request.content_length} bytes; the limit is {limit}")
        data = await request.content.read(limit + 1)
        if len(data) > limit:
            raise UploadError(413, f"the upload is over the limit of {limit} bytes")
        rgb = await asyncio.to_thread(decode_upload, data, server.settings.max_upload_pixels)
        await asyncio.to_thread(require_face, rgb)
    except UploadError as exc:
        return error(exc.status, str(exc), exc.valid)
    name, forgotten = server.avatars.add_upload(name, rgb)
    for old in forgotten:
        server.forget_avatar(old)
    return web.json_response(
        {"avatar": server.avatars.source(name).to_json(), "width": rgb.shape[1], "height": rgb.shape[0]}, status=201
    )


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
    app.router.add_get("/config", config)
    app.router.add_get("/healthz", healthz)
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
        server.start_background()

    async def on_shutdown(app: web.Application) -> None:
        await server.shutdown()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app
