"""The published input/output signature of each Ditto ONNX model, checked at load (spec §2.1).

Ditto's own ONNX path reads outputs by position and its TensorRT path by name, so both the
names and the order are checked, with every rank, fixed dimension and element type. Dimension
0 may be 1 or symbolic (whether the real graphs take a batch is VERIFY): a model whose inputs
all have a symbolic dimension 0 is run batched, any other one frame at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from engines.base import BackendError
from engines.runtime.session import TensorSpec

F32, I64 = "tensor(float)", "tensor(int64)"
ANY = None  # a dimension whose size the published graph leaves open (HuBERT's lengths)
BATCH = "batch"  # dimension 0: 1 or symbolic


@dataclass(frozen=True)
class Expected:
    name: str
    shape: tuple[int | str | None, ...]  # BATCH at 0, ANY: any size, an int: that size
    dtype: str = F32

    def describe(self) -> str:
        dims = ", ".join("1|N" if d == BATCH else "?" if d is ANY else str(d) for d in self.shape)
        return f"{self.name} ({dims}) {self.dtype}"


def published(cond_dim: int) -> dict[str, tuple[tuple[Expected, ...], tuple[tuple[Expected, ...], ...]]]:
    """part -> (inputs, accepted output lists), the LMDM's condition width from the config."""
    image = Expected("image", (BATCH, 3, 256, 256))
    kp_s, kp_d = Expected("kp_source", (BATCH, 21, 3)), Expected("kp_driving", (BATCH, 21, 3))
    motion = (BATCH, 80, 265)
    return {
        "appearance_extractor": ((image,), ((Expected("pred", (BATCH, 32, 16, 64, 64)),),)),
        "motion_extractor": ((image,), ((
            Expected("pitch", (BATCH, 66)), Expected("yaw", (BATCH, 66)), Expected("roll", (BATCH, 66)),
            Expected("t", (BATCH, 3)), Expected("exp", (BATCH, 63)), Expected("scale", (BATCH, 1)),
            Expected("kp", (BATCH, 63))),)),
        "stitch_network": ((kp_s, kp_d), ((Expected("out", (BATCH, 21, 3)),),)),
        "warp_network": ((Expected("feature_3d", (BATCH, 32, 16, 64, 64)), kp_s, kp_d),
                         ((Expected("out", (BATCH, 256, 64, 64)),),)),
        "decoder": ((Expected("feature", (BATCH, 256, 64, 64)),), ((Expected("output", (BATCH, 3, 512, 512)),),)),
        "lmdm": ((Expected("x", motion), Expected("cond_frame", (BATCH, 265)), Expected("cond", (BATCH, 80, cond_dim)),
                  Expected("time_cond", (BATCH,), I64)),
                 ((Expected("pred_noise", motion), Expected("x_start", motion)),)),
        # time-major rank 2 as D slices it; (1, T, 1024) is accepted too (spec §2.1)
        "hubert": ((Expected("input_values", (1, ANY)),),
                   ((Expected("encoding_out", (ANY, 1024)),), (Expected("encoding_out", (1, ANY, 1024)),))),
        "landmark203": ((Expected("input", (BATCH, 3, 224, 224)),), ((Expected("landmarks", (BATCH, 406)),),)),
    }


def _mismatch(expected: Expected, actual: TensorSpec) -> str | None:
    if actual.name != expected.name:
        return f"named {actual.name!r}"
    if actual.dtype != expected.dtype:
        return f"of type {actual.dtype}"
    if len(actual.shape) != len(expected.shape):
        return f"of rank {len(actual.shape)} {tuple(actual.shape)}"
    for want, got in zip(expected.shape, actual.shape):
        if want is ANY or not (isinstance(got, int) and got > 0):
            continue  # open in the spec, or symbolic in the file: the first run proves it
        if want == BATCH and got != 1:
            return f"of shape {tuple(actual.shape)} (dimension 0 is {got})"
        if want != BATCH and got != want:
            return f"of shape {tuple(actual.shape)}"
    return None


def _compare(path: Path, kind: str, expected: Sequence[Expected], actual: Sequence[TensorSpec]) -> str | None:
    names = [a.name for a in actual]
    if len(actual) != len(expected):
        return (f"has {len(actual)} {kind}s {names}, expected {len(expected)}: "
                f"{', '.join(e.describe() for e in expected)}")
    for position, (want, got) in enumerate(zip(expected, actual)):
        problem = _mismatch(want, got)
        if problem:
            return f"{kind} {position} is {problem}, expected {want.describe()}"
    return None


def check_signature(part: str, path: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                    cond_dim: int) -> None:
    """Raise BackendError naming the file, the tensor and expected against actual."""
    want_in, want_outs = published(cond_dim)[part]
    problem = _compare(path, "input", want_in, inputs)
    if problem is None:
        problems = [_compare(path, "output", outs, outputs) for outs in want_outs]
        problem = None if None in problems else problems[0]
    if problem:
        raise BackendError(f"{path}: not Ditto's {part} model: its {problem} (published at "
                           f"https://huggingface.co/digital-avatar/ditto-talkinghead)")


def batchable(inputs: Sequence[TensorSpec]) -> bool:
    """Whether every input's dimension 0 is symbolic (the graph takes a batch)."""
    return all(spec.shape and not isinstance(spec.shape[0], int) for spec in inputs)
