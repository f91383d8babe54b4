"""The headline: stochastic depth against plain training on full Fashion-MNIST.

For each shipped Fashion-MNIST pair of studies (``fashion-mnist-resnet20`` and its ``-plain``
twin, ``fashion-mnist-resnet32`` and its twin: same data, split and recipe but for stochastic
depth), with the studies' own checkpoints:

* the front, searched on the validation split: every mask where the space has at most
  ``--exhaustive-max`` masks (2^16 by default; resnet20: 2^9), else the default engine with
  ``--budget`` distinct masks (resnet32's 2^15 masks at 2,000 images would take hours on a
  2-core CPU: ``--exhaustive-max 4096 --budget 400``); the front members' accuracy then
  measured on the official test split;
* for test-accuracy drops of at most 0.5 / 1 / 2 percentage points against the full model:
  the cheapest front member (by FLOPs) within it, its FLOPs and parameter ratios, and the
  measured latency ratio of the *exported* configuration (rebuilt without its skipped blocks by
  ``paretoskip.export.export_configuration``, torch.export) against the full model exported the
  same way, at batch 1 and 64, interleaved (ABBA) in one run: median and IQR;
* the resilience curve of the stochastic-depth paper: mean test accuracy with k blocks skipped,
  k = 0…n, over every mask (resnet20) or up to ``--per-k`` random masks per k (resnet32);
* the hypervolume of both fronts (the front file's normalisation);
* energy: a hardware counter where one reads (``auto``: RAPL or NVML); otherwise the labelled
  estimate (``estimated:cpu-time``), never 0.

The goal it reports against: a stochastic-depth front member with >= 2x fewer FLOPs and >= 1.7x
lower measured latency at <= 1 pp test-accuracy drop, and a higher front HV for SD than plain.

    python benchmarks/headline.py --pairs resnet20                     # exhaustive, 17 min
    python benchmarks/headline.py --pairs resnet32 --exhaustive-max 4096 --budget 400 \
        --per-k 4 --jobs 2                                            # the two studies at once

Every evaluation lands in the cache of ``benchmarks/results/headline.db`` (a rerun is quick).
Writes ``benchmarks/results/headline.json`` and ``plots/headline.{png,pdf}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import paretoskip
from paretoskip.checkpoint import load_checkpoint
from paretoskip.data import load_dataset
from paretoskip.export import export_configuration
from paretoskip.measure import iqr

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DROPS_PP = (0.5, 1.0, 2.0)
PAIRS = {
    "resnet20": ("fashion-mnist-resnet20", "fashion-mnist-resnet20-plain", 6000),
    "resnet32": ("fashion-mnist-resnet32", "fashion-mnist-resnet32-plain", 2000),
}
log = logging.getLogger("headline")


def _load(study: str, val_size: int | None = None, limit: int | None = None, *, data=None):
    """The dataset (``data`` when given, else loaded), the study's checkpoint and its metadata,
    checked to be trained on that split."""
    if data is None:
        data = load_dataset("fashion-mnist", seed=0, val_size=val_size, limit=limit)
    model, meta = load_checkpoint(ROOT / "studies" / "checkpoints" / study)
    if meta.get("dataset_fingerprint") != data.fingerprint:
        raise SystemExit(f"{study}: the checkpoint was trained on another split than the study's")
    return data, model, meta


def exact_front(
    study: str,
    data,
    model,
    meta,
    db: Path,
    threads: int,
    args: argparse.Namespace | None = None,
    *,
    space=None,
    suffix: str = "",
) -> dict[str, Any]:
    """Every mask on validation (or, for a space larger than ``--exhaustive-max``, the
    default engine with ``--budget`` distinct masks), the front's test accuracies.

    ``space``: another skip space of the model than its default one; ``suffix`` then tells
    its cached study apart (``<study>-exhaustive-<suffix>``)."""
    settings = paretoskip.MeasureSettings(threads=threads)
    ev = paretoskip.Evaluator(
        model,
        data,
        space=space,
        settings=settings,
        cache=str(db),
        model_fingerprint=meta["weights_fingerprint"],
    )
    t0 = time.perf_counter()
    tail = f"-{suffix}" if suffix else ""
    limit = args.exhaustive_max if args is not None else 2**16
    if ev.space.size <= limit:
        search = {"engine": "exhaustive", "budget": ev.space.size, "exhaustive": True}
        front = paretoskip.search(
            ev,
            objectives=["accuracy", "flops"],
            engine="exhaustive",
            budget=ev.space.size,
            storage=str(db),
            study_name=f"{study}-exhaustive{tail}",
            # one prefix tree per 4,096 masks in lexicographic order: close to the minimum of
            # block runs any exact prefix-sharing evaluation needs
            engine_options={"batch": 4096},
            progress=True,
        )
    else:
        search = {"engine": args.engine, "budget": args.budget, "exhaustive": False, "seed": 0}
        front = paretoskip.search(
            ev,
            objectives=["accuracy", "flops"],
            engine=args.engine,
            budget=args.budget,
            storage=str(db),
            study_name=f"{study}-{args.engine}-{args.budget}{tail}",
            seed=0,
            progress=True,
        )
    search["seconds"] = time.perf_counter() - t0  # test accuracies of the front included
    return {"front": front, "evaluator": ev, "seconds": search["seconds"], "search": search}


def add_search_options(ap: argparse.ArgumentParser, *, exhaustive_max: int) -> None:
    """``--exhaustive-max``, ``--engine`` and ``--budget``: how :func:`exact_front` searches."""
    ap.add_argument(
        "--exhaustive-max",
        type=int,
        default=exhaustive_max,
        help=f"largest space evaluated exhaustively (default {exhaustive_max}); larger ones "
        "are searched by --engine",
    )
    ap.add_argument("--engine", default="pymoo-nsga2", help="engine for a larger space")
    ap.add_argument("--budget", type=int, default=400, help="distinct masks for a larger space")


def resilience(ev, per_k: int, seed: int = 0) -> list[dict[str, Any]]:
    """Mean test accuracy with k units skipped (all masks, or ``per_k`` random ones per k)."""
    n = ev.space.n_units
    rng = random.Random(seed)
    masks: dict[int, list[str]] = {}
    for k in range(n + 1):
        total = math.comb(n, k)
        if total <= per_k:
            combos = itertools.combinations(range(n), k)
        else:
            seen: set[tuple[int, ...]] = set()
            while len(seen) < per_k:
                seen.add(tuple(sorted(rng.sample(range(n), k))))
            combos = iter(sorted(seen))
        masks[k] = ["".join("1" if i in set(c) else "0" for i in range(n)) for c in combos]
    flat = [m for k in masks for m in masks[k]]
    accs = dict(zip(flat, ev.test_accuracy(flat)))
    out = []
    for k, ms in masks.items():
        a = [accs[m] for m in ms]
        out.append(
            {
                "k": k,
                "masks": len(ms),
                "all_masks": len(ms) == math.comb(n, k),
                "mean_test_accuracy": statistics.fmean(a),
                "std": statistics.pstdev(a) if len(a) > 1 else 0.0,
                "min": min(a),
                "max": max(a),
            }
        )
    return out


def _time_pair(a, b, x: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    """Seconds per call of ``a`` and ``b`` on ``x``, interleaved ABBA; ratio a/b per repeat."""
    ta, tb = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            a(x)
            b(x)
        for r in range(repeats):
            order = ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta))
            for f, out in order:
                t = time.perf_counter()
                f(x)
                out.append(time.perf_counter() - t)
    ratios = [p / q for p, q in zip(ta, tb)]
    return {
        "candidate_median_s": statistics.median(ta),
        "candidate_iqr_s": iqr(ta),
        "full_median_s": statistics.median(tb),
        "full_iqr_s": iqr(tb),
        "ratio": statistics.median(ratios),
        "ratio_iqr": iqr(ratios),
        "speedup": 1.0 / statistics.median(ratios),
    }


def exported_latency(model, mask: str, batch: int, repeats: int) -> dict[str, float]:
    x = torch.randn(batch, *model.input_shape, generator=torch.Generator().manual_seed(0))
    full = "0" * len(mask)
    cand = export_configuration(model, mask, example_input=x)
    ref = export_configuration(model, full, example_input=x)
    with torch.inference_mode():
        paretoskip.models.apply_mask(model, mask)
        diff = float((cand(x) - model(x)).abs().max())
        paretoskip.models.apply_mask(model, full)
    out = _time_pair(cand, ref, x, repeats, warmup=5)
    out["batch_size"] = batch
    out["max_abs_diff_vs_masked_model"] = diff
    return out


def energy_per_image(model, mask: str, batch: int = 64) -> dict[str, Any]:
    """A hardware counter where one reads (auto), else the labelled CPU-time estimate."""
    from paretoskip.energy import make_energy_meter

    x = torch.randn(batch, *model.input_shape, generator=torch.Generator().manual_seed(0))
    paretoskip.models.apply_mask(model, mask)
    readings = {}
    try:
        for backend in ("auto", "estimated"):
            meter = make_energy_meter(backend)
            with torch.inference_mode():
                r = meter.measure(lambda: model(x), min_seconds=1.0)
            readings[backend] = {
                "joules_per_image": None if math.isnan(r.joules) else r.joules / batch,
                "spread_per_image": None if r.spread is None else r.spread / batch,
                "source": r.source,
                "reason": r.reason,
            }
            if backend == "auto" and r.source.startswith("measured"):
                break
    finally:
        paretoskip.models.apply_mask(model, "0" * len(mask))
    return readings


def analyse_pair(
    name: str, sd: str, plain: str, val_size: int, args: argparse.Namespace
) -> dict[str, Any]:
    result: dict[str, Any] = {"studies": {"stochastic-depth": sd, "plain": plain}}
    sides = [("stochastic-depth", sd), ("plain", plain)]
    if args.jobs > 1:  # one process per side (each with --threads), results as JSON
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(analyse_side, name, st, val_size, args) for _, st in sides]
            for (label, _), fut in zip(sides, futures):
                result[label] = fut.result()
    else:
        for label, study in sides:
            result[label] = analyse_side(name, study, val_size, args)
    return result | {"goal": _goal(result)}


def analyse_side(name: str, study: str, val_size: int, args: argparse.Namespace) -> dict:
    """The front, cheapest members within each drop, latency, energy and resilience of one
    study of a pair."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    data, model, meta = _load(study, val_size)
    log.info("%s: front of %s", name, study)
    got = exact_front(study, data, model, meta, args.db, args.threads, args)
    front, ev = got["front"], got["evaluator"]
    ref = front.reference
    full_test = ref["test_accuracy"]
    members = front.strict_members()
    full_flops = ref["metrics"]["flops"]["value"]
    full_params = ref["metrics"]["params"]["value"]
    rows = []
    for drop in DROPS_PP:
        ok = [m for m in members if m["test_accuracy"] >= full_test - drop / 100 - 1e-12]
        best = min(ok, key=lambda m: (m["metrics"]["flops"]["value"], -m["test_accuracy"]))
        row = {
            "max_drop_pp": drop,
            "mask": best["mask"],
            "skipped": best["skipped"],
            "val_accuracy": best["metrics"]["accuracy"]["value"],
            "test_accuracy": best["test_accuracy"],
            "test_drop_pp": 100 * (full_test - best["test_accuracy"]),
            "flops_ratio": best["metrics"]["flops"]["value"] / full_flops,
            "params_ratio": best["metrics"]["params"]["value"] / full_params,
            "flops_reduction": full_flops / best["metrics"]["flops"]["value"],
        }
        if not args.no_latency:
            with torch.inference_mode():
                torch.set_num_threads(args.threads)
                row["latency"] = {
                    f"batch{b}": exported_latency(model, best["mask"], b, args.repeats)
                    for b in (1, 64)
                }
                row["load_average_after"] = os.getloadavg()
        rows.append(row)
    energy = {}
    if not args.no_energy:
        energy["full"] = energy_per_image(model, "0" * ev.space.n_units)
        for row in rows:
            energy[row["mask"]] = energy_per_image(model, row["mask"])
    log.info("%s: resilience of %s", name, study)
    curve = resilience(ev, args.per_k)
    return {
        "checkpoint": {
            "path": f"studies/checkpoints/{study}",
            "weights_fingerprint": meta["weights_fingerprint"],
            "training": {
                k: meta["training"].get(k)
                for k in ("recipe", "epochs", "p_last", "seed", "threads", "nesterov")
            },
            "train_seconds": meta.get("train_seconds"),
        },
        "full_model": {
            "val_accuracy": ref["metrics"]["accuracy"]["value"],
            "test_accuracy": full_test,
            "flops": full_flops,
            "params": full_params,
        },
        "space_size": ev.space.size,
        "search": got["search"],
        "search_seconds": got["seconds"],
        "front": {
            "strict_members": len(members),
            "band_members": len(front.members) - len(members),
            "hypervolume": front.hypervolume,
            "members": [
                {
                    "mask": m["mask"],
                    "val_accuracy": m["metrics"]["accuracy"]["value"],
                    "test_accuracy": m["test_accuracy"],
                    "flops": m["metrics"]["flops"]["value"],
                }
                for m in members
            ],
        },
        "cheapest_within_drop": rows,
        "resilience": curve,
        "energy": energy,
        "load_average_end": os.getloadavg(),
    }


