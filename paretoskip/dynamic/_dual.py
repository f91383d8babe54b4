"""Dual mode (DDI style): per-input gating under a hard FLOPs budget that every input meets.

:class:`DualModel` runs a :class:`~paretoskip.dynamic.GatedModel` under a budget ``B`` FLOPs
per input.  It keeps, for every input, the FLOPs already spent and checks before each unit
that the gated decision *and the cheapest way to finish* (skipping every remaining unit, no
further heads) still fit: ``spent + cost(decision) + Σ skip(rest) ≤ B``; for block gates also
before paying a head.  When the check fails the input is *capped* at that unit and its
remaining units follow a static configuration instead:

* ``fallback="static"``: the most accurate static configuration (given as a front file's
  members or ``(mask, accuracy, flops)`` triples) whose remaining units fit what is left of
  the budget; with an up-front policy (``gate="policy"``), whose whole plan and cost are
  known before the first unit, a plan over budget is replaced by the most accurate static
  configuration within ``B`` minus the policy's cost from the start;
* ``fallback="prefix"`` (and whenever no static configuration fits): *halting*, the gated
  decisions so far are kept and every remaining unit is skipped.

Since skipping the rest always fits (the check guarantees it one unit ahead), no input ever
exceeds ``B``; the budget must be at least the cheapest path (every unit skipped, no head),
else :class:`~paretoskip.errors.BudgetError`.  The share of capped inputs is reported by
:func:`~paretoskip.dynamic.profile`.

Accuracy ranks static configurations; give the validation accuracy (what the search saw),
never the test accuracy.  A static configuration's FLOPs are recounted with the gated model's
own cost table and must equal the given ones (a front of another model or input size is
refused).

Example:
    >>> import torch, paretoskip
    >>> from paretoskip.dynamic import DualModel, GatedModel
    >>> bb = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    >>> gated = GatedModel(bb, mode="layer").eval()
    >>> dual = DualModel(gated, "60%", fallback="prefix")
    >>> out = dual.run(torch.randn(3, 1, 8, 8))
    >>> bool((out.flops <= dual.budget).all()), out.capped.tolist()
    (True, [2, 2, 2])
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BudgetError, ConfigError, MaskError
from ..models import mask_bits
from ._model import Budget, GatedModel, GatedOutput

__all__ = ["DualModel", "StaticConfig", "static_configurations", "FALLBACKS", "parse_budget"]

#: What replaces a gated decision that would exceed the budget.
FALLBACKS: tuple[str, ...] = ("static", "prefix")


@dataclass(frozen=True)
class StaticConfig:
    """One static configuration of the backbone: skip mask, accuracy (validation), FLOPs."""

    mask: str
    accuracy: float
    flops: int


def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def parse_budget(budget: Any, full: int) -> int:
    """A FLOPs budget per input: a number, or a percentage of ``full`` such as ``"50%"``.

    Example:
        >>> parse_budget("50%", 1000), parse_budget(420, 1000)
        (500, 420)
    """
    if isinstance(budget, str) and budget.strip().endswith("%"):
        try:
            pct = float(budget.strip()[:-1])
        except ValueError:
            pct = math.nan
        if math.isfinite(pct) and pct > 0:
            return int(math.floor(pct / 100.0 * full))
    elif _number(budget) and budget > 0:
        return int(math.floor(budget))
    raise ConfigError(
        f"budget={budget!r} is not accepted; give FLOPs per input (a number > 0) or a "
        f"percentage of the full model's {full} FLOPs, such as '50%'"
    )


def _metric(entry: Any) -> Any:
    return entry.get("value") if isinstance(entry, Mapping) else entry


def _from_front(doc: Mapping[str, Any], where: str) -> tuple[list[StaticConfig], list[str] | None]:
    members = doc.get("members")
    if not isinstance(members, list) or not members:
        raise ConfigError(f"front {where}: no 'members' list to take static configurations from")
    out = []
    for i, m in enumerate(members):
        metrics = m.get("metrics", {}) if isinstance(m, Mapping) else {}
        acc, flops = _metric(metrics.get("accuracy")), _metric(metrics.get("flops"))
        if not isinstance(m, Mapping) or not isinstance(m.get("mask"), str):
            raise ConfigError(f"front {where}: members[{i}] has no 'mask' bitstring")
        if not _number(acc) or not _number(flops):
            raise ConfigError(
                f"front {where}: members[{i}] lacks a numeric metrics.accuracy and metrics.flops "
                f"(got {acc!r}, {flops!r})"
            )
        out.append(StaticConfig(m["mask"], float(acc), int(flops)))
    units = doc.get("space", {}).get("units") if isinstance(doc.get("space"), Mapping) else None
    return out, (list(units) if isinstance(units, list) else None)


def static_configurations(
    source: str | os.PathLike | Mapping[str, Any] | Sequence[Any],
) -> tuple[list[StaticConfig], list[str] | None]:
    """Static configurations from a front file (path or document) or a list.

    A list holds ``(mask, accuracy, flops)`` triples, or mappings with those keys.  Returns
    the configurations and, for a front, the unit names it was made for (else ``None``).

    Example:
        >>> cfgs, units = static_configurations([("0000", 0.9, 100), ("0101", 0.8, 60)])
        >>> [c.mask for c in cfgs], units
        (['0000', '0101'], None)
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"front file {str(path)!r} does not exist") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"front file {str(path)!r} cannot be read as JSON: {exc}") from None
        return _from_front(doc, f"file {str(path)!r}")
    if isinstance(source, Mapping):
        return _from_front(source, "<dict>")
    out = []
    for i, item in enumerate(source):
        if isinstance(item, Mapping):
            item = (item.get("mask"), item.get("accuracy"), item.get("flops"))
        if (
            not isinstance(item, (tuple, list))
            or len(item) != 3
            or not isinstance(item[0], str)
            or not _number(item[1])
            or not _number(item[2])
        ):
            raise ConfigError(
                f"static configuration [{i}] = {item!r} is not accepted; give (mask bitstring, "
                "accuracy, flops)"
            )
        out.append(StaticConfig(item[0], float(item[1]), int(item[2])))
    return out, None


