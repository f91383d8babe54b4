"""``zeus.monitor.ZeusMonitor`` windows; see :mod:`paretoskip.energy`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import EnergyUnavailableError
from ._base import EnergyMeter, index_tuple

__all__ = ["ZeusMeter"]


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
        self.gpu_indices = index_tuple(gpu_indices, "gpu_indices", allow_none=True)
        self.cpu_indices = index_tuple(cpu_indices, "cpu_indices", allow_none=True)
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
