"""Viewers through an SFU: a channel published once over WHIP (its egress) to Janus's VideoRoom,
fed by Meetecho's simple-whip-server, and six aiortc viewers subscribed through Janus.

Janus's ICE skips the loopback interface, so the test makes two network namespaces joined by a
veth pair with private addresses and no route out (nothing else is ever contacted): Janus and
simple-whip-server in one, our server and the peers (tests/janus_peers.py) in the other. It
needs root, ``janus`` and ``simple-whip-server`` (``.ci/run`` installs them); without them it
fails and says what to install, it never skips.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.media import shared_media

REPO = Path(__file__).resolve().parents[1]
CLIP = ("video", "pcavs_vox2_00086.mp4")  # 224x224, 25 fps, 5.2 s of speech
SFU_IP, APP_IP = "10.231.0.1", "10.231.0.2"
WHIP_TOKEN, API_TOKEN = "whip-secret", "api-secret"
VIEWERS, WATCH_S = 6, 8.0
# the Debian package, or the same package unpacked by .ci/run where its Debian dependencies conflict
WHIP_SERVER_DIRS = (Path("/usr/share/simple-whip-server"), Path("/opt/simple-whip-server/usr/share/simple-whip-server"))
NODE_MODULES = (REPO / "tests" / "simple_whip_server" / "node_modules", Path("/usr/share/nodejs"))
INSTALL = "run .ci/run, or: apt-get install janus simple-whip-server (see tests/simple_whip_server/README.md)"


def requirements() -> tuple[Path, Path]:
    """Janus's plugin folder and simple-whip-server's source; the test fails saying what is missing."""
    if os.geteuid() != 0:
        pytest.fail("the Janus test makes network namespaces and needs root (as CI runs it): sudo make test")
    if shutil.which("janus") is None or shutil.which("ip") is None:
        pytest.fail(f"janus (and iproute2) are not installed: {INSTALL}")
    plugins = sorted(Path("/usr/lib").glob("*/janus/plugins/libjanus_videoroom.so"))
    whip = next((d / "src" for d in WHIP_SERVER_DIRS if (d / "src" / "server.js").exists()), None)
    if not plugins or whip is None or shutil.which("node") is None:
        pytest.fail(f"Janus's VideoRoom plugin, simple-whip-server or node is missing: {INSTALL}")
    return plugins[0].parents[1], whip


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=10)


@contextmanager
def namespaces(tag: str) -> Iterator[tuple[str, str, str]]:
    """Two namespaces (SFU side, our side) joined by a veth pair; removed when done."""
    sfu, app, veth = f"lsfu{tag}", f"lapp{tag}", f"vsfu{tag}"
    run("ip", "netns", "add", sfu)
    try:
        run("ip", "netns", "add", app)
        try:
            run("ip", "link", "add", veth, "netns", sfu, "type", "veth", "peer", "name", f"vapp{tag}", "netns", app)
            for ns, name, ip in ((sfu, veth, SFU_IP), (app, f"vapp{tag}", APP_IP)):
                run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", name)
                run("ip", "-n", ns, "link", "set", name, "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
            yield sfu, app, veth
        finally:
            subprocess.run(["ip", "netns", "del", app], capture_output=True)  # takes the veth pair with it
    finally:
        subprocess.run(["ip", "netns", "del", sfu], capture_output=True)


def janus_config(folder: Path, janus_lib: Path, veth: str) -> Path:
    """A minimal Janus: VideoRoom (one room, VP8 + Opus), HTTP for the viewers, WebSockets for
    simple-whip-server, ICE only on the veth interface, no STUN, no 1:1 NAT."""
    keep = {"plugins": "libjanus_videoroom.so", "transports": "libjanus_http.so,libjanus_websockets.so"}
    disable = {kind: ",".join(p.name for p in sorted((janus_lib / kind).glob("*.so")) if p.name not in keep.get(kind, ""))
               for kind in ("plugins", "transports", "events", "loggers")}
    folder.mkdir()
    (folder / "janus.jcfg").write_text(f"""
general: {{ configs_folder = "{folder}", plugins_folder = "{janus_lib}/plugins", transports_folder = "{janus_lib}/transports",
           events_folder = "{janus_lib}/events", loggers_folder = "{janus_lib}/loggers", debug_level = 4, session_timeout = 60 }}
media: {{ rtp_port_range = "20000-20999" }}
nat: {{ ice_enforce_list = "{veth}", full_trickle = false, ice_lite = false, ignore_mdns = true }}
plugins: {{ disable = "{disable['plugins']}" }}
transports: {{ disable = "{disable['transports']}" }}
events: {{ broadcast = false, disable = "{disable['events']}" }}
loggers: {{ disable = "{disable['loggers']}" }}
""")
    (folder / "janus.plugin.videoroom.jcfg").write_text("""
general: { }
room-1234: { description = "lipsync channel", publishers = 1, bitrate = 2000000, fir_freq = 2,
             audiocodec = "opus", videocodec = "vp8" }
