"""The ``gaussian`` backend's part of ``benchmarks.gpu_check``: gsplat's first build, parity of
gsplat against the project's torch rasterizer, serving speed at 512x512 for 1 / 4 / 8 sessions
through the backend's own ``generate``, and a full-size enrolment (time and held-out PSNR).

The GPU machine has no mediapipe (tracking) and no ../shared, so the clip is prepared here first:

    python -m benchmarks.gpu_check_gaussian --prepare ../shared/corpus/video/DFRF_cnn2_25fps_part0.mp4

writes ``.gpu_inputs/gaussian_512.npz`` (stage A of the enrolment of that 40 s 512x512 clip,
every second frame kept so that it travels under the device's 64 MiB; ignored by git). Carry
``.gpu_inputs`` and, for gsplat, its wheel in ``.whl`` (``pip download --no-deps gsplat==1.5.3``;
its dependencies jaxtyping, rich and ninja are on the GPU image), then on the device:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; \\
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --only gaussian

Every figure names its renderer: "gsplat" (CUDA kernels), "torch on CUDA" (raster_torch on the
GPU: the fallback where gsplat does not build) or "torch on CPU" (a code-path check). The
enrolment runs as many iterations of the full schedule as the time budget allows and projects
the full 12k-iteration time from the measured seconds per iteration; the report says which.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = ROOT / ".gpu_inputs" / "gaussian_512.npz"
SESSIONS = (1, 4, 8)
FULL_ITERS = 12000


# ----------------------------------------------------------------------------- the input


def thin(prepared: Any, every: int) -> Any:
    """``prepared`` with every ``every``-th frame (and the plate frames among them): the same
    40 s of the person, in half the bytes. The held-out split is drawn again on the kept frames."""
    from dataclasses import replace

    from engines.gaussian.prepare import _pack, split_frames

    keep = np.arange(0, prepared.n_frames, every)
    new_index = {int(old): new for new, old in enumerate(keep)}

    def blob(data: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _pack([data[offsets[i]:offsets[i + 1]] for i in rows])

    crop_jpeg, crop_offsets = blob(prepared.crop_jpeg, prepared.crop_offsets, keep)
    plate_rows = np.asarray([j for j, f in enumerate(prepared.plate_frames) if int(f) in new_index], np.int64)
    plate_jpeg, plate_offsets = blob(prepared.plate_jpeg, prepared.plate_offsets, plate_rows)
    per_frame = {name: getattr(prepared, name)[keep]
                 for name in ("frame_index", "times", "landmarks", "pose", "pose_raw", "drive", "mask_bits")}
    return replace(prepared, **per_frame, crop_jpeg=crop_jpeg, crop_offsets=crop_offsets,
                   plate_jpeg=plate_jpeg, plate_offsets=plate_offsets,
                   plate_frames=np.asarray([new_index[int(prepared.plate_frames[j])] for j in plate_rows], np.int64),
                   split=split_frames(len(keep)), fps=float(prepared.fps) / every,
                   meta={**prepared.meta, "thinned_every": prepared.meta.get("thinned_every", 1) * every})


def make_input(clip: Path, out: Path, every: int = 2) -> None:
    from engines.gaussian.prepare import prepare

    started = time.perf_counter()
    prepared = thin(prepare(clip, 512, progress=lambda stage, fraction: None), every)
    prepared.meta["prepare_s_here"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    prepared.save(out)
    print(f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB, {prepared.n_frames} frames of {clip.name}, "
          f"keeping 1 frame in {every}; stage A took {prepared.meta['prepare_s_here']} s here)")


# ----------------------------------------------------------------------------- renderers


def renderers(check: Any) -> list[tuple[str, Callable[..., Any]]]:
    """The rasterizers this machine can run, gsplat first; records gsplat's load/build time."""
    from engines.gaussian import raster_gsplat, raster_torch

    started = time.perf_counter()
    why_not = raster_gsplat.gsplat_unavailable()  # the first call JIT-builds gsplat's CUDA kernels
    check.report["gaussian"]["gsplat"] = {
        "available": why_not is None, "reason": why_not, "version_expected": raster_gsplat.GSPLAT_VERSION,
        "first_load_s": round(time.perf_counter() - started, 1),
        "note": "first_load_s includes the JIT build of the CUDA kernels when none was cached",
    }
    found = [("gsplat", raster_gsplat.rasterize)] if why_not is None else []
    found.append(("torch on CUDA" if check.cuda else "torch on CPU", raster_torch.rasterize))
    return found


