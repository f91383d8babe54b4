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
    "PowerReading",
    "EnergyMeter",
    "UNAVAILABLE",
    "check_min_seconds",
    "check_positive",
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


class _Stalled(Exception):
    """An aligned window's counter did not move for ``stall_seconds``."""

    def __init__(self, seconds: float, calls: int) -> None:
        super().__init__(seconds, calls)
        self.seconds, self.calls = seconds, calls


@dataclass(frozen=True)
class PowerReading:
    """A mean power (W) over measured windows, with its source: e.g. a device's idle power.

    Attributes:
        watts: the median over the windows; ``math.nan`` when unavailable (never 0 for "not
            measured").
        source: ``"measured:<backend>"`` or ``"unavailable"``.
        spread: inter-quartile range over the windows (None for one window).
        seconds: total length of the windows.
        reason: what was measured, or why nothing was.

    Example:
        >>> PowerReading(watts=61.5, source="measured:nvml", spread=0.4).to_dict()["unit"]
        'W'
    """

    watts: float
    source: str
    spread: float | None = None
    seconds: float = 0.0
    reason: str | None = None
    unit: str = "W"

    def __post_init__(self) -> None:
        watts = float(self.watts)
        if self.source == UNAVAILABLE:
            if not math.isnan(watts) or not self.reason:
                raise ConfigError("an unavailable PowerReading needs watts=math.nan and a reason")
        elif not (self.source.startswith("measured:") and math.isfinite(watts) and watts > 0):
            raise ConfigError(
                f"a PowerReading is 'measured:<backend>' with finite watts > 0 or "
                f"'unavailable', got source={self.source!r}, watts={self.watts!r}"
            )

    @property
    def available(self) -> bool:
        """True when :attr:`watts` is a measured number."""
        return self.source != UNAVAILABLE

    @classmethod
    def unavailable(cls, reason: str, *, seconds: float = 0.0) -> PowerReading:
        """No power: ``watts=nan``, ``source="unavailable"`` and why."""
        return cls(watts=math.nan, source=UNAVAILABLE, seconds=seconds, reason=reason)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (``value`` null when unavailable)."""
        return {
            "value": self.watts if self.available else None,
            "unit": self.unit,
            "source": self.source,
            "spread": self.spread,
            "seconds": self.seconds,
            "reason": self.reason,
        }


class EnergyMeter(ABC):
    """Measures the energy per call of a workload; one subclass per backend.

    Subclasses implement :meth:`check`, ``_settings`` and the window hooks ``_begin`` /
    ``_end``; :meth:`measure` (windows, median, spread, unavailability) is shared.
    """

    name: str = ""
    #: Shortest window that gives a meaningful reading (a warning is logged below it).
    recommended_min_seconds: float = 0.0
    #: The counter updates in steps (NVML: every ~20-100 ms): windows open and close on an
    #: update (see :meth:`_aligned_window`); such meters implement ``_read`` and
    #: ``_difference``.
    aligned: bool = False
    #: An aligned window whose counter does not move for this long gives an unavailable
    #: reading (a frozen counter), never 0 J.
    stall_seconds: float = 2.0
    #: The timer windows are measured with (seconds); a test may give a meter its own.
    clock: Callable[[], float] = staticmethod(time.perf_counter)

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

    # -- windows ---------------------------------------------------------------------------
    def _read(self) -> Any:
        """The raw counters now (aligned meters); raise EnergyUnavailableError."""
        return self._begin()

    def _difference(self, start: Any, end: Any) -> tuple[float, dict[str, float]]:
        """Joules between two raw readings (total, per domain) (aligned meters)."""
        raise NotImplementedError

    def _advanced(self, before: Any, after: Any) -> bool:
        """Whether the counter moved between two raw readings (aligned meters)."""
        return bool(before != after)

    def _plain_window(
        self, workload: Callable[[], object], min_seconds: float
    ) -> tuple[float, dict[str, float], int, float]:
        token = self._begin()
        n = 0
        start = self.clock()
        while True:
            workload()
            n += 1
            elapsed = self.clock() - start
            if elapsed >= min_seconds:
                break
        joules, domains = self._end(token)
        return joules, domains, n, elapsed

    def _aligned_window(
        self, workload: Callable[[], object], min_seconds: float
    ) -> tuple[float, dict[str, float], int, float]:
        """A window that opens and closes on counter updates, the workload running across both.

        A counter that updates in steps (NVML: every ~20-100 ms) read at arbitrary times is
        stale by up to one step at each end of a window.  Here the counter is read after
        every call: the window opens at the first update seen and closes at the first update
        seen once ``min_seconds`` have passed, and only the calls in between are counted, so
        the energy and the calls cover the same stretch of work (up to the parts of the two
        calls during which the updates fell, which offset each other).
        """
        last = self._read()
        t_last = self.clock()
        calls = 0
        while True:  # wait for an update while the workload runs: the window opens there
            workload()
            calls += 1
            reading, now = self._read(), self.clock()
            if self._advanced(last, reading):
                break
            if now - t_last > self.stall_seconds:
                raise _Stalled(now - t_last, calls)
        start, t_start = reading, now
        last, t_last, n = reading, now, 0
        while True:
            workload()
            n += 1
            reading, now = self._read(), self.clock()
            if self._advanced(last, reading):
                if now - t_start >= min_seconds:
                    break
                last, t_last = reading, now
            elif now - t_last > self.stall_seconds:
                raise _Stalled(now - t_last, n)
        joules, domains = self._difference(start, reading)
        return joules, domains, n, now - t_start

    def _measure_windows(
        self, workload: Callable[[], object], min_seconds: float, windows: int
    ) -> tuple[list[tuple[float, dict[str, float], int, float]], EnergyReading | None]:
        """``(windows measured, None)``, or ``(windows so far, unavailable reading)``."""
        window = self._aligned_window if self.aligned else self._plain_window
        done: list[tuple[float, dict[str, float], int, float]] = []
        seconds, calls = 0.0, 0
        for _ in range(windows):
            try:
                joules, domains, n, elapsed = window(workload, min_seconds)
            except _Stalled as stalled:
                reason = self._no_energy_reason(0.0, stalled.seconds, stalled.calls)
                return done, self._unavailable(
                    reason, seconds=seconds + stalled.seconds, calls=calls + stalled.calls
                )
            except EnergyUnavailableError as exc:
                return done, self._unavailable(str(exc), seconds=seconds, calls=calls)
            seconds += elapsed
            calls += n
            if not (math.isfinite(joules) and joules > 0):
                reason = self._no_energy_reason(joules, elapsed, n)
                return done, self._unavailable(reason, seconds=seconds, calls=calls)
            done.append((joules, domains, n, elapsed))
        return done, None

    def _ready(self, min_seconds: object, windows: object) -> tuple[float, int, str | None]:
        min_seconds = check_min_seconds(min_seconds)
        windows = check_windows(windows)
        ok, why = self.check()
        if ok and min_seconds < self.recommended_min_seconds:
            logger.warning(
                "energy backend %r: min_seconds=%g is shorter than the %g s its counter needs; "
                "readings will be coarse or unavailable",
                self.name,
                min_seconds,
                self.recommended_min_seconds,
            )
        return min_seconds, windows, None if ok else why

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
        the energy lands in a later window.  Meters whose counter updates in steps
        (:attr:`aligned`, NVML) open and close each window on a counter update.

        Returns an unavailable reading (NaN plus the reason) when the counter cannot be read
        or did not advance, or raises :class:`EnergyUnavailableError` if ``strict``.
        """
        if not callable(workload):
            raise ConfigError(f"workload must be callable, got {type(workload).__name__}")
        min_seconds, windows, why = self._ready(min_seconds, windows)
        if why is not None:
            return self._unavailable(why)
        done, failed = self._measure_windows(workload, min_seconds, windows)
        if failed is not None:
            return failed
        per_call = [j / n for j, _, n, _ in done]
        per_domain = [{k: v / n for k, v in d.items()} for _, d, n, _ in done]
        joules = statistics.median(per_call)
        spread = iqr(per_call) if len(per_call) > 1 else None
        domain_medians = {k: statistics.median(d[k] for d in per_domain) for k in per_domain[0]}
        return EnergyReading(
            joules=joules,
            source=self.source,
            spread=spread,
            seconds=sum(s for *_, s in done),
            calls=sum(n for _, _, n, _ in done),
            reason=self._measured_reason(joules, domain_medians),
            domains=domain_medians,
        )

    def measure_idle(
        self, *, min_seconds: float = 1.0, windows: int = 3, poll_seconds: float = 0.005
    ) -> PowerReading:
        """The power drawn while this process runs nothing (W): the baseline of the device.

        Measured like :meth:`measure`, with a workload that only sleeps ``poll_seconds``;
        each window gives its energy over its length, and the median over ``windows`` is
        reported with its inter-quartile range.  It is reported beside energies, never
        subtracted from them unless it was measured in the same run (the counters measure
        the whole package or GPU, so other processes' work counts too).

        Example:
            >>> from paretoskip.energy import make_energy_meter
            >>> make_energy_meter("none").measure_idle().available
            False
        """
        min_seconds, windows, why = self._ready(min_seconds, windows)
        if why is None and not self.source.startswith("measured:"):
            why = f"energy backend {self.name!r} does not measure (source {self.source})"
        if why is not None:
            return PowerReading.unavailable(self._unavailable(why).reason or why)
        done, failed = self._measure_windows(lambda: time.sleep(poll_seconds), min_seconds, windows)
        if failed is not None:
            return PowerReading.unavailable(failed.reason or "no reading", seconds=failed.seconds)
        watts = [j / s for j, _, _, s in done]
        return PowerReading(
            watts=statistics.median(watts),
            source=self.source,
            spread=iqr(watts) if len(watts) > 1 else None,
            seconds=sum(s for *_, s in done),
            reason="idle: this process sleeping, the device otherwise as it was",
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


def check_positive(value: object, option: str, unit: str) -> float:
    """``value`` as a finite number > 0 (``option``'s ``unit``), or
    :class:`~paretoskip.errors.ConfigError`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{option} must be a number of {unit} > 0, got {value!r}")
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
