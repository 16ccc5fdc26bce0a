"""Batched HybridViT inference: device and precision choice, warm-up, and fatal-error policy.

The transport (ZeroMQ) lives in the worker loop; this module only turns spectrogram batches into class
probabilities, so that `quakemon replay`, the Python API and the streaming worker share one implementation.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np
import structlog
import torch

from quakemon.base.errors import QuakemonError
from quakemon.models.checkpoint import Checkpoint

log = structlog.get_logger(__name__)

#: Substrings of errors after which a CUDA context is poisoned and the process must exit (systemd restarts it).
FATAL_GPU_ERRORS = ("CUDA error", "illegal memory access", "device-side assert", "unspecified launch failure",
                    "an illegal instruction", "CUBLAS_STATUS_EXECUTION_FAILED")


class FatalInferenceError(QuakemonError):
    """Inference cannot continue in this process (poisoned GPU context or repeated failures)."""


# Windows per forward on the CPU, for callers that batch more than that for their own sake (replay: 256 per
# pipeline batch). 64 gave more windows/s than 32, 128 or 256 for the eager model and the frozen graph alike
# (docs/performance.md, "Design measurements").
CPU_FORWARD_BATCH = 64


def pick_device(requested: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; otherwise the named device (checked)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise QuakemonError(f"model.device is {requested!r} but CUDA is not available on this host")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when the CPU executes bf16 matrix products natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX), else fp32."""
    if precision != "auto":
        if precision not in ("fp32", "bf16", "fp16"):
            raise QuakemonError(f"model.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
        if precision == "fp16" and device.type != "cuda":
            raise QuakemonError("model.precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        return precision
    if device.type == "cuda" or cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision ("fp32" = none) on a device."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def is_fatal_gpu_error(exc: BaseException) -> bool:
    text = str(exc)
    return any(s in text for s in FATAL_GPU_ERRORS)


def prepare_for_inference(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """An eval-mode copy of `model` on `device`, arranged for fast inference (the checkpoint's model is untouched).

    Each Conv2d + BatchNorm2d pair of the stem is folded into one convolution (eval-mode BatchNorm is an affine
    map), and the weights use the channels_last layout that oneDNN and cuDNN convolve fastest; the eager
    model's inputs are made channels_last in `predict`. Outputs differ from the original model by float rounding
    of the folded weights only (a test holds them together).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d) and bn.track_running_stats:
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = torch.nn.Identity()
    return model.to(device=device, memory_format=torch.channels_last)


GRAPHS = ("auto", "eager")


def freeze_graph(model: torch.nn.Module, precision: str, device: torch.device,
                 input_shape: tuple[int, ...]) -> torch.nn.Module:
    """`model` traced and frozen into a TorchScript graph for the CPU, or `model` itself (on a GPU, or when the
    graph cannot be built or does not reproduce the eager outputs; logged).

    Tracing under autocast with the JIT's own autocast pass off bakes the bf16 casts into the graph; freezing
    then folds the weights in as constants, already cast. The whole forward runs in C++: no per-module Python,
    no GIL between ops, no per-call cast of the fp32 weights. The check against the eager model runs on another
    batch size than the trace's, so a graph that baked the batch dimension in is refused too. The gain is in
    docs/performance.md.
    """
    if device.type != "cpu":
        return model
    gen = torch.Generator().manual_seed(0)
    example = torch.rand((8, *input_shape), generator=gen).contiguous(memory_format=torch.channels_last)
    check = torch.randn((3, *input_shape), generator=gen)  # the plain layout `predict` feeds the graph
    previous = None
    try:
        previous = torch._C._jit_set_autocast_mode(False)
        with warnings.catch_warnings():  # trace/freeze warn that TorchScript is deprecated, and on the shape check
            warnings.simplefilter("ignore")
            with torch.inference_mode(), autocast(precision, device):
                frozen = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
                # another batch size than the trace's: the graph must not have baked the batch dimension in
                want = torch.softmax(model(check).float(), dim=-1)
                got = torch.softmax(frozen(check).float(), dim=-1)
    except Exception as exc:  # a model the tracer cannot follow, or a torch without TorchScript: run eager
        log.warning("graph_freeze_failed", error=repr(exc), action="running the eager model")
        return model
    finally:
        if previous is not None:
            torch._C._jit_set_autocast_mode(previous)
    diff = float((want - got).abs().max())
    tolerance = 1e-5 if precision == "fp32" else 1e-2
    if not diff <= tolerance:
        log.warning("graph_freeze_mismatch", max_probability_diff=diff, tolerance=tolerance,
                    action="running the eager model")
        return model
    log.info("graph_frozen", precision=precision, max_probability_diff=diff)
    return frozen


def graph_kind(model: torch.nn.Module) -> str:
    """"frozen" for what `freeze_graph` built, else "eager" (what the engine and the bench report)."""
    return "frozen" if isinstance(model, torch.jit.ScriptModule) else "eager"


def model_input(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x in the layout `model` takes (the engine and the bench roof both feed it so). The eager model gets
    channels_last inputs, its convolutions' layout. The frozen graph takes the spectra as they come: it gives the
    same outputs and runs no slower without that layout, so the copy before it would be pure cost."""
    return x if graph_kind(model) == "frozen" else x.contiguous(memory_format=torch.channels_last)


@dataclass
class InferenceStats:
    batches: int = 0
    windows: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the calling threads inside predict (thread_time)
    failures: int = 0
    last_batch_size: int = 0
    last_batch_seconds: float = 0.0


class InferenceEngine:
    """Runs a checkpoint's model on spectrogram batches under inference_mode, in chunks of `batch_size`."""

    def __init__(self, checkpoint: Checkpoint, device: str = "auto", precision: str = "auto",
                 batch_size: int = 64, max_consecutive_failures: int = 3, graph: str = "auto") -> None:
        """graph: "auto" runs a frozen TorchScript graph on the CPU (`freeze_graph`) and the eager model on a
        GPU; "eager" always runs the eager model."""
        if graph not in GRAPHS:
            raise QuakemonError(f"model.graph must be one of {', '.join(GRAPHS)}, got {graph!r}")
        self.checkpoint = checkpoint
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = int(batch_size)
        self.max_consecutive_failures = max_consecutive_failures
        self._input_shape = (checkpoint.args.in_channels, *checkpoint.args.img_size)
        self.model = prepare_for_inference(checkpoint.model, self.device)
        if graph == "auto":
            self.model = freeze_graph(self.model, self.precision, self.device, self._input_shape)
        self.graph = graph_kind(self.model)
        self.labels = list(checkpoint.labels)
        self.stats = InferenceStats()
        self._stats_lock = threading.Lock()
        self._consecutive_failures = 0

    def warmup(self, batches: tuple[int, ...] = (1, 8)) -> None:
        """Run a few dummy batches so the first real window is not slowed by lazy initialisation."""
        for b in batches:
            self.predict(np.zeros((min(b, self.batch_size), *self._input_shape), np.float32))
        self.stats = InferenceStats()
        log.info("inference_ready", device=str(self.device), precision=self.precision, batch_size=self.batch_size,
                 graph=self.graph)

    def predict(self, spectra: np.ndarray | torch.Tensor) -> np.ndarray:
        """[B, C, F, T] float32 -> class probabilities [B, num_classes] float32 (softmax, computed in fp32)."""
        x = torch.as_tensor(spectra)
        if x.ndim != 4 or tuple(x.shape[1:]) != self._input_shape:
            shape = ", ".join(map(str, self._input_shape))
            raise ValueError(f"expected spectrograms [B, {shape}], got {list(x.shape)}")
        if x.shape[0] == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        start, cpu_start = time.perf_counter(), time.thread_time()
        out = []
        try:
            with torch.inference_mode(), autocast(self.precision, self.device):
                for i in range(0, x.shape[0], self.batch_size):
                    chunk = x[i : i + self.batch_size].to(self.device, dtype=torch.float32, non_blocking=True)
                    logits = self.model(model_input(self.model, chunk)).float()
                    out.append(torch.softmax(logits, dim=-1).cpu())
        except Exception as exc:
            with self._stats_lock:
                self.stats.failures += 1
                self._consecutive_failures += 1
            if is_fatal_gpu_error(exc):
                raise FatalInferenceError(f"fatal GPU error, the CUDA context is unusable: {exc}") from exc
            if self._consecutive_failures >= self.max_consecutive_failures:
                raise FatalInferenceError(
                    f"{self._consecutive_failures} consecutive inference failures, last: {exc}"
                ) from exc
            raise
        elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
        with self._stats_lock:  # predict may run on several threads at once (replay's inference workers)
            self._consecutive_failures = 0
            self.stats.batches += 1
            self.stats.windows += int(x.shape[0])
            self.stats.seconds += elapsed
            self.stats.cpu_seconds += cpu
            self.stats.last_batch_size = int(x.shape[0])
            self.stats.last_batch_seconds = elapsed
        return torch.cat(out).numpy()
