"""Train the audio-to-mouth model from scratch and write ``weights.npz`` beside this file.

    python -m engines.audio2mouth.train                 # the shipped weights (--recipe combined; one core:
                                                        # ~10 min with the data cached, ~30 from nothing):
                                                        # 3 networks (seeds 0-2) on synthetic speech
                                                        # (tts.py), each then fine-tuned on the real talking
                                                        # faces (real.py: ../shared/corpus + ../shared/testdata
                                                        # mouth tracks, live-path audio), mixed with the
                                                        # synthetic ones (share SYNTHETIC_SHARE); no ridge blend
    python -m engines.audio2mouth.train --folds 5 --fold-dir /tmp/a2m-folds
                                                        # the same, after speaker-held-out figures over 5 folds
                                                        # (fold models kept for benchmarks.quality
                                                        # --held-out-speakers 5 --fold-weights /tmp/a2m-folds)
    python -m engines.audio2mouth.train --recipe real   # real talking faces alone, from random weights
    python -m engines.audio2mouth.train --recipe synthetic
                                                        # the previous recipe: synthetic speech, then the ridge
                                                        # blend on the 9 test clips (blend.py), with its nested
                                                        # leave-one-clip-out score; --no-blend: the networks alone
    python -m engines.audio2mouth.train --recipe synthetic --real --loco
                                                        # experiment: add the test clips' mouth tracks,
                                                        # with leave-one-clip-out scores

Needs Festival and espeak-ng (apt-get install -y festival festvox-kallpc16k festvox-kdlpc16k
festvox-us-slt-hts espeak-ng) and PyTorch (training only; inference is numpy). Data: see ``tts.py``,
``clips.py``, ``augment.py`` and README.md. The optional MBROLA voices need Debian's contrib /
non-free sections (mbrola, mbrola-us1 ... festvox-us1 ...) and festvox-rablpc16k.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from engines import features
from engines.audio2mouth import blend, tts
from engines.audio2mouth.augment import augment
from engines.audio2mouth.clips import Clip, clip_targets, real_clips
from engines.audio2mouth.model import DEFAULT_WEIGHTS, LAYERS, AudioToMouth, Config, ensemble, mel_windows, mixture
from engines.audio2mouth.scores import model_scores, summarise

LOSS_WEIGHTS = np.array([1.0, 0.3, 0.5], np.float32)  # open, width, closure


class Pool:
    """Training windows: TTS utterances (gathered on the fly from one long mel) + real-clip windows."""

    def __init__(self, config: Config, utterances: list[tts.Utterance], clips: list[Clip]) -> None:
        logmel = features.LogMel()
        centre = features.frame_center_s(100)
        before = 100 - features.frames_centered_in(centre - config.context_s, centre + config.lookahead_s).start
        pad = config.frames + 5
        mels, starts, targets, masks = [np.full((pad, features.N_MELS), features.SILENCE, np.float32)], [], [], []
        offset = pad
        for utt in utterances:
            mel = logmel.frames(utt.pcm)
            n = min(len(mel), len(utt.targets))
            mels.append(mel[:n])
            mels.append(np.full((pad, features.N_MELS), features.SILENCE, np.float32))
            idx = np.arange(0, n, 2)  # every other 10 ms frame
            starts.append(offset + idx - before)
            targets.append(utt.targets[idx])
            masks.append(utt.mask[idx])
            offset += n + pad
        self.mel = np.concatenate(mels)
        self.starts = np.concatenate(starts) if starts else np.zeros(0, int)
        self.targets = np.concatenate(targets) if targets else np.zeros((0, 3), np.float32)
        self.masks = np.concatenate(masks) if masks else np.zeros((0, 3), np.float32)
        # real clips: windows at the video frame times, each clip several times with augmented audio
        self.real_x, self.real_y, self.real_m = [], [], []
        for clip in clips:
            y, m = clip_targets(clip)
            self.real_x.append(mel_windows(logmel.frames(clip.pcm), clip.times, config.context_s, config.lookahead_s))
            self.real_y.append(y)
            self.real_m.append(m)
        if clips:
            self.real_x, self.real_y, self.real_m = map(np.concatenate, (self.real_x, self.real_y, self.real_m))
        self.frames = config.frames


def augment_clips(clips: list[Clip], copies: int, seed: int) -> list[Clip]:
    rng = np.random.default_rng(seed)
    out = list(clips)
    for clip in clips:
        for _ in range(copies):
            out.append(Clip(clip.name, augment(clip.pcm, rng, 0.8), clip.times, clip.opening, clip.width))
    return out


def train(pool: Pool, config: Config, steps: int, seed: int = 0, real_fraction: float = 0.3, log=print,
          init: dict[str, np.ndarray] | None = None, lr: float = 2e-3) -> AudioToMouth:
    """Train one network on ``pool`` (from ``init``'s parameters, one network's as ``AudioToMouth`` keeps
    them, when given: fine-tuning)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    T, P, D = config.frames, config.proj, config.detail_frames

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(features.N_MELS * (2 if config.local_frames else 1), P)
            self.fc1 = torch.nn.Linear(D * P + 1, config.hidden)
            self.fc2 = torch.nn.Linear(config.hidden, config.hidden2)
            self.out = torch.nn.Linear(config.hidden2, 3)
            self.drop = torch.nn.Dropout(0.2)

        def forward(self, mel: torch.Tensor) -> torch.Tensor:
            top = mel.amax(dim=(1, 2), keepdim=True)
            x = (torch.clamp(mel[:, -D:] - top, min=-config.floor) + config.floor) / config.floor
            if config.local_frames:
                local_top = mel[:, -config.local_frames:].amax(dim=(1, 2), keepdim=True)
                x_local = (torch.clamp(mel[:, -D:] - local_top, min=-config.floor) + config.floor) / config.floor
                x = torch.cat([x, torch.clamp(x_local, max=1.0)], 2)
            level = torch.clamp((top[:, :, 0] - config.level_low) / (config.level_high - config.level_low), 0, 1)
            h = torch.relu(self.proj(x)).reshape(len(x), -1)
            h = self.drop(torch.cat([h, level], 1))
            h = self.drop(torch.relu(self.fc1(h)))
            h = torch.relu(self.fc2(h))
            z = self.out(h)
            return torch.stack([torch.sigmoid(z[:, 0]), torch.tanh(z[:, 1]), torch.sigmoid(z[:, 2])], 1)

    net = Net()
    if init is not None:
        with torch.no_grad():
            for layer in LAYERS:
                getattr(net, layer).weight.copy_(torch.from_numpy(np.ascontiguousarray(init[f"{layer}.w"].T)))
                getattr(net, layer).bias.copy_(torch.from_numpy(init[f"{layer}.b"]))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    mel = torch.from_numpy(pool.mel)
    offsets = torch.arange(T)
    n_real = len(pool.real_y) if len(pool.real_x) else 0
    batch = 512
    lw = torch.from_numpy(LOSS_WEIGHTS)
    t0 = time.time()
    for step in range(steps):
        k_real = int(batch * real_fraction) if n_real else 0
        k_tts = batch - k_real
        parts_x, parts_y, parts_m = [], [], []
        if k_tts:
            if getattr(pool, "weights", None) is not None:  # real-clip pool: per-speaker sampling weights
                i = torch.from_numpy(rng.choice(len(pool.starts), k_tts, p=pool.weights))
            else:
                i = torch.from_numpy(rng.integers(0, len(pool.starts), k_tts))
            parts_x.append(mel[torch.from_numpy(pool.starts)[i][:, None] + offsets])
            parts_y.append(torch.from_numpy(pool.targets)[i])
            parts_m.append(torch.from_numpy(pool.masks)[i])
        if k_real:
            j = rng.integers(0, n_real, k_real)
            parts_x.append(torch.from_numpy(pool.real_x[j]))
            parts_y.append(torch.from_numpy(pool.real_y[j]))
            parts_m.append(torch.from_numpy(pool.real_m[j]))
        x, y, m = torch.cat(parts_x), torch.cat(parts_y), torch.cat(parts_m)
        # random gain (level invariance is built in; this exercises the silence gate) and masking
        x = x + torch.from_numpy(rng.uniform(-3.0, 1.0, (len(x), 1, 1)).astype(np.float32))
        x = torch.clamp(x, min=features.SILENCE)
        pred = net(x)
        loss = ((pred - y) ** 2 * m * lw).sum() / (m * lw).sum().clamp(min=1e-6)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"    step {step + 1}/{steps}  loss {loss.item():.4f}  ({time.time() - t0:.0f} s)")
    net.eval()
    params = {
        "proj.w": net.proj.weight.detach().numpy().T.copy(), "proj.b": net.proj.bias.detach().numpy().copy(),
        "fc1.w": net.fc1.weight.detach().numpy().T.copy(), "fc1.b": net.fc1.bias.detach().numpy().copy(),
        "fc2.w": net.fc2.weight.detach().numpy().T.copy(), "fc2.b": net.fc2.bias.detach().numpy().copy(),
        "out.w": net.out.weight.detach().numpy().T.copy(), "out.b": net.out.bias.detach().numpy().copy(),
    }
    return AudioToMouth(params, config)


