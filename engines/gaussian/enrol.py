"""Enrol a talking-head video as a Gaussian head (spec ``gaussian.md`` §3.2, §3.7, §3.10).

    python -m engines.gaussian.enrol VIDEO --name NAME [--tiny] [--res 512] [--gaussians 20000]
                                     [--iters 12000] [--device auto|cuda|cpu] [--root DIR] [--force]

Stage A (``prepare``, CPU, mediapipe) → stage B (``fit``, CUDA; ``--tiny`` allows the CPU) →
``<root>/<NAME>.gshead`` (``checkpoint.save_head``). The root is ``$LIPSYNC_AVATARS_DIR`` or
``./avatars``. A terminal progress line shows the stage, iteration, loss, held-out PSNR and time
left; Ctrl-C cancels cleanly (exit 130; a second Ctrl-C interrupts at once). Refusals (no file, no
face, too short, no GPU for a full-scale head, ...) print one message without a traceback and
exit with code 2.

:func:`enrol` is the same thing as a function, for a server worker thread.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, TextIO

from engines.base import AvatarError
from engines.gaussian.checkpoint import META_FILE, check_name, head_dir, save_head
from engines.gaussian.fit import FitConfig, fit, resolve_device
from engines.gaussian.prepare import EnrolError, Prepared

EXIT_REFUSED, EXIT_CANCELLED = 2, 130
Progress = Callable[[dict[str, Any]], None]
PREPARE_STAGES = {"track": "track", "fit": "rig", "crops": "crops", "done": "crops"}  # prepare's names → ours


def fit_config(*, tiny: bool, res: int | None = None, gaussians: int | None = None,
               iters: int | None = None) -> FitConfig:
    """The §3.7 full or tiny config with the CLI's overrides."""
    config = FitConfig.tiny() if tiny else FitConfig.full()
    head = config.head
    if res is not None:
        head = replace(head, res=int(res))
    if gaussians is not None:
        head = replace(head, n_gaussians=int(gaussians))
    config = replace(config, head=head)
    if iters is not None:
        config = replace(config, iters=int(iters), eval_every=max(1, min(config.eval_every, int(iters))))
    return config


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def enrol(video: str | Path, name: str, root: str | Path | None = None, *, tiny: bool = False,
          res: int | None = None, gaussians: int | None = None, iters: int | None = None,
          device: str = "auto", progress: Progress | None = None, cancel: threading.Event | None = None,
          overwrite: bool = True, prepared: Prepared | None = None) -> Path:
    """Enrols ``video`` as ``<root>/<name>.gshead`` and returns that path.

    ``progress`` gets dicts with ``stage`` ("track", "rig", "crops", "fit", "save", "done") and
    ``fraction`` (of that stage); fit stages add iteration, total, loss, heldout_psnr and
    seconds_left. ``cancel`` stops within an iteration (:class:`EnrolError`, the head is not
    written). Refusals raise :class:`EnrolError` or :class:`AvatarError` with a message for the
    user. ``overwrite``: replace a head of that name once the new one is complete (the CLI asks
    for ``--force`` first). ``prepared``: reuse a stage-A result (its resolution wins over ``res``)."""
    report = progress or (lambda info: None)
    check_name(name)
    target = head_dir(name, root)
    if target.exists() and not overwrite:
        raise AvatarError(f"a head named {name!r} already exists ({target}): pick another name or pass --force")
    config = fit_config(tiny=tiny, res=res if prepared is None else prepared.res, gaussians=gaussians, iters=iters)
    dev = resolve_device(device, config)  # refuse a full-scale CPU fit before minutes of preparing
    video = Path(video)
    if prepared is None:
        if not video.is_file():
            raise EnrolError(f"{video} does not exist or is not a file")

        def on_prepare(stage: str, fraction: float) -> None:
            report({"stage": PREPARE_STAGES.get(stage, stage), "fraction": float(fraction)})

        prepared = prepare_video(video, config.head.res, tiny=tiny, progress=on_prepare, cancel=cancel)
    digest = sha256(video) if video.is_file() else None

    def on_fit(info: dict[str, Any]) -> None:
        report({**info, "fraction": info["iteration"] / max(1, info["total"])})

    head, metrics = fit(prepared, config, device=str(dev), progress=on_fit, cancel=cancel)
    metrics["source_sha256"] = digest
    if cancel is not None and cancel.is_set():
        raise EnrolError("cancelled")
    report({"stage": "save", "fraction": 0.0})
    path = save_head(target, head, prepared, metrics, name=name, overwrite=True)
    report({"stage": "done", "fraction": 1.0, "path": str(path), "heldout_psnr": metrics["heldout_psnr"]})
    return path


