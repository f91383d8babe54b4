"""Objectives and constraints of a search.

Objectives are metric names (:data:`paretoskip.evaluate.METRICS`): ``accuracy`` is
maximised, ``flops``, ``params``, ``latency`` and ``energy`` are minimised.  A constraint is
a small expression: ``"accuracy >= 0.95"``, ``"flops <= 0.5 * full"`` (relative to the full
model), ``"latency <= 0.002"``.  A constraint's value is ≤ 0 when it is satisfied (Optuna's
and pymoo's convention).

Example:
    >>> from paretoskip.objectives import Constraint
    >>> c = Constraint.parse("flops <= 0.5 * full")
    >>> c.bound({"flops": 100.0}), c.violation({"flops": 40.0}, {"flops": 100.0})
    (50.0, -10.0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .evaluate import METRIC_UNITS, METRICS

__all__ = ["Objective", "Constraint", "parse_objectives", "parse_constraints"]


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "maximize" | "minimize"
    unit: str

    @property
    def sign(self) -> float:
        """+1 for minimised, -1 for maximised: ``sign * value`` is always minimised."""
        return 1.0 if self.direction == "minimize" else -1.0

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "direction": self.direction, "unit": self.unit}


def parse_objectives(names: Iterable[str]) -> tuple[Objective, ...]:
    """Objectives from metric names, validated."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = list(names)
    if len(names) < 2:
        raise ConfigError(
            f"objectives={names}: a Pareto search needs at least two, e.g. ['accuracy', 'flops']"
        )
    bad = [n for n in names if n not in METRICS]
    if bad:
        raise ConfigError(f"unknown objective {bad[0]!r}; accepted: {', '.join(METRICS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives={names} names one twice")
    return tuple(Objective(n, METRICS[n], METRIC_UNITS[n]) for n in names)


_EXPR = re.compile(
    r"^\s*(?P<metric>[a-z_]+)\s*(?P<op><=|>=)\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
    r"(?:(?P<times>\*)\s*(?P<full>full))?\s*(?P<pct>%)?\s*$"
)


@dataclass(frozen=True)
class Constraint:
    """``metric <= bound`` or ``metric >= bound``; the bound may be relative to the full model."""

    metric: str
    op: str
    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> Constraint:
        m = _EXPR.match(text)
        if not m:
            raise ConfigError(
                f"malformed constraint {text!r}; write e.g. 'accuracy >= 0.95', 'flops <= 0.5 * full' "
                "or 'latency <= 50%' (relative to the full model)"
            )
        metric = m["metric"]
        if metric not in METRICS:
            raise ConfigError(
                f"constraint {text!r} names unknown metric {metric!r}; accepted: {', '.join(METRICS)}"
            )
        value = float(m["num"])
        relative = bool(m["full"]) or bool(m["pct"])
        if m["pct"]:
            if m["full"]:
                raise ConfigError(
                    f"malformed constraint {text!r}: use either '* full' or '%', not both"
                )
            value /= 100.0
        return cls(metric, m["op"], value, relative)

    def __str__(self) -> str:
        rhs = f"{self.value:g} * full" if self.relative else f"{self.value:g}"
        return f"{self.metric} {self.op} {rhs}"

    @property
    def key(self) -> str:
        return str(self)

    def bound(self, reference: Mapping[str, float]) -> float:
        """The absolute bound, given the full model's metrics."""
        return self.value * reference[self.metric] if self.relative else self.value

    def violation(self, metrics: Mapping[str, float], reference: Mapping[str, float]) -> float:
        """≤ 0 when satisfied; the amount by which it is missed otherwise."""
        v = metrics[self.metric]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise ConfigError(f"constraint '{self}' needs {self.metric}, which was not measured")
        b = self.bound(reference)
        return v - b if self.op == "<=" else b - v


def parse_constraints(items: Sequence[str | Constraint] | str | None) -> tuple[Constraint, ...]:
    if not items:
        return ()
    if isinstance(items, str):
        items = [items]
    return tuple(c if isinstance(c, Constraint) else Constraint.parse(c) for c in items)
