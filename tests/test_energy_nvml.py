"""The NVML energy reader against a pynvml-like object (no GPU needed).

``FakeNvml`` is a real object with the functions of nvidia-ml-py's ``pynvml`` that the
reader calls, over GPUs whose total-energy counter behaves as NVML's does: it counts mJ
since the driver loaded and *publishes* a new value only every ``step`` seconds of its own
(virtual) clock.  The clock advances by ``tick`` seconds at every counter read, and the
meter is given the same clock, so every expected value below is exact.
"""

from __future__ import annotations

import math

import pytest

from paretoskip.energy import (
    NvmlMeter,
    make_device_energy_meter,
    make_energy_meter,
    nvml_device_record,
)
from paretoskip.errors import ConfigError, EnergyUnavailableError


class NVMLError(Exception):
    pass


class FakeNvml:
    """pynvml's energy functions over ``len(watts)`` GPUs drawing ``watts`` W each."""

    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVMLError = NVMLError

    def __init__(
        self,
        watts: list[float],
        *,
        step: float = 0.05,
        tick: float = 0.01,
        frozen: bool = False,
        energy_supported: bool = True,
    ) -> None:
        self.watts = list(watts)
        self.step, self.tick = step, tick
        self.frozen = frozen
        self.energy_supported = energy_supported
        self.now = 1000.0  # virtual seconds since the driver loaded
        self.extra_mj = [0.0] * len(watts)  # energy added by workloads
        self.published = [self._true_mj(i) for i in range(len(watts))]
        self.published_at = self.now
        self.initialised = 0
        self.uuids = [f"GPU-0000000{i}-fake" for i in range(len(watts))]

    # the clock the meter is given
    def clock(self) -> float:
        return self.now

    def _true_mj(self, i: int) -> float:
        return self.watts[i] * self.now * 1000.0 + self.extra_mj[i]

    def work(self, joules: float, gpu: int = 0) -> None:
        """A workload call: ``joules`` on top of the GPU's steady draw."""
        self.extra_mj[gpu] += joules * 1000.0

    # -- pynvml ---------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.watts)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> tuple[str, int]:
        if not 0 <= index < len(self.watts):
            raise NVMLError("Invalid Argument")
        return ("handle", index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> tuple[str, int]:
        if uuid not in self.uuids:
            raise NVMLError("Not Found")
        return ("handle", self.uuids.index(uuid))

    def nvmlDeviceGetName(self, handle: tuple[str, int]) -> bytes:
        return b"Fake H200"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: tuple[str, int]) -> int:
        if not self.energy_supported:
            raise NVMLError("Not Supported")
        self.now += self.tick
        if not self.frozen and self.now - self.published_at >= self.step - 1e-9:
            self.published = [self._true_mj(i) for i in range(len(self.watts))]
            self.published_at = self.now
        return int(round(self.published[handle[1]]))

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86.15"

    def nvmlDeviceGetMaxClockInfo(self, handle: tuple[str, int], kind: int) -> int:
        return {1: 1980, 2: 3201}[kind]

    def nvmlDeviceGetApplicationsClock(self, handle: tuple[str, int], kind: int) -> int:
        raise NVMLError("Not Supported")

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: tuple[str, int]) -> int:
        return 700_000


def _meter(fake: FakeNvml, **options) -> NvmlMeter:
    meter = make_energy_meter("nvml", library=fake, **options)
    meter.clock = fake.clock
    return meter


def test_energy_per_call_is_the_workload_plus_the_steady_draw_over_aligned_windows() -> None:
    fake = FakeNvml([60.0], step=0.05, tick=0.01)  # publishes every 5th read
    meter = _meter(fake, device=0)
    ok, detail = meter.check()
    assert ok and "GPU 0 (Fake H200)" in detail
    # each call adds 2.5 J; the GPU also draws 60 W over the call's 10 ms read = 0.6 J
    reading = meter.measure(lambda: fake.work(2.5), min_seconds=1.0, windows=3)
    assert reading.source == "measured:nvml"
    assert reading.joules == pytest.approx(2.5 + 60.0 * 0.01, rel=1e-4)
    assert reading.spread == pytest.approx(0.0, abs=1e-4)
    # every window lasted at least min_seconds of the counter's clock, and counts its calls
    assert reading.seconds >= 3.0 and reading.calls >= 3 * 100
    assert "Fake H200" in reading.reason
    meter.close()
    assert fake.initialised == 0


