"""No energy: every reading is unavailable; see :mod:`paretoskip.energy`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ._base import (
    UNAVAILABLE,
    EnergyMeter,
    EnergyReading,
    PowerReading,
    check_min_seconds,
    check_windows,
)

__all__ = ["NullMeter"]

_NONE_REASON = "energy measurement disabled (backend 'none')"


class NullMeter(EnergyMeter):
    """No energy: every reading is unavailable (NaN) with the reason."""

    name = "none"

    def __init__(self, *, strict: bool = False, reason: str = _NONE_REASON) -> None:
        super().__init__(strict=strict)
        self.reason = reason

    @property
    def source(self) -> str:
        return UNAVAILABLE

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
        check_min_seconds(min_seconds)
        check_windows(windows)
        return EnergyReading.unavailable(self.reason)

    def measure_idle(
        self, *, min_seconds: float = 1.0, windows: int = 3, poll_seconds: float = 0.005
    ) -> PowerReading:
        """Always an unavailable reading. Never raises."""
        check_min_seconds(min_seconds)
        check_windows(windows)
        return PowerReading.unavailable(self.reason)
