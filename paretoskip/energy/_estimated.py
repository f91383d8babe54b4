"""An estimate from process CPU time (used only when asked for); see :mod:`paretoskip.energy`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ._base import EnergyMeter, check_positive

__all__ = ["EstimatedMeter", "DEFAULT_WATTS_PER_CORE"]

#: Placeholder power of one busy core for the ``estimated`` backend, in watts. It is a rough
#: share of a typical CPU's TDP per core (65–125 W over 6–16 cores is ~5–15 W), not a
#: property of this machine: set ``watts_per_core`` for your CPU.
DEFAULT_WATTS_PER_CORE = 10.0


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
        self.watts_per_core = check_positive(watts_per_core, "watts_per_core", "watts")

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
