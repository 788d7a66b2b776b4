"""MuseTalk end to end on CPU with a tiny checkpoint set in the official layout: ``export
musetalk`` (ONNX checked against PyTorch), the backend through ONNX Runtime, ``render``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from engines.base import AudioWindow, FrameJob  # noqa: E402
from engines.musetalk.export import FILES, TOLERANCE  # noqa: E402
from engines.musetalk.tiny import write_tiny_set  # noqa: E402
from engines.images import fit_cover, read_image  # noqa: E402
from engines.registry import BackendRegistry  # noqa: E402
from stream_server.avatars import BUNDLED  # noqa: E402
from tests.cli_runs import cli, render_musetalk_second  # noqa: E402

REPO = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny set exported through the command line, once for the module."""
    models = write_tiny_set(tmp_path_factory.mktemp("models"))
    env = {"LIPSYNC_MODELS_DIR": str(models)}
    before = cli("doctor", "--json", env=env)
    musetalk = next(b for b in json.loads(before.stdout)["backends"] if b["name"] == "musetalk")
    assert not musetalk["available"] and "not exported" in musetalk["reason"]
    result = cli("export", "musetalk", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return models, result.stdout


def test_export_checks_every_model_against_pytorch(exported: tuple[Path, str]) -> None:
    models, stdout = exported
    report = json.loads((models / "musetalk-onnx" / "export.json").read_text())
    assert report["opset"] >= 17 and report["audio_tokens"] == 50 and report["latent_size"] == 32
    for name in FILES:
        assert (models / "musetalk-onnx" / name).is_file()
        assert f"{name[:-5]}: " in stdout and "max abs error vs PyTorch" in stdout
        assert report["models"][name[:-5]]["max_abs_error"] <= TOLERANCE
    # no face-parse-bisent/79999_iter.pth in this set: no face parser, said so
    assert "face_parse" not in report["models"] and not (models / "musetalk-onnx" / "face_parse.onnx").exists()
    assert "79999_iter.pth not found; the backend blends through the FaceMesh mask" in stdout


def test_export_of_a_broken_set_names_the_file(tmp_path: Path) -> None:
    result = cli("export", "musetalk", "--models-dir", str(tmp_path), env={})
    assert result.returncode == 2 and "musetalk: not found" in result.stderr and "TMElyralab/MuseTalk" in result.stderr


def test_backend_lip_syncs_the_lower_face_only(exported: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    models, _ = exported
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(models))
    registry = BackendRegistry(BUNDLED["astronaut"])
    assert registry.info("musetalk").available, registry.info("musetalk").reason
    backend = registry.get("musetalk")
    assert registry.info("musetalk").typical_fps > 0
    portrait = np.ascontiguousarray(fit_cover(read_image(BUNDLED["astronaut"]), 256, 256))
    avatar = backend.prepare_avatar("astronaut", portrait)
    x0, y0, x1, y1 = avatar.data["musetalk"].face.box
    speech = (np.sin(np.arange(16000) * 0.05) * 0.3).astype(np.float32)
    loud = AudioWindow(1.0, 0.8, 0.2, speech, np.zeros((100, 80), np.float32))
    quiet = AudioWindow(1.0, 0.8, 0.2, np.zeros(16000, np.float32), np.zeros((100, 80), np.float32))
    jobs = [FrameJob("s", i, i / 25, window, portrait, avatar) for i, window in enumerate([loud, loud, quiet])]
    frames = backend.generate(jobs)
    assert [f.shape for f in frames] == [portrait.shape] * 3 and all(f.dtype == np.uint8 for f in frames)
    changed = np.abs(frames[0].astype(int) - portrait).max(axis=2) > 0
    assert changed.any()  # random weights: the lower face is replaced by something
    ridge = int(np.nonzero(changed.any(axis=1))[0].min())
    assert ridge >= y0 and not changed[:, :x0].any() and not changed[:, x1:].any() and not changed[y1:].any()
    assert ridge > (y0 + y1) / 2 - 0.15 * (y1 - y0)  # the upper face stays the avatar's own
    np.testing.assert_array_equal(frames[0], frames[1])  # same audio, same frame
    assert not np.array_equal(frames[2], frames[0])  # the audio drives the output
    assert not backend.parses_faces and avatar.data["musetalk"].mask == "facemesh"  # no face_parse.onnx
    assert backend.stream_stats("s")["mask_facemesh"] == 3


def test_render_with_musetalk_on_cpu(exported: tuple[Path, str], tmp_path: Path) -> None:
    models, _ = exported
    summary, out = render_musetalk_second(models, tmp_path)
    assert summary["frames"] == 25 and summary["counts"]["generated"] == 25
    assert summary["backend_stats"] == {"face_lost": 0, "mask_bisenet": 0, "mask_facemesh": 25}
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(container.streams.video[0])) == 25


async def test_server_lists_musetalk_unavailable_with_the_paths_and_keeps_running(
    start_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiohttp

    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(tmp_path / "models"))
    live = await start_server()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}/backends") as response:
            listed = {b["name"]: b for b in (await response.json())["backends"]}
        assert listed["musetalk"]["available"] is False
        assert str(tmp_path / "models" / "musetalkV15" / "unet.pth") in listed["musetalk"]["reason"]
        assert listed["mesh"]["available"] is True
        async with http.get(f"{live.url}/healthz") as response:
            assert (await response.json())["status"] == "ok"


