"""Time per configuration switch of AdaptiveModel on resnet56, against the naive ways.

Methods, timed in the same run and interleaved round by round so that machine drift hits
them alike:

* ``adaptive.apply(i)``         -- apply a front member by index (precomputed flag loop);
* ``adaptive.select(flops=b)``  -- choose the most accurate member under a FLOPs budget and apply it;
* ``apply_mask(model, bits)``   -- the naive re-application: walk the module tree, parse the bitstring;
* ``models[i]`` (deepcopy)      -- one deep copy of the model per configuration: switching is a
  lookup, paid for with one full copy of the weights per front member (reported as memory).

Each timing is one block of ``--block`` consecutive switches divided by the block size (the
per-call timer overhead would otherwise dominate); the table gives the median and the
inter-quartile range over ``--rounds`` blocks.  A batch-1 forward pass of the same model is
timed too, to put the switch cost in proportion.  The front is synthetic (random nested masks,
real FLOPs, made-up accuracies): selection cost does not depend on the accuracies.

Run:  python benchmarks/switch.py            (~20 s; writes benchmarks/results/switch.json)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import paretoskip
from paretoskip.models import apply_mask, get_mask, skippable_units
from paretoskip.runtime import AdaptiveModel

RESULTS = Path(__file__).resolve().parent / "results" / "switch.json"


def synthetic_front(model: torch.nn.Module, n_members: int, seed: int) -> dict:
    """Nested random masks (member k skips k units), real FLOPs at batch 1, made-up accuracy."""
    units = [n for n, _ in skippable_units(model)]
    order = list(range(len(units)))
    random.Random(seed).shuffle(order)
    x = torch.zeros(1, *model.input_shape)
    probe = copy.deepcopy(model).eval()
    members = []
    for k in range(n_members):
        bits = ["0"] * len(units)
        for j in order[: round(k * (len(units) - 1) / max(n_members - 1, 1))]:
            bits[j] = "1"
        mask = "".join(bits)
        apply_mask(probe, mask)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            probe(x)
        skipped = mask.count("1")
        metrics = {
            "accuracy": {
                "value": 0.93 - 0.002 * skipped**1.3,
                "unit": "fraction",
                "source": "synthetic",
            },
            "flops": {
                "value": float(counter.get_total_flops()),
                "unit": "FLOPs",
                "source": "counted",
            },
            "energy": {"value": None, "unit": "J", "source": "unavailable"},
        }
        members.append({"mask": mask, "metrics": metrics, "strict": True, "trial": k})
    return {
        "schema_version": 1,
        "space": {"units": units, "locked": [], "groups": []},
        "objectives": [
            {"name": "accuracy", "direction": "maximize", "unit": "fraction"},
            {"name": "flops", "direction": "minimize", "unit": "FLOPs"},
        ],
        "reference": {"mask": "0" * len(units), "metrics": members[0]["metrics"]},
        "members": members,
    }


def stats_us(per_switch_s: list[float]) -> dict:
    q1, med, q3 = statistics.quantiles(per_switch_s, n=4, method="inclusive")
    return {
        "median_us": med * 1e6,
        "q1_us": q1 * 1e6,
        "q3_us": q3 * 1e6,
        "iqr_us": (q3 - q1) * 1e6,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=200, help="timed blocks per method")
    ap.add_argument("--block", type=int, default=50, help="switches per timed block")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = paretoskip.create_model(args.model).eval()
    front = synthetic_front(model, args.members, args.seed)
    n = len(front["members"])
    masks = [m["mask"] for m in front["members"]]
    budgets = [m["metrics"]["flops"]["value"] for m in front["members"]]
    # A budget sequence that jumps around the front, so that every select switches.
    budget_seq = [budgets[(7 * k) % n] for k in range(n)]

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    adaptive = AdaptiveModel(model, front)
    adaptive_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    t0 = time.perf_counter()
    copies = [copy.deepcopy(model) for _ in range(n)]
    for c, mask in zip(copies, masks):
        apply_mask(c, mask)
    deepcopy_build_s = time.perf_counter() - t0
    tensor_bytes = sum(
        t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]
    )

    sink: list[object] = [None]

    def run_apply(start: int) -> None:
        for k in range(start, start + args.block):
            adaptive.apply(k % n)

    def run_select(start: int) -> None:
        for k in range(start, start + args.block):
            adaptive.select(flops=budget_seq[k % n])

    def run_apply_mask(start: int) -> None:
        for k in range(start, start + args.block):
            apply_mask(model, masks[k % n])

    def run_deepcopy(start: int) -> None:
        for k in range(start, start + args.block):
            sink[0] = copies[k % n]

    def run_empty(start: int) -> None:
        for _k in range(start, start + args.block):
            pass

    methods = {
        "AdaptiveModel.apply(index)": run_apply,
        "AdaptiveModel.select(flops=...)": run_select,
        "apply_mask(model, bitstring)": run_apply_mask,
        "deepcopy per configuration (lookup)": run_deepcopy,
        "empty loop (timer + loop overhead)": run_empty,
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():  # warm-up
        fn(0)
    for r in range(args.rounds):
        start = r * args.block
        for name, fn in methods.items():
            t = time.perf_counter_ns()
            fn(start)
            times[name].append((time.perf_counter_ns() - t) * 1e-9 / args.block)

    # The switches did what they claim.
    adaptive.apply(3)
    assert "".join(map(str, get_mask(model))) == masks[3]
    chosen = adaptive.select(flops=budgets[5])
    assert chosen["mask"] == masks[5], (chosen["mask"], masks[5])
    apply_mask(model, masks[2])
    assert "".join(map(str, get_mask(model))) == masks[2]

    # A batch-1 forward pass for scale: full model and the cheapest member.
    x = torch.randn(1, *model.input_shape)
    forward_ms = {}
    with torch.no_grad():
        for label, index in (("full", 0), ("cheapest", n - 1)):
            adaptive.apply(index)
            for _ in range(5):
                adaptive(x)
            ts = []
            for _ in range(30):
                t = time.perf_counter()
                adaptive(x)
                ts.append(time.perf_counter() - t)
            forward_ms[label] = statistics.median(ts) * 1e3

    results = {name: stats_us(ts) for name, ts in times.items()}
    base = results["apply_mask(model, bitstring)"]["median_us"]
    for name, res in results.items():
        useful = res["median_us"] > 0 and not name.startswith("empty")
        res["speedup_vs_apply_mask"] = base / res["median_us"] if useful else None
    report = {
        "benchmark": "switch",
        "command": " ".join(
            ["python benchmarks/switch.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "model": args.model,
        "units": len(front["space"]["units"]),
        "members": n,
        "rounds": args.rounds,
        "block": args.block,
        "switches_per_method": args.rounds * args.block,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "results_per_switch": results,
        "memory": {
            "adaptive_model_python_bytes": adaptive_bytes,
            "weights_bytes_per_copy": tensor_bytes,
            "deepcopy_total_weight_bytes": tensor_bytes * n,
            "deepcopy_build_s": deepcopy_build_s,
        },
        "forward_batch1_ms": forward_ms,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"{args.model}: {report['units']} units, {n} front members, "
        f"{args.rounds} blocks x {args.block} switches per method, torch {torch.__version__}, 1 thread"
    )
    print(f"{'method':40s} {'median µs':>10s} {'IQR µs':>16s} {'vs apply_mask':>14s}")
    for name, res in results.items():
        speed = res["speedup_vs_apply_mask"]
        print(
            f"{name:40s} {res['median_us']:10.3f} {res['q1_us']:7.3f}–{res['q3_us']:<8.3f} "
            f"{(f'{speed:.1f}x' if speed else '-'):>14s}"
        )
    mem = report["memory"]
    print(
        f"memory: AdaptiveModel tables {mem['adaptive_model_python_bytes'] / 1024:.1f} KiB; "
        f"deepcopy per configuration {mem['deepcopy_total_weight_bytes'] / 2**20:.1f} MiB of weights "
        f"({n} x {tensor_bytes / 2**20:.2f} MiB, built in {deepcopy_build_s:.2f} s)"
    )
    print(
        f"forward, batch 1: full {forward_ms['full']:.2f} ms, cheapest member {forward_ms['cheapest']:.2f} ms"
    )
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