REAL_DEFAULTS = {"steps": 2000, "copies": 2, "ensemble": 3, "seed": 0}
FINE_TUNE_LR = 1e-3  # peak learning rate when the real-face training starts from the synthetic-speech networks
# steps per network of that fine-tuning: speaker-held-out over 42 speakers (model level, share 0.4) 0.423 at
# 1000, 0.418 at 2000, lower at 4000 (folds 1-2: 0.751 / 0.441 against 0.766 / 0.447 at 2000)
FINE_TUNE_STEPS = 1000
# share of the synthetic-speech networks in the shipped mixture: speaker-held-out over 42 speakers (model level)
# at 2000 fine-tuning steps: 0.411 fine-tuned alone, 0.418 at 0.4, 0.423 at 0.25, 0.408 at 0.5; 0.4 keeps most
# of the test clips' gain
SYNTHETIC_SHARE = 0.4


def fit_real(clips: list[Clip], steps: int = REAL_DEFAULTS["steps"], copies: int = REAL_DEFAULTS["copies"],
             n_networks: int = REAL_DEFAULTS["ensemble"], seed: int = REAL_DEFAULTS["seed"],
             local_frames: int = 20, log=print, pretrained: AudioToMouth | None = None,
             lr: float = 2e-3) -> AudioToMouth:
    """The real-face networks (``--recipe real``; fine-tuned in ``combined``): ``n_networks`` networks (seeds seed, seed + 1, ...) trained
    on ``clips``' per-speaker-normalised mouth tracks (``real.py``), outputs averaged; no ridge blend. With
    ``pretrained`` (an ensemble of at least ``n_networks``), network k starts from its network k."""
    from engines.audio2mouth import real

    config = Config(local_frames=local_frames)
    pool = real.WindowPool(config, clips, copies, seed=seed + 1)
    log(f"  {len(clips)} clips, {len({c.speaker for c in clips})} speakers, {len(pool.starts)} windows "
        f"({copies} augmented copies each)")
    members = []
    for k in range(n_networks):
        log(f"  network {k + 1}/{n_networks} (seed {seed + k})")
        init = pretrained.networks[k] if pretrained is not None else None
        members.append(train(pool, config, steps, seed=seed + k, log=log, init=init, lr=lr))
    return ensemble(members)


