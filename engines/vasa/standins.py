"""Stand-in Ditto models: every published file name, input/output name, order, shape and type
(spec §2.1, §8.1), with tiny random weights, laid out as Hugging Face publishes the set.

They let the `vasa` backend run end to end without the 2.7 GB of real weights: tests, CI, and a
user trying the streaming path (``python -m engines.vasa.standins DIR``, then
``LIPSYNC_MODELS_DIR=DIR serve --backend vasa``). Their frames show a grey patch (a random
decoder) pasted over the face, shifting a little with the motion: not a talking head. Needs the
``onnx`` package (the ``test`` and ``export`` extras).

    python -m engines.vasa.standins DIR [--batch] [--warp-opset 17|20]
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

from engines.vasa.cfg import condition_dim
from engines.vasa.files import PARTS
from engines.vasa.motion import alphas_cumprod

OPSET = 17


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:  # pragma: no cover - the test extra has it
        raise SystemExit("stand-in models need the onnx package: pip install 'onnx>=1.16,<1.19'") from exc
    return onnx, TensorProto, helper, numpy_helper


class _Graph:
    """A small graph builder: initializers from numpy, nodes by op name."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.onnx, self.TP, self.helper, self.numpy_helper = _onnx()
        self.rng = rng
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def const(self, array: np.ndarray, name: str | None = None) -> str:
        name = name or self._name("c")
        self.inits.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, *shape: int, scale: float = 0.05) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self._name(op.lower())
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def save(self, path: Path, inputs: list, outputs: list, opset: int = OPSET) -> None:
        h = self.helper
        graph = h.make_graph(self.nodes, path.stem, inputs, outputs, self.inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="lipsync-stream standins")
        model.ir_version = 8 if opset <= 17 else 9
        path.parent.mkdir(parents=True, exist_ok=True)
        self.onnx.save(model, str(path))

    def tensor(self, name: str, shape: tuple, dtype=None):
        return self.helper.make_tensor_value_info(name, dtype or self.TP.FLOAT, list(shape))


def _b(batch: bool) -> int | str:
    return "batch" if batch else 1


def appearance_extractor(path: Path, rng: np.random.Generator, batch: bool) -> None:
    g = _Graph(rng)
    pooled = g.op("AveragePool", "image", kernel_shape=[4, 4], strides=[4, 4])  # (B,3,64,64)
    feat = g.op("Conv", pooled, g.weight(512, 3, 1, 1, scale=0.3), g.weight(512, scale=0.1))
    g.op("Reshape", feat, g.const(np.array([-1, 32, 16, 64, 64], np.int64)), out="pred")
    g.save(path, [g.tensor("image", (_b(batch), 3, 256, 256))], [g.tensor("pred", (_b(batch), 32, 16, 64, 64))])


def motion_extractor(path: Path, rng: np.random.Generator, batch: bool) -> None:
    g = _Graph(rng)
    flat = g.op("Flatten", g.op("GlobalAveragePool", "image"))  # (B, 3)
    heads = {"pitch": 66, "yaw": 66, "roll": 66, "t": 3, "exp": 63, "scale": 1, "kp": 63}
    bias = {
        # pose logits peaking near bin 32 (about 0 degrees), a face-sized keypoint cloud
        "pitch": -0.02 * (np.arange(66) - 32.5) ** 2, "yaw": -0.02 * (np.arange(66) - 32.5) ** 2,
        "roll": -0.02 * (np.arange(66) - 32.5) ** 2, "t": np.zeros(3), "exp": np.zeros(63),
        "scale": np.array([1.5]), "kp": rng.uniform(-0.4, 0.4, 63),
    }
    outputs = []
    for name, width in heads.items():
        g.op("Gemm", flat, g.weight(3, width, scale=0.01), g.const(bias[name].astype(np.float32)), out=name)
        outputs.append(g.tensor(name, (_b(batch), width)))
    g.save(path, [g.tensor("image", (_b(batch), 3, 256, 256))], outputs)


