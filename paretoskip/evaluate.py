"""The evaluator: metrics of skip masks, cached, with prefix-shared accuracy.

Accuracy on the validation split dominates the cost of a search.  :meth:`Evaluator.evaluate_many`
computes it for a batch of masks as a prefix tree: masks that agree on their first ``k``
units share the activations up to unit ``k``, so each distinct prefix is computed once per
chunk of validation images.  (Strictly, the tree branches on each unit's *state*,
:meth:`ModelParts.unit_states <paretoskip.models.ModelParts.unit_states>`: the skip bit, or
more where a unit's output depends on later bits too, as an ADN mandatory block's batch
norms do.)  The stem and any locked prefix are computed once per split (per prefix state) and
kept (within the memory budget).  FLOPs and parameters come from a per-unit table.
Latency and energy are measured one candidate at a time under a per-host lock.  Every
result is stored in the shared cache before it is returned.

The results equal naive evaluation (apply the mask, run the split in chunks of the same
size) exactly: the same operations run on the same tensors, only fewer times.

Chunk size: on the CPU, by default (``eval_batch="auto"``) a chunk holds as many images as
keep the largest unit output near :data:`CHUNK_BYTES_PER_THREAD` per thread, so that a
block's tensors stay in the processor's caches: on 28×28 Fashion-MNIST a stage-1 block of a
CIFAR-style ResNet runs ~2× faster per image at 64 images than at 256 or 500 (1 thread;
``benchmarks/evaluator.py`` measures it).  A mask's accuracy does not depend on the chunk
size (the cache key leaves it out); the tests check this.  On a GPU, ``"auto"`` is 256.

Memory: with chunks of ``C`` images the tree keeps one activation per branch point on the
current path, so it holds at most ``C × Σ_units (bytes of one image's unit output)``; the
chunk size is lowered where needed so that this bound stays under ``memory_mb`` (default
1024 MB).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .cache import CacheKey, EvalCache
from .errors import ConfigError
from .measure import (
    CostTable,
    count_costs,
    cudnn_benchmark,
    hardware_info,
    measure_latency,
    measurement_lock,
    resolve_device,
    synchronize,
    torch_threads,
)
from .models import SkippableUnit, apply_mask, get_mask, model_parts
from .progress import progress_bar
from .space import Mask, SkipSpace

__all__ = ["Metric", "Evaluation", "MeasureSettings", "Evaluator", "measurement_fingerprint"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metric:
    """A measured value with its unit, where it came from, and its spread (if any).

    ``value`` is NaN when the quantity could not be measured (``source`` then says
    ``unavailable`` and ``reason`` why); it is never 0 for "not measured".
    """

    value: float
    unit: str
    source: str
    spread: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.value, float) and math.isnan(self.value):
            d["value"] = None
        if d["reason"] is None:
            del d["reason"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Metric:
        value = d.get("value")
        return cls(
            value=math.nan if value is None else value,
            unit=d["unit"],
            source=d["source"],
            spread=d.get("spread"),
            reason=d.get("reason"),
        )


@dataclass(frozen=True)
class Evaluation:
    """The metrics of one mask."""

    mask: str
    skipped: tuple[str, ...]
    metrics: Mapping[str, Metric]
    cache_hit: bool = False
    seconds: float = 0.0

    def __getitem__(self, name: str) -> float:
        try:
            return self.metrics[name].value
        except KeyError:
            raise ConfigError(
                f"metric {name!r} was not measured; measured: {', '.join(self.metrics)}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mask": self.mask,
            "skipped": list(self.skipped),
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "cache_hit": self.cache_hit,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class MeasureSettings:
    """How metrics are measured.  Part of the cache key: change one, and results are re-measured.

    Args:
        latency: measure latency (seconds per batch, interleaved with the full model).
        batch_size: batch size of latency and energy runs.
        repeats: timed repeats per candidate (and as many of the full model).
        warmup: untimed runs before timing.
        threads: intra-op threads for every measurement (None: torch's current setting).
        energy: energy backend ("none", "auto", "rapl", "nvml", "zeus", "estimated").
        energy_seconds: minimum length of one energy window.
        eval_batch: images per chunk of accuracy evaluation (lowered to fit ``memory_mb``),
            or ``"auto"`` (the default): on the CPU, enough images for the largest unit
            output to fill :data:`CHUNK_BYTES_PER_THREAD` per thread (at least 16); on a
            GPU, 256.  Accuracy does not depend on it.
        memory_mb: memory bound of the prefix tree's activations.
        device: where the model is evaluated, timed and metered: ``"cpu"``, ``"cuda"``
            (the current GPU) or ``"cuda:N"``.  On a GPU the device record (name, driver,
            CUDA/cuDNN versions, clocks) is part of the fingerprint, so CPU and GPU results
            never mix in a cache.
        cudnn_benchmark: cuDNN autotuning during latency and energy runs on a GPU (off:
            reproducible algorithm choice); part of the fingerprint on a GPU.
    """

    latency: bool = False
    batch_size: int = 64
    repeats: int = 15
    warmup: int = 3
    threads: int | None = None
    energy: str = "none"
    energy_seconds: float = 1.0
    eval_batch: int | str = "auto"
    memory_mb: float = 1024.0
    device: str = "cpu"
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE_RE.fullmatch(self.device.strip()):
            raise ConfigError(
                f"device={self.device!r}; accepted: 'cpu', 'cuda' or 'cuda:N' (N a GPU index)"
            )
        for name in ("batch_size", "repeats"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        eb = self.eval_batch
        if eb != "auto" and (isinstance(eb, bool) or not isinstance(eb, int) or eb < 1):
            raise ConfigError(f"eval_batch={eb!r}; accepted: a positive integer or 'auto'")
        if self.repeats < 2 and self.latency:
            raise ConfigError(
                f"repeats={self.repeats}: latency needs at least 2 repeats for a spread"
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads} must be >= 1 (or None)")

    def resolved(self) -> MeasureSettings:
        """These settings with ``threads`` fixed to a number and ``device`` checked to be
        here (``"cuda"`` becomes ``"cuda:N"``); raises ConfigError naming the available
        devices when it is not."""
        device = str(resolve_device(self.device))
        threads = self.threads if self.threads is not None else torch.get_num_threads()
        if threads == self.threads and device == self.device:
            return self
        return MeasureSettings(**{**asdict(self), "threads": threads, "device": device})


_DEVICE_RE = re.compile(r"cpu|cuda(:\d+)?")

#: bytes of the largest unit output per intra-op thread that ``eval_batch="auto"`` aims a
#: CPU chunk at: about what a core's share of this machine's L2 + L3 holds (AMD EPYC, 1 MiB
#: L2 per core, 32 MiB L3), where 28×28 Fashion-MNIST blocks ran fastest per image (chunks
#: of 32-64 images on 1 thread, 64-128 on 2; ``benchmarks/evaluator.py``)
CHUNK_BYTES_PER_THREAD = 3 * 2**20

#: the smallest chunk ``"auto"`` chooses (below it Python's per-call overhead shows)
MIN_AUTO_CHUNK = 16


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def measurement_fingerprint(
    settings: MeasureSettings,
    hardware: Mapping[str, Any],
    energy: Mapping[str, Any] | None = None,
) -> str:
    """The fingerprint of how metrics are measured (the third part of a cache key).

    ``settings`` are resolved settings, ``hardware`` is :func:`paretoskip.measure.
    hardware_info` of their device and ``energy`` the energy meter's ``describe()`` (None
    without one).  The skip space, chunk size and memory bound are not part of it (a mask's
    metrics do not depend on them); the hardware is, when timings or energies are measured.
    On the CPU it is what it was before the device setting existed (CPU caches stay valid);
    on a GPU the device record (``hardware["gpu"]``) always is, since even accuracy may
    differ from the CPU's there (TF32, other kernels), so CPU and GPU results never mix.

    Example:
        >>> from paretoskip.measure import hardware_info
        >>> cpu = measurement_fingerprint(MeasureSettings(), hardware_info())
        >>> gpu_hw = {**hardware_info(), "device": "cuda:0", "gpu": {"name": "NVIDIA H200"}}
        >>> gpu = measurement_fingerprint(MeasureSettings(device="cuda:0"), gpu_hw)
        >>> cpu == gpu
        False
    """
    s = asdict(settings)
    s.pop("eval_batch")
    s.pop("memory_mb")
    timed = settings.latency or energy is not None
    doc: dict[str, Any] = {
        "settings": s,
        "energy": dict(energy) if energy is not None else {"backend": "none"},
        # accuracy, FLOPs and parameters do not depend on the machine; timings do
        "hardware": dict(hardware) if timed else None,
    }
    if settings.device == "cpu":
        s.pop("device")
        s.pop("cudnn_benchmark")
    else:
        doc["device"] = hardware.get("gpu", settings.device)
    return _sha(doc)


class Evaluator:
    """Evaluate skip masks of one model on one dataset split.

    Args:
        model: a skippable model (see :func:`paretoskip.create_model`), weights loaded; it is
            moved to ``settings.device`` (in place, as ``nn.Module.to`` does).
        data: a :class:`paretoskip.data.DatasetSplits`; accuracy uses ``data.val`` (searched)
            and ``data.test`` (reported only, see :meth:`test_accuracy`).
        space: the skip space (default: every unit of the model).
        settings: :class:`MeasureSettings`.
        cache: an :class:`EvalCache`, a database path/URL for one, or None.
        model_fingerprint: fingerprint of the weights (computed when not given).

    Example:
        >>> import paretoskip
        >>> from paretoskip.data import load_dataset
        >>> data = load_dataset("digits", seed=0)
        >>> model = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
        >>> ev = paretoskip.Evaluator(model, data)
        >>> r = ev.evaluate("000000001")
        >>> r.metrics["flops"].unit, 0.0 <= r["accuracy"] <= 1.0
        ('FLOPs', True)
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        space: SkipSpace | None = None,
        settings: MeasureSettings | None = None,
        cache: EvalCache | str | None = None,
        model_fingerprint: str | None = None,
    ):
        self.settings = (settings or MeasureSettings()).resolved()
        #: where the model runs (it is moved there)
        self.device = torch.device(self.settings.device)
        self.model = model.to(self.device).eval()
        self.data = data
        self.space = space or SkipSpace.from_model(model)
        self.space.check_model(model)
        self.cache = EvalCache(cache) if isinstance(cache, str) else cache
        if model_fingerprint is None:
            from .checkpoint import weights_fingerprint

            model_fingerprint = weights_fingerprint(model)
        self.model_fingerprint = model_fingerprint
        self.hardware = hardware_info(self.device)
        self.costs: CostTable = count_costs(model)
        self._parts = model_parts(model)
        self._units = [u for _, u in self._parts.units]
        #: per unit: skipped, it returns its input unchanged (an identity shortcut and a
        #: ReLU, on the output of a block that ends in a ReLU); _walk then passes it on
        self._skip_passes = [
            k > 0
            and getattr(self._units[k - 1], "output_nonnegative", False)
            and isinstance(u, SkippableUnit)
            and type(u).run_state is SkippableUnit.run_state  # the state is the skip bit
            and u.skip_passes_nonnegative()
            for k, u in enumerate(self._units)
        ]
        self._energy = None
        if self.settings.energy != "none":
            from .energy import make_device_energy_meter

            # the meter reads the device the model runs on (NVML for a GPU, RAPL for a CPU)
            self._energy = make_device_energy_meter(self.settings.energy, self.device)
        #: the device's power with this process idle, measured once before the first energy
        #: reading of this evaluator (a :class:`paretoskip.energy.PowerReading`), or None
        self.idle_power = None
        self._prefix_cache: dict[tuple[str, tuple], list[torch.Tensor]] = {}
        #: validation subsets for screening (:meth:`subset_evaluate_many`), by name
        self._subsets: dict[str, Any] = {}
        self._chunk = self._chunk_size()
        self.hits = 0
        self.misses = 0

    # -- fingerprints --------------------------------------------------------------------
    @property
    def settings_fingerprint(self) -> str:
        energy = self._energy.describe() if self._energy is not None else None
        return measurement_fingerprint(self.settings, self.hardware, energy)

    @property
    def cache_key(self) -> CacheKey:
        return CacheKey(self.model_fingerprint, self.data.fingerprint, self.settings_fingerprint)

    def provenance(self) -> dict[str, Any]:
        """Everything that makes these results valid, for study databases and front files."""
        from .models import model_spec

        try:
            spec = model_spec(self.model)
        except ConfigError:
            spec = {"name": type(self.model).__name__, "kwargs": {}}
        return {
            "model": {**spec, "fingerprint": self.model_fingerprint},
            "dataset": self.data.describe(),
            "hardware": self.hardware,
            "settings": asdict(self.settings),
            "settings_fingerprint": self.settings_fingerprint,
            "torch": torch.__version__,
            "threads": self.settings.threads,
            "batch_size": self.settings.batch_size,
            "chunk_images": self._chunk,
            "energy_source": self._energy.source if self._energy is not None else "unavailable",
            "device": str(self.device),
            "idle_power": self.idle_power.to_dict() if self.idle_power is not None else None,
        }

    # -- accuracy ------------------------------------------------------------------------
    def _chunk_size(self) -> int:
        # shapes do not depend on values: follow them on the meta device
        meta = copy.deepcopy(self.model).to("meta")
        parts = model_parts(meta)
        per_image = 0
        with torch.no_grad():
            h = parts.stem(torch.empty(1, *self.model.input_shape, device="meta"))
            largest = h.numel() * 4
            for _, unit in parts.units:
                h = unit.run(h, False)
                per_image += (size := h.numel() * 4)
                largest = max(largest, size)
        self.activation_bytes_per_image = per_image
        want = self.settings.eval_batch
        if want == "auto":
            if self.device.type == "cpu":
                # settings are resolved: threads is a number
                want = max(
                    MIN_AUTO_CHUNK, CHUNK_BYTES_PER_THREAD * self.settings.threads // largest
                )
            else:
                want = 256
        budget = self.settings.memory_mb * 2**20
        return int(max(1, min(want, budget // per_image)))

    def _prefix(
        self, split: str, states: tuple = ()
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Chunks of the split's labels and their activations after the stem and the locked
        prefix, its units in ``states`` (a locked unit may still depend on later bits)."""
        part = self._part(split)
        xs = list(torch.split(part.x, self._chunk))
        ys = [y.to(self.device) for y in torch.split(part.y, self._chunk)]
        if (split, states) in self._prefix_cache:
            return self._prefix_cache[split, states], ys
        out = []
        with torch.inference_mode():
            for x in xs:
                h = self._parts.stem(x.to(self.device))
                for unit, state in zip(self._units, states):
                    h = unit.run_state(h, state)
                out.append(h)
        size = sum(h.numel() * h.element_size() for h in out)
        kept = sum(h.numel() * h.element_size() for v in self._prefix_cache.values() for h in v)
        if kept + size <= self.settings.memory_mb * 2**20 / 2:
            self._prefix_cache[split, states] = out
        return out, ys

    def _part(self, split: str) -> Any:
        if split in self._subsets:
            return self._subsets[split]
        return getattr(self.data, split)

    def accuracy_many(
        self, masks: Sequence[Sequence[int] | str], split: str = "val"
    ) -> list[float]:
        """Top-1 accuracy of each mask on ``split``, computed as a prefix tree."""
        counts = self._correct_many(masks, split, per_image=False)
        n = len(self._part(split).y)
        return [c / n for c in counts]

    def correct_many(self, masks: Sequence[Sequence[int] | str], split: str = "val") -> np.ndarray:
        """Which images of ``split`` each mask classifies correctly: a boolean array of
        shape (masks, images), images in the split's order; the same prefix tree as
        :meth:`accuracy_many` (``correct_many(m).mean(1)`` is its accuracy)."""
        rows = self._correct_many(masks, split, per_image=True)
        return np.stack(rows) if rows else np.zeros((0, len(self._part(split).y)), dtype=bool)

    def _correct_many(
        self, masks: Sequence[Sequence[int] | str], split: str, *, per_image: bool
    ) -> list[Any]:
        if split not in ("val", "test") and split not in self._subsets:
            raise ConfigError(f"split={split!r}; accepted: 'val' (searched) or 'test' (reported)")
        bits = [self.space.validate(m) for m in masks]
        distinct = sorted(set(bits))
        # the tree branches on unit states (the skip bit, or more where a unit's output
        # depends on other bits too: ADN's skip-aware batch norms), which keeps it exact
        states = [self._parts.unit_states(m) for m in distinct]
        correct: list[Any] = [[] for _ in distinct] if per_image else [0] * len(distinct)
        start = self.space.locked_prefix
        by_prefix: dict[tuple, list[int]] = {}
        for i, s in enumerate(states):
            by_prefix.setdefault(s[:start], []).append(i)
        saved = get_mask(self.model)
        with torch_threads(self.settings.threads), torch.inference_mode():
            for key, idx in by_prefix.items():
                prefixes, ys = self._prefix(split, key)
                for h0, y in zip(prefixes, ys):
                    self._walk(start, h0, idx, states, y, correct, per_image)
        apply_mask(self.model, saved)
        if per_image:
            correct = [torch.cat(c).cpu().numpy() for c in correct]
        by_mask = dict(zip(distinct, correct))
        return [by_mask[m] for m in bits]

    def _walk(
        self,
        k: int,
        h: torch.Tensor,
        idx: list[int],
        states: list[tuple],
        y: torch.Tensor,
        correct: list[Any],
        per_image: bool = False,
    ) -> None:
        units = self._units
        n = len(units)
        while k < n:
            groups: dict[Any, list[int]] = {}
            for i in idx:
                groups.setdefault(states[i][k], []).append(i)
            *others, last = sorted(groups, key=repr)  # False (run) before True (skip)
            for state in others:
                h1 = units[k].run_state(h, state)
                self._walk(k + 1, h1, groups[state], states, y, correct, per_image)
            if not (last and self._skip_passes[k]):
                h = units[k].run_state(h, last)
            idx = groups[last]
            k += 1
        hit = self._parts.head(h).argmax(1) == y
        if per_image:  # one tensor, shared by the masks of this leaf
            for i in idx:
                correct[i].append(hit)
            return
        hits = int(hit.sum())
        for i in idx:
            correct[i] += hits

    def naive_accuracy(self, mask: Sequence[int] | str, split: str = "val") -> float:
        """Accuracy the plain way: apply the mask and run the whole split (for checks and benchmarks)."""
        part = getattr(self.data, split)
        saved = get_mask(self.model)
        apply_mask(self.model, self.space.validate(mask))
        hits = 0
        with torch_threads(self.settings.threads), torch.inference_mode():
            for x, y in zip(torch.split(part.x, self._chunk), torch.split(part.y, self._chunk)):
                hits += int((self.model(x.to(self.device)).argmax(1) == y.to(self.device)).sum())
        apply_mask(self.model, saved)
        return hits / len(part.y)

    def test_accuracy(self, masks: Sequence[Sequence[int] | str]) -> list[float]:
        """Accuracy on the test split: reported for front members after a search, never searched."""
        return self.accuracy_many(masks, split="test")

    # -- the rest ------------------------------------------------------------------------
    def _accuracy_metric(
        self, acc: float, n: int | None = None, source: str = "measured:validation"
    ) -> Metric:
        n = len(self.data.val.y) if n is None else n
        return Metric(acc, "fraction", source, math.sqrt(max(acc * (1 - acc), 0.0) / n))

    def _measured(self, mask: Mask) -> dict[str, Metric]:
        out: dict[str, Metric] = {}
        if self.settings.latency:
            lat = measure_latency(
                self.model,
                mask,
                batch_size=self.settings.batch_size,
                repeats=self.settings.repeats,
                warmup=self.settings.warmup,
                threads=self.settings.threads,
                benchmark=self.settings.cudnn_benchmark,
            )
            out["latency"] = Metric(lat.median, "s", "measured:wall-clock", lat.iqr)
            out["latency_ratio"] = Metric(lat.ratio, "ratio", "measured:interleaved", lat.ratio_iqr)
        if self._energy is not None:
            out["energy"] = self._measure_energy(mask)
        return out

    def _measure_energy(self, mask: Mask) -> Metric:
        x = torch.randn(
            self.settings.batch_size,
            *self.model.input_shape,
            generator=torch.Generator().manual_seed(0),
        ).to(self.device)
        device = self.device

        def workload() -> None:
            self.model(x)
            synchronize(device)  # the energy of this call lands in this window

        saved = get_mask(self.model)
        apply_mask(self.model, mask)
        try:
            with (
                measurement_lock(),
                torch_threads(self.settings.threads),
                cudnn_benchmark(self.settings.cudnn_benchmark if device.type == "cuda" else None),
                torch.inference_mode(),
            ):
                for _ in range(max(1, self.settings.warmup)):
                    workload()
                if self.idle_power is None:
                    # measured in this run, reported beside the energies, never subtracted
                    self.idle_power = self._energy.measure_idle(
                        min_seconds=max(self.settings.energy_seconds, 1e-3)
                    )
                reading = self._energy.measure(workload, min_seconds=self.settings.energy_seconds)
        finally:
            apply_mask(self.model, saved)
        return Metric(reading.joules, "J", reading.source, reading.spread, reading.reason)

    def _static(self, mask: Mask) -> dict[str, Metric]:
        return {
            "flops": Metric(float(self.costs.flops(mask)), "FLOPs", "counted:flop_counter"),
            "params": Metric(float(self.costs.params(mask)), "parameters", "counted:modules"),
        }

    def exact_costs(self, mask: Sequence[int] | str) -> dict[str, float]:
        """The counted costs of ``mask``: ``{"flops": ..., "params": ...}``."""
        return {k: m.value for k, m in self._static(self.space.validate(mask)).items()}

    def cached(self, masks: Iterable[Sequence[int] | str]) -> dict[str, Evaluation]:
        """The evaluations of ``masks`` the cache holds, by bitstring (``cache_hit=True``)."""
        if self.cache is None:
            return {}
        bits = {self.space.to_bitstring(m): self.space.validate(m) for m in masks}
        if not bits:
            return {}
        return {
            key: Evaluation(
                key,
                tuple(self.space.skipped_names(bits[key])),
                {k: Metric.from_dict(v) for k, v in metrics.items()},
                cache_hit=True,
            )
            for key, metrics in self.cache.get_many(self.cache_key, list(bits)).items()
        }

    # -- screening on a validation subset -------------------------------------------------
    def validation_subset(self, fraction: float, seed: int = 0) -> np.ndarray:
        """A stratified subset of the validation split: sorted positions in ``data.val``.

        Each class keeps ``round(fraction × its count)`` images (at least one), drawn with
        ``numpy.random.default_rng(seed)``: the same data, fraction and seed give the same
        subset.
        """
        if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
            raise ConfigError(f"screen_fraction={fraction!r}; accepted: a number in (0, 1)")
        y = self.data.val.y.cpu().numpy()
        rng = np.random.default_rng(seed)
        out = []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            take = max(1, int(round(fraction * len(idx))))
            out.append(rng.permutation(idx)[:take])
        return np.sort(np.concatenate(out)).astype(np.int64)

    def subset_cache_key(self, indices: np.ndarray) -> CacheKey:
        """The cache key of results on a validation subset: its data fingerprint is the
        hash of the split's fingerprint and the subset's positions, never the split's own,
        so a subset value can never be served as a full-split one."""
        digest = hashlib.sha256(
            (self.data.fingerprint + ":val-subset:" + ",".join(map(str, indices))).encode()
        ).hexdigest()
        return CacheKey(self.model_fingerprint, digest, self.settings_fingerprint)

    def subset_evaluate_many(
        self, masks: Iterable[Sequence[int] | str], indices: np.ndarray
    ) -> list[Evaluation]:
        """Accuracy on the validation images at ``indices`` (a low-fidelity value, its
        source ``measured:validation-subset``) with the exact FLOPs and parameters; cached
        under :meth:`subset_cache_key`.  Latency and energy are not measured."""
        indices = np.asarray(indices, dtype=np.int64)
        key = self.subset_cache_key(indices)
        name = self._subset_split(indices, key)
        bits = [self.space.validate(m) for m in masks]
        keys = [self.space.to_bitstring(b) for b in bits]
        found: dict[str, Evaluation] = {}
        if self.cache is not None and keys:
            for k, metrics in self.cache.get_many(key, list(dict.fromkeys(keys))).items():
                found[k] = Evaluation(
                    k,
                    tuple(self.space.skipped_names(k)),
                    {m: Metric.from_dict(v) for m, v in metrics.items()},
                    cache_hit=True,
                )
        todo = [b for b in dict.fromkeys(bits) if self.space.to_bitstring(b) not in found]
        if todo:
            t0 = time.perf_counter()
            accs = self.accuracy_many(todo, split=name)
            share = (time.perf_counter() - t0) / len(todo)
            for mask, acc in zip(todo, accs):
                ev = self.subset_evaluation(mask, acc, indices, share)
                if self.cache is not None:
                    metrics = {n: m.to_dict() for n, m in ev.metrics.items()}
                    self.cache.put(key, ev.mask, metrics, share)
                found[ev.mask] = ev
        return [found[k] for k in keys]

    def subset_evaluation(
        self,
        mask: Sequence[int] | str,
        accuracy: float,
        indices: np.ndarray,
        seconds: float = 0.0,
        *,
        source: str = "measured:validation-subset",
        spread: float | None = None,
    ) -> Evaluation:
        """The evaluation of ``mask`` from the validation images at ``indices``: accuracy
        ``accuracy`` (worked out by the caller: the subset accuracy, or with ``source`` and
        ``spread`` an estimate of the whole-split value and its standard error) and the
        exact FLOPs and parameters (not cached: :meth:`subset_evaluate_many` caches what it
        measures)."""
        bits = self.space.validate(mask)
        acc = self._accuracy_metric(accuracy, len(indices), source)
        if spread is not None:
            acc = replace(acc, spread=spread)
        metrics = {"accuracy": acc, **self._static(bits)}
        k = self.space.to_bitstring(bits)
        return Evaluation(k, tuple(self.space.skipped_names(bits)), metrics, False, seconds)

    def subset_correct_many(
        self, masks: Sequence[Sequence[int] | str], indices: np.ndarray
    ) -> np.ndarray:
        """:meth:`correct_many` on the validation images at ``indices`` (never cached)."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.correct_many(masks, self._subset_split(indices))

    def _subset_split(self, indices: np.ndarray, key: CacheKey | None = None) -> str:
        """The name of the split of the validation images at ``indices`` (made once)."""
        key = key or self.subset_cache_key(indices)
        name = f"val-subset:{key.data_fp[:16]}"
        if name not in self._subsets:
            val = self.data.val
            pos = torch.as_tensor(indices)
            self._subsets[name] = type(val)(
                val.x[pos], val.y[pos], np.asarray(val.indices)[indices]
            )
        return name

    def _whole_split_accuracy(
        self, masks: list[Mask], known: Mapping[str, tuple[np.ndarray, np.ndarray]]
    ) -> list[float]:
        """Validation accuracy of each mask, running only the images ``known`` lacks."""
        keys = [self.space.to_bitstring(m) for m in masks]
        groups: dict[bytes, list[int]] = {}
        for i, k in enumerate(keys):
            pos = known[k][0] if k in known else np.zeros(0, dtype=np.int64)
            groups.setdefault(np.asarray(pos, dtype=np.int64).tobytes(), []).append(i)
        n = len(self.data.val.y)
        out = [0.0] * len(masks)
        for raw, idx in groups.items():
            pos = np.frombuffer(raw, dtype=np.int64)
            group = [masks[i] for i in idx]
            if not len(pos):
                for i, acc in zip(idx, self.accuracy_many(group)):
                    out[i] = acc
                continue
            rest = np.setdiff1d(np.arange(n), pos)
            counts = (
                self._correct_many(group, self._subset_split(rest), per_image=False)
                if len(rest)
                else [0] * len(group)
            )
            for i, c in zip(idx, counts):
                row = np.asarray(known[keys[i]][1], dtype=bool)
                if row.shape != pos.shape:
                    raise ValueError(f"known correctness of {keys[i]}: {row.shape} vs {pos.shape}")
                out[i] = (c + int(row.sum())) / n
        return out

    def evaluate(self, mask: Sequence[int] | str) -> Evaluation:
        """Evaluate one mask (see :meth:`evaluate_many`)."""
        return self.evaluate_many([mask])[0]

    def evaluate_many(
        self,
        masks: Iterable[Sequence[int] | str],
        *,
        progress: bool = False,
        known: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> list[Evaluation]:
        """Evaluate masks, from the cache where possible; results in input order.

        ``known`` maps a mask's bitstring to ``(positions, correct)``: which of the
        validation images at ``positions`` it classifies correctly, measured already (by
        :meth:`subset_correct_many`, when it was screened).  Only the other images are run
        then; the accuracy is still that of the whole split, every image classified once
        under the mask (per-image results do not depend on the other images of a batch:
        :meth:`correct_many` on a subset equals the whole split's at those images).
        """
        bits = [self.space.validate(m) for m in masks]
        keys = [self.space.to_bitstring(b) for b in bits]
        found = self.cached(bits)
        todo = [b for b in dict.fromkeys(bits) if self.space.to_bitstring(b) not in found]
        self.hits += len(set(keys)) - len(todo)
        self.misses += len(todo)
        if todo:
            t0 = time.perf_counter()
            accs = self._whole_split_accuracy(todo, known or {})
            share = (time.perf_counter() - t0) / len(todo)
            bar = progress_bar(len(todo), progress)
            for mask, acc in zip(todo, accs):
                t1 = time.perf_counter()
                metrics = {
                    "accuracy": self._accuracy_metric(acc),
                    **self._static(mask),
                    **self._measured(mask),
                }
                seconds = share + time.perf_counter() - t1
                key = self.space.to_bitstring(mask)
                if self.cache is not None:
                    self.cache.put(
                        self.cache_key, key, {k: m.to_dict() for k, m in metrics.items()}, seconds
                    )
                found[key] = Evaluation(
                    key, tuple(self.space.skipped_names(mask)), metrics, False, seconds
                )
                bar.update(1)
            bar.close()
        return [found[k] for k in keys]
