"""The headaudio peer column of benchmarks.quality: its viseme-to-opening table, and (where the npm
package is installed: .ci/run installs it, as the benchmark does on first use) that its node
runner gives one value per frame."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from benchmarks import headaudio

OCULUS = ["sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "I", "O", "U"]


def test_table_covers_the_oculus_visemes_closed_at_silence_widest_at_aa():
    assert sorted(headaudio.OPENING) == sorted(OCULUS)
    assert headaudio.OPENING["sil"] == headaudio.OPENING["PP"] == 0.0
    assert headaudio.OPENING["aa"] == max(headaudio.OPENING.values()) == 1.0


def test_opening_is_the_weighted_table():
    weights = np.zeros((2, len(OCULUS)))
    weights[0, OCULUS.index("aa")] = 0.5
    weights[1, OCULUS.index("O")], weights[1, OCULUS.index("sil")] = 1.0, 1.0
    assert np.allclose(headaudio.opening_of(weights, OCULUS), [0.5, headaudio.OPENING["O"]])


@pytest.mark.skipif(shutil.which("node") is None or not (headaudio.HERE / "node_modules").exists(),
                    reason="the headaudio npm package is not installed (cd benchmarks/peers/headaudio && npm ci)")
def test_node_runner_gives_one_value_per_frame(tmp_path):
    import json
    import subprocess

    rate, fps = headaudio.SAMPLE_RATE, 25
    t = np.arange(2 * rate) / rate
    voice = (0.3 * np.sin(2 * np.pi * 150 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype("<f4")  # 2 s, on/off
    voice.tofile(tmp_path / "a.f32")
    times = np.arange(2 * fps) / fps
    (tmp_path / "t.json").write_text(json.dumps(times.tolist()))
    done = subprocess.run(["node", str(headaudio.HERE / "run.mjs"), str(tmp_path / "a.f32"), str(rate),
                           str(tmp_path / "t.json")], capture_output=True, text=True, check=True, timeout=60)
    out = json.loads(done.stdout)
    assert sorted(out["visemes"]) == sorted(OCULUS)
    for kind in ("values", "labels"):
        track = headaudio.opening_of(np.array(out[kind]), out["visemes"])
        assert track.shape == (len(times),) and np.all(np.isfinite(track)) and np.all(track >= 0)
