"""Energy meters: RAPL on real powercap trees written to disk, auto, estimated, none."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import stat
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest

from paretoskip.energy import (
    DEFAULT_WATTS_PER_CORE,
    ENERGY_BACKENDS,
    EnergyReading,
    EstimatedMeter,
    NullMeter,
    NvmlMeter,
    RaplMeter,
    ZeusMeter,
    make_energy_meter,
    probe_energy_meters,
)
from paretoskip.errors import ConfigError, EnergyUnavailableError

# The value a real Skylake-SP package reports.
MAX_UJ = 262_143_328_850


class Powercap:
    """A powercap tree laid out as Linux lays it out.

    The zones live nested under ``devices/<control type>/`` (``intel-rapl:0/intel-rapl:0:1``);
    ``class/`` holds a symlink for the control type and for every zone, like
    ``/sys/class/powercap``. Each zone has ``name``, ``energy_uj``, ``max_energy_range_uj``,
    a ``power`` directory and a ``subsystem`` link back to the class directory (a loop a
    naive walk would follow forever).
    """

    def __init__(self, base: Path) -> None:
        self.devices = base / "devices"
        self.root = base / "class"
        self.devices.mkdir(parents=True)
        self.root.mkdir()
        self.zones: dict[str, Path] = {}
        self.max_uj: dict[str, int] = {}

    def control_type(self, name: str) -> None:
        path = self.devices / name
        path.mkdir()
        (path / "enabled").write_text("1\n")
        (self.root / name).symlink_to(path)

    def zone(self, zone: str, name: str, energy_uj: int = 0, max_uj: int = MAX_UJ) -> Path:
        control, *indices = zone.split(":")
        parent = self.devices / control
        for depth in range(1, len(indices)):
            parent = parent / ":".join([control, *indices[:depth]])
        path = parent / zone
        path.mkdir()
        (path / "name").write_text(name + "\n")
        (path / "energy_uj").write_text(f"{energy_uj}\n")
        (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
        (path / "power").mkdir()
        (path / "subsystem").symlink_to(self.root)
        (self.root / zone).symlink_to(path)
        self.zones[zone] = path
        self.max_uj[zone] = max_uj
        return path

    def read(self, zone: str) -> int:
        return int((self.zones[zone] / "energy_uj").read_text())

    def advance(self, increments: dict[str, int]) -> None:
        """Add µJ to counters, wrapping to 0 after max_energy_range_uj like the hardware."""
        for zone, inc in increments.items():
            value = (self.read(zone) + inc) % (self.max_uj[zone] + 1)
            (self.zones[zone] / "energy_uj").write_text(f"{value}\n")


# µJ per workload call: package-0 1.5 J (core 1.0 J of it), its DRAM 0.25 J, package-1 2 J.
INCREMENTS = {
    "intel-rapl:0": 1_500_000,
    "intel-rapl:0:0": 1_000_000,
    "intel-rapl:0:1": 250_000,
    "intel-rapl:1": 2_000_000,
}
EXPECTED_J = 1.5 + 0.25 + 2.0  # packages + DRAM; core is inside package-0


def two_socket(base: Path, **start: int) -> Powercap:
    fake = Powercap(base)
    fake.control_type("intel-rapl")
    fake.zone("intel-rapl:0", "package-0", start.get("pkg0", 10_000_000))
    fake.zone("intel-rapl:0:0", "core", start.get("core", 5_000_000))
    fake.zone("intel-rapl:0:1", "dram", start.get("dram", 3_000_000))
    fake.zone("intel-rapl:1", "package-1", start.get("pkg1", 20_000_000))
    return fake


@pytest.fixture
def powercap(tmp_path: Path) -> Powercap:
    return two_socket(tmp_path)


# --------------------------------------------------------------------------- RAPL


def test_rapl_sums_packages_and_dram_but_not_core(powercap: Powercap) -> None:
    meter = make_energy_meter("rapl", powercap_root=powercap.root)
    ok, detail = meter.check()
    assert ok, detail
    assert "reads 4 domains" in detail
    assert "total = package-0 + package-0/dram + package-1" in detail

    reading = meter.measure(lambda: powercap.advance(INCREMENTS), min_seconds=0.0, windows=3)

    assert reading.available and reading.source == "measured:rapl" and reading.unit == "J"
    assert reading.joules == pytest.approx(EXPECTED_J, rel=1e-12)
    assert reading.calls == 3 and reading.spread == pytest.approx(0.0, abs=1e-12)
    assert dict(reading.domains) == pytest.approx(
        {"package-0": 1.5, "package-0/core": 1.0, "package-0/dram": 0.25, "package-1": 2.0}
    )
    assert "package-0/core (not summed: inside package-0)" in reading.reason


def test_rapl_many_calls_per_window_still_gives_energy_per_call(powercap: Powercap) -> None:
    def workload() -> None:
        powercap.advance(INCREMENTS)
        time.sleep(0.002)

    reading = RaplMeter(powercap.root).measure(workload, min_seconds=0.03, windows=2)
    assert reading.calls > 2  # several calls per window
    assert reading.seconds >= 0.06
    assert reading.joules == pytest.approx(EXPECTED_J, rel=1e-9)
    assert reading.spread == pytest.approx(0.0, abs=1e-9)


def test_rapl_spread_is_the_interquartile_range_of_the_windows(powercap: Powercap) -> None:
    per_window = iter([1_000_000, 2_000_000, 4_000_000, 8_000_000])

    def workload() -> None:  # package-1 only changes: 1, 2, 4, 8 J in the four windows
        powercap.advance({"intel-rapl:1": next(per_window)})

    reading = RaplMeter(powercap.root).measure(workload, min_seconds=0.0, windows=4)
    assert reading.joules == pytest.approx(3.0)  # median of 1, 2, 4, 8
    assert reading.spread == pytest.approx(5.0 - 1.75)  # inclusive quartiles 1.75 and 5.0


def test_rapl_undoes_a_counter_wraparound_between_two_reads(tmp_path: Path) -> None:
    start = MAX_UJ - 500_000
    fake = two_socket(tmp_path, pkg1=start)
    reading = RaplMeter(fake.root).measure(
        lambda: fake.advance(INCREMENTS), min_seconds=0.0, windows=1
    )
    assert fake.read("intel-rapl:1") < start  # the counter really wrapped
    assert reading.joules == pytest.approx(EXPECTED_J, rel=1e-12)
    assert reading.domains["package-1"] == pytest.approx(2.0, rel=1e-12)
    assert reading.spread is None  # one window


def test_rapl_wraparound_formula_is_exact_with_a_small_range(tmp_path: Path) -> None:
    # The counter counts 0..999_999 and then goes back to 0: 999_000 + 5_000 -> 4_000.
    fake = Powercap(tmp_path)
    fake.control_type("intel-rapl")
    fake.zone("intel-rapl:0", "package-0", energy_uj=999_000, max_uj=999_999)
    reading = RaplMeter(fake.root).measure(
        lambda: fake.advance({"intel-rapl:0": 5_000}), min_seconds=0.0, windows=1
    )
    assert fake.read("intel-rapl:0") == 4_000
    assert reading.joules == pytest.approx(0.005, rel=1e-12)


def test_rapl_wraparound_without_a_readable_range_is_unavailable(tmp_path: Path) -> None:
    fake = Powercap(tmp_path)
    fake.control_type("intel-rapl")
    fake.zone("intel-rapl:0", "package-0", energy_uj=999_000, max_uj=999_999)
    (fake.zones["intel-rapl:0"] / "max_energy_range_uj").unlink()
    reading = RaplMeter(fake.root).measure(
        lambda: fake.advance({"intel-rapl:0": 5_000}), min_seconds=0.0, windows=1
    )
    assert not reading.available and math.isnan(reading.joules)
    assert "wraparound" in reading.reason


def test_rapl_counts_an_mmio_duplicate_and_psys_once(tmp_path: Path) -> None:
    fake = two_socket(tmp_path)
    fake.zone("intel-rapl:2", "psys", 7_000_000)
    fake.control_type("intel-rapl-mmio")
    fake.zone("intel-rapl-mmio:0", "package-0", 9_000_000)
    increments = {**INCREMENTS, "intel-rapl:2": 9_000_000, "intel-rapl-mmio:0": 1_500_000}
    meter = RaplMeter(fake.root)
    ok, detail = meter.check()
    assert ok and "intel-rapl-mmio:0 (package-0) skipped" in detail
    reading = meter.measure(lambda: fake.advance(increments), min_seconds=0.0, windows=1)
    assert reading.joules == pytest.approx(EXPECTED_J, rel=1e-12)
    assert reading.domains["psys"] == pytest.approx(9.0)
    assert "platform domain" in reading.reason
    summed = {d["label"]: d["summed"] for d in meter.describe()["domains"]}
    assert summed == {
        "package-0": True,
        "package-0/core": False,
        "package-0/dram": True,
        "package-1": True,
        "psys": False,
    }


def test_rapl_finds_nested_zones_through_the_control_type(tmp_path: Path) -> None:
    fake = two_socket(tmp_path)
    for zone in fake.zones:  # keep only the control type link in the class directory
        (fake.root / zone).unlink()
    meter = RaplMeter(fake.root)
    ok, detail = meter.check()
    assert ok and "reads 4 domains" in detail
    reading = meter.measure(lambda: fake.advance(INCREMENTS), min_seconds=0.0, windows=1)
    assert reading.joules == pytest.approx(EXPECTED_J)


def test_rapl_psys_alone_is_the_total_when_there_is_no_package(tmp_path: Path) -> None:
    fake = Powercap(tmp_path)
    fake.control_type("intel-rapl")
    fake.zone("intel-rapl:0", "psys", 0)
    reading = RaplMeter(fake.root).measure(
        lambda: fake.advance({"intel-rapl:0": 3_000_000}), min_seconds=0.0, windows=1
    )
    assert reading.joules == pytest.approx(3.0)


def test_rapl_flat_tree_without_symlinks_amd_style(tmp_path: Path) -> None:
    # Be tolerant: any directory with energy_uj and name is a zone, nested or flat.
    root = tmp_path / "powercap"
    for zone, name, value in [("amd-rapl:0", "package-0", 100), ("amd-rapl:0:0", "core", 50)]:
        (root / zone).mkdir(parents=True)
        (root / zone / "name").write_text(name)
        (root / zone / "energy_uj").write_text(str(value))
    meter = RaplMeter(root)
    ok, detail = meter.check()
    assert ok and "total = package-0" in detail

    def workload() -> None:
        for zone in ("amd-rapl:0", "amd-rapl:0:0"):
            path = root / zone / "energy_uj"
            path.write_text(str(int(path.read_text()) + 400_000))

    assert meter.measure(workload, min_seconds=0.0, windows=2).joules == pytest.approx(0.4)


def test_rapl_missing_powercap_root_is_unavailable_with_a_reason(tmp_path: Path) -> None:
    meter = RaplMeter(tmp_path / "no-powercap")
    ok, detail = meter.check()
    assert not ok and "no powercap directory" in detail
    reading = meter.measure(lambda: None, min_seconds=0.0, windows=1)
    assert math.isnan(reading.joules) and reading.joules != 0
    assert reading.source == "unavailable" and "no powercap directory" in reading.reason
    assert meter.describe()["domains"] == []


def test_rapl_root_without_zones_is_unavailable(tmp_path: Path) -> None:
    fake = Powercap(tmp_path)
    fake.control_type("intel-rapl")  # the control type alone, no zone
    ok, detail = RaplMeter(fake.root).check()
    assert not ok and "no RAPL zone" in detail


def test_rapl_energy_file_that_cannot_be_read_even_by_root(powercap: Powercap) -> None:
    # A directory in place of energy_uj fails to read for every user, root included.
    energy = powercap.zones["intel-rapl:1"] / "energy_uj"
    energy.unlink()
    energy.mkdir()
    meter = RaplMeter(powercap.root)
    ok, detail = meter.check()
    assert not ok
    assert f"cannot read {powercap.root / 'intel-rapl:1' / 'energy_uj'}" in detail
    assert "directory" in detail
    reading = meter.measure(lambda: None, min_seconds=0.0, windows=1)
    assert reading.source == "unavailable" and math.isnan(reading.joules)
    with pytest.raises(EnergyUnavailableError, match="directory"):
        make_energy_meter("rapl", powercap_root=powercap.root, strict=True)
    with pytest.raises(EnergyUnavailableError):
        RaplMeter(powercap.root, strict=True).measure(lambda: None, min_seconds=0.0)


def test_rapl_unreadable_sub_domain_that_is_not_summed_is_skipped(powercap: Powercap) -> None:
    energy = powercap.zones["intel-rapl:0:0"] / "energy_uj"  # core
    energy.unlink()
    energy.mkdir()
    meter = RaplMeter(powercap.root)
    ok, detail = meter.check()
    assert ok and "not readable (not summed): package-0/core" in detail
    increments = {k: v for k, v in INCREMENTS.items() if k != "intel-rapl:0:0"}
    reading = meter.measure(lambda: powercap.advance(increments), min_seconds=0.0, windows=1)
    assert reading.joules == pytest.approx(EXPECTED_J)
    assert "package-0/core" not in reading.domains


@pytest.fixture
def world_readable_dir():
    # tmp_path sits under a 0700 directory of the user running the tests; an unprivileged
    # user must be able to walk to the tree to meet the 000 file itself.
    path = Path(tempfile.mkdtemp(prefix="paretoskip-powercap-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _check_as(uid: int, root: Path, energy: Path) -> list:
    """RaplMeter(root).check() in a forked child that runs as ``uid``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_end)
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                try:
                    energy.read_bytes()
                    payload = ["skip", "a 000 file is still readable after dropping root"]
                except PermissionError:
                    payload = list(RaplMeter(root).check())
            except BaseException as exc:
                payload = ["skip", f"cannot drop root privileges here: {exc!r}"]
            os.write(write_end, json.dumps(payload).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'["skip", "the child wrote nothing"]')


