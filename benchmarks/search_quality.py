"""Search quality: hypervolume found by each engine against the exact front.

Two spaces, each evaluated once exhaustively (prefix-tree evaluator, validation split) into
a lookup table cached as ``benchmarks/results/search_quality/<space>.npz`` (weights and tables
are not versioned; a missing one is rebuilt):

* ``resnet32`` — a resnet32 trained here with stochastic depth on digits (seed 0, 30
  epochs), every one of its 15 units free: 2^15 = 32,768 masks;
* ``resnet44-locked`` — a resnet44 trained the same way (seed 1), the first unit of every
  stage locked and four pairs of units grouped: 14 genes, 2^14 = 16,384 masks.

Every engine then searches each space for 5 seeds up to the largest budget, its accuracies
read from the table (the same values the evaluator computed), so runs cost the engines' own
time.  For budgets of 64 ... 1024 distinct masks it reports HV(first B distinct masks) /
HV(exact front) (objectives accuracy and FLOPs, the front file's normalisation).  An
engine's first B evaluations are what a run with budget B evaluates, except that pymoo
engines cut their last generation short.  ``seconds_per_run`` is the engine's own time
(no evaluation cost, the table lookups are free).

    python benchmarks/search_quality.py [--seeds 5] [--engines surrogate,pymoo-nsga2,...]
        [--spaces resnet32,resnet44-locked] [--prepare-only]
        [--holdouts --holdout-engines surrogate,surrogate:descent=0 --holdout-budget 256]
        [--overhead-study studies/fashion-mnist-20k-resnet32.toml --overhead-budget 128
         --overhead-engines surrogate,pymoo-nsga2]

``--holdouts`` also runs a few engines (``name:key=value`` sets an option) on seven more
spaces of the same two kinds, trained with other seeds (resnet32 seeds 1-5, resnet44-locked
seeds 2-3), up to 256 masks: a check that settings chosen on the two main spaces carry over.

``--overhead-study`` also runs each engine (seed 0) on that real-data study with a real
evaluator and reports its own CPU time (everything but the evaluator's validation passes:
the engine, the study database, the exact costs) as a share of the evaluation's.

Writes benchmarks/results/search_quality.json and plots/search_quality.{png,pdf}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
import torch

import paretoskip
from paretoskip.checkpoint import load_checkpoint
from paretoskip.data import load_dataset
from paretoskip.front import hypervolume, nondominated
from paretoskip.metrics import parse_objectives
from paretoskip.search import ENGINES, make_engine, open_study
from paretoskip.search import run_engine as search_run
from paretoskip.train import train_and_save

HERE = Path(__file__).parent
CACHE = HERE / "results" / "search_quality"
BUDGETS = (64, 128, 256, 512, 1024)

#: name → (model, training seed, locked units, groups)
SPACES: dict[str, tuple[str, int, tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    "resnet32": ("resnet32", 0, (), ()),
    "resnet44-locked": (
        "resnet44",
        1,
        ("layer1.0", "layer2.0", "layer3.0"),
        (
            ("layer1.5", "layer1.6"),
            ("layer2.5", "layer2.6"),
            ("layer3.3", "layer3.4"),
            ("layer3.5", "layer3.6"),
        ),
    ),
}


#: More spaces of the same two kinds, trained with other seeds: engine settings chosen on the
#: two spaces above are checked on these (``--holdouts``).
HOLDOUTS: dict[str, tuple[str, int, tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    **{f"resnet32-seed{s}": ("resnet32", s, (), ()) for s in range(1, 6)},
    **{f"resnet44-locked-seed{s}": ("resnet44", s, *SPACES["resnet44-locked"][2:]) for s in (2, 3)},
}


def engine_spec(text: str) -> tuple[str, dict]:
    """An engine and its options from ``name`` or ``name:key=value:key=value`` (values are
    JSON, else strings), e.g. ``surrogate:descent=0``."""
    name, *opts = text.split(":")
    options = {}
    for o in opts:
        key, _, value = o.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


class TableEvaluator(paretoskip.Evaluator):
    """An evaluator whose validation accuracies come from an exhaustive table (test
    accuracies, FLOPs and parameters are computed as usual)."""

    def __init__(self, *args, table: dict[str, float], **kw):
        super().__init__(*args, **kw)
        self.table = table

    def accuracy_many(self, masks, split="val"):
        if split != "val":
            return super().accuracy_many(masks, split)
        return [self.table[self.space.to_bitstring(m)] for m in masks]


def prepare(name: str, data) -> tuple[paretoskip.Evaluator, dict[str, float], dict]:
    """The trained model, its space and the exhaustive accuracy table of space ``name``."""
    model_name, seed, locked, groups = {**SPACES, **HOLDOUTS}[name]
    CACHE.mkdir(parents=True, exist_ok=True)
    ckpt = CACHE / f"digits-{model_name}-sd-seed{seed}"
    if not ckpt.with_suffix(".safetensors").exists():
        print(f"[{name}] training {model_name} (stochastic depth, seed {seed}) on digits ...")
        t0 = time.perf_counter()
        train_and_save(
            model_name,
            data,
            ckpt,
            recipe="stochastic-depth",
            epochs=30,
            batch_size=64,
            seed=seed,
            progress=False,
        )
        print(f"[{name}] trained in {time.perf_counter() - t0:.0f} s (load {os.getloadavg()})")
    model, meta = load_checkpoint(ckpt)
    space = paretoskip.SkipSpace.from_model(model, locked=locked, groups=groups)
    ev = paretoskip.Evaluator(model, data, space=space)
    path = CACHE / f"{name}.npz"
    every = np.array(list(itertools.product((0, 1), repeat=space.n_genes)), dtype=np.uint8)
    acc = np.full(len(every), np.nan)
    info = {"space": space.to_dict(), "model_fingerprint": ev.model_fingerprint}
    seconds = 0.0
    if path.exists():
        z = np.load(path)
        if json.loads(str(z["info"])) == info and len(z["accuracy"]) == len(every):
            acc, seconds = z["accuracy"].copy(), float(z["seconds"])
        else:
            print(f"[{name}] {path} belongs to another model or space: rebuilt")
    todo = np.flatnonzero(np.isnan(acc))
    if len(todo):
        print(f"[{name}] evaluating {len(todo)} of {len(every)} masks exhaustively ...")
        load0 = os.getloadavg()
        for lo in range(0, len(todo), 2048):
            idx = todo[lo : lo + 2048]
            t0 = time.perf_counter()
            acc[idx] = ev.accuracy_many([space.mask_from_genes(g) for g in every[idx]])
            seconds += time.perf_counter() - t0
            np.savez(
                path.with_suffix(".tmp.npz"), accuracy=acc, seconds=seconds, info=json.dumps(info)
            )
            os.replace(path.with_suffix(".tmp.npz"), path)  # progress survives a kill
        print(
            f"[{name}] exhaustive in {seconds:.0f} s (load before {load0}, after {os.getloadavg()})"
        )
    table = {space.mask_from_genes(g).bitstring: float(a) for g, a in zip(every, acc)}
    ev = TableEvaluator(
        model, data, space=space, table=table, model_fingerprint=ev.model_fingerprint
    )
    flops = np.array([ev.costs.flops(space.mask_from_genes(g)) for g in every], dtype=float)
    values = np.stack([acc, flops], axis=1)
    objectives = parse_objectives(["accuracy", "flops"])
    ref = {"accuracy": float(acc[0]), "flops": float(ev.costs.full_flops)}
    front = values[nondominated(values, objectives)]
    desc = {
        "model": f"{model_name} (digits, stochastic depth p_last=0.5, 30 epochs, batch 64, seed {seed})",
        "checkpoint_val_accuracy": meta.get("val_accuracy"),
        "checkpoint_test_accuracy": meta.get("test_accuracy"),
        "genes": space.n_genes,
        "masks": space.size,
        "locked": list(space.locked),
        "groups": [list(g) for g in space.groups],
        "exact": {
            "front_size": len(front),
            "hypervolume": hypervolume(front, objectives, ref),
            "exhaustive_seconds": seconds,
        },
    }
    return ev, {**table, "__flops__": flops, "__ref__": ref}, desc


def run_engine(
    ev, table: dict, engine: str, budget: int, seeds: int, hv_exact: float
) -> tuple[dict[int, list[float]], list[float]]:
    """HV ratios of the first B distinct masks per budget and seed; seconds per run."""
    objectives = parse_objectives(["accuracy", "flops"])
    ref = table["__ref__"]
    per_budget: dict[int, list[float]] = {b: [] for b in BUDGETS if b <= budget}
    secs = []
    name, options = engine_spec(engine)
    for seed in range(seeds):
        t1 = time.perf_counter()
        eng = make_engine(name, seed, **options)
        db = open_study(ev, storage=":memory:", study_name=f"{engine}-{seed}", engine=name)
        search_run(eng, ev, db, budget=budget, progress=False)  # no front file: no test split
        secs.append(time.perf_counter() - t1)
        order = list(
            dict.fromkeys(t.user_attrs["mask"] for t in sorted(db.trials(), key=lambda t: t.number))
        )
        for b in per_budget:
            pts = np.array(
                [(table[m], ev.costs.flops(ev.space.from_bitstring(m))) for m in order[:b]]
            )
            hv = hypervolume(pts[nondominated(pts, objectives)], objectives, ref)
            per_budget[b].append(hv / hv_exact)
    return per_budget, secs


class _TimedEvaluator(paretoskip.Evaluator):
    """An evaluator that adds the CPU seconds of its validation passes to ``eval_cpu`` (all
    threads: torch may use several) and those of the calling thread to ``eval_thread``."""

    eval_cpu = 0.0
    eval_thread = 0.0

    def accuracy_many(self, masks, split="val"):
        t0, c0 = time.process_time(), time.thread_time()
        try:
            return super().accuracy_many(masks, split)
        finally:
            self.eval_cpu += time.process_time() - t0
            self.eval_thread += time.thread_time() - c0


def overhead(study: str, engines: Sequence[str], budget: int, seed: int = 0) -> dict:
    """Engine overhead on a real-data study: each engine searches ``budget`` distinct masks
    with a real evaluator (no cache, in-memory study, the study's measurement settings).
    Everything but evaluation (engine, study database, exact costs) runs on the calling
    thread: its CPU seconds outside the evaluator's validation passes, against the CPU
    seconds of those passes (all threads), in one process."""
    from paretoskip.pipeline import StudyPipeline

    pipe = StudyPipeline.from_file(study)
    model, meta = pipe.model(train_if_missing=False)
    # the study's space and settings, but no evaluation cache (nor its database file)
    space = paretoskip.SkipSpace.from_model(model, pipe.cfg.space.locked, pipe.cfg.space.groups)
    out = {"study": study, "budget": budget, "seed": seed, "val_images": len(pipe.data().val.y)}
    for engine in engines:
        ev = _TimedEvaluator(
            model,
            pipe.data(),
            space=space,
            settings=pipe.cfg.measure.settings(),
            model_fingerprint=meta["weights_fingerprint"],
        )
        db = open_study(ev, storage=":memory:", study_name=f"overhead-{engine}", engine=engine)
        ev.eval_cpu = ev.eval_thread = 0.0  # the reference evaluation of open_study is not counted
        load0 = os.getloadavg()
        t0, c0 = time.process_time(), time.thread_time()
        search_run(make_engine(engine, seed), ev, db, budget=budget, progress=False)
        total = time.process_time() - t0
        rest = time.thread_time() - c0 - ev.eval_thread
        out[engine] = {
            "cpu_seconds": total,
            "evaluation_cpu_seconds": ev.eval_cpu,
            "engine_cpu_seconds": rest,
            "evaluation_threads": ev.settings.threads or torch.get_num_threads(),
            "overhead_vs_evaluation": rest / ev.eval_cpu,
            "evaluation_cpu_per_mask": ev.eval_cpu / budget,
            "load_average": [round(x, 2) for x in load0],
        }
        print(
            f"[overhead] {engine:12s} evaluation {ev.eval_cpu:.1f} s, rest {rest:.1f} s "
            f"({100 * rest / ev.eval_cpu:.1f} %), load {load0[0]:.1f}"
        )
    return out


def holdouts(data, engines: Sequence[str], budget: int, seeds: int) -> dict:
    """Each engine on every holdout space: HV ratio per budget (mean over seeds), and per
    budget the mean and the minimum over the spaces."""
    out: dict = {"budget": budget, "seeds": seeds, "spaces": {}, "summary": {}}
    for name in HOLDOUTS:
        ev, table, desc = prepare(name, data)
        row = out["spaces"][name] = {**desc, "engines": {}}
        for engine in engines:
            load0 = os.getloadavg()
            per_budget, secs = run_engine(
                ev, table, engine, budget, seeds, desc["exact"]["hypervolume"]
            )
            row["engines"][engine] = {
                "hv_ratio": {str(b): statistics.mean(v) for b, v in per_budget.items()},
                "hv_ratio_min_over_seeds": {str(b): min(v) for b, v in per_budget.items()},
                "seconds_per_run": statistics.mean(secs),
                "load_average": [round(x, 2) for x in load0],
            }
            text = "  ".join(f"{b}:{statistics.mean(v):.4f}" for b, v in per_budget.items())
            print(f"[{name}] {engine:22s} {text}   (load {load0[0]:.1f})")
    for engine in engines:
        cells = {}
        for b in [b for b in BUDGETS if b <= budget]:
            v = [sp["engines"][engine]["hv_ratio"][str(b)] for sp in out["spaces"].values()]
            cells[str(b)] = {"mean": statistics.mean(v), "min": min(v)}
        out["summary"][engine] = cells
        text = "  ".join(f"{b}: {c['mean']:.4f} (min {c['min']:.4f})" for b, c in cells.items())
        print(f"[holdouts] {engine:22s} {text}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--engines", default=",".join(e for e in ENGINES if e != "exhaustive"))
    ap.add_argument("--spaces", default=",".join(SPACES))
    ap.add_argument("--gp-budget", type=int, default=64, help="GP is slow: its budget (default 64)")
    ap.add_argument("--max-budget", type=int, default=max(BUDGETS))
    ap.add_argument("--prepare-only", action="store_true", help="train and tabulate, no search")
    ap.add_argument("--out", default=str(HERE / "results" / "search_quality.json"))
    ap.add_argument("--plot", default="plots/search_quality")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--overhead-study",
        help="also measure each engine's overhead against the evaluation time of this "
        "real-data study (its checkpoint must exist), e.g. studies/fashion-mnist-20k-resnet32.toml",
    )
    ap.add_argument(
        "--holdouts",
        action="store_true",
        help=f"also run --holdout-engines on the holdout spaces ({', '.join(HOLDOUTS)})",
    )
    ap.add_argument(
        "--holdout-engines",
        default="surrogate,surrogate:descent=0,pymoo-nsga2",
        help="engines for --holdouts, each 'name' or 'name:key=value' (default %(default)s)",
    )
    ap.add_argument("--holdout-budget", type=int, default=256)
    ap.add_argument("--overhead-budget", type=int, default=128)
    ap.add_argument("--overhead-engines", default="surrogate,pymoo-nsga2")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("paretoskip").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    data = load_dataset("digits", seed=0)

    out = Path(args.out)
    results = {"budgets": [b for b in BUDGETS if b <= args.max_budget], "spaces": {}}
    if out.exists():  # keep the rows of engines / spaces not run this time
        old = json.loads(out.read_text())
        for key in ("spaces", "overhead", "holdouts"):
            if key in old:
                results[key] = old[key]
    for name in [s.strip() for s in args.spaces.split(",") if s.strip()]:
        ev, table, desc = prepare(name, data)
        print(
            f"[{name}] {desc['masks']} masks, exact front {desc['exact']['front_size']} points, "
            f"HV {desc['exact']['hypervolume']:.5f}"
        )
        if args.prepare_only:
            continue
        row = results["spaces"].setdefault(name, {})
        row.update({k: v for k, v in desc.items()})
        engines = row.setdefault("engines", {})
        for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
            budget = args.gp_budget if engine == "gp" else args.max_budget
            load0 = os.getloadavg()
            per_budget, secs = run_engine(
                ev, table, engine, budget, args.seeds, desc["exact"]["hypervolume"]
            )
            cells = {
                str(b): {
                    "mean": statistics.mean(v),
                    "std": statistics.pstdev(v),
                    "min": min(v),
                    "runs": v,
                }
                for b, v in per_budget.items()
            }
            engines[engine] = {
                "hv_ratio": cells,
                "seconds_per_run": statistics.mean(secs),
                "budget": budget,
                "load_average": [round(x, 2) for x in load0],
            }
            text = "  ".join(f"{b}:{c['mean']:.4f}" for b, c in cells.items())
            print(
                f"[{name}] {engine:14s} {text}   ({statistics.mean(secs):.1f} s/run, load {load0[0]:.1f})"
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
    if args.holdouts:
        results["holdouts"] = holdouts(
            data,
            [e.strip() for e in args.holdout_engines.split(",") if e.strip()],
            args.holdout_budget,
            args.seeds,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    if args.overhead_study:
        engines = [e.strip() for e in args.overhead_engines.split(",") if e.strip()]
        got = overhead(args.overhead_study, engines, args.overhead_budget)
        if results.get("overhead", {}).get("study") != got["study"]:
            results["overhead"] = {}
        results["overhead"].update(got)  # the engines not run this time keep their rows
        out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.prepare_only:
        print(f"wrote {out}")
        if results["spaces"]:
            _plot(results, Path(args.plot))


def _plot(results: dict, base: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spaces = list(results["spaces"].items())
    fig, axes = plt.subplots(
        1, len(spaces), figsize=(6.0 * len(spaces), 4.2), layout="constrained", squeeze=False
    )
    for ax, (name, sp) in zip(axes[0], spaces):
        markers = itertools.cycle("osD^v<>PX*h")
        colours = itertools.cycle(
            plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2]
        )
        for engine, row in sp["engines"].items():
            bs = [int(b) for b in row["hv_ratio"]]
            mean = np.array([row["hv_ratio"][str(b)]["mean"] for b in bs])
            std = np.array([row["hv_ratio"][str(b)]["std"] for b in bs])
            lw = 2.4 if engine in ("surrogate", "pymoo-nsga2") else 1.2
            ax.errorbar(
                bs,
                mean,
                yerr=std,
                marker=next(markers),
                color=next(colours),
                lw=lw,
                capsize=3,
                label=engine,
            )
        ax.axhline(0.99, color="0.5", ls="--", lw=0.8, label="goal 0.99 (at 128)")
        ax.axhline(0.995, color="0.5", ls=":", lw=0.8, label="goal 0.995 (at 256)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(BUDGETS), [str(b) for b in BUDGETS])
        ax.set_ylim(0.85, 1.002)
        ax.set_xlabel("evaluations (distinct masks)")
        ax.set_ylabel("HV found / HV of the exact front\n(mean ± std over seeds)")
        ax.set_title(f"{name}: {sp['masks']:,} masks")
        ax.legend(fontsize=8, ncol=2, loc="lower right")
        ax.grid(alpha=0.3)
    base.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(base.with_suffix(f".{ext}"), dpi=200)
    plt.close(fig)
    print(f"wrote {base}.png/.pdf")


if __name__ == "__main__":
    main()
