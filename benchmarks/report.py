"""Plots and the README's performance section, generated from the committed results.

Reads benchmarks/results/*.json, writes benchmarks/results/plots/*.png (latency CDF, fps over
time under stress, per-stage breakdown) and replaces the text between the performance markers
in README.md. A result that has not been produced yet is said to be missing, never invented.

    python -m benchmarks.report
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.results_io import RESULTS, ROOT

LATENCY_MARGIN_MS = 60.0  # the live latency target: server latency p95 <= the backend's lookahead + this
BEGIN, END = "<!-- performance:begin (benchmarks/report.py writes this part) -->", "<!-- performance:end -->"
PLOTS = RESULTS / "plots"
STAGE_LABELS = {
    "features": "audio in -> features",
    "to_dispatch": "-> handed out",
    "queue": "queue wait",
    "build": "job build",
    "backend": "backend",
    "hold": "hold to deadline",
    "compose": "compose + hand-off",
}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    return f"{m['cores']} cores ({m['cpu']}), Python {m['python']}, aiortc {m['aiortc']}, commit {m['git_commit']}, {m['date'][:10]}"


# -- plots -------------------------------------------------------------------------------------
def plot_latency_cdf(g2g: dict[str, Any] | None, stress: dict[str, Any] | None) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not g2g and not stress:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if g2g and g2g.get("latencies_ms"):
        values = np.sort(g2g["latencies_ms"])
        ax.plot(values, np.linspace(0, 1, len(values)), lw=2, label=f"glass-to-glass, {g2g['backend']}")
    for name, case in (stress or {}).get("cases", {}).items():
        values = np.sort(case["live"].get("latencies_ms", []))
        if len(values):
            ax.plot(values, np.linspace(0, 1, len(values)), lw=1, label=f"server latency, backend {name}")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of frames / events")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Latency CDF")
    return save_plot(fig, "latency_cdf.png")


def plot_fps(stress: dict[str, Any] | None) -> str | None:
    import matplotlib.pyplot as plt

    if not stress:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, case in stress["cases"].items():
        ax.plot(case["live"]["fps_per_second"], lw=1, label=name)
    ax.axhline(23, color="grey", ls="--", lw=1)
    ax.set_ylim(0, 30)
    ax.set_xlabel("second of the run")
    ax.set_ylabel("frames received per second")
    ax.legend(fontsize=8, ncol=5)
    ax.set_title("Output fps under stress (backend speed as a fraction of real time)")
    return save_plot(fig, "fps_under_stress.png")


def plot_stages(loopbacks: dict[str, dict[str, Any]]) -> str | None:
    import matplotlib.pyplot as plt

    rows = {name: r["stages_ms_last_10s"] for name, r in loopbacks.items() if r.get("stages_ms_last_10s")}
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.6 * len(rows)))
    for y, (name, stages) in enumerate(rows.items()):
        left = 0.0
        for stage, label in STAGE_LABELS.items():
            width = stages[stage]["p50"] or 0.0
            ax.barh(y, width, left=left, label=label if y == 0 else None)
            left += width
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel("ms (median per stage, generated frames)")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    ax.set_title("Where a generated frame's time goes (audio arrival to encoder)")
    return save_plot(fig, "stages.png")


def save_plot(fig: Any, name: str) -> str:
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOTS / name, dpi=100)
    return str((PLOTS / name).relative_to(ROOT))


# -- sections ----------------------------------------------------------------------------------
def section_glass(g2g: dict[str, Any] | None, browser: dict[str, Any] | None,
                  browser_smooth: dict[str, Any] | None = None) -> list[str]:
    out = ["#### Glass-to-glass (microphone to the avatar's mouth)", ""]
    if not g2g and not browser:
        return out + ["Not measured yet: `python -m benchmarks.glass_to_glass` and `python -m benchmarks.glass_to_glass_browser`.", ""]
    out += [
        "Backend `mesh`, avatar `astronaut`, over real WebRTC on loopback. The microphone plays "
        "silence with a 200 ms synthetic open vowel every 1.2 s; latency is from the vowel's first sample entering "
        "the microphone to the first output frame whose mouth has moved 30 % of the way to its typical opening. "
        "The page's rows differ by its Playout setting (lowest latency, the default, or smoothest).",
        "",
        "| sender and receiver | command | vowels | reacted | p50 | p95 | p99 | target | machine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    browser_target = ("p50 <= 200, p95 <= 260 ms, >= 98 % reacted",
                      lambda r, g: g["p50"] <= 200 and g["p95"] <= 260 and r["reacted"] >= 0.98 * r["events"])
    for name, command, r, (target, met) in (
        ("aiortc peer (to the decoded frame)", "`python -m benchmarks.glass_to_glass`", g2g,
         ("p50 <= 250 ms", lambda r, g: g["p50"] <= 250)),
        ("the web page in Chromium, lowest latency (to the frame's display time)",
         "`python -m benchmarks.glass_to_glass_browser`", browser, browser_target),
        ("the web page in Chromium, smoothest", "`python -m benchmarks.glass_to_glass_browser --playout smooth`",
         browser_smooth, browser_target),
    ):
        if not r or not r.get("glass_to_glass_ms"):
            out.append(f"| {name} | {command} | not measured yet | | | | | {target} | |")
            continue
        g = r["glass_to_glass_ms"]
        out.append(f"| {name} | {command} | {r['events']} | {r['reacted']} | {ms(g['p50'])} ms | {ms(g['p95'])} ms | "
                   f"{ms(g['p99'])} ms | {target}: {verdict(met(r, g))} | {machine_line(r)} |")
    mv = (g2g or {}).get("mouth_vs_sound_ms")
    if mv:
        out += ["", f"At the aiortc receiver the mouth starts to open {-mv['p50']:.0f} ms (median) before the vowel is heard "
                "(frames and audio placed on the sender's clock by the RTCP sender reports): the model's 100 ms lookahead "
                "lets it anticipate, as real speakers do."]
    page = (browser or {}).get("mouth_vs_sound_ms")
    if mv and page:
        offset = page["p50"] - mv["p50"]
        heard = browser["audio_glass_to_glass_ms"]
        out += ["", f"At the page (lowest latency) the avatar's audio is heard {ms(heard['p50'])} ms (p50) after the vowel "
                f"entered the microphone, and the mouth moves {-page['p50']:.0f} ms before it is heard (p5 / p95: "
                f"{-page['p95']:.0f} / {-page['p5']:.0f} ms). Against the {-mv['p50']:.0f} ms the stream carries (the "
                f"aiortc receiver, on the sender's clock), the page shows video {offset:+.0f} ms against audio, "
                f"{'within' if -125 <= offset <= 45 else 'outside'} ITU-R BT.1359's -125 / +45 ms (negative: the "
                "sound comes later). Both taps are Web Audio script processors, so the sound's figure includes that "
                "node's own delay (a few ms; not measured separately)."]
    stats = (browser or {}).get("getstats")
    if stats and "video" in stats:
        v, a = stats["video"], stats.get("audio", {})
        out += ["", "Chromium's own figures for the received tracks (getStats, whole run):", "",
                "| video jitter buffer | video decode + processing | frames decoded | dropped | freezes (total s) | audio jitter buffer |",
                "|---|---|---|---|---|---|",
                f"| {ms(v['jitter_buffer_delay_ms'])} ms | {ms(v['total_processing_delay_ms'])} ms | {v['frames_decoded']} | "
                f"{v['frames_dropped']} | {v['freeze_count']} ({v['total_freezes_duration_s']}) | {ms(a.get('jitter_buffer_delay_ms'))} ms |"]
    return out + [""]


def section_stages(loopbacks: dict[str, dict[str, Any]]) -> list[str]:
    out = ["#### Server latency and where it goes", ""]
    if not loopbacks:
        return out + ["Not measured yet: `python -m benchmarks.loopback --backend mesh`.", ""]
    out += [
        "`python -m benchmarks.loopback --backend B [--avatar astronaut] --seconds 30`: an aiortc peer sends a real "
        "talking clip (camera + microphone) to the server in its own process. Server latency is from the newest "
        "audio sample a frame depends on to its hand-off to the encoder, plus the lookahead (DESIGN.md). The stages "
        "(medians, generated frames, last 10 s; `stream_server/stages.py`) add up to the latency less the lookahead.",
        "",
        "| run | fps received | latency p50 / p95 | delay | A/V offset (median) | " + " | ".join(STAGE_LABELS.values()) + " |",
        "|---|---|---|---|---|" + "---|" * len(STAGE_LABELS),
    ]
    for name, r in loopbacks.items():
        stages = r.get("stages_ms_last_10s") or {}
        cells = [ms(stages[s]["p50"]) if s in stages else "-" for s in STAGE_LABELS]
        offset = r.get("av_offset_ms")
        lat = r["server_latency_ms_last_10s"]
        out.append(
            f"| {name} | {r['fps_received']} | {ms(lat['p50'])} / {ms(lat['p95'])} ms | {ms(r['delay_ms'])} ms | "
            f"{ms(offset['median']) + ' ms' if offset else '-'} | " + " | ".join(cells) + " |"
        )
    for name in ("mesh, camera", "mesh, astronaut"):
        mesh = loopbacks.get(name)
        if mesh and "lookahead_ms" in mesh:
            p95, target = mesh["server_latency_ms_last_10s"]["p95"], mesh["lookahead_ms"] + LATENCY_MARGIN_MS
            out += ["", f"Target for `{name}`: server latency p95 <= lookahead + {LATENCY_MARGIN_MS:.0f} = {target:.0f} ms: {ms(p95)} ms, {verdict(p95 <= target)}."]
    return out + [""]


def section_stress(stress: dict[str, Any] | None) -> list[str]:
    out = ["#### The scheduler under stress", ""]
    if not stress:
        return out + ["Not measured yet: `python -m benchmarks.stress`.", ""]
    out += [
        f"`python -m benchmarks.stress` ({machine_line(stress)}): the server with a backend that returns the camera frame "
        f"after the time a backend at the given speed takes (`benchmarks/slowed_server.py`; `stalls`: 1.2x with 1 % of "
        f"frames stalling 0.5 s), live for {stress['live_seconds']:.0f} s per case over WebRTC on loopback, and the same "
        "scheduler on a simulated clock for 5 minutes (0-30 ms audio jitter). Latency trend: slope of a line fitted to "
        "every frame's server latency (creep would show as a steady rise).",
        "",
        "| backend speed | fps mean | worst 1 s | generated / interpolated / repeated / dropped | delay | latency p50 / p95 | trend (live) | A/V offset first -> last third | simulated 5 min: latency trend, picture age p95 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, case in stress["cases"].items():
        live, sim = case["live"], case["simulated"]
        f = live["frames"]
        av = live.get("av_offset_ms")
        out.append(
            f"| {name} | {live['fps_mean']} | {live['fps_worst_1s']:.0f} | {f['generated']} / {f['interpolated']} / "
            f"{f['repeated']} / {f['dropped']} | {ms(live['delay_ms'])} ms | {ms(live['latency_ms']['p50'])} / "
            f"{ms(live['latency_ms']['p95'])} ms | {live['latency_trend_ms_per_min']:+.1f} ms/min | "
            f"{(ms(av['first_third_median']) + ' -> ' + ms(av['last_third_median']) + ' ms') if av else '-'} | "
            f"{sim['latency_trend_ms_per_min']:+.2f} ms/min, {ms(sim['picture_age_ms']['p95'])} ms |"
        )
    half = stress["cases"].get("0.5x")
    if half:
        worst = half["live"]["fps_worst_1s"]
        out += ["", f"Target: 25 fps held at 0.5x (worst 1 s window >= 23): worst {worst:.0f}, {verdict(worst >= 23)}."]
    return out + [""]


def section_concurrency(conc: dict[str, Any] | None) -> list[str]:
    out = ["#### Sessions per machine", ""]
    if not conc:
        return out + ["Not measured yet: `python -m benchmarks.concurrency`.", ""]
    rule = conc["hold_rule"]
    by_workers = conc.get("runs_by_workers") or {"default": conc["runs"]}
    out += [
        f"`python -m benchmarks.concurrency` ({machine_line(conc)}): N aiortc peers, each a microphone playing real speech, "
        f"on one server with `{conc['backend']}` and avatar `{conc['avatar']}`, {conc['seconds']:.0f} s, for each N a server "
        f"with the backend in its own process (`--workers 0`) and one with the default worker processes "
        f"({conc.get('workers_default', '?')} here), one after the other. N holds when every "
        f"session keeps >= {rule['fps_mean']} fps, a worst 1 s window >= {rule['fps_worst_1s']:.0f} and a p95 server latency "
        f"<= {rule['latency_p95_ms']:.0f} ms. The server's CPU and memory include its worker processes; the peers run on "
        "the same 2 cores (their CPU is shown).",
        "",
        "| N | workers | holds | lowest session fps | worst 1 s | highest p95 latency | server CPU (cores) | server memory | peers' CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sessions = sorted({r["sessions"] for runs in by_workers.values() for r in runs})
    for n in sessions:
        for workers, runs in by_workers.items():
            for run in (r for r in runs if r["sessions"] == n):
                out.append(
                    f"| {n} | {workers} | {'yes' if run['holds'] else 'no'} | {run['fps_mean_min']} | {run['fps_worst_1s_min']:.0f} | "
                    f"{ms(run['latency_p95_ms_max'])} ms | {run['server']['cpu_cores_mean']} | {run['server']['rss_mb_max']:.0f} MB | "
                    f"{run['peers']['cpu_cores_mean']} |"
                )
    largest = conc.get("largest_n_holding_by_workers") or {"default": conc["largest_n_holding"]}
    told = ", ".join(f"**{n}** with `--workers {w}`" for w, n in largest.items())
    return out + ["", f"Largest N that holds on this machine: {told}.", ""]


def section_long(long_run: dict[str, Any] | None) -> list[str]:
    out = ["#### A long session", ""]
    if not long_run:
        return out + ["Not measured yet: `python -m benchmarks.long_run --minutes 10` (`make bench-long`).", ""]
    drift = long_run["av_offset_drift_ms"]
    out += [
        f"`python -m benchmarks.long_run --minutes {long_run['minutes']:.0f}` ({machine_line(long_run)}): one `{long_run['backend']}` "
        "camera session. Drift and growth compare the last minute with the second.",
        "",
        "| fps mean (worst 1 s) | A/V offset median | A/V drift | latency p50 / p95 | latency trend | server memory growth | target: drift <= 10 ms |",
        "|---|---|---|---|---|---|---|",
        f"| {long_run['fps_mean']} ({long_run['fps_worst_1s']:.0f}) | {ms(long_run['av_offset_ms']['median'])} ms | {drift:+.1f} ms | "
        f"{ms(long_run['latency_ms']['p50'])} / {ms(long_run['latency_ms']['p95'])} ms | {long_run['latency_trend_ms_per_min']:+.2f} ms/min | "
        f"{long_run['rss_growth_mb']:+.1f} MB | {verdict(abs(drift) <= 10)} |",
        "",
    ]
    return out


def build_section() -> str:
    loopbacks = {}
    for backend in ("passthrough", "mesh"):
        for avatar in ("camera", "astronaut"):
            result = load(f"loopback_{backend}_{avatar}")
            if result:
                loopbacks[f"{backend}, {avatar}"] = result
    g2g, browser, stress = load("glass_to_glass_mesh"), load("glass_to_glass_browser_mesh"), load("stress")
    browser_smooth = load("glass_to_glass_browser_mesh_smooth")
    conc, long_run = load("concurrency_mesh_astronaut"), load("long_run_mesh")
    plots = [p for p in (plot_latency_cdf(g2g, stress), plot_fps(stress), plot_stages(loopbacks)) if p]
    lines = [BEGIN, ""]
    lines += section_glass(g2g, browser, browser_smooth) + section_stages(loopbacks) + section_stress(stress) + section_concurrency(conc) + section_long(long_run)
    lines += [f"![{Path(p).stem}]({p})" for p in plots] + ["", END]
    return "\n".join(lines)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no performance markers ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + build_section() + tail)
    print(f"updated {readme.relative_to(ROOT)}; plots in {PLOTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