def _scene(head: Any, prepared: Any, frames: np.ndarray, device: Any) -> tuple[Any, Any]:
    import torch

    d = torch.as_tensor(prepared.drive[frames], device=device)
    pose = torch.as_tensor(prepared.pose[frames], device=device)
    return d, pose


def parity(check: Any, head: Any, prepared: Any, found: list[tuple[str, Callable[..., Any]]]) -> None:
    """gsplat against raster_torch on the same Gaussians: image, alpha and gradients."""
    import torch

    if len(found) < 2:
        check.skip("gaussian parity", "gsplat is not available here: nothing to compare raster_torch with")
        return
    frames = prepared.heldout_idx[:4]
    d, pose = _scene(head, prepared, frames, check.device)
    out: dict[str, Any] = {"frames": len(frames), "size": head.config.res, "gaussians": head.n_gaussians}
    images, grads = {}, {}
    for name, rasterize in found[:2]:
        g = {k: v.detach().clone().requires_grad_(k in ("means", "colors", "opacities")) for k, v in head(d, pose).items()}
        rgb, alpha = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"],
                               head.cameras(len(frames)), head.config.res, head.config.res,
                               z0=head.config.z0, eps2d=head.config.eps2d)
        weights = torch.linspace(0.5, 1.5, rgb.shape[2], device=rgb.device)[None, None, :, None]
        (rgb * weights).sum().backward()
        images[name] = (rgb.detach().float(), alpha.detach().float())
        grads[name] = {k: g[k].grad.detach().float().reshape(-1) for k in ("means", "colors", "opacities")}
    (a_rgb, a_alpha), (b_rgb, b_alpha) = images.values()
    mse = float(((a_rgb - b_rgb) ** 2).mean())
    out["rgb_max_abs"], out["alpha_max_abs"] = float((a_rgb - b_rgb).abs().max()), float((a_alpha - b_alpha).abs().max())
    out["rgb_psnr_db"] = round(10 * np.log10(1.0 / mse), 2) if mse > 0 else float("inf")
    ga, gb = grads.values()
    out["grad_cosine"] = {k: round(float(torch.nn.functional.cosine_similarity(ga[k], gb[k], dim=0)), 5) for k in ga}
    out["compared"] = [name for name, _ in found[:2]]
    check.report["gaussian"]["parity"] = out
    print(f"  parity {out['compared'][0]} vs {out['compared'][1]}: rgb PSNR {out['rgb_psnr_db']} dB, "
          f"max abs {out['rgb_max_abs']:.3g}, grad cosine {out['grad_cosine']}", flush=True)


# ----------------------------------------------------------------------------- serving speed


