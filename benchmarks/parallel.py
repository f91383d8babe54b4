"""Accuracy-only evaluation of 64 random masks of resnet56: 2 local worker processes vs 1.

Configurations, measured in one run on the same masks and images (no cache):

* ``processes 1x1``  -- ParallelEvaluator, 1 worker process with 1 torch thread;
* ``processes 2x1``  -- ParallelEvaluator, 2 worker processes with 1 torch thread each;
* ``in-process 1x2`` -- a plain Evaluator in this process with 2 torch threads (the fair
  serial comparison on a 2-core machine: it uses both cores too).

With ``--rounds R`` the three are repeated in alternating order (ABC, CBA, ...) and the
fastest round of each is reported (all rounds are in the JSON), which filters out
disturbances by other processes on a shared machine.  Worker start-up (spawn, import torch, load the checkpoint and the data, count FLOPs) is
timed separately (``ParallelEvaluator.start``) and excluded from the evaluation times.  The
batch is split into contiguous chunks of the sorted masks, one per worker; the prefix tree
then runs per chunk, so prefixes shared across the two chunks are computed twice: the
script reports that extra work (FLOPs per image of the prefix tree, from the cost table)
and the imbalance between the chunks.  Every configuration must give identical accuracies.

The model is an untrained resnet56 (weights from ``torch.manual_seed(0)``, batch-norm
statistics randomised so that masks give different accuracies; speed does not depend on
training) on the Fashion-MNIST validation split (``--val`` images, 28x28, from
``/usr/share/datasets/fashion-mnist``), or on digits when Fashion-MNIST is not installed.

Run:  python benchmarks/parallel.py          (~6-10 min on 2 cores; writes
      benchmarks/results/parallel.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

import paretoskip
from paretoskip import MeasureSettings
from paretoskip.checkpoint import save_checkpoint
from paretoskip.errors import DataNotFoundError
from paretoskip.measure import hardware_info
from paretoskip.parallel import EvaluatorSpec, ParallelEvaluator, split_batch

RESULTS = Path(__file__).resolve().parent / "results" / "parallel.json"


def make_spec(val: int, threads: int, directory: Path) -> EvaluatorSpec:
    """An untrained resnet56 whose batch-norm statistics are randomised (seeded), so that
    skipping units changes its predictions, saved as a checkpoint the workers load."""
    from paretoskip.data import load_dataset

    try:
        # official test part = limit / 7; the validation part is carved from the rest
        load_dataset("fashion-mnist", limit=val * 7 // 2, val_size=val)
        name, args, size = "fashion-mnist", {"limit": val * 7 // 2, "val_size": val}, 28
    except DataNotFoundError:
        name, args, size = "digits", {"val_size": 0.5}, 8
    torch.manual_seed(0)
    model = paretoskip.create_model("resnet56", num_classes=10, in_channels=1, input_size=size)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 1.5)
    path = directory / "resnet56-random"
    save_checkpoint(model, path, metadata={"note": "untrained, random batch-norm statistics"})
    return EvaluatorSpec(
        checkpoint=str(path),
        dataset=name,
        data_args={"seed": 0, **args},
        settings=MeasureSettings(threads=threads),
    )


def tree_flops(ev, masks: list[str]) -> int:
    """FLOPs per image of the prefix tree over ``masks``: one unit run per distinct prefix."""
    costs = ev.costs
    nodes = {m[: k + 1] for m in masks for k in range(len(m))}
    return costs.base_flops + sum(
        (costs.skip_flops if p[-1] == "1" else costs.run_flops)[len(p) - 1] for p in nodes
    )


def timed_parallel(spec: EvaluatorSpec, masks: list[str], workers: int) -> dict:
    t0 = time.perf_counter()
    with ParallelEvaluator(spec, executor="processes", workers=workers, threads_per_worker=1) as pe:
        pe.start()
        startup = time.perf_counter() - t0
        load = os.getloadavg()[0]
        t1 = time.perf_counter()
        accs = pe.accuracy_many(masks)
        seconds = time.perf_counter() - t1
        batch = pe.batches[-1]
    return {
        "seconds": seconds,
        "startup_seconds": startup,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "chunks": [
            {k: w[k] for k in ("worker", "masks", "seconds", "cpu_seconds")}
            for w in batch["workers"]
        ],
        "cpu_seconds": sum(w["cpu_seconds"] for w in batch["workers"]),
        "accuracies": accs,
    }


def timed_inprocess(spec: EvaluatorSpec, masks: list[str], threads: int) -> dict:
    import dataclasses

    ev = dataclasses.replace(spec, settings=MeasureSettings(threads=threads)).build()
    ev.accuracy_many(masks[:1])  # warm-up (stem activations cached, allocator)
    load = os.getloadavg()[0]
    t1, cpu = time.perf_counter(), time.process_time()
    accs = ev.accuracy_many(masks)
    seconds, cpu = time.perf_counter() - t1, time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "accuracies": accs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--masks", type=int, default=64)
    ap.add_argument("--val", type=int, default=2000, help="validation images (>= 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1, help="repeat, alternating the order")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory()
    spec = make_spec(args.val, threads=1, directory=Path(tmp.name))
    probe = spec.build()
    n_units = probe.space.n_units
    rng = random.Random(args.seed)
    masks = sorted(
        {"".join(str(rng.randint(0, 1)) for _ in range(n_units)) for _ in range(args.masks * 2)}
    )
    rng.shuffle(masks)
    masks = masks[: args.masks]
    chunks = split_batch(masks, 2)
    work_1 = tree_flops(probe, masks)
    work_2 = [tree_flops(probe, c) for c in chunks]

    print(
        f"{len(masks)} masks, {len(probe.data.val)} {probe.data.name} validation images, "
        f"resnet56 ({n_units} units); {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    configs = [
        ("processes 1x1", lambda: timed_parallel(spec, masks, 1)),
        ("processes 2x1", lambda: timed_parallel(spec, masks, 2)),
        ("in-process 1x2", lambda: timed_inprocess(spec, masks, 2)),
    ]
    every: dict[str, list[dict]] = {label: [] for label, _ in configs}
    for r in range(args.rounds):  # ABC, CBA, ...: drift hits every configuration alike
        for label, fn in configs if r % 2 == 0 else configs[::-1]:
            print(f"  round {r + 1}: {label} ...", file=sys.stderr, flush=True)
            every[label].append(fn())
    reference = every["processes 1x1"][0]["accuracies"]
    identical = all(x["accuracies"] == reference for xs in every.values() for x in xs)
    for xs in every.values():
        for x in xs:
            del x["accuracies"]
    # the least disturbed round of each configuration (the machine may be shared)
    runs = {label: dict(min(xs, key=lambda x: x["seconds"])) for label, xs in every.items()}
    for label, r in runs.items():
        r["all_rounds_seconds"] = [x["seconds"] for x in every[label]]
        r["masks_per_second"] = len(masks) / r["seconds"]
        r["cores_used"] = r["cpu_seconds"] / r["seconds"]  # < threads x workers: CPU contention

    s11 = runs["processes 1x1"]["seconds"]
    s21 = runs["processes 2x1"]["seconds"]
    s12 = runs["in-process 1x2"]["seconds"]
    chunk_s = [c["seconds"] for c in runs["processes 2x1"]["chunks"]]
    chunk_cpu = [c["cpu_seconds"] for c in runs["processes 2x1"]["chunks"]]
    result = {
        "benchmark": "accuracy-only evaluation, 2 local worker processes vs 1",
        "command": "python benchmarks/parallel.py " + " ".join(argv or sys.argv[1:]),
        "model": "resnet56 (untrained: torch.manual_seed(0), random batch-norm statistics)",
        "distinct_accuracies": len(set(reference)),
        "dataset": probe.data.describe(),
        "validation_images": len(probe.data.val),
        "masks": len(masks),
        "threads": "1 torch thread per worker process; in-process run: 2 threads",
        "machine": {**hardware_info(), "python": platform.python_version()},
        "runs": runs,
        "speedup_2x1_over_1x1": s11 / s21,
        "speedup_2x1_over_inprocess_1x2": s12 / s21,
        "speedup_inprocess_1x2_over_1x1": s11 / s12,
        "chunk_imbalance": max(chunk_s) / min(chunk_s) if min(chunk_s) > 0 else None,
        # CPU time does not depend on what else runs on the machine: the single worker's CPU
        # seconds over the slowest of the two workers' CPU seconds is the speedup two idle
        # cores would give (work added by splitting and imbalance included)
        "cpu_time_speedup_2x1_over_1x1": runs["processes 1x1"]["cpu_seconds"] / max(chunk_cpu),
        "prefix_tree_flops_per_image": {
            "one_chunk": work_1,
            "two_chunks": work_2,
            "extra_work_of_splitting": sum(work_2) / work_1 - 1,
            "ideal_speedup_2_workers": work_1 / max(work_2),
        },
        "identical_accuracies": identical,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\n{'configuration':<16} {'seconds':>8} {'masks/s':>8} {'CPU s':>7} {'cores used':>10} "
        f"{'startup s':>9} {'load':>5}"
    )
    for label, r in runs.items():
        start = f"{r['startup_seconds']:.1f}" if "startup_seconds" in r else "-"
        print(
            f"{label:<16} {r['seconds']:8.1f} {r['masks_per_second']:8.2f} "
            f"{r['cpu_seconds']:7.1f} {r['cores_used']:10.2f} {start:>9} {r['load_before']:5.1f}"
        )

    tree = result["prefix_tree_flops_per_image"]
    print(
        f"\n2 workers vs 1 (1 thread each): {result['speedup_2x1_over_1x1']:.2f}x; "
        f"vs 1 process with 2 threads: {result['speedup_2x1_over_inprocess_1x2']:.2f}x; "
        f"2 threads vs 1: {result['speedup_inprocess_1x2_over_1x1']:.2f}x\n"
        f"in CPU time (what two idle cores would give): 2 workers vs 1: "
        f"{result['cpu_time_speedup_2x1_over_1x1']:.2f}x\n"
        f"splitting the prefix tree costs {100 * tree['extra_work_of_splitting']:.1f}% more "
        f"FLOPs (ideal 2-worker speedup {tree['ideal_speedup_2_workers']:.2f}x); chunk "
        f"imbalance {result['chunk_imbalance']:.2f}; identical accuracies: {identical}"
    )
    print(f"wrote {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
