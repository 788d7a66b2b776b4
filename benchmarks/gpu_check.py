"""One prepared speed check for a GPU machine: vasa's networks (Ditto) and MuseTalk's UNet at
full size with random weights (speed does not depend on the weight values).

    python -m benchmarks.gpu_check [--quick] [--out FILE] [--budget-s S] [--hard-s S]

Measures, for each network: milliseconds per call at batch 1/4/8 in fp32 and under fp16
autocast (Ditto's own PyTorch path runs autocast fp16), the fp16-vs-fp32 difference (max abs,
PSNR), and from those the frames per second of one session, the sessions one GPU holds at 25 fps
and an estimate of the first-frame delay. Every figure says how it ran: "CUDA torch, eager",
"CUDA torch, torch.compile" or "onnxruntime CPU" (the GPU machine has the CPU onnxruntime only,
no TensorRT), or "CPU torch, eager" where no GPU is present.

Per frame: stitch_network, warp_network, decoder (Ditto's renderer). Per window: the LMDM, one
guided step (two MotionDecoder passes) and one 10-step DDIM window. Per 5 frames: a
HuBERT-Large-size encoder (transformers' HubertModel; Ditto's exact HuBERT checkpoint is not
documented, the size is what matters). Once per avatar: appearance and motion extractors.
MuseTalk: the UNet as ``engines/musetalk/weights.py`` builds it from the published musetalk.json
(needs diffusers; the GPU image lacks it: carry the wheel, see the report's "skipped").

Time: a soft budget (no new measurement starts past it; lower-priority ones come last) and a
hard limit (a watchdog writes what was measured and exits), so it never overruns the device
lease. The JSON is rewritten after every network, so a kill leaves the figures so far.
``--quick`` is a few-minute code-path check for a CPU machine: batch 1 only, 1 iteration.
Without a GPU the report says device "cpu" and its default file is in the temp directory, not
benchmarks/results/gpu_check.json.

On the device machine (its python3 has CUDA torch, transformers and the CPU onnxruntime, but
not diffusers): carry the wheels diffusers==0.42.1 and importlib_metadata==8.7.0 in an ignored
``.whl/`` and run ``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl;
PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --out $OUT/gpu_check.json``.
Without them MuseTalk's UNet is reported as skipped and the rest runs.

``--only gaussian`` (or the default, all parts) adds the gaussian backend
(``benchmarks/gpu_check_gaussian.py``: gsplat's build, parity, enrolment, serving at 512x512 for
1/4/8 sessions); it needs a clip prepared here and the gsplat wheel carried (see that module).
One lease may not hold vasa, musetalk and a gsplat build together: run ``--only vasa,musetalk``
and ``--only gaussian`` in separate leases if need be.
"""

from __future__ import annotations

import argparse
import importlib.util
import warnings
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"
FPS = 25
HUBERT_SAMPLES = 6480  # one audio window (spec vasa.md §3.1)
LMDM_STEPS = 10  # sampling_timesteps of the online config
OVERLAPS = {75: 5, 70: 10}  # overlap_v2 -> frames per LMDM window V (spec §4.4)


