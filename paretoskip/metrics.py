"""Every metric paretoskip knows, in one table, plus objectives and constraints.

A :class:`MetricSpec` says what a metric is (direction, unit), what it needs measured
(:class:`Needs`: a :class:`~paretoskip.MeasureSettings` field that must be switched on),
whether a search may optimise or constrain it, whether it can be a run-time budget
(``AdaptiveModel.select``, ``paretoskip select --<name>``), and how a plot axis shows it.
Study-file validation, the search, the plots, the command line, the run-time selector and
the front file all read :data:`METRICS`; none keeps a list of its own.  This module imports
neither torch nor SQLAlchemy nor Optuna.

Adding a metric: one :class:`MetricSpec` row here, and the code that measures it (the
evaluator, :mod:`paretoskip.evaluate`; with its :class:`~paretoskip.MeasureSettings`
switch when it needs one).

Objectives are metric names: ``accuracy`` is maximised, ``flops``, ``params``, ``latency``
and ``energy`` are minimised.  A constraint is a small expression: ``"accuracy >= 0.95"``,
``"flops <= 0.5 * full"`` (relative to the full model), ``"latency <= 0.002"``.  A
constraint's value is ≤ 0 when it is satisfied (Optuna's and pymoo's convention).

Example:
    >>> from paretoskip.metrics import METRICS, Constraint, parse_objectives
    >>> METRICS["flops"].direction, METRICS["flops"].unit
    ('minimize', 'FLOPs')
    >>> [o.name for o in parse_objectives("accuracy, flops")]
    ['accuracy', 'flops']
    >>> c = Constraint.parse("flops <= 0.5 * full")
    >>> c.bound({"flops": 100.0}), c.violation({"flops": 40.0}, {"flops": 100.0})
    (50.0, -10.0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = [
    "MetricSpec",
    "Needs",
    "METRICS",
    "metric",
    "direction_of",
    "objective_names",
    "budget_names",
    "Objective",
    "Constraint",
    "parse_objectives",
    "parse_constraints",
]


@dataclass(frozen=True)
class Needs:
    """A measurement setting a metric needs: ``MeasureSettings.<setting>`` must not be ``off``.

    ``example`` is a value that switches it on (shown in error messages).
    """

    setting: str
    off: Any
    example: Any

    def met_by(self, settings: Any) -> bool:
        """Whether ``settings`` (a :class:`~paretoskip.MeasureSettings`) measure the metric."""
        return getattr(settings, self.setting) != self.off


@dataclass(frozen=True)
class MetricSpec:
    """What paretoskip knows about one metric.

    Attributes:
        name: the key in evaluations, study trials and front files.
        direction: ``"maximize"`` or ``"minimize"``.
        unit: unit of the raw value (``fraction``, ``FLOPs``, ``s``, ``J``, ...).
        objective: a search may optimise or constrain it.
        budget: it can be a run-time budget (``select(<name>=...)``, ``--<name>``).
        needs: the measurement setting it needs (None: always measured).
        budget_help: what a bound on it means, for ``paretoskip select --help``.
        label: its name in a sentence or a relative axis (``"FLOPs"``, ``"Latency"``).
        axis: the plot axis label; ``{prefix}`` is the SI prefix of the shown values,
            ``{paren_prefix}`` the same in parentheses (or nothing), ``{per_batch}``
            ``per batch of <batch size>``.
        scale: how values are shown: ``"percent"`` (× 100, never relative), ``"si"``
            (k, M, G, T), ``"si-small"`` (m, µ, n) or ``"fixed"``.
        source_in_label: the axis says where the numbers come from (measured by which
            counter, or estimated).
    """

    name: str
    direction: str
    unit: str
    objective: bool = False
    budget: bool = False
    needs: Needs | None = None
    budget_help: str = ""
    label: str = ""
    axis: str = ""
    scale: str = "fixed"
    source_in_label: bool = False

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"metric {self.name!r}: direction {self.direction!r}")
        if self.scale not in ("percent", "si", "si-small", "fixed"):
            raise ConfigError(f"metric {self.name!r}: scale {self.scale!r}")

    @property
    def is_cost(self) -> bool:
        """Minimised (shown against accuracy, relative to the full model)."""
        return self.direction == "minimize"

    @property
    def is_fraction(self) -> bool:
        """A fraction such as an accuracy: printed as is, never relative to the full model."""
        return self.scale == "percent"


_LATENCY = Needs("latency", off=False, example=True)
_ENERGY = Needs("energy", off="none", example="auto")

#: Every metric, in the order tables, flags and plots list them.
METRICS: Mapping[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec(
            "accuracy",
            "maximize",
            "fraction",
            objective=True,
            budget=True,
            budget_help="lowest accuracy, e.g. 0.95 or 99%",
            label="Accuracy",
            axis="Validation accuracy (%)",
            scale="percent",
        ),
        MetricSpec(
            "flops",
            "minimize",
            "FLOPs",
            objective=True,
            budget=True,
            budget_help="FLOPs per image, e.g. 2e6 or 50%",
            label="FLOPs",
            axis="Compute ({prefix}FLOPs per image)",
            scale="si",
        ),
        MetricSpec(
            "params",
            "minimize",
            "parameters",
            objective=True,
            budget=True,
            budget_help="parameters, e.g. 50%",
            label="Parameters",
            axis="Parameters{paren_prefix}",
            scale="si",
        ),
        MetricSpec(
            "latency",
            "minimize",
            "s",
            objective=True,
            budget=True,
            needs=_LATENCY,
            budget_help="seconds per batch, e.g. 0.002 or 60%",
            label="Latency",
            axis="Latency ({prefix}s {per_batch})",
            scale="si-small",
        ),
        MetricSpec(
            "latency_ratio",
            "minimize",
            "ratio",
            needs=_LATENCY,
            label="latency_ratio",
            axis="Latency (× full model)",
        ),
        MetricSpec(
            "energy",
            "minimize",
            "J",
            objective=True,
            budget=True,
            needs=_ENERGY,
            budget_help="joules per batch, e.g. 0.5 or 70%",
            label="Energy",
            axis="Energy ({prefix}J {per_batch})",
            scale="si-small",
            source_in_label=True,
        ),
        MetricSpec(
            "test_accuracy",
            "maximize",
            "fraction",
            label="Test accuracy",
            axis="Test accuracy (%)",
            scale="percent",
        ),
    )
}


def metric(name: str) -> MetricSpec:
    """The spec of a metric; :class:`~paretoskip.errors.ConfigError` for an unknown name.

    Example:
        >>> metric("latency").needs.setting
        'latency'
    """
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; accepted: {', '.join(METRICS)}") from None


def direction_of(name: str) -> str:
    """``"maximize"`` or ``"minimize"``; a metric paretoskip does not know is minimised."""
    spec = METRICS.get(name)
    return spec.direction if spec is not None else "minimize"


def objective_names() -> tuple[str, ...]:
    """Metrics an objective or a constraint may name."""
    return tuple(n for n, s in METRICS.items() if s.objective)


def budget_names() -> tuple[str, ...]:
    """Metrics with a run-time budget flag of their own (``paretoskip select --<name>``)."""
    return tuple(n for n, s in METRICS.items() if s.budget)


# --------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Objective:
    """One objective of a search: a metric name, its direction and unit."""

    name: str
    direction: str  # "maximize" | "minimize"
    unit: str

    @property
    def sign(self) -> float:
        """+1 for minimised, -1 for maximised: ``sign * value`` is always minimised."""
        return 1.0 if self.direction == "minimize" else -1.0

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "direction": self.direction, "unit": self.unit}


def parse_objectives(names: Iterable[str] | str) -> tuple[Objective, ...]:
    """Objectives from metric names (a list, or one comma-separated string), validated."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = list(names)
    if len(names) < 2:
        raise ConfigError(
            f"objectives={names}: a Pareto search needs at least two, e.g. ['accuracy', 'flops']"
        )
    accepted = objective_names()
    bad = [n for n in names if n not in accepted]
    if bad:
        raise ConfigError(f"unknown objective {bad[0]!r}; accepted: {', '.join(accepted)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives={names} names one twice")
    return tuple(Objective(n, METRICS[n].direction, METRICS[n].unit) for n in names)


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
        """A constraint from its text (see the module docstring)."""
        m = _EXPR.match(text)
        if not m:
            raise ConfigError(
                f"malformed constraint {text!r}; write e.g. 'accuracy >= 0.95', 'flops <= 0.5 * full' "
                "or 'latency <= 50%' (relative to the full model)"
            )
        name = m["metric"]
        accepted = objective_names()
        if name not in accepted:
            raise ConfigError(
                f"constraint {text!r} names unknown metric {name!r}; accepted: {', '.join(accepted)}"
            )
        value = float(m["num"])
        relative = bool(m["full"]) or bool(m["pct"])
        if m["pct"]:
            if m["full"]:
                raise ConfigError(
                    f"malformed constraint {text!r}: use either '* full' or '%', not both"
                )
            value /= 100.0
        return cls(name, m["op"], value, relative)

    def __str__(self) -> str:
        rhs = f"{self.value:g} * full" if self.relative else f"{self.value:g}"
        return f"{self.metric} {self.op} {rhs}"

    @property
    def key(self) -> str:
        """The name of the constraint in a study trial (its text)."""
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
    """Constraints from their texts (or :class:`Constraint` objects), validated."""
    if not items:
        return ()
    if isinstance(items, str):
        items = [items]
    return tuple(c if isinstance(c, Constraint) else Constraint.parse(c) for c in items)
