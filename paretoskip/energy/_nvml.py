"""NVIDIA's total-energy counter through NVML; see :mod:`paretoskip.energy`."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError, EnergyUnavailableError
from ._base import EnergyMeter, index_tuple

__all__ = ["NvmlMeter"]


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
        devices = index_tuple(device, "device")
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
