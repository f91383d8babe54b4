import math
import random

import pytest
import torch

import paretoskip
from paretoskip import Evaluator, MeasureSettings, SkipSpace
from paretoskip.cache import EvalCache
from paretoskip.errors import ConfigError, MaskError
from paretoskip.models import get_mask


def clustered(n_units, parents=4, children=4, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(parents):
        p = [rng.randint(0, 1) for _ in range(n_units)]
        out.append(p)
        for _ in range(children):
            c = list(p)
            for i in rng.sample(range(n_units), rng.randint(1, 3)):
                c[i] ^= 1
            out.append(c)
    return out


def test_prefix_tree_equals_naive(digits, tiny_model):
    ev = Evaluator(tiny_model, digits, settings=MeasureSettings(eval_batch=100))
    masks = clustered(9) + [[0] * 9, [1] * 9, [0] * 9]
    tree = ev.accuracy_many(masks)
    naive = [ev.naive_accuracy(m) for m in masks]
    assert tree == naive
    assert len(set(tree)) > 3  # the masks really differ
    assert ev.test_accuracy(masks[:3]) == [ev.naive_accuracy(m, "test") for m in masks[:3]]


def test_skipped_identity_block_passes_its_input_bit_identically(digits, tiny_model):
    """A skipped identity block after a ReLU-ended block is passed over without its ReLU:
    only where its output is bit-identical, and the tree's accuracies stay the naive ones."""
    from paretoskip.models import model_parts

    ev = Evaluator(tiny_model, digits)
    parts = model_parts(tiny_model)
    units = [u for _, u in parts.units]
    passes = ev._skip_passes
    assert not passes[0]  # the stem's output is not known to be non-negative
    assert any(passes) and not all(passes)
    for k, u in enumerate(units):  # downsampling blocks pad or project: they never pass
        assert passes[k] == (k > 0 and isinstance(u.shortcut, torch.nn.Identity))
    with torch.inference_mode():
        h = parts.stem(digits.val.x[:64])
        for k, u in enumerate(units):
            skipped = u.run_state(h, True)
            if passes[k]:
                assert torch.equal(skipped, h) and (h >= 0).all()
            h = u.run_state(h, False)
    masks = clustered(9, 3, 4, seed=3) + [[1] * 9, [0, 1, 1, 1, 0, 1, 1, 0, 1]]
    assert ev.accuracy_many(masks) == [ev.naive_accuracy(m) for m in masks]


def test_locked_prefix_and_groups_equal_naive(digits, tiny_model):
    space = SkipSpace.from_model(
        tiny_model, locked=["layer1.0", "layer1.1"], groups=[["layer3.0", "layer3.1"]]
    )
    ev = Evaluator(tiny_model, digits, space=space)
    rng = random.Random(1)
    masks = [
        space.mask_from_genes([rng.randint(0, 1) for _ in range(space.n_genes)]) for _ in range(12)
    ]
    assert ev.accuracy_many(masks) == [ev.naive_accuracy(m) for m in masks]
    with pytest.raises(MaskError, match="locked unit 'layer1.0'"):
        ev.evaluate("100000000")


def test_small_memory_budget_uses_small_chunks(digits, tiny_model):
    ev = Evaluator(tiny_model, digits, settings=MeasureSettings(memory_mb=0.5))
    assert ev._chunk * ev.activation_bytes_per_image <= 0.5 * 2**20
    masks = clustered(9, 2, 3)
    assert ev.accuracy_many(masks) == [ev.naive_accuracy(m) for m in masks]


def test_accuracy_does_not_depend_on_the_chunk_size(digits, tiny_model, monkeypatch):
    masks = clustered(9, 3, 3, seed=4) + [[0] * 9]
    rows = {}
    for eb in (7, 64, 1000, "auto"):
        ev = Evaluator(tiny_model, digits, settings=MeasureSettings(eval_batch=eb))
        rows[eb] = ev.correct_many(masks)
        assert ev.provenance()["chunk_images"] == ev._chunk
    # "auto" on a small cache target: the smallest chunk it chooses
    monkeypatch.setattr(paretoskip.evaluate, "CHUNK_BYTES_PER_THREAD", 1)
    ev = Evaluator(tiny_model, digits, settings=MeasureSettings(threads=1))
    assert ev._chunk == paretoskip.evaluate.MIN_AUTO_CHUNK
    rows["small"] = ev.correct_many(masks)
    for eb, row in rows.items():
        assert (row == rows[7]).all(), eb
    assert rows[7].mean(1).tolist() == [ev.naive_accuracy(m) for m in masks]


def test_auto_chunk_follows_the_cache_target_threads_and_memory(digits, tiny_model, monkeypatch):
    def chunk(**kw):
        return Evaluator(tiny_model, digits, settings=MeasureSettings(**kw))._chunk

    largest = 16 * 8 * 8 * 4  # bytes of the widest unit output of one 8x8 image (16 channels)
    monkeypatch.setattr(paretoskip.evaluate, "CHUNK_BYTES_PER_THREAD", 40 * largest)
    assert chunk(threads=1) == 40
    assert chunk(threads=2) == 80  # each thread's share of a chunk stays the same
    assert chunk(threads=1, eval_batch=9) == 9  # an explicit size wins
    ev = Evaluator(tiny_model, digits, settings=MeasureSettings(threads=2, memory_mb=0.05))
    assert (
        ev._chunk * ev.activation_bytes_per_image
        <= 0.05 * 2**20
        < 80 * ev.activation_bytes_per_image
    )


@pytest.mark.parametrize("bad", [0, -3, "big", 2.5, True])
def test_eval_batch_is_checked(bad):
    with pytest.raises(
        ConfigError, match=f"eval_batch={bad!r}; accepted: a positive integer or 'auto'"
    ):
        MeasureSettings(eval_batch=bad)


def test_evaluation_records(digits, tiny_model):
    ev = Evaluator(tiny_model, digits)
    r = ev.evaluate("000000111")
    assert r.skipped == ("layer3.0", "layer3.1", "layer3.2")
    assert r.metrics["accuracy"].source == "measured:validation"
    assert r.metrics["accuracy"].spread == pytest.approx(
        math.sqrt(r["accuracy"] * (1 - r["accuracy"]) / len(digits.val))
    )
    assert r["flops"] == ev.costs.flops([0] * 6 + [1] * 3)
    assert r.metrics["flops"].unit == "FLOPs"
    assert "latency" not in r.metrics and "energy" not in r.metrics
    with pytest.raises(ConfigError, match="'latency' was not measured"):
        r["latency"]
    assert get_mask(tiny_model) == [0] * 9  # evaluation leaves the model's flags alone


def test_latency_and_energy_fields(digits, tiny_model):
    settings = MeasureSettings(
        latency=True, batch_size=2, repeats=3, warmup=1, energy="estimated", energy_seconds=0.05
    )
    ev = Evaluator(tiny_model, digits, settings=settings)
    r = ev.evaluate("101010101")
    assert r["latency"] > 0 and r.metrics["latency"].unit == "s"
    assert r.metrics["latency_ratio"].source == "measured:interleaved"
    assert r.metrics["energy"].source.startswith("estimated:")
    assert r["energy"] > 0


def test_energy_unavailable_is_nan_never_zero(digits, tiny_model):
    ev = Evaluator(tiny_model, digits, settings=MeasureSettings(energy="auto"))
    r = ev.evaluate("000000000")
    energy = r.metrics["energy"]
    if energy.source.startswith("measured:"):
        pytest.skip("this machine has a readable energy counter")
    assert math.isnan(energy.value) and energy.source == "unavailable" and energy.reason


def test_cache_hits_and_misses(tmp_path, digits, tiny_model):
    db = str(tmp_path / "cache.db")
    ev = Evaluator(tiny_model, digits, cache=db)
    first = ev.evaluate_many(["000000001", "000000011", "000000001"])
    assert [r.cache_hit for r in first] == [False, False, False]
    assert ev.misses == 2
    ev2 = Evaluator(tiny_model, digits, cache=db)
    second = ev2.evaluate_many(["000000001", "100000000"])
    assert [r.cache_hit for r in second] == [True, False]
    assert second[0].metrics == first[0].metrics
    assert ev2.cache.count(ev2.cache_key) == 3


def test_cache_misses_when_anything_changes(tmp_path, digits, tiny_model):
    from paretoskip.data import load_dataset

    db = str(tmp_path / "cache.db")
    base = Evaluator(tiny_model, digits, cache=db)
    base.evaluate("000000001")
    key = base.cache_key

    changed_weights = paretoskip.create_model(
        "resnet20", num_classes=10, in_channels=1, input_size=8
    ).eval()
    with torch.no_grad():
        changed_weights.load_state_dict(tiny_model.state_dict())
        changed_weights.fc.bias.add_(1e-3)
    other_split = load_dataset("digits", seed=1)
    variants = [
        Evaluator(changed_weights, digits, cache=db),
        Evaluator(tiny_model, other_split, cache=db),
        Evaluator(tiny_model, digits, cache=db, settings=MeasureSettings(batch_size=32)),
        Evaluator(
            tiny_model,
            digits,
            cache=db,
            settings=MeasureSettings(threads=torch.get_num_threads() + 1),
        ),
    ]
    for ev in variants:
        assert ev.cache_key != key
        assert not ev.evaluate("000000001").cache_hit
    assert Evaluator(tiny_model, digits, cache=db).evaluate("000000001").cache_hit


def test_failed_evaluation_leaves_no_row(tmp_path, digits, tiny_model, monkeypatch):
    db = str(tmp_path / "cache.db")
    ev = Evaluator(tiny_model, digits, cache=db)

    def boom(mask):
        raise RuntimeError("measurement failed")

    monkeypatch.setattr(ev, "_measured", boom)
    with pytest.raises(RuntimeError, match="measurement failed"):
        ev.evaluate("000000001")
    assert EvalCache(db).count() == 0


def _worker(db, masks, queue):
    import torch  # noqa: F401

    from paretoskip.cache import CacheKey, EvalCache

    cache = EvalCache(db)
    key = CacheKey("m", "d", "s")
    stored = sum(cache.put(key, m, {"accuracy": {"value": int(m, 2)}}, 0.0) for m in masks)
    queue.put(stored)


def _run_writers(url):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    masks = [format(i, "012b") for i in range(60)]
    procs = [
        ctx.Process(target=_worker, args=(url, masks[i::2] + masks[:20], queue)) for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    stored = sum(queue.get(timeout=10) for _ in procs)
    cache = EvalCache(url)
    from paretoskip.cache import CacheKey

    got = cache.get_many(CacheKey("m", "d", "s"), masks)
    assert stored == len(got) == 60
    assert all(v["accuracy"]["value"] == int(k, 2) for k, v in got.items())


def test_cache_concurrent_writers_sqlite(tmp_path):
    _run_writers(f"sqlite:///{tmp_path / 'shared.db'}")


@pytest.mark.postgres
def test_cache_concurrent_writers_postgres(postgres_url):
    _run_writers(postgres_url)
