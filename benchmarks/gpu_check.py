"""The accelerator check: evaluation, latency and NVML energy on a GPU against the CPU.

For the default study (``studies/digits-resnet20.toml``) and a Fashion-MNIST study
(``studies/fashion-mnist-resnet20.toml``):

1. **time per evaluation**: the same distinct random masks evaluated (validation accuracy
   through the prefix tree, no cache) by an evaluator on the CPU and one on ``--device``;
   seconds per mask on each, their ratio, and whether the accuracies agree;
2. **front members**: the masks evaluated on the device, non-dominated in (accuracy, FLOPs);
   three of them spread over FLOPs, and the full model;
3. **latency** of those members on the device at batch 1 and 64, interleaved ABBA with the
   full model (CUDA events, warm-up, cuDNN autotuning off): medians and ratios;
4. **energy**: the NVML meter of the GPU that ran them (``make_device_energy_meter``),
   idle power first (same run), then joules per batch and per image of the full model and
   the three members (windows >= 1 s), with spread and source; the Pearson correlation of
   energy per image with FLOPs.  Where NVML cannot read (no GPU, ``--device cpu``) every
   energy is ``null`` with the reason, never 0.

A study whose checkpoint is missing is measured with untrained weights of its architecture
(``weights`` says so): times and energies do not depend on the weight values, accuracies do.
The load average is recorded before and after.  Writes ``gpu_check.json`` into ``$OUT``
(or ``--out``).  Budget: about 8 minutes on an H200 at the defaults.

    python benchmarks/gpu_check.py [--device cuda] [--quick] [--out DIR]
    python benchmarks/gpu_check.py --device cpu --quick     # runs anywhere (no NVML)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import paretoskip
from paretoskip import Evaluator, MeasureSettings
from paretoskip.config import load_study_config
from paretoskip.energy import NvmlMeter, make_device_energy_meter
from paretoskip.errors import ConfigError
from paretoskip.measure import (
    cudnn_benchmark,
    hardware_info,
    measure_latency,
    resolve_device,
    synchronize,
)
from paretoskip.models import apply_mask, get_mask
from paretoskip.pipeline import build_data, build_model

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ("studies/digits-resnet20.toml", "studies/fashion-mnist-resnet20.toml")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _model(cfg, data) -> tuple[torch.nn.Module, str]:
    try:
        model, meta = build_model(cfg, train_if_missing=False, progress=False, data=data)
        return model, f"checkpoint {cfg.model.checkpoint}"
    except ConfigError as exc:
        torch.manual_seed(0)
        model = paretoskip.create_model(
            cfg.model.name,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            input_size=data.input_size,
            **dict(cfg.model.kwargs),
        )
        return model.eval(), f"untrained (checkpoint not usable here: {str(exc)[:160]})"


def _masks(n_units: int, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = {"0" * n_units}
    while len(out) < min(count, 2**n_units):
        out.add("".join(rng.choice("01") for _ in range(n_units)))
    return sorted(out)


def _time_evaluations(model, data, device: str, masks: list[str]) -> dict[str, Any]:
    ev = Evaluator(model, data, settings=MeasureSettings(device=device, threads=None))
    ev.accuracy_many(masks[:1])  # warm-up (and prefix cache of the stem)
    synchronize(ev.device)
    t0 = time.perf_counter()
    results = ev.evaluate_many(masks)
    synchronize(ev.device)
    seconds = time.perf_counter() - t0
    return {
        "device": str(ev.device),
        "masks": len(masks),
        "seconds": seconds,
        "seconds_per_evaluation": seconds / len(masks),
        "accuracy": {r.mask: r["accuracy"] for r in results},
        "flops": {r.mask: r["flops"] for r in results},
        "evaluator": ev,
    }


def _front(acc: dict[str, float], flops: dict[str, float]) -> list[str]:
    import moocore

    masks = list(acc)
    points = np.array([[-acc[m], flops[m]] for m in masks])
    keep = moocore.is_nondominated(points)
    return sorted((m for m, k in zip(masks, keep) if k), key=lambda m: flops[m])


def _three(front: list[str], full: str) -> list[str]:
    cands = [m for m in front if m != full]
    if len(cands) <= 3:
        return cands
    idx = sorted({round(i * (len(cands) - 1) / 2) for i in range(3)})
    return [cands[i] for i in idx]


def _energy(ev: Evaluator, masks: list[str], batch: int, seconds: float) -> dict[str, Any]:
    # NVML for a GPU; on the CPU the CPU's own counters (rapl, zeus) if any reads
    meter = make_device_energy_meter("nvml" if ev.device.type == "cuda" else "auto", ev.device)
    model = ev.model
    x = torch.randn(batch, *model.input_shape, generator=torch.Generator().manual_seed(0))
    x = x.to(ev.device)

    def workload() -> None:
        model(x)
        synchronize(ev.device)

    out: dict[str, Any] = {"meter": meter.describe(), "batch_size": batch}
    ok, detail = meter.check()
    out["check"] = {"ok": ok, "detail": detail}
    nvml = NvmlMeter()
    nvml_ok, nvml_detail = nvml.check()
    nvml.close()
    out["nvml"] = {"ok": nvml_ok, "detail": nvml_detail}
    idle = meter.measure_idle(min_seconds=seconds, windows=3)
    out["idle_power"] = idle.to_dict()
    saved = get_mask(model)
    rows = []
    try:
        with cudnn_benchmark(False if ev.device.type == "cuda" else None), torch.inference_mode():
            for mask in masks:
                apply_mask(model, ev.space.validate(mask))
                for _ in range(3):
                    workload()
                r = meter.measure(workload, min_seconds=seconds, windows=3)
                rows.append(
                    {
                        "mask": mask,
                        "flops": ev.costs.flops(ev.space.validate(mask)),
                        "joules_per_batch": r.joules if r.available else None,
                        "joules_per_image": r.joules / batch if r.available else None,
                        "spread_per_image": (r.spread / batch) if r.spread is not None else None,
                        "source": r.source,
                        "seconds": r.seconds,
                        "calls": r.calls,
                        "reason": r.reason,
                    }
                )
    finally:
        apply_mask(model, saved)
        meter.close()
    out["candidates"] = rows
    measured = [r for r in rows if r["joules_per_image"] is not None]
    if len(measured) >= 3:
        out["energy_vs_flops_pearson"] = float(
            np.corrcoef([r["flops"] for r in measured], [r["joules_per_image"] for r in measured])[
                0, 1
            ]
        )
    else:
        out["energy_vs_flops_pearson"] = None
        out["energy_vs_flops_why_not"] = (
            f"energy measured for {len(measured)} of {len(rows)} candidates"
        )
    return out


def _latency(ev: Evaluator, masks: list[str], full: str, quick: bool) -> dict[str, Any]:
    out = {}
    for batch in (1, 64):
        rows = []
        for mask in masks:
            s = measure_latency(
                ev.model,
                ev.space.validate(mask),
                batch_size=batch,
                repeats=6 if quick else 40,
                warmup=2 if quick else 10,
                threads=ev.settings.threads,
            )
            rows.append(
                {
                    "mask": mask,
                    "flops_ratio": ev.costs.flops(ev.space.validate(mask))
                    / ev.costs.flops(ev.space.validate(full)),
                    **dataclasses.asdict(s),
                }
            )
        out[f"batch_{batch}"] = rows
    return out


def check_study(path: str, device: str, quick: bool) -> dict[str, Any]:
    cfg = load_study_config(ROOT / path, check_files=False)
    if quick:
        small = dataclasses.replace(cfg.data, limit=1500, val_size=0.2, test_size=0.2)
        cfg = dataclasses.replace(cfg, data=small)
    t0 = time.perf_counter()
    data = build_data(cfg)
    model, weights = _model(cfg, data)
    n_units = len(paretoskip.SkipSpace.from_model(model).units)
    masks = _masks(n_units, 6 if quick else 48, seed=0)
    full = "0" * n_units
    out: dict[str, Any] = {
        "study": path,
        "model": cfg.model.name,
        "data": data.describe(),
        "weights": weights,
        "units": n_units,
        "load_before": _load(),
    }
    timing = {}
    for dev in dict.fromkeys(["cpu", device]):
        t = _time_evaluations(model, data, dev, masks)
        timing[dev] = t
    dev_run, cpu_run = timing[device], timing["cpu"]
    out["evaluation"] = {
        dev: {k: v for k, v in t.items() if k not in ("evaluator", "accuracy", "flops")}
        for dev, t in timing.items()
    }
    out["evaluation"]["cpu_over_device"] = (
        cpu_run["seconds_per_evaluation"] / dev_run["seconds_per_evaluation"]
    )
    diffs = [abs(cpu_run["accuracy"][m] - dev_run["accuracy"][m]) for m in masks]
    out["evaluation"]["max_accuracy_difference_cpu_vs_device"] = max(diffs)
    ev = dev_run["evaluator"]
    front = _front(dev_run["accuracy"], dev_run["flops"])
    members = _three(front, full)
    out["front"] = {
        "from_masks": len(masks),
        "members": [
            {"mask": m, "accuracy": dev_run["accuracy"][m], "flops": dev_run["flops"][m]}
            for m in front
        ],
        "checked": members,
    }
    out["latency"] = _latency(ev, members, full, quick)
    out["energy"] = _energy(ev, [full, *members], batch=64, seconds=1.0)
    out["load_after"] = _load()
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="small data and few masks")
    parser.add_argument("--out", help="output folder (default $OUT, else benchmarks/results)")
    parser.add_argument("--studies", nargs="*", default=list(STUDIES))
    args = parser.parse_args()
    device = str(resolve_device(args.device))
    out_dir = Path(args.out or os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "device": device,
        "quick": args.quick,
        "hardware": hardware_info(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "studies": [],
    }
    path = out_dir / ("gpu_check-quick.json" if args.quick else "gpu_check.json")
    for study in args.studies:
        try:
            result["studies"].append(check_study(study, device, args.quick))
        except Exception as exc:  # one study failing must not lose the others' numbers
            result["studies"].append({"study": study, "error": f"{type(exc).__name__}: {exc}"})
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for s in result["studies"]:
        if "error" in s:
            print(f"{s['study']}: ERROR {s['error']}")
            continue
        e = s["evaluation"]
        energy = s["energy"]
        jpi = [r["joules_per_image"] for r in energy["candidates"]]
        print(
            f"{s['study']}: {e[device]['seconds_per_evaluation']:.3f} s/eval on {device}, "
            f"{e['cpu']['seconds_per_evaluation']:.3f} on cpu (x{e['cpu_over_device']:.1f}); "
            f"latency ratios b1 {[round(r['ratio'], 3) for r in s['latency']['batch_1']]} "
            f"b64 {[round(r['ratio'], 3) for r in s['latency']['batch_64']]}; "
            f"idle {energy['idle_power']['value']} W ({energy['idle_power']['source']}); "
            f"nvml {'reads' if energy['nvml']['ok'] else 'unavailable: ' + energy['nvml']['detail']}; "
            f"J/image {jpi}; energy~FLOPs r={energy['energy_vs_flops_pearson']}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
