"""The study database: what Optuna's tools see, the one-SQL objective table, schema 1 studies."""

from __future__ import annotations

import json
import math
import os
import uuid

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from paretoskip.errors import ConfigError, StudyMismatchError
from paretoskip.evaluate import Evaluation, Metric
from paretoskip.front import Front, nondominated
from paretoskip.study import StudyDB

UNITS = [f"layer{i // 4 + 1}.{i % 4}" for i in range(10)]
OBJECTIVES = [
    {"name": "accuracy", "direction": "maximize", "unit": "fraction"},
    {"name": "flops", "direction": "minimize", "unit": "FLOPs"},
]


def meta(schema: int = 2, constraints=()):
    return {
        "schema_version": schema,
        "space": {"units": list(UNITS), "locked": [], "groups": []},
        "objectives": [dict(o) for o in OBJECTIVES],
        "constraints": list(constraints),
        "model_fingerprint": "abc",
    }


def evaluation(mask: str, acc: float, flops: float, spread: float | None = 0.01) -> Evaluation:
    return Evaluation(
        mask,
        tuple(u for u, c in zip(UNITS, mask) if c == "1"),
        {
            "accuracy": Metric(acc, "fraction", "measured:validation", spread),
            "flops": Metric(flops, "FLOPs", "counted:flop-counter", None),
        },
    )


