"""Latency of exported files: ONNX (onnxruntime) and IREE (llvm-cpu) against eager PyTorch.

One resnet20 for 1×28×28 input with 10 classes, *untrained* (random weights: latency does not
depend on their values), a mask skipping about half of its units, and the full model
(mask of zeros).  Each is exported with :func:`paretoskip.export.export_file` to ONNX and to
IREE (compiled for this CPU, ``--iree-llvmcpu-target-cpu=host``), and also run eagerly in
PyTorch with the mask applied: six callables in all.  They are timed interleaved, in
palindromic rounds (A B C D E F F E D C B A, the ABBA scheme for six), with 1 thread each
(``torch.set_num_threads(1)``; onnxruntime ``intra_op_num_threads=1``; IREE ``local-sync``
driver), at batch 1 and batch 64.  Reports medians and IQRs of the per-call time and the
per-round ratios candidate/full (same runtime) and exported/eager (same mask), which is what
survives machine drift.  The 1-, 5- and 15-minute load averages are recorded before and
after.  Writes benchmarks/results/export_latency.json.

    python benchmarks/export_latency.py [--rounds 1=60,64=12] [--mask 101010101]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import paretoskip
from paretoskip.export import export_file, load_exported
from paretoskip.models import apply_mask, skippable_units


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def iqr(values: list[float]) -> float:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "iqr": iqr(values)}


def time_interleaved(
    fns: dict[str, Any], x: torch.Tensor, rounds: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Per-round seconds per call of each callable, mean of its two calls in a palindromic round."""
    names = list(fns)
    with torch.inference_mode():
        for name in names:
            for _ in range(warmup):
                fns[name](x)
        per_round: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(rounds):
            got: dict[str, float] = {n: 0.0 for n in names}
            for name in names + names[::-1]:
                t = time.perf_counter()
                fns[name](x)
                got[name] += time.perf_counter() - t
            for name in names:
                per_round[name].append(got[name] / 2)
    return per_round


def flops_of(model: torch.nn.Module, mask: str, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    apply_mask(model, mask)
    with FlopCounterMode(display=False) as c, torch.inference_mode():
        model(x[:1])
    apply_mask(model, "0" * len(mask))
    return int(c.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mask", default="101010101", help="candidate mask (5 of 9 units skipped)")
    ap.add_argument("--rounds", default="1=60,64=12", help="BATCH=ROUNDS,...")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_latency.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    load_before = os.getloadavg()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=28)
    model.eval()
    units = [n for n, _ in skippable_units(model)]
    cand, full = args.mask, "0" * len(units)
    if len(cand) != len(units):
        raise SystemExit(f"--mask needs {len(units)} bits, got {cand!r}")
    rounds = {int(b): int(r) for b, r in (item.split("=") for item in args.rounds.split(","))}
    x0 = torch.randn(1, 1, 28, 28)

    fns: dict[str, Any] = {}
    export_s: dict[str, float] = {}
    diffs: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        for label, mask in (("candidate", cand), ("full", full)):
            for fmt, suffix in (("onnx", ".onnx"), ("iree", ".vmfb")):
                t = time.perf_counter()
                res = export_file(
                    model,
                    mask,
                    Path(d) / f"{label}{suffix}",
                    normalization=([0.2860], [0.3530]),  # any values: not used for timing
                    check_batch_sizes=(1, 64),
                )
                export_s[f"{fmt}/{label}"] = time.perf_counter() - t
                diffs[f"{fmt}/{label}"] = res.max_abs_diff
                fns[f"{fmt}/{label}"] = load_exported(res.path, threads=1)
            eager = paretoskip.create_model(
                "resnet20", num_classes=10, in_channels=1, input_size=28
            ).eval()
            eager.load_state_dict(model.state_dict())
            apply_mask(eager, mask)
            fns[f"eager/{label}"] = eager

        rows = []
        for batch, n_rounds in rounds.items():
            x = torch.randn(batch, 1, 28, 28)
            t = time_interleaved(fns, x, n_rounds)
            row: dict[str, Any] = {"batch_size": batch, "rounds": n_rounds}
            row["seconds_per_call"] = {name: summary(v) for name, v in t.items()}
            ratios = {}
            for rt in ("onnx", "iree", "eager"):
                ratios[f"{rt}: candidate/full"] = summary(
                    [a / b for a, b in zip(t[f"{rt}/candidate"], t[f"{rt}/full"])]
                )
            for rt in ("onnx", "iree"):
                for label in ("candidate", "full"):
                    ratios[f"{label}: {rt}/eager"] = summary(
                        [a / b for a, b in zip(t[f"{rt}/{label}"], t[f"eager/{label}"])]
                    )
            row["ratios"] = ratios
            rows.append(row)
            for name, s in row["seconds_per_call"].items():
                print(
                    f"batch {batch:3d} {name:16s} {s['median'] * 1e3:9.3f} ms (IQR {s['iqr'] * 1e3:.3f})"
                )
            for name, s in ratios.items():
                print(f"batch {batch:3d} {name:26s} {s['median']:.3f} (IQR {s['iqr']:.3f})")

    try:
        from paretoskip.measure import hardware_info

        hardware = hardware_info()
    except Exception as exc:  # noqa: BLE001 - the numbers stand without it
        hardware = {"error": str(exc)}
    doc = {
        "model": {
            "name": "resnet20",
            "input": [1, 28, 28],
            "classes": 10,
            "weights": "untrained (random, torch.manual_seed(0))",
        },
        "candidate_mask": cand,
        "skipped": [u for u, b in zip(units, cand) if b == "1"],
        "flops_per_image": {
            "candidate": flops_of(model, cand, x0),
            "full": flops_of(model, full, x0),
        },
        "threads": 1,
        "runtimes": {
            "onnx": "onnxruntime CPUExecutionProvider, intra_op_num_threads=1",
            "iree": "IREE llvm-cpu, target-cpu=host, local-sync driver",
            "eager": "PyTorch eager, torch.set_num_threads(1), inference_mode",
        },
        "scheme": "palindromic interleaving (ABBA for six callables), 3 warm-up calls each",
        "export_seconds": export_s,
        "max_abs_diff_vs_masked_model": diffs,
        "rows": rows,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "wall_seconds": time.perf_counter() - started,
        "hardware": hardware,
        "versions": {
            **fns["iree/candidate"].paretoskip_export["versions"],
            "onnxruntime": _version("onnxruntime"),
            "iree-base-runtime": _version("iree-base-runtime"),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"load average before {load_before}, after {os.getloadavg()}; wrote {out}")


if __name__ == "__main__":
    main()