def stitch_network(path: Path, rng: np.random.Generator, batch: bool) -> None:
    g = _Graph(rng)
    two = g.op("Concat", g.op("Flatten", "kp_source"), g.op("Flatten", "kp_driving"), axis=1)  # (B,126)
    delta = g.op("Gemm", two, g.weight(126, 65, scale=1e-3), g.const(np.zeros(65, np.float32)))
    shape = g.const(np.array([-1, 21, 3], np.int64))
    per_kp = g.op("Reshape", g.op("Slice", delta, g.const(np.array([0], np.int64)), g.const(np.array([63], np.int64)),
                                  g.const(np.array([1], np.int64))), shape)
    xy = g.op("Slice", delta, g.const(np.array([63], np.int64)), g.const(np.array([65], np.int64)),
              g.const(np.array([1], np.int64)))
    zero = g.op("Mul", g.op("Slice", xy, g.const(np.array([0], np.int64)), g.const(np.array([1], np.int64)),
                            g.const(np.array([1], np.int64))), g.const(np.zeros(1, np.float32)))
    shift = g.op("Unsqueeze", g.op("Concat", xy, zero, axis=1), g.const(np.array([1], np.int64)))  # (B,1,3)
    g.op("Add", g.op("Add", "kp_driving", per_kp), shift, out="out")
    kp = (_b(batch), 21, 3)
    g.save(path, [g.tensor("kp_source", kp), g.tensor("kp_driving", kp)], [g.tensor("out", kp)])


def warp_network(path: Path, rng: np.random.Generator, batch: bool, opset: int = OPSET,
                 custom_op: bool = False) -> None:
    """A rank-5 GridSample of the feature volume on an identity grid shifted by the mean keypoint
    motion; ``custom_op`` writes the TensorRT-only ``GridSample3D`` form instead."""
    g = _Graph(rng)
    axes = [np.linspace(-1 + 1 / n, 1 - 1 / n, n, dtype=np.float32) for n in (16, 64, 64)]
    d, h, w = np.meshgrid(*axes, indexing="ij")
    grid = g.const(np.stack([w, h, d], axis=-1)[None])  # (1,16,64,64,3): x, y, z
    motion = g.op("Sub", "kp_driving", "kp_source")
    shift = (g.op("ReduceMean", motion, g.const(np.array([1], np.int64)), keepdims=1) if opset >= 18
             else g.op("ReduceMean", motion, axes=[1], keepdims=1))  # (B,1,3); axes became an input at 18
    shift = g.op("Unsqueeze", shift, g.const(np.array([1, 2], np.int64)))  # (B,1,1,1,3)
    grid = g.op("Add", grid, g.op("Mul", shift, g.const(np.array([0.5], np.float32))))
    mode = "linear" if opset >= 20 else "bilinear"
    # 32 -> 4 channels first (as the dense-motion network compresses): the sampling is the cost
    volume = g.op("Conv", "feature_3d", g.weight(4, 32, 1, 1, 1, scale=0.2))
    if custom_op:
        g.nodes.append(g.helper.make_node("GridSample3D", [volume, grid], ["sampled"], domain="custom"))
        sampled = "sampled"
    else:
        sampled = g.op("GridSample", volume, grid, mode=mode, padding_mode="zeros", align_corners=0)
    flat = g.op("Reshape", sampled, g.const(np.array([-1, 64, 64, 64], np.int64)))
    g.op("Conv", flat, g.weight(256, 64, 1, 1, scale=0.1), out="out")
    kp = (_b(batch), 21, 3)
    g.save(path, [g.tensor("feature_3d", (_b(batch), 32, 16, 64, 64)), g.tensor("kp_source", kp), g.tensor("kp_driving", kp)],
           [g.tensor("out", (_b(batch), 256, 64, 64))], opset=opset)
    if custom_op:  # the domain of the custom op must be imported too
        onnx = g.onnx
        model = onnx.load(str(path))
        model.opset_import.append(onnx.helper.make_opsetid("custom", 1))
        onnx.save(model, str(path))


