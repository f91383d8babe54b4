"""What every energy backend shares: the reading, and the measurement protocol.

See :mod:`paretoskip.energy` for the protocol; a backend is an :class:`EnergyMeter`
subclass in a module of its own, registered with :func:`paretoskip.energy.register_backend`.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from ..errors import ConfigError, EnergyUnavailableError

__all__ = [
    "EnergyReading",
    "EnergyMeter",
    "UNAVAILABLE",
    "check_min_seconds",
    "check_windows",
    "iqr",
    "index_tuple",
]

logger = logging.getLogger("paretoskip.energy")

#: The source of a reading that holds no energy.
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class EnergyReading:
    """Energy per call of a workload, with its source.

    Attributes:
        joules: energy per workload call in joules; ``math.nan`` when unavailable (never 0
            for "not measured").
        source: ``"measured:rapl"``, ``"measured:nvml"``, ``"measured:zeus"``,
            ``"estimated:cpu-time"`` or ``"unavailable"``.
        unit: always ``"J"``.
        spread: inter-quartile range of the per-call energy over the windows when there
            were several, else ``None``.
        seconds: wall time of the measured windows, in total.
        calls: how many workload calls were measured, in total.
        reason: why unavailable, how estimated, or which domains were summed.
        domains: energy per call of every domain read (J), e.g. ``{"package-0": 1.5,
            "package-0/dram": 0.2}``; empty when there is no per-domain breakdown.
    """

    joules: float
    source: str
    unit: str = "J"
    spread: float | None = None
    seconds: float = 0.0
    calls: int = 0
    reason: str | None = None
    domains: Mapping[str, float] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.unit != "J":
            raise ConfigError(f"EnergyReading.unit must be 'J', got {self.unit!r}")
        joules = float(self.joules)
        if self.source == UNAVAILABLE:
            if not math.isnan(joules):
                raise ConfigError(
                    "an unavailable EnergyReading must have joules=math.nan "
                    f"(an unmeasured energy is never a number), got {self.joules!r}"
                )
            if not self.reason:
                raise ConfigError("an unavailable EnergyReading needs a reason")
        elif self.source.startswith(("measured:", "estimated:")):
            if not (math.isfinite(joules) and joules > 0):
                raise ConfigError(
                    f"a {self.source} EnergyReading needs finite joules > 0, got "
                    f"{self.joules!r}; an energy that was not measured is "
                    "EnergyReading.unavailable(reason)"
                )
        else:
            raise ConfigError(
                f"unknown energy source {self.source!r}; expected 'measured:<backend>', "
                "'estimated:<method>' or 'unavailable'"
            )

    @property
    def available(self) -> bool:
        """True when :attr:`joules` is a number (measured or estimated)."""
        return self.source != UNAVAILABLE and math.isfinite(self.joules)

    @property
    def estimated(self) -> bool:
        """True when the value is an estimate, not a measurement."""
        return self.source.startswith("estimated:")

    @classmethod
    def unavailable(cls, reason: str, *, seconds: float = 0.0, calls: int = 0) -> EnergyReading:
        """A reading with no energy: ``joules=nan``, ``source="unavailable"`` and why."""
        return cls(joules=math.nan, source=UNAVAILABLE, seconds=seconds, calls=calls, reason=reason)


class EnergyMeter(ABC):
    """Measures the energy per call of a workload; one subclass per backend.

    Subclasses implement :meth:`check`, ``_settings`` and the window hooks ``_begin`` /
    ``_end``; :meth:`measure` (windows, median, spread, unavailability) is shared.
    """

    name: str = ""
    #: Shortest window that gives a meaningful reading (a warning is logged below it).
    recommended_min_seconds: float = 0.0

    def __init__(self, *, strict: bool = False) -> None:
        if not isinstance(strict, bool):
            raise ConfigError(f"strict must be True or False, got {strict!r}")
        self.strict = strict
        #: how ``auto`` chose this meter (set by :func:`paretoskip.energy.make_energy_meter`)
        self.auto_choice: dict[str, Any] | None = None

    @property
    def source(self) -> str:
        """The label readings of this meter carry, e.g. ``"measured:rapl"``."""
        return f"measured:{self.name}"

    @abstractmethod
    def check(self) -> tuple[bool, str]:
        """Whether this meter really reads a counter here, and what or why not.

        Returns ``(True, "reads 2 domains: package-0, package-0/dram; ...")`` or
        ``(False, "why not, and what to do")``. Never raises for a missing counter.
        """

    @abstractmethod
    def _settings(self) -> dict[str, Any]:
        """Backend-specific, JSON-able settings for :meth:`describe`."""

    def describe(self) -> dict[str, Any]:
        """JSON-able settings that make a reading valid (they go into a fingerprint).

        Holds the backend, the source label, the unit and the backend's settings (domains,
        devices, watts per core, ...); when ``auto`` chose this meter, ``"auto"`` says so
        and why.
        """
        out: dict[str, Any] = {"backend": self.name, "source": self.source, "unit": "J"}
        out.update(self._settings())
        if self.auto_choice is not None:
            out["auto"] = dict(self.auto_choice)
        return out

    def close(self) -> None:
        """Release what the backend holds (NVML handles); the meter may be used again."""
        return None

    def _begin(self) -> Any:
        """Read the counters at the start of a window; raise EnergyUnavailableError."""
        raise NotImplementedError

    def _end(self, token: Any) -> tuple[float, dict[str, float]]:
        """Joules of the window (total, per domain); raise EnergyUnavailableError."""
        raise NotImplementedError

    def _measured_reason(self, joules: float, domains: Mapping[str, float]) -> str | None:
        return None

    def _no_energy_reason(self, joules: float, seconds: float, calls: int) -> str:
        return (
            f"the {self.name} counter did not advance during a {seconds:.3g} s window of "
            f"{calls} call(s) (read {joules!r} J): it does not measure here (a virtual "
            "machine or container exposing a frozen counter?), so no energy is reported"
        )

    def _unavailable(self, reason: str, *, seconds: float = 0.0, calls: int = 0) -> EnergyReading:
        if self.strict:
            raise EnergyUnavailableError(f"energy backend {self.name!r} cannot read: {reason}")
        return EnergyReading.unavailable(reason, seconds=seconds, calls=calls)

    def measure(
        self,
        workload: Callable[[], object],
        *,
        min_seconds: float = 1.0,
        windows: int = 3,
    ) -> EnergyReading:
        """Energy per call of ``workload``: median over ``windows`` windows.

        Each window calls ``workload`` at least once and until it has lasted
        ``min_seconds``; its energy is divided by its number of calls. The workload must
        block until its work is done (call ``torch.cuda.synchronize()`` for GPU work), or
        the energy lands in a later window.

        Returns an unavailable reading (NaN plus the reason) when the counter cannot be read
        or did not advance, or raises :class:`EnergyUnavailableError` if ``strict``.
        """
        if not callable(workload):
            raise ConfigError(f"workload must be callable, got {type(workload).__name__}")
        min_seconds = check_min_seconds(min_seconds)
        windows = check_windows(windows)
        ok, why = self.check()
        if not ok:
            return self._unavailable(why)
        if min_seconds < self.recommended_min_seconds:
            logger.warning(
                "energy backend %r: min_seconds=%g is shorter than the %g s its counter needs; "
                "readings will be coarse or unavailable",
                self.name,
                min_seconds,
                self.recommended_min_seconds,
            )
        per_call: list[float] = []
        per_domain: list[dict[str, float]] = []
        seconds = 0.0
        calls = 0
        for _ in range(windows):
            try:
                token = self._begin()
            except EnergyUnavailableError as exc:
                return self._unavailable(str(exc), seconds=seconds, calls=calls)
            n = 0
            start = time.perf_counter()
            while True:
                workload()
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            try:
                joules, domains = self._end(token)
            except EnergyUnavailableError as exc:
                return self._unavailable(str(exc), seconds=seconds + elapsed, calls=calls + n)
            seconds += elapsed
            calls += n
            if not (math.isfinite(joules) and joules > 0):
                reason = self._no_energy_reason(joules, elapsed, n)
                return self._unavailable(reason, seconds=seconds, calls=calls)
            per_call.append(joules / n)
            per_domain.append({k: v / n for k, v in domains.items()})
        joules = statistics.median(per_call)
        spread = iqr(per_call) if len(per_call) > 1 else None
        domain_medians = {k: statistics.median(d[k] for d in per_domain) for k in per_domain[0]}
        return EnergyReading(
            joules=joules,
            source=self.source,
            spread=spread,
            seconds=seconds,
            calls=calls,
            reason=self._measured_reason(joules, domain_medians),
            domains=domain_medians,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._settings().items())})"
        )


def check_min_seconds(value: object) -> float:
    """``value`` as a number of seconds >= 0, or :class:`~paretoskip.errors.ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"min_seconds must be a finite number of seconds >= 0, got {value!r}")
    if value < 0:
        raise ConfigError(f"min_seconds must be >= 0, got {value!r}")
    return float(value)


def check_windows(value: object) -> int:
    """``value`` as a number of windows >= 1, or :class:`~paretoskip.errors.ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"windows must be an integer >= 1, got {value!r}")
    return value


def iqr(values: Sequence[float]) -> float:
    """Inter-quartile range of at least two values."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def index_tuple(value: object, option: str, *, allow_none: bool = False) -> tuple[int, ...] | None:
    """A device index or a list of them, as a tuple (None when allowed and given)."""
    if value is None and allow_none:
        return None
    items = [value] if isinstance(value, int) else value
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise ConfigError(f"{option} must be a device index or a list of them, got {value!r}")
    out = tuple(items)
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in out):
        raise ConfigError(f"{option} must hold integers >= 0, got {value!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"{option} lists a device twice: {value!r}")
    return out
