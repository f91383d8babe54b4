"""The device setting: checked, recorded, fingerprinted, used by every measurement.

Every test here passes without a GPU; the ones that need one skip with the reason.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from paretoskip import Evaluator, MeasureSettings
from paretoskip.cli import build_parser, main
from paretoskip.config import load_study_config
from paretoskip.errors import ConfigError
from paretoskip.evaluate import measurement_fingerprint
from paretoskip.measure import (
    available_devices,
    device_record,
    hardware_info,
    measure_latency,
    resolve_device,
)

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (none visible here)")
no_gpu = pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without a GPU")


# -- the setting and its errors ------------------------------------------------------------


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cpu:1", "", 0, None])
def test_malformed_devices_are_refused_naming_the_value(bad) -> None:
    if bad is None:
        assert resolve_device(None) == torch.device("cpu")  # None means the default
        return
    with pytest.raises(ConfigError, match="not one of 'cpu', 'cuda', 'cuda:N'"):
        resolve_device(bad)
    with pytest.raises(ConfigError, match=r"accepted: 'cpu', 'cuda' or 'cuda:N'"):
        MeasureSettings(device=bad)


@no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_a_missing_gpu_is_refused_naming_it_and_what_is_available(device: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_device(device)
    message = str(err.value)
    assert f"device {device!r} is not available" in message
    assert message.endswith("available: cpu")
    assert available_devices() == ["cpu"]


@no_gpu
def test_the_evaluator_and_training_refuse_a_missing_gpu(digits, tiny_model) -> None:
    with pytest.raises(ConfigError, match=r"device 'cuda' is not available.*available: cpu"):
        Evaluator(tiny_model, digits, settings=MeasureSettings(device="cuda"))
    from paretoskip.train import train_model

    with pytest.raises(ConfigError, match=r"device 'cuda:1' is not available"):
        train_model("resnet20", digits, epochs=1, device="cuda:1", progress=False)


def test_study_file_measure_device(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    head = '[model]\nname = "resnet20"\n[data]\nname = "digits"\n'
    path.write_text(head + '[measure]\ndevice = "cuda:1"\n')
    cfg = load_study_config(path, check_files=False)
    assert cfg.measure.device == "cuda:1" and cfg.measure.settings().device == "cuda:1"
    assert cfg.replace(device="cpu").measure.device == "cpu"
    with pytest.raises(ConfigError, match=r"measure\.device='tpu'; accepted: 'cpu', 'cuda'"):
        cfg.replace(device="tpu")
    path.write_text(head + '[measure]\ndevice = "gpu0"\n')
    with pytest.raises(ConfigError, match=r"s\.toml: measure\.device='gpu0'; accepted"):
        load_study_config(path, check_files=False)
    path.write_text(head)
    assert load_study_config(path, check_files=False).measure.device == "cpu"


def test_cli_device_flag_on_every_command_that_measures_or_trains() -> None:
    parser = build_parser()
    for argv in (
        ["run", "s.toml", "--device", "cuda"],
        ["search", "s.toml", "--device", "cuda"],
        ["worker", "s.toml", "--device", "cuda"],
        ["train", "--model", "resnet20", "--data", "digits", "--out", "x", "--device", "cuda"],
    ):
        assert parser.parse_args(argv).device == "cuda"
    assert parser.parse_args(["run", "s.toml"]).device is None


@no_gpu
def test_cli_train_on_a_missing_gpu_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ckpt"
    argv = ["train", "--model", "resnet20", "--data", "digits", "--epochs", "1"]
    code = main([*argv, "--out", str(out), "--device", "cuda:2"])
    err = capsys.readouterr().err
    assert code != 0 and "device 'cuda:2' is not available" in err and "available: cpu" in err
    assert not list(tmp_path.iterdir())  # nothing written


# -- records and fingerprints --------------------------------------------------------------


def test_cpu_hardware_record_and_fingerprint_are_unchanged_by_the_setting() -> None:
    hw = hardware_info("cpu")
    assert hw == hardware_info() and hw["device"] == "cpu" and "gpu" not in hw
    assert device_record("cpu") == {"type": "cpu"}
    settings = MeasureSettings(latency=True, threads=1)
    # the formula before the device setting existed: CPU caches keep their keys
    old = asdict(settings)
    for key in ("eval_batch", "memory_mb", "device", "cudnn_benchmark"):
        old.pop(key)
    doc = {"settings": old, "energy": {"backend": "none"}, "hardware": hw}
    expected = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    assert measurement_fingerprint(settings, hw) == expected


def test_fingerprint_differs_by_device_even_for_accuracy_only() -> None:
    cpu_hw = hardware_info("cpu")
    gpu_hw = {
        **cpu_hw,
        "device": "cuda:0",
        "gpu": {"type": "cuda", "name": "NVIDIA H200", "cuda": "13.0", "cudnn": 91000},
    }
    for latency in (False, True):
        cpu = measurement_fingerprint(MeasureSettings(latency=latency, threads=1), cpu_hw)
        gpu = measurement_fingerprint(
            MeasureSettings(latency=latency, threads=1, device="cuda:0"), gpu_hw
        )
        assert cpu != gpu
        other_gpu = {**gpu_hw, "gpu": {**gpu_hw["gpu"], "name": "NVIDIA A100"}}
        assert gpu != measurement_fingerprint(
            MeasureSettings(latency=latency, threads=1, device="cuda:0"), other_gpu
        )
        tuned = measurement_fingerprint(
            MeasureSettings(latency=latency, threads=1, device="cuda:0", cudnn_benchmark=True),
            gpu_hw,
        )
        assert tuned != gpu


# -- measurements on the CPU ---------------------------------------------------------------


def test_cpu_evaluator_prefix_tree_equals_naive_and_records_the_device(digits, tiny_model) -> None:
    ev = Evaluator(tiny_model, digits, settings=MeasureSettings(device="cpu", eval_batch=64))
    masks = ["000000000", "101010101", "100000001", "111111111", "011000000"]
    assert ev.accuracy_many(masks) == [ev.naive_accuracy(m) for m in masks]
    prov = ev.provenance()
    assert prov["device"] == "cpu" and prov["hardware"]["device"] == "cpu"
    assert prov["idle_power"] is None  # no energy meter, nothing measured


def test_cpu_latency_records_device_and_batch(tiny_model) -> None:
    stats = measure_latency(tiny_model, [1, 0] * 4 + [0], batch_size=4, repeats=2, warmup=1)
    assert stats.device == "cpu" and stats.batch_size == 4 and stats.cudnn_benchmark is None


def test_energy_meter_reads_the_device_that_runs_the_model(digits, tiny_model) -> None:
    # nvml would measure a GPU that never ran the candidate
    with pytest.raises(ConfigError, match="never ran the candidate"):
        Evaluator(tiny_model, digits, settings=MeasureSettings(energy="nvml"))
    ev = Evaluator(
        tiny_model,
        digits,
        settings=MeasureSettings(energy="estimated", energy_seconds=0.01, batch_size=8),
    )
    r = ev.evaluate("000000001")
    assert r.metrics["energy"].source == "estimated:cpu-time" and r["energy"] > 0
    idle = ev.provenance()["idle_power"]
    # an estimate is not a measured power: the idle power says so, it is never 0
    assert idle["source"] == "unavailable" and idle["value"] is None and idle["reason"]


# -- on a GPU ------------------------------------------------------------------------------


@needs_gpu
def test_gpu_device_record_and_fingerprint() -> None:
    record = device_record("cuda")
    assert record["type"] == "cuda" and record["name"] and record["cuda"] == torch.version.cuda
    hw = hardware_info("cuda")
    assert hw["device"].startswith("cuda:") and hw["gpu"] == record
    cpu = measurement_fingerprint(MeasureSettings(threads=1), hardware_info())
    gpu = measurement_fingerprint(MeasureSettings(threads=1, device=hw["device"]), hw)
    assert cpu != gpu


@needs_gpu
def test_gpu_evaluator_prefix_tree_equals_naive(digits, tiny_model) -> None:
    ev = Evaluator(tiny_model, digits, settings=MeasureSettings(device="cuda", eval_batch=64))
    assert next(ev.model.parameters()).device.type == "cuda"
    masks = ["000000000", "101010101", "111111111"]
    assert ev.accuracy_many(masks) == [ev.naive_accuracy(m) for m in masks]
    assert ev.provenance()["device"] == str(ev.device)


@needs_gpu
def test_gpu_latency_is_timed_on_the_gpu(tiny_model) -> None:
    model = tiny_model.to("cuda")
    stats = measure_latency(model, [0] * 9, batch_size=8, repeats=4, warmup=2)
    assert stats.device.startswith("cuda") and stats.cudnn_benchmark is False
    assert stats.median > 0 and not math.isnan(stats.ratio)


# -- run-time selection --------------------------------------------------------------------


def _front_measured_on(device: str | None, units: list[str]) -> dict:
    def member(mask: str, acc: float, flops: float, latency: float) -> dict:
        return {
            "mask": mask,
            "metrics": {
                "accuracy": {"value": acc},
                "flops": {"value": flops},
                "latency": {"value": latency, "unit": "s", "source": "measured:wall-clock"},
            },
        }

    front = {
        "schema_version": 1,
        "space": {"units": units},
        "objectives": [
            {"name": "accuracy", "direction": "maximize"},
            {"name": "latency", "direction": "minimize"},
        ],
        "reference": {"metrics": {"accuracy": 0.97, "flops": 5e6, "latency": 0.002}},
        "members": [
            member("000000000", 0.97, 5e6, 0.002),
            member("011011011", 0.87, 1.5e6, 0.0008),
        ],
    }
    if device is not None:
        front["provenance"] = {"hardware": {"device": device}}
    return front


def test_runtime_refuses_a_latency_budget_measured_on_another_device(tiny_model) -> None:
    from paretoskip.models import skippable_units
    from paretoskip.runtime import AdaptiveModel

    units = [n for n, _ in skippable_units(tiny_model)]
    on_gpu = AdaptiveModel(tiny_model, _front_measured_on("cuda:0", units))
    assert on_gpu.measured_device == "cuda:0"
    with pytest.raises(ConfigError, match=r"measured on cuda:0, but the model runs on cpu"):
        on_gpu.select(latency="50%")
    assert on_gpu.select(flops="40%")["mask"] == "011011011"  # FLOPs do not depend on it
    on_cpu = AdaptiveModel(tiny_model, _front_measured_on("cpu", units))
    assert on_cpu.select(latency="50%")["mask"] == "011011011"
    unknown = AdaptiveModel(tiny_model, _front_measured_on(None, units))
    assert unknown.measured_device is None and unknown.select(latency=0.001)["mask"] == "011011011"
