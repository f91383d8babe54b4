"""Evaluator speed: prefix-tree evaluate_many against the naive loop, in one run.

64 masks on resnet56 over a validation split of >= 2,000 images (Fashion-MNIST when the
Debian package is installed, else digits), cold cache:

* naive: for each mask, apply it and run the whole validation split;
* evaluate_many: the prefix tree (plus FLOPs from the table), into a fresh SQL cache.

Two populations: *clustered* (8 parent masks, each with 8 children differing in 1-3 bits,
like a late NSGA-II generation) and *uniform* random masks.  Then warm-cache throughput.
Every accuracy must be identical.  Writes benchmarks/results/evaluator.json.

    python benchmarks/evaluator.py [--val 2000] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

import paretoskip
from paretoskip.data import load_dataset
from paretoskip.errors import DataNotFoundError


def populations(n_units: int, seed: int = 0) -> dict[str, list[list[int]]]:
    rng = random.Random(seed)
    clustered = []
    for _ in range(8):
        parent = [rng.randint(0, 1) for _ in range(n_units)]
        for _ in range(8):
            child = list(parent)
            for i in rng.sample(range(n_units), rng.randint(1, 3)):
                child[i] ^= 1
            clustered.append(child)
    uniform = [[rng.randint(0, 1) for _ in range(n_units)] for _ in range(64)]
    return {"clustered": clustered, "uniform": uniform}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--val", type=int, default=2000, help="validation images (default 2000)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed repeats of each method (default 3)"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "evaluator.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    try:
        data = load_dataset("fashion-mnist", seed=0, val_size=args.val, limit=args.val * 3)
    except DataNotFoundError:
        data = load_dataset("digits", seed=0, val_size=0.6, test_size=0.2)
    torch.manual_seed(0)
    model = paretoskip.create_model(
        "resnet56",
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        input_size=data.input_size,
    ).eval()
    n_units = len(paretoskip.models.skippable_units(model))
    print(
        f"resnet56 ({n_units} units) on {data.name}: {len(data.val)} validation images, {args.threads} threads"
    )

    results: dict = {
        "model": "resnet56",
        "dataset": data.name,
        "validation_images": len(data.val),
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "weights": "random init, seed 0 (speed does not depend on the weights)",
        "populations": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, masks in populations(n_units).items():
            naive_t, tree_t, warm_t = [], [], []
            identical = True
            for r in range(args.repeats):
                cache = f"sqlite:///{tmp}/{name}-{r}.db"
                ev = paretoskip.Evaluator(model, data, cache=cache)
                t0 = time.perf_counter()
                naive = [ev.naive_accuracy(m) for m in masks]
                naive_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                evs = ev.evaluate_many(masks)
                tree_t.append(time.perf_counter() - t0)
                identical &= [e["accuracy"] for e in evs] == naive
                t0 = time.perf_counter()
                warm = ev.evaluate_many(masks)
                warm_t.append(time.perf_counter() - t0)
                assert all(w.cache_hit for w in warm)
            ratios = [n / t for n, t in zip(naive_t, tree_t)]
            row = {
                "masks": len(masks),
                "distinct_masks": len({tuple(m) for m in masks}),
                "naive_seconds": naive_t,
                "evaluate_many_seconds": tree_t,
                "speedup_median": statistics.median(ratios),
                "speedup_min": min(ratios),
                "speedup_max": max(ratios),
                "identical_accuracies": identical,
                "warm_cache_masks_per_second": statistics.median(len(masks) / t for t in warm_t),
            }
            results["populations"][name] = row
            print(
                f"{name:9s}  naive {statistics.median(naive_t):7.2f} s   evaluate_many {statistics.median(tree_t):7.2f} s"
                f"   speedup x{row['speedup_median']:.2f} (min {row['speedup_min']:.2f}, max {row['speedup_max']:.2f})"
                f"   identical={identical}   warm cache {row['warm_cache_masks_per_second']:.0f} masks/s"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
