"""Browser end-to-end tests: real Chromium, real WebRTC on loopback, real server process.

Chromium's camera and microphone are replaced by a real talking clip (see browser_media.py).
The tests need Debian's ``chromium`` and ``chromium-driver`` packages; when they are missing
the tests fail (they never skip), so CI cannot pass without actually running a browser.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

try:
    from tests.browser_media import make_fake_capture_files
except ImportError:  # tests/ is not a package and only it is on sys.path
    from browser_media import make_fake_capture_files

from benchmarks.chromium import launch, missing_browser
from benchmarks.live import stop_server

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
SERVER_START_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 20.0


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def fake_media(tmp_path_factory) -> tuple[Path, Path]:
    """(y4m, wav) fake-capture files made from a real talking clip, once per session."""
    return make_fake_capture_files(tmp_path_factory.mktemp("browser_media"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path):
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "<no server output>"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    """The streaming server as a subprocess on a free loopback port."""
    yield from _serve(tmp_path_factory, [])


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory) -> Server:
    """A server that wants a token and takes one session at a time."""
    yield from _serve(tmp_path_factory, ["--token", GUARD_TOKEN, "--max-sessions", "1", "--backend", "passthrough"])


GUARD_TOKEN = "browser-test-token"


@pytest.fixture(scope="module")
def vasa_server(tmp_path_factory) -> Server:
    """A server whose models directory holds stand-in Ditto models, so that `vasa` runs."""
    from engines.vasa.standins import write_standins

    models = tmp_path_factory.mktemp("models")
    write_standins(models)
    yield from _serve(tmp_path_factory, [], {"LIPSYNC_MODELS_DIR": str(models)})


@pytest.fixture(scope="module")
def gaussian_server(tmp_path_factory) -> Server:
    """A server without a GPU that enrols test-scale heads and serves them in the debug mode."""
    avatars = tmp_path_factory.mktemp("avatars")
    yield from _serve(tmp_path_factory, [], {"LIPSYNC_AVATARS_DIR": str(avatars), "LIPSYNC_GAUSSIAN_CPU": "1"})


def _serve(tmp_path_factory, extra: list[str], env_extra: dict[str, str] | None = None):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "stream_server", "serve", "--port", str(port), "--host", "127.0.0.1", *extra]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    srv = Server(proc, port, log_path)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while _http_status(f"{srv.url}/healthz") not in (200, 401):
            if proc.poll() is not None:
                pytest.fail(
                    f"server exited with code {proc.returncode} before /healthz answered:\n"
                    f"{srv.output()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"server did not answer GET /healthz with 200 within "
                    f"{SERVER_START_TIMEOUT_S:.0f} s:\n{srv.output()}"
                )
            time.sleep(0.2)
        yield srv
    finally:
        stop_server(proc)


@pytest.fixture
def browser(request, fake_media, server):
    """A fresh headless Chromium with the talking clip as camera and microphone."""
    missing = missing_browser()
    if missing:
        pytest.fail(
            f"browser tests need {' and '.join(missing)}: install them with "
            f"`apt-get install chromium chromium-driver`"
        )
    y4m, wav = fake_media
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    driver = launch(y4m, wav, Path(profile))
    failed_before = request.session.testsfailed
    try:
        yield driver
    finally:
        # testsfailed is bumped when the call phase's report is logged, before teardown.
        if request.session.testsfailed > failed_before:
            _dump_failure(driver, server, request.node.name)
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _dump_failure(driver, server: Server, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        logs = driver.get_log("browser")
        text = "\n".join(f"{e.get('level')} {e.get('message')}" for e in logs)
    except Exception as exc:  # the browser may be gone
        text = f"<could not read the console log: {exc}>"
    (ARTIFACTS / f"{name}_console.log").write_text(text)
    (ARTIFACTS / f"{name}_server.log").write_text(server.output())
    try:
        driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    except Exception:
        pass


# ----------------------------------------------------------------------------- page helpers


def _open_page(driver, server: Server) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.url + "/")
    # Pickers are filled asynchronously from /backends, /avatars and /config.
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script(
            "return ['backend', 'avatar', 'fps'].every(id => document.getElementById(id).options.length > 0)"
        ),
        message="the pickers were never filled from the server",
    )


def _select(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def _text(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent").strip()


def _start_and_wait_playing(driver) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "start").click()

    def playing(d):
        err = _text(d, "error")
        if err:
            raise AssertionError(f"the page shows an error: {err!r} (status {_text(d, 'status')!r})")
        return d.execute_script(
            "const v = document.getElementById('output');"
            "return v.readyState >= 2 && v.videoWidth > 0 && v.currentTime > 0 && !v.paused;"
        )

    WebDriverWait(driver, CONNECT_TIMEOUT_S, poll_frequency=0.2).until(
        playing, message=f"output video never played (status: {_text(driver, 'status')!r})"
    )


_COUNTERS_JS = """
const done = arguments[arguments.length - 1];
const video = document.getElementById('output');
const pc = window.lipsync && window.lipsync.pc;
const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
const out = {t: performance.now(), presented: q ? q.totalVideoFrames : null, decoded: null,
             width: video.videoWidth, height: video.videoHeight};
