"""Switch one model between the configurations of a front file at run time.

:class:`AdaptiveModel` wraps a skippable model and the front file the search wrote for it.
``select(flops=..., latency=..., accuracy=...)`` picks the most accurate front member that
fits every bound and applies it; ``apply(i)`` applies a member directly.  Switching is one
loop over precomputed ``(unit, flag)`` pairs setting plain bool attributes: no module
lookup, no allocation, no tensor copy, and the forward pass reads each flag once.

Budgets
-------
``select(**budgets)`` takes one keyword per metric of the front (``accuracy``, ``flops``,
``params``, ``latency``, ``energy``, ...):

* a **number** is an absolute bound in the metric's own unit (FLOPs, seconds per batch,
  joules, fraction): ``select(flops=1e6, latency=0.002)``;
* a **string ending in "%"** is relative to the full model (the front's ``reference``
  metrics): ``select(flops="50%")`` means at most half of the full model's FLOPs,
  ``select(latency="60%")`` at most 60 % of its measured latency (relative latency survives
  machine drift better than absolute), ``select(accuracy="99%")`` at least 99 % of the full
  model's accuracy.

Minimised metrics (everything except accuracy, unless the front's objectives say otherwise)
get an upper bound, maximised ones (``accuracy``) a lower bound.  Comparisons allow a
relative slack of 1e-9 so that a relative bound is not lost to rounding.  A member whose
value of a budgeted metric is null is treated as not fitting that bound.

Hysteresis
----------
With ``hysteresis=h``, while the current member still fits the new budgets it is kept unless
the best fitting member is more accurate by more than ``h`` (absolute accuracy, e.g. 0.005
for half a point).  When the current member no longer fits, the best fitting member is
applied at once.  ``h = 0`` (the default) still keeps the current member on an accuracy tie.

The front file is read and checked by :mod:`paretoskip.frontfile` (as for
:class:`paretoskip.Front`); a dict already loaded is checked the same way.

Example:
    >>> import torch, paretoskip
    >>> from paretoskip.runtime import AdaptiveModel
    >>> model = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    >>> units = [n for n, _ in paretoskip.models.skippable_units(model)]
    >>> def member(mask, acc, flops):
    ...     return {"mask": mask, "metrics": {"accuracy": {"value": acc}, "flops": {"value": flops}}}
    >>> front = {"schema_version": 1, "space": {"units": units},
    ...          "objectives": [{"name": "accuracy", "direction": "maximize"},
    ...                         {"name": "flops", "direction": "minimize"}],
    ...          "reference": {"metrics": {"accuracy": 0.97, "flops": 5e6}},
    ...          "members": [member("000000000", 0.97, 5e6), member("010001001", 0.96, 3.3e6),
    ...                      member("011011011", 0.87, 1.5e6)]}
    >>> adaptive = AdaptiveModel(model, front, hysteresis=0.005)
    >>> adaptive.select(flops="50%")["mask"]
    '011011011'
    >>> adaptive.select(flops="70%", accuracy=0.9)["mask"]
    '010001001'
    >>> adaptive.eval()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .errors import BudgetError, ConfigError, MaskError
from .frontfile import SCHEMA_VERSION, load_front, metric_value, validate_front
from .metrics import direction_of
from .models import mask_bits, skippable_units

__all__ = ["AdaptiveModel", "load_front", "validate_front", "SCHEMA_VERSION"]

log = logging.getLogger(__name__)

_REL_TOL = 1e-9
_FALLBACKS = ("error", "cheapest")


def _units_difference(model_units: list[str], front_units: list[str]) -> str:
    in_front, in_model = set(front_units), set(model_units)
    missing = [u for u in model_units if u not in in_front]
    extra = [u for u in front_units if u not in in_model]
    parts = []
    if missing:
        parts.append(f"units of the model not in the front: {missing}")
    if extra:
        parts.append(f"units of the front not in the model: {extra}")
    if not parts:
        if len(model_units) != len(front_units):
            parts.append(
                f"the front lists {len(front_units)} units, the model has {len(model_units)}"
            )
        else:
            i = next(i for i, (a, b) in enumerate(zip(model_units, front_units)) if a != b)
            parts.append(
                f"same units in a different order (position {i}: model {model_units[i]!r}, "
                f"front {front_units[i]!r})"
            )
    return "the front was made for another model: " + "; ".join(parts)


# --------------------------------------------------------------------------- the model


#: Metrics that depend on the device they were measured on.
_DEVICE_METRICS = frozenset({"latency", "latency_ratio", "energy"})


class AdaptiveModel(nn.Module):
    """A skippable model that switches between the members of a front file.

    Args:
        model: the skippable model the front was searched for (registered as ``self.model``;
            ``AdaptiveModel(...)(x)`` is ``model(x)`` with the current configuration).
        front: a front file path or the already-loaded front dict.
        hysteresis: accuracy margin for switching up to a more expensive member (see the
            module documentation); ``0`` switches to the best fitting member every time.
        check_units: compare the front's ``space.units`` with the model's unit names and
            raise :class:`~paretoskip.errors.MaskError` naming the difference.  With
            ``False`` only the number of units must match.

    Budgets are described in the module documentation: numbers are absolute bounds, strings
    such as ``"50%"`` are relative to the full model.
    """

    def __init__(
        self,
        model: nn.Module,
        front: str | os.PathLike | Mapping[str, Any],
        *,
        hysteresis: float = 0.0,
        check_units: bool = True,
    ):
        super().__init__()
        if isinstance(front, (str, os.PathLike)):
            front = load_front(front)
        else:
            front = validate_front(front)
        if (
            isinstance(hysteresis, bool)
            or not isinstance(hysteresis, numbers.Real)
            or not math.isfinite(hysteresis)
            or hysteresis < 0
        ):
            raise ConfigError(f"hysteresis={hysteresis!r} must be a finite number >= 0")

        self.model = model
        units = skippable_units(model)
        names = [n for n, _ in units]
        front_units = [str(u) for u in front["space"]["units"]]
        if (check_units and names != front_units) or len(names) != len(front_units):
            raise MaskError(_units_difference(names, front_units))
        modules = tuple(u for _, u in units)
        for name, unit in units:
            if any("skip" in getattr(unit, d) for d in ("_parameters", "_buffers", "_modules")):
                raise ConfigError(f"unit {name!r}: 'skip' must be a plain bool attribute")

        locked = [str(u) for u in front["space"].get("locked", ())]
        self._locked = tuple((front_units.index(u), u) for u in locked if u in front_units)
        members = list(front["members"])
        plans = []
        index_of_mask: dict[str, int] = {}
        for i, member in enumerate(members):
            try:
                bits = mask_bits(member["mask"], len(modules))
            except MaskError as exc:
                raise MaskError(f"front member {i} (mask {member['mask']!r}): {exc}") from None
            self._check_locked(bits, f"front member {i} (mask {member['mask']!r})")
            listed = member.get("skipped")
            if check_units and listed is not None:
                derived = [n for n, b in zip(names, bits) if b]
                if list(listed) != derived:
                    raise MaskError(
                        f"front member {i}: 'skipped' lists {list(listed)} but its mask "
                        f"{member['mask']!r} skips {derived}"
                    )
            plans.append(tuple(zip(modules, bits)))
            index_of_mask.setdefault(member["mask"], i)

        # Metric tables: one tuple of floats (NaN for null) per metric, in member order.
        metric_names: list[str] = []
        for member in members:
            metric_names += [m for m in member["metrics"] if m not in metric_names]
        values = {
            name: tuple(
                metric_value(member["metrics"].get(name), f"members[{i}].metrics.{name}")
                for i, member in enumerate(members)
            )
            for name in metric_names
        }
        reference = {
            name: metric_value(entry, f"reference.metrics.{name}")
            for name, entry in front["reference"]["metrics"].items()
        }
        directions = {n: direction_of(n) for n in metric_names}
        directions.update({o["name"]: o["direction"] for o in front["objectives"]})
        sources = {}
        for name in metric_names:
            for member in members:
                entry = member["metrics"].get(name)
                if isinstance(entry, Mapping) and entry.get("source"):
                    sources[name] = str(entry["source"])
                    break

        self._front = front
        self._members = members
        self._units = tuple(names)
        self._plans = tuple(plans)
        self._index_of_mask = index_of_mask
        self._values = values
        self._reference = reference
        self._directions = directions
        self._sources = sources
        self._hysteresis = float(hysteresis)
        acc = values.get("accuracy", (math.nan,) * len(members))
        self._accuracy = tuple(-math.inf if math.isnan(a) else a for a in acc)
        cost = values.get("flops", (math.nan,) * len(members))
        # Most accurate first; ties go to the cheaper (fewer FLOPs), then to the earlier member.
        self._by_accuracy = tuple(
            sorted(
                range(len(members)),
                key=lambda i: (-self._accuracy[i], math.inf if math.isnan(cost[i]) else cost[i], i),
            )
        )
        self._current: int | None = None

    # ------------------------------------------------------------------ properties

    @property
    def members(self) -> list[dict]:
        """The front members (the dicts of the front file, in file order; do not mutate)."""
        return list(self._members)

    @property
    def current(self) -> dict | None:
        """The member applied last, or ``None`` (nothing applied yet, or a non-member mask)."""
        return None if self._current is None else self._members[self._current]

    @property
    def current_index(self) -> int | None:
        """Index in :attr:`members` of :attr:`current`."""
        return self._current

    @property
    def units(self) -> tuple[str, ...]:
        """The unit names, in mask order."""
        return self._units

    @property
    def metrics(self) -> list[str]:
        """The metric names the members carry (the keywords :meth:`select` accepts)."""
        return list(self._values)

    @property
    def front(self) -> dict:
        """The front document."""
        return self._front  # type: ignore[return-value]

    @property
    def hysteresis(self) -> float:
        return self._hysteresis

    # ------------------------------------------------------------------ switching

    def _apply_index(self, i: int) -> None:
        # object.__setattr__: ``skip`` is a plain attribute (checked in __init__), and
        # nn.Module.__setattr__ costs ~8x more and allocates temporaries on every call.
        setattr_ = object.__setattr__
        for unit, bit in self._plans[i]:
            setattr_(unit, "skip", bit)
        object.__setattr__(self, "_current", i)

    def apply(self, member_or_mask: int | Mapping[str, Any] | str | Sequence[int]) -> None:
        """Apply a front member given as its index, its dict, or a mask.

        A mask (bitstring or 0/1 sequence) that is a member's mask selects that member; any
        other valid mask is applied too, and :attr:`current` becomes ``None``.
        """
        if type(member_or_mask) is int:
            i = member_or_mask
            if not 0 <= i < len(self._plans):
                raise ConfigError(
                    f"member index {i} out of range: the front has {len(self._plans)} members"
                )
            self._apply_index(i)
            return
        if isinstance(member_or_mask, Mapping):
            for i, member in enumerate(self._members):
                if member is member_or_mask:
                    self._apply_index(i)
                    return
            if "mask" not in member_or_mask:
                raise ConfigError("a member dict must have a 'mask' key")
            member_or_mask = member_or_mask["mask"]
        if isinstance(member_or_mask, (bool, numbers.Integral)):
            raise ConfigError(f"member index must be an int, not {type(member_or_mask).__name__}")
        bits = mask_bits(member_or_mask, len(self._units))
        mask = "".join("1" if b else "0" for b in bits)
        self._check_locked(bits, f"mask {mask!r}")
        i = self._index_of_mask.get(mask)
        if i is not None:
            self._apply_index(i)
            return
        for (unit, _), bit in zip(self._plans[0], bits):
            object.__setattr__(unit, "skip", bit)
        self._current = None

    def _check_locked(self, bits: Sequence[Any], what: str) -> None:
        """Refuse a mask that skips a unit the front's space locks (never skipped)."""
        for j, unit in getattr(self, "_locked", ()):
            if bits[j]:
                locked = ", ".join(u for _, u in self._locked)
                raise MaskError(
                    f"{what} skips locked unit {unit!r}; the front's space never skips: {locked}"
                )

    @property
    def measured_device(self) -> str | None:
        """The device the front's latencies and energies were measured on (``"cpu"``,
        ``"cuda:0"``; None when the front does not say)."""
        hardware = self._front.get("provenance", {}).get("hardware") or {}
        device = hardware.get("device") if isinstance(hardware, Mapping) else None
        return str(device) if device else None

    def _check_device(self, name: str) -> None:
        """Refuse a device-dependent budget when the model runs on another kind of device
        than the one the front measured it on (a GPU's latency says nothing of a CPU's)."""
        measured = self.measured_device
        if name not in _DEVICE_METRICS or measured is None:
            return
        from .measure import model_device

        here = model_device(self.model)
        if torch.device(measured).type != here.type:
            raise ConfigError(
                f"budget {name!r}: the front's {name} was measured on {measured}, but the model "
                f"runs on {here}; budget flops/params, or measure a front with "
                f"measure.device = {here.type!r}"
            )

    def _bound(self, name: str, value: Any) -> tuple[str, bool, float, str]:
        """(metric, is_upper_bound, limit, text) for one budget keyword."""
        if name not in self._values:
            raise ConfigError(
                f"unknown metric {name!r} in the budget; this front has: {', '.join(self._values)}"
            )
        self._check_device(name)
        if all(math.isnan(v) for v in self._values[name]):
            source = self._sources.get(name, "unavailable")
            raise ConfigError(
                f"metric {name!r} is null for every member of this front (source: {source}); "
                f"it cannot be budgeted. Budgetable metrics: "
                + ", ".join(
                    n for n, vs in self._values.items() if not all(math.isnan(v) for v in vs)
                )
            )
        upper = self._directions.get(name, "minimize") == "minimize"
        op = "<=" if upper else ">="
        if isinstance(value, str):
            text = value.strip()
            try:
                if not text.endswith("%"):
                    raise ValueError
                fraction = float(text[:-1]) / 100.0
            except ValueError:
                raise ConfigError(
                    f"budget {name}={value!r}: a string budget must be a percentage of the full "
                    "model such as '50%'; give absolute bounds as numbers"
                ) from None
            if not math.isfinite(fraction) or fraction < 0:
                raise ConfigError(
                    f"budget {name}={value!r} must be a finite, non-negative percentage"
                )
            ref = self._reference.get(name, math.nan)
            if math.isnan(ref):
                raise ConfigError(
                    f"budget {name}={value!r} is relative to the full model, but the front's "
                    f"reference value of {name!r} is null; give an absolute bound"
                )
            limit = fraction * ref
            return name, upper, limit, f"{name} {op} {value} of the full model ({limit:.6g})"
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
            raise ConfigError(
                f"budget {name}={value!r} must be a number (absolute) or a percentage string such as '50%'"
            )
        return name, upper, float(value), f"{name} {op} {float(value):.6g}"

    @staticmethod
    def _fits(v: float, upper: bool, limit: float) -> bool:
        slack = _REL_TOL * abs(limit)
        return v <= limit + slack if upper else v >= limit - slack

    def _fits_all(self, i: int, bounds: list[tuple[str, bool, float, str]]) -> bool:
        for name, upper, limit, _ in bounds:
            if not self._fits(self._values[name][i], upper, limit):
                return False
        return True

    def _cost_metric(self, bounds: list[tuple[str, bool, float, str]]) -> str:
        for name, upper, _, _ in bounds:
            if upper:
                return name
        usable = [n for n, vs in self._values.items() if not all(math.isnan(v) for v in vs)]
        if "flops" in usable:
            return "flops"
        minimized = [n for n in usable if self._directions.get(n) == "minimize"]
        if not minimized:
            raise ConfigError("this front has no minimised metric to find the cheapest member by")
        return minimized[0]

    def _cheapest(self, metric: str) -> int:
        vals = self._values[metric]
        return min(
            range(len(vals)), key=lambda i: (math.inf if math.isnan(vals[i]) else vals[i], i)
        )

    def _describe(self, i: int, names: list[str]) -> str:
        shown = list(dict.fromkeys(["accuracy", *names]))
        vals = ", ".join(f"{n}={self._values[n][i]:.6g}" for n in shown if n in self._values)
        return f"member {i} (mask {self._members[i]['mask']}): {vals}"

    def select(self, *, fallback: str = "error", **budgets: float | str) -> dict:
        """Apply and return the most accurate member that fits every budget.

        Args:
            fallback: what to do when no member fits: ``"error"`` raises
                :class:`~paretoskip.errors.BudgetError` naming the tightest bound and the
                cheapest member's values; ``"cheapest"`` applies the member with the least
                value of the first budgeted minimised metric (FLOPs when only accuracy is
                budgeted) and logs a warning.
            **budgets: ``metric=bound``; a number is absolute, a string like ``"50%"`` is
                relative to the full model.  Upper bound for minimised metrics (flops,
                params, latency, energy), lower bound for accuracy.

        Raises :class:`~paretoskip.errors.ConfigError` for an unknown metric (listing those
        present) or a metric that is null for every member (e.g. unavailable energy).
        """
        if fallback not in _FALLBACKS:
            raise ConfigError(
                f"fallback={fallback!r}; accepted: {', '.join(map(repr, _FALLBACKS))}"
            )
        bounds = [self._bound(name, value) for name, value in budgets.items()]

        best = None
        for i in self._by_accuracy:
            if self._fits_all(i, bounds):
                best = i
                break
        if best is not None:
            cur = self._current
            if (
                cur is not None
                and cur != best
                and self._fits_all(cur, bounds)
                and not self._accuracy[best] > self._accuracy[cur] + self._hysteresis
            ):
                best = cur
            self._apply_index(best)  # also when kept: flags may have been changed behind our back
            return self._members[best]

        names = [b[0] for b in bounds]
        cost = self._cost_metric(bounds)
        cheapest = self._cheapest(cost)
        if fallback == "cheapest":
            log.warning(
                "no front member satisfies %s; falling back to the cheapest by %s, %s",
                " and ".join(b[3] for b in bounds),
                cost,
                self._describe(cheapest, names),
            )
            self._apply_index(cheapest)
            return self._members[cheapest]

        counts = [
            (sum(self._fits(v, upper, limit) for v in self._values[name]), k)
            for k, (name, upper, limit, _) in enumerate(bounds)
        ]
        n_fit, k = min(counts)
        raise BudgetError(
            f"no front member satisfies {' and '.join(b[3] for b in bounds)}; "
            f"the tightest bound is {bounds[k][3]} ({n_fit} of {len(self._members)} members meet it); "
            f"the cheapest by {cost} is {self._describe(cheapest, names)}. "
            "Relax the budget or pass fallback='cheapest'."
        )

    # ------------------------------------------------------------------ forward

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(*args, **kwargs)

    def extra_repr(self) -> str:
        cur = (
            "none"
            if self._current is None
            else f"{self._current} ({self._members[self._current]['mask']})"
        )
        return f"members={len(self._members)}, current={cur}, hysteresis={self._hysteresis}"