def speech_utterances(args: argparse.Namespace) -> list[tts.Utterance]:
    """The synthetic speech with viseme targets (Festival and espeak-ng voices, ``tts.py``)."""
    t0 = time.time()
    print("synthetic speech (Festival, espeak-ng) with phone timing", flush=True)
    tts.COARTICULATION_SIGMA_S = args.sigma
    utterances = tts.tts_utterances(args.texts, args.copies, seed=0, log=lambda s: print(s, flush=True),
                                    espeak_texts=args.espeak,
                                    festival_voices=tuple(v for v in args.festival.split(",") if v))
    print(f"  {len(utterances)} utterances, {sum(len(u.pcm) for u in utterances) / 16000 / 60:.1f} min "
          f"({time.time() - t0:.0f} s)", flush=True)
    return utterances


def synthetic_networks(args: argparse.Namespace) -> AudioToMouth:
    """``args.ensemble`` networks (seeds seed, seed + 1, ...) trained ``args.steps`` steps on synthetic speech
    alone: the previous recipe's networks, without its ridge blend."""
    config = Config(local_frames=args.local_frames)
    pool = Pool(config, speech_utterances(args), [])
    members = []
    for k in range(args.ensemble):
        print(f"  synthetic-speech network {k + 1}/{args.ensemble} (seed {args.seed + k})", flush=True)
        members.append(train(pool, config, args.steps, seed=args.seed + k, real_fraction=0.0,
                             log=lambda s: print(s, flush=True)))
    return ensemble(members)


