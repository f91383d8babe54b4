"""The surrogate engine: its parts (model, hypervolume improvement) and its runs on a study."""

from __future__ import annotations

import itertools

import moocore
import numpy as np
import pytest

import paretoskip
from paretoskip.errors import ConfigError
from paretoskip.search import ENGINES, make_engine, search
from paretoskip.search._surrogate import (
    BayesianLinear,
    _features,
    hv_improvement_2d,
    pair_features,
)
from paretoskip.study import StudyDB


@pytest.fixture
def evaluator(tiny_model, digits):
    return paretoskip.Evaluator(tiny_model, digits)


def test_registered_with_its_options():
    assert "surrogate" in ENGINES
    assert make_engine("surrogate", seed=3, batch=4).describe()["batch"] == 4
    with pytest.raises(ConfigError, match="batch=0"):
        make_engine("surrogate", batch=0)
    with pytest.raises(ConfigError, match="explore=-1"):
        make_engine("surrogate", explore=-1)
    with pytest.raises(ConfigError, match="does not take"):
        make_engine("surrogate", pop_size=8)


def test_hv_improvement_matches_moocore():
    rng = np.random.default_rng(1)
    ref = [1.1, 0.0]
    for _ in range(20):
        pts = np.column_stack([rng.random(12), -rng.random(12)])
        front = pts[np.asarray(moocore.is_nondominated(pts))]
        cands = np.column_stack([rng.random(30) * 1.2, -rng.random(30) * 1.1])
        got = hv_improvement_2d(front, cands, ref)
        base = moocore.hypervolume(front, ref=np.array(ref))
        for c, g in zip(cands, got):
            inside = np.vstack([front, c])
            inside = inside[np.all(inside < ref, axis=1)]
            want = moocore.hypervolume(inside, ref=np.array(ref)) - base
            assert g == pytest.approx(want, abs=1e-12)


def test_pair_features_fit_the_column_limit():
    assert len(pair_features(15)) == 105  # every pair of 15 genes fits
    sel = pair_features(54, max_features=400)
    assert 54 + len(sel) <= 400 and len(sel) > 0
    assert (sel[:, 1] - sel[:, 0]).max() < 53  # only nearby pairs


def test_bayesian_linear_recovers_pairwise_function():
    rng = np.random.default_rng(0)
    n = 8
    pairs = pair_features(n)
    w = rng.normal(0, 0.05, n)
    v = rng.normal(0, 0.02, len(pairs))
    every = np.array(list(itertools.product((0, 1), repeat=n)))
    truth = 0.9 + _features(every, pairs)[:, 1:] @ np.concatenate([w, v])
    train = rng.choice(len(every), 80, replace=False)
    model = BayesianLinear(n).fit(_features(every[train], pairs), truth[train])
    mean, sd = model.predict(_features(every, pairs))
    assert np.max(np.abs(mean - truth)) < 1e-3
    assert np.all(sd >= 0)
    # uncertainty is larger with less data
    small = BayesianLinear(n).fit(_features(every[train[:12]], pairs), truth[train[:12]])
    assert small.predict(_features(every, pairs))[1].mean() > sd.mean()


def _masks_in_order(db: StudyDB) -> list[str]:
    return [t.user_attrs["mask"] for t in sorted(db.trials(), key=lambda t: t.number)]


def test_search_records_structured_start_and_budget(evaluator):
    front = search(evaluator, engine="surrogate", budget=24, storage=":memory:", progress=False)
    db = front.study
    masks = _masks_in_order(db)
    assert len(set(masks)) == 24 == len(masks)
    n = evaluator.space.n_units
    singles = {"".join("1" if i == j else "0" for i in range(n)) for j in range(n)}
    assert singles <= set(masks)  # every single-unit skip is part of the start
    engines = {t.user_attrs["engine"] for t in db.trials()}
    assert engines == {"reference", "surrogate"}
    assert max(t.user_attrs.get("generation", 0) for t in db.trials()) >= 1


def test_resume_continues_as_one_run(evaluator, tmp_path):
    """Stopped at a round boundary and resumed, the search proposes what one run does
    (the state is rebuilt from the study's trials)."""
    one = tmp_path / "one.db"
    two = tmp_path / "two.db"
    search(evaluator, engine="surrogate", budget=30, storage=str(one), progress=False, seed=2)
    trials = StudyDB.load(str(one)).trials()
    first_rounds = 1 + sum(1 for t in trials if t.user_attrs.get("generation", 99) <= 1)
    assert first_rounds < 30
    search(
        evaluator, engine="surrogate", budget=first_rounds, storage=str(two), progress=False, seed=2
    )
    search(evaluator, engine="surrogate", budget=30, storage=str(two), progress=False, seed=2)
    assert _masks_in_order(StudyDB.load(str(one))) == _masks_in_order(StudyDB.load(str(two)))


