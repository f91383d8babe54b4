"""Honest accounting of a gated model over a split, and its results as a front *family*.

:func:`profile` runs a :class:`~paretoskip.dynamic.GatedModel` (or a
:class:`~paretoskip.dynamic.DualModel`) over a split and reports, per input, its exact FLOPs
(gates included) and configuration: mean, standard deviation and percentiles of the FLOPs,
the number of distinct configurations, units executed, inner channels kept and, under a
budget, the share of inputs the dual mode capped.

:func:`dynamic_family` turns a sweep (over compute targets, or budgets) into a JSON-able
*family* of (mean FLOPs, accuracy, spread, …) points that a front file can carry beside the
static front.  Its costs are **means per input**, labelled so (``cost_basis``), never to be
read as the cost of one configuration.

Example:
    >>> import paretoskip
    >>> from paretoskip.data import load_dataset
    >>> from paretoskip.dynamic import GatedModel, profile
    >>> data = load_dataset("digits", limit=120)
    >>> bb = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    >>> p = profile(GatedModel(bb, mode="layer"), data.val, split_name="val")
    >>> p.n, p.distinct_configurations, p.flops_std
    (24, 1, 0.0)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ._model import CAPPED_PREFIX, CAPPED_STATIC, GatedModel

__all__ = ["DynamicProfile", "profile", "dynamic_family", "PERCENTILES", "FAMILY_KINDS"]

#: Percentiles of the per-input FLOPs reported.
PERCENTILES: tuple[int, ...] = (0, 5, 25, 50, 75, 95, 100)
#: Kinds of families a front file may carry.
FAMILY_KINDS: tuple[str, ...] = ("static", "dynamic", "dual")


@dataclass(frozen=True, eq=False)
class DynamicProfile:
    """Per-input results of a gated model on one split.

    Attributes:
        split: the split's name (``"val"``, ``"test"``).
        accuracy: top-1 accuracy.
        flops: exact FLOPs of every input (gates included), int64.
        full_flops: the full backbone's FLOPs (no gates), the reference of fractions.
        units_run: units executed per input.
        kept_fraction: per input, inner channels computed / inner channels of the units run.
        capped: per input 0 (not), 1 (static), 2 (halted); all 0 without a budget.
        budget: the dual mode's FLOPs budget, or ``None``.
        configurations: how many inputs used each distinct configuration.
    """

    split: str
    accuracy: float
    flops: np.ndarray
    full_flops: int
    units_run: np.ndarray
    kept_fraction: np.ndarray
    capped: np.ndarray
    budget: int | None
    configurations: Counter = field(repr=False)

    @property
    def n(self) -> int:
        return int(self.flops.shape[0])

    @property
    def flops_mean(self) -> float:
        return float(self.flops.mean()) if self.n else float("nan")

    @property
    def flops_std(self) -> float:
        """Population standard deviation over the inputs (ddof = 0)."""
        return float(self.flops.std()) if self.n else float("nan")

    @property
    def distinct_configurations(self) -> int:
        return len(self.configurations)

    def percentiles(self) -> dict[str, float]:
        if not self.n:
            return {str(p): float("nan") for p in PERCENTILES}
        values = np.percentile(self.flops.astype(np.float64), PERCENTILES)
        return {str(p): float(v) for p, v in zip(PERCENTILES, values)}

    def to_dict(self, top: int = 5) -> dict[str, Any]:
        """JSON-able summary (the most used configurations: ``top`` of them)."""
        n = max(self.n, 1)
        return {
            "split": self.split,
            "n": self.n,
            "accuracy": self.accuracy,
            "flops": {
                "mean": self.flops_mean,
                "std": self.flops_std,
                "min": int(self.flops.min()) if self.n else None,
                "max": int(self.flops.max()) if self.n else None,
                "percentiles": self.percentiles(),
                "mean_fraction_of_full": self.flops_mean / self.full_flops,
                "unit": "FLOPs per input (2 × MACs), gates included",
                "source": "counted:flop-counter",
            },
            "full_flops": self.full_flops,
            "units_run": {"mean": float(self.units_run.mean()), "std": float(self.units_run.std())},
            "kept_channel_fraction": float(np.nanmean(self.kept_fraction))
            if self.n and not np.isnan(self.kept_fraction).all()
            else None,
            "distinct_configurations": self.distinct_configurations,
            "most_used_configurations": [
                {"configuration": c, "inputs": k} for c, k in self.configurations.most_common(top)
            ],
            "budget": self.budget,
            "capped_share": float((self.capped > 0).sum() / n),
            "capped_static_share": float((self.capped == CAPPED_STATIC).sum() / n),
            "capped_prefix_share": float((self.capped == CAPPED_PREFIX).sum() / n),
        }


def profile(
    model: Any,
    split: Any,
    *,
    batch_size: int = 256,
    split_name: str = "test",
) -> DynamicProfile:
    """Run ``model`` (a GatedModel or DualModel, in eval mode) over ``split`` and account.

    Args:
        model: anything with ``run(x) -> GatedOutput`` whose gated model is reachable
            (:class:`~paretoskip.dynamic.GatedModel` or :class:`~paretoskip.dynamic.DualModel`).
        split: a :class:`~paretoskip.data.Split` (``x``, ``y``).
        batch_size: inputs per call (the results do not depend on it; see the tests).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is not accepted; give an integer >= 1")
    gated = model if isinstance(model, GatedModel) else getattr(model, "gated", None)
    if not isinstance(gated, GatedModel):
        raise ConfigError(f"profile needs a GatedModel or DualModel, not {type(model).__name__}")
    inner = torch.tensor([lay.inner_channels for lay in gated.layouts], dtype=torch.float64)
    device = next((p.device for p in gated.parameters()), torch.device("cpu"))
    was = gated.training
    model.eval()
    flops, units_run, kept, capped, configs = [], [], [], [], Counter()
    correct = 0
    try:
        for start in range(0, len(split), batch_size):
            xb = split.x[start : start + batch_size].to(device)
            yb = split.y[start : start + batch_size].to(device)
            out = model.run(xb)
            correct += int((out.logits.argmax(1) == yb).sum())
            flops.append(out.flops.cpu())
            run = ~out.skipped.cpu()
            units_run.append(run.sum(1))
            denom = (run.double() * inner).sum(1)
            kept.append(out.kept.cpu().double().sum(1) / denom)
            capped.append(out.capped.cpu())
            configs.update(out.configurations())
    finally:
        gated.train(was)
    cat = lambda xs, dt: torch.cat(xs).numpy() if xs else np.zeros(0, dtype=dt)  # noqa: E731
    budget = getattr(model, "budget", None)
    return DynamicProfile(
        split=split_name,
        accuracy=correct / len(split) if len(split) else float("nan"),
        flops=cat(flops, np.int64),
        full_flops=gated.costs.full,
        units_run=cat(units_run, np.int64),
        kept_fraction=cat(kept, np.float64),
        capped=cat(capped, np.int8),
        budget=int(budget) if budget is not None else None,
        configurations=configs,
    )


