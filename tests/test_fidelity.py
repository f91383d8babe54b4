"""Multi-fidelity search: screening on a stratified validation subset."""

import numpy as np
import pytest
from optuna.trial import TrialState

import paretoskip
from paretoskip import Evaluator, SkipSpace
from paretoskip.config import load_study_config
from paretoskip.errors import ConfigError
from paretoskip.front import Front
from paretoskip.metrics import parse_objectives
from paretoskip.pipeline import StudyPipeline, search_kwargs
from paretoskip.search import Fidelity, make_fidelity
from paretoskip.study import StudyDB

MINIMAL = '[model]\nname = "resnet20"\n[data]\nname = "digits"\n'


@pytest.fixture
def space(tiny_model):
    # 6 free genes: 64 masks
    return SkipSpace.from_model(tiny_model, locked=["layer1.0", "layer2.0", "layer3.0"])


@pytest.fixture
def evaluator(tiny_model, digits, space, tmp_path):
    return Evaluator(tiny_model, digits, space=space, cache=str(tmp_path / "cache.db"))


def multi(evaluator, storage, budget, **kw):
    kw.setdefault("screen_k", 0.0)  # drop on any shortfall: the tiny model drops many
    return paretoskip.search(
        evaluator, budget=budget, storage=storage, progress=False, fidelity="multi", **kw
    )


def test_subset_is_stratified_and_deterministic(evaluator, digits):
    a = evaluator.validation_subset(0.2, seed=0)
    assert np.array_equal(a, evaluator.validation_subset(0.2, seed=0))
    assert not np.array_equal(a, evaluator.validation_subset(0.2, seed=1))
    assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < len(digits.val.y)
    y = digits.val.y.numpy()
    for c in np.unique(y):
        assert (y[a] == c).sum() == max(1, round(0.2 * (y == c).sum()))


def test_subset_values_never_served_as_full_ones(evaluator, digits):
    idx = evaluator.validation_subset(0.3)
    key = evaluator.subset_cache_key(idx)
    assert key.data_fp != evaluator.cache_key.data_fp
    space = evaluator.space
    masks = [space.to_bitstring(space.mask_from_genes(g)) for g in ([0] * 6, [0, 1] * 3, [1] * 6)]
    subs = evaluator.subset_evaluate_many(masks, idx)
    assert not evaluator.cached(masks)  # nothing under the full split's key
    for ev in subs:
        # the subset accuracy is the plain accuracy on exactly those images
        bits = evaluator.space.validate(ev.mask)
        from paretoskip.models import apply_mask, get_mask

        saved = get_mask(evaluator.model)
        apply_mask(evaluator.model, bits)
        pred = evaluator.model(digits.val.x[idx]).argmax(1)
        apply_mask(evaluator.model, saved)
        assert ev["accuracy"] == pytest.approx(float((pred == digits.val.y[idx]).float().mean()))
        assert ev.metrics["accuracy"].source == "measured:validation-subset"
        assert ev["flops"] == evaluator.costs.flops(bits)
    again = evaluator.subset_evaluate_many(masks, idx)
    assert all(e.cache_hit for e in again)
    assert [e["accuracy"] for e in again] == [e["accuracy"] for e in subs]


@pytest.mark.parametrize("engine", ["pymoo-nsga2", "greedy", "surrogate", "exhaustive"])
def test_dropped_trials_never_in_the_front(engine, evaluator, tmp_path):
    storage = str(tmp_path / "s.db")
    # screening compares with points measured in earlier batches: exhaustive in small ones
    options = {"batch": 8} if engine == "exhaustive" else None
    front = multi(evaluator, storage, 40, engine=engine, engine_options=options)
    run = front.data["study"]["run"]
    assert run["fidelity"] == "multi"
    # greedy walks down in cost from the best so far: nothing cheaper is measured to beat
    assert run["screened_out"] > 0 or engine == "greedy"
    db = StudyDB.load(storage)
    screened = [r for r in db.records(states=None) if r.screened]
    full = db.records()
    n_sub = len(evaluator.validation_subset(0.2))
    assert len(screened) == run["screened_out"] == front.data["study"]["screened_masks"]
    assert all(r.state == TrialState.PRUNED and r.values is None for r in screened)
    assert all(r.fidelity == "subset" and r.fidelity_images == n_sub for r in screened)
    assert all(r.metrics["accuracy"]["source"] == "measured:validation-subset" for r in screened)
    n_val = len(evaluator.data.val.y)
    told = [r for r in full if r.engine != "reference"]
    assert all(r.fidelity == "full" and r.fidelity_images == n_val for r in told)
    dropped = {r.mask for r in screened}
    assert not dropped & {r.mask for r in full}
    # the budget counts every distinct mask, dropped ones included
    assert len(dropped | {r.mask for r in full}) == run["distinct_masks"]
    assert run["distinct_masks"] == 40 or engine == "greedy"  # greedy ends by itself
    members = {m["mask"] for m in front.members}
    assert members and not members & dropped
    assert not set(db.objective_table().masks) & dropped
    assert not set(db.objective_table(use_sql=False).masks) & dropped
    # every front member's accuracy is a plain full-split evaluation
    for m in front.members:
        assert m["metrics"]["accuracy"]["value"] == evaluator.naive_accuracy(m["mask"])
    # read again from the study: the same front
    again = Front.from_study(db)
    assert {m["mask"] for m in again.members} == members