""")
    (folder / "janus.transport.http.jcfg").write_text('general: { json = "plain", base_path = "/janus", http = true, port = 8088, https = false }\nadmin: { admin_http = false }\n')
    (folder / "janus.transport.websockets.jcfg").write_text('general: { json = "plain", ws = true, ws_port = 8188, ws_ip = "127.0.0.1", wss = false }\nadmin: { admin_ws = false }\n')
    return folder


def whip_server_copy(folder: Path, source: Path) -> Path:
    """simple-whip-server's two files beside a config of our own (it reads ./config.js)."""
    (folder / "src").mkdir(parents=True)
    for name in ("server.js", "whip-janus.js"):
        shutil.copy(source / name, folder / "src" / name)
    (folder / "src" / "config.js").write_text(
        "module.exports = { janus: { address: 'ws://127.0.0.1:8188' }, port: 7080, rest: '/whip',"
        " allowTrickle: true, strictETags: false, iceServers: [] };\n")
    return folder


class Processes:
    """Background processes in a namespace, logs to files; all stopped (by their own ids) at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.running = logs, []

    def start(self, ns: str, name: str, command: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        process = subprocess.Popen(["ip", "netns", "exec", ns, *command], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, **kwargs)
        self.running.append((name, process))
        return process

    def stop(self) -> None:
        for _, process in reversed(self.running):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)  # our server shuts down cleanly on Ctrl-C
        for _, process in reversed(self.running):
            try:
                process.wait(8)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)

    def tails(self) -> str:
        return "\n".join(f"--- {name} (exit {p.poll()}) ---\n" + "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-25:])
                         for name, p in self.running)


def peers(ns: str, step: str, *args: str, timeout: float) -> dict:
    command = ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.janus_peers", step,
               "--janus", f"http://{SFU_IP}:8088/janus", "--whip", f"http://{SFU_IP}:7080/whip", "--whip-token", WHIP_TOKEN, *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"janus_peers {step} failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def test_six_viewers_through_janus_decode_the_channel_in_sync_and_it_is_encoded_once(tmp_path: Path) -> None:
    janus_lib, whip_source = requirements()
    clip = shared_media(*CLIP)
    node_path = ":".join(str(p) for p in NODE_MODULES if p.exists())
    tag = str(os.getpid() % 100000)
    with ExitStack() as stack:
        sfu, app, veth = stack.enter_context(namespaces(tag))
        processes = Processes(tmp_path)
        stack.callback(processes.stop)
        try:
            processes.start(sfu, "janus", ["janus", "-F", str(janus_config(tmp_path / "janus", janus_lib, veth)), "-o"])
            whip_dir = whip_server_copy(tmp_path / "whip", whip_source)
            processes.start(sfu, "simple-whip-server", ["node", "src/server.js"], cwd=whip_dir,
                            env={**os.environ, "NODE_PATH": node_path, "DEBUG": "whip:*,-whip:debug"})
            endpoint = peers(app, "prepare", timeout=45)["endpoint"]
            processes.start(app, "server", [
                sys.executable, "-m", "stream_server", "serve", "--host", "0.0.0.0", "--port", "8080", "--token", API_TOKEN,
                "--backend", "passthrough", "--avatar", "camera", "--channel", "studio",
                "--egress-whip", endpoint, "--egress-token", WHIP_TOKEN], cwd=REPO)
            report = peers(app, "watch", "--server", f"http://{APP_IP}:8080", "--token", API_TOKEN, "--clip", str(clip),
                           "--workdir", str(tmp_path), "--viewers", str(VIEWERS), "--seconds", str(WATCH_S), timeout=75)
        except BaseException:
            print(processes.tails())
            raise
    print(json.dumps(report, indent=1))
    assert report["egress_live"]["state"] == "live", report["egress_live"]
    # every viewer decoded the channel: its frames (the clip's stamps come through), at the
    # channel's rate, with its audio, and the two in sync: by arrival, and by the sender reports
    # Janus sends (the channels test holds WHEP viewers to the same 40 ms)
    for n, viewer in enumerate(report["viewers"]):
        assert viewer.get("fps", 0) >= 20 and viewer["stamps"] >= 0.9 * viewer["video_frames"], (n, viewer)
        assert viewer["audio_s"] >= WATCH_S - 2, (n, viewer)
        assert viewer["av_arrival_ms"]["frames"] >= 100 and abs(viewer["av_arrival_ms"]["median"]) <= 80, (n, viewer)
        assert abs(viewer["av_sender_reports_ms"]) <= 40, (n, viewer)
    # encoded once: the channel fed one outbound stream (the egress) and no WHEP viewer, and each
    # of the six viewers decoded about as many frames as that one stream carried
    channel = report["channel"]
    assert channel["encoders"] == 1 and channel["viewers"] == 0 and channel["egress"]["state"] == "live", channel
    encoded = channel["egress"]["frames_sent"]["video"]
    assert encoded <= 26 * (report["watched_s"] + 10), channel["egress"]  # one stream's worth, not six
    assert all(v["video_frames"] >= 0.8 * encoded for v in report["viewers"]), (encoded, report["viewers"])
    # stopping the egress DELETEd its WHIP resource: the endpoint is free again
    assert report["egress_stopped"]["state"] == "stopped"
    assert [e["enabled"] for e in report["whip_endpoints_after"]] == [False], report["whip_endpoints_after"]

