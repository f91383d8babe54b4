"""Training cost of the ``adn`` recipe against ``stochastic-depth`` and ``plain``, per step.

One optimizer step as :func:`paretoskip.train.fit` takes it (``zero_grad``, the recipe's
``step``, ``optimizer.step``), on one fixed Fashion-MNIST batch, in training mode, with one
intra-op thread.  ``stochastic-depth`` and ``plain`` train the CIFAR ResNet (``resnet20``:
stochastic depth with ``p_last=0.5``), ``adn`` its ADN variant (``resnet20-adn``: a
super-net and a base-net pass per step).  The methods are timed round by round, one step
each per round, so that machine drift hits them alike; the table gives the median and
inter-quartile range of the seconds per step and the median of the per-round ratios to
stochastic depth.  ``uptime``'s load average is recorded (the machine may be shared).

Run:  python benchmarks/adn_training_cost.py [--model resnet20] [--rounds 20]
      (~1 min; writes benchmarks/results/adn_training_cost.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import paretoskip
import paretoskip.models._adn  # noqa: F401  registers the -adn models
from paretoskip.data import load_dataset
from paretoskip.measure import iqr
from paretoskip.train import get_recipe

RESULTS = Path(__file__).resolve().parent / "results" / "adn_training_cost.json"


def make(model: str, recipe: str, data, seed: int = 0):
    rec = get_recipe(recipe)
    options = rec.resolve_options({})
    torch.manual_seed(seed)
    name = f"{model}-adn" if recipe == "adn" else model
    net = paretoskip.create_model(
        name,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        input_size=data.input_size,
        **rec.model_kwargs(options),
    ).train()
    rec.check_model(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return name, rec, options, net, opt


def one_step(rec, options, net, opt, x, y) -> float:
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    rec.step(net, x, y, torch.nn.functional.cross_entropy, options)
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", seed=0, limit=2 * args.batch_size)
    x, y = data.train.x[: args.batch_size], data.train.y[: args.batch_size]
    methods = {r: make(args.model, r, data) for r in ("stochastic-depth", "plain", "adn")}
    times: dict[str, list[float]] = {r: [] for r in methods}
    load_before = os.getloadavg()
    for i in range(args.warmup + args.rounds):
        for r, (_, rec, options, net, opt) in methods.items():
            t = one_step(rec, options, net, opt, x, y)
            if i >= args.warmup:
                times[r].append(t)
    load_after = os.getloadavg()
    base = times["stochastic-depth"]
    rows = {}
    for r, ts in times.items():
        rows[r] = {
            "model": methods[r][0],
            "passes_per_step": methods[r][1].passes_per_step,
            "seconds_per_step_median": statistics.median(ts),
            "seconds_per_step_iqr": iqr(ts),
            "ratio_to_stochastic_depth_median": statistics.median(a / b for a, b in zip(ts, base)),
            "ratio_to_stochastic_depth_iqr": iqr([a / b for a, b in zip(ts, base)]),
        }
    doc = {
        "benchmark": "adn_training_cost",
        "batch": [args.batch_size, data.in_channels, data.input_size, data.input_size],
        "dataset": "fashion-mnist",
        "rounds": args.rounds,
        "warmup_rounds": args.warmup,
        "threads": args.threads,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "methods": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'recipe':18} {'model':14} {'s/step':>8} {'IQR':>7} {'× SD':>6}")
    for r, row in rows.items():
        print(
            f"{r:18} {row['model']:14} {row['seconds_per_step_median']:8.4f} "
            f"{row['seconds_per_step_iqr']:7.4f} {row['ratio_to_stochastic_depth_median']:6.2f}"
        )
    print(f"load average {load_before} -> {load_after}; wrote {args.out}")


if __name__ == "__main__":
    main()
