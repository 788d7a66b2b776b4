"""Backends in worker processes, so that a server's sessions use every core.

One Python process runs its threads one at a time (the GIL): with the backend's numpy work, the
event loop, WebRTC's packets and the audio all in one process, a 2-core machine served sessions
with 1.1 cores busy. Here a CPU backend runs in ``--workers`` child processes (default: one per
core); each session is given to the least loaded one for its whole life, so the backend's
per-stream state (a face tracker, a blink's phase) stays in one place.

Each child is driven by a :class:`~stream_server.worker.BackendWorker` thread in the server,
exactly as an in-process backend is: the same deadline-ordered batches, the same expiry of
frames that cannot be on time, the same ``busy_s`` for the hang watchdog. Only ``generate``
differs: :class:`RemoteBackend` sends the jobs to its child and waits for the frames. Pictures
cross in shared memory (a base frame in, the generated frame out: 0.8 MB each at 512x512), the
rest (audio windows, a few kB) through a pipe; a prepared avatar is sent to a child once.

A child that dies, or hangs past the watchdog's limit (it is then killed), fails the jobs it
held with :class:`~stream_server.worker.BackendHung`, so its sessions move to their fallback as
they do when an in-process backend hangs; :class:`ProcessWorkers` starts a new child in its
place for the sessions that come next.

Backends that use a GPU keep the in-process worker: one process per GPU already shares the
model across that GPU's sessions and batches them (``Backend.in_processes`` says which).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import uuid
import weakref
from pathlib import Path
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Sequence

import numpy as np

from engines.base import Avatar, Backend, FrameJob
from stream_server.worker import BackendHung, BackendWorker

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0  # a child imports and loads its backend (MediaPipe's models: seconds)
MAX_CHILD_AVATARS = 32  # prepared avatars a child keeps (the hub keeps as many)


class _OneThreadEnv:
    """The environment a child starts with: BLAS and OpenMP pools of one thread each."""

    NAMES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        self._lock.acquire()
        self._saved = {name: os.environ.get(name) for name in self.NAMES}
        os.environ.update({name: "1" for name in self.NAMES})

    def __exit__(self, *exc: object) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._lock.release()


_ONE_THREAD_ENV = _OneThreadEnv()


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- shared memory


class Arena:
    """A block of shared memory for one direction of one child's frames; it grows (a new block,
    a new name) when a batch needs more than it holds. The server creates and removes it."""

    def __init__(self, size: int = 0) -> None:
        self.block: SharedMemory | None = None
        self.ensure(size)

    def ensure(self, size: int) -> None:
        if self.block is not None and self.block.size >= size:
            return
        self.close()
        self.block = SharedMemory(create=True, size=max(size, 1 << 20))

    @property
    def name(self) -> str:
        assert self.block is not None
        return self.block.name

    def close(self) -> None:
        if self.block is not None:
            self.block.close()
            self.block.unlink()
            self.block = None


def _attach(name: str) -> SharedMemory:
    """A child's view of the server's block. Spawned children share the server's resource
    tracker, so the block stays registered once and is removed by the server alone."""
    return SharedMemory(name=name)


def _layout(frames: Sequence[np.ndarray]) -> tuple[list[tuple[int, tuple[int, ...]]], int]:
    """(offset, shape) of each uint8 frame packed one after another, and the bytes they need."""
    places, offset = [], 0
    for frame in frames:
        places.append((offset, tuple(frame.shape)))
        offset += frame.nbytes
    return places, offset


def _view(block: SharedMemory, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.ndarray(shape, np.uint8, buffer=block.buf, offset=offset)


# ----------------------------------------------------------------------------- the child


class _ChildState:
    """What a child keeps between calls: its backend, the avatars it was sent, the two blocks."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.avatars: dict[str, Avatar] = {}
        self.blocks: dict[str, tuple[str, SharedMemory]] = {}  # "in" / "out" -> (name, block)

    def block(self, role: str, name: str) -> SharedMemory:
        """The server's block for ``role``; a new name means it grew (the old one is gone)."""
        held = self.blocks.get(role)
        if held is None or held[0] != name:
            if held is not None:
                held[1].close()
            self.blocks[role] = (name, _attach(name))
        return self.blocks[role][1]

    def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        self.avatars.update(request["avatars"])
        while len(self.avatars) > MAX_CHILD_AVATARS:
            self.avatars.pop(next(iter(self.avatars)))
        inbound = self.block("in", request["in"])
        jobs = [FrameJob(j["stream_id"], j["slot"], j["time_s"], j["audio"],
                         _view(inbound, *place).copy(), self.avatars[j["avatar"]], j["expression"])
                for j, place in zip(request["jobs"], request["places"])]
        frames = self.backend.generate(jobs)
        for frame in frames:
            if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
                return {"error": f"backend returned a frame of type {getattr(frame, 'dtype', type(frame).__name__)}, expected uint8"}
        places, size = _layout(frames)
        if size > request["out_size"]:
            return {"grow": size}  # the server makes the block bigger and asks again
        outbound = self.block("out", request["out"])
        for frame, (offset, shape) in zip(frames, places):
            _view(outbound, offset, shape)[...] = frame
        stats = {job.stream_id: self.backend.stream_stats(job.stream_id) for job in jobs}
        return {"places": places, "stats": stats}