def decoder(path: Path, rng: np.random.Generator, batch: bool) -> None:
    g = _Graph(rng)
    up = g.op("DepthToSpace", g.op("Conv", "feature", g.weight(192, 256, 1, 1, scale=0.05)), blocksize=8)
    g.op("Sigmoid", up, out="output")
    g.save(path, [g.tensor("feature", (_b(batch), 256, 64, 64))], [g.tensor("output", (_b(batch), 3, 512, 512))])


def lmdm(path: Path, rng: np.random.Generator, batch: bool, cond_dim: int) -> None:
    """x_start = tanh(cond A + x B + cond_frame c) / 10; pred_noise by the published formula."""
    g = _Graph(rng)
    mixed = g.op("Add", g.op("MatMul", "cond", g.weight(cond_dim, 265, scale=0.02)),
                 g.op("MatMul", "x", g.weight(265, 265, scale=0.02)))
    frame = g.op("Unsqueeze", g.op("MatMul", "cond_frame", g.weight(265, 265, scale=0.02)), g.const(np.array([1], np.int64)))
    g.op("Mul", g.op("Tanh", g.op("Add", mixed, frame)), g.const(np.array([0.1], np.float32)), out="x_start")
    abar = alphas_cumprod().astype(np.float64)
    at_t = lambda table: g.op("Unsqueeze", g.op("Gather", g.const(table.astype(np.float32)), "time_cond"),  # noqa: E731
                              g.const(np.array([1, 2], np.int64)))  # (B,1,1)
    g.op("Sub", g.op("Mul", "x", at_t(1 / np.sqrt(1 - abar))), g.op("Mul", "x_start", at_t(1 / np.sqrt(1 / abar - 1))),
         out="pred_noise")
    m = (_b(batch), 80, 265)
    g.save(path, [g.tensor("x", m), g.tensor("cond_frame", (_b(batch), 265)), g.tensor("cond", (_b(batch), 80, cond_dim)),
                  g.tensor("time_cond", (_b(batch),), g.TP.INT64)], [g.tensor("pred_noise", m), g.tensor("x_start", m)])


def hubert(path: Path, rng: np.random.Generator) -> None:
    """A conv with HuBERT's receptive field (400 samples, hop 320): T(N) = floor((N-400)/320)+1."""
    g = _Graph(rng)
    conv = g.op("Conv", g.op("Unsqueeze", "input_values", g.const(np.array([1], np.int64))),
                g.weight(8, 1, 400, scale=0.05), strides=[320])  # (1,8,T)
    frames = g.op("Squeeze", g.op("Transpose", conv, perm=[0, 2, 1]), g.const(np.array([0], np.int64)))  # (T,8)
    g.op("Tanh", g.op("MatMul", frames, g.weight(8, 1024, scale=0.5)), out="encoding_out")
    g.save(path, [g.tensor("input_values", (1, "n"))], [g.tensor("encoding_out", ("t", 1024))])


def landmark203(path: Path, rng: np.random.Generator, batch: bool) -> None:
    """Points clustered mid-crop (203 points spread over the face's middle half)."""
    g = _Graph(rng)
    flat = g.op("Flatten", g.op("GlobalAveragePool", "input"))
    spread = np.concatenate([rng.uniform(-2.0, 2.0, 406)]).astype(np.float32)
    raw = g.op("Gemm", flat, g.weight(3, 406, scale=0.01), g.const(spread))
    g.op("Add", g.op("Mul", g.op("Sigmoid", raw), g.const(np.array([0.3], np.float32))),
         g.const(np.array([0.35], np.float32)), out="landmarks")
    g.save(path, [g.tensor("input", (_b(batch), 3, 224, 224))], [g.tensor("landmarks", (_b(batch), 406))])