def serving(check: Any, head_dir: Path, found: list[tuple[str, Callable[..., Any]]], sessions_list: tuple[int, ...]) -> None:
    """Milliseconds per tick of ``GaussianBackend.generate`` with B sessions of one enrolled head
    at 512x512: audio model, rig, one batched rasterization, composite into the plate frame."""
    from engines.base import AudioWindow, FrameJob
    from engines.gaussian.backend import GaussianBackend

    os.environ["LIPSYNC_AVATARS_DIR"] = str(head_dir.parent)
    backend = GaussianBackend()
    backend.load()
    base = np.zeros((512, 512, 3), np.uint8)
    avatar = backend.prepare_avatar(head_dir.name.removesuffix(".gshead"), base)
    avatar.data["head"].side = 512  # the CPU debug mode caps the side; the figure is for 512
    frames = int(round((backend.context_s + backend.lookahead_s) * 100))
    rng = np.random.default_rng(0)
    mels = rng.normal(-4.0, 2.0, (64, frames, 80)).astype(np.float32)
    rows = check.report["gaussian"].setdefault("serving", [])
    for name, rasterize in found:
        backend._rasterize = rasterize
        for sessions in sessions_list:
            if check.remaining() < 0:
                check.skip(f"gaussian serving {name} x{sessions}", "soft time budget spent")
                continue
            tick = [0]

            def one_tick() -> None:
                t = tick[0] / 25.0
                tick[0] += 1
                jobs = [FrameJob(f"s{s}", tick[0], t, AudioWindow(t, backend.context_s, backend.lookahead_s,
                                                                  np.zeros(frames * 160, np.float32),
                                                                  mels[(tick[0] + s) % len(mels)]), base, avatar)
                        for s in range(sessions)]
                backend.generate(jobs)

            run = check.timed(one_tick)
            row = {"renderer": name, "sessions": sessions, "size": 512, **run,
                   "fps_per_session": round(1000.0 / run["mean_ms"], 1),
                   "frames_per_s": round(1000.0 * sessions / run["mean_ms"], 1),
                   "holds_25fps": 1000.0 / run["mean_ms"] >= 25.0}
            rows.append(row)
            print(f"  serving {name:14s} {sessions} session(s): {run['mean_ms']:8.1f} ms/tick, "
                  f"{row['fps_per_session']} fps each", flush=True)
            check.save()


# ----------------------------------------------------------------------------- enrolment


def enrolment(check: Any, prepared: Any, head_root: Path) -> Path | None:
    """The full schedule (512², 20k Gaussians, B = 4) for as many iterations as the budget allows;
    the head is saved (for the serving figures) and the full run's time projected."""
    from dataclasses import replace

    from engines.gaussian.checkpoint import head_dir, save_head
    from engines.gaussian.fit import FitConfig, fit

    config = FitConfig.full()
    if not check.cuda:  # a CPU refuses the full schedule: its code path at full size, as a test scale
        config = replace(config, tiny_scale=True)
    probe_iters = 1 if check.quick or not check.cuda else 20
    started = time.perf_counter()
    _, probe = fit(prepared, replace(config, iters=probe_iters, eval_every=probe_iters), device=check.device.type)
    per_iter = probe["seconds_per_iter"]
    eval_s = probe["seconds"] - probe["fit_seconds"]  # the held-out renders before and after
    left = check.remaining() - 2 * eval_s - 60.0  # leave the serving figures their minute
    iters = probe_iters if probe_iters == 1 else max(probe_iters, min(FULL_ITERS, int(left / per_iter)))
    cfg = replace(config, iters=iters, eval_every=max(1, iters // 4))
    last = [0.0]

    def progress(info: dict[str, Any]) -> None:
        if time.perf_counter() - last[0] > 15:
            last[0] = time.perf_counter()
            print(f"  enrol: iteration {info['iteration']}/{info['total']}, loss {info['loss']:.4f}, "
                  f"held-out {info['heldout_psnr']:.2f} dB", flush=True)

    head, metrics = fit(prepared, cfg, device=check.device.type, progress=progress)
    out = {
        "clip": prepared.meta.get("source", "prepared input"), "frames": int(prepared.n_frames),
        "thinned_every": prepared.meta.get("thinned_every"), "res": cfg.head.res, "gaussians": head.n_gaussians,
        "batch": cfg.batch, "iterations": iters, "of_full_schedule": FULL_ITERS,
        "renderer": metrics["renderer"], "seconds_per_iter": round(metrics["seconds_per_iter"], 4),
        "fit_s": round(metrics["fit_seconds"], 1),
        "projected_full_fit_s": round(metrics["seconds_per_iter"] * FULL_ITERS + 2 * eval_s, 1),
        "stage_a_s_on_cpu_here": prepared.meta.get("prepare_s_here"),
        "heldout_psnr_face_db": round(metrics["heldout_psnr"], 2),
        "heldout_psnr_mouth_db": round(metrics["heldout_psnr_mouth"], 2),
        "heldout_psnr_initial_db": round(metrics["heldout_psnr_init"], 2),
        "train_psnr_face_db": round(metrics["train_psnr"], 2),
        "history": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in h.items()} for h in metrics["history"]],
        "total_s": round(time.perf_counter() - started, 1),
        "note": None if iters >= FULL_ITERS else f"{iters} of {FULL_ITERS} iterations (time budget): the PSNR is of "
                                                 "a shorter fit than a user's; the full time is projected",
    }
    check.report["gaussian"]["enrolment"] = out
    print(f"  enrolment: {iters} iterations in {out['fit_s']} s ({metrics['renderer']}), held-out "
          f"{out['heldout_psnr_face_db']} dB; full {FULL_ITERS} projected {out['projected_full_fit_s']} s", flush=True)
    folder = save_head(head_dir("gpucheck", head_root), head.to("cpu"), prepared, metrics, name="gpucheck")
    check.save()
    return folder