def main_real(args: argparse.Namespace) -> None:
    """``--recipe combined`` (the shipped weights) and ``--recipe real``: train on every corpus + test clip
    (from the synthetic-speech networks, mixed with them, for ``combined``); with ``--folds K``,
    speaker-held-out figures first."""
    import torch

    from engines.audio2mouth import clips as clip_sets, real

    torch.set_num_threads(args.threads)
    t0 = time.time()
    synthetic = None
    if args.recipe == "combined":
        synthetic = AudioToMouth.load(args.synthetic_weights) if args.synthetic_weights else synthetic_networks(args)

    def fit(clips: list[Clip], log) -> AudioToMouth:
        model = fit_real(clips, args.real_steps, args.real_copies, args.ensemble, args.seed, args.local_frames,
                         log=log, pretrained=synthetic, lr=args.lr)
        return model if synthetic is None else mixture([(model, 1.0 - SYNTHETIC_SHARE), (synthetic, SYNTHETIC_SHARE)])

    print("real clips: mouth tracks and live-path audio (cached in "
          f"{clip_sets.CACHE_DIR})", flush=True)
    clips = clip_sets.corpus_clips() + clip_sets.testdata_clips()
    print(f"  {len(clips)} clips, {len({c.speaker for c in clips})} speakers ({time.time() - t0:.0f} s)", flush=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    quiet = (lambda s: None)
    if args.folds:
        scores = {}
        folds = clip_sets.speaker_folds(clips, args.folds)
        if args.fold_dir:
            args.fold_dir.mkdir(parents=True, exist_ok=True)
            (args.fold_dir / "folds.json").write_text(json.dumps(folds, indent=1))
        for k, held in enumerate(folds):
            model = fit([c for c in clips if c.speaker not in held], quiet)
            if args.fold_dir:  # benchmarks.quality --held-out-speakers --fold-weights DIR renders with these
                model.save(args.fold_dir / f"fold{k}.npz")
            s = real.clip_scores(model, [c for c in clips if c.speaker in held])
            scores.update(s)
            print(f"  fold {k + 1}/{args.folds}: {len(held)} speakers held out, mean r "
                  f"{np.mean([v['r'] for v in s.values()]):+.3f} ({time.time() - t0:.0f} s)", flush=True)
        results["speaker_folds"] = real.report(scores, title=f"speaker-held-out ({args.folds} folds), the model's own "
                                               "open against the real opening")
        results["speaker_folds"]["clips"] = scores
    print("final model on every clip", flush=True)
    model = fit(clips, lambda s: print(s, flush=True))
    model.save(args.out)
    if synthetic is not None and args.out == DEFAULT_WEIGHTS:
        tts.write_fixture(args.out.parent / "fixture_bilabial.npz")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)", flush=True)
    results["seconds"] = round(time.time() - t0)
    (args.out.with_name(args.out.stem.replace("weights", "train_results") + ".json")
     if args.out != DEFAULT_WEIGHTS else args.out.parent / "train_results.json").write_text(json.dumps(results, indent=1))
    print(f"done in {time.time() - t0:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=120, help="texts per voice and speaking rate")
    parser.add_argument("--copies", type=int, default=2, help="augmented copies of each utterance")
    parser.add_argument("--clip-copies", type=int, default=4, help="augmented copies of each real clip")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--real-fraction", type=float, default=0.3)
    parser.add_argument("--no-tts", action="store_true", help="train on the real clips only")
    parser.add_argument("--real", action="store_true",
                        help="also train on the real clips' mouth tracks (off by default: it lowered the "
                             "leave-one-clip-out score, see README.md)")
    parser.add_argument("--no-blend", action="store_true",
                        help="ship the synthetic-speech network alone, without the ridge on the real clips")
    parser.add_argument("--loco", action="store_true", help="leave-one-clip-out scores first")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/audio2mouth-cache"),
                        help="where the real clips' mouth tracks are cached (outside the repository)")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results are reproducible bit for bit only at the same count)")
    parser.add_argument("--espeak", type=int, default=2000, help="extra texts spoken by random espeak-ng voices")
    parser.add_argument("--festival", default="kal,slt,ked",
                        help="Festival voices: kal, slt, ked; also us1, us2, us3, en1 (MBROLA) and rab, which "
                             "lowered the score (README.md)")
    parser.add_argument("--sigma", type=float, default=tts.COARTICULATION_SIGMA_S,
                        help="coarticulation smoothing of the targets, s")
    parser.add_argument("--local-frames", type=int, default=20,
                        help="also feed the detail frames relative to the maximum of the last N frames (0: off)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (of the first network)")
    parser.add_argument("--ensemble", type=int, default=3, help="networks trained with seeds seed, seed + 1, ...; "
                        "their outputs are averaged")
    parser.add_argument("--recipe", choices=("combined", "synthetic", "real"), default="combined",
                        help="combined (the shipped weights): synthetic-speech networks, each fine-tuned on the real "
                             "talking faces (../shared/corpus + ../shared/testdata/video mouth tracks, live-path "
                             "audio; real.py), mixed with the synthetic ones (share SYNTHETIC_SHARE); synthetic: "
                             "the previous recipe (synthetic speech + ridge blend on the 9 test clips); real: the "
                             "real talking faces alone, from random weights")
    parser.add_argument("--real-steps", type=int, default=None,
                        help="training steps per network on the real talking faces (default 1000 fine-tuning, "
                             "2000 from random)")
    parser.add_argument("--real-copies", type=int, default=REAL_DEFAULTS["copies"],
                        help="augmented copies of each real talking-face clip")
    parser.add_argument("--folds", type=int, default=0,
                        help="combined / real: speaker-held-out figures over K folds first (0: none)")
    parser.add_argument("--fold-dir", type=Path, default=None,
                        help="with --folds: also save each fold's model there (fold<k>.npz + folds.json)")
    parser.add_argument("--synthetic-weights", type=Path, default=None,
                        help="combined, for experiments: take the synthetic-speech networks from this weights file "
                             "(their first --ensemble networks, e.g. an earlier --recipe synthetic run) instead of "
                             "training them")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate on the real talking faces (default 1e-3 fine-tuning, 2e-3 from random)")
    args = parser.parse_args()
    if args.recipe != "synthetic":
        if args.lr is None:
            args.lr = FINE_TUNE_LR if args.recipe == "combined" else 2e-3
        if args.real_steps is None:
            args.real_steps = FINE_TUNE_STEPS if args.recipe == "combined" else REAL_DEFAULTS["steps"]
        return main_real(args)
    import torch

    torch.set_num_threads(args.threads)
    config = Config(local_frames=args.local_frames)
    t0 = time.time()
    print("real clips: mouth tracks (FaceMesh)", flush=True)
    all_clips = real_clips(cache=args.cache)
    clips = all_clips if args.real else []
    utterances = [] if args.no_tts else speech_utterances(args)
    results = {}
    if args.loco and clips:
        print("leave-one-clip-out", flush=True)
        scores = {}
        for held in clips:
            train_clips = augment_clips([c for c in clips if c.name != held.name], args.clip_copies, seed=1)
            pool = Pool(config, utterances, train_clips)
            model = train(pool, config, args.steps, real_fraction=args.real_fraction, log=lambda s: None)
            scores.update(model_scores(model, [held]))
            print(f"  {held.name}: r0={scores[held.name][0]:+.3f} lag={scores[held.name][1]:+d}", flush=True)
        results["leave_one_clip_out"] = summarise("leave-one-clip-out", scores)
    print("final model on everything", flush=True)
    pool = Pool(config, utterances, augment_clips(clips, args.clip_copies, seed=1))
    members = []
    for k in range(args.ensemble):
        if args.ensemble > 1:
            print(f"  network {k + 1}/{args.ensemble} (seed {args.seed + k})", flush=True)
        members.append(train(pool, config, args.steps, seed=args.seed + k,
                             real_fraction=args.real_fraction if clips else 0.0, log=lambda s: print(s, flush=True)))
        if args.ensemble > 1 and not clips:
            summarise(f"    network {k + 1} alone (clean)", model_scores(members[-1], all_clips))
    model = ensemble(members)
    if not clips:
        results["final_clean"] = summarise(
            "network on the real clips (none used in training: clean)", model_scores(model, all_clips))
    if not clips and not args.no_blend:
        print("ridge blend on the real clips: nested leave-one-clip-out (every choice made without the held-out clip)",
              flush=True)
        scores, choices = blend.nested_loco(model, all_clips)
        results["blend_nested_loco"] = summarise("blend, nested leave-one-clip-out (honest)", scores)
        results["blend_nested_loco"]["choices"] = choices
        model, choice = blend.fit_blend(model, all_clips)
        results["blend_shipped"] = choice
        print(f"shipped blend (fitted on all {len(all_clips)} clips): {choice}", flush=True)
    model.save(args.out)
    if not args.no_tts and args.out == DEFAULT_WEIGHTS:
        tts.write_fixture(args.out.parent / "fixture_bilabial.npz")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)", flush=True)
    if clips:
        results["final_contaminated"] = summarise(
            "final model on the clips it was trained on (contaminated)", model_scores(model, clips))
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    results["seconds"] = round(time.time() - t0)
    (args.out.with_name(args.out.stem.replace("weights", "train_results") + ".json")
     if args.out != DEFAULT_WEIGHTS else args.out.parent / "train_results.json").write_text(json.dumps(results, indent=1))
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
