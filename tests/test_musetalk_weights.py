"""MuseTalk's official file layout and its loader: the published architecture (checked on the
meta device, no 3.4 GB file needed), tiny checkpoints in the official formats, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from engines.musetalk import audio  # noqa: E402
from engines.musetalk.tiny import TINY_DIM, write_tiny_set  # noqa: E402
from engines.musetalk.weights import (  # noqa: E402
    PUBLISHED_UNET_CONFIG, PUBLISHED_UNET_KEYS, PUBLISHED_UNET_PARAMETERS, WeightsError, build_unet,
    check_state_dict, find_layout, load_unet, load_vae, load_whisper_encoder,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_set(tmp_path_factory.mktemp("models"))


def test_published_unet_architecture_on_the_meta_device() -> None:
    unet = build_unet(PUBLISHED_UNET_CONFIG, meta=True)
    state = unet.state_dict()
    assert len(state) == PUBLISHED_UNET_KEYS == 686
    assert sum(v.numel() for v in state.values()) == PUBLISHED_UNET_PARAMETERS == 849_947_844
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["conv_in.weight"] == (320, 8, 3, 3)  # masked face + reference latents
    assert shapes["conv_out.weight"] == (4, 320, 3, 3)
    assert shapes["time_embedding.linear_1.weight"] == (1280, 320)
    # every cross-attention reads the 384-wide Whisper-tiny tokens
    cross = {k: s for k, s in shapes.items() if ".attn2.to_k." in k or ".attn2.to_v." in k}
    assert len(cross) == 2 * 16 and all(s[1] == 384 for s in cross.values())
    assert shapes["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"] == (1280, 384)
    assert shapes["up_blocks.3.attentions.2.proj_out.weight"] == (320, 320, 1, 1)
    # the loader's check on a checkpoint of the wrong architecture (v1.0's dims, 768-wide audio)
    wrong = build_unet({**PUBLISHED_UNET_CONFIG, "cross_attention_dim": 768}, meta=True).state_dict()
    with pytest.raises(WeightsError, match=r"unet.pth: .*32 tensors of the wrong shape .*\(320, 768\) in the file, \(320, 384\) expected"):
        check_state_dict(Path("unet.pth"), wrong, state)


@pytest.mark.parametrize("version,vae_format", [("v15", "bin"), ("v10", "safetensors")])
def test_tiny_set_in_the_official_layout_loads(tmp_path: Path, version: str, vae_format: str) -> None:
    write_tiny_set(tmp_path, version=version, vae_format=vae_format)
    layout = find_layout(tmp_path)
    assert layout.missing() == []
    assert layout.unet == tmp_path / ("musetalkV15/unet.pth" if version == "v15" else "musetalk/pytorch_model.bin")
    assert load_unet(layout).config.in_channels == 8
    assert load_vae(layout).config.latent_channels == 4
    assert load_whisper_encoder(layout).config.d_model == TINY_DIM


def test_missing_files_name_every_path_looked_at(tmp_path: Path) -> None:
    missing = find_layout(tmp_path).missing()
    assert len(missing) == 3
    assert str(tmp_path / "musetalkV15" / "unet.pth") in missing[0] and str(tmp_path / "musetalk" / "pytorch_model.bin") in missing[0]
    assert "huggingface.co/TMElyralab/MuseTalk" in missing[0]
    assert "sd-vae-ft-mse" in missing[1] and "whisper-tiny" in missing[2]
    with pytest.raises(WeightsError, match="musetalk: not found"):
        load_unet(find_layout(tmp_path))


def _copy(tiny: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(tiny, root)
    return root


def test_truncated_checkpoint(tiny: Path, tmp_path: Path) -> None:
    root = _copy(tiny, tmp_path)
    path = root / "musetalkV15" / "unet.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"unet.pth: cannot be read as a PyTorch checkpoint .*truncated or corrupt"):
        load_unet(find_layout(root))
    vae = root / "sd-vae" / "diffusion_pytorch_model.bin"
    vae.write_bytes(b"")
    with pytest.raises(WeightsError, match="diffusion_pytorch_model.bin: cannot be read"):
        load_vae(find_layout(root))


def test_wrong_keys(tiny: Path, tmp_path: Path) -> None:
    root = _copy(tiny, tmp_path)
    path = root / "musetalkV15" / "unet.pth"
    state = torch.load(path, weights_only=True)
    state["extra.weight"] = state.pop("conv_in.weight")
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"unet.pth: does not match .*1 missing keys \(e.g. conv_in.weight\); 1 unexpected keys \(e.g. extra.weight\)"):
        load_unet(find_layout(root))
    whisper = root / "whisper" / "model.safetensors"
    from safetensors.torch import save_file

    save_file({"decoder.x": torch.zeros(1)}, str(whisper))
    with pytest.raises(WeightsError, match="model.safetensors: no encoder weights"):
        load_whisper_encoder(find_layout(root))


def test_wrong_shapes(tiny: Path, tmp_path: Path) -> None:
    root = _copy(tiny, tmp_path)
    config = root / "musetalkV15" / "musetalk.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "cross_attention_dim": 32}))
    with pytest.raises(WeightsError, match=r"unet.pth: does not match .*tensors of the wrong shape"):
        load_unet(find_layout(root))
    config.write_text("{not json")
    with pytest.raises(WeightsError, match="musetalk.json: not valid JSON"):
        load_unet(find_layout(root))


def test_whisper_features_equal_transformers_hidden_states(tiny: Path) -> None:
    from engines.musetalk.model import WhisperFeatures

    encoder = load_whisper_encoder(find_layout(tiny))
    mel = torch.randn(1, 80, 3000)  # the 30 s transformers insists on
    with torch.no_grad():
        expected = torch.stack(encoder(mel, output_hidden_states=True).hidden_states, dim=2)
        got = WhisperFeatures(encoder)(mel)
    assert got.shape == (1, 1500, 5, TINY_DIM)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_streaming_window_and_frame_tokens() -> None:
    pcm = np.arange(16000 * 2, dtype=np.float32)
    # audio covering [t - 1.0, t + 0.2): the window starts 0.2 s in
    window = audio.frame_window(pcm, before_s=1.0, after_s=0.2)
    assert len(window) == 16000 and window[0] == 3200
    short = audio.frame_window(pcm[:8000], before_s=0.3, after_s=0.2)  # start of the stream: zero-padded
    assert short[: 8000 - 0].tolist()[:8000] == [0.0] * 8000 and short[8000] == 0.0 and short[8001] == 1.0
    mel = audio.log_mel(np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1)
    assert mel.shape == (80, audio.WINDOW_MEL_FRAMES) and mel.dtype == np.float32
    hidden = np.arange(50 * 5 * 3, dtype=np.float32).reshape(50, 5, 3)  # steps, layers, dim
    tokens = audio.frame_features(hidden)
    assert tokens.shape == (50, 3)
    np.testing.assert_array_equal(tokens[:5], hidden[36])  # 80 ms before the frame at 0.8 s
    np.testing.assert_array_equal(tokens[-5:], hidden[45])
    pe = audio.positional_encoding(50, 384)
    assert pe.shape == (50, 384) and pe[0, 0] == 0.0 and pe[0, 1] == 1.0


def test_large_models_keep_their_weights_in_one_external_data_file(tmp_path: Path) -> None:
    from engines.musetalk.export import _export_one
    from engines.runtime.session import ModelSession

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).eval()
    x = torch.randn(3, 64)
    path = tmp_path / "big.onnx"
    _export_one(model, {"x": x}, "y", path, external_data_bytes=1000)  # as if over 2 GB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert path.stat().st_size < 5000 < (tmp_path / "big.onnx.data").stat().st_size
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(ModelSession(path, provider="cpu").run({"x": x.numpy()})["y"], expected, atol=1e-5)
    _export_one(model, {"x": x}, "y", path)  # small again: one file, the old data file gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx"]


def test_log_mel_is_whispers() -> None:
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(48000) * 0.1 * np.sin(np.arange(48000) / 3000)).astype(np.float32)
    expected = WhisperFeatureExtractor()(pcm, sampling_rate=16000, return_tensors="np").input_features[0]
    got = audio.log_mel(np.pad(pcm, (0, 16000 * 30 - len(pcm))))  # the extractor pads to 30 s
    assert got.shape == expected.shape == (80, 3000)
    np.testing.assert_allclose(got, expected, atol=1e-4)
