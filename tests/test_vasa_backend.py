"""The `vasa` backend on stand-in Ditto models (generated here with the published names and
signatures, random weights): the file set and its checks, the warp loader's two forms, the
config pickle, and the streaming path end to end (render, a live loopback session, emotion
switches, batching, per-stream state)."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.base import AudioWindow, BackendError, Expression, FrameJob
from engines.images import read_image
from engines.media_io import load_audio
from engines.vasa import motion as M
from engines.vasa import standins
from engines.vasa.cfg import ConfigError, load_config, read_pickle
from engines.vasa.files import PARTS, find_layout, vasa_files
from stream_server.avatars import BUNDLED
from tests.media import shared_media

SPEECH = ("audio", "makeittalk_M6_04_16k.wav")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory):
    """Stand-ins under a models directory, served through LIPSYNC_MODELS_DIR while the module runs."""
    root = tmp_path_factory.mktemp("models")
    standins.write_standins(root)
    previous = os.environ.get("LIPSYNC_MODELS_DIR")
    os.environ["LIPSYNC_MODELS_DIR"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("LIPSYNC_MODELS_DIR", None)
    else:
        os.environ["LIPSYNC_MODELS_DIR"] = previous


@pytest.fixture(scope="module")
def backend(models_dir: Path):
    from engines.vasa.backend import VasaBackend

    loaded = VasaBackend()
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return read_image(BUNDLED["astronaut"])


def _speech(seconds: float) -> np.ndarray:
    pcm = load_audio(shared_media(*SPEECH), 16000)
    return pcm[: int(seconds * 16000)]


def _jobs(backend, pcm: np.ndarray, portrait: np.ndarray, avatar, stream: str, frames: range,
          expression=lambda k: Expression()) -> list[FrameJob]:
    """Frame jobs as the scheduler makes them: each slot's audio window, missing audio as zeros."""
    before, after = backend.context_s, backend.lookahead_s
    jobs = []
    for k in frames:
        t = k / 25.0
        start = int(round((t - before) * 16000))
        window = np.zeros(int(round((before + after) * 16000)), np.float32)
        lo, hi = max(start, 0), min(start + len(window), len(pcm))
        if hi > lo:
            window[lo - start: hi - start] = pcm[lo:hi]
        audio = AudioWindow(t, before, after, window, np.zeros((1, 80), np.float32))
        jobs.append(FrameJob(stream, k, t, audio, portrait, avatar, expression(k)))
    return jobs


def test_doctor_lists_the_files_found_and_where_the_missing_ones_are_published(models_dir: Path, tmp_path: Path) -> None:
    found = vasa_files(find_layout(models_dir / "ditto"))
    assert all(entry.found for entry in found.files) and {e.name for e in found.files} == set(PARTS)
    empty = find_layout(tmp_path / "ditto")
    missing = empty.missing()
    assert len(missing) == len(PARTS)
    assert any("ditto_onnx/warp_network_ori.onnx" in line and "huggingface.co/digital-avatar/ditto-talkinghead" in line
               for line in missing)
    assert any("hubert_streaming_fix_kv.onnx" in line for line in missing)  # its published twin is looked for too
    from engines.vasa.backend import VasaBackend

    os.environ["LIPSYNC_MODELS_DIR"] = str(tmp_path)
    try:
        reason = VasaBackend.unavailable_reason()
    finally:
        os.environ["LIPSYNC_MODELS_DIR"] = str(models_dir)
    assert reason and "9 of Ditto's files are missing" in reason and "decoder" in reason and "engines.vasa.standins" in reason
    assert VasaBackend.unavailable_reason() is None


def _mutated(models_dir: Path, tmp_path: Path, part: str, change) -> Path:
    import onnx

    ditto = tmp_path / "ditto"
    shutil.copytree(models_dir / "ditto", ditto)
    path = ditto / PARTS[part][0][0]
    model = onnx.load(str(path))
    change(model.graph, onnx)
    onnx.save(model, str(path))
    return path