def test_rapl_permission_denied_says_how_to_grant_access(world_readable_dir: Path) -> None:
    fake = two_socket(world_readable_dir)
    energy = fake.zones["intel-rapl:0"] / "energy_uj"
    energy.chmod(0)  # like energy_uj on kernels patched for CVE-2020-8694
    if os.geteuid() == 0:
        # chmod does not stop root: check from a child that dropped to "nobody".
        ok, detail = _check_as(65534, fake.root, energy)
        if ok == "skip":
            pytest.skip(detail)
    else:
        try:
            energy.read_bytes()
        except PermissionError:
            pass
        else:
            pytest.skip("a 000 file is still readable here")
        ok, detail = RaplMeter(fake.root).check()
    assert ok is False
    assert f"cannot read {fake.root / 'intel-rapl:0' / 'energy_uj'}" in detail
    assert "permission denied" in detail
    assert "CVE-2020-8694" in detail
    assert "chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj" in detail
    assert "udev" in detail and "run as root" in detail
    energy.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_rapl_frozen_counter_is_unavailable_not_zero(powercap: Powercap) -> None:
    reading = RaplMeter(powercap.root).measure(lambda: None, min_seconds=0.0, windows=2)
    assert not reading.available and math.isnan(reading.joules)
    assert "did not advance" in reading.reason
    with pytest.raises(EnergyUnavailableError, match="did not advance"):
        RaplMeter(powercap.root, strict=True).measure(lambda: None, min_seconds=0.0)