def test_locked_units_groups_and_constraints(tiny_model, digits):
    space = paretoskip.SkipSpace.from_model(
        tiny_model, locked=["layer1.0", "layer2.0"], groups=[["layer3.1", "layer3.2"]]
    )
    ev = paretoskip.Evaluator(tiny_model, digits, space=space)
    front = search(
        ev,
        engine="surrogate",
        budget=28,
        storage=":memory:",
        constraints=["flops <= 0.7 * full"],
        progress=False,
        engine_options={"batch": 4},
    )
    full = ev.costs.full_flops
    for t in front.study.trials():
        m = t.user_attrs["mask"]
        bits = space.validate(m)  # raises on a locked unit skipped or a split group
        assert bits[space.units.index("layer3.1")] == bits[space.units.index("layer3.2")]
        if t.user_attrs["engine"] == "surrogate" and t.user_attrs["generation"] >= 1:
            # past the structured start, candidates satisfy the exact constraint
            assert ev.costs.flops(bits) <= 0.7 * full
    assert len({t.user_attrs["mask"] for t in front.study.trials()}) == 28


def _walk_to_the_end(engine, ev, constraints=(), weights=None):
    """Run the engine's greedy descent alone on a known accuracy function (1 - genes @
    weights), evaluating its picks until it ends: the masks in the order evaluated."""
    from types import SimpleNamespace

    from paretoskip.metrics import parse_constraints, parse_objectives

    space = ev.space
    n = space.n_genes
    w = np.linspace(0.01, 0.08, n) if weights is None else np.asarray(weights)
    ctx = SimpleNamespace(
        space=space,
        evaluator=ev,
        objectives=parse_objectives(["accuracy", "flops"]),
        constraints=parse_constraints(list(constraints)),
        evaluated=set(),
    )
    exact = engine._exact(ctx)
    reference = {"accuracy": 1.0, "flops": exact["flops"][0], "params": exact["params"][0]}
    genes, values, order = {}, {}, []

    def rate(rows):
        return -(rows @ w)

    while True:
        picks = engine._descent(ctx, genes, values, exact, reference, rate)
        if not picks:
            return order, exact, reference
        assert len(picks) <= engine.options["descent"]
        for g in picks:
            m = space.mask_from_genes(g).bitstring
            assert m not in ctx.evaluated  # never proposed twice
            ctx.evaluated.add(m)
            genes[m] = g
            values[m] = {
                "accuracy": 1.0 - float(np.asarray(g) @ w),
                "flops": exact["flops"][0] + float(np.asarray(g) @ exact["flops"][1]),
            }
            order.append(g)


def test_descent_walks_the_greedy_path_at_its_width(evaluator):
    """The descent evaluates `descent` children per step (those the model rates first) and
    moves to the most accurate: on an additive accuracy it follows the hand method's path,
    skipping the least harmful gene first, and ends with every gene skipped."""
    n = evaluator.space.n_genes
    eng = make_engine("surrogate", descent=3)
    order, _, _ = _walk_to_the_end(eng, evaluator)
    path = [tuple(1 if i < k else 0 for i in range(n)) for k in range(1, n + 1)]
    assert [g for g in order if g in path] == path  # the greedy path, in its order
    assert len(order) == sum(min(3, n - k) for k in range(n))
    assert order[-1] == (1,) * n
    # width 1 is the model's own greedy path: one evaluation per step
    one, _, _ = _walk_to_the_end(make_engine("surrogate", descent=1), evaluator)
    assert one == path
    assert _walk_to_the_end(make_engine("surrogate", descent=0), evaluator)[0] == []


def test_descent_respects_lower_bounds_and_passes_upper_bounds_unevaluated(evaluator):
    n = evaluator.space.n_genes
    eng = make_engine("surrogate", descent=2)
    w = np.full(n, 0.05)
    # accuracy >= 0.8 holds for at most 4 genes skipped: the path ends there
    order, _, _ = _walk_to_the_end(eng, evaluator, ["accuracy >= 0.8"], weights=w)
    assert max(sum(g) for g in order) == 5  # children of the last feasible node are tried
    assert sum(1 for g in order if sum(g) == 5) <= 2
    # flops <= 0.5 * full: the masks above it are passed on the model's word, none evaluated
    order, exact, ref = _walk_to_the_end(eng, evaluator, ["flops <= 0.5 * full"])
    flops = [exact["flops"][0] + float(np.asarray(g) @ exact["flops"][1]) for g in order]
    assert order and max(flops) <= 0.5 * ref["flops"]
    assert order[-1] == (1,) * n
    # flops >= 0.6 * full: no mask below it is tried
    order, exact, ref = _walk_to_the_end(eng, evaluator, ["flops >= 0.6 * full"])
    flops = [exact["flops"][0] + float(np.asarray(g) @ exact["flops"][1]) for g in order]
    assert order and min(flops) >= 0.6 * ref["flops"]


def test_descent_option_is_checked():
    assert make_engine("surrogate", descent=0).describe()["descent"] == 0
    with pytest.raises(ConfigError, match="descent=-1"):
        make_engine("surrogate", descent=-1)
    with pytest.raises(ConfigError, match="descent=True"):
        make_engine("surrogate", descent=True)
