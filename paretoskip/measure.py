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

from .models import apply_mask, get_mask, skippable_units

__all__ = [
    "CostTable",
    "count_costs",
    "count_flops",
    "LatencyStats",
    "measure_latency",
    "hardware_info",
    "measurement_lock",
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
    total_params = sum(p.numel() for p in model.parameters())
    base_params = total_params - sum(run_p)
    return CostTable(
        units=tuple(n for n, _ in units),
        base_flops=base,
        run_flops=tuple(run),
        skip_flops=tuple(skip),
        base_params=base_params,
        run_params=tuple(run_p),
        skip_params=tuple(skip_p),
    )


def hardware_info() -> dict[str, object]:
    """What the measurements ran on: CPU model, cores, torch build, threads."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "system": platform.system(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": "cpu",
    }


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


def _time_once(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


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
) -> LatencyStats:
    """Time ``model`` with ``mask`` against the full model, interleaved (ABBA order).

    The model's own skip flags are restored afterwards.
    """
    if repeats < 2:
        raise ValueError(f"repeats={repeats}; at least 2 are needed for a spread")
    shape = _input_shape(model, input_shape)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *shape, generator=generator)
    full = [0] * len(mask)
    saved = get_mask(model)
    was_training = model.training
    model.eval()
    cand_t: list[float] = []
    full_t: list[float] = []
    ctx = measurement_lock() if lock else contextlib.nullcontext()
    try:
        with ctx, torch_threads(threads), torch.inference_mode():
            for m in (mask, full):
                apply_mask(model, m)
                for _ in range(warmup):
                    model(x)
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
    )
