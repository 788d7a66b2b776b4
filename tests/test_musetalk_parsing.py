"""MuseTalk's optional BiSeNet face-parsing mask: the architecture against the checkpoint's keys,
loading and clear errors, export (labels from ONNX Runtime against PyTorch), the mask rule, and
the backend and ``render`` with the parser present. The checkpoint here has random weights, so
its parse means nothing: these test the plumbing, not how good the mask looks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli_runs import cli, render_musetalk_second
from engines.musetalk.parsing import MEAN, SIZE, STD, crop_padded, parse_box, parse_input, parsing_mask

PARSE_FILE = Path("face-parse-bisent") / "79999_iter.pth"



# ----------------------------------------------------------------------------- the mask rule (no PyTorch)


def test_the_parsed_square_and_its_input() -> None:
    box = (100, 120, 200, 240)  # 100 x 120
    assert parse_box(box) == (60, 90, 240, 270)  # centre (150, 180), half side 120 // 2 * 1.5
    frame = np.zeros((250, 300, 3), np.uint8)
    frame[:] = (MEAN * 255).round().astype(np.uint8)  # normalises to about 0
    square = crop_padded(frame, parse_box(box))
    assert square.shape == (180, 180, 3) and (square[:160] == frame[0, 0]).all() and (square[160:] == 0).all()
    x = parse_input(frame, box)
    assert x.shape == (1, 3, SIZE, SIZE) and x.dtype == np.float32
    assert np.abs(x[0, :, :400]).max() < 0.02  # inside the picture
    np.testing.assert_allclose(x[0, :, -1, 0], -MEAN / STD, atol=1e-5)  # black below the picture


def test_mask_keeps_skin_and_lips_in_the_lower_half_of_the_box_feathered() -> None:
    box = (100, 120, 200, 240)  # square (60, 90)-(240, 270): side 180, its middle row is y = 180
    skin = np.ones((SIZE, SIZE), np.uint8)
    mask = parsing_mask(skin, box)
    assert mask.shape == (120, 100) and mask.dtype == np.float32
    kernel = int(0.1 * 180 // 2 * 2) + 1  # 19
    middle = 180 - 120  # the square's middle row, in box rows
    assert (mask[: middle - kernel] == 0).all()  # the upper face is never replaced
    assert mask[middle + kernel : 120 - kernel, kernel : 100 - kernel].min() > 0.99
    assert 0.2 < mask[-1, 50] < 0.8 and 0.2 < mask[100, 0] < 0.8  # fades out at the box's edges
    for label in (0, 10, 17):  # background, nose, hair: never replaced
        assert parsing_mask(np.full((SIZE, SIZE), label, np.uint8), box).max() == 0
    lips = np.zeros((SIZE, SIZE), np.uint8)
    lips[384:, :256] = 12  # upper lip class, in the square's lower left quarter only
    mask = parsing_mask(lips, box)
    assert mask[112, 10] > 0.9 and mask[112, 90] == 0 and mask[30].max() == 0


# ----------------------------------------------------------------------------- PyTorch side

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from engines.musetalk.bisenet import (  # noqa: E402
    BATCHNORM_COUNTERS, PARAMETERS, STATE_KEYS, STATE_VALUES, BiSeNet, FaceParseLabels,
)
from engines.musetalk.export import FACE_PARSE, LABEL_AGREEMENT  # noqa: E402
from engines.musetalk.tiny import random_face_parse_state, write_tiny_set  # noqa: E402
from engines.musetalk.weights import WeightsError, find_layout, load_face_parse  # noqa: E402


def test_architecture_has_the_checkpoints_keys_and_shapes() -> None:
    """79999_iter.pth's layout (the counts were checked once against the original code)."""
    net = BiSeNet()
    state = net.state_dict()
    assert len(state) == STATE_KEYS == 191
    assert sum(k.endswith(".num_batches_tracked") for k in state) == BATCHNORM_COUNTERS == 31
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS == 13_300_416
    assert sum(v.numel() for v in state.values()) == STATE_VALUES == 13_313_119
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert {k.split(".")[0] for k in shapes} == {"cp", "ffm", "conv_out", "conv_out16", "conv_out32"}  # no spatial path
    assert shapes["cp.resnet.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["cp.resnet.layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["cp.resnet.layer4.1.bn2.running_var"] == (512,)
    assert shapes["cp.arm32.conv.conv.weight"] == (128, 512, 3, 3) and shapes["cp.arm16.conv_atten.weight"] == (128, 128, 1, 1)
    assert shapes["cp.conv_avg.conv.weight"] == (128, 512, 1, 1) and shapes["cp.conv_head16.bn.bias"] == (128,)
    assert shapes["ffm.convblk.conv.weight"] == (256, 256, 1, 1) and shapes["ffm.conv1.weight"] == (64, 256, 1, 1)
    assert shapes["conv_out.conv_out.weight"] == (19, 256, 1, 1) and shapes["conv_out16.conv_out.weight"] == (19, 64, 1, 1)
    assert shapes["conv_out32.conv.conv.weight"] == (64, 128, 3, 3)
    assert not any(k.startswith("cp.resnet.fc") for k in shapes)


@pytest.fixture(scope="module")
def parse_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny set with a random-weight BiSeNet, exported through the command line once."""
    models = write_tiny_set(tmp_path_factory.mktemp("models"), face_parse=True)
    result = cli("export", "musetalk", env={"LIPSYNC_MODELS_DIR": str(models)})
    assert result.returncode == 0, result.stderr[-3000:]
    return models, result.stdout


def _parser_only(parse_set: tuple[Path, str], tmp_path: Path) -> Path:
    """A models directory holding only a copy of the parser's checkpoint (all load_face_parse reads)."""
    root = tmp_path / "models"
    (root / PARSE_FILE).parent.mkdir(parents=True)
    shutil.copy(parse_set[0] / PARSE_FILE, root / PARSE_FILE)
    return root


def test_the_checkpoint_loads_through_the_layout(parse_set: tuple[Path, str], tmp_path: Path) -> None:
    models, _ = parse_set
    layout = find_layout(models)
    assert layout.face_parse == models / PARSE_FILE and layout.missing() == []
    net = load_face_parse(layout)
    expected = random_face_parse_state()
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    # a checkpoint without BatchNorm's num_batches_tracked counters (older PyTorch) loads too
    root = _parser_only(parse_set, tmp_path)
    torch.save({k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}, root / PARSE_FILE)
    torch.testing.assert_close(load_face_parse(find_layout(root)).state_dict()["conv_out.conv_out.weight"],
                               expected["conv_out.conv_out.weight"])
    with pytest.raises(WeightsError, match="face-parse-bisent: not found"):
        load_face_parse(find_layout(tmp_path / "empty"))


def test_a_broken_checkpoint_names_the_file(parse_set: tuple[Path, str], tmp_path: Path) -> None:
    root = _parser_only(parse_set, tmp_path)
    path = root / PARSE_FILE
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(WeightsError, match=r"79999_iter.pth: cannot be read as a PyTorch checkpoint .*truncated or corrupt"):
        load_face_parse(find_layout(root))
    state = random_face_parse_state()
    state["cp.spatial.weight"] = state.pop("cp.arm16.conv_atten.weight")
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"79999_iter.pth: does not match BiSeNet face parsing .*1 missing keys "
                                           r"\(e.g. cp.arm16.conv_atten.weight\); 1 unexpected keys \(e.g. cp.spatial.weight\)"):
        load_face_parse(find_layout(root))
    state = random_face_parse_state()
    state["conv_out.conv_out.weight"] = state["conv_out.conv_out.weight"][:18]  # 18 classes
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"79999_iter.pth: .*1 tensors of the wrong shape .*\(18, 256, 1, 1\) in the file, \(19, 256, 1, 1\) expected"):
        load_face_parse(find_layout(root))