def _rename_input(old: str, new: str):
    def change(graph, onnx) -> None:
        for value in graph.input:
            if value.name == old:
                value.name = new
        for node in graph.node:
            node.input[:] = [new if name == old else name for name in node.input]
    return change


def _float16_time(graph, onnx) -> None:
    graph.input[3].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    graph.node.insert(0, onnx.helper.make_node("Cast", ["time_cond"], ["time_cond_i64"], to=onnx.TensorProto.INT64))
    for node in graph.node[1:]:
        node.input[:] = ["time_cond_i64" if name == "time_cond" else name for name in node.input]


def _flat_kp(graph, onnx) -> None:
    del graph.input[0].type.tensor_type.shape.dim[2]
    graph.input[0].type.tensor_type.shape.dim[1].dim_value = 63


def _drop_output(graph, onnx) -> None:
    del graph.output[1]


@pytest.mark.parametrize("part, change, message", [
    ("decoder", _rename_input("feature", "features"), "input 0 is named 'features', expected feature (1|N, 256, 64, 64)"),
    ("lmdm", _float16_time, "input 3 is of type tensor(float16), expected time_cond (1|N) tensor(int64)"),
    ("stitch_network", _flat_kp, "input 0 is of rank 2"),
    ("lmdm", _drop_output, "has 1 outputs ['pred_noise'], expected 2"),
])
def test_a_wrong_model_file_is_named_with_the_tensor_and_what_was_expected(
        models_dir: Path, tmp_path: Path, part: str, change, message: str) -> None:
    from engines.vasa.models import load_models

    path = _mutated(models_dir, tmp_path, part, change)
    with pytest.raises(BackendError) as error:
        load_models(find_layout(tmp_path / "ditto"), 1103, tmp_path / "cache")
    assert str(path) in str(error.value) and message in str(error.value), str(error.value)


def test_the_warp_loads_in_both_gridsample_forms_and_refuses_the_tensorrt_one(
        models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.runtime.session import ModelLoadError, ModelSession
    from engines.vasa import models as vasa_models

    rng = np.random.default_rng(1)
    published = tmp_path / "warp_network_ori.onnx"
    standins.warp_network(published, rng, False, opset=17)
    opset20 = tmp_path / "opset20" / "warp_network_ori.onnx"
    standins.warp_network(opset20, np.random.default_rng(1), False, opset=20)
    feeds = {"feature_3d": rng.standard_normal((1, 32, 16, 64, 64)).astype(np.float32),
             "kp_source": rng.standard_normal((1, 21, 3)).astype(np.float32) * 0.1,
             "kp_driving": rng.standard_normal((1, 21, 3)).astype(np.float32) * 0.1}
    as_published, form = vasa_models._load("warp_network", published, 1103, tmp_path / "cache")
    assert form == "as published"
    expected = as_published.run(feeds)["out"]
    assert np.allclose(vasa_models._load("warp_network", opset20, 1103, tmp_path / "cache")[0].run(feeds)["out"], expected, atol=1e-5)

    real_session = ModelSession

    def refuses_opset17(path: Path, **kwargs):  # as some ONNX Runtime builds refuse the file as shipped
        if Path(path) == published:
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: GridSample: 5-D input needs opset 20")
        return real_session(path, **kwargs)

    monkeypatch.setattr(vasa_models, "ModelSession", refuses_opset17)
    patched, form = vasa_models._load("warp_network", published, 1103, tmp_path / "cache")
    assert form == "patched to opset 20" and patched.path.parent == tmp_path / "cache"
    assert np.allclose(patched.run(feeds)["out"], expected, atol=1e-5)
    monkeypatch.undo()

    trt = tmp_path / "trt" / "warp_network_ori.onnx"
    standins.warp_network(trt, rng, False, custom_op=True)
    with pytest.raises(BackendError, match="TensorRT-only op GridSample3D"):
        vasa_models._load("warp_network", trt, 1103, tmp_path / "cache")
    with pytest.raises(BackendError, match="use warp_network_ori.onnx"):
        vasa_models._load("warp_network", trt.with_name("warp_network.onnx"), 1103, tmp_path / "cache")


def test_the_config_pickle_is_read_with_numpy_only_and_checked(models_dir: Path, tmp_path: Path) -> None:
    config = load_config(models_dir / "ditto" / PARTS["cfg"][0][0])
    assert (config.cond_dim, config.overlap, config.sampling_steps, config.fix_kp_cond_dim) == (1103, 70, 10, (0, 202))
    assert config.ch_info is not None and config.emo.shape == (600, 8) and config.overall_ctrl == {"delta_pitch": 2.0}

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo unpickled",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"audio2motion_cfg": Payload(), "default_kwargs": {}}))
    with pytest.raises(ConfigError, match=r"not a Ditto cfg pickle \(unexpected global (posix|os|nt)\.system\)"):
        read_pickle(evil)
    cfg = read_pickle(models_dir / "ditto" / PARTS["cfg"][0][0])
    cfg["audio2motion_cfg"]["audio_feat_dim"] = 1059  # D's code default, which the flags do not make
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps(cfg))
    with pytest.raises(ConfigError, match="audio_feat_dim is 1059 but the use_\\* flags .* make 1103"):
        load_config(wrong)
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(cfg)[:100])
    with pytest.raises(ConfigError, match="not a readable pickle"):
        load_config(tmp_path / "cut.pkl")