def _goal(result: dict[str, Any]) -> dict[str, Any]:
    sd_r, pl_r = result["stochastic-depth"], result["plain"]
    one_pp = next(r for r in sd_r["cheapest_within_drop"] if r["max_drop_pp"] == 1.0)
    lat = one_pp.get("latency", {})
    return {
        "sd_flops_reduction_at_1pp": one_pp["flops_reduction"],
        "sd_latency_speedup_at_1pp": {b: v["speedup"] for b, v in lat.items()},
        "flops_goal_2x": one_pp["flops_reduction"] >= 2.0,
        "latency_goal_1.7x": {b: v["speedup"] >= 1.7 for b, v in lat.items()},
        "hv_sd": sd_r["front"]["hypervolume"],
        "hv_plain": pl_r["front"]["hypervolume"],
        "hv_sd_higher": sd_r["front"]["hypervolume"] > pl_r["front"]["hypervolume"],
    }


def figure(results: dict[str, Any], stem: Path) -> list[Path]:
    from matplotlib.figure import Figure

    names = list(results)
    fig = Figure(figsize=(9.5, 3.6 * len(names)), constrained_layout=True)
    axes = fig.subplots(len(names), 2, squeeze=False)
    styles = {
        "stochastic-depth": dict(color="#0072B2", marker="o", ls="-"),
        "plain": dict(color="#D55E00", marker="s", ls="--"),
    }
    for row, name in zip(axes, names):
        r = results[name]
        ax = row[0]
        for label in ("stochastic-depth", "plain"):
            full = r[label]["full_model"]
            pts = sorted(
                (m["flops"] / full["flops"], 100 * m["test_accuracy"])
                for m in r[label]["front"]["members"]
            )
            xs, ys = zip(*pts)
            ax.step(
                xs, ys, where="post", lw=1.2, color=styles[label]["color"], ls=styles[label]["ls"]
            )
            ax.plot(
                xs,
                ys,
                ls="none",
                marker=styles[label]["marker"],
                ms=3.5,
                color=styles[label]["color"],
                label=f"{label} (HV {r[label]['front']['hypervolume']:.3f})",
            )
            ax.axhline(100 * full["test_accuracy"], color=styles[label]["color"], lw=0.6, ls=":")
        lo = min(100 * r[k]["full_model"]["test_accuracy"] for k in ("stochastic-depth", "plain"))
        ax.set_ylim(lo - 8, lo + 2.5)
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("FLOPs (fraction of the full model)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{name}: front searched on validation, test accuracy shown", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        ax = row[1]
        for label in ("stochastic-depth", "plain"):
            c = r[label]["resilience"]
            ks = [p["k"] for p in c]
            m = np.array([100 * p["mean_test_accuracy"] for p in c])
            s = np.array([100 * p["std"] for p in c])
            ax.plot(
                ks,
                m,
                marker=styles[label]["marker"],
                ms=3.5,
                color=styles[label]["color"],
                ls=styles[label]["ls"],
                label=label,
            )
            ax.fill_between(ks, m - s, m + s, color=styles[label]["color"], alpha=0.15, lw=0)
        ax.set_xlabel("blocks skipped (k)")
        ax.set_ylabel("mean test accuracy (%), ± std over masks")
        ax.set_title(f"{name}: resilience to skipping", fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
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
    ap.add_argument("--pairs", default=",".join(PAIRS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats per latency")
    ap.add_argument("--per-k", type=int, default=64, help="random masks per k (resilience)")
    ap.add_argument("--db", type=Path, default=HERE / "results" / "headline.db")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "headline.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "plots" / "headline")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--no-energy", action="store_true")
    add_search_options(ap, exhaustive_max=2**16)
    ap.add_argument("--jobs", type=int, default=1, help="2: the two studies of a pair at once")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    started = time.time()
    results = {}
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.pairs.split(","):
        sd, plain, val = PAIRS[name]
        results[name] = analyse_pair(name, sd, plain, val, args)
    doc = {
        **{k: v for k, v in previous.get("pairs", {}).items() if k not in results},
        **results,
    }
    out = {
        "benchmark": "headline",
        "command": "python benchmarks/headline.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in (
                ("pairs", args.pairs),
                ("threads", args.threads),
                ("repeats", args.repeats),
                ("per_k", args.per_k),
                ("exhaustive_max", args.exhaustive_max),
                ("engine", args.engine),
                ("budget", args.budget),
                ("jobs", args.jobs),
            )
        ),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": time.time() - started,
        "load_average_end": os.getloadavg(),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "pairs": doc,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    figure(doc, args.plot)
    for name, r in doc.items():
        g = r["goal"]
        print(
            f"{name}: SD @1pp {g['sd_flops_reduction_at_1pp']:.2f}x FLOPs, latency "
            f"{g['sd_latency_speedup_at_1pp']}; HV SD {g['hv_sd']:.4f} vs plain {g['hv_plain']:.4f}"
        )


if __name__ == "__main__":
    main()
