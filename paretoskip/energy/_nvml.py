"""NVIDIA's total-energy counter through NVML; see :mod:`paretoskip.energy`.

The counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ since the driver loaded, Volta and
newer) is published in steps, every ~20-100 ms.  :class:`NvmlMeter` is therefore an
*aligned* meter: each measurement window opens and closes on a counter update with the
workload running across both (see :meth:`EnergyMeter._aligned_window
<paretoskip.energy.EnergyMeter._aligned_window>`), and lasts at least ``min_seconds``
(keep 1 s).  A counter that does not move for ``stall_seconds`` gives an unavailable
reading, never 0 J.

GPUs are chosen by NVML index (``device``, the order of ``nvidia-smi``, which ignores
``CUDA_VISIBLE_DEVICES``) or, better, by UUID (``uuid``): :func:`nvml_uuid_of` gives the
UUID of a torch CUDA device, so the meter reads the GPU the model really runs on whatever
``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` say.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError, EnergyUnavailableError
from ._base import EnergyMeter, check_positive, index_tuple

__all__ = ["NvmlMeter", "nvml_device_record", "nvml_uuid_of"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _uuid_tuple(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or isinstance(items, bytes):
        raise ConfigError(f"uuid must be a GPU UUID or a list of them, got {value!r}")
    out = tuple(items)
    if not out or any(not isinstance(u, str) or not u.strip() for u in out):
        raise ConfigError(f"uuid must hold non-empty strings such as 'GPU-8e2f…', got {value!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"uuid lists a GPU twice: {value!r}")
    return tuple(u.strip() for u in out)


def nvml_uuid_of(device: Any) -> str | None:
    """The NVML UUID (``"GPU-…"``) of a torch CUDA device, or None when torch does not say.

    Example:
        >>> nvml_uuid_of("cpu") is None
        True
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        raw = str(torch.cuda.get_device_properties(device).uuid)
    except Exception:  # noqa: BLE001 - older builds have no uuid
        return None
    if not raw:
        return None
    return raw if raw.startswith(("GPU-", "MIG-")) else f"GPU-{raw}"


class NvmlMeter(EnergyMeter):
    """NVIDIA GPU total-energy counter through NVML (``nvidia-ml-py``).

    Args:
        device: NVML device index or indices (the order of ``nvidia-smi``, which ignores
            ``CUDA_VISIBLE_DEVICES``); energies of several devices are summed.
        uuid: GPU UUID(s) (``"GPU-…"``, see :func:`nvml_uuid_of`); when given they choose
            the GPUs and ``device`` is not used.
        stall_seconds: a counter that does not move for this long is frozen (an
            unavailable reading).
        library: the NVML binding to use (default: ``import pynvml`` from
            ``nvidia-ml-py``); any object with pynvml's functions (``nvmlInit``,
            ``nvmlDeviceGetHandleByIndex``, ``nvmlDeviceGetTotalEnergyConsumption``, ...).
        strict: raise instead of returning unavailable readings.

    Only the GPU is counted, not the host CPU.
    """

    name = "nvml"
    recommended_min_seconds = 1.0
    aligned = True

    def __init__(
        self,
        device: int | Sequence[int] = 0,
        *,
        uuid: str | Sequence[str] | None = None,
        stall_seconds: float = 2.0,
        library: Any = None,
        strict: bool = False,
    ) -> None:
        super().__init__(strict=strict)
        self._library = library
        devices = index_tuple(device, "device")
        assert devices is not None
        if not devices:
            raise ConfigError("device must name at least one GPU")
        check_positive(stall_seconds, "stall_seconds", "seconds")
        self.uuids: tuple[str, ...] | None = _uuid_tuple(uuid)
        self.devices: tuple[int, ...] = (
            devices if self.uuids is None else tuple(range(len(self.uuids)))
        )
        self.stall_seconds = float(stall_seconds)
        self._nvml: Any = None
        self._handles: dict[int, Any] = {}
        self._names: dict[int, str] = {}

    def _label(self, i: int) -> str:
        return f"GPU {self.uuids[i]}" if self.uuids is not None else f"GPU {i}"

    def _open(self) -> None:
        if self._nvml is not None:
            return
        pynvml = self._library
        if pynvml is None:
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
                if self.uuids is not None:
                    try:
                        handle = pynvml.nvmlDeviceGetHandleByUUID(self.uuids[index])
                    except Exception as exc:
                        raise EnergyUnavailableError(
                            f"NVML sees {count} GPU(s), none with UUID {self.uuids[index]}: {exc}"
                        ) from exc
                else:
                    if index >= count:
                        raise EnergyUnavailableError(
                            f"NVML sees {count} GPU(s); device {index} does not exist"
                        )
                    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                names[index] = _text(pynvml.nvmlDeviceGetName(handle))
                try:
                    pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                except Exception as exc:
                    raise EnergyUnavailableError(
                        f"{self._label(index)} ({names[index]}) has no readable total-energy "
                        f"counter (needs a Volta or newer GPU, and no MIG instance): {exc}"
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
        gpus = ", ".join(f"{self._label(i)} ({self._names[i]})" for i in self.devices)
        return True, f"reads the NVML total-energy counter of {gpus}"

    def _settings(self) -> dict[str, Any]:
        out: dict[str, Any] = (
            {"devices": list(self.devices)} if self.uuids is None else {"uuids": list(self.uuids)}
        )
        if self._names:
            out["device_names"] = [self._names[i] for i in self.devices]
        return out

    def _read(self) -> dict[int, int]:
        if self._nvml is None:
            self._open()
        try:
            return {
                i: int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handles[i]))
                for i in self.devices
            }
        except Exception as exc:
            raise EnergyUnavailableError(f"reading the NVML energy counter failed: {exc}") from exc

    def _begin(self) -> dict[int, int]:
        return self._read()

    def _advanced(self, before: dict[int, int], after: dict[int, int]) -> bool:
        # every GPU's counter must have published a new value, or its share is stale
        return all(after[i] != before[i] for i in self.devices)

    def _difference(
        self, start: dict[int, int], end: dict[int, int]
    ) -> tuple[float, dict[str, float]]:
        domains: dict[str, float] = {}
        for i in self.devices:
            if end[i] < start[i]:
                raise EnergyUnavailableError(
                    f"the NVML energy counter of {self._label(i)} went back (driver reloaded?)"
                )
            domains[f"gpu{i}"] = (end[i] - start[i]) / 1000.0
        return sum(domains.values()), domains

    def _end(self, token: dict[int, int]) -> tuple[float, dict[str, float]]:
        return self._difference(token, self._read())

    def _no_energy_reason(self, joules: float, seconds: float, calls: int) -> str:
        return (
            f"the NVML energy counter did not advance for {seconds:.3g} s ({calls} call(s) of "
            "the workload): it is frozen or not supported here, so no energy is reported"
        )

    def _measured_reason(self, joules: float, domains: Mapping[str, float]) -> str | None:
        return "NVML total-energy counter of " + ", ".join(
            f"{self._label(i)} ({self._names.get(i, '?')})" for i in self.devices
        )