if (!pc) { done(out); return; }
pc.getStats().then(report => {
  report.forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') out.decoded = r.framesDecoded;
    if (r.type === 'inbound-rtp' && r.kind === 'audio') out.audio_packets = r.packetsReceived;
  });
  done(out);
}).catch(e => { out.error = String(e); done(out); });
"""


def _measure_fps(driver, seconds: float) -> dict:
    """Frame rates of the output video over ``seconds``: decoded (getStats) and presented."""
    a = driver.execute_async_script(_COUNTERS_JS)
    time.sleep(seconds)
    b = driver.execute_async_script(_COUNTERS_JS)
    dt = (b["t"] - a["t"]) / 1000.0
    result = {"seconds": dt, "width": b["width"], "height": b["height"]}
    for key in ("decoded", "presented", "audio_packets"):
        if a.get(key) is not None and b.get(key) is not None:
            result[f"{key}_per_s"] = (b[key] - a[key]) / dt
    return result


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise AssertionError(f"expected a number, got {text!r}") from None


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("backend", ["mesh", "passthrough"])
def test_camera_streams_at_full_rate(browser, server, backend):
    _open_page(browser, server)
    _select(browser, "backend", backend)
    _select(browser, "avatar", "camera")
    _start_and_wait_playing(browser)

    rates = _measure_fps(browser, 10.0)
    print("output video:", json.dumps(rates))
    assert "decoded_per_s" in rates, f"no inbound-rtp video stats: {rates}"
    assert rates["decoded_per_s"] >= 20.0, f"output video too slow: {rates}"
    assert rates.get("audio_packets_per_s", 0) > 10, f"no audio came back: {rates}"

    state = browser.execute_script(
        "return {server: window.lipsync.lastServerStats, browser: window.lipsync.lastBrowserStats,"
        " session: window.lipsync.sessionId, status: document.getElementById('status').textContent}"
    )
    print("page state:", json.dumps(state))
    assert state["session"], "window.lipsync.sessionId is not set"
    assert state["status"] == "connected"
    fps_out = _float(_text(browser, "stat-fps-out"))
    fps_received = _float(_text(browser, "stat-fps-received"))
    print(f"stats panel: fps out {fps_out}, fps received {fps_received}")
    assert fps_out > 0
    assert fps_received > 0
    assert _text(browser, "error") == ""

    if backend == "mesh":
        assert _float(_text(browser, "stat-face-lost")) == 0  # the fake camera's face is tracked
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"browser_e2e_camera_{backend}.png"))

    # Stop returns the page to idle and releases the camera.
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "stop").click()
    assert _text(browser, "status") == "idle"
    assert browser.execute_script("return window.lipsync.pc") is None


def test_bundled_avatar_lip_syncs_with_mesh(browser, server):
    _open_page(browser, server)
    _select(browser, "backend", "mesh")
    _select(browser, "avatar", "astronaut")
    assert browser.execute_script("return document.getElementById('mouth-gain').value") == "1.75"  # /config's default
    browser.execute_script("document.getElementById('mouth-gain').value = '2.5'")
    _start_and_wait_playing(browser)

    rates = _measure_fps(browser, 6.0)
    print("astronaut output video:", json.dumps(rates))
    assert rates.get("decoded_per_s", 0) >= 20.0, f"output video too slow: {rates}"
    assert _text(browser, "error") == ""
    # the page sent the mouth gain with the offer: the server's answer and its figures echo it
    assert "mouth gain 2.5)" in _text(browser, "events") and _text(browser, "stat-mouth-gain") == "2.50"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "browser_e2e_astronaut_mesh.png"))


def test_vasa_streams_and_its_emotion_changes_while_running(browser, vasa_server):
    from selenium.webdriver.support.ui import WebDriverWait

    _open_page(browser, vasa_server)
    _select(browser, "backend", "vasa")
    _select(browser, "avatar", "astronaut")
    _select(browser, "emotion", "happy")
    _start_and_wait_playing(browser)
    rates = _measure_fps(browser, 6.0)
    print("vasa output video:", json.dumps(rates))
    assert rates.get("decoded_per_s", 0) >= 20.0, f"output video too slow: {rates}"
    WebDriverWait(browser, 5).until(lambda d: _text(d, "stat-emotion") == "happy (1.00)",
                                    message=f"the stats show {_text(browser, 'stat-emotion')!r}")
    # the picker changes the running stream's emotion (over the stats WebSocket)
    _select(browser, "emotion", "sad")
    browser.execute_script("document.getElementById('emotion').dispatchEvent(new Event('change'))")
    WebDriverWait(browser, 5).until(lambda d: _text(d, "stat-emotion") == "sad (1.00)",
                                    message=f"the stats show {_text(browser, 'stat-emotion')!r}")
    assert "emotion sad (1)" in _text(browser, "events")
    rates = _measure_fps(browser, 4.0)
    assert rates.get("decoded_per_s", 0) >= 20.0, f"output video too slow after the switch: {rates}"
    assert _text(browser, "error") == ""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "browser_e2e_vasa.png"))


def test_a_person_enrolled_from_a_video_on_the_page_talks(browser, gaussian_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.media import corpus_clip

    _open_page(browser, gaussian_server)
    browser.find_element(By.ID, "upload").send_keys(str(corpus_clip("AniPortrait_pose_ref_video.mp4")))
    seen: list[str] = []

    def fitting(d):  # the progress bar shows the training: iteration, held-out PSNR, time left
        if _text(d, "error"):
            raise AssertionError(f"the page shows an error: {_text(d, 'error')!r}")
        text = _text(d, "enrol-text")
        seen.append(text)
        return "it " in text and "held-out PSNR" in text and "s left" in text

    WebDriverWait(browser, 120, poll_frequency=0.5).until(fitting, message=f"no fit progress shown: {seen[-3:]}")
    assert browser.execute_script("return document.getElementById('enrol-bar').value") > 0
    WebDriverWait(browser, 400, poll_frequency=1.0).until(
        lambda d: _text(d, "error") or d.execute_script("return document.getElementById('enrol-progress').hidden"),
        message="the enrolment never finished")
    assert _text(browser, "error") == ""
    assert "enrolled AniPortrait_pose_ref_video" in _text(browser, "events")
    assert browser.execute_script("return document.getElementById('avatar').value") == "AniPortrait_pose_ref_video"
    _select(browser, "backend", "gaussian")
    _start_and_wait_playing(browser)
    rates = _measure_fps(browser, 5.0)
    print("enrolled head output video:", json.dumps(rates))
    assert rates.get("decoded_per_s", 0) >= 15.0, f"output video too slow: {rates}"
    assert _text(browser, "error") == ""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "browser_e2e_gaussian_enrolled.png"))


def test_server_refusal_is_shown(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open_page(browser, server)
    browser.execute_script(
        "const o = document.createElement('option');"
        "o.value = o.textContent = 'no-such-backend';"
        "document.getElementById('backend').append(o);"
    )
    _select(browser, "backend", "no-such-backend")
    browser.find_element(By.ID, "start").click()

    WebDriverWait(browser, CONNECT_TIMEOUT_S).until(
        lambda d: _text(d, "error") != "", message="no error shown for an unknown backend"
    )
    error = _text(browser, "error")
    print("error shown:", error)
    assert "passthrough" in error, f"the error does not list the valid backends: {error!r}"
    assert _text(browser, "status").startswith("failed")
    # The page cleaned up: no peer connection, start enabled again.
    assert browser.execute_script("return window.lipsync.pc") is None
    assert browser.find_element(By.ID, "start").is_enabled()


def test_token_prompt_and_full_server_are_shown(browser, guarded_server):
    """The page asks for the token, then loads; a full server's 503 is shown with its retry time."""
    import asyncio
    import threading

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from benchmarks.synthetic_peer import PeerRun, run_peer

    browser.get(guarded_server.url + "/")
    WebDriverWait(browser, 10).until(lambda d: "access token" in _text(d, "error"), message="no token prompt")
    assert browser.find_element(By.ID, "token-field").is_displayed()
    assert not browser.find_element(By.ID, "start").is_enabled()
    token = browser.find_element(By.ID, "token")
    token.send_keys(GUARD_TOKEN, Keys.ENTER)
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return document.getElementById('backend').options.length > 0"),
        message="the pickers were not filled once the token was given",
    )
    assert _text(browser, "error") == "" and browser.find_element(By.ID, "start").is_enabled()

    # another client takes the only session
    occupant = PeerRun()
    headers = {"Authorization": f"Bearer {GUARD_TOKEN}"}
    thread = threading.Thread(target=lambda: asyncio.run(run_peer(guarded_server.url, 12.0, {"backend": "passthrough"}, headers=headers, run=occupant)))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while occupant.status != 200:
            assert time.monotonic() < deadline and occupant.status in (0, 200), occupant.answer
            time.sleep(0.1)
        browser.find_element(By.ID, "start").click()
        WebDriverWait(browser, CONNECT_TIMEOUT_S).until(lambda d: _text(d, "error") != "", message="no error for a full server")
        error = _text(browser, "error")
        print("error shown:", error)
        assert "server is full" in error and "retry after 30 s" in error, error
        assert browser.execute_script("return window.lipsync.pc") is None
    finally:
        thread.join(timeout=30)


