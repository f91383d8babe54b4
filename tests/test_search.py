import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import optuna
import pytest

import paretoskip
from paretoskip import Evaluator, SkipSpace
from paretoskip.errors import ConfigError, StudyMismatchError
from paretoskip.front import Front
from paretoskip.search import ENGINES, structured_masks
from paretoskip.study import StudyDB


@pytest.fixture
def space(tiny_model):
    # 6 free genes: 64 masks, small enough for every engine and for exhaustive checks
    return SkipSpace.from_model(tiny_model, locked=["layer1.0", "layer2.0", "layer3.0"])


@pytest.fixture
def evaluator(tiny_model, digits, space, tmp_path):
    return Evaluator(tiny_model, digits, space=space, cache=str(tmp_path / "cache.db"))


def independent_front(points):
    """Indices of non-dominated points (maximise column 0, minimise column 1), by brute force."""
    keep = []
    for i, (a, f) in enumerate(points):
        dominated = any(
            (b >= a and g <= f) and (b > a or g < f) for j, (b, g) in enumerate(points) if j != i
        )
        if not dominated:
            keep.append(i)
    return keep


@pytest.mark.parametrize("engine", sorted(set(ENGINES) - {"gp"}))
def test_every_engine_returns_a_valid_front(engine, evaluator, tmp_path):
    front = paretoskip.search(
        evaluator,
        engine=engine,
        budget=24,
        storage=str(tmp_path / "s.db"),
        study_name=engine,
        progress=False,
    )
    db = StudyDB.load(str(tmp_path / "s.db"), engine)
    trials = db.trials()
    assert trials, "no trials recorded"
    masks = {t.user_attrs["mask"] for t in trials}
    assert len(masks) <= 24
    points = {t.user_attrs["mask"]: (t.values[0], t.values[1]) for t in trials}
    keys = list(points)
    expected = {keys[i] for i in independent_front([points[k] for k in keys])}
    strict = {m["mask"] for m in front.members if m["strict"]}
    assert strict == expected
    for m in front.members:
        assert m["test_accuracy"] is not None
        assert m["metrics"]["flops"]["unit"] == "FLOPs"
    assert front.reference["mask"] == "0" * 9
    assert 0 < front.hypervolume <= 1.1


@pytest.mark.slow
def test_gp_engine(evaluator, tmp_path):
    front = paretoskip.search(
        evaluator, engine="gp", budget=10, storage=str(tmp_path / "s.db"), progress=False
    )
    assert front.strict_members()


def test_exhaustive_front_is_the_true_front(evaluator, space, tmp_path):
    front = paretoskip.search(
        evaluator, engine="exhaustive", storage=str(tmp_path / "s.db"), progress=False
    )
    all_masks = [space.mask_from_genes(g) for g in itertools.product((0, 1), repeat=space.n_genes)]
    evs = evaluator.evaluate_many(all_masks)
    pts = [(e["accuracy"], e["flops"]) for e in evs]
    truth = {evs[i].mask for i in independent_front(pts)}
    assert {m["mask"] for m in front.strict_members()} == truth


def test_exhaustive_refuses_huge_spaces(digits, tmp_path):
    model = paretoskip.create_model("resnet110", num_classes=10, in_channels=1, input_size=8)
    ev = Evaluator(model, digits)
    with pytest.raises(ConfigError, match=r"2\^54 = .* 'surrogate'"):
        paretoskip.search(ev, engine="exhaustive", storage=str(tmp_path / "x.db"), progress=False)


def test_cache_hits_are_counted_and_resume_continues(evaluator, tmp_path):
    storage = str(tmp_path / "s.db")
    f1 = paretoskip.search(evaluator, budget=16, storage=storage, progress=False)
    assert f1.data["study"]["run"]["distinct_masks"] == 16
    misses = evaluator.misses
    f2 = paretoskip.search(evaluator, budget=30, storage=storage, progress=False)
    run = f2.data["study"]["run"]
    assert run["distinct_masks"] == 30
    assert evaluator.misses - misses == 14  # only the new masks were measured
    db = StudyDB.load(storage)
    assert len({t.user_attrs["mask"] for t in db.trials()}) == 30
    # a third run at the same budget measures nothing
    misses = evaluator.misses
    paretoskip.search(evaluator, budget=30, storage=storage, progress=False)
    assert evaluator.misses == misses