def test_export_fails_on_a_broken_parser_before_the_long_exports(parse_set: tuple[Path, str], tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(parse_set[0], root, ignore=shutil.ignore_patterns("musetalk-onnx"))
    (root / PARSE_FILE).write_bytes(b"not a checkpoint")
    result = cli("export", "musetalk", "--models-dir", str(root), env={})
    assert result.returncode == 2 and f"{root / PARSE_FILE}: cannot be read" in result.stderr
    assert not (root / "musetalk-onnx").exists()


def test_exported_labels_agree_with_pytorch(parse_set: tuple[Path, str]) -> None:
    from engines.images import read_image
    from engines.runtime.session import ModelSession
    from stream_server.avatars import BUNDLED

    models, stdout = parse_set
    report = json.loads((models / "musetalk-onnx" / "export.json").read_text())
    assert report["models"]["face_parse"]["file"] == FACE_PARSE
    assert report["models"]["face_parse"]["label_agreement"] >= LABEL_AGREEMENT
    assert "face_parse: " in stdout and "labels equal to PyTorch's on" in stdout
    session = ModelSession(models / "musetalk-onnx" / FACE_PARSE, provider="cpu")
    assert [(s.shape, s.dtype) for s in session.inputs] == [(("batch", 3, 512, 512), "tensor(float)")]
    assert [(s.shape, s.dtype) for s in session.outputs] == [(("batch", 512, 512), "tensor(uint8)")]
    # on a real picture's input, as the backend feeds it
    image = read_image(BUNDLED["astronaut"])
    x = parse_input(image, (image.shape[1] // 4, image.shape[0] // 4, image.shape[1] * 3 // 4, image.shape[0] * 3 // 4))
    got = session.run({"image": x})["labels"]
    with torch.no_grad():
        expected = FaceParseLabels(load_face_parse(find_layout(models)))(torch.from_numpy(x)).numpy()
    agreement = float(np.mean(got == expected))
    print(f"face_parse labels, ONNX Runtime vs PyTorch: {agreement:.5%} of pixels agree "
          f"(export check: {report['models']['face_parse']['label_agreement']:.5%})")
    assert agreement >= LABEL_AGREEMENT
    assert len(np.unique(expected)) > 1  # a parse, not one class everywhere


def test_portraits_use_the_bisenet_mask_and_the_camera_the_facemesh_one(
    parse_set: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines.base import AudioWindow, FrameJob
    from engines.face import FaceLandmarker
    from engines.musetalk.face import face_crop
    from engines.registry import BackendRegistry
    from engines.images import fit_cover, read_image
    from stream_server.avatars import BUNDLED

    models, _ = parse_set
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(models))
    backend = BackendRegistry(BUNDLED["astronaut"]).get("musetalk")
    assert backend.parses_faces
    portrait = np.ascontiguousarray(fit_cover(read_image(BUNDLED["astronaut"]), 256, 256))
    avatar = backend.prepare_avatar("astronaut", portrait)
    prepared = avatar.data["musetalk"]
    assert prepared.mask == "bisenet" and avatar.notice == ""
    with FaceLandmarker(max_faces=4) as landmarker:  # as the backend finds it
        facemesh = face_crop(portrait, landmarker.faces(portrait)[0].landmarks)
    assert facemesh is not None and facemesh.box == prepared.face.box
    session = backend._sessions["face_parse"]
    labels = session.run({"image": parse_input(portrait, facemesh.box)})["labels"][0]
    np.testing.assert_array_equal(prepared.face.mask, parsing_mask(labels, facemesh.box))  # once, at prepare time
    assert np.abs(prepared.face.mask - facemesh.mask).max() > 0.5  # not the FaceMesh mask

    speech = AudioWindow(1.0, 0.8, 0.2, (np.sin(np.arange(16000) * 0.05) * 0.3).astype(np.float32), np.zeros((100, 80), np.float32))
    frame = backend.generate([FrameJob("p", 0, 0.0, speech, portrait, avatar)])[0]
    changed = np.abs(frame.astype(int) - portrait).max(axis=2) > 0
    x0, y0, x1, y1 = prepared.face.box
    assert changed.any() and not changed[:y0].any() and not changed[y1:].any()
    assert not changed[y0:y1, x0:x1][prepared.face.mask == 0].any()  # only where the BiSeNet mask is
    assert backend.stream_stats("p") == {"face_lost": 0, "mask_bisenet": 1, "mask_facemesh": 0}

    camera = backend.prepare_avatar("camera", None)
    backend.generate([FrameJob("cam", 0, 0.0, speech, portrait, camera)])
    assert backend.stream_stats("cam") == {"face_lost": 0, "mask_bisenet": 0, "mask_facemesh": 1}

    # a parse with almost nothing of the mask's classes falls back to FaceMesh and says so
    monkeypatch.setattr(backend, "_run", lambda name, value, run=backend._run: (
        np.zeros((1, SIZE, SIZE), np.uint8) if name == "face_parse" else run(name, value)))
    fallback = backend.prepare_avatar("astronaut", portrait)
    assert fallback.data["musetalk"].mask == "facemesh" and "FaceMesh mask instead" in fallback.notice
    np.testing.assert_array_equal(fallback.data["musetalk"].face.mask, facemesh.mask)


def test_render_with_the_parser_present(parse_set: tuple[Path, str], tmp_path: Path) -> None:
    models, _ = parse_set
    summary, out = render_musetalk_second(models, tmp_path)
    assert summary["frames"] == 25 and summary["counts"]["generated"] == 25
    assert summary["backend_stats"] == {"face_lost": 0, "mask_bisenet": 25, "mask_facemesh": 0}
    assert out.stat().st_size > 0


def test_doctor_reports_the_parser(parse_set: tuple[Path, str], tmp_path: Path) -> None:
    models, _ = parse_set
    found = cli("doctor", env={"LIPSYNC_MODELS_DIR": str(models)})
    assert f"face-parse-bisent (optional): {models / PARSE_FILE}, exported: portraits use the BiSeNet mask" in found.stdout
    backends = json.loads(cli("doctor", "--json", env={"LIPSYNC_MODELS_DIR": str(models)}).stdout)["backends"]
    files = next(b for b in backends if b["name"] == "musetalk")["files"]["files"]
    assert next(f for f in files if f["name"] == "face-parse-bisent")["state"] == "exported: portraits use the BiSeNet mask"