def nvml_device_record(
    uuid: str | None = None, index: int | None = None, *, library: Any = None
) -> dict[str, Any]:
    """What NVML says about one GPU: driver version, clocks (MHz) and power limit (W).

    The GPU is chosen by ``uuid`` (preferred) or NVML ``index``.  Only settings that stay
    put are recorded (maximum and application clocks, the enforced power limit), so the
    record can go into a measurement fingerprint; the current clock changes with load and
    is left out.  Returns ``{"nvml": "why not"}`` when NVML cannot be read; a field NVML
    does not support is left out.  ``library`` is the NVML binding (default ``pynvml``).

    Example:
        >>> isinstance(nvml_device_record(index=99), dict)
        True
    """
    pynvml = library
    if pynvml is None:
        try:
            import pynvml
        except ImportError:
            return {"nvml": "nvidia-ml-py is not installed"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001
        return {"nvml": f"NVML could not start: {exc}"}
    out: dict[str, Any] = {}
    try:
        try:
            if uuid is not None:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(index or 0))
        except Exception as exc:  # noqa: BLE001
            return {"nvml": f"NVML has no GPU {uuid if uuid is not None else index}: {exc}"}
        with contextlib.suppress(Exception):
            out["driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
        clocks: dict[str, int] = {}
        for key, getter, kind in (
            ("sm_max", "nvmlDeviceGetMaxClockInfo", "NVML_CLOCK_SM"),
            ("memory_max", "nvmlDeviceGetMaxClockInfo", "NVML_CLOCK_MEM"),
            ("sm_application", "nvmlDeviceGetApplicationsClock", "NVML_CLOCK_SM"),
            ("memory_application", "nvmlDeviceGetApplicationsClock", "NVML_CLOCK_MEM"),
        ):
            with contextlib.suppress(Exception):
                clocks[key] = int(getattr(pynvml, getter)(handle, getattr(pynvml, kind)))
        if clocks:
            out["clocks_mhz"] = clocks
        with contextlib.suppress(Exception):
            out["power_limit_w"] = int(pynvml.nvmlDeviceGetEnforcedPowerLimit(handle)) / 1000.0
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return out