def test_trial_layout_for_dashboard(evaluator, tmp_path):
    storage = str(tmp_path / "s.db")
    paretoskip.search(evaluator, engine="pymoo-nsga2", budget=12, storage=storage, progress=False)
    study = optuna.load_study(study_name="digits-resnet20", storage=f"sqlite:///{storage}")
    t = study.get_trials(deepcopy=False)[-1]
    assert set(t.params) == {f"skip.{u}" for u in evaluator.space.gene_names}
    assert set(t.params.values()) <= {0, 1}
    assert {"mask", "accuracy", "flops", "cache_hit", "engine", "generation"} <= set(t.user_attrs)
    system = StudyDB.load(storage)._system_attrs()  # the study's system attributes
    assert system["paretoskip:metrics"]["accuracy"]["source"] == "measured:validation"
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["accuracy", "flops"]
    meta = system["paretoskip:meta"]
    assert meta["model_fingerprint"] == evaluator.model_fingerprint


def test_reopening_with_another_search_is_refused(evaluator, tiny_model, digits, tmp_path):
    storage = str(tmp_path / "s.db")
    paretoskip.search(evaluator, budget=6, storage=storage, progress=False)
    n = len(StudyDB.load(storage).trials())
    with pytest.raises(StudyMismatchError, match="objectives"):
        paretoskip.search(
            evaluator, objectives=["accuracy", "params"], budget=8, storage=storage, progress=False
        )
    other = Evaluator(tiny_model, digits)  # the whole space: another skip space
    with pytest.raises(StudyMismatchError, match="skip space"):
        paretoskip.search(
            other, budget=8, storage=storage, study_name="digits-resnet20", progress=False
        )
    assert len(StudyDB.load(storage).trials()) == n  # nothing written