# --------------------------------------------------------------------------- auto


@pytest.fixture
def no_gpu_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import pynvml` and `import zeus.monitor` fail, as on this machine."""
    for module in ("pynvml", "zeus", "zeus.monitor"):
        monkeypatch.setitem(sys.modules, module, None)


def test_auto_picks_none_here_and_says_why(
    tmp_path: Path, no_gpu_libraries: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="paretoskip.energy"):
        meter = make_energy_meter("auto", powercap_root=tmp_path / "missing")
    assert isinstance(meter, NullMeter) and meter.name == "none"
    info = meter.describe()["auto"]
    assert info["chosen_by"] == "auto"
    assert set(info["not_chosen"]) == {"rapl", "nvml", "zeus"}
    assert "no powercap directory" in info["not_chosen"]["rapl"]
    assert "nvidia-ml-py is not installed" in info["not_chosen"]["nvml"]
    assert "zeus is not installed" in info["not_chosen"]["zeus"]
    assert "auto chose 'none'" in caplog.text and "nvidia-ml-py" in caplog.text

    reading = meter.measure(lambda: None)
    assert reading.source == "unavailable" and math.isnan(reading.joules)
    assert "no energy counter is readable here" in reading.reason
    assert "rapl:" in reading.reason and "nvml:" in reading.reason

    with pytest.raises(EnergyUnavailableError, match="no energy counter is readable"):
        make_energy_meter("auto", powercap_root=tmp_path / "missing", strict=True)


def test_auto_picks_rapl_when_it_reads(
    powercap: Powercap, no_gpu_libraries: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="paretoskip.energy"):
        meter = make_energy_meter("auto", powercap_root=powercap.root)
    assert isinstance(meter, RaplMeter)
    info = meter.describe()["auto"]
    assert info["chosen_by"] == "auto" and "reads 4 domains" in info["why"]
    assert info["not_tried"] == ["nvml", "zeus"]
    assert "auto chose 'rapl'" in caplog.text
    reading = meter.measure(lambda: powercap.advance(INCREMENTS), min_seconds=0.0, windows=1)
    assert reading.joules == pytest.approx(EXPECTED_J)


def test_auto_never_picks_estimated(tmp_path: Path, no_gpu_libraries: None) -> None:
    meter = make_energy_meter("auto", powercap_root=tmp_path / "missing")
    assert not isinstance(meter, EstimatedMeter)
    with pytest.raises(ConfigError, match="watts_per_core"):
        make_energy_meter("auto", watts_per_core=5.0)


def test_probe_lists_every_backend(powercap: Powercap, no_gpu_libraries: None) -> None:
    rows = probe_energy_meters(powercap_root=powercap.root)
    assert [r["backend"] for r in rows] == list(ENERGY_BACKENDS)
    by_name = {r["backend"]: r for r in rows}
    assert all(set(r) == {"backend", "ok", "detail"} for r in rows)
    assert by_name["rapl"]["ok"] and by_name["estimated"]["ok"]
    assert not by_name["nvml"]["ok"] and not by_name["zeus"]["ok"] and not by_name["none"]["ok"]
    assert by_name["auto"] == {"backend": "auto", "ok": True, "detail": "would choose rapl"}
    json.dumps(rows)

    missing = {r["backend"]: r for r in probe_energy_meters(powercap_root=powercap.root / "x")}
    assert missing["auto"]["ok"] is False and "would choose none" in missing["auto"]["detail"]


# --------------------------------------------------------------------------- estimated, none


def test_estimated_is_labelled_estimated_and_positive() -> None:
    meter = make_energy_meter("estimated")
    assert meter.source == "estimated:cpu-time" and meter.check()[0]
    reading = meter.measure(lambda: sum(i * i for i in range(20_000)), min_seconds=0.02)
    assert reading.available and reading.estimated
    assert reading.source == "estimated:cpu-time" and reading.joules > 0
    assert reading.spread is not None and reading.calls >= 3
    assert reading.reason.startswith("estimated, not measured")
    assert f"{DEFAULT_WATTS_PER_CORE:g} W per busy core" in reading.reason
    assert "placeholder" in reading.reason
    description = meter.describe()
    assert description["source"] == "estimated:cpu-time"
    assert description["watts_per_core"] == DEFAULT_WATTS_PER_CORE


def test_estimated_scales_with_watts_per_core() -> None:
    reading = EstimatedMeter(watts_per_core=40.0).measure(
        lambda: sum(range(50_000)), min_seconds=0.02, windows=1
    )
    cpu_seconds_per_call = reading.joules / 40.0
    assert 0 < cpu_seconds_per_call < 1
    assert "40 W per busy core" in reading.reason and "placeholder" not in reading.reason
    for bad in (0, -1.0, math.inf, math.nan, "10", True):
        with pytest.raises(ConfigError, match="watts_per_core"):
            EstimatedMeter(watts_per_core=bad)


def test_none_is_nan_never_zero() -> None:
    calls = []
    meter = make_energy_meter("none")
    reading = meter.measure(lambda: calls.append(1))
    assert reading.source == "unavailable" and not reading.available
    assert math.isnan(reading.joules) and reading.joules != 0
    assert reading.reason == "energy measurement disabled (backend 'none')"
    assert calls == []  # nothing to measure, so the workload is not run
    assert meter.check() == (False, "energy measurement disabled (backend 'none')")
    assert make_energy_meter().name == "none"  # the default
    assert make_energy_meter("none", strict=True).measure(lambda: None).source == "unavailable"


# --------------------------------------------------------------------------- optional backends


def test_nvml_and_zeus_not_installed_are_unavailable(no_gpu_libraries: None) -> None:
    ok, detail = NvmlMeter().check()
    assert not ok and "pip install 'paretoskip[nvml]'" in detail
    ok, detail = ZeusMeter().check()
    assert not ok and "pip install 'paretoskip[zeus]'" in detail
    reading = make_energy_meter("nvml", device=[0, 1]).measure(lambda: None)
    assert reading.source == "unavailable" and math.isnan(reading.joules)
    with pytest.raises(EnergyUnavailableError, match="nvidia-ml-py"):
        make_energy_meter("nvml", strict=True)


def _stand_in_pynvml(energy_mj: list[int]) -> types.ModuleType:
    """The part of nvidia-ml-py's pynvml the meter uses, over one fake GPU."""
    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    module.NVMLError = NVMLError
    module.nvmlInit = lambda: None
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: 1
    module.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    module.nvmlDeviceGetName = lambda h: b"Fake GPU"
    module.nvmlDeviceGetTotalEnergyConsumption = lambda h: energy_mj[0]
    return module


def test_nvml_converts_millijoules(monkeypatch: pytest.MonkeyPatch) -> None:
    energy_mj = [1_000_000]
    monkeypatch.setitem(sys.modules, "pynvml", _stand_in_pynvml(energy_mj))

    def workload() -> None:
        energy_mj[0] += 2_500  # 2.5 J per call

    meter = make_energy_meter("nvml", device=0)
    ok, detail = meter.check()
    assert ok and "GPU 0 (Fake GPU)" in detail
    reading = meter.measure(workload, min_seconds=0.0, windows=3)
    assert reading.source == "measured:nvml" and reading.joules == pytest.approx(2.5)
    assert meter.describe()["device_names"] == ["Fake GPU"]
    ok, detail = NvmlMeter(device=3).check()
    assert not ok and "device 3 does not exist" in detail
    meter.close()


def _stand_in_zeus(gpu_indices: list[int], joules: float) -> dict[str, types.ModuleType]:
    """zeus.monitor.ZeusMonitor as Zeus behaves: with no hardware it monitors nothing."""

    class Measurement:
        def __init__(self) -> None:
            self.time = 0.1
            self.gpu_energy = {i: joules for i in gpu_indices}
            self.cpu_energy = None
            self.dram_energy = None

    class ZeusMonitor:
        def __init__(self, gpu_indices=None, cpu_indices=None) -> None:
            self.gpu_indices = list(gpu_indices_found)
            self.cpu_indices = []

        def begin_window(self, key: str) -> None:
            pass

        def end_window(self, key: str) -> Measurement:
            return Measurement()

    gpu_indices_found = gpu_indices
    zeus = types.ModuleType("zeus")
    monitor = types.ModuleType("zeus.monitor")
    monitor.ZeusMonitor = ZeusMonitor
    zeus.monitor = monitor
    return {"zeus": zeus, "zeus.monitor": monitor}


def test_zeus_reporting_zero_is_unavailable_never_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, module in _stand_in_zeus([], 0.0).items():
        monkeypatch.setitem(sys.modules, name, module)
    ok, detail = ZeusMeter().check()
    assert not ok and "0 J without an error" in detail
    reading = make_energy_meter("zeus").measure(lambda: None, min_seconds=0.0, windows=1)
    assert reading.source == "unavailable" and math.isnan(reading.joules)

    for name, module in _stand_in_zeus([0], 0.0).items():  # a GPU, but 0 J in the window
        monkeypatch.setitem(sys.modules, name, module)
    reading = make_energy_meter("zeus").measure(lambda: None, min_seconds=0.0, windows=1)
    assert reading.source == "unavailable" and "zeus reported 0.0 J" in reading.reason

    for name, module in _stand_in_zeus([0], 4.0).items():
        monkeypatch.setitem(sys.modules, name, module)
    reading = make_energy_meter("zeus").measure(lambda: None, min_seconds=0.0, windows=2)
    assert reading.source == "measured:zeus" and reading.joules == pytest.approx(4.0)


# --------------------------------------------------------------------------- API contract


def test_unknown_backend_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="'joulemeter'") as info:
        make_energy_meter("joulemeter")
    for name in ENERGY_BACKENDS:
        assert name in str(info.value)
    assert make_energy_meter(" RAPL ", powercap_root="/nonexistent").name == "rapl"


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="'device'.*accepted: powercap_root, strict"):
        make_energy_meter("rapl", device=0)
    with pytest.raises(ConfigError, match="'bogus'"):
        make_energy_meter("auto", bogus=1)
    with pytest.raises(ConfigError, match="'bogus'"):
        probe_energy_meters(bogus=1)
    with pytest.raises(ConfigError, match="device"):
        make_energy_meter("nvml", device="0")
    with pytest.raises(ConfigError, match="gpu_indices"):
        make_energy_meter("zeus", gpu_indices=[-1])
    with pytest.raises(ConfigError, match="strict"):
        make_energy_meter("none", strict="yes")


def test_measure_checks_its_arguments(powercap: Powercap) -> None:
    meter = RaplMeter(powercap.root)
    for kwargs in ({"windows": 0}, {"windows": 1.5}, {"min_seconds": -1}, {"min_seconds": "1"}):
        with pytest.raises(ConfigError):
            meter.measure(lambda: None, **kwargs)
    with pytest.raises(ConfigError, match="callable"):
        meter.measure(None)


def test_reading_never_has_zero_joules_for_unavailable() -> None:
    reading = EnergyReading.unavailable("no counter")
    assert math.isnan(reading.joules) and not reading.available and reading.unit == "J"
    with pytest.raises(ConfigError, match="never a number"):
        EnergyReading(joules=0.0, source="unavailable", reason="no counter")
    with pytest.raises(ConfigError, match="reason"):
        EnergyReading(joules=math.nan, source="unavailable")
    with pytest.raises(ConfigError, match="joules > 0"):
        EnergyReading(joules=0.0, source="measured:rapl")
    with pytest.raises(ConfigError, match="joules > 0"):
        EnergyReading(joules=math.nan, source="estimated:cpu-time")
    with pytest.raises(ConfigError, match="unknown energy source"):
        EnergyReading(joules=1.0, source="rapl")
    ok = EnergyReading(joules=1.0, source="measured:rapl", domains={"package-0": 1.0})
    assert ok.available and not ok.estimated and hash(ok)


def test_describe_is_json_and_names_backend(powercap: Powercap, no_gpu_libraries: None) -> None:
    meters = [
        make_energy_meter("rapl", powercap_root=powercap.root),
        make_energy_meter("nvml", device=[0, 1]),
        make_energy_meter("zeus", gpu_indices=[0]),
        make_energy_meter("estimated", watts_per_core=7.5),
        make_energy_meter("none"),
        make_energy_meter("auto", powercap_root=powercap.root),
    ]
    for meter in meters:
        description = meter.describe()
        assert json.loads(json.dumps(description)) == description
        assert description["backend"] == meter.name and description["unit"] == "J"
    assert [d["label"] for d in meters[0].describe()["domains"]] == [
        "package-0",
        "package-0/core",
        "package-0/dram",
        "package-1",
    ]
    assert meters[1].describe()["devices"] == [0, 1]
    assert "auto" not in meters[0].describe() and "auto" in meters[-1].describe()
