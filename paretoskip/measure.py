"""Cost measurements of skip configurations: exact FLOPs and parameters, measured latency.

FLOPs are counted once per unit with :class:`torch.utils.flop_counter.FlopCounterMode`
(FLOPs = 2 × multiply-accumulates, on the meta device, so nothing is computed) and summed
per mask.  Latency is measured: warm-up, repeated timed runs interleaved with the full
model, median and inter-quartile range, fixed thread count.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import ConfigError
from .models import apply_mask, get_mask, skippable_units

__all__ = [
    "CostTable",
    "count_costs",
    "count_flops",
    "LatencyStats",
    "measure_latency",
    "hardware_info",
    "resolve_device",
    "available_devices",
    "device_record",
    "synchronize",
    "measurement_lock",
    "model_device",
    "cudnn_benchmark",
    "iqr",
]


def iqr(values: Sequence[float]) -> float:
    """Inter-quartile range (75th minus 25th percentile)."""
    q75, q25 = np.percentile(np.asarray(values, dtype=float), [75, 25])
    return float(q75 - q25)


def _input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    shape = input_shape or getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("the model has no input_shape attribute; pass input_shape=(C, H, W)")
    return tuple(int(s) for s in shape)


def count_flops(model: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """FLOPs of one forward pass of ``model`` with its current skip flags, batch 1."""
    shape = _input_shape(model, input_shape)
    meta = copy.deepcopy(model).to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(1, *shape, device="meta"))
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class CostTable:
    """Per-unit FLOPs and parameters; the cost of a mask is a sum of table entries.

    ``flops(mask) = base_flops + Σ (skip_flops[i] if mask[i] else run_flops[i])``, and the
    same for parameters.  FLOPs are per image (batch 1).
    """

    units: tuple[str, ...]
    base_flops: int
    run_flops: tuple[int, ...]
    skip_flops: tuple[int, ...]
    base_params: int
    run_params: tuple[int, ...]
    skip_params: tuple[int, ...]

    def flops(self, mask: Sequence[int]) -> int:
        return self.base_flops + sum(
            s if m else r for m, r, s in zip(mask, self.run_flops, self.skip_flops)
        )

    def params(self, mask: Sequence[int]) -> int:
        return self.base_params + sum(
            s if m else r for m, r, s in zip(mask, self.run_params, self.skip_params)
        )

    @property
    def full_flops(self) -> int:
        return self.base_flops + sum(self.run_flops)

    @property
    def full_params(self) -> int:
        return self.base_params + sum(self.run_params)


def _unit_flops(model: nn.Module, shape: tuple[int, ...], skip: bool) -> tuple[int, list[int]]:
    meta = copy.deepcopy(model).to("meta").eval()
    units = skippable_units(meta)
    apply_mask(meta, [int(skip)] * len(units))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(1, *shape, device="meta"))
    counts = counter.get_flop_counts()
    root = type(meta).__name__
    per_unit = [int(sum(counts.get(f"{root}.{name}", {}).values())) for name, _ in units]
    return int(counter.get_total_flops()), per_unit


def _params_used(unit: nn.Module, x: torch.Tensor, skip: bool) -> int:
    """Parameters of the submodules a unit calls when run (or skipped) on ``x``."""
    called: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, *_: called.add(id(mod))) for m in unit.modules()]
    try:
        with torch.no_grad():
            out = unit.run(x, skip)
    finally:
        for h in hooks:
            h.remove()
    seen: set[int] = set()
    total = 0
    for m in unit.modules():
        if id(m) in called:
            for p in m.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total, out


def count_costs(model: nn.Module, input_shape: Sequence[int] | None = None) -> CostTable:
    """Count every unit's FLOPs and parameters, run and skipped (see :class:`CostTable`).

    Example:
        >>> import paretoskip
        >>> from paretoskip.measure import count_costs
        >>> table = count_costs(paretoskip.create_model("resnet56"))
        >>> round(table.full_flops / 1e6, 1), round(table.full_params / 1e6, 3)
        (251.0, 0.853)
    """
    shape = _input_shape(model, input_shape)
    total_run, run = _unit_flops(model, shape, skip=False)
    total_skip, skip = _unit_flops(model, shape, skip=True)
    base = total_run - sum(run)
    if total_skip - sum(skip) != base:
        raise RuntimeError(
            "FLOPs outside the units differ between masks; the model is not a plain residual stack"
        )
    meta = copy.deepcopy(model).to("meta").eval()
    units = skippable_units(meta)
    run_p, skip_p = [], []
    from .models import model_parts

    parts = model_parts(meta)
    with torch.no_grad():
        h = parts.stem(torch.empty(1, *shape, device="meta"))
    for _, unit in units:
        rp, out = _params_used(unit, h, skip=False)
        sp, _ = _params_used(unit, h, skip=True)
        run_p.append(rp)
        skip_p.append(sp)
        h = out
    # Parameters outside every unit; a unit's parameters it uses in neither state (e.g. an
    # ADN block's skip-path batch norm, used only by its stage's mandatory block when all
    # skippable blocks are skipped) belong to no configuration's count.
    in_units = {id(p) for _, unit in skippable_units(model) for p in unit.parameters()}
    base_params = sum(p.numel() for p in model.parameters() if id(p) not in in_units)
    return CostTable(
        units=tuple(n for n, _ in units),
        base_flops=base,
        run_flops=tuple(run),
        skip_flops=tuple(skip),
        base_params=base_params,
        run_params=tuple(run_p),
        skip_params=tuple(skip_p),
    )


def available_devices() -> list[str]:
    """The devices this process can run a model on: ``"cpu"``, then ``"cuda:N"`` per GPU."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return out


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """``device`` (``"cpu"``, ``"cuda"`` or ``"cuda:N"``) checked to be usable here.

    ``"cuda"`` means the current CUDA device and is returned with its index.

    Raises:
        ConfigError: a malformed device, another device type, or one this machine does not
            have (the message names the available devices).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("tpu")
        Traceback (most recent call last):
        ...
        paretoskip.errors.ConfigError: device 'tpu' is not one of 'cpu', 'cuda', 'cuda:N'
    """
    if device is None:
        device = "cpu"
    text = str(device).strip() if isinstance(device, (str, torch.device)) else None
    try:
        dev = torch.device(text) if text else None
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index):
        raise ConfigError(f"device {device!r} is not one of 'cpu', 'cuda', 'cuda:N'")
    if dev.type == "cpu":
        return torch.device("cpu")
    available = available_devices()
    if not torch.cuda.is_available():
        why = (
            "this torch build has no CUDA"
            if torch.version.cuda is None
            else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA GPU "
            "(no GPU, no driver, or CUDA_VISIBLE_DEVICES hides them)"
        )
        raise ConfigError(
            f"device {text!r} is not available: {why}; available: {', '.join(available)}"
        )
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {text!r} is not available: {torch.cuda.device_count()} CUDA GPU(s) are "
            f"visible; available: {', '.join(available)}"
        )
    return torch.device("cuda", index)


