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
    fractions = Fidelity("multi").fractions
    assert fractions == [0.05, 0.1, 0.2, 0.4, 0.8]  # the defaults
    rung_images = [len(evaluator.validation_subset(f)) for f in fractions]
    assert run["screen_rung_images"] == rung_images
    assert len(screened) == run["screened_out"] == front.data["study"]["screened_masks"]
    assert sum(run["screened_out_by_rung"]) == run["screened_out"]
    assert all(r.state == TrialState.PRUNED and r.values is None for r in screened)
    assert all(r.fidelity == "subset" and r.fidelity_images in rung_images for r in screened)
    for images, dropped in zip(rung_images, run["screened_out_by_rung"]):
        assert sum(r.fidelity_images == images for r in screened) == dropped
    assert all(
        r.metrics["accuracy"]["source"] == "estimated:paired-validation-subset" for r in screened
    )
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


def _naive_beaten(snapshot, rows, rung, k, n_val):
    """What SearchContext._beaten should find, worked out the slow way from its state."""
    points, correct, rung_pos, exact = snapshot
    acc = {m: v[0] for v, m in points}
    front = [
        m
        for v, m in points
        if not any(
            w[0] >= v[0] and w[1] <= v[1] and (w[0] > v[0] or w[1] < v[1]) for w, _ in points
        )
    ]
    proxies = [m for m in correct if m in acc]
    out = {}
    pos = rung_pos[rung]
    for key, c in rows.items():
        best = [acc[m] for m in front if exact[m] <= exact[key]]
        if not best:
            continue
        near = sorted(
            range(len(proxies)),
            key=lambda i: (sum(x != y for x, y in zip(proxies[i], key)), -acc[proxies[i]], i),
        )[:6]
        e = np.mean([correct[proxies[i]][pos] for i in near], axis=0) - c
        n = len(e)
        var = max((np.sum(e**2) + 1) / n - e.mean() ** 2, 0)
        se = np.sqrt(var / n * (1 - n / n_val))
        est = np.mean([acc[proxies[i]] for i in near]) - e.mean()
        if max(best) - est > max(k * se, 0):
            out[key] = (max(est, 0.0), se)
    return out