def _child_main(backend_name: str, calls: Connection, control: Connection, warm_up: Path | None) -> None:
    """A worker process: load the backend (and warm it up on ``warm_up``, a portrait file, as
    the server's own instance was when it was measured), then answer generate calls until told
    to stop."""
    import cv2

    from engines.registry import backend_class, measure_fps

    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would only contend

    try:
        backend = backend_class(backend_name)()
        backend.load()
        if warm_up is not None:  # a cold child dropped its first session's first 1.5 s of frames
            measure_fps(backend, warm_up, frames=2)
    except Exception as exc:  # noqa: BLE001 - told to the server, which says it to the user
        calls.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    calls.send({"ready": os.getpid()})
    state = _ChildState(backend)
    while True:
        for ready in wait([control, calls]):
            try:
                message = ready.recv()
            except EOFError:
                return  # the server is gone
            if message is None:
                return
            if ready is control:
                backend.close_stream(message)
                continue
            try:
                calls.send(state.generate(message))
            except Exception as exc:  # noqa: BLE001 - the jobs fail, the child lives on
                calls.send({"error": f"{type(exc).__name__}: {exc}"})


# ----------------------------------------------------------------------------- the server's side


class RemoteBackend:
    """A backend loaded in a child process. ``generate`` runs there; everything else a session
    asks of a backend (its name, lookahead, preparing an avatar) is answered by the server's own
    loaded instance (``local``), which never generates."""

    def __init__(self, local: Backend, index: int, warm_up: Path | None = None) -> None:
        self.local = local
        self.index = index
        self.sessions = 0  # sessions given to this child and not yet closed
        self._sent: dict[int, tuple[str, weakref.ref[Avatar]]] = {}  # avatars the child holds
        self._stats: dict[str, dict[str, int]] = {}
        self._inbound, self._outbound = Arena(), Arena()
        context = multiprocessing.get_context("spawn")  # the server has threads: never fork it
        self._calls, child_calls = context.Pipe()
        child_control, self._control = context.Pipe(duplex=False)
        self.process = context.Process(target=_child_main, args=(local.name, child_calls, child_control, warm_up),
                                       name=f"backend-{local.name}-{index}", daemon=True)
        with _ONE_THREAD_ENV:  # numpy's BLAS reads these when the child imports it
            self.process.start()
        child_calls.close()
        child_control.close()
        self.pid: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until the child has loaded its backend; RuntimeError if it could not."""
        if not self._calls.poll(timeout_s):
            self.kill()
            raise RuntimeError(f"worker process {self.index} of {self.local.name} did not start within {timeout_s:.0f} s")
        try:
            reply = self._calls.recv()
        except EOFError:  # it ended before it could say why: its output (stderr) has the reason
            self.kill()
            raise RuntimeError(f"worker process {self.index} of {self.local.name} ended at start ({self.exit_text()})") from None
        if "error" in reply:
            self.kill()
            raise RuntimeError(f"worker process {self.index} of {self.local.name} failed to load: {reply['error']}")
        self.pid = reply["ready"]

    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        places, size = _layout([job.base_frame for job in jobs])
        self._inbound.ensure(size)
        assert self._inbound.block is not None
        for job, (offset, shape) in zip(jobs, places):
            _view(self._inbound.block, offset, shape)[...] = job.base_frame
        avatars = self._unsent(jobs)
        request = {
            "jobs": [{"stream_id": j.stream_id, "slot": j.slot, "time_s": j.time_s, "audio": j.audio,
                      "expression": j.expression, "avatar": self._token(j.avatar)} for j in jobs],
            "avatars": avatars, "places": places, "in": self._inbound.name,
        }
        self._outbound.ensure(size)  # the frames come back the size of the base frames
        reply = self._call(request)
        if "grow" in reply:
            self._outbound.ensure(reply["grow"])
            request["avatars"] = {}
            reply = self._call(request)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        assert self._outbound.block is not None
        frames = [_view(self._outbound.block, offset, shape).copy() for offset, shape in reply["places"]]
        self._stats.update(reply["stats"])
        return frames

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        request["out"], request["out_size"] = self._outbound.name, self._outbound.block.size  # type: ignore[union-attr]
        try:
            self._calls.send(request)
            return self._calls.recv()
        except (EOFError, OSError) as exc:  # OSError: BrokenPipeError and the like
            raise BackendHung(f"worker process {self.index} of {self.local.name} died ({self.exit_text()})") from exc

    def _unsent(self, jobs: Sequence[FrameJob]) -> dict[str, Avatar]:
        """The avatars of these jobs that the child has not been sent yet, each under a new token."""
        for key in [k for k, (_, ref) in self._sent.items() if ref() is None]:
            del self._sent[key]  # an avatar the server forgot: its id may be reused
        fresh: dict[str, Avatar] = {}
        for job in jobs:
            if self._token(job.avatar) is None:
                token = uuid.uuid4().hex
                self._sent[id(job.avatar)] = (token, weakref.ref(job.avatar))
                fresh[token] = job.avatar
        return fresh

    def _token(self, avatar: Avatar) -> str | None:
        sent = self._sent.get(id(avatar))
        return sent[0] if sent is not None and sent[1]() is avatar else None

    def close_stream(self, stream_id: str) -> None:
        self.sessions = max(0, self.sessions - 1)
        self._stats.pop(stream_id, None)
        try:
            self._control.send(stream_id)
        except OSError:  # BrokenPipeError
            pass  # the child is gone, and the stream with it

    def stream_stats(self, stream_id: str) -> dict[str, int]:
        return dict(self._stats.get(stream_id, {}))

    def alive(self) -> bool:
        return self.process.is_alive()

    def exit_text(self) -> str:
        code = self.process.exitcode
        return "still running" if code is None else f"exit code {code}"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self._release()

    def stop(self) -> None:
        try:
            self._control.send(None)
        except OSError:  # BrokenPipeError: the child is gone
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self._release()

    def _release(self) -> None:
        for end in (self._calls, self._control):
            end.close()
        self._inbound.close()
        self._outbound.close()


class ProcessWorkers:
    """``count`` child processes running one backend, each behind its own worker thread."""

    def __init__(self, local: Backend, count: int, warm_up: Path | None = None) -> None:
        self.local = local
        self.warm_up = warm_up
        self.members: list[BackendWorker] = []
        self._lock = threading.Lock()
        self._down: set[int] = set()  # members given up and not yet restarted
        self._next_index = 0
        started = time.monotonic()
        remotes = [self._spawn() for _ in range(count)]  # they load side by side
        try:
            for remote in remotes:
                remote.wait_ready()
        except BaseException:
            for remote in remotes:
                remote.kill()
            raise
        self.members = [BackendWorker(remote) for remote in remotes]  # type: ignore[arg-type]
        log.info("backend %s: %d worker processes (pids %s) ready in %.1f s", local.name, count,
                 ", ".join(str(r.pid) for r in remotes), time.monotonic() - started)

    def _spawn(self) -> RemoteBackend:
        self._next_index += 1
        return RemoteBackend(self.local, self._next_index, self.warm_up)

    @property
    def backend(self) -> Backend:
        """The server's own loaded instance: it prepares avatars, it never generates."""
        return self.local

    def pick(self) -> BackendWorker:
        """The worker of the child with the fewest sessions; the session is counted there."""
        with self._lock:
            serving = [m for i, m in enumerate(self.members) if i not in self._down]
            if not serving:
                raise RuntimeError(f"every worker process of {self.local.name} is restarting: try again in a few seconds")
            member = min(serving, key=lambda m: m.backend.sessions)  # type: ignore[attr-defined]
            member.backend.sessions += 1  # type: ignore[attr-defined]
            return member

    def _failure(self, member: BackendWorker, hang_limit_s: float) -> str | None:
        remote: RemoteBackend = member.backend  # type: ignore[assignment]
        if not remote.alive():
            return f"worker process {remote.index} of {self.local.name} died ({remote.exit_text()})"
        if member.busy_s() > hang_limit_s:
            return f"worker process {remote.index} of {self.local.name}: generate() did not return within {hang_limit_s:g} s"
        return None

    def give_up_failed(self, hang_limit_s: float) -> list[tuple[int, str]]:
        """(Event-loop thread.) Each child that died or whose call ran past ``hang_limit_s`` is
        killed, and the jobs it held or awaited fail with BackendHung (its sessions fall back).
        Returns (index, why) of each, to be restarted with :meth:`restart`."""
        given_up = []
        for i, member in enumerate(self.members):
            why = None if i in self._down else self._failure(member, hang_limit_s)
            if why is None:
                continue
            self._down.add(i)
            member.abandon(f"backend {self.local.name} hung: {why}")
            member.backend.kill()  # type: ignore[attr-defined]
            given_up.append((i, why))
        return given_up

    def restart(self, i: int) -> str:
        """(Any thread; blocks while the child loads.) A new child in place of member ``i``."""
        fresh = self._spawn()
        try:
            fresh.wait_ready()
        except RuntimeError as exc:
            return f"could not restart it ({exc}): {self.local.name} runs on the other worker processes"
        with self._lock:
            self.members[i] = BackendWorker(fresh)  # type: ignore[arg-type]
            self._down.discard(i)
        return f"restarted as worker process {fresh.index} (pid {fresh.pid})"

    def stop(self) -> None:
        for member in self.members:
            member.stop()
            member.backend.stop()  # type: ignore[attr-defined]