def test_viewer_page_plays_a_whip_channel(browser, server):
    """A streamer's setup: an aiortc WHIP client (as OBS) sends real speech to a channel; the
    viewer page (an OBS Browser Source) plays the lip-synced avatar full-window on the key colour."""
    import asyncio
    import threading

    import aiohttp

    from benchmarks.peer import ArrayMicrophone, whip_publish
    from engines.media_io import load_audio
    from tests.media import shared_media

    speech = load_audio(shared_media("audio", "musetalk_eng.wav"), 48000)[: 48000 * 20]
    stop = threading.Event()
    failure: list[BaseException] = []

    async def produce() -> None:
        async with aiohttp.ClientSession() as http:
            body = {"name": "show", "options": {"backend": "mesh", "avatar": "astronaut", "fps": 25}}
            async with http.post(f"{server.url}/channels", json=body) as response:
                assert response.status == 201, await response.text()
        pc, resource = await whip_publish(server.url, "show", [ArrayMicrophone(speech)])
        while not stop.is_set():
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as http:
            async with http.delete(resource) as response:
                assert response.status == 200
            async with http.delete(f"{server.url}/channels/show") as response:
                assert response.status == 200
        await pc.close()

    def run() -> None:
        try:
            asyncio.run(produce())
        except BaseException as exc:  # reported by the test below
            failure.append(exc)

    producer = threading.Thread(target=run, daemon=True)
    producer.start()
    try:
        from selenium.webdriver.support.ui import WebDriverWait

        deadline = time.monotonic() + 15
        while _http_status(f"{server.url}/view/show") != 200 and time.monotonic() < deadline and not failure:
            time.sleep(0.2)
        browser.get(f"{server.url}/view/show")
        WebDriverWait(browser, CONNECT_TIMEOUT_S, poll_frequency=0.2).until(
            lambda d: d.execute_script("const v = document.getElementById('video'); return v.readyState >= 2 && v.currentTime > 1;"),
            message=f"the viewer page never played (message: {_text(browser, 'message')!r})",
        )
        stats_js = """
        const done = arguments[arguments.length - 1];
        window.viewer.pc.getStats().then(report => {
          const out = {t: performance.now()};
          report.forEach(r => { if (r.type === 'inbound-rtp') out[r.kind] = r.kind === 'video' ? r.framesDecoded : r.packetsReceived; });
          done(out);
        });"""
        a = browser.execute_async_script(stats_js)
        time.sleep(5.0)
        b = browser.execute_async_script(stats_js)
        seconds = (b["t"] - a["t"]) / 1000.0
        fps, audio_packets = (b["video"] - a["video"]) / seconds, (b["audio"] - a["audio"]) / seconds
        print(f"viewer page: {fps:.1f} fps decoded, {audio_packets:.0f} audio packets/s")
        assert fps >= 20.0, f"viewer page decoded {fps:.1f} fps"  # as the page test: Chromium shares 2 cores
        assert audio_packets >= 40, "the viewer page gets no audio"  # Opus: 50 packets/s
        layout = browser.execute_script(
            "const v = document.getElementById('video'); const r = v.getBoundingClientRect();"
            "return {bg: getComputedStyle(document.body).backgroundColor, w: r.width, h: r.height,"
            " ww: innerWidth, wh: innerHeight, controls: v.controls, speaking: document.body.dataset.speaking};"
        )
        assert layout["bg"] == "rgb(0, 255, 0)" and not layout["controls"], layout
        assert (layout["w"], layout["h"]) == (layout["ww"], layout["wh"]), f"not full-window: {layout}"
        assert layout["speaking"] in ("true", "false"), "the page did not get the channel's events"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "browser_e2e_viewer_page.png"))
    finally:
        stop.set()
        producer.join(timeout=15)
    assert not failure, f"the WHIP producer failed: {failure[0]!r}"