def synthetic(n: int, seed: int = 0):
    """n evaluations over the 10-unit space: repeated masks, spreads, accuracies with ties."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2 ** len(UNITS), size=n)
    out = []
    for k, code in enumerate(codes):
        mask = format(int(code), f"0{len(UNITS)}b")
        cost = 1.0 - mask.count("1") / len(UNITS) * 0.8
        acc = round(float(np.clip(0.9 * cost**0.3 + rng.normal(0, 0.03), 0, 1)), 3)
        spread = None if k % 7 == 0 else float(rng.uniform(0.001, 0.02))
        out.append(evaluation(mask, acc, cost * 1e6, spread))
    return out


def fill(db: StudyDB, evs, reference) -> None:
    db.set_reference(reference)
    db.record(reference, db.reference_values(), engine="reference")
    ref = db.reference_values()
    db.study.add_trials([db.frozen_trial(ev, ref, engine="test") for ev in evs])


FULL = evaluation("0" * len(UNITS), 0.93, 1e6)


@pytest.fixture(params=["sqlite", "postgresql", "journal", "redis", "memory"])
def storage(request, tmp_path):
    kind = request.param
    if kind == "sqlite":
        yield str(tmp_path / "s.db")
    elif kind == "postgresql":
        yield request.getfixturevalue("postgres_url")
    elif kind == "journal":
        yield str(tmp_path / "s.log")
    elif kind == "redis":
        pytest.importorskip("redis")
        url = "redis://127.0.0.1:6379/0"
        try:
            import redis

            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except Exception as exc:  # the server is expected (see conftest); say why not
            if os.environ.get("PARETOSKIP_REQUIRE_SERVERS") == "1":
                pytest.fail(f"Redis at 127.0.0.1:6379 is required but did not answer: {exc}")
            pytest.skip(f"Redis at 127.0.0.1:6379 did not answer: {exc}")
        yield url
    else:
        yield ":memory:"


def study_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def cleanup(db: StudyDB) -> None:
    if db.location.kind == "redis":
        optuna.delete_study(study_name=db.name, storage=db.storage)


def test_fresh_study_reads_well_in_optuna(tmp_path):
    """Objective names, one short attribute per metric, the reference recorded once."""
    path = tmp_path / "s.db"
    db = StudyDB.open(str(path), "demo", meta=meta(constraints=["flops <= 0.9 * full"]))
    fill(db, synthetic(20), FULL)
    # an engine proposing the full model again gets no second trial
    assert db.record(FULL, db.reference_values(), engine="pymoo-nsga2") is None

    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{path}")
    assert study.metric_names == ["accuracy", "flops"]
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 21
    assert sum(t.user_attrs["mask"] == FULL.mask for t in trials) == 1
    for t in trials:
        assert "metrics" not in t.user_attrs
        for key, value in t.user_attrs.items():
            assert not isinstance(value, (dict, list)), key
            assert len(json.dumps(value)) <= 80, key
        assert t.user_attrs["accuracy"] == t.values[0]
        assert t.user_attrs["flops"] == t.values[1]
    assert "accuracy.spread" in trials[2].user_attrs  # (trials[1] has no spread)
    # units and sources are kept findable once per study, not on every trial
    assert not any(k.endswith((".unit", ".source")) for k in trials[1].user_attrs)
    info = StudyDB.load(str(path))._system_attrs()["paretoskip:metrics"]  # study system attrs
    assert info["accuracy"]["unit"] == "fraction"
    assert info["flops"]["source"] == "counted:flop-counter"
    assert "spread" in info["accuracy"]
    # the study's user attributes are a few short lines (what `optuna studies` prints)
    assert "paretoskip" in study.user_attrs and "full_model" in study.user_attrs
    for key, value in study.user_attrs.items():
        assert isinstance(value, str) and len(value) < 200, key
    # and paretoskip decodes what it wrote
    again = StudyDB.load(str(path))
    rec = again.records()[1]
    assert rec.metrics["accuracy"]["unit"] == "fraction"
    assert rec.metrics["flops"]["source"] == "counted:flop-counter"
    assert rec.metrics["accuracy"]["value"] == rec.values[0]


def test_objective_table_sql_equals_optuna_read(storage):
    db = StudyDB.open(storage, study_name(), meta=meta(constraints=["flops <= 0.7 * full"]))
    try:
        fill(db, synthetic(300, seed=1), FULL)
        a = db.objective_table()
        b = db.objective_table(use_sql=False)
        assert a.n_trials == b.n_trials == 301
        assert a.masks == b.masks
        for name in ("trial_ids", "numbers", "feasible"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert np.array_equal(a.values, b.values)
        assert np.array_equal(a.spreads, b.spreads, equal_nan=True)
        assert 0 < a.feasible.sum() < len(a.masks)  # the constraint bites
        assert np.isnan(a.spreads[:, 1]).all() and not np.isnan(a.spreads[:, 0]).all()
    finally:
        cleanup(db)


def _expected_front(evs, feasible_flops: float):
    """The strict front by an independent computation (2 objectives, first trial per mask)."""
    first = {}
    for ev in [FULL, *evs]:
        if ev["flops"] <= feasible_flops:
            first.setdefault(ev.mask, ev)
    rows = sorted(first.values(), key=lambda e: (e["flops"], -e["accuracy"]))
    best, out = -math.inf, set()
    for e in rows:
        if e["accuracy"] > best:
            out.add(e.mask)
            best = e["accuracy"]
    return out


def test_front_members_are_the_same_by_sql_and_by_optuna(tmp_path):
    evs = synthetic(3000, seed=2)
    db = StudyDB.open(str(tmp_path / "s.db"), "big", meta=meta(constraints=["flops <= 0.8 * full"]))
    fill(db, evs, FULL)
    exact = {"accuracy": 0.0, "flops": 0.0}
    fast = Front.from_study(db, epsilon=exact)
    slow = Front.from_study(db, epsilon=exact, use_sql=False)
    assert fast.members == slow.members
    assert {m["mask"] for m in fast.members} == _expected_front(evs, 0.8e6)
    # with the measurement spreads as the band: the same members again, some in the band
    fast = Front.from_study(StudyDB.load(str(tmp_path / "s.db")))
    slow = Front.from_study(db, use_sql=False)
    assert fast.members == slow.members
    assert any(not m["strict"] for m in fast.members)
    assert fast.data["study"]["feasible"] == slow.data["study"]["feasible"]
    assert fast.hypervolume == slow.hypervolume
    strict = fast.values(strict_only=True)
    assert nondominated(strict, fast.objectives).all()


class KnownTestAccuracies:
    """Stands in for the evaluator's test split: a known accuracy per mask."""

    def __init__(self):
        self.asked: list[str] = []

    def test_accuracy(self, masks):
        self.asked += list(masks)
        return [0.5 + m.count("1") / 100 for m in masks]