def test_a_corrupt_exported_model_takes_only_musetalk_out(exported: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    models, _ = exported
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    (copy / "musetalk-onnx" / "unet.onnx").write_bytes(b"\0" * 100)
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(copy))
    registry = BackendRegistry(BUNDLED["astronaut"])
    with pytest.raises(RuntimeError, match="unet.onnx: ONNX Runtime cannot load it"):
        registry.get("musetalk")
    info = registry.info("musetalk")
    assert not info.available and "unet.onnx" in info.reason
    assert registry.info("mesh").available


def test_camera_mode_prepares_each_frame_and_counts_frames_without_a_face(exported: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    models, _ = exported
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(models))
    registry = BackendRegistry(BUNDLED["astronaut"])
    backend = registry.get("musetalk")
    camera = backend.prepare_avatar("camera", None)
    face = np.ascontiguousarray(fit_cover(read_image(BUNDLED["astronaut"]), 256, 256))
    wall = np.full_like(face, 90)
    speech = AudioWindow(1.0, 0.8, 0.2, (np.sin(np.arange(16000) * 0.05) * 0.3).astype(np.float32), np.zeros((100, 80), np.float32))
    frames = backend.generate([FrameJob("cam", i, i / 25, speech, base, camera) for i, base in enumerate([face, wall, face])])
    assert not np.array_equal(frames[0], face) and np.array_equal(frames[1], wall)
    assert backend.stream_stats("cam") == {"face_lost": 1, "mask_bisenet": 0, "mask_facemesh": 2}
    backend.close_stream("cam")
    assert backend.stream_stats("cam") == {"face_lost": 0, "mask_bisenet": 0, "mask_facemesh": 0}


def test_backend_on_onnx_runtime_equals_the_pytorch_pipeline(exported: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole frame, ONNX Runtime (backend) against the same steps in PyTorch on the loaded
    checkpoints: audio window, token selection, latents order, one UNet step, decode, paste."""
    import torch

    from engines.musetalk.audio import frame_features, frame_window, log_mel
    from engines.musetalk.face import paste
    from engines.musetalk.model import UNetStep, VAEDecode, VAEEncode, WhisperFeatures
    from engines.musetalk.weights import find_layout, load_unet, load_vae, load_whisper_encoder

    models, _ = exported
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(models))
    backend = BackendRegistry(BUNDLED["astronaut"]).get("musetalk")
    portrait = np.ascontiguousarray(fit_cover(read_image(BUNDLED["astronaut"]), 256, 256))
    avatar = backend.prepare_avatar("astronaut", portrait)
    pcm = (np.random.default_rng(1).standard_normal(19200) * 0.2).astype(np.float32)
    window = AudioWindow(1.0, 1.0, 0.2, pcm, np.zeros((120, 80), np.float32))
    got = backend.generate([FrameJob("p", 0, 0.0, window, portrait, avatar)])[0]

    layout = find_layout(models)
    vae = load_vae(layout)
    face = avatar.data["musetalk"].face
    reference = torch.from_numpy(face.crop.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    masked = reference.clone()
    masked[:, :, 128:] = -1.0
    with torch.no_grad():
        latents = torch.cat([VAEEncode(vae)(masked), VAEEncode(vae)(reference)], dim=1)
        mel = torch.from_numpy(log_mel(frame_window(pcm, 1.0, 0.2)))[None]
        hidden = WhisperFeatures(load_whisper_encoder(layout))(mel)[0].numpy()
        tokens = torch.from_numpy(frame_features(hidden))[None]
        out = VAEDecode(vae)(UNetStep(load_unet(layout))(latents, tokens))
    image = (out[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    expected = paste(portrait, face, image)
    assert np.abs(got.astype(int) - expected).max() <= 2


def test_serving_needs_no_pytorch(exported: tuple[Path, str]) -> None:
    models, _ = exported
    code = (
        "import sys\n"
        "class NoTorch:\n"  # importing any of them fails, as in an install without the export extra
        "    def find_spec(self, name, *args):\n"
        "        if name.split('.')[0] in ('torch', 'diffusers', 'transformers', 'onnx'): raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import numpy as np\n"
        "from engines.base import AudioWindow, FrameJob\n"
        "from engines.images import read_image\n"
        "from engines.registry import BackendRegistry\n"
        "from stream_server.avatars import BUNDLED\n"
        "backend = BackendRegistry(BUNDLED['astronaut']).get('musetalk')\n"
        "image = np.ascontiguousarray(read_image(BUNDLED['astronaut'])[::2, ::2])\n"
        "avatar = backend.prepare_avatar('a', image)\n"
        "w = AudioWindow(1.0, 0.8, 0.2, np.ones(16000, np.float32) * 0.1, np.zeros((100, 80), np.float32))\n"
        "frame = backend.generate([FrameJob('s', 0, 0.0, w, image, avatar)])[0]\n"
        "assert not any(m.split('.')[0] in ('torch', 'diffusers', 'transformers') for m in sys.modules)\n"
        "print('ok', frame.shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "LIPSYNC_MODELS_DIR": str(models), "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "ok (256, 256, 3)" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("command", [["doctor"], ["export"], ["export", "musetalk"]])
def test_new_commands_have_help(command: list[str]) -> None:
    result = cli(*command, "--help", env={})
    assert result.returncode == 0 and "usage: python -m stream_server" in result.stdout