def test_the_channels_panel_publishes_a_channel_to_an_sfu_and_stops(browser, server):
    """The Channels panel: a WHIP URL and token typed in a channel's row, Publish; the row shows
    the egress's state (here retrying, with why: nothing listens at that address), Stop ends it."""
    import json
    import urllib.request

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    request = urllib.request.Request(f"{server.url}/channels", data=json.dumps({"name": "sfu"}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    assert urllib.request.urlopen(request, timeout=10).status == 201
    try:
        _open_page(browser, server)
        row = "//table[@id='channels']//tr[td[1]='sfu']"
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.XPATH, f"{row}//input[@data-act='egress-url']"),
                                         message="no WHIP URL field in the channel's row")
        browser.find_element(By.XPATH, f"{row}//input[@data-act='egress-url']").send_keys("http://127.0.0.1:9/whip/sfu")
        browser.find_element(By.XPATH, f"{row}//input[@data-act='egress-token']").send_keys("secret")
        browser.find_element(By.XPATH, f"{row}//button[@data-act='egress-start']").click()
        # read in one script: the rows are redrawn on every channel event
        shown = "return [...document.querySelectorAll('#channels .egress-state')].map(e => e.textContent).join(' ')"
        WebDriverWait(browser, 20).until(lambda d: "retrying: cannot reach" in d.execute_script(shown),
                                         message="the row never showed the egress retrying and why")
        with urllib.request.urlopen(f"{server.url}/channels/sfu/egress", timeout=10) as response:
            state = json.load(response)
        assert state["url"] == "http://127.0.0.1:9/whip/sfu" and state["token"] is True, state
        browser.execute_script("document.querySelector('#channels [data-act=egress-stop]').click()")  # found and clicked at once
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.XPATH, f"{row}//button[@data-act='egress-start']"),
                                         message="Stop did not bring the Publish button back")
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{server.url}/channels/sfu", method="DELETE"), timeout=10)