def test_dropped_accuracy_is_the_paired_estimate(digits, space, tmp_path, monkeypatch):
    """A dropped candidate records (and tells its engine) its accuracy estimated on the
    whole split's scale.  Against the front: the mean whole-split accuracy of its six
    nearest whole-split masks less its paired shortfall on the same images against their
    mean per-image result (checked against a slow re-derivation at every screening
    step), below a front point of no higher cost by more than screen_k standard errors.
    Against a batch-mate: that one's accuracy (measured or estimated) less the paired
    shortfall, the standard errors combined.  Either way below the accuracy of a
    whole-split point of no higher cost, so dominated, as screening found."""
    import importlib

    from paretoskip.search import paired_shortfall
    from paretoskip.train import train_model

    ctx_mod = importlib.import_module("paretoskip.search._context")
    assert ctx_mod.PROXIES == 6
    calls = []
    beaten = ctx_mod.SearchContext._beaten

    def spy(self, rows, rung):
        got = beaten(self, rows, rung)  # may measure front points on the subsets first
        exact = {m: self.evaluator.exact_costs(m)["flops"] for m in [*rows, *self._correct]}
        snapshot = (
            [((v[0], v[1]), m) for v, m in self._full_points],
            dict(self._correct),
            self._rung_pos,
            exact,
        )
        calls.append((snapshot, dict(rows), rung, got))
        return got

    monkeypatch.setattr(ctx_mod.SearchContext, "_beaten", spy)
    model = train_model("resnet20", digits, recipe="stochastic-depth", epochs=6, progress=False)
    evaluator = Evaluator(model.model, digits, space=space)
    storage = str(tmp_path / "s.db")
    run = multi(evaluator, storage, 40, screen_k=1.0, seed=3).data["study"]["run"]
    assert 0 < run["screened_out_by_peer"] < run["screened_out"]
    n_val = len(digits.val.y)
    front_drops = {}
    for snapshot, rows, rung, got in calls:
        want = _naive_beaten(snapshot, rows, rung, 1.0, n_val)
        assert set(got) == set(want)
        for key, (est, se) in got.items():
            assert est == pytest.approx(want[key][0]) and se == pytest.approx(want[key][1])
        front_drops.update(got)
    assert front_drops
    records = StudyDB.load(storage).records(states=None)
    screened = [r for r in records if r.screened]
    full = [
        (r.metrics["flops"]["value"], r.metrics["accuracy"]["value"])
        for r in records
        if r.completed
    ]
    assert len(screened) >= 8
    # the subsets are drawn with the search's seed
    fractions = Fidelity("multi").fractions
    subsets = {len(idx): idx for idx in (evaluator.validation_subset(f, 3) for f in fractions)}
    for r in screened:
        acc = r.metrics["accuracy"]
        assert acc["source"] == "estimated:paired-validation-subset"
        assert 0 <= acc["value"] <= 1 and acc["spread"] > 0
        flops = r.metrics["flops"]["value"]
        beating = [(f, a) for f, a in full if f <= flops and a > acc["value"]]
        assert beating, r.mask
        if r.mask in front_drops:
            assert (acc["value"], acc["spread"]) == pytest.approx(front_drops[r.mask])
            continue
        # a batch-mate's drop: one of the paired estimates against a trial of no higher cost
        idx = subsets[r.fidelity_images]
        c = evaluator.subset_correct_many([r.mask], idx)[0]
        cheaper = [
            rec
            for rec in records
            if (rec.completed or rec.screened)
            and rec.mask != r.mask
            and rec.metrics["flops"]["value"] <= flops
        ]
        d = evaluator.subset_correct_many([rec.mask for rec in cheaper], idx)
        diff, se = paired_shortfall(d, c, n_val)
        est = np.array([rec.metrics["accuracy"]["value"] for rec in cheaper]) - diff
        # a whole-split accuracy counts as exact; an estimate brings its own SE
        spread = np.array(
            [rec.metrics["accuracy"]["spread"] if rec.screened else 0.0 for rec in cheaper]
        )
        se = np.hypot(spread, se)
        assert (np.isclose(est, acc["value"]) & np.isclose(se, acc["spread"])).any()


