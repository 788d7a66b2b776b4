"""One exported model, run by ONNX Runtime on the best provider here.

A :class:`ModelSession` is created once per process and model file (:func:`shared_session`) and
shared by every streaming session: the worker already groups the frames due in the same tick
across sessions into one ``generate`` call (``Backend.batch_size``), so a backend runs its
models once per batch. On a GPU inputs and outputs go through I/O binding, and a model's output
can stay on the device for the next model (``run_on_device``); on CPU plain ``run`` is used,
since binding buys nothing there.

TensorRT engines are built by ONNX Runtime's TensorRT provider into an engine cache folder per
:func:`~engines.runtime.cache.engine_cache_key` (model hash, GPU, TensorRT version, precision and
shapes), so a build happens once and is reused on the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from engines.runtime.cache import engine_cache_key
from engines.runtime.providers import PROVIDERS, gpu_name, select_providers, tensorrt_version

if TYPE_CHECKING:
    from onnxruntime import OrtValue

log = logging.getLogger(__name__)

# ONNX element type names -> numpy dtypes, for warm-up inputs
_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}
_ONNX_TYPE_NAMES = {np.dtype(dtype): name for name, dtype in _DTYPES.items()}


class ModelLoadError(RuntimeError):
    """An exported model file cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str | None, ...]  # a str or None is a dynamic dimension
    dtype: str

    def concrete(self, dynamic: Mapping[str, int] | None = None) -> tuple[int, ...]:
        """The shape with every dynamic dimension replaced (by ``dynamic[name]`` or 1)."""
        dynamic = dynamic or {}
        return tuple(d if isinstance(d, int) else int(dynamic.get(str(d), 1)) for d in self.shape)


