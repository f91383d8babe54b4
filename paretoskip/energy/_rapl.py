"""Linux powercap RAPL counters (CPU packages and DRAM); see :mod:`paretoskip.energy`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, EnergyUnavailableError
from ._base import EnergyMeter

__all__ = ["RaplMeter", "DEFAULT_POWERCAP_ROOT"]

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"

_RAPL_PERMISSION_HELP = (
    "Since the fix for CVE-2020-8694 (PLATYPUS) Linux lets only root read RAPL energy "
    "counters. Grant read access until the next boot with "
    "`sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj "
    "/sys/class/powercap/intel-rapl:*:*/energy_uj`, for good with a udev rule such as "
    '`SUBSYSTEM=="powercap", ACTION=="add", RUN+="/bin/chmod a+r /sys%p/energy_uj"` in '
    "/etc/udev/rules.d/99-powercap.rules (better: chgrp the files to a trusted group and "
    "chmod g+r, since readable counters allow a power side channel), or run as root"
)


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
