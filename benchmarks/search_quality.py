"""Search quality: hypervolume found by each engine against the exact front.

A space of 2^12 masks (resnet32 trained by paretoskip on digits with stochastic depth, the
first unit of each stage locked) is evaluated once, exhaustively, into an evaluation cache.
Every engine then searches it for 5 seeds with a budget of 512 distinct masks; since the
evaluations come from the cache, the runs cost only the engines' own time.  For budgets of
64/128/256/512 evaluations the benchmark reports HV(first B distinct masks)/HV(exact front)
(objectives accuracy and FLOPs, the normalisation of the front file).  An engine's first B
evaluations are exactly what a run with budget B evaluates, except that pymoo engines cut
their last generation short.

    python benchmarks/search_quality.py [--seeds 5] [--engines pymoo-nsga2,tpe,...]

Writes benchmarks/results/search_quality.json and plots/search_quality.{png,pdf}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import optuna
import torch

import paretoskip
from paretoskip.checkpoint import load_checkpoint
from paretoskip.data import load_dataset
from paretoskip.front import hypervolume, nondominated
from paretoskip.objectives import parse_objectives
from paretoskip.search import ENGINES
from paretoskip.train import train_and_save

HERE = Path(__file__).parent
BUDGETS = (64, 128, 256, 512)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--engines", default=",".join(e for e in ENGINES if e != "exhaustive"))
    ap.add_argument("--gp-budget", type=int, default=64, help="GP is slow: its budget (default 64)")
    ap.add_argument("--out", default=str(HERE / "results" / "search_quality.json"))
    ap.add_argument("--plot", default="plots/search_quality")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("paretoskip").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    data = load_dataset("digits", seed=0)
    ckpt = HERE / "results" / "digits-resnet32-sd"
    if not ckpt.with_suffix(".safetensors").exists():
        print("training resnet32 (stochastic depth) on digits ...")
        train_and_save(
            "resnet32",
            data,
            ckpt,
            recipe="stochastic-depth",
            epochs=30,
            batch_size=64,
            seed=0,
            progress=False,
        )
    model, meta = load_checkpoint(ckpt)
    space = paretoskip.SkipSpace.from_model(model, locked=["layer1.0", "layer2.0", "layer3.0"])
    assert space.size == 4096, space.size
    cache = f"sqlite:///{HERE / 'results' / 'search_quality_cache.db'}"
    ev = paretoskip.Evaluator(model, data, space=space, cache=cache)

    t0 = time.perf_counter()
    every = [space.mask_from_genes(g) for g in itertools.product((0, 1), repeat=space.n_genes)]
    table = {}
    for start in range(0, len(every), 512):
        for e in ev.evaluate_many(every[start : start + 512]):
            table[e.mask] = (e["accuracy"], e["flops"])
    exhaustive_s = time.perf_counter() - t0
    objectives = parse_objectives(["accuracy", "flops"])
    ref = {
        "accuracy": table[space.to_bitstring(space.full)][0],
        "flops": float(ev.costs.full_flops),
    }
    values = np.array(list(table.values()))
    exact_front = values[nondominated(values, objectives)]
    hv_exact = hypervolume(exact_front, objectives, ref)
    print(
        f"exhaustive: {len(table)} masks in {exhaustive_s:.1f} s (cache: {ev.misses} measured); exact front "
        f"{len(exact_front)} points, HV {hv_exact:.5f}; full-model val accuracy {ref['accuracy']:.4f}"
    )

    results = {
        "model": "resnet32 (digits, stochastic depth p_last=0.5, 30 epochs, batch 64)",
        "checkpoint_test_accuracy": meta.get("test_accuracy"),
        "space": {"genes": space.n_genes, "masks": space.size, "locked": list(space.locked)},
        "exact": {"front_size": len(exact_front), "hypervolume": hv_exact, "seconds": exhaustive_s},
        "budgets": list(BUDGETS),
        "engines": {},
    }
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        budget = args.gp_budget if engine == "gp" else max(BUDGETS)
        per_budget: dict[int, list[float]] = {b: [] for b in BUDGETS if b <= budget}
        secs = []
        for seed in range(args.seeds):
            t1 = time.perf_counter()
            name = f"{engine}-{seed}"
            storage = ":memory:"
            front = paretoskip.search(
                ev,
                engine=engine,
                budget=budget,
                seed=seed,
                storage=storage,
                study_name=name,
                progress=False,
            )
            secs.append(time.perf_counter() - t1)
            db = front.study
            order = list(
                dict.fromkeys(
                    t.user_attrs["mask"] for t in sorted(db.trials(), key=lambda t: t.number)
                )
            )
            for b in per_budget:
                pts = np.array([table[m] for m in order[:b]])
                per_budget[b].append(
                    hypervolume(pts[nondominated(pts, objectives)], objectives, ref) / hv_exact
                )
        row = {
            str(b): {
                "mean": statistics.mean(v),
                "std": statistics.pstdev(v),
                "min": min(v),
                "runs": v,
            }
            for b, v in per_budget.items()
        }
        results["engines"][engine] = {"hv_ratio": row, "seconds_per_run": statistics.mean(secs)}
        cells = "  ".join(
            f"{b}:{row[str(b)]['mean']:.4f}±{row[str(b)]['std']:.4f}" for b in per_budget
        )
        print(f"{engine:14s} {cells}   ({statistics.mean(secs):.1f} s/run)")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    _plot(results, Path(args.plot))


def _plot(results: dict, base: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    markers = itertools.cycle("osD^v<>PX*h")
    for engine, row in results["engines"].items():
        bs = [int(b) for b in row["hv_ratio"]]
        mean = np.array([row["hv_ratio"][str(b)]["mean"] for b in bs])
        std = np.array([row["hv_ratio"][str(b)]["std"] for b in bs])
        lw = 2.4 if engine == "pymoo-nsga2" else 1.2
        ax.errorbar(bs, mean, yerr=std, marker=next(markers), lw=lw, capsize=3, label=engine)
    ax.axhline(0.99, color="0.5", ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(BUDGETS), [str(b) for b in BUDGETS])
    ax.set_xlabel("evaluations (distinct masks)")
    ax.set_ylabel("HV found / HV of the exact front")
    ax.set_title(f"Search quality on {results['space']['masks']} masks (resnet32, digits)")
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    base.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(base.with_suffix(f".{ext}"), dpi=200)
    plt.close(fig)
    print(f"wrote {base}.png/.pdf")


if __name__ == "__main__":
    main()
