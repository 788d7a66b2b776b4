"""Glass-to-glass in a real browser: the web page, headless Chromium, its own WebRTC stack.

Chromium's fake microphone plays the same track as ``benchmarks.glass_to_glass`` (silence with a
short open vowel every ``--period`` s; the file loops), its fake camera a grey picture. The page
is driven as a user drives it (backend ``mesh``, avatar ``astronaut``, Start). Script added to the
page then timestamps, on the page's clock (performance.now()):

- each vowel's onset in the local microphone stream (Web Audio, 256-sample blocks; the onset is
  placed at its sample within the block),
- each output frame's expected display time (requestVideoFrameCallback) and its mouth region
  (drawn to a 24 x 16 canvas). The closed mouth is the per-pixel median over the run (the mouth
  is closed most of the time), and each frame's change is its mean difference from it.

Latency per vowel: onset -> display of the first frame whose mouth has moved (the same rule as
the Python variant). It includes Chromium's jitter buffers and playout, not the screen's own
refresh. getStats figures for the received video and audio are reported too.

    python -m benchmarks.glass_to_glass_browser [--seconds 75] [--period 1.2]
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import soundfile as sf

from benchmarks.chromium import launch, missing_browser
from benchmarks.glass_to_glass import RATE, mouth_box, reaction_latencies, vowel_track
from benchmarks.live import free_port, pct, start_server, stop_server
from benchmarks.results_io import ROOT, save

INSTRUMENT_JS = """
const box = arguments[0];
const state = window.lipsync;
const g2g = window.g2g = {onsets: [], heard: [], frames: []};
const video = document.getElementById('output');
// a vowel's onset is the first loud block after 0.3 s of quiet: in the microphone (sent) and in
// the avatar's audio as the page plays it (heard; the same rule, so both carry the same bias)
const ctx = new AudioContext();
const taps = [];
const listen = (stream, onsets) => {
  const source = ctx.createMediaStreamSource(stream);
  const tap = ctx.createScriptProcessor(256, 1, 1);
  let quietSince = null;
  tap.onaudioprocess = (event) => {
    const now = performance.now();
    const data = event.inputBuffer.getChannelData(0);
    let first = -1;
    for (let i = 0; i < data.length; i++) if (Math.abs(data[i]) > 0.05) { first = i; break; }
    const blockStart = now - data.length / ctx.sampleRate * 1000;
    if (first < 0) { if (quietSince === null) quietSince = blockStart; return; }
    if (quietSince !== null && blockStart - quietSince > 300) onsets.push(blockStart + first / ctx.sampleRate * 1000);
    quietSince = null;
  };
  source.connect(tap); tap.connect(ctx.destination);
  taps.push(tap);  // kept referenced: a collected node stops calling back
};
listen(state.localStream, g2g.onsets);
listen(new MediaStream(video.srcObject.getAudioTracks()), g2g.heard);
window.g2gTaps = taps;
// output video: each frame's expected display time and its mouth region, 24 x 16 grey levels
const canvas = new OffscreenCanvas(24, 16);
const draw = canvas.getContext('2d', {willReadFrequently: true});
const onFrame = (now, meta) => {
  draw.drawImage(video, box.x, box.y, box.w, box.h, 0, 0, 24, 16);
  const rgba = draw.getImageData(0, 0, 24, 16).data;
  const row = [meta.expectedDisplayTime];
  for (let i = 0; i < rgba.length; i += 4) row.push(Math.round((rgba[i] + rgba[i + 1] + rgba[i + 2]) / 3));
  g2g.frames.push(row);
  video.requestVideoFrameCallback(onFrame);
};
video.requestVideoFrameCallback(onFrame);
"""

STATS_JS = """
const done = arguments[arguments.length - 1];
window.lipsync.pc.getStats().then(report => {
  const out = {};
  report.forEach(r => { if (r.type === 'inbound-rtp') out[r.kind] = r; });
  done(JSON.parse(JSON.stringify(out)));
});
"""


def grey_y4m(path: Path, seconds: float = 2.0) -> Path:
    """A still grey 320x240 camera (the avatar, not the camera, is what comes back)."""
    with av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 25)
        for n in range(int(seconds * 25)):
            frame = av.VideoFrame.from_ndarray(np.full((240, 320, 3), 128, np.uint8), format="rgb24")
            frame.pts = n
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def video_still(driver: Any) -> np.ndarray:
    """The output video's current frame, as RGB."""
    data = driver.execute_script(
        "const v = document.getElementById('output'); const c = document.createElement('canvas');"
        "c.width = v.videoWidth; c.height = v.videoHeight; c.getContext('2d').drawImage(v, 0, 0);"
        "return c.toDataURL('image/png');"
    )
    png = np.frombuffer(base64.b64decode(data.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def inbound_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The getStats figures the issue names, per kind, as averages per frame or sample."""
    out: dict[str, Any] = {}
    for kind, r in stats.items():
        emitted = r.get("jitterBufferEmittedCount") or 0
        row = {"jitter_buffer_delay_ms": round(1000 * r["jitterBufferDelay"] / emitted, 1) if emitted else None}
        if kind == "video":
            decoded = r.get("framesDecoded") or 0
            row.update(
                total_processing_delay_ms=round(1000 * r.get("totalProcessingDelay", 0) / decoded, 1) if decoded else None,
                frames_decoded=decoded, frames_dropped=r.get("framesDropped"), freeze_count=r.get("freezeCount"),
                total_freezes_duration_s=r.get("totalFreezesDuration"), frames_per_second=r.get("framesPerSecond"),
            )
        out[kind] = row
    return out


def heard_offsets(onsets: list[float], heard: list[float], shown: np.ndarray, reacting: list[int]) -> tuple[list[float], list[float]]:
    """Per vowel sent: when the page played it back (the first heard onset within a second), as
    seconds after it was sent; and, for vowels with a reacting frame, that frame's display time
    minus the playback of the vowel (negative: the mouth moves before the sound is heard)."""
    after, mouth = [], []
    for sent, frame in zip(onsets, reacting):
        later = [t for t in heard if sent <= t < sent + 1.0]
        if not later:
            continue
        after.append(later[0] - sent)
        if frame >= 0:
            mouth.append(float(shown[frame]) - later[0])
    return after, mouth


def measure(seconds: float, period_s: float, playout: str = "lowest") -> dict[str, Any]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    missing = missing_browser()
    if missing:
        raise SystemExit(f"needs {' and '.join(missing)}: apt-get install chromium chromium-driver")
    work = Path(tempfile.mkdtemp(prefix="g2g-browser-"))
    events = int((seconds - 3.0) / period_s)
    pcm, _ = vowel_track(events, period_s)
    sf.write(work / "mic.wav", pcm, RATE, subtype="PCM_16")
    port = free_port()
    server = start_server(port)
    driver = launch(grey_y4m(work / "camera.y4m"), work / "mic.wav", work / "profile")
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 15).until(lambda d: d.execute_script(
            "return ['backend', 'avatar'].every(id => document.getElementById(id).options.length > 0)"))
        Select(driver.find_element(By.ID, "backend")).select_by_value("mesh")
        Select(driver.find_element(By.ID, "avatar")).select_by_value("astronaut")
        Select(driver.find_element(By.ID, "playout")).select_by_value(playout)
        driver.find_element(By.ID, "start").click()
        WebDriverWait(driver, 30, poll_frequency=0.2).until(lambda d: d.execute_script(
            "const v = document.getElementById('output'); return v.readyState >= 2 && v.currentTime > 0.5;"))
        rows, cols = mouth_box(video_still(driver))
        box = {"x": cols.start, "y": rows.start, "w": cols.stop - cols.start, "h": rows.stop - rows.start}
        driver.execute_script(INSTRUMENT_JS, box)
        time.sleep(seconds)
        marks = driver.execute_script("return window.g2g")
        stats = inbound_stats(driver.execute_async_script(STATS_JS))
    finally:
        driver.quit()
        stop_server(server)
        shutil.rmtree(work, ignore_errors=True)
    frames = np.array(marks["frames"], np.float64)
    if len(frames) < 100:
        raise SystemExit(f"only {len(frames)} output frames were timed: is the page playing?")
    shown, mouths = frames[:, 0] / 1000.0, frames[:, 1:]
    change = np.abs(mouths - np.median(mouths, axis=0)).mean(axis=1)
    # vowels early enough for their reaction to be seen before the end
    onsets = [t / 1000.0 for t in marks["onsets"] if shown[0] + 0.3 < t / 1000.0 < shown[-1] - 0.8]
    latencies, reacting, not_closed = reaction_latencies(onsets, shown, change)
    heard_after, mouth_vs_heard = heard_offsets(onsets, [t / 1000.0 for t in marks["heard"]], shown, reacting)
    return {
        "backend": "mesh", "avatar": "astronaut", "playout": playout, "seconds": seconds, "period_s": period_s,
        "events": len(onsets), "reacted": len(latencies), "mouth_not_closed_before": not_closed,
        "glass_to_glass_ms": {q: pct(latencies, int(q[1:])) for q in ("p50", "p95", "p99")} if latencies else None,
        "heard": len(heard_after),
        "audio_glass_to_glass_ms": {q: pct(heard_after, int(q[1:])) for q in ("p50", "p95")} if heard_after else None,
        "mouth_vs_sound_ms": {q: pct(mouth_vs_heard, int(q[1:])) for q in ("p5", "p50", "p95")} if mouth_vs_heard else None,
        "getstats": stats,
        "latencies_ms": [round(x * 1000, 1) for x in latencies],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=125.0, help="how long to measure (100 vowels at 1.2 s: 125 s)")
    parser.add_argument("--period", type=float, default=1.2, help="seconds between vowels")
    parser.add_argument("--playout", choices=("lowest", "smooth"), default="lowest", help="the page's Playout setting")
    args = parser.parse_args()
    result = {"benchmark": "glass_to_glass_browser", **measure(args.seconds, args.period, args.playout)}
    out = save("glass_to_glass_browser_mesh" + ("" if args.playout == "lowest" else f"_{args.playout}"), result)
    print(json.dumps({k: v for k, v in result.items() if k != "latencies_ms"}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