@pytest.mark.parametrize(
    "constraints,peer_feasible",
    [
        ((), True),
        (("accuracy >= 0.05",), True),
        ("cheap-infeasible", False),
        (("accuracy <= 0.99",), False),
    ],
)
def test_a_batch_mate_drops_a_candidate_only_where_it_stays_feasible(
    evaluator, tmp_path, constraints, peer_feasible
):
    """A candidate that a cheaper candidate of its batch beats on the same images is
    dropped, paired with it; never by a costlier one, nor by one a cost constraint makes
    infeasible, nor under a constraint (accuracy from above) that could make the beater
    infeasible while the candidate is feasible."""
    from paretoskip.search import SearchContext, open_study, paired_shortfall

    space = evaluator.space
    cheap = space.to_bitstring(space.mask_from_genes([1, 1, 1, 0, 0, 0]))
    dear = space.to_bitstring(space.mask_from_genes([1, 0, 0, 0, 0, 0]))
    flops = {m: evaluator.exact_costs(m)["flops"] for m in (cheap, dear, space.full)}
    assert flops[cheap] < flops[dear] < flops[space.full]
    if constraints == "cheap-infeasible":  # bounds FLOPs between the two
        share = (flops[cheap] + flops[dear]) / 2 / flops[space.full]
        constraints = (f"flops >= {share:.6f} * full",)
    db = open_study(evaluator, constraints=constraints, storage=str(tmp_path / "s.db"))
    ctx = SearchContext(
        evaluator,
        db,
        engine="t",
        budget=10,
        timeout=None,
        progress=False,
        fidelity=Fidelity("multi"),
    )
    right, half = np.ones(40, dtype=bool), np.arange(40) % 2 == 0
    # the costlier one far behind: dropped, paired with the cheaper
    got = ctx._beaten_by_peer({cheap: right, dear: half})
    if peer_feasible:
        diff, se = paired_shortfall(right, half, len(evaluator.data.val.y))
        assert got == {dear: (cheap, pytest.approx(diff[0]), pytest.approx(se[0]))}
        assert diff[0] == 0.5
    else:
        assert got == {}
    # the cheaper one behind: a costlier candidate does not dominate it
    assert ctx._beaten_by_peer({cheap: half, dear: right}) == {}
    assert ctx._beaten_by_peer({dear: half}) == {}


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
    # a promoted candidate runs only the images its screening did not
    sizes = run["screen_rung_images"]
    large = sizes[-1]
    assert len(sizes) == 5 and sizes == sorted(set(sizes))
    assert run["image_evaluations"] == (
        run["screen_image_evaluations"] + (n_val - large) * run["promoted"] + n_val * remeasured
    )
    # each rung measures the images the one before did not, on the candidates it kept
    into, out = run["screen_candidates_by_rung"], run["screened_out_by_rung"]
    new_images = np.diff([0, *sizes])
    assert run["screen_image_evaluations"] == (
        int(np.dot(into, new_images)) + run["pairing_evaluations"] * large
    )
    assert into[0] == run["screen_evaluations"] == run["screened_out"] + run["promoted"]
    assert into[1:] == [a - b for a, b in zip(into, out)][:-1]
    assert run["promoted"] == into[-1] - out[-1]


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
        ({"fidelity": "multi", "screen_rungs": 0}, r"screen_rungs=0; accepted: an integer >= 1"),
        ({"fidelity": "multi", "screen_rungs": 1.5}, r"screen_rungs=1.5; accepted"),
        ({"screen_rungs": 2}, r"apply to fidelity='multi' only"),
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
        + "screen_rungs = 3\n"
    )
    cfg = load_study_config(path, check_files=False)
    kw = search_kwargs(cfg)
    screen = ("fidelity", "screen_fraction", "screen_k", "screen_rungs")
    assert tuple(kw[k] for k in screen) == ("multi", 0.25, 1.5, 3)
    kw = search_kwargs(cfg.replace(fidelity="full"))  # the file's screen_* are dropped
    assert tuple(kw[k] for k in screen) == ("full", None, None, None)
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + '[search]\nfidelity = "multi"\nscreen_k = -2\n')
    with pytest.raises(ConfigError, match=r"bad.toml: search: screen_k=-2"):
        load_study_config(bad, check_files=False)
    bad.write_text(MINIMAL + '[search]\nfidelity = "multi"\nscreen_rungs = 0\n')
    with pytest.raises(ConfigError, match=r"bad.toml: search: screen_rungs=0"):
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
        + ["--screen-rungs", "3"]
    )
    got = (args.fidelity, args.screen_fraction, args.screen_k, args.screen_rungs)
    assert got == ("multi", 0.3, 1.0, 3)


def test_correct_many_is_the_per_image_accuracy(evaluator, digits):
    import torch

    from paretoskip.models import apply_mask, get_mask

    rng = np.random.default_rng(5)
    space = evaluator.space
    masks = [
        space.to_bitstring(space.mask_from_genes(list(rng.integers(0, 2, 6)))) for _ in range(7)
    ]
    got = evaluator.correct_many(masks)
    assert got.dtype == bool and got.shape == (len(masks), len(digits.val.y))
    assert list(got.mean(axis=1)) == evaluator.accuracy_many(masks)
    saved = get_mask(evaluator.model)
    for mask, row in zip(masks, got):
        apply_mask(evaluator.model, space.validate(mask))
        with torch.inference_mode():
            pred = evaluator.model(digits.val.x).argmax(1)
        assert np.array_equal(row, (pred == digits.val.y).numpy())
    apply_mask(evaluator.model, saved)
    idx = evaluator.validation_subset(0.3)
    assert np.array_equal(evaluator.subset_correct_many(masks, idx), got[:, idx])


