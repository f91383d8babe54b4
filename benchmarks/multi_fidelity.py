"""Multi-fidelity evaluation: image-evaluations and final hypervolume with and without it.

The same search (engine, seed, budget) of a real-data study runs twice per seed, once with
``fidelity="full"`` and once with ``fidelity="multi"`` (interleaved, each with a fresh
evaluation cache and a study in a temporary file, so neither gets the other's results).  For each it
records the image-evaluations of the search (validation images × masks measured; the full
model's reference evaluation, the same in both, is not included), the hypervolume of the
final front (full-split trials only, the front file's normalisation), the front's strict
members, CPU seconds and the load average.  Every accuracy of a multi-fidelity front member
is checked against a plain full-split evaluation (``Evaluator.naive_accuracy``).

Each run also keeps its trajectory (image-evaluations and hypervolume after each trial), so
the image-evaluations each search had spent when it first reached 0.995 of the full search's
final hypervolume are reported too; ``--multi-budget`` lets the multi-fidelity search
propose more candidates than the full one.

    python benchmarks/multi_fidelity.py [--study studies/digits-resnet20.toml]
        [--seeds 0,1,2] [--budget N] [--multi-budget N] [--screen-fraction 0.8]
        [--screen-k 2] [--screen-rungs 5] [--engine NAME] [--check-drops]
        [--full-from RESULT[,RESULT...]]
        [--out benchmarks/results/multi_fidelity.json]

The study's checkpoint must exist (``paretoskip train STUDY`` makes it).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import torch

import paretoskip
from paretoskip.cache import EvalCache
from paretoskip.checkpoint import weights_fingerprint
from paretoskip.config import load_study_config
from paretoskip.pipeline import StudyPipeline
from paretoskip.search import Fidelity

HERE = Path(__file__).parent
#: the hypervolume a multi-fidelity search must reach, as a share of the full search's
TARGET = 0.995


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def run_one(pipe: StudyPipeline, *, fidelity: str, seed: int, budget: int, args, tmp: str):
    cfg = pipe.cfg
    ev = pipe.evaluator(train_if_missing=False, progress=False)
    ev.cache = EvalCache(f"sqlite:///{tmp}/cache-{fidelity}-{seed}-{time.time_ns()}.db")
    extra = {}
    if fidelity == "multi":
        extra = {
            "screen_fraction": args.screen_fraction,
            "screen_k": args.screen_k,
            "screen_rungs": args.screen_rungs,
        }
    storage = f"{tmp}/study-{fidelity}-{seed}-{time.time_ns()}.db"
    load0, c0, w0 = _load(), time.process_time(), time.perf_counter()
    front = paretoskip.search(
        ev,
        objectives=tuple(cfg.search.objectives),
        constraints=tuple(cfg.search.constraints),
        engine=args.engine,
        engine_options=args.engine_options,
        budget=budget,
        seed=seed,
        storage=storage,
        study_name=f"{cfg.name}-{fidelity}-{seed}",
        progress=False,
        fidelity=fidelity,
        **extra,
    )
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    run = front.data["study"]["run"]
    members = front.strict_members()
    checked = mismatches = 0
    drops = None
    if fidelity == "multi":
        for m in members:
            checked += 1
            if ev.naive_accuracy(m["mask"]) != m["metrics"]["accuracy"]["value"]:
                mismatches += 1
        if args.check_drops:
            drops = check_drops(ev, storage, front.data["study"]["name"])
    trajectory = anytime(storage, front.data["study"]["name"], run)
    return {
        "fidelity": fidelity,
        "seed": seed,
        "budget": budget,
        "image_evaluations": run["image_evaluations"],
        "hypervolume": front.hypervolume,
        "strict_front": sorted(m["mask"] for m in members),
        "front_accuracy_checked": checked,
        "front_accuracy_mismatches": mismatches,
        "dropped_check": drops,
        "trajectory": trajectory,
        "run": run,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "loadavg_before": load0,
        "loadavg_after": _load(),
    }


def anytime(storage: str, name: str, run: dict) -> dict:
    """The search as it went: after each trial (in the order they were recorded) the
    image-evaluations spent so far and the hypervolume of the whole-split points so far.

    A whole-split trial costs the validation split (a promoted candidate's screening images
    included), a dropped one the images of the subset it was dropped on; the reference
    costs nothing (as in the run's count) and the front points measured once on the subsets
    to pair with are counted at the start.  The last entry is the run's own count."""
    import numpy as np

    from paretoskip.front import hypervolume
    from paretoskip.study import StudyDB

    db = StudyDB.load(storage, name)
    objectives, reference = db.objectives, db.reference_values()
    n_val = run["validation_images"]
    spent = run.get("pairing_evaluations", 0) * (run.get("screen_images") or 0)
    images, hv, points, seen = [], [], [], set()
    for r in sorted(db.records(states=None), key=lambda r: r.number):
        if r.mask is None or not (r.completed or r.screened):
            continue
        if r.engine != "reference" and r.mask not in seen:  # a mask again: a cache hit
            spent += r.fidelity_images if r.screened else n_val
        seen.add(r.mask)
        if r.completed and r.feasible and r.values:
            points.append(r.values)
        images.append(spent)
        hv.append(hypervolume(np.array(points, dtype=float), objectives, reference))
    assert spent == run["image_evaluations"], (spent, run["image_evaluations"])
    return {"image_evaluations": images, "hypervolume": hv}


def reused_full_runs(
    path: str, args, budget: int, seeds: list[int], ev, fingerprint: str
) -> dict[int, dict]:
    """The whole-split runs of an earlier result of this benchmark, by seed: a search
    without screening does not depend on the screening options, and its image-evaluations
    and front are deterministic, so only its CPU times are of another run.  Refused unless
    the study, engine and budget are the same, and the checkpoint too: its fingerprint
    where the result records one, and in any case each run's strict front measured again
    with this checkpoint must give the hypervolume the result records (a retrained model
    that differs fails it)."""
    import numpy as np

    from paretoskip.front import hypervolume
    from paretoskip.metrics import parse_objectives

    got, source = {}, {}
    for one in path.split(","):  # several result files: the first that has a seed gives it
        old = json.loads(Path(one).read_text())
        same = (old["study"], old["engine"], old["engine_options"], old["budget"])
        if same != (args.study, args.engine, args.engine_options, budget):
            raise SystemExit(f"{one}: another study, engine or budget ({same})")
        if old.get("checkpoint_fingerprint", fingerprint) != fingerprint:
            raise SystemExit(f"{one}: measured with another checkpoint than {args.study}'s")
        for r in old["runs"]:
            if r["fidelity"] == "full" and r["seed"] in seeds and r["seed"] not in got:
                got[r["seed"]], source[r["seed"]] = r, one
    if set(got) != set(seeds):
        raise SystemExit(f"{path}: no whole-split run for seeds {sorted(set(seeds) - set(got))}")
    objectives = parse_objectives(old["objectives"])
    (full,) = ev.evaluate_many([ev.space.full])
    reference = {k: m.value for k, m in full.metrics.items()}
    for seed, r in got.items():
        evs = ev.evaluate_many(r["strict_front"])
        values = np.array([[e[o.name] for o in objectives] for e in evs], dtype=float)
        hv = hypervolume(values, objectives, reference)
        if not math.isclose(hv, r["hypervolume"], rel_tol=1e-9):
            raise SystemExit(
                f"{path}: seed {seed}'s front measured again gives HV {hv!r}, the result "
                f"{r['hypervolume']!r}: measured with another checkpoint than {args.study}'s"
            )
    return {seed: dict(r, reused_from=source[seed]) for seed, r in got.items()}


def first_reaching(trajectory: dict, target: float) -> int | None:
    """The image-evaluations a search had spent when its hypervolume first reached
    ``target`` (None: it never did)."""
    for images, hv in zip(trajectory["image_evaluations"], trajectory["hypervolume"]):
        if hv >= target:
            return images
    return None


def check_drops(ev, storage: str, name: str) -> dict:
    """Evaluate every dropped candidate on the whole split (after the search, not counted)
    and say what screening cost: the dropped ones that would have been strict front members,
    and the hypervolume of the search's whole-split points with and without them."""
    import numpy as np

    from paretoskip.front import hypervolume, nondominated
    from paretoskip.study import StudyDB

    db = StudyDB.load(storage, name)
    objectives, reference = db.objectives, db.reference_values()
    kept = [r.values for r in db.records() if r.feasible and r.values]
    dropped = [r.mask for r in db.records(states=None) if r.screened]
    true = [db.values_of(e) for e in ev.evaluate_many(dropped)]
    both = np.array(kept + true, dtype=float)
    strict = nondominated(both, objectives)[len(kept) :]
    hv_kept = hypervolume(np.array(kept, dtype=float), objectives, reference)
    hv_both = hypervolume(both, objectives, reference)
    return {
        "dropped": len(dropped),
        "would_be_strict_members": int(sum(strict)),
        "hypervolume_without_them": hv_kept,
        "hypervolume_with_them": hv_both,
        "hypervolume_lost_ratio": hv_kept / hv_both if hv_both else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="studies/digits-resnet20.toml")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget", type=int, default=None, help="default: the study's")
    p.add_argument(
        "--multi-budget",
        type=int,
        default=None,
        help="candidates of the multi-fidelity search (default: --budget); the trajectory "
        "says when it first reached each full search's final hypervolume",
    )
    defaults = Fidelity("multi")
    p.add_argument("--screen-fraction", type=float, default=defaults.screen_fraction)
    p.add_argument("--screen-k", type=float, default=defaults.screen_k)
    p.add_argument("--screen-rungs", type=int, default=defaults.screen_rungs)
    p.add_argument("--engine", default=None, help="default: the study's")
    p.add_argument(
        "--check-drops",
        action="store_true",
        help="after each multi-fidelity search, evaluate its dropped candidates on the whole "
        "split (not counted) to measure what screening lost",
    )
    p.add_argument(
        "--full-from",
        metavar="RESULT",
        help="take the searches without screening from earlier result files of this "
        "benchmark (comma-separated; same study, engine, budget; deterministic but for CPU "
        "times) instead of running them again",
    )
    p.add_argument("--out", default=str(HERE / "results" / "multi_fidelity.json"))
    args = p.parse_args()
    logging.getLogger("paretoskip").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    cfg = load_study_config(args.study)
    pipe = StudyPipeline(cfg)
    if pipe.needs_training():
        raise SystemExit(f"no checkpoint for {args.study}: run `paretoskip train {args.study}`")
    budget = args.budget or cfg.search.budget or 200
    multi_budget = args.multi_budget or budget
    # the study's engine settings go with the study's engine only
    if args.engine in (None, cfg.search.engine):
        args.engine, args.engine_options = cfg.search.engine, dict(cfg.search.options)
    else:
        args.engine_options = {}
    seeds = [int(s) for s in args.seeds.split(",")]
    runs, reused = [], {}
    ev = pipe.evaluator(train_if_missing=False, progress=False)
    fingerprint = weights_fingerprint(ev.model)
    if args.full_from:
        reused = reused_full_runs(args.full_from, args, budget, seeds, ev, fingerprint)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for fidelity in ("full", "multi"):
                if fidelity == "full" and seed in reused:
                    runs.append(reused[seed])
                    continue
                b = multi_budget if fidelity == "multi" else budget
                r = run_one(pipe, fidelity=fidelity, seed=seed, budget=b, args=args, tmp=tmp)
                runs.append(r)
                print(
                    f"seed {seed} {fidelity:5s}: {r['image_evaluations']:8d} image-evaluations, "
                    f"HV {r['hypervolume']:.5f}, {len(r['strict_front'])} strict members, "
                    f"cpu {r['cpu_seconds']:.1f} s, load {r['loadavg_after']}",
                    flush=True,
                )
    pairs = []
    for seed in seeds:
        full = next(r for r in runs if r["seed"] == seed and r["fidelity"] == "full")
        multi = next(r for r in runs if r["seed"] == seed and r["fidelity"] == "multi")
        target = TARGET * full["hypervolume"]
        full_at = first_reaching(full["trajectory"], target)
        multi_at = first_reaching(multi["trajectory"], target)
        pairs.append(
            {
                "seed": seed,
                "image_evaluation_ratio": full["image_evaluations"] / multi["image_evaluations"],
                "hypervolume_ratio": multi["hypervolume"] / full["hypervolume"],
                "same_strict_front": full["strict_front"] == multi["strict_front"],
                "cpu_ratio": full["cpu_seconds"] / multi["cpu_seconds"],
                # the image-evaluations each first had a front of >= TARGET x the full
                # search's final hypervolume
                "target_hypervolume": target,
                "full_images_to_target": full_at,
                "multi_images_to_target": multi_at,
                "image_ratio_at_target": full["image_evaluations"] / multi_at if multi_at else None,
                "image_ratio_both_stopped_at_target": full_at / multi_at if multi_at else None,
                # the most screening could save with these promotions: every candidate
                # finished on the whole split costs it, a dropped one nothing
                "image_ratio_if_drops_were_free": full["image_evaluations"]
                / (multi["run"]["promoted"] * multi["run"]["validation_images"]),
            }
        )
    result = {
        "study": args.study,
        "checkpoint_fingerprint": fingerprint,
        "engine": args.engine,
        "engine_options": args.engine_options,
        "objectives": list(cfg.search.objectives),
        "budget": budget,
        "multi_budget": multi_budget,
        "target": TARGET,
        "seeds": seeds,
        "validation_images": len(ev.data.val.y),
        "screen_fraction": args.screen_fraction,
        "screen_k": args.screen_k,
        "screen_rungs": args.screen_rungs,
        "image_evaluation": "validation images x masks measured (cache hits cost none); the "
        "full model's reference evaluation, the same in both modes, is not included",
        "pairs": pairs,
        "summary": {
            "image_evaluation_ratio_mean": statistics.mean(
                q["image_evaluation_ratio"] for q in pairs
            ),
            "image_evaluation_ratio_min": min(q["image_evaluation_ratio"] for q in pairs),
            "hypervolume_ratio_mean": statistics.mean(q["hypervolume_ratio"] for q in pairs),
            "hypervolume_ratio_min": min(q["hypervolume_ratio"] for q in pairs),
            "same_strict_front": sum(q["same_strict_front"] for q in pairs),
            "image_ratio_at_target": [q["image_ratio_at_target"] for q in pairs],
            "image_ratio_both_stopped_at_target": [
                q["image_ratio_both_stopped_at_target"] for q in pairs
            ],
            "front_accuracy_mismatches": sum(r["front_accuracy_mismatches"] for r in runs),
        },
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # lists of numbers (the trajectories, masks' accuracies) on one line each
    text = re.sub(
        r"\[\s+([-+0-9.eE,\s]+?)\s+\]",
        lambda m: "[" + " ".join(m.group(1).split()) + "]",
        json.dumps(result, indent=2),
    )
    out.write_text(text + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