def _load(name: str, path: Path) -> ModuleType:
    """Import a module by file, skipping its packages' __init__ (which may need serving deps)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


class Check:
    """The run: device, budget, the report being filled in, and how to save it."""

    def __init__(self, quick: bool, out: Path | None, budget_s: float, hard_s: float) -> None:
        import torch

        self.torch = torch
        self.quick = quick
        self.started = time.monotonic()
        self.budget_s, self.hard_s = budget_s, hard_s
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.eager = "CUDA torch, eager" if self.cuda else "CPU torch, eager"
        self.batches = (1,) if quick else (1, 4, 8)
        self.warmup, self.iters = (0, 1) if quick else (3, 20)
        self.out = out or (DEFAULT_OUT if self.cuda else Path(tempfile.gettempdir()) / "gpu_check_cpu.json")
        self.lock = threading.Lock()
        self.current = "start"
        self.report: dict[str, Any] = {
            "benchmark": "gpu_check", "mode": "quick" if quick else "full", "device": self.device.type,
            "note": None if self.cuda else "no CUDA device: CPU figures, a code-path check only, not GPU numbers",
            "weights": "random (speed does not depend on weight values; parity on random weights is indicative)",
            "env": self._env(), "budget_s": budget_s, "hard_s": hard_s,
            "networks": {}, "derived": {}, "skipped": [], "errors": [], "aborted": None,
        }
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # the 3-D convs need a tuned algorithm

    # --------------------------------------------------------------------- bookkeeping

    def _env(self) -> dict[str, Any]:
        torch = self.torch
        env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                               "cuda": torch.version.cuda, "cpu_threads": torch.get_num_threads()}
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                       capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                       tf32={"cudnn_conv": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32})
        for package in ("onnxruntime", "onnx", "transformers", "diffusers"):
            try:
                env[package] = __import__(package).__version__
            except Exception:  # noqa: BLE001 - absent or broken: say so
                env[package] = None
        try:
            import onnxruntime

            env["onnxruntime_providers"] = onnxruntime.get_available_providers()
        except Exception:  # noqa: BLE001
            pass
        return env

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()

    def skip(self, what: str, why: str) -> None:
        self.report["skipped"].append(f"{what}: {why}")
        print(f"  skipped {what}: {why}", flush=True)

    def save(self) -> None:
        with self.lock:
            self.report["elapsed_s"] = round(self.elapsed(), 1)
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.report, indent=2) + "\n")

    def watchdog(self) -> None:
        def abort() -> None:
            self.report["aborted"] = f"hard limit {self.hard_s:.0f} s reached during {self.current}"
            self.save()
            print(f"\nABORTED: {self.report['aborted']}; partial report in {self.out}", flush=True)
            os._exit(3)

        timer = threading.Timer(max(0.0, self.hard_s - self.elapsed()), abort)
        timer.daemon = True
        timer.start()

    # --------------------------------------------------------------------- measuring

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, fn: Callable[[], Any], warmup: int | None = None, iters: int | None = None) -> dict[str, Any]:
        warmup = self.warmup if warmup is None else warmup
        iters = self.iters if iters is None else iters
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append((time.perf_counter() - t0) * 1000.0)
        return {"mean_ms": round(statistics.fmean(times), 3), "p50_ms": round(statistics.median(times), 3),
                "min_ms": round(min(times), 3), "iters": iters}

    def call(self, model: Any, inputs: tuple, fp16: bool) -> Any:
        torch = self.torch
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=fp16):
            return model(*inputs)

    def parity(self, model: Any, inputs: tuple, peak: float | None = None) -> dict[str, Any]:
        """fp16 autocast and default-precision fp32 against strict fp32 (TF32 off), batch 1."""
        torch = self.torch
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            ref = _flat(torch, self.call(model, inputs, False))
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        result = {"reference": "fp32, TF32 off", "psnr_peak": "1 (image in [0,1])" if peak else "reference max - min"}
        for label, fp16 in (("fp32_default", False), ("fp16_autocast", True)):
            got = _flat(torch, self.call(model, inputs, fp16))
            diff = (got - ref).abs()
            rng = peak or float(ref.max() - ref.min()) or 1.0
            mse = float((diff ** 2).mean())
            result[label] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                             "psnr_db": round(10 * math.log10(rng ** 2 / mse), 2) if mse > 0 else math.inf,
                             "finite": bool(torch.isfinite(got).all())}
        result["reference_range"] = [float(ref.min()), float(ref.max())]
        return result

    def measure(self, key: str, make: Callable[[], Any], inputs_for: Callable[[int], tuple], *,
                fp16: bool = True, parity_peak: float | None = None, batches: tuple[int, ...] | None = None,
                params: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Build, then time at each batch in fp32 and fp16 autocast, then parity at batch 1."""
        torch = self.torch
        self.current = key
        print(f"{key} ...", flush=True)
        entry: dict[str, Any] = {"runs": [], **(extra or {})}
        self.report["networks"][key] = entry
        try:
            t0 = time.perf_counter()
            model = make()
            entry["build_s"] = round(time.perf_counter() - t0, 1)
            entry["parameters"] = params if params is not None else sum(p.numel() for p in model.parameters())
            for batch in batches or self.batches:
                inputs = tuple(x.to(self.device) for x in inputs_for(batch))
                for half in (False, True) if fp16 else (False,):
                    if self.remaining() < 0:
                        self.skip(f"{key} batch {batch}{' fp16' if half else ''}", "soft time budget spent")
                        continue
                    if self.cuda:
                        torch.cuda.reset_peak_memory_stats()
                    run = self.timed(lambda: self.call(model, inputs, half))
                    run.update(engine=self.eager, precision="autocast fp16" if half else "fp32", batch=batch,
                               per_item_ms=round(run["mean_ms"] / batch, 3))
                    if self.cuda:
                        run["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
                    entry["runs"].append(run)
                    print(f"  {run['engine']:18s} {run['precision']:14s} batch {batch}: {run['mean_ms']:9.2f} ms", flush=True)
            if fp16 and self.remaining() > 0:
                entry["parity"] = self.parity(model, tuple(x.to(self.device) for x in inputs_for(1)), parity_peak)
                print(f"  parity fp16: max abs {entry['parity']['fp16_autocast']['max_abs']:.3g}, "
                      f"PSNR {entry['parity']['fp16_autocast']['psnr_db']} dB", flush=True)
            return {"model": model}
        except Exception as exc:  # noqa: BLE001 - record it and go on with the next network
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.report["errors"].append(f"{key}: {entry['error']}")
            print(f"  ERROR {entry['error']}", flush=True)
            return None
        finally:
            self.save()


def _flat(torch: Any, out: Any) -> Any:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return torch.cat([o.float().reshape(-1) for o in outs])


def _seeded(fn: Callable[[int], tuple], seed: int = 0) -> Callable[[int], tuple]:
    def inputs(batch: int) -> tuple:
        import torch

        torch.manual_seed(seed)
        return fn(batch)

    return inputs


# ----------------------------------------------------------------------------- the networks


def run_vasa(check: Check, tm: ModuleType) -> dict[str, Any]:
    torch = check.torch
    models: dict[str, Any] = {}

    def builder(name: str, **config: Any) -> Callable[[], Any]:
        def make() -> Any:
            torch.manual_seed(0)
            with torch.device(check.device):  # random init on the device: fast
                return tm.build(name, **config).to(check.device)
        return make

    for name, peak in (("stitch_network", None), ("warp_network", None), ("decoder", 1.0)):
        got = check.measure(name, builder(name), _seeded(lambda b, n=name: _example(tm, n, b)), parity_peak=peak,
                            extra={"role": "per frame", "onnx": tm.NETWORKS[name].onnx})
        if got:
            models[name] = got["model"]

    # LMDM: one guided step (what the ONNX graph is), then a 10-step window
    got = check.measure("lmdm_step", builder("lmdm"), _seeded(lambda b: _example(tm, "lmdm", b)),
                        extra={"role": "per window, x10 steps", "onnx": tm.NETWORKS["lmdm"].onnx})
    if got:
        models["lmdm"] = got["model"]
        window(check, got["model"])
    return models


def _example(tm: ModuleType, name: str, batch: int) -> tuple:
    """CPU example inputs at the published shapes; they depend only on hyper-parameters, so a
    meta-device build (cached, no memory) gives them."""
    if name not in _EXAMPLES:
        _EXAMPLES[name] = tm.build(name, meta=True)
    return _EXAMPLES[name].example_inputs(batch)


_EXAMPLES: dict[str, Any] = {}


def window(check: Check, lmdm: Any) -> None:
    """One online LMDM window: S=10 guided steps plus the DDIM update (spec §4.3)."""
    torch = check.torch
    key = "lmdm_window"
    check.current = key
    entry: dict[str, Any] = {"role": "per window (V frames)", "steps": LMDM_STEPS, "runs": []}
    check.report["networks"][key] = entry
    ac = lmdm.alphas_cumprod.to(check.device)
    times = list(reversed(torch.linspace(-1, 999, LMDM_STEPS + 1).int().tolist()))
    pairs = list(zip(times[:-1], times[1:]))

    def run(batch: int, fp16: bool) -> Callable[[], Any]:
        torch.manual_seed(0)
        _, cond_frame, cond, _ = (t.to(check.device) for t in lmdm.example_inputs(batch))
        noise = [torch.randn(batch, lmdm.seq_frames, lmdm.motion_feat_dim, device=check.device) for _ in pairs]

        def sample() -> Any:
            x = torch.randn(batch, lmdm.seq_frames, lmdm.motion_feat_dim, device=check.device)
            for i, (t, t_next) in enumerate(pairs):
                tc = torch.full((batch,), t, dtype=torch.int64, device=check.device)
                pred_noise, x_start = check.call(lmdm, (x, cond_frame, cond, tc), fp16)
                if t_next < 0:
                    return x_start
                a, a_next = ac[t], ac[t_next]
                sigma = ((1 - a / a_next) * (1 - a_next) / (1 - a)).sqrt()
                c = (1 - a_next - sigma ** 2).sqrt()
                x = x_start.float() * a_next.sqrt() + c * pred_noise.float() + sigma * noise[i]
            return x
        return sample

    for batch in check.batches:
        for fp16 in (False, True):
            if check.remaining() < 0:
                check.skip(f"{key} batch {batch}", "soft time budget spent")
                continue
            r = check.timed(run(batch, fp16), warmup=0 if check.quick else 1, iters=1 if check.quick else 5)
            r.update(engine=check.eager, precision="autocast fp16" if fp16 else "fp32", batch=batch,
                     per_item_ms=round(r["mean_ms"] / batch, 3))
            entry["runs"].append(r)
            print(f"  {key} {r['precision']:14s} batch {batch}: {r['mean_ms']:9.2f} ms", flush=True)
    check.save()


def run_hubert(check: Check) -> None:
    torch = check.torch
    try:
        from transformers import HubertConfig, HubertModel
    except Exception as exc:  # noqa: BLE001
        check.skip("hubert_large", f"transformers not importable ({exc})")
        return
    # HuBERT-Large geometry (1024-d, 24 layers); Ditto's checkpoint is undocumented (spec §2.1)
    config = HubertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                          feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hubert = HubertModel(config)

        def forward(self, input_values: Any) -> Any:
            return self.hubert(input_values).last_hidden_state

    def make() -> Any:
        torch.manual_seed(0)
        with torch.device(check.device):
            return Encoder().eval()

    check.measure("hubert_large", make, _seeded(lambda b: (torch.randn(b, HUBERT_SAMPLES),)),
                  extra={"role": "per 5 frames (one 6480-sample window -> 20x1024)",
                         "definition": "transformers HubertModel, HuBERT-Large config, random weights"})


def run_musetalk(check: Check) -> None:
    torch = check.torch
    try:
        import diffusers  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        check.skip("musetalk_unet", f"diffusers not importable ({type(exc).__name__}: {exc}); carry the wheels "
                   "diffusers==0.42.1 and importlib_metadata==8.7.0 (10.x needs lazy-importer) and pip install "
                   "them --no-index --no-deps --target /tmp/site, PYTHONPATH=/tmp/site, as the device README says")
        return
    weights = _load("musetalk_weights_for_gpu_check", ROOT / "engines" / "musetalk" / "weights.py")

    class Step(torch.nn.Module):
        """One UNet call at t = 0: latents (B,8,32,32), audio tokens (B,50,384) (engines/musetalk/model.py)."""

        def __init__(self) -> None:
            super().__init__()
            self.unet = weights.build_unet(weights.PUBLISHED_UNET_CONFIG)

        def forward(self, latents: Any, audio: Any) -> Any:
            t = torch.zeros((), dtype=torch.long, device=latents.device)
            return self.unet(latents, t, encoder_hidden_states=audio).sample

    def make() -> Any:
        torch.manual_seed(0)
        with torch.device(check.device):
            return Step().eval()

    check.measure("musetalk_unet", make, _seeded(lambda b: (torch.randn(b, 8, 32, 32), torch.randn(b, 50, 384))),
                  params=weights.PUBLISHED_UNET_PARAMETERS,
                  extra={"role": "per frame (MuseTalk: UNet only; VAE decode and Whisper not included)",
                         "definition": "engines/musetalk/weights.py build_unet(PUBLISHED_UNET_CONFIG)"})


def run_avatar_nets(check: Check, tm: ModuleType) -> None:
    """Once per avatar: low priority, batch 1."""
    torch = check.torch
    for name in ("appearance_extractor", "motion_extractor"):
        if check.remaining() < 20:
            check.skip(name, "soft time budget spent")
            continue

        def make(n: str = name) -> Any:
            torch.manual_seed(0)
            with torch.device(check.device):
                return tm.build(n).to(check.device)

        check.measure(name, make, _seeded(lambda b, n=name: _example(tm, n, b)), batches=(1,),
                      extra={"role": "once per avatar", "onnx": tm.NETWORKS[name].onnx})


def run_onnxruntime(check: Check, tm: ModuleType) -> None:
    """The CPU onnxruntime on exported random-weight graphs (the only ORT on the GPU image)."""
    try:
        import onnxruntime as ort
    except Exception as exc:  # noqa: BLE001
        check.skip("onnxruntime", f"not importable ({exc})")
        return
    names = ["stitch_network", "lmdm"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if check.remaining() < (20 if name == "stitch_network" else 60):
                check.skip(f"{name} onnxruntime CPU", "soft time budget spent")
                continue
            check.current = f"{name} onnxruntime"
            key = "lmdm_step" if name == "lmdm" else name
            entry = check.report["networks"].setdefault(key, {"runs": []})
            try:
                t0 = time.perf_counter()
                path = tm.export_onnx(name, Path(tmp) / tm.NETWORKS[name].onnx, batch_dynamic=False)
                export_s = time.perf_counter() - t0
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                feeds = {n: t.numpy() for n, t in zip(tm.NETWORKS[name].input_names, _seeded(lambda b: _example(tm, name, b))(1))}
                warm, iters = (1, 2) if check.quick else (3, 20 if name == "stitch_network" else 5)
                cpu = check.timed(lambda: session.run(None, feeds), warmup=warm, iters=iters)
                cpu.update(engine=f"onnxruntime CPU ({os.cpu_count()} cores)", precision="fp32", batch=1,
                           per_item_ms=cpu["mean_ms"], export_s=round(export_s, 1), opset=tm.ONNX_OPSET)
                entry["runs"].append(cpu)
                print(f"  {name} {cpu['engine']}: {cpu['mean_ms']:.2f} ms", flush=True)
            except Exception as exc:  # noqa: BLE001
                check.report["errors"].append(f"{name} onnxruntime: {type(exc).__name__}: {str(exc)[:300]}")
            check.save()


def run_compiled(check: Check, models: dict[str, Any], tm: ModuleType) -> None:
    """torch.compile (Inductor) where time is left: the renderer in fp16, the LMDM step with CUDA
    graphs (mode reduce-overhead: it is launch-bound at batch 1)."""
    torch = check.torch
    if not check.cuda:
        check.skip("torch.compile", "CUDA only in this check")
        return
    plan = [("warp_network", "default", True, (1, 8)), ("decoder", "default", True, (1, 8)),
            ("lmdm", "reduce-overhead", False, (1,))]
    for name, mode, fp16, batches in plan:
        key = "lmdm_step" if name == "lmdm" else name
        if name not in models:
            continue
        for batch in batches:
            if check.remaining() < 90:  # a compile can take a minute
                check.skip(f"{key} torch.compile batch {batch}", "soft time budget spent")
                continue
            check.current = f"{key} torch.compile batch {batch}"
            try:
                torch._dynamo.reset()  # a fresh, static-shape compile for each batch
                compiled = torch.compile(models[name], mode=mode, dynamic=False)
                inputs = tuple(x.to(check.device) for x in _seeded(lambda b, n=name: _example(tm, n, b))(batch))
                t0 = time.perf_counter()
                check.call(compiled, inputs, fp16)
                check.sync()
                compile_s = time.perf_counter() - t0
                run = check.timed(lambda: check.call(compiled, inputs, fp16))
                run.update(engine="CUDA torch, torch.compile", mode=mode, precision="autocast fp16" if fp16 else "fp32",
                           batch=batch, per_item_ms=round(run["mean_ms"] / batch, 3), compile_s=round(compile_s, 1))
                check.report["networks"][key]["runs"].append(run)
                print(f"  {key} torch.compile({mode}) batch {batch}: {run['mean_ms']:.2f} ms (compile {compile_s:.0f} s)", flush=True)
            except Exception as exc:  # noqa: BLE001
                check.report["errors"].append(f"{key} torch.compile: {type(exc).__name__}: {str(exc)[:300]}")
            check.save()


# ----------------------------------------------------------------------------- derived figures


def _best(report: dict[str, Any], key: str, batch: int, precision: str | None = None,
          engine_prefix: str = "") -> float | None:
    runs = [r for r in report["networks"].get(key, {}).get("runs", [])
            if r["batch"] == batch and (precision is None or r["precision"] == precision)
            and r["engine"].startswith(engine_prefix)]
    return min((r["mean_ms"] for r in runs), default=None)


def derive(check: Check) -> None:
    """Per-session fps, sessions per GPU at 25 fps and first-frame delay, from eager figures:
    renderer in fp16 autocast (as Ditto runs it), LMDM and HuBERT in fp32 (Ditto keeps those fp32)."""
    rep = check.report
    eager = check.eager
    out: dict[str, Any] = {"basis": f"{eager}; stitch+warp+decoder autocast fp16 on CUDA (else fp32), "
                                    "LMDM window and HuBERT fp32; "
                                    "GPU work summed serially (no overlap), putback and I/O excluded"}
    for batch in check.batches:
        # fp16 as Ditto renders on a GPU; CPU fp16 is emulated and slow, so fp32 there
        frame = [(_best(rep, k, batch, "autocast fp16", eager) if check.cuda else None) or _best(rep, k, batch, "fp32", eager)
                 for k in ("stitch_network", "warp_network", "decoder")]
        win = _best(rep, "lmdm_window", batch, "fp32", eager)
        hub = _best(rep, "hubert_large", batch, "fp32", eager)
        if None in frame or win is None:
            continue
        frame_ms = sum(frame)  # type: ignore[arg-type]
        row: dict[str, Any] = {"frame_ms_per_batch": round(frame_ms, 2), "lmdm_window_ms": win, "hubert_ms": hub}
        for overlap, v in OVERLAPS.items():
            # GPU milliseconds one session needs per second of video, with B sessions batched
            per_s = (FPS * frame_ms + FPS / v * win + FPS / 5 * (hub or 0.0)) / batch
            row[f"sessions_at_25fps_O{overlap}"] = round(1000.0 / per_s, 1)
            if batch == 1:
                row[f"fps_one_session_O{overlap}"] = round(1000.0 / (frame_ms + win / v + (hub or 0.0) / 5), 1)
        out[f"batch_{batch}"] = row
    one = out.get("batch_1")
    if one:
        delays = {}
        for overlap, v in OVERLAPS.items():
            audio_ms = (2 * v + 2) * 40 + 5  # audio needed before the first frame (spec §4.4)
            # after that audio: HuBERT, the emitting LMDM window, one frame; the first (silent)
            # window overlaps the wait for V frames of audio unless it is longer
            compute = (one["hubert_ms"] or 0.0) + one["lmdm_window_ms"] + one["frame_ms_per_batch"]
            compute += max(0.0, one["lmdm_window_ms"] - 40 * v)
            delays[f"O{overlap}"] = {"audio_lookahead_ms": audio_ms, "compute_ms": round(compute, 1),
                                     "first_frame_delay_ms": round(audio_ms + compute, 1)}
        out["first_frame_delay"] = delays
    muse = {}
    for batch in check.batches:
        ms = (_best(rep, "musetalk_unet", batch, "autocast fp16", eager) if check.cuda else None) \
            or _best(rep, "musetalk_unet", batch, "fp32", eager)
        if ms:
            muse[f"batch_{batch}"] = {"unet_ms": ms, "frames_per_s": round(1000 * batch / ms, 1),
                                      "sessions_at_25fps_unet_only": round(1000 * batch / ms / FPS, 1)}
    if muse:
        out["musetalk"] = muse
    rep["derived"] = out


def table(check: Check) -> str:
    lines = [f"{'network':22s} {'engine':34s} {'precision':14s} {'batch':>5s} {'ms/call':>9s} {'ms/item':>9s}"]
    for key, entry in check.report["networks"].items():
        for r in entry.get("runs", []):
            lines.append(f"{key:22s} {r['engine'][:34]:34s} {r['precision']:14s} {r['batch']:5d} "
                         f"{r['mean_ms']:9.2f} {r['per_item_ms']:9.2f}")
        par = entry.get("parity", {}).get("fp16_autocast")
        if par:
            lines.append(f"{'':22s} fp16 parity: max abs {par['max_abs']:.3g}, PSNR {par['psnr_db']} dB")
        if entry.get("error"):
            lines.append(f"{key:22s} ERROR {entry['error']}")
    d = check.report["derived"]
    for k, row in d.items():
        if k.startswith("batch_"):
            lines.append(f"vasa {k}: " + ", ".join(f"{a}={b}" for a, b in row.items()))
    for k, row in d.get("first_frame_delay", {}).items():
        lines.append(f"vasa first frame {k}: {row}")
    for k, row in d.get("musetalk", {}).items():
        lines.append(f"musetalk {k}: {row}")
    from benchmarks.gpu_check_gaussian import table as gaussian_table

    lines += gaussian_table(check.report)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 1, 1 iteration: a CPU code-path check (~2 min)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON report (default {DEFAULT_OUT.relative_to(ROOT)} on a GPU, the temp dir without one)")
    parser.add_argument("--budget-s", type=float, default=None, help="soft budget: no new measurement after it (default 420, quick 150)")
    parser.add_argument("--hard-s", type=float, default=None, help="hard limit: write what was measured and exit (default 480, quick 170)")
    parser.add_argument("--only", default="vasa,musetalk,gaussian",
                        help="comma-separated parts to run (default all): vasa, musetalk, gaussian; one lease "
                             "holds vasa+musetalk or gaussian with a gsplat build, not always both")
    parser.add_argument("--gaussian-input", type=Path, default=None,
                        help="the prepared clip for the gaussian part (default .gpu_inputs/gaussian_512.npz)")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"vasa", "musetalk", "gaussian"}
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}; pick from vasa, musetalk, gaussian")
    warnings.filterwarnings("ignore", module=r"torch(\.|$)")  # the ONNX tracer's warnings drown the table
    budget = args.budget_s or (150.0 if args.quick else 420.0)
    hard = args.hard_s or max(budget + 30.0, 170.0 if args.quick else 480.0)
    check = Check(args.quick, args.out, budget, hard)
    check.watchdog()
    print(f"gpu_check: device {check.device.type} ({check.report['env'].get('gpu', 'no GPU')}), torch "
          f"{check.torch.__version__}, CUDA {check.torch.version.cuda}; budget {budget:.0f} s, hard {hard:.0f} s", flush=True)
    if not check.cuda:
        print("  no CUDA device: CPU figures below are a code-path check, not GPU numbers", flush=True)
    check.report["parts"] = sorted(parts)
    tm = _load("vasa_torch_models_for_gpu_check", ROOT / "engines" / "vasa" / "torch_models.py")
    models = run_vasa(check, tm) if "vasa" in parts else {}  # highest priority: per-frame and per-window networks
    if "vasa" in parts:
        run_hubert(check)
    if "musetalk" in parts:
        run_musetalk(check)
    derive(check)
    check.save()
    if "gaussian" in parts:
        from benchmarks.gpu_check_gaussian import run_gaussian

        run_gaussian(check, args.gaussian_input)
    if "vasa" in parts:
        run_onnxruntime(check, tm)
        run_avatar_nets(check, tm)
        run_compiled(check, models, tm)  # lowest priority: only with time left
    derive(check)
    check.current = "done"
    check.save()
    print("\n" + table(check))
    print(f"\nwrote {check.out} in {check.elapsed():.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