class ModelSession:
    """An ``onnxruntime.InferenceSession`` with the provider chosen, its I/O described, warmed up."""

    def __init__(
        self,
        path: Path,
        provider: str | None = None,
        fp16: bool = False,
        engine_cache_dir: Path | None = None,
        threads: int = 0,
        max_batch: int = 8,
        shapes: Mapping[str, tuple[Sequence[int], Sequence[int]]] | None = None,
    ) -> None:
        """``shapes``: (min, max) shapes of inputs whose dynamic dimensions are not a batch (a
        length, say) for TensorRT's profile; the others' dynamic dimensions run 1..``max_batch``."""
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such model file (export it first: python -m stream_server export ...)")
        self.providers = select_providers(provider)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        provider_args: list[object] = []
        self.engine_cache: Path | None = None
        for name in self.providers:
            if name == PROVIDERS["tensorrt"]:
                profile = {**_profile_shapes(ort, self.path, max_batch), **(shapes or {})}
                options, self.engine_cache = tensorrt_options(
                    self.path, fp16, profile, gpu_name(), tensorrt_version(), engine_cache_dir
                )
                if not any(self.engine_cache.iterdir()):
                    log.warning("building the TensorRT engine for %s (first start only, can take minutes; cached in %s)",
                                self.path.name, self.engine_cache)
                provider_args.append((name, options))
            else:
                provider_args.append(name)
        started = time.perf_counter()
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=provider_args)
        except Exception as exc:
            raise ModelLoadError(f"{self.path}: ONNX Runtime cannot load it: {exc}") from exc
        self.load_s = time.perf_counter() - started
        self.inputs = [TensorSpec(i.name, tuple(i.shape), i.type) for i in self.session.get_inputs()]
        self.outputs = [TensorSpec(o.name, tuple(o.shape), o.type) for o in self.session.get_outputs()]
        self.on_gpu = self.session.get_providers()[0] != PROVIDERS["cpu"]
        self._lock = threading.Lock()  # run() is thread-safe in ORT, but I/O binding objects are not

    @property
    def provider(self) -> str:
        """The provider actually in use (first of the session's list)."""
        return self.session.get_providers()[0]

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def warm_up(self, dynamic: Mapping[str, int] | None = None, runs: int = 1) -> float:
        """Run the model on zeros (dynamic dimensions from ``dynamic``, else 1); returns seconds
        of the last run. On TensorRT the first run builds (or loads) the engine."""
        feeds = {
            spec.name: np.zeros(spec.concrete(dynamic), _DTYPES.get(spec.dtype, np.float32)) for spec in self.inputs
        }
        elapsed = 0.0
        for _ in range(runs):
            started = time.perf_counter()
            self.run(feeds)
            elapsed = time.perf_counter() - started
        return elapsed

    def run(self, feeds: Mapping[str, "np.ndarray | OrtValue"], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model; returns the outputs by name as numpy arrays. A feed may be another
        model's output left on the device by :meth:`run_on_device`."""
        names = self._check(feeds, outputs)
        if not self.on_gpu and all(isinstance(v, np.ndarray) for v in feeds.values()):
            values = self.session.run(names, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
            return dict(zip(names, values))
        return {name: value.numpy() for name, value in self.run_on_device(feeds, names).items()}

    def run_on_device(self, feeds: Mapping[str, "np.ndarray | OrtValue"], outputs: Sequence[str] | None = None) -> dict[str, "OrtValue"]:
        """Run through I/O binding and leave the outputs where the model ran (GPU memory on a
        GPU), so the next model can take them without a round trip through the host."""
        names = self._check(feeds, outputs)
        with self._lock:
            binding = self.session.io_binding()
            for name, value in feeds.items():
                if isinstance(value, np.ndarray):
                    binding.bind_cpu_input(name, np.ascontiguousarray(value))
                else:
                    binding.bind_ortvalue_input(name, value)
            for name in names:
                binding.bind_output(name, "cuda" if self.on_gpu else "cpu")
            self.session.run_with_iobinding(binding)
            return dict(zip(names, binding.get_outputs()))

    def _check(self, feeds: Mapping[str, object], outputs: Sequence[str] | None) -> list[str]:
        missing = [spec.name for spec in self.inputs if spec.name not in feeds]
        if missing:
            raise ValueError(f"{self.path.name}: missing inputs {missing}; expects {self.input_names}")
        return list(outputs or self.output_names)


def input_specs(ort, path: Path) -> list[TensorSpec]:
    """The model's inputs, read from its graph alone when the onnx package is there (the
    weights, 3.4 GB for MuseTalk's UNet, stay on disk); else from a CPU session."""
    try:
        import onnx
    except ImportError:
        probe = ort.InferenceSession(str(path), providers=[PROVIDERS["cpu"]])
        return [TensorSpec(i.name, tuple(i.shape), i.type) for i in probe.get_inputs()]
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    specs = []
    for value in graph.input:
        if value.name in weights:
            continue  # old exporters list the weights as inputs too
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        specs.append(TensorSpec(value.name, dims, _ONNX_TYPE_NAMES.get(np.dtype(dtype), f"tensor({np.dtype(dtype).name})")))
    return specs


def _profile_shapes(ort, path: Path, max_batch: int) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """(min, max) shape of each input: dynamic dimensions from 1 to ``max_batch``."""
    return {
        spec.name: (spec.concrete(), tuple(d if isinstance(d, int) else max_batch for d in spec.shape))
        for spec in input_specs(ort, path)
    }


def tensorrt_options(
    path: Path,
    fp16: bool,
    shapes: Mapping[str, tuple[Sequence[int], Sequence[int]]],
    gpu: str,
    trt_version: str,
    cache_root: Path | None = None,
) -> tuple[dict[str, object], Path]:
    """TensorRT provider options and the engine cache folder of this exact build: one folder per
    :func:`engine_cache_key` (model hash, GPU, TensorRT version, precision, shape profile)."""
    precision = "fp16" if fp16 else "fp32"
    key = engine_cache_key(path, gpu, trt_version, precision, {n: [*lo, *hi] for n, (lo, hi) in shapes.items()})
    cache = Path(cache_root or Path(path).parent / "trt-cache") / f"{Path(path).stem}-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    fmt = lambda which: ",".join(f"{n}:{'x'.join(map(str, dims[which]))}" for n, dims in shapes.items())  # noqa: E731
    options: dict[str, object] = {
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": fmt(0),
        "trt_profile_opt_shapes": fmt(1),
        "trt_profile_max_shapes": fmt(1),
    }
    return options, cache


_SHARED: dict[tuple[str, str | None, bool], ModelSession] = {}
_SHARED_LOCK = threading.Lock()


def shared_session(path: Path, provider: str | None = None, fp16: bool = False) -> ModelSession:
    """The process's one session for a model file (created and warmed up on first use)."""
    key = (str(Path(path).resolve()), provider, fp16)
    with _SHARED_LOCK:
        if key not in _SHARED:
            session = ModelSession(path, provider=provider, fp16=fp16)
            session.warm_up()
            _SHARED[key] = session
        return _SHARED[key]
