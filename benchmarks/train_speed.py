"""Seconds per training epoch on full Fashion-MNIST (28x28), per model, recipe and thread count.

An epoch of the shipped studies is 421 steps of 128 images (54,000 training images) plus one
validation pass over 6,000 images.  This times ``--steps`` real training steps (the shared
loop's recipe step, SGD with Nesterov momentum, random crops and flips) after two warm-up
steps, and one validation pass, then extrapolates to an epoch: median and IQR over the steps.
Run it on an otherwise idle machine; the load average is recorded before and after.

    python benchmarks/train_speed.py [--models resnet20,resnet32,resnet56] [--threads 1,2]

Writes ``benchmarks/results/train_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import paretoskip
from paretoskip.data import load_dataset
from paretoskip.measure import iqr
from paretoskip.train import augment_batch, evaluate_accuracy, get_recipe

HERE = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 54000 // 128


def time_model(name: str, recipe: str, threads: int, data, steps: int) -> dict:
    torch.set_num_threads(threads)
    rec = get_recipe(recipe)
    options = rec.resolve_options({})
    kwargs = dict(num_classes=10, in_channels=1, input_size=28, **rec.model_kwargs(options))
    torch.manual_seed(0)
    model = paretoskip.create_model(name, **kwargs).train()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    gen = torch.Generator().manual_seed(0)
    loss_fn = torch.nn.functional.cross_entropy
    times = []
    for i in range(steps + 2):
        idx = torch.randint(0, len(data.train), (128,), generator=gen)
        x = augment_batch(data.train.x[idx], 3, True, gen)
        y = data.train.y[idx]
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        rec.step(model, x, y, loss_fn, options)
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    t = time.perf_counter()
    evaluate_accuracy(model, data.val)
    val_seconds = time.perf_counter() - t
    step = statistics.median(times)
    return {
        "model": name,
        "recipe": recipe,
        "threads": threads,
        "steps_timed": steps,
        "seconds_per_step_median": step,
        "seconds_per_step_iqr": iqr(times),
        "validation_seconds": val_seconds,
        "seconds_per_epoch": step * STEPS_PER_EPOCH + val_seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="resnet20,resnet32,resnet56")
    ap.add_argument("--recipes", default="stochastic-depth")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train_speed.json")
    args = ap.parse_args()
    data = load_dataset("fashion-mnist", seed=0, val_size=6000)
    before = os.getloadavg()
    rows = []
    for name in args.models.split(","):
        for recipe in args.recipes.split(","):
            for th in (int(t) for t in args.threads.split(",")):
                r = time_model(name, recipe, th, data, args.steps)
                rows.append(r)
                print(
                    f"{name:14s} {recipe:16s} {th} thread(s): {r['seconds_per_epoch']:6.0f} s "
                    f"per epoch ({r['seconds_per_step_median'] * 1000:.0f} ms/step, IQR "
                    f"{r['seconds_per_step_iqr'] * 1000:.0f})",
                    flush=True,
                )
    doc = {
        "benchmark": "train_speed",
        "command": f"python benchmarks/train_speed.py --models {args.models} --recipes "
        f"{args.recipes} --threads {args.threads} --steps {args.steps}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_before": before,
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