# the surrogate's structured start skips masks the study holds, the reference among them;
# NSGA-II's first population has the full model and measures it again (without a cache)
@pytest.mark.parametrize("engine,remeasured", [("pymoo-nsga2", 1), ("surrogate", 0)])
def test_image_evaluations_are_counted(evaluator, tmp_path, engine, remeasured):
    plain = paretoskip.search(
        evaluator, budget=30, storage=str(tmp_path / "a.db"), progress=False, seed=3, engine=engine
    )
    run = plain.data["study"]["run"]
    n_val = len(evaluator.data.val.y)
    # every distinct mask but the reference (in the cache already) measured once
    assert run["image_evaluations"] == n_val * run["new_evaluations"]
    evaluator.cache = None
    front = multi(evaluator, str(tmp_path / "b.db"), 30, seed=3, engine=engine)
    run = front.data["study"]["run"]
    n_sub = run["screen_images"]
    assert run["image_evaluations"] == n_sub * run["screen_evaluations"] + n_val * (
        run["promoted"] + remeasured
    )
    assert run["screen_evaluations"] == run["screened_out"] + run["promoted"]


def test_resume_of_a_multi_fidelity_study(evaluator, tmp_path):
    storage = str(tmp_path / "s.db")
    f1 = multi(evaluator, storage, 20)
    first = f1.data["study"]["run"]
    f2 = multi(evaluator, storage, 36)
    run = f2.data["study"]["run"]
    assert run["distinct_masks"] == 36
    db = StudyDB.load(storage)
    masks = {r.mask for r in db.records(states=None) if r.completed or r.screened}
    assert len(masks) == 36
    # masks screened in the first run are not screened again: only new ones are measured
    assert run["screen_evaluations"] <= 36 - first["distinct_masks"]
    members = {m["mask"] for m in f2.members}
    assert not members & {r.mask for r in db.records(states=None) if r.screened}
    # the same budget again measures nothing
    f3 = multi(evaluator, storage, 36)
    assert f3.data["study"]["run"]["image_evaluations"] == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fidelity": "half"}, r"fidelity='half'; accepted: 'full', 'multi'"),
        ({"fidelity": "multi", "screen_fraction": 1.5}, r"screen_fraction=1.5; accepted"),
        ({"fidelity": "multi", "screen_fraction": 0}, r"screen_fraction=0; accepted"),
        ({"fidelity": "multi", "screen_k": -1}, r"screen_k=-1; accepted: a number >= 0"),
        ({"screen_k": 2}, r"apply to fidelity='multi' only"),
        ({"fidelity": "multi", "engine": "tpe"}, r"not supported by engine 'tpe'.*accepted"),
        (
            {"fidelity": "multi", "objectives": ("flops", "params")},
            r"objectives are \['flops', 'params'\]",
        ),
    ],
)
def test_bad_options(evaluator, kwargs, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        paretoskip.search(evaluator, budget=8, storage=str(tmp_path / "s.db"), **kwargs)


def test_fidelity_checks_objectives():
    Fidelity("multi").check(parse_objectives(["accuracy", "flops", "params"]))
    with pytest.raises(ConfigError, match="latency"):
        Fidelity("multi").check(parse_objectives(["accuracy", "latency"]))
    Fidelity("full").check(parse_objectives(["accuracy", "latency"]))
    assert make_fidelity("multi", engine="greedy", screen_k=3).describe()["screen_k"] == 3.0


def test_study_file_and_command_line(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        MINIMAL
        + '[search]\nbudget = 40\nfidelity = "multi"\nscreen_fraction = 0.25\nscreen_k = 1.5\n'
    )
    cfg = load_study_config(path, check_files=False)
    kw = search_kwargs(cfg)
    assert (kw["fidelity"], kw["screen_fraction"], kw["screen_k"]) == ("multi", 0.25, 1.5)
    kw = search_kwargs(cfg.replace(fidelity="full"))  # the file's screen_* are dropped
    assert (kw["fidelity"], kw["screen_fraction"], kw["screen_k"]) == ("full", None, None)
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + '[search]\nfidelity = "multi"\nscreen_k = -2\n')
    with pytest.raises(ConfigError, match=r"bad.toml: search: screen_k=-2"):
        load_study_config(bad, check_files=False)
    bad.write_text(MINIMAL + '[search]\nengine = "tpe"\nfidelity = "multi"\n')
    with pytest.raises(ConfigError, match=r"not supported by engine 'tpe'"):
        load_study_config(bad, check_files=False)
    with pytest.raises(ConfigError, match=r"not supported by engine 'nsga2'"):
        cfg.replace(engine="nsga2")
    # workers evaluate on the whole split: a multi-fidelity study is refused clearly
    with pytest.raises(ConfigError, match=r"search.fidelity='multi': workers"):
        StudyPipeline(cfg).worker(engine="tpe")

    from paretoskip.cli import build_parser

    args = build_parser().parse_args(
        ["search", str(path), "--fidelity", "multi", "--screen-fraction", "0.3", "--screen-k", "1"]
    )
    assert (args.fidelity, args.screen_fraction, args.screen_k) == ("multi", 0.3, 1.0)