def config(path: Path, rng: np.random.Generator, ch_info: bool = True, overlap: int = 70) -> None:
    """The online config pickle's keys (spec §1.2), numpy contents only."""
    flags = {"use_emo": True, "use_sc": True, "use_eye_open": True, "use_eye_ball": True}
    bins = np.zeros((1, 66), np.float32)
    bins[0, 32] = 8.0
    source = {"pitch": bins.copy(), "yaw": bins.copy(), "roll": bins.copy(), "t": np.zeros((1, 3), np.float32),
              "exp": np.zeros((1, 63), np.float32), "scale": np.full((1, 1), 1.5, np.float32),
              "kp": rng.uniform(-0.4, 0.4, (1, 63)).astype(np.float32)}
    kwargs = {
        "overlap_v2": overlap, "sampling_timesteps": 10, "fix_kp_cond": 1, "fix_kp_cond_dim": [0, 202], "smo_k_d": 3,
        "emo": np.tile(np.eye(8, dtype=np.float32)[4], (600, 1)),
        "delta_eye_arr": (rng.standard_normal((15, 63)) * 0.01).astype(np.float32),
        "v_min_max_for_clip": np.stack([np.full(265, -5.0), np.full(265, 5.0), np.zeros(265), np.ones(265)]).astype(np.float32),
        "overall_ctrl_info": {"delta_pitch": 2}, "crop_scale": 2.3, "crop_vy_ratio": -0.125, "crop_flag_do_rot": True,
        "drive_eye": True, "delta_eye_open_n": 0, "relative_d": True, "flag_stitching": True,
    }
    if ch_info:
        kwargs["ch_info"] = {"x_s_info_lst": [source], "sc": source["kp"].copy(),
                             "eye_open_lst": [np.full((1, 2), 0.3, np.float32)], "eye_ball_lst": [np.zeros((1, 6), np.float32)]}
    cfg = {
        "base_cfg": {"hubert_cfg": {"model_path": "hubert_fp32.engine", "device": "cuda"}},
        "audio2motion_cfg": {"model_path": "lmdm_v0.4_hubert_fp32.engine", "device": "cuda", "motion_feat_dim": 265,
                             "audio_feat_dim": condition_dim(**flags), "seq_frames": 80, **flags, "w2f_type": "hubert"},
        "default_kwargs": kwargs,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(cfg, protocol=4))


def write_standins(root: Path, batch: bool = False, warp_opset: int = OPSET, seed: int = 0,
                   ch_info: bool = True) -> Path:
    """Every file of the online set under ``root/ditto`` (HF layout); returns that folder."""
    rng = np.random.default_rng(seed)
    ditto = Path(root) / "ditto"
    at = {part: ditto / relative[0] for part, (relative, _) in PARTS.items()}
    config(at["cfg"], rng, ch_info)
    cond_dim = condition_dim(True, True, True, True)
    hubert(at["hubert"], rng)
    lmdm(at["lmdm"], rng, batch, cond_dim)
    appearance_extractor(at["appearance_extractor"], rng, batch)
    motion_extractor(at["motion_extractor"], rng, batch)
    landmark203(at["landmark203"], rng, batch)
    stitch_network(at["stitch_network"], rng, batch)
    warp_network(at["warp_network"], rng, batch, warp_opset)
    decoder(at["decoder"], rng, batch)
    return ditto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="the models directory to write (files go under DIR/ditto)")
    parser.add_argument("--batch", action="store_true", help="graphs with a symbolic batch dimension")
    parser.add_argument("--warp-opset", type=int, choices=(17, 20), default=OPSET)
    args = parser.parse_args()
    ditto = write_standins(args.dir, args.batch, args.warp_opset)
    print(f"wrote stand-in Ditto models in {ditto}; try: LIPSYNC_MODELS_DIR={args.dir} python -m stream_server serve --backend vasa")


if __name__ == "__main__":
    main()
