"""The process hub: what the sessions of one server process share (settings, avatars, loaded
backends and their workers, prepared avatars, channels, the watchdog), and the capacity rule.

HTTP knows nothing in here: ``app.py`` and ``whip.py`` reach the hub through ``request.app[SERVER]``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCSessionDescription

from engines.auto import AutoChoice, choose_backend
from engines.base import Avatar, AvatarError
from engines.machine import gpus
from engines.registry import BackendRegistry
from stream_server import metrics
from stream_server.avatars import BUNDLED, AvatarLibrary
from stream_server.channels import CHANNEL_NAME, Channel
from stream_server.config import Settings
from stream_server.egress import Egress
from stream_server.enrolments import Enrolments
from stream_server.heap import collect_garbage, return_freed_memory
from stream_server.loop_lag import LoopLag
from stream_server.options import OptionError, SessionOptions, parse_options
from stream_server.session import Replacement, Session, SessionLimits
from stream_server.stages import TraceWriter
from stream_server.process_pool import ProcessWorkers
from stream_server.worker import BackendWorker

log = logging.getLogger(__name__)

SERVER: web.AppKey["Server"] = web.AppKey("server")
WATCHDOG_INTERVAL_S = 0.25
MAX_PREPARED = 32  # prepared avatars kept (backend x avatar x size); the least recently used go


class CapacityError(RuntimeError):
    """The server runs as many sessions as it may; the message is shown to the user."""


class Server:
    """Everything shared by the sessions of one process: settings, avatars, loaded backends."""

    def __init__(self, settings: Settings, registry: BackendRegistry | None = None) -> None:
        self.settings = settings
        self.avatars = AvatarLibrary(settings.avatar_files, settings.max_uploads, settings.avatars_dir)
        self.enrolments = Enrolments(on_done=self._enrolled, gpu=lambda: bool(gpus()[0]))
        self.registry = registry or BackendRegistry(BUNDLED["astronaut"])
        self.sessions: dict[str, Session] = {}
        self._opening = 0  # offers being answered (counted against max_sessions)
        self._workers: dict[str, BackendWorker | ProcessWorkers] = {}  # per loaded backend
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

    async def _loaded(self, backend: str) -> BackendWorker | ProcessWorkers:
        """The backend's worker (or worker processes), loading it on first use (off the loop).
        A CPU backend runs in ``settings.workers`` child processes; 0 keeps it in this one."""
        async with self._load_lock:
            if backend not in self._workers:
                loaded = await asyncio.to_thread(self.registry.get, backend)
                count = self.settings.worker_processes()
                if count and loaded.in_processes:
                    self._workers[backend] = await asyncio.to_thread(
                        ProcessWorkers, loaded, count, self.registry.calibration_portrait)
                else:
                    self._workers[backend] = BackendWorker(loaded)
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch_workers(), name="backend-watchdog")
            return self._workers[backend]

    async def worker(self, backend: str) -> BackendWorker:
        """The worker a new session of ``backend`` is given (with worker processes: the least
        loaded one, for the session's whole life)."""
        entry = await self._loaded(backend)
        return entry.pick() if isinstance(entry, ProcessWorkers) else entry

    async def prepared_avatar(self, options: SessionOptions) -> Avatar:
        key = (options.backend, options.avatar, options.width, options.height, options.framing)
        if key in self._prepared:
            self._prepared.move_to_end(key)
        else:
            backend = (await self._loaded(options.backend)).backend
            image = None  # the camera
            if options.width is not None and options.height is not None:  # the picture exactly as it will be sent
                image = await asyncio.to_thread(self.avatars.framed, options.avatar, options.framing, options.width, options.height)
            self._prepared[key] = await asyncio.to_thread(backend.prepare_avatar, options.avatar, image)
            while len(self._prepared) > MAX_PREPARED:
                self._prepared.popitem(last=False)
        return self._prepared[key]

    def _enrolled(self, folder: Path) -> None:
        """A person enrolled from a video: listed, and a head enrolled again under the same name
        is prepared afresh."""
        self.forget_avatar(self.avatars.add_enrolled(folder))

    def forget_avatar(self, name: str) -> None:
        for key in [key for key in self._prepared if key[1] == name]:
            del self._prepared[key]

    def free_slots(self) -> int:
        """Sessions that may still open here (offers being answered count as open)."""
        return max(0, self.settings.max_sessions - len(self.sessions) - self._opening)

    def check_capacity(self) -> None:
        limit = self.settings.max_sessions
        if self.free_slots() == 0:
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
            avatar = await self.prepared_avatar(options)
            worker = await self.worker(options.backend)  # after the avatar: a refusal takes no worker
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
                instance=self.settings.instance,
                audio_prefetch=self.settings.audio_prefetch,
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
                avatar = await self.prepared_avatar(moved)
                worker = await self.worker(name)
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
            for name, entry in list(self._workers.items()):
                if isinstance(entry, ProcessWorkers):  # a dead or hung child is replaced
                    for i, why in entry.give_up_failed(limit):
                        log.error("backend %s: %s; its sessions fall back", name, why)
                        asyncio.create_task(self._restart(name, entry, i), name=f"restart-{name}-{i}")
                    continue
                worker = entry
                busy = worker.busy_s()
                if busy > limit:
                    reason = f"generate() did not return within {limit:g} s"
                    self.registry.mark_failed(name, f"hung: {reason}; unavailable until that call returns")
                    del self._workers[name]
                    for key in [key for key in self._prepared if key[0] == name]:
                        del self._prepared[key]
                    worker.abandon(f"backend {name} hung: {reason}")
                    abandoned[name] = worker

    @staticmethod
    async def _restart(name: str, workers: ProcessWorkers, i: int) -> None:
        log.warning("backend %s: %s", name, await asyncio.to_thread(workers.restart, i))

    async def _forget_when_closed(self, session: Session) -> None:
        await session.closed.wait()
        self.sessions.pop(session.id, None)
        await session.released.wait()  # a cut peer's connection takes a while to close
        del session  # this frame's reference too, before the collection
        await asyncio.sleep(0)  # let the tasks that held the session finish
        freed, collect_s = collect_garbage(idle=not self.sessions)
        trim_s = await asyncio.to_thread(return_freed_memory)  # off the loop: it walks the whole heap
        log.debug("session ended: %d objects collected in %.1f ms, heap trimmed in %s ms", freed, collect_s * 1000,
                  "-" if trim_s is None else f"{trim_s * 1000:.1f}")

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

    def start_egress(self, channel: Channel, url: object, token: str | None = None) -> Egress:
        """Publish ``channel`` to a WHIP endpoint (reconnecting until stopped); ValueError for a bad URL."""
        assert channel.egress is None, "one egress per channel"
        egress = Egress(channel, url, token, self.settings.ice_servers)  # type: ignore[arg-type]  # checked there
        channel.egress = egress
        egress.start()
        return egress

    def start_background(self) -> None:
        self._loop_lag_task = asyncio.create_task(self.loop_lag.run(), name="loop-lag")
        if self.settings.egress_whip:  # serve --channel NAME --egress-whip URL
            channel = self.channels[self.settings.channels[0]]
            self.start_egress(channel, self.settings.egress_whip, self.settings.egress_token or None)
            log.info("channel %s: publishing to %s", channel.name, self.settings.egress_whip)

    async def shutdown(self) -> None:
        if self._loop_lag_task is not None:
            self._loop_lag_task.cancel()
        await asyncio.gather(*(c.close("server shutting down") for c in list(self.channels.values())))
        await asyncio.gather(*(s.close("server shutting down") for s in list(self.sessions.values())))
        if self._watchdog is not None:
            self._watchdog.cancel()
        for worker in self._workers.values():
            await asyncio.to_thread(worker.stop)  # worker processes take a moment to end
        if self.trace is not None:
            self.trace.close()
