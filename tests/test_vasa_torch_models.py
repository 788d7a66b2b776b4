"""Ditto's networks at their published sizes (engines/vasa/torch_models.py): state-dict keys and
shapes of the full-size definitions, checkpoints in the published .pth layouts, clear errors on a
wrong file, the computation of the cheap ones, and exported ONNX signatures (spec vasa.md §2.1)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from engines.vasa import torch_models as tm  # noqa: E402

# the legacy ONNX tracer's notes on shape-dependent Python branches (batch and sizes are fixed there)
pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:ONNX export mode is set to TrainingMode.EVAL")]

# parameters of each full-size definition; LivePortrait's speed.md lists 0.84 M, 28.12 M,
# 45.53 M and 55.37 M for the first four and 0.23 M for its three stitching/retargeting MLPs
PARAMETERS = {
    "appearance_extractor": 836_224,
    "motion_extractor": 28_118_728,
    "warp_network": 45_529_829,
    "decoder": 55_365_388,
    "stitch_network": 45_249,  # retarget_shoulder only: the MLP Ditto runs
    "lmdm": 47_788_297,  # MotionDecoder with cond 1103
}


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol * b


@pytest.mark.parametrize("name", list(tm.NETWORKS))
def test_full_size_definition_matches_the_published_size(name: str) -> None:
    net = tm.NETWORKS[name]
    model = tm.build(name, meta=True)
    target = model.model if net.inner else model
    params = sum(p.numel() for p in target.parameters())
    size = tm.state_bytes(model, name)
    print(f"{name}: {params:,} parameters, {size / 1e6:.2f} MB of fp32 state vs {net.pth} {net.published_bytes / 1e6:.2f} MB")
    assert params == PARAMETERS[name]
    if name == "stitch_network":
        # stitch_network.pth is LivePortrait's stitching_retargeting_module.pth: three MLPs,
        # 0.23 M parameters = 0.91 MB of tensors (a safetensors repack of it is 911,836 bytes);
        # the rest of its 2.39 MB is not model tensors. The one MLP ~ stitch_network.onnx's 186 kB.
        total = sum(sum(p.numel() for p in tm.StitchingNetwork(*dims).parameters()) for dims in tm.STITCH_MLPS.values())
        assert total == 227_263 and _close(total, 0.23e6, 0.02)
        assert _close(size, 186_000, 0.04)
    else:
        assert _close(size, net.published_bytes, 0.02), (size, net.published_bytes)


def test_key_names_follow_the_published_modules() -> None:
    shapes = {n: {k: tuple(v.shape) for k, v in tm.build(n, meta=True).state_dict().items()} for n in tm.NETWORKS}
    app, mot, warp, dec, st = (shapes[n] for n in ("appearance_extractor", "motion_extractor", "warp_network", "decoder", "stitch_network"))
    assert app["resblocks_3d.3dr5.conv2.weight"] == (32, 32, 3, 3, 3)
    assert app["second.weight"] == (512, 256, 1, 1) and "first.norm.num_batches_tracked" in app
    assert mot["detector.stages.2.8.grn.gamma"] == (1, 1, 1, 1536)
    assert mot["detector.downsample_layers.0.1.weight"] == (96,) and mot["detector.fc_pitch.weight"] == (66, 768)
    # dense motion: hourglass 110 -> 1024 (5 blocks), out_filters 142, mask to 22 motions
    assert warp["dense_motion_network.hourglass.encoder.down_blocks.0.conv.weight"] == (64, 110, 3, 3, 3)
    assert warp["dense_motion_network.hourglass.encoder.down_blocks.4.conv.weight"] == (1024, 512, 3, 3, 3)
    assert warp["dense_motion_network.hourglass.decoder.up_blocks.4.conv.weight"] == (32, 128, 3, 3, 3)
    assert warp["dense_motion_network.mask.weight"] == (22, 142, 7, 7, 7)
    assert warp["dense_motion_network.occlusion.weight"] == (1, 142 * 16, 7, 7)
    assert warp["third.conv.weight"] == (256, 512, 3, 3) and warp["fourth.weight"] == (256, 256, 1, 1)
    # SPADE convs carry torch.nn.utils.spectral_norm's keys; the shortcut conv has no bias
    assert dec["G_middle_0.conv_0.weight_orig"] == (512, 512, 3, 3)
    assert dec["G_middle_0.conv_0.weight_u"] == (512,) and dec["G_middle_0.conv_0.weight_v"] == (4608,)
    assert "G_middle_0.conv_0.weight" not in dec and "up_0.conv_s.bias" not in dec
    assert dec["up_1.conv_s.weight_orig"] == (64, 256, 1, 1) and dec["conv_img.0.weight"] == (12, 64, 3, 3)
    assert st == {"mlp.0.weight": (128, 126), "mlp.0.bias": (128,), "mlp.2.weight": (128, 128), "mlp.2.bias": (128,),
                  "mlp.4.weight": (64, 128), "mlp.4.bias": (64,), "mlp.6.weight": (65, 64), "mlp.6.bias": (65,)}
    lm = {k: tuple(v.shape) for k, v in tm.build("lmdm", meta=True).model.state_dict().items()}
    assert lm["input_projection.weight"] == (512, 530) and lm["cond_projection.weight"] == (512, 1103)
    assert lm["null_cond_embed"] == (1, 80, 512) and lm["null_cond_hidden"] == (1, 512)
    assert lm["time_mlp.1.weight"] == (2048, 512) and lm["to_time_tokens.0.weight"] == (1024, 2048)
    assert lm["seqTransDecoder.stack.7.film3.block.1.weight"] == (1024, 512)
    assert lm["cond_encoder.1.self_attn.in_proj_weight"] == (1536, 512)
    assert lm["non_attn_cond_projection.3.weight"] == (512, 512) and lm["final_layer.weight"] == (265, 512)
    # the shared rotary embedding's persistent buffer appears under every module that holds it
    assert sorted(k for k in lm if k.endswith("rotary.freqs")) == sorted(
        ["rotary.freqs", "cond_encoder.0.rotary.freqs", "cond_encoder.1.rotary.freqs"]
        + [f"seqTransDecoder.stack.{i}.rotary.freqs" for i in range(8)])
    assert not any(k.startswith("alphas") or "sqrt_" in k for k in lm)  # the schedule is not in the file


@pytest.mark.parametrize("name", list(tm.NETWORKS))
def test_published_layout_checkpoint_loads(tmp_path: Path, name: str) -> None:
    path = tm.published_layout_checkpoint(name, tmp_path / tm.NETWORKS[name].pth, seed=3)
    raw = torch.load(str(path), map_location="cpu", weights_only=True)
    model = tm.load_published(name, path)
    if name == "lmdm":
        assert set(raw) == {"model_state_dict"}
        state = raw["model_state_dict"]
        assert torch.equal(model.model.cond_projection.weight, state["cond_projection.weight"])
        assert model.alphas_cumprod.shape == (1000,) and not model.alphas_cumprod.is_meta
    elif name == "stitch_network":
        assert set(raw) == {"retarget_shoulder", "retarget_mouth", "retarget_eye"}
        assert all(k.startswith("module.mlp.") for k in raw["retarget_shoulder"])
        assert raw["retarget_eye"]["module.mlp.0.weight"].shape == (256, 66)
        assert torch.equal(model.mlp[6].weight, raw["retarget_shoulder"]["module.mlp.6.weight"])
    else:
        assert isinstance(raw, OrderedDict)
        key = next(iter(raw))
        assert torch.equal(model.state_dict()[key], raw[key])
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert not model.training


def test_a_wrong_checkpoint_names_the_keys(tmp_path: Path) -> None:
    good = tm.published_layout_checkpoint("stitch_network", tmp_path / "good.pth")
    raw = torch.load(str(good), weights_only=True)
    shoulder = raw["retarget_shoulder"]
    shoulder["module.mlp.8.weight"] = shoulder.pop("module.mlp.6.weight")
    shoulder["module.mlp.0.bias"] = torch.zeros(127)
    torch.save(raw, str(tmp_path / "bad.pth"))
    with pytest.raises(tm.PublishedCheckpointError) as err:
        tm.load_published("stitch_network", tmp_path / "bad.pth")
    message = str(err.value)
    assert "bad.pth" in message and "1 missing keys: mlp.6.weight" in message
    assert "1 unexpected keys: mlp.8.weight" in message
    assert "mlp.0.bias: (127,) in the file, (128,) expected" in message
    # the wrapping dict the real loaders read
    torch.save(shoulder, str(tmp_path / "flat.pth"))
    with pytest.raises(tm.PublishedCheckpointError, match="expected a dict with 'retarget_shoulder'"):
        tm.load_published("stitch_network", tmp_path / "flat.pth")
    torch.save({"state_dict": {}}, str(tmp_path / "lmdm.pth"))
    with pytest.raises(tm.PublishedCheckpointError, match="expected a dict with 'model_state_dict'"):
        tm.load_published("lmdm", tmp_path / "lmdm.pth")
    with pytest.raises(tm.PublishedCheckpointError, match="file not found"):
        tm.load_published("decoder", tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(tm.PublishedCheckpointError, match="cannot be read as a PyTorch checkpoint"):
        tm.load_published("decoder", tmp_path / "junk.pth")
    # a full-size decoder without spectral norm (plain conv weights) is named key by key
    expected = tm.build("decoder", meta=True).state_dict()
    plain = {k.replace("weight_orig", "weight"): v for k, v in expected.items() if not k.endswith(("weight_u", "weight_v"))}
    with pytest.raises(tm.PublishedCheckpointError) as err:
        tm.check_state("decoder.pth", "decoder", plain, expected)
    assert "missing keys: G_middle_0.conv_0.weight_orig, G_middle_0.conv_0.weight_u" in str(err.value)
    assert "unexpected keys: G_middle_0.conv_0.weight," in str(err.value)
    # an LMDM trained with another condition width
    lm = tm.build("lmdm", meta=True).model.state_dict()
    other = tm.build("lmdm", meta=True, audio_feat_dim=1059).model.state_dict()
    with pytest.raises(tm.PublishedCheckpointError, match=r"cond_projection\.weight: \(512, 1059\) in the file, \(512, 1103\) expected"):
        tm.check_state("lmdm.pth", "lmdm", other, lm)


def test_stitching_returns_the_stitched_keypoints() -> None:
    torch.manual_seed(0)
    model = tm.build("stitch_network")
    kp_s, kp_d = model.example_inputs(2)
    with torch.no_grad():
        out = model(kp_s, kp_d)
        delta = model.mlp(torch.cat([kp_s.reshape(2, -1), kp_d.reshape(2, -1)], 1))
    expected = kp_d + delta[:, :63].reshape(2, 21, 3)
    expected[..., :2] += delta[:, None, 63:65]
    assert out.shape == (2, 21, 3)
    torch.testing.assert_close(out, expected)


def test_lmdm_one_guided_call_at_full_size() -> None:
    torch.manual_seed(0)
    model = tm.build("lmdm")
    x, cond_frame, cond, _ = model.example_inputs(1)
    t = torch.tensor([899])
    with torch.no_grad():
        pred_noise, x_start = model(x, cond_frame, cond, t)
        unc = model.model(x, cond_frame, cond, t, keep_cond=False)
        con = model.model(x, cond_frame, cond, t, keep_cond=True)
    assert pred_noise.shape == x_start.shape == (1, 80, 265)
    torch.testing.assert_close(x_start, unc + 2 * (con - unc), rtol=1e-4, atol=1e-4)
    ac = model.alphas_cumprod[899]
    torch.testing.assert_close(pred_noise, x / torch.sqrt(1 - ac) - x_start / torch.sqrt(1 / ac - 1), rtol=1e-4, atol=1e-4)
    # the schedule: cosine, s = 8e-3, 1000 steps
    assert model.alphas_cumprod.shape == (1000,) and 0.99 < float(model.alphas_cumprod[0]) < 1.0
    assert float(model.alphas_cumprod[-1]) < 1e-4


def _ort_check(path: Path, model: torch.nn.Module, batch: int, atol: float = 1e-4) -> ort.InferenceSession:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(model.input_names)
    assert [o.name for o in session.get_outputs()] == list(model.output_names)
    torch.manual_seed(1)
    inputs = model.example_inputs(batch)
    with torch.no_grad():
        expected = model(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session.run(None, {n: t.numpy() for n, t in zip(model.input_names, inputs)})
    for g, e in zip(got, expected):
        assert g.shape == tuple(e.shape)
        np.testing.assert_allclose(g, e.numpy(), atol=atol, rtol=1e-3)
    return session


def test_onnx_signatures_full_size_cheap_networks(tmp_path: Path) -> None:
    stitch = tm.build("stitch_network")
    path = tm.export_onnx("stitch_network", tmp_path / "stitch_network.onnx", batch_dynamic=True, model=stitch)
    session = _ort_check(path, stitch, batch=3)
    assert session.get_outputs()[0].shape == ["batch", 21, 3]
    motion = tm.build("motion_extractor")
    path = tm.export_onnx("motion_extractor", tmp_path / "motion_extractor.onnx", batch_dynamic=False, model=motion)
    session = _ort_check(path, motion, batch=1)
    assert [o.shape for o in session.get_outputs()] == [[1, 66], [1, 66], [1, 66], [1, 3], [1, 63], [1, 1], [1, 63]]
    assert onnx.load(str(path)).opset_import[0].version == 17


def test_onnx_signatures_small_lmdm_decoder_appearance(tmp_path: Path) -> None:
    lmdm = tm.LMDM(latent_dim=64, ff_size=128, num_layers=2, num_heads=4).eval()
    path = tm.export_onnx("lmdm", tmp_path / "lmdm.onnx", batch_dynamic=True, model=lmdm)
    session = _ort_check(path, lmdm, batch=2)
    assert [i.type for i in session.get_inputs()] == ["tensor(float)"] * 3 + ["tensor(int64)"]
    assert [i.shape for i in session.get_inputs()] == [["batch", 80, 265], ["batch", 265], ["batch", 80, 1103], ["batch"]]
    decoder = tm.SPADEDecoder(max_features=32, block_expansion=8, out_channels=8, spatial=16).eval()
    path = tm.export_onnx("decoder", tmp_path / "decoder.onnx", batch_dynamic=False, model=decoder)
    assert _ort_check(path, decoder, batch=1).get_outputs()[0].shape == [1, 3, 128, 128]
    app = tm.AppearanceFeatureExtractor(block_expansion=8, max_features=64, reshape_channel=4, reshape_depth=16,
                                        num_resblocks=1, image_size=64).eval()
    path = tm.export_onnx("appearance_extractor", tmp_path / "app.onnx", batch_dynamic=False, model=app)
    assert _ort_check(path, app, batch=1).get_outputs()[0].shape == [1, 4, 16, 16, 16]


@pytest.mark.parametrize("opset,mode", [(17, b"bilinear"), (20, b"linear")])
def test_warp_onnx_has_standard_5d_gridsample(tmp_path: Path, opset: int, mode: bytes) -> None:
    torch.manual_seed(0)
    warp = tm.WarpingNetwork(block_expansion=8, max_features=64, reshape_channel=8, spatial=16, dense_motion_params=dict(
        block_expansion=4, max_features=16, num_blocks=3, reshape_depth=8, compress=2)).eval()
    path = tm.export_onnx("warp_network", tmp_path / "warp_network_ori.onnx", batch_dynamic=True, model=warp, opset=opset)
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == opset
    samples = [n for n in graph.graph.node if n.op_type == "GridSample"]
    assert len(samples) == 2 and all(n.domain == "" for n in samples)  # standard ONNX, no GridSample3D
    assert all({a.name: a.s for a in n.attribute if a.type == onnx.AttributeProto.STRING}["mode"] == mode for n in samples)
    session = _ort_check(path, warp, batch=2)
    assert session.get_outputs()[0].shape == ["batch", 32, 16, 16]


def test_spectral_norm_conv_matches_torchs_in_eval() -> None:
    torch.manual_seed(0)
    ours = tm.SpectralNormConv2d(16, 24, 3, padding=1).eval()
    theirs = torch.nn.utils.spectral_norm(torch.nn.Conv2d(16, 24, 3, padding=1)).eval()
    assert sorted(theirs.state_dict()) == sorted(ours.state_dict()) == ["bias", "weight_orig", "weight_u", "weight_v"]
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
        # sigma is the top singular value after the init's power iteration
        sigma = torch.linalg.matrix_norm(ours.weight_orig.flatten(1), ord=2)
        assert abs(float(ours.weight_orig.flatten(1).mv(ours.weight_v).dot(ours.weight_u)) - float(sigma)) < 0.02 * float(sigma)


def test_a_file_without_batchnorm_counters_loads(tmp_path: Path) -> None:
    # BatchNorm's own loader fills num_batches_tracked when a file lacks it; so does ours
    path = tm.published_layout_checkpoint("appearance_extractor", tmp_path / "appearance_extractor.pth")
    state = torch.load(str(path), weights_only=True)
    torch.save(OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")), str(path))
    model = tm.load_published("appearance_extractor", path)
    assert int(model.first.norm.num_batches_tracked) == 0