def device_record(device: str | torch.device = "cpu") -> dict[str, object]:
    """What a device is, for the hardware record and the measurement fingerprint.

    ``{"type": "cpu"}`` for the CPU (the CPU itself is described by :func:`hardware_info`).
    For a CUDA GPU: name, compute capability, memory, CUDA and cuDNN versions, whether
    TF32 is allowed (it changes results), and from NVML (when ``nvidia-ml-py`` reads)
    the driver version, maximum and application clocks and the power limit.  Values that
    change with load (current clocks, temperature) are left out, so the record is stable.

    Example:
        >>> device_record("cpu")
        {'type': 'cpu'}
    """
    dev = resolve_device(device)
    if dev.type == "cpu":
        return {"type": "cpu"}
    props = torch.cuda.get_device_properties(dev)
    record: dict[str, object] = {
        "type": "cuda",
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32": {
            "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn": bool(torch.backends.cudnn.allow_tf32),
        },
    }
    from .energy import nvml_device_record, nvml_uuid_of

    nvml = nvml_device_record(uuid=nvml_uuid_of(dev), index=dev.index)
    record.update(nvml)
    return record


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def hardware_info(device: str | torch.device = "cpu") -> dict[str, object]:
    """What the measurements ran on: CPU model, cores, torch build, and the device.

    ``"device"`` is ``"cpu"`` or ``"cuda:N"``; for a GPU, ``"gpu"`` holds its
    :func:`device_record`.  CPU records are unchanged by the device setting, so results
    measured before it existed stay valid.
    """
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    out: dict[str, object] = {
        "cpu": cpu,
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "system": platform.system(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": "cpu",
    }
    dev = resolve_device(device)
    if dev.type == "cuda":
        out["device"] = str(dev)
        out["gpu"] = device_record(dev)
    return out


@contextlib.contextmanager
def measurement_lock(path: str | os.PathLike | None = None) -> Iterator[None]:
    """Hold the per-host lock that keeps latency and energy measurements from overlapping.

    Every paretoskip process on a host takes this lock (an ``flock`` on a file in the
    temporary directory) around each timed or energy-metered run, so two workers never
    disturb each other's measurements.  Accuracy evaluation does not take it.
    """
    lock_path = os.fspath(path or os.path.join(tempfile.gettempdir(), "paretoskip-measure.lock"))
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (None: leave as is)."""
    if threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass(frozen=True)
class LatencyStats:
    """Seconds per batch: median and IQR over repeats, and the ratio to the full model.

    ``ratio`` is the median of the per-repeat ratios candidate/full, measured interleaved,
    which survives slow drift of the machine better than either median alone.
    """

    median: float
    iqr: float
    full_median: float
    full_iqr: float
    ratio: float
    ratio_iqr: float
    repeats: int
    batch_size: int
    threads: int
    device: str = "cpu"
    #: cuDNN autotuning during the timed runs (None on the CPU)
    cudnn_benchmark: bool | None = None


def _time_once(model: nn.Module, x: torch.Tensor) -> float:
    if x.device.type == "cuda":
        # CUDA events around the region, after the queue is drained: the kernels' time on
        # the GPU, not the time to launch them
        torch.cuda.synchronize(x.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    start_t = time.perf_counter()
    model(x)
    return time.perf_counter() - start_t


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) are; the CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool | None) -> Iterator[None]:
    """Run with ``torch.backends.cudnn.benchmark`` set (None: leave as is)."""
    if enabled is None:
        yield
        return
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def measure_latency(
    model: nn.Module,
    mask: Sequence[int],
    *,
    batch_size: int = 1,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    input_shape: Sequence[int] | None = None,
    lock: bool = True,
    benchmark: bool = False,
) -> LatencyStats:
    """Time ``model`` with ``mask`` against the full model, interleaved (ABBA order).

    The model runs where its parameters are.  On a CUDA GPU every timed region is one
    forward pass between CUDA events, after ``torch.cuda.synchronize()``, so the time is
    the GPU's and not the launch's; the warm-up runs also let cuDNN pick its algorithms.
    ``benchmark`` sets ``torch.backends.cudnn.benchmark`` for the run (recorded in the
    result; off by default, so the algorithms and hence the times are reproducible).
    The model's own skip flags are restored afterwards.
    """
    if repeats < 2:
        raise ValueError(f"repeats={repeats}; at least 2 are needed for a spread")
    shape = _input_shape(model, input_shape)
    device = model_device(model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *shape, generator=generator).to(device)
    on_gpu = device.type == "cuda"
    full = [0] * len(mask)
    saved = get_mask(model)
    was_training = model.training
    model.eval()
    cand_t: list[float] = []
    full_t: list[float] = []
    ctx = measurement_lock() if lock else contextlib.nullcontext()
    try:
        with (
            ctx,
            torch_threads(threads),
            cudnn_benchmark(benchmark if on_gpu else None),
            torch.inference_mode(),
        ):
            for m in (mask, full):
                apply_mask(model, m)
                for _ in range(warmup):
                    model(x)
                synchronize(device)
            for r in range(repeats):
                order = (
                    ((mask, cand_t), (full, full_t))
                    if r % 2 == 0
                    else ((full, full_t), (mask, cand_t))
                )
                for m, out in order:
                    apply_mask(model, m)
                    out.append(_time_once(model, x))
            used_threads = torch.get_num_threads()
    finally:
        apply_mask(model, saved)
        model.train(was_training)
    ratios = [c / f for c, f in zip(cand_t, full_t)]
    return LatencyStats(
        median=statistics.median(cand_t),
        iqr=iqr(cand_t),
        full_median=statistics.median(full_t),
        full_iqr=iqr(full_t),
        ratio=statistics.median(ratios),
        ratio_iqr=iqr(ratios),
        repeats=repeats,
        batch_size=batch_size,
        threads=used_threads,
        device=str(device),
        cudnn_benchmark=bool(benchmark) if on_gpu else None,
    )