def test_test_accuracy_lands_on_the_members_trials(storage):
    db = StudyDB.open(storage, study_name(), meta=meta())
    try:
        fill(db, synthetic(200, seed=3), FULL)
        tests = KnownTestAccuracies()
        front = Front.from_study(db, evaluator=tests)
        wanted = {m["mask"] for m in front.members} | {FULL.mask}
        assert set(tests.asked) == wanted
        for m in front.members:
            assert m["test_accuracy"] == 0.5 + m["mask"].count("1") / 100
        assert front.reference["test_accuracy"] == 0.5
        # measured once: a second extraction asks for nothing
        again = KnownTestAccuracies()
        reopened = db if db.location.kind == "memory" else StudyDB.load(storage, db.name)
        Front.from_study(reopened, evaluator=again)
        assert again.asked == []
        by_number = {t.number: t for t in db.study.get_trials(deepcopy=False)}
        annotated = [by_number[m["trial"]].user_attrs.get("test_accuracy") for m in front.members]
        if db.location.kind in ("journal", "redis"):
            # Optuna's journal cannot annotate a finished trial: kept in the study only
            assert db.test_accuracies()[front.members[0]["mask"]] is not None
        else:
            assert annotated == [m["test_accuracy"] for m in front.members]
    finally:
        cleanup(db)