def test_a_config_without_its_reference_character_is_refused_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.vasa.backend import VasaBackend

    standins.write_standins(tmp_path, ch_info=False)
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(tmp_path))
    with pytest.raises(BackendError, match="no ch_info.*not implemented yet"):
        VasaBackend().load()


def test_the_lookahead_is_what_the_lmdm_windowing_needs(backend) -> None:
    assert backend.lookahead_s == pytest.approx(0.485) == M.lookahead_s(75)
    assert M.lookahead_s(70) == pytest.approx(0.885)


def test_streams_run_through_the_whole_path_batched_like_one_at_a_time(backend, portrait: np.ndarray) -> None:
    avatar = backend.prepare_avatar("astronaut", portrait)
    pcm = _speech(3.0)
    frames = range(0, 60)
    together, alone = {}, {}
    a, b = _jobs(backend, pcm, portrait, avatar, "a", frames), _jobs(backend, pcm[::-1].copy(), portrait, avatar, "b", frames)
    for start in range(0, len(frames), 4):  # two streams in each call, as the worker groups them
        out = backend.generate(a[start:start + 4] + b[start:start + 4])
        for job, frame in zip(a[start:start + 4] + b[start:start + 4], out):
            together[(job.stream_id, job.slot)] = frame
    stats = backend.stream_stats("a")
    assert stats["lmdm_windows"] > 10 and stats["late_frames"] == 0, stats
    backend.close_stream("a")
    backend.close_stream("b")
    assert backend.stream_stats("a") == {}  # its state is gone
    # a closed stream is never served again: the same audio as two new streams with the same
    # seeds (a seed is the sum of the id's bytes: "01" has a's, "02" b's), one job at a time
    a_alone = _jobs(backend, pcm, portrait, avatar, "01", frames)
    b_alone = _jobs(backend, pcm[::-1].copy(), portrait, avatar, "02", frames)
    for job in a_alone + b_alone:
        alone[({"01": "a", "02": "b"}[job.stream_id], job.slot)] = backend.generate([job])[0]
    assert all(f.shape == portrait.shape and f.dtype == np.uint8 for f in together.values())
    worst = max(int(np.abs(together[k].astype(int) - alone[k].astype(int)).max()) for k in together)
    assert worst <= 1, worst
    # the face moves with the audio; outside the pasted crop the portrait is untouched
    changed = np.abs(together[("a", 59)].astype(int) - portrait.astype(int)).sum(axis=2) > 0
    assert changed.any() and not changed[:, :40].any()
    assert not np.array_equal(together[("a", 30)], together[("b", 30)])
    backend.close_stream("a")
    backend.close_stream("b")


