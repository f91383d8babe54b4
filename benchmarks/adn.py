"""Adaptive Depth Networks against stochastic depth and plain training on Fashion-MNIST.

Same data, split, epochs and optimiser settings for the three recipes (``plain``,
``stochastic-depth``, ``adn``); the checkpoints are the shipped studies' own:
``studies/checkpoints/fashion-mnist-resnet20[-plain|-adn]`` (the whole of Fashion-MNIST) and
``studies/checkpoints/fashion-mnist-20k-resnet32[-plain|-adn]`` (its 20,000-image stratified
subset, which a 2-core machine trains in about an hour per recipe).  For each depth:

* the paper-style table: every stage-tied ADN configuration (2^3) with its FLOPs, parameters,
  validation and test accuracy, and the measured latency ratio of the exported configuration
  (``export_configuration``, torch.export) against the exported full model, batch 1 and 64,
  interleaved;
* the fronts of all three overlaid (plain and stochastic depth: every mask of the full space,
  or for a space larger than ``--exhaustive-max`` the ``--engine`` with ``--budget`` distinct
  masks; ADN: its stage-tied space and the finer space, every skippable block on its own,
  both enumerated), searched on validation, test accuracy shown; their hypervolumes;
* the training cost of each recipe from its checkpoint (seconds, seconds per epoch, forward/
  backward passes per step).

    python benchmarks/adn.py [--depths 20,32] [--threads 1] [--repeats 30]
        [--exhaustive-max 4096] [--engine pymoo-nsga2] [--budget 400] [--sides plain,...]

A depth given replaces that depth's entry in the JSON; the others are kept.  Evaluations are
cached in ``benchmarks/results/headline.db`` (shared with ``benchmarks/headline.py``), so
``--sides plain`` and ``--sides stochastic-depth`` run in two processes at once fill the cache
for a full run.  Writes ``benchmarks/results/adn.json`` and ``plots/adn.{png,pdf}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from paretoskip.data import load_dataset
from paretoskip.models._adn import adn_space

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from headline import _load as load_study_checkpoint  # noqa: E402  (one protocol for both)
from headline import add_search_options, exact_front, exported_latency  # noqa: E402

ROOT = HERE.parent
#: depth → (study name of the stochastic-depth model, validation images, data limit); the
#: plain and ADN twins are ``<name>-plain`` and ``<name>-adn``
STUDIES: dict[int, tuple[str, int, int | None]] = {
    20: ("fashion-mnist-resnet20", 6000, None),
    32: ("fashion-mnist-20k-resnet32", 2000, 20000),
}
SIDES = ("plain", "stochastic-depth", "adn (stage-tied)", "adn (finer)")
log = logging.getLogger("adn")


def _front(
    study: str, space_kind: str, args: argparse.Namespace, data, loaded: dict[str, Any]
) -> dict[str, Any]:
    """The front of ``study`` in one of its spaces; ``loaded`` keeps each checkpoint loaded
    once (the ADN model serves two spaces)."""
    if study not in loaded:
        loaded[study] = load_study_checkpoint(study, data=data)[1:]
    model, meta = loaded[study]
    space = None
    if space_kind in ("tied", "finer"):
        space = adn_space(model, tied=space_kind == "tied")
    got = exact_front(
        study,
        data,
        model,
        meta,
        args.db,
        args.threads,
        args,
        space=space,
        suffix="" if space_kind == "full" else space_kind,
    )
    return {**got, "model": model, "meta": meta}


def _members(front) -> list[dict[str, Any]]:
    return [
        {
            "mask": m["mask"],
            "skipped": m["skipped"],
            "val_accuracy": m["metrics"]["accuracy"]["value"],
            "test_accuracy": m["test_accuracy"],
            "flops": m["metrics"]["flops"]["value"],
            "params": m["metrics"]["params"]["value"],
        }
        for m in front.strict_members()
    ]


def _training(meta: dict[str, Any]) -> dict[str, Any]:
    t = meta.get("training", {})
    cost = meta.get("training_cost", {})
    return {
        "recipe": t.get("recipe"),
        "recipe_options": t.get("recipe_options"),
        "epochs": t.get("epochs"),
        "threads": t.get("threads"),
        "train_seconds": meta.get("train_seconds"),
        "seconds_per_epoch_median": cost.get("seconds_per_epoch_median"),
        "passes_per_step": t.get("passes_per_step"),
        "val_accuracy": meta.get("val_accuracy"),
        "test_accuracy": meta.get("test_accuracy"),
    }


def analyse(depth: int, args: argparse.Namespace) -> dict[str, Any]:
    base, val_size, limit = STUDIES[depth]
    data = load_dataset("fashion-mnist", seed=0, val_size=val_size, limit=limit)
    loaded: dict[str, Any] = {}
    out: dict[str, Any] = {
        "recipes": {},
        "data": {
            "name": "fashion-mnist",
            "limit": limit,
            "split_seed": 0,
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
            "fingerprint": data.fingerprint,
        },
    }
    for recipe, study, kind in (
        ("plain", f"{base}-plain", "full"),
        ("stochastic-depth", base, "full"),
        ("adn (stage-tied)", f"{base}-adn", "tied"),
        ("adn (finer)", f"{base}-adn", "finer"),
    ):
        if recipe not in args.sides:
            continue
        log.info("resnet%d: %s front", depth, recipe)
        got = _front(study, kind, args, data, loaded)
        front, ev = got["front"], got["evaluator"]
        ref = front.reference
        out["recipes"][recipe] = {
            "study": study,
            "space": {"kind": kind, "size": ev.space.size, "genes": list(ev.space.gene_names)},
            "search": got["search"],
            "full_model": {
                "val_accuracy": ref["metrics"]["accuracy"]["value"],
                "test_accuracy": ref["test_accuracy"],
                "flops": ref["metrics"]["flops"]["value"],
                "params": ref["metrics"]["params"]["value"],
            },
            "hypervolume": front.hypervolume,
            "front": _members(front),
            "search_seconds": got["seconds"],
            "training": _training(got["meta"]),
        }
        if kind == "tied":
            # the paper's table: every stage-tied configuration, front member or not
            masks = [ev.space.to_bitstring(ev.space.mask_from_genes(g)) for g in _all_genes(ev)]
            evs = {e.mask: e for e in ev.evaluate_many(masks)}
            tests = dict(zip(masks, ev.test_accuracy(masks)))
            rows = []
            torch.set_num_threads(args.threads)
            for mask in masks:
                e = evs[mask]
                row = {
                    "flags": "".join("T" if g else "F" for g in ev.space.genes_from_mask(mask)),
                    "mask": mask,
                    "flops": e["flops"],
                    "flops_ratio": e["flops"] / ref["metrics"]["flops"]["value"],
                    "params": e["params"],
                    "val_accuracy": e["accuracy"],
                    "test_accuracy": tests[mask],
                }
                if not args.no_latency:
                    row["latency"] = {
                        f"batch{b}": exported_latency(got["model"], mask, b, args.repeats)
                        for b in (1, 64)
                    }
                rows.append(row)
            out["paper_table"] = rows
    out["load_average_end"] = os.getloadavg()
    return out


def _all_genes(ev) -> list[tuple[int, ...]]:
    import itertools

    return list(itertools.product((0, 1), repeat=ev.space.n_genes))


def figure(results: dict[str, Any], stem: Path) -> list[Path]:
    from matplotlib.figure import Figure

    styles = {
        "plain": dict(color="#D55E00", marker="s", ls="--"),
        "stochastic-depth": dict(color="#0072B2", marker="o", ls="-"),
        "adn (stage-tied)": dict(color="#009E73", marker="D", ls="-"),
        "adn (finer)": dict(color="#CC79A7", marker="^", ls=":"),
    }
    fig = Figure(figsize=(5.2 * len(results), 4.2), constrained_layout=True)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (depth, r) in zip(axes, results.items()):
        lows = []
        for recipe, rr in r["recipes"].items():
            full = rr["full_model"]
            pts = sorted(
                (m["flops"] / full["flops"], 100 * m["test_accuracy"]) for m in rr["front"]
            )
            xs, ys = zip(*pts)
            st = styles[recipe]
            ax.step(xs, ys, where="post", color=st["color"], ls=st["ls"], lw=1.1)
            ax.plot(
                xs,
                ys,
                ls="none",
                marker=st["marker"],
                ms=4,
                color=st["color"],
                label=f"{recipe} (HV {rr['hypervolume']:.3f})",
            )
            lows.append(100 * full["test_accuracy"])
        ax.set_ylim(min(lows) - 10, max(lows) + 2)
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("FLOPs (fraction of the full model)")
        ax.set_ylabel("test accuracy (%)")
        data = r.get("data") or {}
        where = "Fashion-MNIST" + (
            f" ({data['limit'] // 1000}k subset)" if data.get("limit") else ""
        )
        ax.set_title(f"ResNet-{depth}, {where}: fronts searched on validation", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = stem.with_suffix(f".{ext}")
        fig.savefig(p, dpi=200)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--depths", default="20,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--db", type=Path, default=HERE / "results" / "headline.db")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "adn.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "plots" / "adn")
    add_search_options(ap, exhaustive_max=4096)
    ap.add_argument(
        "--sides",
        default=",".join(SIDES),
        help=f"which fronts to compute (default all: {', '.join(SIDES)}); a subset only "
        "fills the evaluation cache and writes nothing unless it is all of them",
    )
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.sides = [x.strip() for x in args.sides.split(",") if x.strip()]
    if bad := [x for x in args.sides if x not in SIDES]:
        raise SystemExit(f"--sides: unknown {', '.join(bad)}; accepted: {', '.join(SIDES)}")
    if bad := [d for d in args.depths.split(",") if not d.isdigit() or int(d) not in STUDIES]:
        raise SystemExit(
            f"--depths: unknown {', '.join(bad)}; accepted: {', '.join(map(str, STUDIES))}"
        )
    torch.set_num_threads(args.threads)
    started = time.time()
    previous = json.loads(args.out.read_text()).get("depths", {}) if args.out.exists() else {}
    results = dict(previous)
    for d in args.depths.split(","):
        results[f"resnet{d}"] = analyse(int(d), args)
    if set(args.sides) != set(SIDES):
        print(f"--sides {','.join(args.sides)}: evaluations cached in {args.db}, nothing written")
        return
    doc = {
        "benchmark": "adn",
        "command": f"python benchmarks/adn.py --depths {args.depths} --threads {args.threads} "
        f"--repeats {args.repeats} --exhaustive-max {args.exhaustive_max} --engine {args.engine} "
        f"--budget {args.budget}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": time.time() - started,
        "torch": torch.__version__,
        "depths": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    figure({k.removeprefix("resnet"): v for k, v in results.items()}, args.plot)
    for name, r in results.items():
        for recipe, rr in r["recipes"].items():
            t = rr["training"]
            print(
                f"{name} {recipe:18s} full test {rr['full_model']['test_accuracy']:.4f} "
                f"HV {rr['hypervolume']:.4f} train {t['train_seconds'] or 0:.0f} s "
                f"({t['passes_per_step']} passes/step)"
            )


if __name__ == "__main__":
    main()