class DualModel(nn.Module):
    """A gated model that never exceeds a FLOPs budget per input (see the module docstring).

    Args:
        gated: the trained :class:`~paretoskip.dynamic.GatedModel` (not copied).
        budget: FLOPs per input, or a percentage of the full backbone's (``"50%"``).
        static: static configurations for ``fallback="static"``: a front file path or
            document, or a list of ``(mask, accuracy, flops)``.
        fallback: ``"static"`` (default when ``static`` is given) or ``"prefix"``.
    """

    def __init__(
        self,
        gated: GatedModel,
        budget: float | int | str,
        *,
        static: Any = None,
        fallback: str | None = None,
    ):
        super().__init__()
        if not isinstance(gated, GatedModel):
            raise ConfigError(f"DualModel needs a GatedModel, not {type(gated).__name__}")
        fallback = fallback or ("static" if static is not None else "prefix")
        if fallback not in FALLBACKS:
            raise ConfigError(
                f"fallback={fallback!r} is not accepted; accepted: {', '.join(FALLBACKS)}"
            )
        if fallback == "static" and static is None:
            raise ConfigError(
                "fallback='static' needs static configurations: a front file, or a list of "
                "(mask, accuracy, flops)"
            )
        self.gated = gated
        costs = gated.costs
        self.budget = parse_budget(budget, costs.full)
        if self.budget < costs.minimum:
            raise BudgetError(
                f"budget={budget!r} ({self.budget} FLOPs) is below the cheapest path of this "
                f"gated model ({costs.minimum} FLOPs: stem, head"
                f"{', policy network' if costs.policy else ''} and every unit skipped); "
                f"accepted: budgets >= {costs.minimum} FLOPs "
                f"({100.0 * costs.minimum / costs.full:.1f}% of the full model)"
            )
        self.fallback = fallback
        names = list(gated.unit_names)
        configs: list[StaticConfig] = []
        if static is not None:
            configs, front_units = static_configurations(static)
            if front_units is not None and front_units != names:
                raise ConfigError(
                    f"the static configurations were made for units {front_units}, but the "
                    f"gated model has {names}"
                )
            for cfg in configs:
                try:
                    bits = mask_bits(cfg.mask, len(names))
                except MaskError as exc:
                    raise ConfigError(f"static configuration {cfg.mask!r}: {exc}") from None
                counted = costs.static(bits)
                if counted != cfg.flops:
                    raise ConfigError(
                        f"static configuration {cfg.mask!r} is said to cost {cfg.flops} FLOPs, "
                        f"but this model counts {counted}: it belongs to another model or "
                        "input size"
                    )
        configs = sorted(configs, key=lambda c: (-c.accuracy, c.flops, c.mask))
        self.static = tuple(configs)
        bits = torch.tensor(
            [mask_bits(c.mask, len(names)) for c in configs], dtype=torch.bool
        ).reshape(len(configs), len(names))
        per_unit = torch.where(
            bits,
            torch.tensor(costs.skip, dtype=torch.long),
            torch.tensor([r[-1] for r in costs.run], dtype=torch.long),
        )
        suffix = torch.zeros(len(configs), len(names) + 1, dtype=torch.long)
        if len(configs):
            suffix[:, :-1] = per_unit.flip(1).cumsum(1).flip(1)
        self._budget = Budget(self.budget, fallback, bits, suffix)

    def train(self, mode: bool = True) -> DualModel:
        """The dual mode is for inference; the gated model stays in eval mode."""
        self.training = False
        self.gated.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x).logits

    def run(self, x: torch.Tensor) -> GatedOutput:
        """Grouped execution of the gated model under the budget (see the module docstring)."""
        self.gated.eval()
        return self.gated.run(x, budget=self._budget)

    def extra_repr(self) -> str:
        return f"budget={self.budget}, fallback={self.fallback!r}, static={len(self.static)}"