def test_paired_shortfall():
    from paretoskip.search import paired_shortfall

    n, population = 100, 1000
    ref = np.ones(n, dtype=bool)
    ref[:20] = False  # 80 % right
    cand = ref.copy()
    cand[20:25] = False  # 75 %: wrong where the reference is, and on 5 images more
    diff, se = paired_shortfall(ref, cand, population)
    assert diff[0] == pytest.approx(0.05)
    # a = 5, b = 0: per-image variance (5 + 1) / 100 - 0.05^2, without-replacement factor
    assert se[0] == pytest.approx(np.sqrt((0.06 - 0.0025) / n * (1 - n / population)))
    assert diff[0] > 2 * se[0]
    # the two accuracies compared as if independent cannot tell them apart at 2 SE
    unpaired = np.sqrt(0.75 * 0.25 / n + 0.8 * 0.2 / population)
    assert diff[0] < 2 * unpaired
    # no disagreement: no shortfall, a spread all the same; several references at once
    diff, se = paired_shortfall(np.stack([ref, cand]), cand, population)
    assert diff[1] == 0 and se[1] > 0 and diff[0] > 2 * se[0]
    # the candidate better than the reference: a negative shortfall
    assert paired_shortfall(cand, ref, population)[0][0] == pytest.approx(-0.05)


def test_paired_shortfall_against_a_prediction():
    """A prediction of the candidate's per-image results (the mean of several masks'):
    the difference of means, and a spread from the squared per-image differences; 0/1
    predictions give the paired comparison exactly."""
    from paretoskip.search import paired_shortfall

    rng = np.random.default_rng(0)
    n, population = 200, 1000
    masks = rng.random((3, n)) < 0.85
    cand = masks[0] & (rng.random(n) < 0.97)
    model = masks.mean(axis=0)
    diff, se = paired_shortfall(model, cand, population)
    e = model - cand
    assert diff[0] == pytest.approx(e.mean())
    var = (np.sum(e**2) + 1) / n - e.mean() ** 2
    assert se[0] == pytest.approx(np.sqrt(var / n * (1 - n / population)))
    # 0/1 as numbers is the boolean comparison
    for got, want in zip(
        paired_shortfall(masks[1].astype(float), cand, population),
        paired_shortfall(masks[1], cand, population),
    ):
        assert got == pytest.approx(want)
    # a prediction closer to the candidate than any one mask is has a smaller spread
    assert se[0] < min(paired_shortfall(masks[1:], cand, population)[1])


def test_known_images_are_not_run_again(tiny_model, digits, space):
    ev = Evaluator(tiny_model, digits, space=space)
    rng = np.random.default_rng(2)
    masks = [
        space.to_bitstring(space.mask_from_genes(list(rng.integers(0, 2, 6)))) for _ in range(5)
    ]
    idx = ev.validation_subset(0.2)
    rows = ev.subset_correct_many(masks, idx)
    known = {m: (idx, r) for m, r in zip(masks[:3], rows)}
    plain = [e["accuracy"] for e in ev.evaluate_many(masks)]
    assert [e["accuracy"] for e in ev.evaluate_many(masks, known=known)] == plain
    # what is known is taken as measured: a wrong row shows in the result
    lied = {masks[0]: (idx, ~rows[0])}
    assert ev.evaluate_many(masks[:1], known=lied)[0]["accuracy"] != plain[0]
    with pytest.raises(ValueError, match="known correctness"):
        ev.evaluate_many(masks[:1], known={masks[0]: (idx, rows[0][:-1])})
