"""How one metric is shown on an axis: scale, SI prefix and label, from the metric table."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..metrics import METRICS, direction_of

__all__ = ["Axis", "axis_for"]

_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))
_SUB = ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))


def _si_up(m: float) -> tuple[float, str]:
    for factor, prefix in _SI:
        if m >= factor:
            return factor, prefix
    return 1.0, ""


def _si_down(m: float) -> tuple[float, str]:
    for factor, prefix in _SUB:
        if m >= factor:
            return factor, prefix
    return _SUB[-1]


@dataclass(frozen=True)
class Axis:
    """How one metric is shown: ``shown = value * scale`` (or % of the full model)."""

    name: str
    label: str
    scale: float
    direction: str
    reference: float = math.nan  # the full model's value (raw)
    relative: bool = False

    def show(self, values: np.ndarray | float) -> np.ndarray:
        """Raw values as shown on this axis."""
        v = np.asarray(values, dtype=float)
        if self.relative:
            return v / self.reference * 100.0
        return v * self.scale

    @property
    def is_cost(self) -> bool:
        return self.direction == "minimize"


def axis_for(
    name: str,
    values: np.ndarray,
    *,
    reference: float = math.nan,
    sources: set[str] | frozenset[str] = frozenset(),
    batch: int | None = None,
    relative: bool = False,
) -> Axis:
    """The axis of metric ``name`` for these raw values (and the full model's, ``reference``).

    The label comes from the metric's :class:`~paretoskip.metrics.MetricSpec` (``axis``,
    ``scale``); ``sources`` are the metric's sources (an axis whose spec says
    ``source_in_label`` names the counter, or says ``estimated``); ``relative`` shows costs in
    % of the full model.

    Example:
        >>> axis_for("latency", np.array([0.004]), batch=32).label
        'Latency (ms per batch of 32)'
    """
    vals = np.asarray(values, dtype=float)
    finite = np.abs(vals[np.isfinite(vals)])
    if math.isfinite(reference):
        finite = np.append(finite, abs(reference))
    m = float(finite.max()) if len(finite) else 1.0
    direction = direction_of(name)
    spec = METRICS.get(name)
    estimated = any(s.startswith("estimated") for s in sources)
    measured = sorted(s.split(":", 1)[1] for s in sources if s.startswith("measured:"))
    if relative and not (spec and spec.is_fraction) and math.isfinite(reference):
        label = f"{spec.label if spec else name} (% of full model)"
        if spec and spec.source_in_label and estimated:
            label += "\n(estimated)"
        return Axis(name, label, 1.0, direction, reference, relative=True)
    if spec is None:
        return Axis(name, name, 1.0, direction, reference)
    if spec.scale == "percent":
        factor, prefix = 1.0, ""
    elif spec.scale == "si":
        factor, prefix = _si_up(m)
    elif spec.scale == "si-small":
        factor, prefix = _si_down(m)
    else:
        factor, prefix = 1.0, ""
    label = spec.axis.format(
        prefix=prefix,
        paren_prefix=f" ({prefix})" if prefix else "",
        per_batch=f"per batch of {batch}" if batch else "per batch",
    )
    if spec.source_in_label:
        if estimated:
            label += "\n(estimated)"
        elif measured:
            label += "\n(measured: " + ", ".join(measured).upper() + ")"
    scale = 100.0 if spec.scale == "percent" else 1.0 / factor
    return Axis(name, label, scale, direction, reference)