def _as_dict(p: Any) -> dict[str, Any] | None:
    if p is None:
        return None
    if isinstance(p, DynamicProfile):
        return p.to_dict()
    if isinstance(p, Mapping):
        return dict(p)
    raise ConfigError(f"a family point's profile must be a DynamicProfile or dict, not {p!r}")


def _nondominated(acc: Sequence[float], cost: Sequence[float]) -> list[bool]:
    out = []
    for i, (a, c) in enumerate(zip(acc, cost)):
        dominated = any(
            (a2 >= a and c2 <= c) and (a2 > a or c2 < c)
            for j, (a2, c2) in enumerate(zip(acc, cost))
            if j != i
        )
        out.append(not dominated)
    return out


def dynamic_family(
    points: Sequence[Mapping[str, Any]],
    *,
    name: str,
    label: str,
    kind: str = "dynamic",
    method: Mapping[str, Any] | None = None,
    sweep: str = "target",
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A sweep of a gated (or dual) model as a JSON-able front family.

    Args:
        points: one mapping per operating point: the swept value under ``sweep``
            (``"target"`` or ``"budget"``), ``"val"`` (the selection split's
            :class:`DynamicProfile` or its ``to_dict()``), optionally ``"test"``, and any
            extra JSON-able keys (``checkpoint``, ``train_seconds``, …) copied as they are.
        name: the family's key (``"lc-gated"``).
        label: what a plot legend says.
        kind: ``"dynamic"`` or ``"dual"`` (``"static"`` is the search's own front).
        method: how the points were made (gate style, mode, …), JSON-able.
        sweep: the name of the swept parameter.
        provenance: where the points come from, JSON-able; ``weights_fingerprint`` (of the
            backbone, :func:`paretoskip.checkpoint.weights_fingerprint`) lets a study refuse a
            family made from other weights (:meth:`paretoskip.study.StudyDB.set_family`).

    Members are sorted by mean FLOPs; ``strict`` marks those non-dominated within the family
    on (validation accuracy, mean FLOPs).

    Example:
        >>> fam = dynamic_family(
        ...     [{"target": 0.5, "val": {"accuracy": 0.9, "n": 10, "flops": {"mean": 50.0,
        ...       "std": 5.0}}}], name="layer-gated", label="layer gates")
        >>> fam["cost_basis"], fam["members"][0]["metrics"]["flops"]["value"]
        ('mean_per_input', 50.0)
    """
    if kind not in ("dynamic", "dual"):
        raise ConfigError(f"kind={kind!r} is not accepted; accepted: 'dynamic', 'dual'")
    if not points:
        raise ConfigError("a family needs at least one point")
    members = []
    for i, pt in enumerate(points):
        val = _as_dict(pt.get("val"))
        if val is None or "accuracy" not in val or "flops" not in val:
            raise ConfigError(f"family point [{i}] has no 'val' profile with accuracy and flops")
        test = _as_dict(pt.get("test"))
        f = val["flops"]
        flops_metric = {
            "value": f["mean"],
            "spread": f.get("std"),
            "spread_kind": "std over inputs",
            "unit": "FLOPs",
            "basis": "mean_per_input",
            "source": "counted:flop-counter",
            "std": f.get("std"),
            "min": f.get("min"),
            "max": f.get("max"),
            "percentiles": f.get("percentiles"),
        }
        member = {
            sweep: pt.get(sweep),
            "metrics": {
                "accuracy": {
                    "value": val["accuracy"],
                    "unit": "fraction",
                    "source": f"measured:{val.get('split', 'val')}",
                },
                "flops": flops_metric,
            },
            "test_accuracy": test["accuracy"] if test else None,
            "test_flops": test["flops"] if test else None,
            "distinct_configurations": (test or val).get("distinct_configurations"),
            "units_run": (test or val).get("units_run"),
            "kept_channel_fraction": (test or val).get("kept_channel_fraction"),
            "budget": val.get("budget"),
            "capped_share": (test or val).get("capped_share") if val.get("budget") else None,
        }
        for key, value in pt.items():
            if key not in (sweep, "val", "test"):
                member[key] = value
        members.append(member)
    members.sort(key=lambda m: m["metrics"]["flops"]["value"])
    strict = _nondominated(
        [m["metrics"]["accuracy"]["value"] for m in members],
        [m["metrics"]["flops"]["value"] for m in members],
    )
    for m, s in zip(members, strict):
        m["strict"] = s
    return {
        "name": name,
        "label": label,
        "kind": kind,
        "method": dict(method or {}),
        "cost_basis": "mean_per_input",
        "cost_note": (
            "each member's FLOPs are the mean over the inputs of the split of every input's "
            "exact FLOPs (FlopCounterMode, 2 x MACs), gate networks included; spread = "
            "standard deviation over the inputs. Not the cost of one configuration."
            + (" Under a hard budget no input exceeds it (see max)." if kind == "dual" else "")
        ),
        "selection_split": "val",
        "sweep": {"parameter": sweep, "values": [m[sweep] for m in members]},
        "objectives": [
            {"name": "accuracy", "direction": "maximize", "unit": "fraction"},
            {"name": "flops", "direction": "minimize", "unit": "FLOPs"},
        ],
        "members": members,
        **({"provenance": dict(provenance)} if provenance else {}),
    }