def test_constraints(evaluator, tmp_path):
    ref_flops = evaluator.costs.full_flops
    front = paretoskip.search(
        evaluator,
        engine="exhaustive",
        constraints=["flops <= 0.9 * full", "accuracy >= 0.05"],
        storage=str(tmp_path / "s.db"),
        progress=False,
    )
    assert front.members
    for m in front.members:
        assert m["metrics"]["flops"]["value"] <= 0.9 * ref_flops
        assert m["metrics"]["accuracy"]["value"] >= 0.05
    db = StudyDB.load(str(tmp_path / "s.db"))
    infeasible = [t for t in db.trials() if any(c > 0 for c in t.constraints.values())]
    assert infeasible  # the full model itself violates the FLOPs bound


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"engine": "nsga4"}, "unknown engine 'nsga4'; accepted: pymoo-nsga2"),
        ({"objectives": ["accuracy", "watts"]}, "unknown objective 'watts'"),
        ({"objectives": ["accuracy"]}, "at least two"),
        ({"constraints": ["flops < 3"]}, "malformed constraint 'flops < 3'"),
        ({"constraints": ["speed <= 3"]}, "unknown metric 'speed'"),
        ({"objectives": ["accuracy", "latency"]}, "latency=True"),
        ({"budget": 0}, "budget=0"),
        (
            {"engine": "pymoo-nsga2", "engine_options": {"popsize": 3}},
            r"does not take \['popsize'\]",
        ),
    ],
)
def test_bad_arguments(evaluator, kwargs, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        paretoskip.search(evaluator, storage=str(tmp_path / "s.db"), progress=False, **kwargs)


def test_energy_objective_unavailable_is_refused(tiny_model, digits, space, tmp_path):
    ev = Evaluator(
        tiny_model, digits, space=space, settings=paretoskip.MeasureSettings(energy="auto")
    )
    if ev.evaluate(space.full).metrics["energy"].source.startswith("measured"):
        pytest.skip("this machine has an energy counter")
    with pytest.raises(ConfigError, match="energy cannot be measured here"):
        paretoskip.search(
            ev, objectives=["accuracy", "energy"], storage=str(tmp_path / "s.db"), progress=False
        )
    assert not (tmp_path / "s.db").exists() or not StudyDB.load(str(tmp_path / "s.db")).trials()


def test_structured_start(space):
    masks = structured_masks(space)
    assert masks[0] == space.full
    assert "".join(map(str, masks[1])) == "001001001"
    assert "".join(map(str, masks[2])) == "011011011"


def test_front_file_round_trip(evaluator, tmp_path):
    front = paretoskip.search(evaluator, budget=20, storage=str(tmp_path / "s.db"), progress=False)
    json_path, csv_path = front.save(tmp_path / "front.json")
    data = json.loads(json_path.read_text())
    for key in (
        "schema_version",
        "study",
        "provenance",
        "objectives",
        "reference",
        "members",
        "hypervolume",
    ):
        assert key in data
    member = data["members"][0]
    assert {"mask", "skipped", "metrics", "test_accuracy", "strict"} <= set(member)
    assert set(member["metrics"]["accuracy"]) >= {"value", "unit", "source", "spread"}
    assert data["provenance"]["model"]["fingerprint"] == evaluator.model_fingerprint
    assert data["hypervolume"]["reference_point"] == {"accuracy": 0.0, "flops": 1.1}
    assert Front.load(json_path).data == data
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("mask,strict") and len(rows) == len(data["members"]) + 1
    assert "hypervolume" in Front.load(json_path).table()


def test_near_pareto_band(evaluator, tmp_path):
    storage = str(tmp_path / "s.db")
    paretoskip.search(evaluator, engine="exhaustive", storage=storage, progress=False)
    db = StudyDB.load(storage)
    tight = Front.from_study(db, epsilon={"accuracy": 0.0, "flops": 0.0})
    wide = Front.from_study(db, epsilon={"accuracy": 0.05, "flops": 0.0})
    assert all(m["strict"] for m in tight.members)
    assert {m["mask"] for m in tight.members} < {m["mask"] for m in wide.members}
    assert {m["mask"] for m in wide.strict_members()} == {m["mask"] for m in tight.members}
    ref_acc = {m["mask"]: m["metrics"]["accuracy"]["value"] for m in wide.members}
    for m in wide.members:
        if not m["strict"]:
            # some strict member with no more FLOPs beats it by less than epsilon
            better = [
                s
                for s in wide.strict_members()
                if s["metrics"]["flops"]["value"] <= m["metrics"]["flops"]["value"]
            ]
            assert (
                min(s["metrics"]["accuracy"]["value"] for s in better) - ref_acc[m["mask"]]
                < 0.05 + 1e-12
            )
    with pytest.raises(ConfigError, match="not objectives"):
        Front.from_study(db, epsilon={"latency": 1.0})


def test_front_extraction_from_20000_trials_is_exact(tmp_path):
    """Extraction reads trials without deep copies; checked against an independent computation."""
    from optuna.distributions import CategoricalDistribution

    rng = np.random.default_rng(0)
    meta = {
        "schema_version": 1,
        "space": {"units": [f"u{i}" for i in range(16)], "locked": [], "groups": []},
        "objectives": [
            {"name": "accuracy", "direction": "maximize", "unit": "fraction"},
            {"name": "flops", "direction": "minimize", "unit": "FLOPs"},
        ],
        "constraints": [],
    }
    db = StudyDB.open(":memory:", "big", meta=meta)
    db.study.set_user_attr(
        "paretoskip.reference",
        {
            "mask": "0" * 16,
            "metrics": {
                "accuracy": {"value": 0.9, "unit": "fraction", "source": "x"},
                "flops": {"value": 1.0, "unit": "FLOPs", "source": "x"},
            },
        },
    )
    n = 20000
    flops = rng.random(n)
    acc = np.clip(flops + rng.normal(0, 0.1, n), 0, 1)
    dist = {f"skip.u{i}": CategoricalDistribution((0, 1)) for i in range(16)}
    trials = []
    for k in range(n):
        mask = format(k % 65536, "016b")
        trials.append(
            optuna.trial.create_trial(
                params={f"skip.u{i}": int(c) for i, c in enumerate(mask)},
                distributions=dist,
                values=[float(acc[k]), float(flops[k])],
                user_attrs={
                    "mask": mask,
                    "metrics": {
                        "accuracy": {
                            "value": float(acc[k]),
                            "unit": "fraction",
                            "source": "x",
                            "spread": None,
                        },
                        "flops": {
                            "value": float(flops[k]),
                            "unit": "FLOPs",
                            "source": "x",
                            "spread": None,
                        },
                    },
                },
            )
        )
    db.study.add_trials(trials)
    front = Front.from_study(db, epsilon={"accuracy": 0.0, "flops": 0.0})
    order = np.lexsort((-acc, flops))  # by flops, then accuracy descending
    best, expected = -1.0, set()
    for i in order:
        if acc[i] > best:
            expected.add(format(i % 65536, "016b"))
            best = acc[i]
    assert {m["mask"] for m in front.members} == expected


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, torch, paretoskip
    from paretoskip.checkpoint import load_checkpoint
    from paretoskip.data import load_dataset
    model, _ = load_checkpoint(sys.argv[1])
    data = load_dataset("digits", seed=0)
    space = paretoskip.SkipSpace.from_model(model, locked=["layer1.0"])
    ev = paretoskip.Evaluator(model, data, space=space, cache=sys.argv[2])
    engine = sys.argv[4]
    front = paretoskip.search(ev, engine=engine, budget=int(sys.argv[3]), storage=sys.argv[2],
                              engine_options={"pop_size": 8} if engine.startswith("pymoo") else None,
                              progress=False)
    print("DONE", ev.misses, flush=True)
    """
)


@pytest.mark.parametrize("engine", ["pymoo-nsga2", "tpe"])
def test_resume_after_sigkill(engine, tiny_model, tmp_path):
    from paretoskip.checkpoint import save_checkpoint

    ckpt = tmp_path / "model"
    save_checkpoint(tiny_model, ckpt)
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    storage = str(tmp_path / "study.db")
    budget = 48
    cmd = [sys.executable, str(script), str(ckpt), storage, str(budget), engine]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # kill it once some evaluations are in the study, mid-run
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if os.path.exists(storage):
            try:
                done = len(StudyDB.load(storage).trials())
            except Exception:
                continue
            if done >= 12:
                break
    assert proc.poll() is None, (
        f"the search finished before it could be killed: {proc.communicate()}"
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = StudyDB.load(storage)
    masks_before = {t.user_attrs["mask"] for t in before.trials()}
    assert 12 <= len(masks_before) < budget
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    measured_again = int(out.stdout.split("DONE")[1].split()[0])
    after = StudyDB.load(storage)
    masks_after = {t.user_attrs["mask"] for t in after.trials()}
    assert masks_before <= masks_after  # nothing lost
    assert len(masks_after) == budget
    # no cached evaluation was measured again: the second run measured only new masks
    # (plus at most the masks of trials the kill left RUNNING)
    running_left = len(after.trials(states=(optuna.trial.TrialState.FAIL,)))
    assert measured_again <= budget - len(masks_before) + running_left
    assert not after.trials(states=(optuna.trial.TrialState.RUNNING,))
    # the engine's state is the study itself: nothing is pickled beside it
    assert not any(p.name.endswith(".pkl") for p in tmp_path.iterdir())


@pytest.mark.postgres
def test_postgres_study(evaluator, postgres_url):
    front = paretoskip.search(evaluator, budget=16, storage=postgres_url, progress=False)
    assert front.strict_members()
    db = StudyDB.load(postgres_url)
    assert len({t.user_attrs["mask"] for t in db.trials()}) == 16
    # the evaluator cache can live in the same PostgreSQL database
    from paretoskip.cache import EvalCache

    cache = EvalCache(postgres_url)
    evaluator.cache = cache
    evaluator.evaluate_many(["000000001"])
    assert cache.count() == 1
    front2 = paretoskip.search(evaluator, budget=20, storage=postgres_url, progress=False)
    assert front2.data["study"]["run"]["distinct_masks"] == 20
    assert not math.isnan(front2.hypervolume)