def test_a_window_shorter_than_the_update_step_still_covers_whole_updates() -> None:
    # min_seconds 0: without alignment one call between two stale reads would read 0 J
    fake = FakeNvml([0.0], step=0.05, tick=0.01)
    meter = _meter(fake)
    reading = meter.measure(lambda: fake.work(1.0), min_seconds=0.0, windows=3)
    assert reading.source == "measured:nvml" and reading.joules == pytest.approx(1.0)
    assert reading.calls == 3 * 5  # one update period of 5 calls per window


def test_idle_power_is_measured_over_windows_of_the_counter() -> None:
    fake = FakeNvml([72.5], step=0.02, tick=0.005)
    meter = _meter(fake)
    idle = meter.measure_idle(min_seconds=1.0, windows=3, poll_seconds=0.0)
    assert idle.source == "measured:nvml" and idle.unit == "W"
    assert idle.watts == pytest.approx(72.5, rel=1e-4)
    assert idle.seconds >= 3.0 and idle.to_dict()["value"] == pytest.approx(72.5)


def test_a_frozen_counter_is_unavailable_never_zero() -> None:
    fake = FakeNvml([50.0], frozen=True, tick=0.1)
    meter = _meter(fake, stall_seconds=0.5)
    reading = meter.measure(lambda: fake.work(1.0), min_seconds=1.0, windows=3)
    assert reading.source == "unavailable" and math.isnan(reading.joules)
    assert "did not advance" in reading.reason
    idle = meter.measure_idle(min_seconds=1.0, windows=2, poll_seconds=0.0)
    assert not idle.available and math.isnan(idle.watts) and "did not advance" in idle.reason
    strict = _meter(FakeNvml([50.0], frozen=True, tick=0.1), stall_seconds=0.5, strict=True)
    with pytest.raises(EnergyUnavailableError, match="did not advance"):
        strict.measure(lambda: None, min_seconds=1.0, windows=1)


def test_a_gpu_without_the_energy_counter_is_unavailable_with_the_reason() -> None:
    fake = FakeNvml([50.0], energy_supported=False)
    ok, detail = _meter(fake).check()
    assert not ok and "no readable total-energy counter" in detail and "Not Supported" in detail
    assert fake.initialised == 0  # NVML shut down again


def test_gpus_are_chosen_by_uuid_and_several_are_summed() -> None:
    fake = FakeNvml([10.0, 20.0, 30.0], step=0.04, tick=0.01)
    meter = _meter(fake, uuid=[fake.uuids[2], fake.uuids[0]])
    reading = meter.measure(lambda: fake.work(1.0, gpu=2), min_seconds=1.0, windows=1)
    # a call is followed by one read of each GPU read (2 x 10 ms):
    # GPU 2: 1 J + 30 W x 20 ms; GPU 0: 10 W x 20 ms; GPU 1 is not read
    assert reading.joules == pytest.approx(1.0 + 0.6 + 0.2, rel=1e-4)
    assert set(reading.domains) == {"gpu0", "gpu1"}
    assert meter.describe()["uuids"] == [fake.uuids[2], fake.uuids[0]]
    ok, detail = _meter(fake, uuid="GPU-missing").check()
    assert not ok and "none with UUID GPU-missing" in detail
    ok, detail = _meter(fake, device=5).check()
    assert not ok and "device 5 does not exist" in detail


def test_device_energy_meter_reads_the_gpu_only_for_a_gpu_model() -> None:
    fake = FakeNvml([40.0])
    with pytest.raises(ConfigError, match="never ran the candidate"):
        make_device_energy_meter("nvml", "cpu", library=fake)
    with pytest.raises(ConfigError, match="measures the host CPU"):
        make_device_energy_meter("rapl", "cuda:0")
    with pytest.raises(ConfigError, match="no energy backends"):
        make_device_energy_meter("auto", "meta")


def test_device_record_from_nvml() -> None:
    fake = FakeNvml([40.0, 41.0])
    record = nvml_device_record(uuid=fake.uuids[1], library=fake)
    assert record == {
        "driver": "570.86.15",
        "clocks_mhz": {"sm_max": 1980, "memory_max": 3201},
        "power_limit_w": 700.0,
    }
    assert fake.initialised == 0
    missing = nvml_device_record(uuid="GPU-nope", library=fake)
    assert set(missing) == {"nvml"} and "GPU-nope" in missing["nvml"]
