"""Front extraction from a large SQLite study: one SQL read against Optuna's trial objects.

Builds a SQLite study of 20,000 trials with three objectives (accuracy, flops, latency) in
the study schema paretoskip writes (``StudyDB.frozen_trial`` makes every trial; the rows
are then inserted in one transaction so that building takes seconds, not minutes), then
times on a fresh handle each time (opening included):

* ``Front.from_study(StudyDB.read(path))``: the read-only snapshot (the standard library's
  sqlite3, no Optuna storage, SQLAlchemy or alembic; one SQL query of values, masks, spreads
  and constraints, then moocore; only the members are decoded): what ``paretoskip front
  x.db`` does,
* ``Front.from_study(StudyDB.load(path))``: the same query through Optuna's RDBStorage
  (its engine, schema and alembic checks),
* ``Front.from_study(use_sql=False)`` (every trial read as an Optuna trial without deep
  copies and decoded: what extraction did before, and what non-SQL storages still do),
* Optuna's ``study.best_trials`` (deep-copies every trial),
* ``paretoskip front study.db`` as a subprocess, end to end.

It checks that every extraction path gives the same members, reports wall and CPU seconds
(medians of the repeats; the subprocess's own CPU for the command line) against the goals
(extraction < 0.5 s, the command < 2 s end to end) with the load average before and after,
and writes benchmarks/results/front_extraction.json.  Under load, wall seconds measure the
machine's other work too: the CPU seconds are this program's own.

    python benchmarks/front_extraction.py [--trials 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, distribution_to_json

from paretoskip.evaluate import Evaluation, Metric
from paretoskip.front import Front
from paretoskip.study import SCHEMA_VERSION, StudyDB, trial_id


def build(path: str, n: int, units: int = 16) -> None:
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    rng = np.random.default_rng(0)
    names = [f"layer{i // 9 + 1}.{i % 9}" for i in range(units)]
    meta = {
        "schema_version": SCHEMA_VERSION,
        "space": {"units": names, "locked": [], "groups": []},
        "objectives": [
            {"name": "accuracy", "direction": "maximize", "unit": "fraction"},
            {"name": "flops", "direction": "minimize", "unit": "FLOPs"},
            {"name": "latency", "direction": "minimize", "unit": "s"},
        ],
        "constraints": ["latency <= 0.95 * full"],
    }
    db = StudyDB.open(path, "big", meta=meta)

    def evaluation(bits: str, acc: float, flops: float, lat: float) -> Evaluation:
        return Evaluation(
            bits,
            tuple(u for u, c in zip(names, bits) if c == "1"),
            {
                "accuracy": Metric(acc, "fraction", "measured:validation", 0.004),
                "flops": Metric(flops, "FLOPs", "counted:flop-counter"),
                "latency": Metric(lat, "s", "measured:cpu", lat * 0.02),
            },
        )

    full = evaluation("0" * units, 0.95, 1.0e8, 1.0)
    db.set_reference(full)
    reference = db.reference_values()
    db.record(full, reference, engine="reference")
    # distinct masks (the front is a set of masks; Optuna's best_trials is a set of trials)
    codes = rng.choice(np.arange(1, 2**units), size=n - 1, replace=False)
    masks = (codes[:, None] >> np.arange(units)[::-1]) & 1
    cost = 1 - masks.mean(1)
    acc = np.clip(0.95 * cost**0.3 + rng.normal(0, 0.02, n - 1), 0, 1)
    lat = cost * rng.uniform(0.9, 1.1, n - 1)
    frozen = [
        db.frozen_trial(
            evaluation(
                "".join(map(str, masks[k])), float(acc[k]), float(cost[k] * 1e8), float(lat[k])
            ),
            reference,
            engine="random",
        )
        for k in range(n - 1)
    ]
    first = max(trial_id(t) for t in db.trials()) + 1
    number = len(db.trials())
    dist = {p: distribution_to_json(CategoricalDistribution((0, 1))) for p in db.space.param_names}
    rows: dict[str, list[dict]] = {"t": [], "p": [], "v": [], "u": [], "s": []}
    now = db.trials()[0].datetime_start
    for k, t in enumerate(frozen):
        tid = first + k
        rows["t"].append(
            {
                "trial_id": tid,
                "number": number + k,
                "study_id": db.study._study_id,
                "state": "COMPLETE",
                "datetime_start": now,
                "datetime_complete": now,
            }
        )
        rows["p"] += [
            {
                "trial_id": tid,
                "param_name": p,
                "param_value": float(v),
                "distribution_json": dist[p],
            }
            for p, v in t.params.items()
        ]
        rows["v"] += [
            {"trial_id": tid, "objective": j, "value": v, "value_type": "FINITE"}
            for j, v in enumerate(t.values)
        ]
        rows["u"] += [
            {"trial_id": tid, "key": key, "value_json": json.dumps(v)}
            for key, v in t.user_attrs.items()
        ]
        rows["s"] += [
            {"trial_id": tid, "key": key, "value_json": json.dumps(v)}
            for key, v in t.system_attrs.items()
        ]
    tables = {
        "t": models.TrialModel.__table__,
        "p": models.TrialParamModel.__table__,
        "v": models.TrialValueModel.__table__,
        "u": models.TrialUserAttributeModel.__table__,
        "s": models.TrialSystemAttributeModel.__table__,
    }
    with db.storage.engine.begin() as conn:
        for key in "tpvus":
            if rows[key]:
                conn.execute(sa.insert(tables[key]), rows[key])


GOALS = {"front_from_study_seconds": 0.5, "cli_front_seconds": 2.0}


def fresh_front(path: str, opener=StudyDB.read, **kwargs) -> tuple[float, float, Front]:
    """Wall and CPU seconds of one extraction on a fresh handle, and the front."""
    start, cpu = time.perf_counter(), time.process_time()
    front = Front.from_study(opener(path), **kwargs)
    return time.perf_counter() - start, time.process_time() - cpu, front


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slow-repeats", type=int, default=1, help="runs of the slow paths")
    ap.add_argument("--out", default="benchmarks/results/front_extraction.json")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "big.db")
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    build(path, args.trials)
    build_s = time.perf_counter() - t0

    fast, loaded = [], []
    for _ in range(args.repeats):  # interleaved: both see the same load
        fast.append(fresh_front(path))
        loaded.append(fresh_front(path, StudyDB.load))
    slow = [fresh_front(path, StudyDB.load, use_sql=False) for _ in range(args.slow_repeats)]
    same = all(f.members == slow[0][2].members for _, _, f in [*fast, *loaded])
    best = []
    for _ in range(args.slow_repeats):
        start, cpu = time.perf_counter(), time.process_time()
        study = optuna.load_study(study_name="big", storage=f"sqlite:///{path}")
        n_best = len(study.best_trials)
        best.append((time.perf_counter() - start, time.process_time() - cpu))
    cli = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(args.repeats):
        start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            [sys.executable, "-m", "paretoskip", "front", path],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        cli.append((time.perf_counter() - start, cpu))
    front = fast[0][2]

    def summary(runs, goal=None):
        wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
        out = {
            "wall_median": statistics.median(wall),
            "cpu_median": statistics.median(cpu),
            "wall": wall,
            "cpu": cpu,
        }
        if goal is not None:
            out["goal_seconds"] = goal
            out["goal_met_wall"] = out["wall_median"] < goal
            out["goal_met_cpu"] = out["cpu_median"] < goal
        return out

    result = {
        "command": "python " + " ".join(sys.argv),
        "trials": args.trials,
        "objectives": 3,
        "constraints": front.data["study"]["constraints"],
        "storage": "sqlite",
        "study_schema": SCHEMA_VERSION,
        "build_seconds": build_s,
        "front_size": len(front.members),
        "strict_members": len(front.strict_members()),
        "feasible": front.data["study"]["feasible"],
        "same_members_snapshot_sql_and_optuna": same,
        "front_from_study_seconds": summary(
            [(w, c) for w, c, _ in fast], GOALS["front_from_study_seconds"]
        ),
        "front_from_study_rdbstorage_seconds": summary([(w, c) for w, c, _ in loaded]),
        "front_from_study_optuna_objects_seconds": summary([(w, c) for w, c, _ in slow]),
        "optuna_best_trials_seconds": summary(best),
        "optuna_best_trials_size": n_best,
        "cli_front_seconds": summary(cli, GOALS["cli_front_seconds"]),
        "cli_front_output_lines": len(done.stdout.splitlines()),
        "cpu_speedup_vs_optuna_objects": statistics.median(c for _, c, _ in slow)
        / statistics.median(c for _, c, _ in fast),
        "note": "front_from_study_seconds: StudyDB.read (sqlite3 snapshot), what `paretoskip "
        "front x.db` uses; wall seconds depend on what else runs (see the load averages); CPU "
        "seconds are this process's (or the subprocess's) own",
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"study kept at {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
