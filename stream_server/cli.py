"""``python -m stream_server <command>``: serve, render, doctor, export, enrol."""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import json
import logging
import ssl
import sys
from pathlib import Path

from threadpoolctl import threadpool_limits

from engines.auto import AUTO
from engines.base import DEFAULT_EMOTION, DEFAULT_MOUTH_GAIN, EMOTIONS, MOUTH_GAIN_RANGE, BackendEnrol, BackendExport
from engines.registry import DEFAULT_BACKEND, backend_names, importable_backends, load_entry

EXPORT_EXTRA = "export needs PyTorch, diffusers, transformers and onnx (pip install '.[export]')"


def enrolments() -> dict[str, BackendEnrol]:
    """The backends that can enrol a person from a video, by name (``Backend.enrol``)."""
    return {name: cls.enrol for name, cls in importable_backends().items() if cls.enrol is not None}


def exports() -> dict[str, BackendExport]:
    """The backends that have an export command, by name (``Backend.export``)."""
    return {name: cls.export for name, cls in importable_backends().items() if cls.export is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stream_server",
        description="Real-time lip-sync streaming server: WebRTC in, lip-synced avatar out.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="start the server and its web page", description="Start the WebRTC server and serve the web client.")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=None, help="port to bind (default 8080; 0 picks a free one)")
    serve.add_argument("--backend", default=None, choices=[*backend_names(), AUTO], help=f"default backend for new sessions (default {DEFAULT_BACKEND}; auto: the best-looking one that holds --fps on this machine, measured once and cached)")
    serve.add_argument("--avatar", default=None, help="default avatar for new sessions (camera, astronaut, or the name of an --avatar-file)")
    serve.add_argument("--avatar-file", action="append", type=Path, default=[], metavar="IMAGE", help="add an image file as an avatar, named after the file (repeatable)")
    serve.add_argument("--fps", type=int, default=None, help="default output frame rate (default 25)")
    serve.add_argument("--ice-server", action="append", default=[], metavar="URL", help="STUN/TURN server URL for the server and the page (repeatable); turn: URLs take --turn-username/--turn-credential")
    serve.add_argument("--turn-username", default=None, help="username for the turn: servers given with --ice-server")
    serve.add_argument("--turn-credential", default=None, help="password for the turn: servers given with --ice-server")
    access = serve.add_argument_group("access (see README: Running it for real)")
    access.add_argument("--token", default=None, help="access token every API and WebSocket call must carry (or LIPSYNC_TOKEN); required with a non-local --host")
    access.add_argument("--tls-cert", type=Path, default=None, metavar="PEM", help="certificate chain: serve HTTPS (browsers need it for the camera off localhost)")
    access.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="private key of --tls-cert")
    access.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", help="another origin (https://host[:port]) allowed to call the API (repeatable)")
    limits = serve.add_argument_group("limits")
    limits.add_argument("--max-sessions", type=int, default=None, help="sessions at once; beyond it new ones get 503 (default 4)")
    limits.add_argument("--max-viewers", type=int, default=None, help="WHEP viewers per channel; each costs one video encode (default 16)")
    limits.add_argument("--idle-timeout", type=float, default=None, metavar="S", help="end a session after this many seconds without a packet from its peer (default 10)")
    limits.add_argument("--audio-prefetch", type=int, default=None, metavar="N",
                        help="inbound audio packets (20 ms each) held before the oldest is decoded (default 1: 20 ms; "
                             "aiortc's own is 4, 80 ms: about 60 ms more glass-to-glass)")
    limits.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes for a CPU backend, so that sessions use every core (default: one per core; 0: in the server's own process). GPU backends always run in the server's process")
    limits.add_argument("--max-session-duration", type=float, default=None, metavar="S", help="end a session after this many seconds (default 43200, 12 h)")
    serve.add_argument("--channel", action="append", default=[], metavar="NAME", help="create a channel at start-up (WHIP in at /whip/NAME, WHEP out at /whep/NAME, viewer page /view/NAME) with the default backend and avatar (repeatable)")
    serve.add_argument("--instance", default=None, metavar="NAME", help="this server's name behind a load balancer (letters, digits, _): its session and WHIP/WHEP ids start with NAME- so follow-up requests can be routed to it (README: Scaling out)")
    serve.add_argument("--egress-whip", default=None, metavar="URL", help="publish the --channel to this WHIP endpoint (an SFU: Janus, LiveKit Ingress, MediaMTX...), reconnecting until the server stops; needs exactly one --channel (others: POST /channels/NAME/egress)")
    serve.add_argument("--egress-token", default=None, metavar="TOKEN", help="the bearer token of --egress-whip, if it needs one")
    serve.add_argument("--recordings-dir", type=Path, default=None, metavar="DIR", help="where channel recordings go (default ./recordings)")
    serve.add_argument("--trace", type=Path, default=None, metavar="FILE", help="append one JSON line per output frame (latency and per-stage timings) to FILE")

    render = commands.add_parser("render", help="lip-sync an image or video to an audio file", description="Run the streaming pipeline on files and write an MP4 (H.264 + AAC).")
    render.add_argument("--avatar", required=True, help="an image, a video (a recorded camera), or a bundled avatar name (astronaut)")
    render.add_argument("--audio", required=True, type=Path, help="speech to lip-sync (any format FFmpeg reads)")
    render.add_argument("-o", "--output", required=True, type=Path, help="the MP4 to write")
    render.add_argument("--backend", default=DEFAULT_BACKEND, choices=[*backend_names(), AUTO], help=f"default {DEFAULT_BACKEND}; auto: the best-looking one that holds --fps here")
    render.add_argument("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    render.add_argument("--width", type=int, default=None, help="output width (default: the avatar's)")
    render.add_argument("--height", type=int, default=None, help="output height (default: the avatar's)")
    render.add_argument(
        "--mouth-gain", type=float, default=DEFAULT_MOUTH_GAIN, metavar="G",
        help=f"how far the mouth opens against what the audio predicts, {MOUTH_GAIN_RANGE[0]} to "
        f"{MOUTH_GAIN_RANGE[1]} (default {DEFAULT_MOUTH_GAIN}; backends that do not support it ignore it)",
    )
    render.add_argument("--emotion", default=DEFAULT_EMOTION, metavar="E",
                        help=f"one of {', '.join(EMOTIONS)} (default {DEFAULT_EMOTION}; backends that do not model emotion ignore it)")
    render.add_argument("--emotion-intensity", type=float, default=1.0, metavar="X",
                        help="0 (neutral) to 1 (the emotion fully; default 1)")
    render.add_argument("--motion", default=None, metavar="M",
                        help="still, natural or lively: how much the head, brows and eyes move with the voice (default "
                             "natural on a picture, none added to a video of a face; backends without it ignore it)")
    render.add_argument("--framing", default="whole", metavar="F",
                        help="face: a portrait cropped to head and shoulders (the live default); whole: the picture as "
                             "given (default here, so that a render lines up with its source)")
    render.add_argument(
        "--timing",
        choices=["ideal", "realtime"],
        default="ideal",
        help="ideal: every frame generated; realtime: the backend takes its real time on this machine, "
        "so frames are dropped and interpolated as a live session here would (default ideal)",
    )

    doctor = commands.add_parser("doctor", help="what this machine can run: providers, GPU, backends, weights", description="Report ONNX Runtime providers, TensorRT, the GPU, each backend's availability (and why not) and which model files were found.")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")

    enrolling = enrolments()
    enrol = commands.add_parser("enrol", help="make a person's own avatar from a video of them talking (a trained head)",
                                description="Enrol a person from a video (30 s to 5 min of them talking, one face, a still "
                                "camera): the avatar appears under NAME for the backends that use it.")
    enrol.add_argument("--video", required=True, type=Path, help="the video of the person talking")
    enrol.add_argument("--name", required=True, help="the avatar's name (letters, digits, - and _)")
    enrol.add_argument("--backend", choices=list(enrolling) or None, default=next(iter(enrolling), None),
                       help=f"whose avatar to make (default {next(iter(enrolling), 'none')})")
    enrol.add_argument("--tiny", action="store_true", help="a test-scale avatar (96x96, minutes on a CPU); without a GPU only this")

    export = commands.add_parser("export", help="export a neural backend's weights to ONNX (needs the export extra: torch, diffusers, transformers, onnx)", description="Export the official weights to ONNX, checking each model against PyTorch.")
    models = export.add_subparsers(dest="model", required=True, metavar="BACKEND", help="which backend's models")
    for name, spec in exports().items():
        one = models.add_parser(name, help=spec.help, description=f"{spec.help}.")
        one.add_argument("--models-dir", type=Path, default=None, help=spec.models_dir_help)
        one.add_argument("--out", type=Path, default=None, help=spec.out_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)
    # One BLAS thread: the matrices on the frame path are small, and OpenBLAS's extra threads
    # spin while they wait; with them a single session of the default backend took 1.5 cores,
    # without 0.76.
    threadpool_limits(1, user_api="blas")
    if args.command == "serve":
        return serve(args)
    if args.command == "doctor":
        from stream_server.doctor import print_report, report

        print_report(report(), as_json=args.json)
        return 0
    if args.command == "export":
        return export_command(args)
    if args.command == "enrol":
        return enrol_command(args)
    return render_command(args)


def enrol_command(args: argparse.Namespace) -> int:
    """Run the backend's enrolment (``Backend.enrol``) with a progress line; Ctrl-C cancels it."""
    import threading

    from engines.base import avatars_dir
    from stream_server.uploads import UploadError, check_name

    if args.backend is None:
        print("error: no backend here can enrol a person from a video", file=sys.stderr)
        return 2
    try:
        name = check_name(args.name)
    except UploadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = enrolments()[args.backend]
    run = _entry(spec.entry, spec.needs, "enrolment needs PyTorch and safetensors (pip install '.[test]')")
    if run is None:
        return 2
    cancel = threading.Event()
    try:
        folder = run(args.video, name, avatars_dir(), tiny=args.tiny, progress=progress_line, cancel=cancel)
    except KeyboardInterrupt:
        cancel.set()
        print("\ncancelled", file=sys.stderr)
        return 130
    except spec.errors as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    print(f"\nenrolled {name}: {folder} (serve and pick the avatar {name!r} with --backend {args.backend})")
    return 0


def progress_line(state: dict) -> None:
    """One terminal line, rewritten: stage, a bar, and while training the iteration, loss,
    held-out PSNR and time left."""
    fraction = float(state.get("fraction", 0.0))
    bar = "#" * int(fraction * 30)
    parts = [f"\r{state.get('stage', ''):>8} [{bar:<30}] {fraction * 100:5.1f} %"]
    if "iteration" in state:
        parts.append(f" it {state['iteration']}/{state.get('total', '?')}")
    if state.get("loss") is not None:
        parts.append(f" loss {state['loss']:.4f}")
    if state.get("heldout_psnr") is not None:
        parts.append(f" held-out PSNR {state['heldout_psnr']:.1f} dB")
    if state.get("seconds_left") is not None:
        parts.append(f" {state['seconds_left']:.0f} s left")
    print("".join(parts), end="", file=sys.stderr, flush=True)


def _entry(entry: str, needs: tuple[str, ...], hint: str):
    """A backend command's function, its heavy modules imported first; None (said why) without them."""
    try:
        for module in needs:
            importlib.import_module(module)
        return load_entry(entry)
    except ImportError as exc:
        print(f"error: {hint}: {exc}", file=sys.stderr)
        return None


def export_command(args: argparse.Namespace) -> int:
    """Run the backend's export (``Backend.export``); its heavy imports happen only here."""
    spec = exports()[args.model]
    run = _entry(spec.entry, spec.needs, EXPORT_EXTRA)
    if run is None:
        return 2
    try:
        run(args.models_dir, args.out)
    except spec.errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from engines.images import AvatarFileError
    from stream_server.config import Settings

    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "backend": args.backend,
            "avatar": args.avatar,
            "fps": args.fps,
            "trace_file": args.trace,
            "recordings_dir": args.recordings_dir,
            "instance": args.instance,
            "token": args.token,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "max_sessions": args.max_sessions,
            "max_viewers": args.max_viewers,
            "egress_whip": args.egress_whip,
            "egress_token": args.egress_token,
            "idle_timeout_s": args.idle_timeout,
            "audio_prefetch": args.audio_prefetch,
            "max_session_s": args.max_session_duration,
            "workers": args.workers,
        }.items()
        if value is not None
    }
    if args.avatar_file:
        overrides["avatar_files"] = args.avatar_file
    if args.channel:
        overrides["channels"] = args.channel
    if args.ice_server:
        overrides["ice_servers"] = [ice_server(url, args.turn_username, args.turn_credential) for url in args.ice_server]
    if args.cors_origin:
        overrides["cors_origins"] = args.cors_origin
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"error: invalid setting: {exc}", file=sys.stderr)
        return 2
    problem = egress_problem(settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from stream_server.options import OptionError
    from stream_server.security import ExposureError, start_up_notes

    try:
        notes = start_up_notes(settings)
    except ExposureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", flush=True)
    try:
        asyncio.run(run_server(settings))
    except (AvatarFileError, OptionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ssl.SSLError as exc:
        print(f"error: cannot use the TLS certificate and key: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"error: port {settings.port} on {settings.host} is in use; pick another with --port", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        pass
    return 0


def egress_problem(settings: "Settings") -> str | None:  # type: ignore[name-defined]  # noqa: F821
    """What is wrong with --egress-whip, if anything: it publishes exactly one channel (a WHIP
    endpoint takes one publisher; publish others with POST /channels/NAME/egress)."""
    from stream_server.egress import check_url

    if not settings.egress_whip:
        return "--egress-token needs --egress-whip" if settings.egress_token else None
    if len(settings.channels) != 1:
        return (f"--egress-whip publishes one channel: give exactly one --channel (got {len(settings.channels)}); "
                "publish others with POST /channels/NAME/egress")
    try:
        check_url(settings.egress_whip)
    except ValueError as exc:
        return f"--egress-whip: {exc}"
    return None


def ice_server(url: str, username: str | None, credential: str | None) -> dict[str, str]:
    """An RTCIceServer dict; TURN servers get the credentials."""
    server = {"urls": url}
    if url.startswith(("turn:", "turns:")) and username is not None:
        server["username"] = username
        server["credential"] = credential or ""
    return server


async def run_server(settings: "Settings") -> None:  # type: ignore[name-defined]  # noqa: F821
    from aiohttp import web

    from stream_server.app import create_app
    from stream_server.hub import SERVER
    from stream_server.security import ssl_context

    app = create_app(settings)
    server = app[SERVER]
    if settings.backend == AUTO:
        try:
            await server.choose_auto_backend()
        except RuntimeError as exc:
            raise SystemExit(f"error: {exc}") from exc
        assert server.auto is not None
        print(f"backend auto: {server.auto.reason}", flush=True)
    if settings.avatar not in server.avatars.names():
        raise SystemExit(f"error: unknown default avatar {settings.avatar!r}; valid: {', '.join(server.avatars.names())}")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tls = ssl_context(settings)
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    scheme = "https" if tls else "http"
    chosen = f"backend {settings.backend}" + (" chosen by auto" if server.auto else "")
    print(f"Serving on {scheme}://{host}:{port}  ({chosen}; open it in a browser, Ctrl-C stops)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def render_command(args: argparse.Namespace) -> int:
    from engines.images import AvatarFileError
    from stream_server.render import RenderError, render

    size = None
    if (args.width is None) != (args.height is None):
        print("error: give both --width and --height, or neither", file=sys.stderr)
        return 2
    if args.width is not None:
        size = (args.width // 2 * 2, args.height // 2 * 2)
    try:
        result = render(args.avatar, args.audio, args.output, args.backend, args.fps, size, args.timing,
                        mouth_gain=args.mouth_gain, emotion=args.emotion, emotion_intensity=args.emotion_intensity,
                        motion=args.motion, framing=args.framing)
    except (RenderError, AvatarFileError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {
        "output": str(result.output),
        "frames": result.frames,
        "duration_s": round(result.duration_s, 2),
        "wall_s": round(result.wall_s, 2),
        "counts": result.counts,
        "backend_stats": result.backend_stats,
    }
    print(json.dumps(summary))
    return 0
