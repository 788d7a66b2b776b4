"""vasa backend, LMDM sampler and online windowing (engines/vasa/motion.py; spec vasa.md §4,
§8.2 items 5-7).

The state machine is checked against an independent reference of §4.4 written below in the
shape of Ditto's online driver loop (a feature list with local/global indices, Ditto's
``valid_start`` and trimming), with "copy" denoisers whose x₀ row t is cond row t's first 265
values, so that every emitted value can be traced to the features.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from engines.vasa import audio as A
from engines.vasa import motion as M

L = 80


# ------------------------------------------------------------------------------------------
# helpers


def copy_denoise(x, cond_frame, cond, t):
    return cond[..., :265].copy()


def mixing_denoise(x, cond_frame, cond, t):
    """Copy, plus the row position (so overlapping windows disagree on every frame) and
    cond_frame (so kp_cond reaches the output)."""
    pos = np.arange(L, dtype=np.float32)[None, :, None] * np.float32(0.01)
    return cond[..., :265] + pos + np.float32(0.5) * cond_frame[:, None, :]


def nonlinear_denoise(x, cond_frame, cond, t):
    t = t.astype(np.float32)[:, None, None] / np.float32(1000)
    h = np.float32(0.5) * x + np.float32(0.1) * cond[..., :265] + np.float32(0.2) * cond_frame[:, None, :]
    return np.tanh(h + t)


def make_parts(seed: int = 0):
    rng = np.random.default_rng(seed)
    return dict(
        eye_open=rng.random(2).astype(np.float32),
        eye_ball=rng.random(6).astype(np.float32),
        sc=rng.standard_normal(63).astype(np.float32),
    )


def make_motion(overlap, silence, source, v_min_max, *, fix_kp_cond=0, emo=M.NEUTRAL, seed=0, plan=None, **kw):
    return M.OnlineMotion(
        silence,
        source,
        overlap=overlap,
        emo=emo,
        fix_kp_cond=fix_kp_cond,
        fix_kp_cond_dim=(0, 202),
        v_min_max=v_min_max,
        plan=plan if plan is not None else M.sampler_plan(10),
        seed=seed,
        **make_parts(),
        **kw,
    )


def drive(motion: M.OnlineMotion, feats: np.ndarray, denoise, chunk: int = 5, finish: bool = True):
    """Push features ``chunk`` at a time, running every window as soon as it is due."""
    emitted, cond_frames, sizes = [], [], []

    def drain():
        while (win := motion.pending()) is not None:
            cond_frames.append(win.cond_frame.copy())
            x0 = M.sample(denoise, win.x_T[None], win.cond[None], win.cond_frame[None], win.zs, motion.plan)
            emitted.extend(motion.accept(x0[0]))
            sizes.append(motion.buffered())

    for i in range(0, len(feats), chunk):
        motion.push_features(feats[i : i + chunk])
        drain()
    if finish:
        motion.finish()
        drain()
    return emitted, cond_frames, sizes


def reference_online(feats, silence, overlap, denoise, source, fix_kp_cond, fix_dim, v_min_max, parts, emo_table):
    """§4.4 as Ditto's online driver runs it, written independently of engines.vasa.motion.

    Returns every frame Ditto emits (including the padding frames of its last window), d0, the
    kp_cond of each window, and the largest res / feature buffer seen."""
    O = overlap
    V = L - O
    F = min(O, V)
    alpha = (np.arange(F, dtype=np.float32) / F)[:, None]

    def smooth(seq, s, e):
        orig = seq.copy()
        for i in range(s, e):
            seq[i, :202] = orig[max(0, i - 1) : min(len(seq), i + 2), :202].mean(axis=0)
        return seq

    def clip(v):
        return np.clip(v, v_min_max[0], v_min_max[1])

    def cond_of(a, idx):
        rows = []
        for r in range(L):
            emo = emo_table[max(idx + r, 0) % len(emo_table)]
            rows.append(np.concatenate([a[r], emo, parts["eye_open"], parts["eye_ball"], parts["sc"]]))
        return np.array(rows, np.float32)

    audio_feat = silence.astype(np.float32).copy()
    held = np.zeros((0, 1024), np.float32)
    local = glob = 0
    res, valid_start, d0 = None, None, None
    kp = source.copy()
    clip_idx = 0
    out, cond_frames = [], []
    max_res = max_feat = 0
    items = [feats[i : i + 5] for i in range(0, len(feats), 5)] + [None]
    for item in items:
        end = item is None
        if not end:
            held = np.concatenate([held, item])
            if len(held) < V:  # wait for at least V new features
                continue
        audio_feat = np.concatenate([audio_feat, held])
        held = np.zeros((0, 1024), np.float32)
        while True:
            a = audio_feat[local : local + L]
            step = V
            if len(a) == 0:
                break
            if len(a) < L:
                if not end:
                    break
                step = len(a)
                a = np.concatenate([a, np.repeat(a[-1:], L - len(a), axis=0)])
            cond = cond_of(a, glob - O)
            cond_frames.append(kp.copy())
            pred = denoise(np.zeros((1, L, 265), np.float32), kp[None], cond[None], np.array([99]))[0]
            if res is None:
                res = smooth(pred.copy(), 0, L)
            else:
                res[-F:] = res[-F:] * (1 - alpha) + pred[L - V - F : L - V] * alpha
                res = np.concatenate([res, pred[L - V :]])
                res = smooth(res, len(res) - V - F, len(res) - V + 1)
            clip_idx += 1
            i = len(res) - O
            if fix_kp_cond > 0 and clip_idx % fix_kp_cond == 0:
                kp = source.copy()
                kp[fix_dim[0] : fix_dim[1]] = res[i - 1, fix_dim[0] : fix_dim[1]]
            else:
                kp = res[i - 1].copy()
            if valid_start is None:  # first window: nothing out, d0 from its first frame
                valid_start = len(res) - F
                d0 = clip(res[0])
                local += step
                glob += step
                continue
            out.extend(clip(r) for r in res[valid_start : valid_start + step])
            valid_start += step
            local += step
            glob += step
            if len(res) > 2 * L:
                cut = len(res) - 2 * L
                res = res[cut:]
                valid_start -= cut
            max_res = max(max_res, len(res))
            if local >= len(audio_feat):
                break
        if len(audio_feat) > 2 * L:
            cut = len(audio_feat) - 2 * L
            audio_feat = audio_feat[cut:]
            local -= cut
        max_feat = max(max_feat, len(audio_feat))
        if end:
            break
    return out, d0, cond_frames, max_res, max_feat


def stream_data(overlap: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    silence = (rng.standard_normal((overlap, 1024)) * 0.3).astype(np.float32)
    feats = rng.standard_normal((n, 1024)).astype(np.float32)
    source = rng.standard_normal(265).astype(np.float32)
    vmm = np.stack([np.full(265, -1.6, np.float32), np.full(265, 1.6, np.float32)])  # clips some values
    return silence, feats, source, vmm


# ------------------------------------------------------------------------------------------
# layout, schedule, sampler


def test_layout() -> None:
    widths = [M.SCALE, M.PITCH, M.YAW, M.ROLL, M.TRANS, M.EXP]
    assert [s.stop - s.start for s in widths] == [1, 66, 66, 66, 3, 63]
    assert all(a.stop == b.start for a, b in zip(widths, widths[1:]))
    assert M.EXP.stop == M.MOTION_DIM == 265 and M.TRANS.stop == M.POSE_DIMS == 202


def test_alphas_cumprod_closed_form() -> None:
    ac = M.alphas_cumprod()
    assert ac.shape == (1000,) and ac.dtype == np.float32
    s = 8e-3
    f = np.cos((np.arange(1001) / 1000 + s) / (1 + s) * np.pi / 2) ** 2
    f /= f[0]
    expected = f[1:].copy()  # ᾱ_t = f(t+1) while no beta is clipped
    expected[-1] = f[999] * (1 - 0.999)  # β_999 = 1 - f(1000)/f(999) = 1, clipped to 0.999
    np.testing.assert_allclose(ac, expected, rtol=2e-5)
    assert np.all(np.diff(ac) < 0)


def test_sampling_times() -> None:
    ten = M.sampling_times(10)
    assert [t for t, _ in ten] == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert [n for _, n in ten] == [899, 799, 699, 599, 499, 399, 299, 199, 99, -1]
    fifty = M.sampling_times(50)
    assert [t for t, _ in fifty] == list(range(999, 0, -20))
    assert fifty[-1] == (19, -1) and len(fifty) == 50
    assert M.sampling_times(1) == [(999, -1)]
    assert M.sampling_times(3) == [(999, 665), (665, 332), (332, -1)]  # truncation toward zero
    plan = M.sampler_plan(10)
    assert plan.time_cond.dtype == np.int64 and list(plan.time_cond) == [t for t, _ in ten]
    assert plan.n_noise == 9 and plan.sigma.shape == plan.c.shape == (9,)


def _abar64() -> np.ndarray:
    """The cosine schedule's ᾱ in float64, from its closed form (the reference for the sampler's tables)."""
    s = 8e-3
    f = np.cos((np.arange(1001) / 1000 + s) / (1 + s) * np.pi / 2) ** 2
    f /= f[0]
    abar = f[1:].copy()
    abar[-1] = f[999] * 1e-3
    return abar


@pytest.mark.parametrize("steps", [10, 50])
def test_sigma_and_c_closed_form(steps: int) -> None:
    plan = M.sampler_plan(steps)
    abar = _abar64()
    for i, (t, tn) in enumerate(plan.time_pairs[:-1]):
        a, an = abar[t], abar[tn]
        sigma = np.sqrt((1 - a / an) * (1 - an) / (1 - a))
        c2 = (1 - an) * a * (1 / an - 1) / (1 - a)  # = 1 - ᾱ_next - σ², without cancellation
        assert plan.sigma[i] == pytest.approx(sigma, rel=1e-5)
        # float32: c² is a difference of numbers near 1, good to a few ulps of 1 (and at t = 999,
        # where c² ~ 1e-7, to no relative precision at all: Ditto has the same)
        assert float(plan.c[i]) ** 2 == pytest.approx(c2, abs=1e-6)
        assert plan.sqrt_alpha_next[i] == pytest.approx(np.sqrt(an), rel=1e-5)
    # both lose float32 precision as ᾱ → 1 (t = 19: 1 - ᾱ ≈ 2e-3)
    np.testing.assert_allclose(plan.recip1m, np.sqrt(1 / (1 - abar[plan.time_cond])), rtol=1e-4)
    np.testing.assert_allclose(plan.recipm1, np.sqrt(1 / abar[plan.time_cond] - 1), rtol=1e-4)


@pytest.mark.parametrize("steps", [10, 50])
def test_constant_x0_denoiser_returns_x0(steps: int) -> None:
    plan = M.sampler_plan(steps)
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((2, L, 265)).astype(np.float32)
    seen = []

    def const(x, cond_frame, cond, t):
        seen.append((x.copy(), t.copy()))
        assert x.shape == (2, L, 265) and cond.shape == (2, L, 1103) and cond_frame.shape == (2, 265)
        assert t.dtype == np.int64 and t.shape == (2,)
        return x0

    x_T = rng.standard_normal((2, L, 265)).astype(np.float32)
    zs = rng.standard_normal((plan.n_noise, L, 265)).astype(np.float32)
    out = M.sample(const, x_T, np.zeros((2, L, 1103), np.float32), np.zeros((2, 265), np.float32), zs, plan)
    assert np.array_equal(out, x0)
    assert [int(t[0]) for _, t in seen] == [t for t, _ in plan.time_pairs]
    assert np.array_equal(seen[0][0], x_T)

    # every step is x ← x₀·√ᾱ_next + c·ε̂ + σ·z, ε̂ = x/√(1-ᾱ) - x₀/√(1/ᾱ-1) (float64)
    abar = _abar64()
    for i, (t, tn) in enumerate(plan.time_pairs[:-1]):
        x = seen[i][0].astype(np.float64)
        a, an = abar[t], abar[tn]
        eps = x / np.sqrt(1 - a) - x0 / np.sqrt(1 / a - 1)
        sigma = np.sqrt((1 - a / an) * (1 - an) / (1 - a))
        c = np.sqrt(1 - an - sigma**2)
        expected = x0 * np.sqrt(an) + c * eps + sigma * zs[i]
        np.testing.assert_allclose(seen[i + 1][0], expected, atol=2e-4)


def test_sampler_batched_equals_per_stream() -> None:
    plan = M.sampler_plan(10)
    rng = np.random.default_rng(5)
    b = 3
    x_T = rng.standard_normal((b, L, 265)).astype(np.float32)
    cond = rng.standard_normal((b, L, 1103)).astype(np.float32)
    cf = rng.standard_normal((b, 265)).astype(np.float32)
    zs = rng.standard_normal((b, plan.n_noise, L, 265)).astype(np.float32)
    batched = M.sample(nonlinear_denoise, x_T, cond, cf, zs, plan)
    for i in range(b):
        one = M.sample(nonlinear_denoise, x_T[i : i + 1], cond[i : i + 1], cf[i : i + 1], zs[i], plan)
        assert np.array_equal(batched[i], one[0])
    assert not np.array_equal(batched[0], batched[1])
    with pytest.raises(ValueError, match="zs"):
        M.sample(nonlinear_denoise, x_T, cond, cf, zs[:, :3], plan)
    with pytest.raises(ValueError, match="cond_frame"):
        M.sample(nonlinear_denoise, x_T, cond, cf[:2], zs, plan)


def test_seeds() -> None:
    silence, feats, source, vmm = stream_data(75, 60)

    def run(seed):
        m = make_motion(75, silence, source, vmm, seed=seed)
        emitted, _, _ = drive(m, feats, nonlinear_denoise)
        return m, np.array([v for _, v in emitted])

    m1, a = run(11)
    m2, b = run(11)
    m3, c = run(12)
    assert np.array_equal(m1.zs, m2.zs) and not np.array_equal(m1.zs, m3.zs)
    assert m1.zs.shape == (9, L, 265)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert m1.rng is not m2.rng

    # x_T is drawn fresh for each window, from the stream's own generator
    def first_two(seed):
        m = make_motion(75, silence, source, vmm, seed=seed)
        m.push_features(feats[:10])
        w1 = m.pending()
        m.accept(w1.cond[:, :265])
        return w1.x_T, m.pending().x_T

    x1, x2 = first_two(11)
    assert np.array_equal(first_two(11)[1], x2) and not np.array_equal(first_two(12)[0], x1)
    assert not np.array_equal(x1, x2) and x1.dtype == np.float32 and x1.shape == (L, 265)
    assert abs(float(x1.std()) - 1) < 0.05 and abs(float(x1.mean())) < 0.05


def test_streams_batched_equal_alone() -> None:
    """Windows of several streams sampled in one batch give what each stream gets alone."""
    silence, feats, source, vmm = stream_data(75, 40)
    plan = M.sampler_plan(10)
    seeds = (1, 2, 3)
    alone = []
    for seed in seeds:  # each stream its own seed and its own audio
        m = make_motion(75, silence, source, vmm, seed=seed)
        alone.append([v for _, v in drive(m, feats * seed, nonlinear_denoise)[0]])
    streams = [make_motion(75, silence, source, vmm, seed=seed) for seed in seeds]
    batched = [[], [], []]
    for i in range(0, len(feats), 5):
        for m, seed in zip(streams, seeds):
            m.push_features(feats[i : i + 5] * seed)
        while True:
            wins = [(s, m.pending()) for s, m in enumerate(streams)]
            wins = [(s, w) for s, w in wins if w is not None]
            if not wins:
                break
            x0 = M.sample(
                nonlinear_denoise,
                np.stack([w.x_T for _, w in wins]),
                np.stack([w.cond for _, w in wins]),
                np.stack([w.cond_frame for _, w in wins]),
                np.stack([w.zs for _, w in wins]),
                plan,
            )
            for (s, _), pred in zip(wins, x0):
                batched[s].extend(v for _, v in streams[s].accept(pred))
    for s in range(3):
        assert len(batched[s]) == len(alone[s]) - 5  # no finish() here: the last block waits
        assert all(np.array_equal(a, b) for a, b in zip(batched[s], alone[s]))


# ------------------------------------------------------------------------------------------
# conditioning


def test_emotion_vector() -> None:
    for label in range(8):
        logits = np.zeros(8, np.float32)
        logits[label] = 8
        v = M.emotion_vector(label)
        assert v.dtype == np.float32 and v.shape == (8,)
        np.testing.assert_array_equal(v, softmax(logits))
        assert int(np.argmax(v)) == label
    assert np.array_equal(M.emotion_vector("neutral"), M.emotion_vector(4))
    assert M.EMOTIONS[M.NEUTRAL] == "Neutral"
    two = M.emotion_vector([3, "Neutral"])
    assert two[3] == two[4] > 0.49 and two.sum() == pytest.approx(1, abs=1e-6)
    w = np.array([0, 0, 0, 0.5, 0.5, 0, 0, 0], np.float32)
    assert np.array_equal(M.emotion_vector(w), w)
    for bad in (8, -1, "Bored", [], True, np.zeros(7)):
        with pytest.raises(ValueError):
            M.emotion_vector(bad)


def test_build_cond() -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((L, 1024)).astype(np.float32)
    emo = rng.random((L, 8)).astype(np.float32)
    parts = make_parts()
    cond = M.build_cond(feats, emo, parts["eye_open"], parts["eye_ball"], parts["sc"])
    assert cond.shape == (L, 1103) and cond.dtype == np.float32 and M.CondFlags().dim == 1103
    assert np.array_equal(cond[:, :1024], feats) and np.array_equal(cond[:, 1024:1032], emo)
    assert np.all(cond[:, 1032:1034] == parts["eye_open"]) and np.all(cond[:, 1034:1040] == parts["eye_ball"])
    assert np.all(cond[:, 1040:] == parts["sc"])
    flags = M.CondFlags(use_emo=False, use_eye_open=True, use_eye_ball=False, use_sc=True)
    small = M.build_cond(feats, None, parts["eye_open"], None, parts["sc"], flags)
    assert small.shape == (L, flags.dim) == (L, 1024 + 2 + 63)
    assert np.array_equal(small[:, 1026:], np.broadcast_to(parts["sc"], (L, 63)))
    none = M.CondFlags(False, False, False, False)
    assert M.build_cond(feats, None, None, None, None, none).shape == (L, 1024)
    with pytest.raises(ValueError, match="eye_ball"):
        M.build_cond(feats, emo, parts["eye_open"], None, parts["sc"])
    with pytest.raises(ValueError, match="emo"):
        M.build_cond(feats, emo[:5], parts["eye_open"], parts["eye_ball"], parts["sc"])
    cfg = {"use_emo": True, "use_sc": True, "use_eye_open": False, "use_eye_ball": True}
    assert M.CondFlags.from_cfg(cfg).dim == 1024 + 8 + 6 + 63
    with pytest.raises(ValueError, match="use_sc"):
        M.CondFlags.from_cfg({"use_emo": True, "use_eye_open": True, "use_eye_ball": True})


def emo_columns(win: M.MotionWindow) -> np.ndarray:
    return win.cond[:, 1024:1032]


def test_emotion_change_mid_stream() -> None:
    silence, feats, source, vmm = stream_data(75, 120)
    neutral, happy = M.emotion_vector(4), M.emotion_vector(3)
    k0 = 47

    def emo_denoise(x, cond_frame, cond, t):  # emotion reaches exp dims (not smoothed)
        out = cond[..., :265].copy()
        out[..., 202:210] += cond[..., 1024:1032]
        return out

    def run_window(m, win, windows, emitted, changed):
        windows.append((win, changed))
        x0 = M.sample(emo_denoise, win.x_T[None], win.cond[None], win.cond_frame[None], win.zs, m.plan)
        emitted.extend(m.accept(x0[0]))

    runs = {}
    for change in (False, True):
        m = make_motion(75, silence, source, None)
        emitted, windows, changed = [], [], False
        for i in range(0, len(feats), 5):
            m.push_features(feats[i : i + 5])
            if change and i == 50:  # frames 47..54 are already buffered: they change too
                m.set_emotion("Happy", from_frame=k0)
                changed = True
            while (win := m.pending()) is not None:
                run_window(m, win, windows, emitted, changed)
        m.finish()
        while (win := m.pending()) is not None:
            run_window(m, win, windows, emitted, changed)
        runs[change] = (dict(emitted), windows)

    all_feats = np.concatenate([silence, feats])
    n_happy = 0
    for win, after_change in runs[True][1]:
        for r in range(L):
            k = win.first_frame + r
            expect = happy if after_change and k >= k0 else neutral
            assert np.array_equal(emo_columns(win)[r], expect), (win.first_frame, k)
            n_happy += expect is happy
        if not win.final:  # the feature columns are untouched
            assert np.array_equal(win.cond[:, :1024], all_feats[win.first_frame + 75 :][:L])
    assert n_happy > 0 and any(not c for _, c in runs[True][1])
    plain, changed = runs[False][0], runs[True][0]
    assert sorted(plain) == sorted(changed) == list(range(120))
    for k in range(120):
        if k < k0:
            assert np.array_equal(plain[k], changed[k]), k
        else:
            assert not np.array_equal(plain[k][202:210], changed[k][202:210]), k


def test_emotion_table_indexing() -> None:
    """An (M, 8) table is indexed by max(frame, 0) % M (warm-up rows take frame 0's)."""
    silence, feats, source, _ = stream_data(70, 40)
    table = np.random.default_rng(9).random((7, 8)).astype(np.float32)
    m = make_motion(70, silence, source, None, emo=table)
    m.push_features(feats[:20])
    for win in iter(m.pending, None):
        for r in range(L):
            k = win.first_frame + r
            assert np.array_equal(emo_columns(win)[r], table[max(k, 0) % 7])
        m.accept(win.cond[:, :265])
    # explicit rows pushed with the features win over the table, warm-up follows frame 0's
    m2 = make_motion(70, silence, source, None, emo=table)
    rows = np.random.default_rng(1).random((10, 8)).astype(np.float32)
    m2.push_features(feats[:10], emo=rows)
    win = m2.pending()
    assert np.array_equal(emo_columns(win)[:70], np.broadcast_to(rows[0], (70, 8)))
    assert np.array_equal(emo_columns(win)[70:], rows)


# ------------------------------------------------------------------------------------------
# the online state machine against the reference


CASES = [
    (70, 0, 240),  # r = 0 at the end
    (70, 1, 235),  # r = 5: the last block half real
    (75, 0, 237),  # not a multiple of 5
    (75, 1, 240),
    (75, 2, 203),  # kp_cond reset every other window
]


@pytest.mark.parametrize("overlap,fix,n", CASES)
@pytest.mark.parametrize("denoise", [copy_denoise, mixing_denoise], ids=["copy", "mixing"])
def test_online_matches_reference(overlap: int, fix: int, n: int, denoise) -> None:
    silence, feats, source, vmm = stream_data(overlap, n, seed=overlap + fix)
    table = M.emotion_vector(M.NEUTRAL)[None]
    m = make_motion(overlap, silence, source, vmm, fix_kp_cond=fix)
    assert m.d0 is None
    emitted, cond_frames, sizes = drive(m, feats, denoise)
    ref_out, ref_d0, ref_cond_frames, ref_max_res, _ = reference_online(
        feats, silence, overlap, denoise, source, fix, (0, 202), vmm, make_parts(), table
    )
    V = L - overlap
    # emission order: every real frame once, in order; Ditto's last window also emits V - r
    # frames made of padding, which are not emitted here
    assert [k for k, _ in emitted] == list(range(n))
    assert len(ref_out) == n + V - n % V
    for (k, vec), ref in zip(emitted, ref_out):
        assert np.array_equal(vec, ref), f"frame {k}"
    assert np.array_equal(m.d0, ref_d0)
    assert len(cond_frames) == len(ref_cond_frames)
    for j, (a, b) in enumerate(zip(cond_frames, ref_cond_frames)):
        assert np.array_equal(a, b), f"kp_cond of window {j}"
    if fix == 1:  # reset every window: exp from the source, pose and t carried over
        assert all(np.array_equal(cf[202:], source[202:]) for cf in cond_frames)
        assert any(not np.array_equal(cf[:202], source[:202]) for cf in cond_frames[1:])
    # trimming: res held at 160 frames (as Ditto), the feature buffer below it
    assert max(s["res"] for s in sizes) == 160 == ref_max_res
    assert max(s["features"] for s in sizes) <= 160
    assert np.all(np.array([v for _, v in emitted]) <= 1.6) and np.all(np.array([v for _, v in emitted]) >= -1.6)
    assert m.done


def test_first_window_and_d0() -> None:
    """The first window (frames -O..V-1) emits nothing; d0 is its first frame, smoothed with its
    one neighbour on the pose dims, clipped."""
    for overlap in (70, 75):
        V = L - overlap
        silence, feats, source, vmm = stream_data(overlap, 3 * V)
        m = make_motion(overlap, silence, source, vmm)
        m.push_features(feats[: V - 1])
        assert m.pending() is None  # not enough features yet
        m.push_features(feats[V - 1 : V])
        win = m.pending()
        assert win is not None and win.first_frame == -overlap and not win.final
        assert m.pending() is win  # the same window until accepted
        assert np.array_equal(win.cond[:overlap, :1024], silence)
        assert np.array_equal(win.cond[overlap:, :1024], feats[:V])
        assert np.array_equal(win.cond_frame, source)
        assert m.accept(win.cond[:, :265]) == []
        d0 = m.d0
        expect = silence[0, :265].copy()
        expect[:202] = silence[0:2, :202].mean(axis=0)
        assert np.array_equal(d0, np.clip(expect, -1.6, 1.6))
        assert m.pending() is None
        m.push_features(feats[V : 2 * V])
        win = m.pending()
        assert win.first_frame == V - overlap
        out = m.accept(win.cond[:, :265])
        assert [k for k, _ in out] == list(range(V))
        with pytest.raises(RuntimeError):
            m.accept(win.cond[:, :265])


def test_short_stream_emits_its_frames() -> None:
    """Fewer than V real features: Ditto's loop emits nothing; here the end of stream runs a
    second padded window so that every real frame gets motion. Its frames equal what the
    reference gives for the same features padded to V with the last."""
    for overlap, n in ((70, 5), (75, 3)):
        V = L - overlap
        silence, feats, source, vmm = stream_data(overlap, n)
        m = make_motion(overlap, silence, source, vmm)
        emitted, _, _ = drive(m, feats, mixing_denoise)
        assert [k for k, _ in emitted] == list(range(n))
        padded = np.concatenate([feats, np.repeat(feats[-1:], V - n, axis=0)])
        ref_out, *_ = reference_online(
            padded, silence, overlap, mixing_denoise, source, 0, (0, 202), vmm, make_parts(), M.emotion_vector(4)[None]
        )
        short_ref, *_ = reference_online(
            feats, silence, overlap, mixing_denoise, source, 0, (0, 202), vmm, make_parts(), M.emotion_vector(4)[None]
        )
        assert short_ref == []  # Ditto's own loop
        for (k, vec), ref in zip(emitted, ref_out):
            assert np.array_equal(vec, ref)


def test_chunking_does_not_matter() -> None:
    silence, feats, source, vmm = stream_data(70, 150)
    a = drive(make_motion(70, silence, source, vmm), feats, mixing_denoise, chunk=5)[0]
    b = drive(make_motion(70, silence, source, vmm), feats, mixing_denoise, chunk=3)[0]
    c = drive(make_motion(70, silence, source, vmm), feats, mixing_denoise, chunk=150)[0]
    assert [k for k, _ in a] == [k for k, _ in b] == [k for k, _ in c] == list(range(150))
    assert all(np.array_equal(x[1], y[1]) and np.array_equal(x[1], z[1]) for x, y, z in zip(a, b, c))


def test_frames_by_index_and_release() -> None:
    silence, feats, source, vmm = stream_data(75, 50)
    m = make_motion(75, silence, source, vmm)
    emitted, _, _ = drive(m, feats, copy_denoise, finish=False)
    by_k = dict(emitted)
    assert m.emitted_until == max(by_k) + 1 == 45
    assert m.motion(44) is not None and m.motion(45) is None
    assert np.array_equal(m.take(10), by_k[10])
    assert m.motion(3) is None and m.motion(10) is None and m.motion(11) is not None
    m.release_before(40)
    assert m.buffered()["emitted"] == 5
    m.finish()
    while (win := m.pending()) is not None:
        m.accept(win.cond[:, :265])
    assert m.emitted_until == 50 and m.done
    with pytest.raises(RuntimeError):
        m.push_features(feats[:5])


def test_bad_configuration() -> None:
    silence, _, source, _ = stream_data(75, 5)
    for overlap in (10, 60, 74, 80):
        with pytest.raises(ValueError, match="overlap"):
            M.OnlineMotion(np.zeros((overlap, 1024), np.float32), source, overlap=overlap, **make_parts())
    with pytest.raises(ValueError, match="silence"):
        M.OnlineMotion(silence[:70], source, overlap=75, **make_parts())
    with pytest.raises(ValueError, match="sc"):
        M.OnlineMotion(silence, source, overlap=75, eye_open=np.zeros(2), eye_ball=np.zeros(6))
    m = M.OnlineMotion(silence, source, overlap=75, flags=M.CondFlags(False, False, False, False))
    m.push_features(np.zeros((5, 1024), np.float32))
    assert m.pending().cond.shape == (L, 1024)


# ------------------------------------------------------------------------------------------
# lookahead


def fake_hubert(window: np.ndarray) -> np.ndarray:
    """Stand-in for hubert.onnx: step j is the mean of window samples [320j, 320j+400)."""
    t = (len(window) - 400) // 320 + 1
    means = np.array([window[320 * j : 320 * j + 400].mean() for j in range(t)], np.float32)
    return np.repeat(means[:, None], 1024, axis=1) * np.linspace(0.5, 1.5, 1024, dtype=np.float32)


@pytest.mark.parametrize("overlap", [70, 75])
def test_lookahead(overlap: int) -> None:
    """Frame k is never emitted before the stream has (k - k mod V + 2V + 2)·640 + 80 samples,
    and is emitted by the push that brings them; LOOKAHEAD_S is the largest such need."""
    V = L - overlap
    A.clear_silence_cache()
    silence = A.silence_features(fake_hubert, overlap, "fake")
    rng = np.random.default_rng(overlap)
    n = 16000 * 4 + 123
    pcm = rng.standard_normal(n).astype(np.float32)
    stream = A.StreamAudio()
    m = make_motion(overlap, silence, rng.standard_normal(265).astype(np.float32), None)
    before, after = {}, {}
    pos, next_w = 0, 0
    while pos < n:
        end = min(n, pos + int(rng.integers(1, 700)))
        prev = stream.available_until()
        stream.add(max(0, pos - 3200), pcm[max(0, pos - 3200) : end])
        pos = end
        for w in A.windows_due(next_w, stream.available_until()):
            m.push_features(A.features_from_encoding(fake_hubert(stream.window(w))))
            next_w = w + 1
        while (win := m.pending()) is not None:
            x0 = M.sample(copy_denoise, win.x_T[None], win.cond[None], win.cond_frame[None], win.zs, m.plan)
            for k, _ in m.accept(x0[0]):
                before[k], after[k] = prev, stream.available_until()
    assert len(after) > 50
    needs = []
    for k in sorted(after):
        need = M.lookahead_samples(k, V)
        assert after[k] >= need, f"frame {k} emitted with {after[k]} samples, needs {need}"
        assert before[k] < need, f"frame {k} could have been emitted earlier"
        needs.append(need - k * 640)
    assert max(needs) == (2 * V + 2) * 640 + 80
    assert max(needs) / 16000 == M.LOOKAHEAD_S(overlap) == {70: 0.885, 75: 0.485}[overlap]
    assert min(needs) == (V + 3) * 640 + 80  # the last frame of a block
    A.clear_silence_cache()