def prepare_video(video: Path, res: int, **kw: Any) -> Prepared:
    from engines.gaussian.prepare import prepare  # imports mediapipe's helpers only when used

    return prepare(video, res, **kw)


# --------------------------------------------------------------------------- the terminal

def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class TerminalProgress:
    """One status line, redrawn in place on a terminal (at most 10 times a second), or a line per
    stage and per tenth of it when the output is a file or a pipe."""

    WIDTH = 24

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last_draw = 0.0
        self.last_stage = ""
        self.last_tenth = -1
        self.width = 0

    def __call__(self, info: dict[str, Any]) -> None:
        stage, fraction = info.get("stage", ""), float(info.get("fraction", 0.0))
        now = time.monotonic()
        tenth = int(fraction * 10)
        new_stage = stage != self.last_stage
        if self.tty:
            if not new_stage and fraction < 1.0 and now - self.last_draw < 0.1:
                return
        elif not new_stage and tenth == self.last_tenth:
            return
        self.last_draw, self.last_tenth = now, tenth
        if new_stage and self.last_stage and self.tty:
            self.stream.write("\n")
        self.last_stage = stage
        self._draw(self.line(info))

    def line(self, info: dict[str, Any]) -> str:
        stage, fraction = info.get("stage", ""), min(1.0, max(0.0, float(info.get("fraction", 0.0))))
        filled = int(round(fraction * self.WIDTH))
        text = f"{stage:<6} [{'#' * filled}{'-' * (self.WIDTH - filled)}] {100 * fraction:3.0f}%"
        if "iteration" in info:
            text += f"  it {info['iteration']}/{info['total']}  loss {info['loss']:.4f}"
            psnr = info.get("heldout_psnr")
            text += f"  held-out {psnr:.2f} dB" if psnr is not None else ""
            text += f"  {_clock(info.get('seconds_left'))} left"
        return text

    def _draw(self, text: str) -> None:
        if self.tty:
            pad = max(0, self.width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.last_stage:
            self.stream.write("\n")
            self.stream.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m engines.gaussian.enrol",
                                 description="Enrol a talking-head video as a Gaussian head for the gaussian backend.")
    ap.add_argument("video", type=Path, help="a video of one person talking to a fixed camera (30 s to 5 min; "
                                            "3 s is enough with --tiny)")
    ap.add_argument("--name", required=True, help="the head's name (letters, digits, '_', '-')")
    ap.add_argument("--tiny", action="store_true", help="test scale: 96², 3k Gaussians, 500 iterations; runs on a CPU")
    ap.add_argument("--res", type=int, help="render resolution (default 512, or 96 with --tiny)")
    ap.add_argument("--gaussians", type=int, help="number of Gaussians (default 20000, or 3000 with --tiny)")
    ap.add_argument("--iters", type=int, help="training iterations (default 12000, or 500 with --tiny)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--root", type=Path, help="avatars directory (default $LIPSYNC_AVATARS_DIR or ./avatars)")
    ap.add_argument("--force", action="store_true", help="replace an existing head of that name")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cancel = threading.Event()
    bar = TerminalProgress()

    def on_sigint(signum: int, frame: Any) -> None:
        # the first Ctrl-C asks the loops to stop at their next check; a second one interrupts
        cancel.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.stderr.write("\ncancelling (Ctrl-C again to interrupt at once)...\n")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        path = enrol(args.video, args.name, args.root, tiny=args.tiny, res=args.res, gaussians=args.gaussians,
                     iters=args.iters, device=args.device, progress=bar, cancel=cancel, overwrite=args.force)
    except (EnrolError, AvatarError) as e:
        bar.close()
        if cancel.is_set():
            print("enrol: cancelled; nothing was written", file=sys.stderr)
            return EXIT_CANCELLED
        print(f"enrol: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        bar.close()
        print("enrol: interrupted; nothing was written", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        signal.signal(signal.SIGINT, previous)
    bar.close()
    metrics = _metrics(path)
    psnr = metrics.get("heldout_psnr")
    quality = f"; held-out PSNR {psnr:.2f} dB (initial {metrics.get('heldout_psnr_init', float('nan')):.2f})" if psnr else ""
    print(f"enrolled {args.name!r} in {path}{quality}; fit {metrics.get('fit_seconds', 0):.0f} s on "
          f"{metrics.get('device', '?')}")
    return 0


def _metrics(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((path / META_FILE).read_text()).get("metrics") or {}
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    sys.exit(main())
