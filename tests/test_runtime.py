"""The shared runtime: provider choice, ONNX Runtime sessions, the engine cache key, ``doctor``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.runtime import ProviderChoiceError, engine_cache_key, select_providers
from engines.runtime.session import ModelLoadError, ModelSession, shared_session, tensorrt_options

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, "torch.nn.Module"]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(
        model, (torch.zeros(2, 6),), str(path), dynamo=False, opset_version=17,
        input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    )
    return path, model


def test_best_provider_first_and_cpu_always_last(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIPSYNC_PROVIDER", raising=False)
    assert select_providers(available=["cpu"]) == ["CPUExecutionProvider"]
    assert select_providers(available=["tensorrt", "cuda", "cpu"]) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("tensorrt", available=["tensorrt", "cuda", "cpu"]) == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("CPU", available=["tensorrt", "cuda", "cpu"]) == ["CPUExecutionProvider"]


def test_forcing_a_provider_this_machine_lacks_says_what_there_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSYNC_PROVIDER", "cuda")
    with pytest.raises(ProviderChoiceError, match="'cuda' is not available here .*offers: cpu"):
        select_providers(available=["cpu"])
    with pytest.raises(ProviderChoiceError, match="unknown provider 'rocm'"):
        select_providers("rocm", available=["cpu"])
    with pytest.raises(ProviderChoiceError, match="onnxruntime is not installed"):
        select_providers(available=[])


def test_session_describes_warms_up_and_matches_torch(tiny_onnx: tuple[Path, "torch.nn.Module"], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIPSYNC_PROVIDER", raising=False)
    path, model = tiny_onnx
    session = ModelSession(path)
    assert session.provider == "CPUExecutionProvider" and not session.on_gpu
    assert session.input_names == ["x"] and session.output_names == ["y"]
    assert session.inputs[0].concrete({"batch": 4}) == (4, 6)
    assert session.warm_up({"batch": 3}) >= 0.0
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run({"x": x})["y"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="missing inputs"):
        session.run({})
    assert shared_session(path) is shared_session(path)


def test_missing_or_corrupt_model_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="nothing.onnx: no such model file"):
        ModelSession(tmp_path / "nothing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="bad.onnx: ONNX Runtime cannot load it"):
        ModelSession(bad)


def test_engine_cache_key_changes_with_everything_an_engine_depends_on(tiny_onnx: tuple[Path, object], tmp_path: Path) -> None:
    path, _ = tiny_onnx
    base = dict(gpu="NVIDIA H100", tensorrt_version="10.3", precision="fp16", shapes={"x": (4, 6)})
    key = engine_cache_key(path, **base)
    assert key == engine_cache_key(path, **base) and len(key) == 16
    for change in ({"gpu": "NVIDIA L4"}, {"tensorrt_version": "10.4"}, {"precision": "fp32"}, {"shapes": {"x": (8, 6)}}):
        assert engine_cache_key(path, **{**base, **change}) != key, change
    other = tmp_path / "tiny.onnx"
    other.write_bytes(path.read_bytes() + b"\0")
    changed = engine_cache_key(other, **base)
    assert changed != key
    (tmp_path / "tiny.onnx.data").write_bytes(b"weights")
    assert engine_cache_key(other, **base) != changed  # its external data counts too


def test_doctor_reports_providers_gpu_backends_and_missing_weights(tmp_path: Path) -> None:
    env = {**os.environ, "LIPSYNC_MODELS_DIR": str(tmp_path / "models")}
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "stream_server", "doctor", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    text = run()
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "providers found: cpu" in out and "CPUExecutionProvider" in out
    if shutil.which("nvidia-smi") is None:
        assert "no NVIDIA GPU found" in out
    assert "mesh: available" in out and "musetalk: unavailable" in out
    assert str(tmp_path / "models" / "musetalkV15" / "unet.pth") in out
    assert "huggingface.co/TMElyralab/MuseTalk" in out and "stabilityai/sd-vae-ft-mse" in out and "openai/whisper-tiny" in out
    assert "face-parse-bisent (optional): not found, using the FaceMesh mask" in out
    data = json.loads(run("--json").stdout)
    musetalk = next(b for b in data["backends"] if b["name"] == "musetalk")
    assert not musetalk["available"] and "musetalkV15/unet.pth" in musetalk["reason"]
    assert "exported ONNX: none" in musetalk["files"]["notes"][0]  # unet.onnx not exported


def test_tensorrt_engines_are_cached_per_model_gpu_version_precision_and_shapes(tiny_onnx: tuple[Path, object], tmp_path: Path) -> None:
    path, _ = tiny_onnx
    shapes = {"x": ((1, 6), (8, 6))}
    options, cache = tensorrt_options(path, True, shapes, "NVIDIA L4", "10.3", tmp_path)
    assert cache.is_dir() and cache.parent == tmp_path and cache.name.startswith("tiny-")
    assert options["trt_fp16_enable"] is True and options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(cache)
    assert options["trt_profile_min_shapes"] == "x:1x6" and options["trt_profile_max_shapes"] == "x:8x6"
    assert tensorrt_options(path, True, shapes, "NVIDIA L4", "10.3", tmp_path)[1] == cache  # reused next start
    assert tensorrt_options(path, False, shapes, "NVIDIA L4", "10.3", tmp_path)[1] != cache
    assert tensorrt_options(path, True, shapes, "NVIDIA H100", "10.3", tmp_path)[1] != cache


def test_the_tensorrt_profile_reads_input_shapes_from_the_graph_alone(tiny_onnx: tuple[Path, object], tmp_path: Path) -> None:
    """The shapes for a TensorRT profile come from the ONNX graph without loading the weights
    (no second, CPU copy of a 3.4 GB UNet), and agree with what ONNX Runtime reports."""
    import onnx
    import onnxruntime as ort

    from engines.runtime.session import _profile_shapes, input_specs

    path, _ = tiny_onnx
    model = onnx.load(str(path))
    onnx.save_model(model, str(tmp_path / "split.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="split.onnx.data", size_threshold=0)
    (tmp_path / "split.onnx.data").write_bytes(b"")  # the weights are never read: an empty file will do
    specs = input_specs(ort, tmp_path / "split.onnx")
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    assert [(s.name, s.shape, s.dtype) for s in specs] == [(i.name, tuple(i.shape), i.type) for i in reference]
    assert _profile_shapes(ort, tmp_path / "split.onnx", 8) == {"x": ((1, 6), (8, 6))}


def test_one_models_output_feeds_the_next_without_leaving_the_device(tiny_onnx: tuple[Path, "torch.nn.Module"], monkeypatch: pytest.MonkeyPatch) -> None:
    """run_on_device leaves the outputs where the model ran (CPU memory here, GPU memory on a
    GPU) and run takes them as they are: the UNet -> VAE decoder hand-off in MuseTalk."""
    monkeypatch.delenv("LIPSYNC_PROVIDER", raising=False)
    path, model = tiny_onnx
    session = ModelSession(path)
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    kept = session.run_on_device({"x": x})["y"]
    assert kept.device_name() == "cpu" and kept.shape() == [3, 3]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(kept.numpy(), expected, atol=1e-5)
    padded = np.zeros((3, 6), np.float32)
    padded[:, :3] = kept.numpy()
    # an OrtValue as a feed: the same answer as the array it holds
    from onnxruntime import OrtValue

    np.testing.assert_allclose(session.run({"x": OrtValue.ortvalue_from_numpy(padded)})["y"], session.run({"x": padded})["y"], atol=1e-6)