def write_schema_1_study(path, evs, constraints=()):
    """A study as paretoskip wrote it before study schema 2, with plain Optuna calls."""
    old = meta(schema=1, constraints=constraints)
    study = optuna.create_study(
        study_name="old",
        storage=f"sqlite:///{path}",
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.set_user_attr("paretoskip", old)
    study.set_user_attr("paretoskip.reference", FULL.to_dict())
    dist = {f"skip.{u}": CategoricalDistribution((0, 1)) for u in UNITS}
    trials = []
    for ev in [FULL, *evs]:
        trials.append(
            optuna.trial.create_trial(
                params={f"skip.{u}": int(c) for u, c in zip(UNITS, ev.mask)},
                distributions=dist,
                values=[ev["accuracy"], ev["flops"]],
                user_attrs={
                    "mask": ev.mask,
                    "metrics": {k: m.to_dict() for k, m in ev.metrics.items()},
                    "cache_hit": False,
                    "engine": "random",
                },
                constraints={constraints[0]: ev["flops"] - 0.8e6} if constraints else None,
            )
        )
    study.add_trials(trials)
    return study


def test_a_schema_1_study_is_still_read(tmp_path):
    path = tmp_path / "old.db"
    evs = synthetic(400, seed=4)
    write_schema_1_study(path, evs, constraints=["flops <= 0.8 * full"])
    db = StudyDB.load(str(path))
    assert db.schema_version == 1
    assert db.reference()["mask"] == FULL.mask
    rec = db.records()[1]
    assert rec.metrics == {k: m.to_dict() for k, m in evs[0].metrics.items()}
    a, b = db.objective_table(), db.objective_table(use_sql=False)
    assert a.masks == b.masks and np.array_equal(a.spreads, b.spreads, equal_nan=True)
    assert np.array_equal(a.feasible, b.feasible) and not a.feasible.all()
    exact = {"accuracy": 0.0, "flops": 0.0}
    front = Front.from_study(db, epsilon=exact, evaluator=KnownTestAccuracies())
    assert {m["mask"] for m in front.members} == _expected_front(evs, 0.8e6)
    assert front.members == Front.from_study(db, epsilon=exact, use_sql=False).members
    assert all(m["test_accuracy"] is not None for m in front.members)
    assert StudyDB.load(str(path)).test_accuracies()[FULL.mask] == 0.5
    # continuing it is refused, and nothing is written
    n = len(db.trials())
    with pytest.raises(StudyMismatchError, match="older paretoskip .*schema 1"):
        StudyDB.open(str(path), "old", meta=meta())
    assert len(StudyDB.load(str(path)).trials()) == n


def test_read_only_snapshot_gives_the_same_front(tmp_path):
    """StudyDB.read (sqlite3, no Optuna storage) against the Optuna-object path, on a study
    with repeated masks, infeasible, failed and running trials and trials without a mask."""
    from paretoskip.study import StudySnapshot

    path = str(tmp_path / "s.db")
    evs = synthetic(600, seed=5)
    db = StudyDB.open(path, "mixed", meta=meta(constraints=["flops <= 0.75 * full"]))
    fill(db, evs, FULL)
    dist = db.distributions()
    params = db.params_of(evs[3].mask)
    db.study.add_trials(
        [
            optuna.trial.create_trial(
                params=params, distributions=dist, state=optuna.trial.TrialState.FAIL
            ),
            optuna.trial.create_trial(
                params=params, distributions=dist, state=optuna.trial.TrialState.RUNNING
            ),
            # COMPLETE but not an evaluation of this space (no mask): counted, never a member
            optuna.trial.create_trial(
                params={"x": 1},
                distributions={"x": CategoricalDistribution((0, 1))},
                values=[1.0, 0.0],
            ),
        ]
    )
    snap = StudyDB.read(path)
    assert isinstance(snap, StudySnapshot)
    assert len({ev.mask for ev in evs}) < len(evs)  # repeated masks
    a, b, c = snap.objective_table(), db.objective_table(), db.objective_table(use_sql=False)
    assert a.n_trials == b.n_trials == c.n_trials == 602
    for t in (a, b):
        assert t.masks == c.masks
        for name in ("trial_ids", "numbers", "feasible", "values"):
            assert np.array_equal(getattr(t, name), getattr(c, name)), name
        assert np.array_equal(t.spreads, c.spreads, equal_nan=True)
    assert 0 < a.feasible.sum() < len(a.masks)
    slow = Front.from_study(db, use_sql=False)
    for other in (Front.from_study(snap), Front.from_study(StudyDB.load(path))):
        assert other.members == slow.members
        for key in ("evaluations", "distinct_masks", "feasible", "storage", "name"):
            assert other.data["study"][key] == slow.data["study"][key], key
        assert other.hypervolume == slow.hypervolume
        assert other.reference == slow.reference
    assert any(not m["strict"] for m in slow.members)
    with pytest.raises(ConfigError, match="read-only"):
        Front.from_study(snap, evaluator=KnownTestAccuracies())


def test_read_falls_back_to_optuna_for_other_files(tmp_path):
    """A table layout the snapshot does not know, a schema 1 study and a missing study."""
    import sqlite3

    from paretoskip.study import StudySnapshot

    path = tmp_path / "old.db"
    evs = synthetic(200, seed=6)
    write_schema_1_study(path, evs, constraints=["flops <= 0.8 * full"])
    snap = StudyDB.read(str(path))
    assert isinstance(snap, StudySnapshot) and snap.schema_version == 1
    exact = {"accuracy": 0.0, "flops": 0.0}
    slow = Front.from_study(StudyDB.load(str(path)), epsilon=exact, use_sql=False)
    assert Front.from_study(snap, epsilon=exact).members == slow.members
    assert snap.objective_table().feasible.sum() < len(snap.objective_table().masks)
    with pytest.raises(ConfigError, match="no study 'nope'"):
        StudyDB.read(str(path), "nope")
    snap.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'v9.9.9.x'")
    with pytest.raises(Exception, match="v9.9.9.x|optuna|schema"):
        StudyDB.read(str(path))  # Optuna's own check speaks for a layout it does not know