def test_an_emotion_switch_changes_the_motion_from_then_on_only(backend, portrait: np.ndarray) -> None:
    avatar = backend.prepare_avatar("astronaut", portrait)
    pcm = _speech(4.0)
    frames = range(0, 90)
    motions = {}
    # two streams with the same seed (the seed is the sum of the id's bytes: an anagram has it;
    # a closed stream's id is never served again)
    for name, stream, switch in (("steady", "emotion", 10**6), ("switched", "noitome", 45)):
        jobs = _jobs(backend, pcm, portrait, avatar, stream, frames,
                     lambda k, s=switch: Expression(emotion="happy" if k >= s else "neutral"))
        vectors = []
        for job in jobs:
            backend.generate([job])
            vectors.append(backend._streams[stream].last_vector.copy())
        motions[name] = np.stack(vectors)
        backend.close_stream(stream)
    same = [np.allclose(a, b) for a, b in zip(motions["steady"], motions["switched"])]
    assert all(same[:45]) and not all(same[45:])
    # the change comes in over the fused window, without a jump larger than the motion's own
    step = np.abs(np.diff(motions["switched"], axis=0)).max(axis=1)
    assert step[44:60].max() <= 1.5 * step[:44].max() + 1e-6


def test_the_camera_avatar_animates_the_first_face_and_waits_for_one(backend, portrait: np.ndarray) -> None:
    avatar = backend.prepare_avatar("camera", None)
    blank = np.zeros_like(portrait)
    jobs = _jobs(backend, _speech(1.0), portrait, avatar, "cam", range(0, 12))
    jobs[0].base_frame = blank
    out = backend.generate(jobs[:1])
    assert out[0] is blank  # no face yet: the frame goes out as it came
    out = backend.generate(jobs[1:])
    assert all(f.shape == portrait.shape for f in out) and not np.array_equal(out[-1], portrait)
    backend.close_stream("cam")


def test_render_with_vasa_writes_every_frame(models_dir: Path, tmp_path: Path) -> None:
    from stream_server.render import render

    result = render("astronaut", shared_media(*SPEECH), tmp_path / "out.mp4", "vasa", progress=False,
                    emotion="surprise", emotion_intensity=0.5)
    assert result.counts["generated"] == result.frames > 100 and result.counts["failed"] == 0
    assert result.backend_stats["lmdm_windows"] >= result.frames // 5


async def test_a_live_session_on_vasa_holds_25_fps(models_dir: Path, start_server) -> None:
    from benchmarks.peer import output_fps, stream_clip

    live = await start_server()
    received = await stream_clip(live.url, shared_media("video", "pcavs_vox2_00086.mp4"), seconds=5.0,
                                 options={"backend": "vasa", "avatar": "astronaut", "fps": 25, "width": 256,
                                          "height": 256, "emotion": "happy"})
    assert received.answer["options"]["backend"] == "vasa" and received.answer["options"]["emotion"] == "happy"
    fps = output_fps(received)
    assert 23.0 <= fps <= 27.0, f"output video at {fps:.1f} fps"


def test_hubert_gets_a_tensorrt_profile_for_its_length_not_a_batch(models_dir: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from engines.runtime.session import _profile_shapes, tensorrt_options
    from engines.vasa.models import PROFILES

    hubert = models_dir / "ditto" / PARTS["hubert"][0][0]
    # the shared runtime's default reads a dynamic dimension as a batch: 1..8 samples of audio
    assert _profile_shapes(ort, hubert, 8) == {"input_values": ((1, 1), (1, 8))}
    profile = {**_profile_shapes(ort, hubert, 8), **PROFILES["hubert"]}  # what ModelSession builds
    options, _ = tensorrt_options(hubert, False, profile, "NVIDIA H200", "10.9", tmp_path)
    assert options["trt_profile_min_shapes"] == options["trt_profile_max_shapes"] == "input_values:1x6480"
