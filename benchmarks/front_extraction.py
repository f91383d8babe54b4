"""Front extraction from a large study: Front.from_study against study.best_trials.

Builds a SQLite study of 20,000 trials with three objectives (accuracy, flops, latency),
then times, in one run, paretoskip's extraction (trials read without deep copies,
non-dominance and hypervolume by moocore) and Optuna's ``study.best_trials`` (which
deep-copies every trial).  Writes benchmarks/results/front_extraction.json.

    python benchmarks/front_extraction.py [--trials 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution

from paretoskip.front import Front
from paretoskip.study import StudyDB


def build(storage: str, n: int, units: int = 16) -> StudyDB:
    rng = np.random.default_rng(0)
    objectives = [
        {"name": "accuracy", "direction": "maximize", "unit": "fraction"},
        {"name": "flops", "direction": "minimize", "unit": "FLOPs"},
        {"name": "latency", "direction": "minimize", "unit": "s"},
    ]
    meta = {
        "schema_version": 1,
        "space": {
            "units": [f"layer{i // 9 + 1}.{i % 9}" for i in range(units)],
            "locked": [],
            "groups": [],
        },
        "objectives": objectives,
        "constraints": [],
    }
    db = StudyDB.open(storage, "big", meta=meta)
    metric = lambda v, u: {"value": float(v), "unit": u, "source": "synthetic", "spread": None}  # noqa: E731
    db.study.set_user_attr(
        "paretoskip.reference",
        {
            "mask": "0" * units,
            "metrics": {
                "accuracy": metric(0.95, "fraction"),
                "flops": metric(1.0, "FLOPs"),
                "latency": metric(1.0, "s"),
            },
        },
    )
    dist = {f"skip.{u}": CategoricalDistribution((0, 1)) for u in meta["space"]["units"]}
    # distinct masks (the front is a set of masks; Optuna's best_trials is a set of trials)
    codes = rng.choice(2**units, size=n, replace=False)
    masks = (codes[:, None] >> np.arange(units)[::-1]) & 1
    cost = 1 - masks.mean(1)
    acc = np.clip(0.95 * cost**0.3 + rng.normal(0, 0.02, n), 0, 1)
    lat = cost * rng.uniform(0.9, 1.1, n)
    trials = []
    for k in range(n):
        bits = "".join(map(str, masks[k]))
        trials.append(
            optuna.trial.create_trial(
                params=dict(zip(dist, map(int, masks[k]))),
                distributions=dist,
                values=[float(acc[k]), float(cost[k]), float(lat[k])],
                user_attrs={
                    "mask": bits,
                    "metrics": {
                        "accuracy": metric(acc[k], "fraction"),
                        "flops": metric(cost[k], "FLOPs"),
                        "latency": metric(lat[k], "s"),
                    },
                },
            )
        )
    db.study.add_trials(trials)
    return db


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "front_extraction.json")
    )
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build(f"{tmp}/big.db", args.trials)
        built = time.perf_counter() - t0
        ours, theirs = [], []
        for _ in range(args.repeats):
            db = StudyDB.load(f"{tmp}/big.db", "big")  # a fresh handle: nothing cached in memory
            t0 = time.perf_counter()
            front = Front.from_study(db, epsilon={"accuracy": 0, "flops": 0, "latency": 0})
            ours.append(time.perf_counter() - t0)
            db = StudyDB.load(f"{tmp}/big.db", "big")
            t0 = time.perf_counter()
            best = db.study.best_trials
            theirs.append(time.perf_counter() - t0)
        assert {t.user_attrs["mask"] for t in best} == {m["mask"] for m in front.members}
    result = {
        "trials": args.trials,
        "objectives": 3,
        "storage": "sqlite",
        "build_seconds": built,
        "front_size": len(front.members),
        "front_from_study_seconds": {"median": statistics.median(ours), "runs": ours},
        "optuna_best_trials_seconds": {"median": statistics.median(theirs), "runs": theirs},
        "speedup": statistics.median(theirs) / statistics.median(ours),
    }
    print(
        f"{args.trials} trials, front of {len(front.members)}: Front.from_study {statistics.median(ours):.3f} s "
        f"(median of {args.repeats}), study.best_trials {statistics.median(theirs):.3f} s, x{result['speedup']:.1f}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
