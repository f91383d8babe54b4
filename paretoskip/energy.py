"""Energy per call of a workload, read from a hardware counter when one is readable.

Backends (``make_energy_meter(backend, **options)``):

``rapl``
    Linux powercap RAPL counters (``/sys/class/powercap/*/energy_uj``, µJ).
``nvml``
    NVIDIA's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ), from the
    optional ``nvidia-ml-py`` package (``pip install 'paretoskip[nvml]'``).
``zeus``
    ``zeus.monitor.ZeusMonitor`` (``pip install 'paretoskip[zeus]'``).
``estimated``
    Not a measurement: process CPU time × a configured power per busy core. Used only when
    asked for by name, and labelled ``estimated:cpu-time`` everywhere.
``none``
    No energy: every reading is unavailable.
``auto``
    The first of ``rapl``, ``nvml``, ``zeus`` that really reads here, else ``none``. It
    never picks ``estimated``.

An energy that was not measured is ``math.nan`` with ``source="unavailable"`` and a reason;
it is never 0. A counter that does not advance during a window (a virtual machine exposing a
frozen counter, Zeus with no hardware) gives an unavailable reading too, never 0 J.

Measurement protocol (:meth:`EnergyMeter.measure`): the workload is called again and again
inside a window until the window lasts at least ``min_seconds`` (NVML's counter only moves
every ~20–100 ms, so keep 1 s there); the counter is read before and after the window and the
difference divided by the number of calls. Several windows give the median energy per call
and its inter-quartile range. The counters measure the whole package or GPU, not this
process alone: keep the machine otherwise idle and never measure latency or energy of two
workloads at once. Warm the workload up before measuring (the first calls allocate).

RAPL domains, and which are summed
----------------------------------
Linux registers, for each CPU package, the package domain as a top-level zone
(``intel-rapl:N``, name ``package-N`` or ``package-N-die-M``) and every other domain of that
package as its sub-zone (``intel-rapl:N:M``): ``core`` (PP0), ``uncore`` (PP1, graphics) and,
on servers and some clients, ``dram``. The hierarchy is a power-*limiting* topology, not an
energy one: ``core`` and ``uncore`` are parts of the package energy, but ``dram`` is not
(RAPL's package domain covers cores, caches and the uncore; DRAM is its own domain). The
platform domain ``psys`` (a separate top-level zone on client machines) covers the whole
SoC platform, packages included. AMD processors (Linux >= 5.8) use the same ``intel-rapl``
names. So the total here is

    every top-level ``package*`` zone + every ``dram`` zone (wherever it sits),

``core``/``uncore``/other sub-zones are reported per domain but not summed (they are inside
their package), and ``psys`` is reported but not summed when packages exist (it contains
them); with no package zone, ``psys`` alone is the total, and with neither, every top-level
zone. The same package exposed twice through another control type (``intel-rapl-mmio:N``
next to ``intel-rapl:N``) is counted once, from the MSR interface. Every domain's energy per
call is in :attr:`EnergyReading.domains`, keyed ``package-0``, ``package-0/dram``, ...

The 32-bit RAPL counter wraps: after ``max_energy_range_uj`` it goes back to 0, so when a
reading is smaller than the one before, the difference is
``end - start + max_energy_range_uj + 1``. (The kernel reports the counter in whole
hardware energy units, ~15–61 µJ, so the true step over the wrap is one unit rather than
1 µJ: an error below 0.1 mJ per wrap.) One wrap between two reads is undone; two cannot be
seen, so a window must be shorter than the wrap period (``max_energy_range_uj`` ≈ 262 kJ,
over 20 minutes at 200 W).

Reading ``energy_uj`` is root-only on kernels patched for CVE-2020-8694 (PLATYPUS, a power
side channel). :meth:`RaplMeter.check` says so and how to grant read access.

``strict``
----------
Every backend takes ``strict`` (default ``False``). Without it, a meter that cannot read
returns unavailable readings (NaN plus the reason), so a search goes on without energy.
With ``strict=True``, :func:`make_energy_meter` raises :class:`~paretoskip.errors.
EnergyUnavailableError` at once when the backend (or, for ``auto``, every candidate) cannot
read, and :meth:`EnergyMeter.measure` raises it instead of returning an unavailable
reading. ``none`` never raises: it is a choice, not a failure.

Example:
    >>> from paretoskip.energy import make_energy_meter
    >>> r = make_energy_meter("none").measure(lambda: None, min_seconds=0.0, windows=1)
    >>> r.available, r.source, r.reason
    (False, 'unavailable', "energy measurement disabled (backend 'none')")
    >>> meter = make_energy_meter("estimated", watts_per_core=10.0)
    >>> r = meter.measure(lambda: sum(range(10_000)), min_seconds=0.01, windows=3)
    >>> r.source, r.joules > 0
    ('estimated:cpu-time', True)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

from .errors import ConfigError, EnergyUnavailableError

__all__ = [
    "ENERGY_BACKENDS",
    "DEFAULT_POWERCAP_ROOT",
    "DEFAULT_WATTS_PER_CORE",
    "EnergyReading",
    "EnergyMeter",
    "RaplMeter",
    "NvmlMeter",
    "ZeusMeter",
    "EstimatedMeter",
    "NullMeter",
    "make_energy_meter",
    "probe_energy_meters",
]

logger = logging.getLogger(__name__)

#: Names accepted by :func:`make_energy_meter`.
ENERGY_BACKENDS: tuple[str, ...] = ("auto", "rapl", "nvml", "zeus", "estimated", "none")
_AUTO_ORDER: tuple[str, ...] = ("rapl", "nvml", "zeus")
_UNAVAILABLE = "unavailable"

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"

#: Placeholder power of one busy core for the ``estimated`` backend, in watts. It is a rough
#: share of a typical CPU's TDP per core (65–125 W over 6–16 cores is ~5–15 W), not a
#: property of this machine: set ``watts_per_core`` for your CPU.
DEFAULT_WATTS_PER_CORE = 10.0

_NONE_REASON = "energy measurement disabled (backend 'none')"

_RAPL_PERMISSION_HELP = (
    "Since the fix for CVE-2020-8694 (PLATYPUS) Linux lets only root read RAPL energy "
    "counters. Grant read access until the next boot with "
    "`sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj "
    "/sys/class/powercap/intel-rapl:*:*/energy_uj`, for good with a udev rule such as "
    '`SUBSYSTEM=="powercap", ACTION=="add", RUN+="/bin/chmod a+r /sys%p/energy_uj"` in '
    "/etc/udev/rules.d/99-powercap.rules (better: chgrp the files to a trusted group and "
    "chmod g+r, since readable counters allow a power side channel), or run as root"
)


# --------------------------------------------------------------------------- reading


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
        if self.source == _UNAVAILABLE:
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
        return self.source != _UNAVAILABLE and math.isfinite(self.joules)

    @property
    def estimated(self) -> bool:
        """True when the value is an estimate, not a measurement."""
        return self.source.startswith("estimated:")

    @classmethod
    def unavailable(cls, reason: str, *, seconds: float = 0.0, calls: int = 0) -> EnergyReading:
        """A reading with no energy: ``joules=nan``, ``source="unavailable"`` and why."""
        return cls(
            joules=math.nan, source=_UNAVAILABLE, seconds=seconds, calls=calls, reason=reason
        )


# --------------------------------------------------------------------------- base meter


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
        self._auto: dict[str, Any] | None = None

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
        if self._auto is not None:
            out["auto"] = dict(self._auto)
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
        min_seconds = _check_min_seconds(min_seconds)
        windows = _check_windows(windows)
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
        spread = _iqr(per_call) if len(per_call) > 1 else None
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


def _check_min_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"min_seconds must be a finite number of seconds >= 0, got {value!r}")
    if value < 0:
        raise ConfigError(f"min_seconds must be >= 0, got {value!r}")
    return float(value)


def _check_windows(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"windows must be an integer >= 1, got {value!r}")
    return value


def _iqr(values: Sequence[float]) -> float:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


# --------------------------------------------------------------------------- RAPL


@dataclass(frozen=True)
class _RaplZone:
    zone: str  # directory name, e.g. "intel-rapl:0:1"
    path: Path
    name: str  # contents of the zone's name file, e.g. "dram"
    label: str  # unique per meter, e.g. "package-0/dram"
    parent: str | None
    summed: bool
    note: str  # why summed or not


def _zone_sort_key(zone: str) -> tuple[Any, ...]:
    control, *indices = zone.split(":")
    # Prefer the MSR interface ("intel-rapl") over MMIO duplicates of the same package.
    return (
        "mmio" in control,
        control,
        tuple((0, int(i), "") if i.isdigit() else (1, 0, i) for i in indices),
    )


def _read_counter(path: Path) -> int:
    with open(path, "rb") as fh:
        text = fh.read().decode("ascii", "replace").strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path} does not hold an integer: {text[:40]!r}") from None


def _explain_os_error(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory, not a counter file"
    if isinstance(exc, FileNotFoundError):
        return "it does not exist"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _discover_rapl_zones(root: Path) -> tuple[list[_RaplZone], list[str]]:
    """Every RAPL zone under ``root`` (deduplicated), and notes on what was left out.

    A zone is any directory holding both ``energy_uj`` and ``name``. Zones are found in the
    flat class directory (``/sys/class/powercap/intel-rapl:0:1``) and by descending into
    control types and zones through children named ``<parent>:<index>`` only (never through
    ``subsystem`` or ``device`` links, which loop back).
    """
    if not root.exists():
        raise EnergyUnavailableError(
            f"no powercap directory at {root}: the kernel has no RAPL powercap driver loaded "
            "(try `modprobe intel_rapl_msr`; AMD needs Linux >= 5.8), or this is a virtual "
            "machine or a container that hides it (container runtimes mask "
            "/sys/devices/virtual/powercap)"
        )
    if not root.is_dir():
        raise EnergyUnavailableError(f"powercap root {root} is not a directory")

    # Breadth first, so that a zone is named by its shortest path (the flat class entry
    # /sys/class/powercap/intel-rapl:0, as in the chmod advice) when it is reachable twice.
    found: dict[str, Path] = {}
    level: list[tuple[Path, str | None]] = [(root, None)]
    for depth in range(8):
        following: list[tuple[Path, str | None]] = []
        for directory, prefix in level:
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                if depth == 0:
                    raise EnergyUnavailableError(
                        f"cannot list {directory}: {_explain_os_error(exc)}"
                    ) from exc
                continue
            for entry in entries:
                if prefix is not None and not entry.name.startswith(prefix + ":"):
                    continue
                try:
                    if not entry.is_dir():
                        continue
                except OSError:
                    continue
                path = Path(entry.path)
                if (
                    entry.name not in found
                    and (path / "energy_uj").exists()
                    and (path / "name").exists()
                ):
                    found[entry.name] = path
                following.append((path, entry.name))
        if not following:
            break
        level = following

    if not found:
        raise EnergyUnavailableError(
            f"{root} holds no RAPL zone (no directory with energy_uj and name): this CPU or "
            "kernel exposes no energy counter through powercap"
        )

    order = sorted(found, key=_zone_sort_key)
    names: dict[str, str] = {}
    for zone in order:
        try:
            names[zone] = (found[zone] / "name").read_text().strip() or zone
        except (OSError, UnicodeDecodeError):
            names[zone] = zone

    def parent_of(zone: str) -> str | None:
        head = zone.rsplit(":", 1)[0] if zone.count(":") >= 2 else None
        return head if head in found else None

    notes: list[str] = []
    kept_top: dict[str, str] = {}  # top-level name -> zone kept for it
    dropped: set[str] = set()
    for zone in order:
        parent = parent_of(zone)
        if parent is None:
            if names[zone] in kept_top:
                dropped.add(zone)
                notes.append(
                    f"{zone} ({names[zone]}) skipped: the same domain as {kept_top[names[zone]]}"
                )
            else:
                kept_top[names[zone]] = zone
        elif parent in dropped:
            dropped.add(zone)
    kept = [z for z in order if z not in dropped]

    def kind(zone: str) -> str:
        lowered = names[zone].lower()
        for k in ("package", "dram", "psys"):
            if lowered.startswith(k):
                return k
        return "part"

    top = [z for z in kept if parent_of(z) is None]
    packages = [z for z in top if kind(z) == "package"]
    if packages:
        summed = set(packages) | {z for z in kept if kind(z) == "dram"}
    else:
        psys = [z for z in top if kind(z) == "psys"]
        summed = set(psys) if psys else set(top)

    labels: dict[str, str] = {}
    for zone in kept:
        parent = parent_of(zone)
        label = names[zone] if parent is None else f"{labels[parent]}/{names[zone]}"
        if label in labels.values():
            label = f"{label}[{zone}]"
        labels[zone] = label

    zones: list[_RaplZone] = []
    for zone in kept:
        parent = parent_of(zone)
        if zone in summed:
            note = "summed"
        elif kind(zone) == "psys":
            note = "not summed: the platform domain already contains the packages"
        elif parent is not None:
            note = f"not summed: inside {labels[parent]}"
        else:
            note = "not summed"
        zones.append(
            _RaplZone(
                zone=zone,
                path=found[zone],
                name=names[zone],
                label=labels[zone],
                parent=parent,
                summed=zone in summed,
                note=note,
            )
        )
    return zones, notes


def _counter_delta(start: int, end: int, max_range: int | None, where: str) -> int:
    """µJ between two reads of a counter that wraps to 0 after ``max_range``."""
    if end >= start:
        return end - start
    if max_range is None or max_range <= 0:
        raise EnergyUnavailableError(
            f"{where} went back from {start} to {end} µJ and its max_energy_range_uj is "
            "unreadable, so the wraparound cannot be undone"
        )
    delta = end - start + max_range + 1
    if delta < 0:
        raise EnergyUnavailableError(
            f"{where} went back from {start} to {end} µJ, more than its range {max_range} µJ"
        )
    return delta


class RaplMeter(EnergyMeter):
    """Linux powercap RAPL energy counters (CPU packages and DRAM).

    Args:
        powercap_root: the powercap class directory (``/sys/class/powercap``).
        strict: raise :class:`EnergyUnavailableError` instead of returning unavailable
            readings.

    See the module docstring for which domains are summed and how wraparound is handled.
    """

    name = "rapl"
    recommended_min_seconds = 0.1

    def __init__(
        self, powercap_root: str | os.PathLike[str] = DEFAULT_POWERCAP_ROOT, *, strict: bool = False
    ) -> None:
        super().__init__(strict=strict)
        if not isinstance(powercap_root, (str, os.PathLike)):
            raise ConfigError(f"powercap_root must be a path, got {powercap_root!r}")
        self.powercap_root = Path(powercap_root)
        self._zones: list[_RaplZone] = []
        self._max_uj: dict[str, int | None] = {}

    def check(self) -> tuple[bool, str]:
        try:
            zones, notes = _discover_rapl_zones(self.powercap_root)
        except EnergyUnavailableError as exc:
            return False, str(exc)
        readable: list[_RaplZone] = []
        failed: list[tuple[_RaplZone, BaseException]] = []
        for zone in zones:
            try:
                _read_counter(zone.path / "energy_uj")
            except (OSError, ValueError) as exc:
                failed.append((zone, exc))
            else:
                readable.append(zone)
        blocking = [(z, e) for z, e in failed if z.summed]
        if blocking:
            message = "; ".join(
                f"cannot read {z.path / 'energy_uj'} ({z.label}): {_explain_os_error(e)}"
                for z, e in blocking
            )
            if any(isinstance(e, PermissionError) for _, e in blocking):
                message += ". " + _RAPL_PERMISSION_HELP
            return False, message
        self._zones = readable
        self._max_uj = {}
        for zone in readable:
            try:
                self._max_uj[zone.zone] = _read_counter(zone.path / "max_energy_range_uj")
            except (OSError, ValueError):
                self._max_uj[zone.zone] = None
        labels = [z.label for z in readable]
        summed = [z.label for z in readable if z.summed]
        detail = (
            f"reads {len(readable)} domain{'s' if len(readable) != 1 else ''}: "
            f"{', '.join(labels)}; total = {' + '.join(summed)}"
        )
        if failed:
            detail += "; not readable (not summed): " + ", ".join(
                f"{z.label} ({_explain_os_error(e)})" for z, e in failed
            )
        if notes:
            detail += "; " + "; ".join(notes)
        return True, detail

    def _settings(self) -> dict[str, Any]:
        try:
            zones, _ = _discover_rapl_zones(self.powercap_root)
        except EnergyUnavailableError:
            zones = []
        return {
            "powercap_root": str(self.powercap_root),
            "domains": [
                {"zone": z.zone, "name": z.name, "label": z.label, "summed": z.summed}
                for z in zones
            ],
        }

    def _read_all(self) -> dict[str, int]:
        values: dict[str, int] = {}
        for zone in self._zones:
            path = zone.path / "energy_uj"
            try:
                values[zone.zone] = _read_counter(path)
            except (OSError, ValueError) as exc:
                message = f"cannot read {path} ({zone.label}): {_explain_os_error(exc)}"
                if isinstance(exc, PermissionError):
                    message += ". " + _RAPL_PERMISSION_HELP
                raise EnergyUnavailableError(message) from exc
        return values

    def _begin(self) -> dict[str, int]:
        return self._read_all()

    def _end(self, token: dict[str, int]) -> tuple[float, dict[str, float]]:
        end = self._read_all()
        domains: dict[str, float] = {}
        total = 0.0
        for zone in self._zones:
            delta = _counter_delta(
                token[zone.zone],
                end[zone.zone],
                self._max_uj.get(zone.zone),
                f"{zone.path / 'energy_uj'} ({zone.label})",
            )
            joules = delta / 1e6
            domains[zone.label] = joules
            if zone.summed:
                total += joules
        return total, domains

    def _measured_reason(self, joules: float, domains: Mapping[str, float]) -> str | None:
        summed = [z.label for z in self._zones if z.summed]
        others = [f"{z.label} ({z.note})" for z in self._zones if not z.summed]
        reason = f"RAPL total = {' + '.join(summed)}"
        if others:
            reason += "; " + "; ".join(others)
        return reason


# --------------------------------------------------------------------------- NVML


def _index_tuple(value: object, option: str, *, allow_none: bool = False) -> tuple[int, ...] | None:
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


class NvmlMeter(EnergyMeter):
    """NVIDIA GPU total-energy counter through NVML (``nvidia-ml-py``).

    Args:
        device: NVML device index or indices (the order of ``nvidia-smi``, which ignores
            ``CUDA_VISIBLE_DEVICES``); energies of several devices are summed.
        strict: raise instead of returning unavailable readings.

    The counter (mJ since the driver loaded, Volta and newer) updates every ~20–100 ms:
    measure with ``min_seconds`` >= 1. Only the GPU is counted, not the host CPU.
    """

    name = "nvml"
    recommended_min_seconds = 1.0

    def __init__(self, device: int | Sequence[int] = 0, *, strict: bool = False) -> None:
        super().__init__(strict=strict)
        devices = _index_tuple(device, "device")
        assert devices is not None
        if not devices:
            raise ConfigError("device must name at least one GPU")
        self.devices: tuple[int, ...] = devices
        self._nvml: Any = None
        self._handles: dict[int, Any] = {}
        self._names: dict[int, str] = {}

    def _open(self) -> None:
        if self._nvml is not None:
            return
        try:
            import pynvml  # from the nvidia-ml-py package
        except ImportError:
            raise EnergyUnavailableError(
                "nvidia-ml-py is not installed (pip install 'paretoskip[nvml]')"
            ) from None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            raise EnergyUnavailableError(
                f"NVML could not start (no NVIDIA GPU or driver here?): {exc}"
            ) from exc
        try:
            count = pynvml.nvmlDeviceGetCount()
            handles: dict[int, Any] = {}
            names: dict[int, str] = {}
            for index in self.devices:
                if index >= count:
                    raise EnergyUnavailableError(
                        f"NVML sees {count} GPU(s); device {index} does not exist"
                    )
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(handle)
                names[index] = name.decode() if isinstance(name, bytes) else str(name)
                try:
                    pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                except Exception as exc:
                    raise EnergyUnavailableError(
                        f"GPU {index} ({names[index]}) has no readable total-energy counter "
                        f"(needs a Volta or newer GPU): {exc}"
                    ) from exc
                handles[index] = handle
        except EnergyUnavailableError:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()
            raise
        except Exception as exc:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()
            raise EnergyUnavailableError(f"NVML failed: {exc}") from exc
        self._nvml, self._handles, self._names = pynvml, handles, names

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            finally:
                self._nvml, self._handles = None, {}

    def check(self) -> tuple[bool, str]:
        try:
            self._open()
        except EnergyUnavailableError as exc:
            return False, str(exc)
        gpus = ", ".join(f"GPU {i} ({self._names[i]})" for i in self.devices)
        return True, f"reads the NVML total-energy counter of {gpus}"

    def _settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"devices": list(self.devices)}
        if self._names:
            out["device_names"] = [self._names[i] for i in self.devices]
        return out

    def _read_all(self) -> dict[int, int]:
        try:
            return {
                i: int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handles[i]))
                for i in self.devices
            }
        except Exception as exc:
            raise EnergyUnavailableError(f"reading the NVML energy counter failed: {exc}") from exc

    def _begin(self) -> dict[int, int]:
        return self._read_all()

    def _end(self, token: dict[int, int]) -> tuple[float, dict[str, float]]:
        end = self._read_all()
        domains: dict[str, float] = {}
        for i in self.devices:
            if end[i] < token[i]:
                raise EnergyUnavailableError(
                    f"the NVML energy counter of GPU {i} went back (driver reloaded?)"
                )
            domains[f"gpu{i}"] = (end[i] - token[i]) / 1000.0
        return sum(domains.values()), domains

    def _no_energy_reason(self, joules: float, seconds: float, calls: int) -> str:
        return (
            f"the NVML energy counter did not advance during a {seconds:.3g} s window of "
            f"{calls} call(s): it updates only every ~20-100 ms, so measure with "
            "min_seconds >= 1; no energy is reported"
        )

    def _measured_reason(self, joules: float, domains: Mapping[str, float]) -> str | None:
        return "NVML total-energy counter of " + ", ".join(
            f"GPU {i} ({self._names.get(i, '?')})" for i in self.devices
        )


# --------------------------------------------------------------------------- Zeus


class ZeusMeter(EnergyMeter):
    """``zeus.monitor.ZeusMonitor`` windows: GPU + CPU package + DRAM energy, summed.

    Args:
        gpu_indices: CUDA device indices for Zeus (``None``: every GPU it finds).
        cpu_indices: CPU package indices for Zeus (``None``: every package it can read).
        strict: raise instead of returning unavailable readings.

    With no readable hardware Zeus monitors nothing and reports 0 J without an error; here
    that is "unavailable", never 0.
    """

    name = "zeus"
    recommended_min_seconds = 1.0

    def __init__(
        self,
        gpu_indices: Sequence[int] | None = None,
        cpu_indices: Sequence[int] | None = None,
        *,
        strict: bool = False,
    ) -> None:
        super().__init__(strict=strict)
        self.gpu_indices = _index_tuple(gpu_indices, "gpu_indices", allow_none=True)
        self.cpu_indices = _index_tuple(cpu_indices, "cpu_indices", allow_none=True)
        self._monitor: Any = None
        self._windows = 0

    def _open(self) -> Any:
        if self._monitor is not None:
            return self._monitor
        try:
            from zeus.monitor import ZeusMonitor
        except ImportError:
            raise EnergyUnavailableError(
                "zeus is not installed (pip install 'paretoskip[zeus]')"
            ) from None
        try:
            monitor = ZeusMonitor(
                gpu_indices=None if self.gpu_indices is None else list(self.gpu_indices),
                cpu_indices=None if self.cpu_indices is None else list(self.cpu_indices),
            )
        except Exception as exc:  # e.g. ValueError for a CPU index it cannot read
            raise EnergyUnavailableError(f"zeus could not start: {exc}") from exc
        gpus = list(getattr(monitor, "gpu_indices", []) or [])
        cpus = list(getattr(monitor, "cpu_indices", []) or [])
        if not gpus and not cpus:
            raise EnergyUnavailableError(
                "zeus found no GPU and no readable CPU energy counter here; it would report "
                "0 J without an error, which is not a measurement"
            )
        self._monitor = monitor
        return monitor

    def check(self) -> tuple[bool, str]:
        try:
            monitor = self._open()
        except EnergyUnavailableError as exc:
            return False, str(exc)
        return True, (
            f"zeus monitors GPUs {list(monitor.gpu_indices)} and CPU packages "
            f"{list(monitor.cpu_indices)}"
        )

    def _settings(self) -> dict[str, Any]:
        return {
            "gpu_indices": None if self.gpu_indices is None else list(self.gpu_indices),
            "cpu_indices": None if self.cpu_indices is None else list(self.cpu_indices),
        }

    def _begin(self) -> str:
        self._windows += 1
        key = f"paretoskip-energy-{id(self)}-{self._windows}"
        try:
            self._monitor.begin_window(key)
        except Exception as exc:
            raise EnergyUnavailableError(f"zeus begin_window failed: {exc}") from exc
        return key

    def _end(self, token: str) -> tuple[float, dict[str, float]]:
        try:
            result = self._monitor.end_window(token)
        except Exception as exc:
            raise EnergyUnavailableError(f"zeus end_window failed: {exc}") from exc
        domains: dict[str, float] = {}
        for prefix, values in (
            ("gpu", getattr(result, "gpu_energy", None)),
            ("cpu", getattr(result, "cpu_energy", None)),
            ("dram", getattr(result, "dram_energy", None)),
        ):
            for index, joules in (values or {}).items():
                domains[f"{prefix}{index}"] = float(joules)
        return sum(domains.values()), domains

    def _no_energy_reason(self, joules: float, seconds: float, calls: int) -> str:
        return (
            f"zeus reported {joules!r} J for a {seconds:.3g} s window of {calls} call(s): it "
            "reads no hardware here or its counter did not advance (measure with "
            "min_seconds >= 1); no energy is reported"
        )

    def _measured_reason(self, joules: float, domains: Mapping[str, float]) -> str | None:
        return "zeus total = " + " + ".join(domains)


# --------------------------------------------------------------------------- estimated


class EstimatedMeter(EnergyMeter):
    """An estimate, not a measurement: process CPU seconds × ``watts_per_core``.

    ``time.process_time()`` counts the CPU time of every thread of this process, so
    ``joules = CPU-seconds × watts_per_core`` charges each busy core ``watts_per_core``.
    Idle, uncore, DRAM and GPU power, and other processes, are not counted.

    Args:
        watts_per_core: power of one busy core in watts. The default
            (:data:`DEFAULT_WATTS_PER_CORE`, 10 W) is a placeholder — roughly a typical
            CPU's TDP divided by its core count — that you should set for your CPU.
        strict: accepted for symmetry; an estimate is always available.
    """

    name = "estimated"

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE, *, strict: bool = False):
        super().__init__(strict=strict)
        if (
            isinstance(watts_per_core, bool)
            or not isinstance(watts_per_core, Real)
            or not math.isfinite(watts_per_core)
            or watts_per_core <= 0
        ):
            raise ConfigError(
                f"watts_per_core must be a number of watts > 0, got {watts_per_core!r}"
            )
        self.watts_per_core = float(watts_per_core)

    @property
    def source(self) -> str:
        return "estimated:cpu-time"

    def check(self) -> tuple[bool, str]:
        return True, (
            "estimates, does not measure: process CPU seconds × "
            f"{self.watts_per_core:g} W per busy core (used only when asked for)"
        )

    def _settings(self) -> dict[str, Any]:
        return {
            "watts_per_core": self.watts_per_core,
            "formula": "process CPU seconds (time.process_time) x watts_per_core",
        }

    def _begin(self) -> float:
        return time.process_time()

    def _end(self, token: float) -> tuple[float, dict[str, float]]:
        cpu_seconds = time.process_time() - token
        return cpu_seconds * self.watts_per_core, {}

    def _no_energy_reason(self, joules: float, seconds: float, calls: int) -> str:
        return (
            f"the process used no measurable CPU time during a {seconds:.3g} s window of "
            f"{calls} call(s), so there is nothing to estimate from"
        )

    def _measured_reason(self, joules: float, domains: Mapping[str, float]) -> str | None:
        cpu = joules / self.watts_per_core
        placeholder = (
            " (the default, a placeholder: set watts_per_core for your CPU)"
            if self.watts_per_core == DEFAULT_WATTS_PER_CORE
            else ""
        )
        return (
            f"estimated, not measured: {cpu:.4g} process CPU-seconds per call × "
            f"{self.watts_per_core:g} W per busy core{placeholder}; idle, uncore, DRAM and "
            "GPU power are not counted"
        )


# --------------------------------------------------------------------------- none


class NullMeter(EnergyMeter):
    """No energy: every reading is unavailable (NaN) with the reason."""

    name = "none"

    def __init__(self, *, strict: bool = False, reason: str = _NONE_REASON) -> None:
        super().__init__(strict=strict)
        self.reason = reason

    @property
    def source(self) -> str:
        return _UNAVAILABLE

    def check(self) -> tuple[bool, str]:
        return False, self.reason

    def _settings(self) -> dict[str, Any]:
        return {}

    def measure(
        self,
        workload: Callable[[], object],
        *,
        min_seconds: float = 1.0,
        windows: int = 3,
    ) -> EnergyReading:
        """Always an unavailable reading; the workload is not run. Never raises."""
        if not callable(workload):
            raise ConfigError(f"workload must be callable, got {type(workload).__name__}")
        _check_min_seconds(min_seconds)
        _check_windows(windows)
        return EnergyReading.unavailable(self.reason)


# --------------------------------------------------------------------------- factory

_CLASSES: dict[str, type[EnergyMeter]] = {
    "rapl": RaplMeter,
    "nvml": NvmlMeter,
    "zeus": ZeusMeter,
    "estimated": EstimatedMeter,
    "none": NullMeter,
}
_OPTIONS: dict[str, tuple[str, ...]] = {
    "rapl": ("powercap_root", "strict"),
    "nvml": ("device", "strict"),
    "zeus": ("gpu_indices", "cpu_indices", "strict"),
    "estimated": ("watts_per_core", "strict"),
    "none": ("strict",),
}
_ALL_OPTIONS = tuple(sorted({o for opts in _OPTIONS.values() for o in opts}))


def _backend_name(backend: object) -> str:
    name = backend.strip().lower() if isinstance(backend, str) else backend
    if name not in ENERGY_BACKENDS:
        raise ConfigError(
            f"unknown energy backend {backend!r}; choose one of {', '.join(ENERGY_BACKENDS)}"
        )
    assert isinstance(name, str)
    return name


def _check_option_names(options: Mapping[str, Any], accepted: Sequence[str], what: str) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {what}; "
            f"accepted: {', '.join(accepted)}"
        )


def _build(name: str, options: Mapping[str, Any]) -> EnergyMeter:
    return _CLASSES[name](**{k: v for k, v in options.items() if k in _OPTIONS[name]})


def make_energy_meter(backend: str = "none", **options: Any) -> EnergyMeter:
    """The energy meter named ``backend``, one of :data:`ENERGY_BACKENDS`.

    Options: ``powercap_root`` (rapl), ``device`` (nvml), ``gpu_indices`` and
    ``cpu_indices`` (zeus), ``watts_per_core`` (estimated) and ``strict`` (all; see the
    module docstring). A named backend accepts only its own options; ``auto`` accepts those
    of rapl, nvml and zeus (and ``strict``) and passes each its own.

    ``auto`` returns the first of rapl, nvml, zeus whose :meth:`~EnergyMeter.check` really
    reads, else a ``none`` meter whose readings say why nothing could be read; it never picks
    ``estimated``. Its choice, and why the backends tried before it did not read, are logged
    and recorded under ``"auto"`` in the meter's :meth:`~EnergyMeter.describe`.

    Raises:
        ConfigError: unknown backend or option, or a bad option value.
        EnergyUnavailableError: ``strict=True`` and the backend cannot read here.

    Example:
        >>> make_energy_meter("estimated", watts_per_core=12.5).describe()["watts_per_core"]
        12.5
        >>> make_energy_meter("rapl", powercap_root="/nonexistent").check()[0]
        False
    """
    name = _backend_name(backend)
    if name == "auto":
        return _auto(options)
    _check_option_names(options, _OPTIONS[name], f"energy backend {name!r}")
    meter = _build(name, options)
    if meter.strict and name != "none":
        ok, why = meter.check()
        if not ok:
            raise EnergyUnavailableError(f"energy backend {name!r} cannot read here: {why}")
    return meter


def _auto(options: Mapping[str, Any]) -> EnergyMeter:
    accepted = tuple(sorted({o for n in _AUTO_ORDER for o in _OPTIONS[n]}))
    _check_option_names(options, accepted, "energy backend 'auto'")
    strict = options.get("strict", False)
    candidate_options = {k: v for k, v in options.items() if k != "strict"}
    # Validate every candidate's options before reading any counter.
    candidates = [_build(name, candidate_options) for name in _AUTO_ORDER]
    rejected: dict[str, str] = {}
    for meter in candidates:
        try:
            ok, detail = meter.check()
        except Exception as exc:  # a backend bug must not stop the choice
            ok, detail = False, f"check failed: {exc!r}"
        if ok:
            untried = [
                m.name for m in candidates if m.name != meter.name and m.name not in rejected
            ]
            meter.strict = bool(strict)
            meter._auto = {
                "chosen_by": "auto",
                "why": detail,
                "not_chosen": dict(rejected),
                "not_tried": untried,
            }
            logger.info(
                "energy backend auto chose %r: %s%s",
                meter.name,
                detail,
                "".join(f"; {n} did not read: {r}" for n, r in rejected.items()),
            )
            return meter
        rejected[meter.name] = detail
        meter.close()
    summary = "; ".join(f"{n}: {r}" for n, r in rejected.items())
    if strict:
        raise EnergyUnavailableError(f"no energy counter is readable here ({summary})")
    logger.info("energy backend auto chose 'none': no counter reads here (%s)", summary)
    meter = NullMeter(reason=f"no energy counter is readable here (backend 'auto': {summary})")
    meter._auto = {
        "chosen_by": "auto",
        "why": "none of rapl, nvml, zeus reads here",
        "not_chosen": dict(rejected),
        "not_tried": [],
    }
    return meter


def probe_energy_meters(**options: Any) -> list[dict[str, Any]]:
    """Whether each backend of :data:`ENERGY_BACKENDS` reads here (for ``paretoskip info``).

    Returns one ``{"backend", "ok", "detail"}`` per backend; the ``auto`` row says which
    backend ``auto`` would choose. ``strict`` is ignored; other options are those of
    :func:`make_energy_meter`.

    Example:
        >>> rows = probe_energy_meters(powercap_root="/nonexistent")
        >>> [r["backend"] for r in rows] == list(ENERGY_BACKENDS)
        True
    """
    _check_option_names(options, _ALL_OPTIONS, "probe_energy_meters")
    options = {k: v for k, v in options.items() if k != "strict"}
    rows: dict[str, dict[str, Any]] = {}
    for name in ENERGY_BACKENDS:
        if name == "auto":
            continue
        meter = _build(name, options)
        try:
            ok, detail = meter.check()
        except Exception as exc:
            ok, detail = False, f"check failed: {exc!r}"
        finally:
            meter.close()
        rows[name] = {"backend": name, "ok": ok, "detail": detail}
    chosen = next((n for n in _AUTO_ORDER if rows[n]["ok"]), None)
    if chosen is None:
        auto_row = {
            "backend": "auto",
            "ok": False,
            "detail": "would choose none: none of rapl, nvml, zeus reads here",
        }
    else:
        auto_row = {"backend": "auto", "ok": True, "detail": f"would choose {chosen}"}
    rows["auto"] = auto_row
    return [rows[name] for name in ENERGY_BACKENDS]