# ----------------------------------------------------------------------------- the section


def run_gaussian(check: Any, prepared_path: Path | None) -> None:
    """Adds ``report["gaussian"]``; never raises (an error is recorded and the check goes on)."""
    check.report["gaussian"] = {}
    check.current = "gaussian"
    print("gaussian ...", flush=True)
    path = prepared_path or DEFAULT_INPUT
    try:
        found = renderers(check)
        if not path.is_file():
            check.skip("gaussian enrolment, parity and serving",
                       f"no prepared clip at {path}: make it with python -m benchmarks.gpu_check_gaussian --prepare CLIP")
            return
        from engines.gaussian.model import GaussianHead, HeadConfig
        from engines.gaussian.prepare import Prepared

        prepared = Prepared.load(path)
        if not check.cuda:  # a code-path check: few frames, or the CPU renders 512² for minutes
            prepared = thin(prepared, 8)
        head = GaussianHead.from_prepared(prepared, HeadConfig.full()).to(check.device)
        parity(check, head, prepared, found)
        check.save()
        with tempfile.TemporaryDirectory(prefix="gpucheck-heads-") as heads:
            folder = enrolment(check, prepared, Path(heads))
            if folder is not None:
                serving(check, folder, found, (1,) if check.quick else SESSIONS)
    except Exception as exc:  # noqa: BLE001 - record it; the rest of the report stands
        check.report["errors"].append(f"gaussian: {type(exc).__name__}: {str(exc)[:300]}")
        print(f"  ERROR gaussian: {type(exc).__name__}: {exc}", flush=True)
    finally:
        check.save()


def table(report: dict[str, Any]) -> list[str]:
    g = report.get("gaussian") or {}
    lines = []
    if g.get("gsplat"):
        s = g["gsplat"]
        lines.append(f"gaussian gsplat: {'available' if s['available'] else 'unavailable: ' + str(s['reason'])}, "
                     f"first load {s['first_load_s']} s")
    if g.get("parity"):
        p = g["parity"]
        lines.append(f"gaussian parity {p['compared']}: PSNR {p['rgb_psnr_db']} dB, grad cosine {p['grad_cosine']}")
    if g.get("enrolment"):
        e = g["enrolment"]
        lines.append(f"gaussian enrolment: {e['iterations']} it, {e['seconds_per_iter']} s/it ({e['renderer']}), "
                     f"held-out {e['heldout_psnr_face_db']} dB, full schedule projected {e['projected_full_fit_s']} s")
    for row in g.get("serving", []):
        lines.append(f"gaussian serving {row['renderer']} x{row['sessions']}: {row['mean_ms']} ms/tick, "
                     f"{row['fps_per_session']} fps per session")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", type=Path, required=True, metavar="CLIP", help="the talking clip to prepare here")
    parser.add_argument("--out", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--every", type=int, default=2, help="keep every N-th frame (default 2: under the device's 64 MiB)")
    args = parser.parse_args(argv)
    make_input(args.prepare, args.out, args.every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
