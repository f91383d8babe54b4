"""Adaptive Depth Networks: models with skip-aware batch norm, the ``adn`` recipe, exact evaluation."""

from __future__ import annotations

import copy
import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

import paretoskip
import paretoskip.models._adn  # noqa: F401  registers the -adn models
from paretoskip import Evaluator, MeasureSettings, SkipSpace
from paretoskip.checkpoint import load_checkpoint, save_checkpoint
from paretoskip.errors import ConfigError
from paretoskip.measure import count_costs, count_flops
from paretoskip.models import apply_mask, get_mask, skippable_units
from paretoskip.models._adn import adn_space, adn_stages, base_mask, is_adn, masked
from paretoskip.train import get_recipe, train_and_save, train_model

DIGITS = {"num_classes": 10, "in_channels": 1, "input_size": 8}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster on a shared machine (restored after)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def expected_mandatory(n: int) -> int:
    """The reference code: ``min(n - 1, (n + 1) // 2)`` shared blocks, the first one always."""
    return max(1, min(n - 1, (n + 1) // 2))


def tiny_adn(name: str = "resnet32-adn", seed: int = 0, **kwargs) -> nn.Module:
    """A small untrained ADN model for 8×8 digits with non-trivial, distinct batch-norm stats."""
    torch.manual_seed(seed)
    kwargs = {**DIGITS, "widths": (4, 8, 8), **kwargs}
    model = paretoskip.create_model(name, **kwargs)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.4, 0.4)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def stage_blocks(model):
    return [model.layer1, model.layer2, model.layer3] + (
        [model.layer4] if hasattr(model, "layer4") else []
    )


# -- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kwargs,skippable",
    [
        ("resnet20-adn", DIGITS, [1, 1, 1]),
        ("resnet32-adn", DIGITS, [2, 2, 2]),
        ("resnet56-adn", DIGITS, [4, 4, 4]),
        ("resnet110-adn", DIGITS, [9, 9, 9]),
        ("resnet18-adn", {"num_classes": 10, "input_size": 32}, [1, 1, 1, 1]),
        ("resnet50-adn", {"num_classes": 10, "input_size": 32}, [1, 2, 3, 1]),
    ],
)
def test_stage_split_and_duplicated_batch_norms(name, kwargs, skippable):
    model = paretoskip.create_model(name, **kwargs)
    stages = adn_stages(model)
    assert [len(s.skippable) for s in stages] == skippable
    for stage, seq in zip(stages, stage_blocks(model)):
        assert len(stage.mandatory) == expected_mandatory(len(seq))
        assert stage.mandatory + stage.skippable == tuple(
            n for n, u in skippable_units(model) if n.startswith(stage.name + ".")
        )
    # every residual block is a unit; the spaces lock the mandatory ones
    units = [n for n, _ in skippable_units(model)]
    assert len(units) == sum(len(seq) for seq in stage_blocks(model))
    mandatory = {n for s in stages for n in s.mandatory}
    keys = model.state_dict().keys()
    dup = {k.rsplit(".", 1)[0] for k in keys if "_skip." in k}
    n_bn = 3 if name.startswith("resnet50") else 2
    assert dup == {f"{u}.bn{j}_skip" for u in mandatory for j in range(1, n_bn + 1)}
    # stem and downsample batch norms are not duplicated; a plain model has no such tensors
    assert not any(k.startswith("bn1_skip") or "downsample" in k and "_skip" in k for k in keys)
    plain = paretoskip.create_model(name.removesuffix("-adn"), **kwargs)
    assert set(keys) - set(plain.state_dict()) == {k for k in keys if "_skip." in k}
    assert set(plain.state_dict()) <= set(keys)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("resnet32-adn", DIGITS),
        ("resnet32-adn", {**DIGITS, "shortcut": "B"}),
        ("resnet18-adn", {"num_classes": 10, "input_size": 32}),
        ("resnet50-adn", {"num_classes": 10, "input_size": 32}),
    ],
)
def test_super_net_computes_the_plain_network(name, kwargs):
    """Nothing skipped, an ADN model is its plain ResNet (same weights, same output); so it is
    with only mandatory blocks skipped (no sub-path is skipped: no batch norm switches)."""
    adn = paretoskip.create_model(name, **kwargs).eval()
    plain = paretoskip.create_model(name.removesuffix("-adn"), **kwargs).eval()
    for mod in plain.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.4, 0.4)
    missing, unexpected = adn.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("_skip." in k for k in missing)
    x = torch.randn(2, *plain.input_shape)
    mandatory = {n for s in adn_stages(adn) for n in s.mandatory}
    rng = random.Random(3)
    only_mandatory = [int(n in mandatory and rng.random() < 0.5) for n, _ in skippable_units(adn)]
    assert any(only_mandatory)
    with torch.no_grad():
        assert torch.equal(adn(x), plain(x))
        apply_mask(plain, only_mandatory)
        apply_mask(adn, only_mandatory)
        assert torch.equal(adn(x), plain(x))


def test_is_adn_and_errors_for_other_models():
    assert is_adn(paretoskip.create_model("resnet20-adn"))
    assert not is_adn(paretoskip.create_model("resnet20"))
    with pytest.raises(ConfigError, match=r"CifarResNet is not an ADN model.*resnet20-adn"):
        adn_stages(paretoskip.create_model("resnet20"))


# -- skip-aware batch norm -------------------------------------------------------------------


def _called_batch_norms(model, x):
    called = set()
    hooks = [
        m.register_forward_hook(lambda mod, *_: called.add(mod))
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return called, out


def test_skip_aware_bn_used_exactly_when_the_whole_sub_path_is_skipped():
    """Every mask of the finer space (64 of them): the BN set of each mandatory block."""
    model = tiny_adn("resnet32-adn")
    space = adn_space(model, tied=False)
    units = dict(skippable_units(model))
    stages = adn_stages(model)
    x = torch.randn(3, 1, 8, 8)
    outputs = set()
    for genes in itertools.product([0, 1], repeat=space.n_genes):
        mask = space.mask_from_genes(genes)
        apply_mask(model, mask)
        called, out = _called_batch_norms(model, x)
        outputs.add(out.sum().item())
        skipped = set(space.skipped_names(mask))
        for stage in stages:
            flag = all(n in skipped for n in stage.skippable)
            for name in stage.mandatory:
                block = units[name]
                assert block.subpath_skipped is flag
                aware = {block.bn1_skip, block.bn2_skip}
                ordinary = {block.bn1, block.bn2}
                used, unused = (aware, ordinary) if flag else (ordinary, aware)
                assert used <= called and not unused & called, (mask.bitstring, name)
            for name in stage.skippable:
                assert (units[name].bn1 in called) is (name not in skipped)
    assert len(outputs) == 2**space.n_genes  # every configuration computes something else
    apply_mask(model, [0] * len(units))
    assert not any(getattr(u, "subpath_skipped", False) for u in units.values())


def test_flags_follow_every_way_of_setting_skip():
    """apply_mask, a plain ``unit.skip = ...`` and ``object.__setattr__`` (the runtime's
    switch) all update the mandatory blocks; a deep copy keeps its own wiring."""
    model = tiny_adn("resnet32-adn")
    units = dict(skippable_units(model))
    first = units["layer2.0"]
    units["layer2.3"].skip = True
    assert not first.subpath_skipped  # layer2.4 still runs
    object.__setattr__(units["layer2.4"], "skip", True)
    assert first.subpath_skipped and units["layer2.2"].subpath_skipped
    assert get_mask(model)[units_index(model, "layer2.3")] == 1
    clone = copy.deepcopy(model)
    clone.layer2[4].skip = False
    assert not clone.layer2[0].subpath_skipped and first.subpath_skipped
    units["layer2.3"].skip = False
    assert not first.subpath_skipped
    # running a block with an explicit decision leaves every flag alone
    units["layer2.3"].skip = True
    before = [u.__dict__.get("subpath_skipped") for u in units.values()]
    units["layer2.3"].run(torch.randn(1, 8, 4, 4), False)
    assert [u.__dict__.get("subpath_skipped") for u in units.values()] == before


def units_index(model, name):
    return [n for n, _ in skippable_units(model)].index(name)


def test_base_net_equals_every_skippable_block_skipped_by_hand():
    """The base-net (the recipe's second pass) computed module by module: mandatory blocks on
    their skip-aware batch norms, every skippable block reduced to its shortcut."""
    model = tiny_adn("resnet32-adn", shortcut="B")
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        h = F.relu(model.bn1(model.conv1(x)))
        for seq in stage_blocks(model):
            m = expected_mandatory(len(seq))
            for i, b in enumerate(seq):
                if i < m:
                    out = F.relu(b.bn1_skip(b.conv1(h)))
                    h = F.relu(b.bn2_skip(b.conv2(out)) + b.shortcut(h))
                else:
                    h = F.relu(b.shortcut(h))
        by_hand = model.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))
        mask = base_mask(model)
        assert mask == [int(i % 5 >= 3) for i in range(15)]
        with masked(model, mask):
            assert torch.equal(model(x), by_hand)
        assert get_mask(model) == [0] * 15
        # and it is not the same network as the base path on ordinary batch norms
        apply_mask(model, mask)
        for s in model._adn_stages:
            for b in s.mandatory:
                b.subpath_skipped = False
        assert not torch.allclose(model(x), by_hand)


# -- the recipe ------------------------------------------------------------------------------


def test_adn_step_is_the_two_pass_objective():
    """One step's gradients equal those of α·CE(super) + (1−α)·T²·KL(super.detach() ‖ base)."""
    model = tiny_adn("resnet20-adn").train()
    reference = copy.deepcopy(model)
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    recipe = get_recipe("adn")
    options = recipe.resolve_options({"alpha": 0.3, "temperature": 2.0})

    def loss_fn(logits, target):
        return F.cross_entropy(logits, target, label_smoothing=0.1)

    out = recipe.step(model, x, y, loss_fn, options)

    sup = reference(x)
    apply_mask(reference, base_mask(reference))
    base = reference(x)
    apply_mask(reference, [0] * 9)
    ce = F.cross_entropy(sup, y, label_smoothing=0.1)
    kd = (
        nn.KLDivLoss(reduction="batchmean")(
            F.log_softmax(base / 2.0, dim=1), F.softmax(sup.detach() / 2.0, dim=1)
        )
        * 4.0
    )
    (0.3 * ce + 0.7 * kd).backward()
    torch.testing.assert_close(out.parts["ce"], ce.detach())
    torch.testing.assert_close(out.parts["kd"], kd.detach())
    torch.testing.assert_close(out.loss, (0.3 * ce + 0.7 * kd).detach())
    torch.testing.assert_close(out.logits, sup.detach())
    grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if grads[name].grad is None:
            assert p.grad is None or not p.grad.any(), name
        else:
            torch.testing.assert_close(p.grad, grads[name].grad, msg=name)
    # the skip-aware batch norms learn from the base-net pass only, the skippable blocks
    # from the super-net pass only
    assert model.layer1[0].bn1_skip.weight.grad.abs().sum() > 0
    assert get_mask(model) == [0] * 9  # the step leaves the flags as it found them
    # running statistics: the skip-aware set saw one batch, as did the ordinary set
    assert int(model.layer1[0].bn1_skip.num_batches_tracked) == 1
    assert int(model.layer1[0].bn1.num_batches_tracked) == 1
    assert int(model.layer1[2].bn1.num_batches_tracked) == 1


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_adn_steps_lower_both_losses_on_a_fixed_batch(digits, alpha):
    torch.manual_seed(0)
    model = paretoskip.create_model("resnet20-adn", **DIGITS, widths=(8, 8, 16)).train()
    x, y = digits.train.x[:64], digits.train.y[:64]
    recipe = get_recipe("adn")
    options = recipe.resolve_options({"alpha": alpha})
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ce, kd = [], []
    for _ in range(60):
        opt.zero_grad()
        out = recipe.step(model, x, y, F.cross_entropy, options)
        opt.step()
        ce.append(float(out.parts["ce"]))
        kd.append(float(out.parts["kd"]))
    assert ce[-1] < 0.1 * ce[0]
    if alpha == 0.5:
        assert kd[-1] < 0.25 * kd[0]
    else:  # without the distillation term the base-net drifts away: the test can fail
        assert kd[-1] > kd[0]


def test_train_and_save_adn_records_recipe_and_round_trips(digits, tmp_path):
    from paretoskip.data import load_dataset

    data = load_dataset("digits", seed=0, limit=300)
    result = train_and_save(
        "resnet20-adn",
        data,
        tmp_path / "r20adn",
        recipe="adn",
        recipe_options={"alpha": 0.6, "temperature": 2},
        p_last=0.5,  # stochastic depth's option (a study file's default): not ADN's
        epochs=2,
        batch_size=64,
        threads=1,
        progress=False,
        model_kwargs={"widths": (8, 8, 16)},
    )
    assert result.settings["recipe"] == "adn"
    assert result.settings["passes_per_step"] == 2
    assert result.settings["recipe_options"] == {
        "alpha": 0.6,
        "temperature": 2,
        "subpath_p_last": 1.0,
    }
    assert {"loss_ce", "loss_kd"} <= set(result.history[-1])
    assert result.settings["p_last"] == 1.0
    assert all(m.p == 0 for m in result.model.modules() if isinstance(m, StochasticDepth))
    model, meta = load_checkpoint(result.checkpoint)
    assert meta["architecture"]["name"] == "resnet20-adn"
    assert meta["recipe"] == "adn"
    assert meta["training_cost"]["passes_per_step"] == 2
    for key, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_bad_options_name_the_value_and_what_is_accepted(digits):
    recipe = get_recipe("adn")
    for value in (-0.1, 1.5, True, "0.5", math.nan):
        with pytest.raises(
            ConfigError, match=r"alpha=.* is not accepted; alpha must be a number in \[0, 1\]"
        ):
            recipe.resolve_options({"alpha": value})
    for value in (0, -1.0, math.inf, None):
        with pytest.raises(ConfigError, match=r"temperature=.* is not accepted; .* > 0"):
            recipe.resolve_options({"temperature": value})
    with pytest.raises(
        ConfigError, match=r"subpath_p_last=0 is not accepted; subpath_p_last must be .* \(0, 1\]"
    ):
        recipe.resolve_options({"subpath_p_last": 0})
    with pytest.raises(
        ConfigError, match=r"does not take \['beta'\].*alpha, temperature, subpath_p_last"
    ):
        recipe.resolve_options({"beta": 1})
    assert recipe.resolve_options({"alpha": 0, "temperature": 0.1})["alpha"] == 0
    with pytest.raises(ConfigError, match=r"alpha=2 is not accepted"):
        train_model("resnet20-adn", digits, recipe="adn", recipe_options={"alpha": 2})
    with pytest.raises(
        ConfigError,
        match=r"needs a model with skippable sub-paths; 'resnet20' has none.*resnet20-adn",
    ):
        train_model("resnet20", digits, recipe="adn", epochs=1, progress=False)
    with pytest.raises(ConfigError, match=r"'resnet50' has none"):
        recipe.check_model(paretoskip.create_model("resnet50", num_classes=10))
    with pytest.raises(ConfigError, match=r"CifarResNet has none"):
        from paretoskip.models import CifarResNet

        recipe.check_model(CifarResNet(20))
    recipe.check_model(paretoskip.create_model("resnet50-adn", num_classes=10))


def test_stochastic_depth_only_inside_the_sub_paths():
    torch.manual_seed(0)
    model = paretoskip.create_model("resnet32-adn", **DIGITS, p_last=0.5)
    stages = adn_stages(model)
    units = dict(skippable_units(model))
    mandatory = [units[n] for s in stages for n in s.mandatory]
    skippable = [units[n] for s in stages for n in s.skippable]
    assert all(b.stochastic_depth.p == 0 for b in mandatory)
    rates = [b.stochastic_depth.p for b in skippable]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.5) and rates[0] > 0
    x = torch.randn(8, 1, 8, 8)
    model.train()
    with torch.no_grad(), masked(model, base_mask(model)):
        assert torch.equal(model(x), model(x))  # no randomness left in the base-net
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
    recipe = get_recipe("adn")
    assert recipe.model_kwargs(recipe.resolve_options({"subpath_p_last": 0.8})) == {"p_last": 0.8}


def test_skipping_a_sub_path_block_equals_its_stochastic_depth_drop():
    model = tiny_adn("resnet32-adn", p_last=0.5)
    block = model.layer2[4]
    x = torch.rand(4, 8, 4, 4)
    block.train()
    block.stochastic_depth.p = 1.0  # the branch is always dropped
    with torch.no_grad():
        dropped = block(x)
        block.eval()
        block.skip = True
        assert torch.equal(dropped, block(x))
        assert model.layer2[0].subpath_skipped is False  # layer2.3 still runs


# -- checkpoints, FLOPs, export ----------------------------------------------------------------


def test_checkpoint_round_trip_keeps_skip_aware_batch_norms(tmp_path):
    model = tiny_adn("resnet32-adn", shortcut="B")
    path = save_checkpoint(model, tmp_path / "adn", metadata={"recipe": "adn"})
    loaded, meta = load_checkpoint(path)
    assert meta["architecture"]["name"] == "resnet32-adn"
    assert meta["architecture"]["kwargs"]["shortcut"] == "B"
    assert type(loaded) is type(model)
    assert adn_stages(loaded) == adn_stages(model)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert any("bn2_skip.running_var" in k for k in loaded.state_dict())
    x = torch.randn(4, 1, 8, 8)
    for mask in ([0] * 15, base_mask(model), adn_space(model).mask_from_genes([0, 1, 1])):
        apply_mask(model, mask)
        apply_mask(loaded, mask)
        with torch.no_grad():
            assert torch.equal(model(x), loaded(x))


def test_flops_of_adn_masks_equal_a_direct_count():
    rng = random.Random(0)
    for name, kwargs in [
        ("resnet32-adn", {**DIGITS, "shortcut": "B"}),
        ("resnet50-adn", {"num_classes": 10, "input_size": 32}),
    ]:
        model = paretoskip.create_model(name, **kwargs)
        table = count_costs(model)
        plain = paretoskip.create_model(name.removesuffix("-adn"), **kwargs)
        assert table.full_flops == count_flops(plain)  # duplicated batch norms cost nothing
        for space in (adn_space(model), adn_space(model, tied=False)):
            for _ in range(3):
                mask = space.mask_from_genes([rng.randint(0, 1) for _ in range(space.n_genes)])
                apply_mask(model, mask)
                assert table.flops(mask) == count_flops(model), (name, mask.bitstring)
        apply_mask(model, base_mask(model))
        assert table.flops(base_mask(model)) == count_flops(model) < table.full_flops


def test_params_of_adn_masks_count_only_the_batch_norms_in_use():
    """The full super-net and the plain network have the same parameter count (a skip-path
    batch norm is used by no configuration that runs its block); a configuration's count
    equals the parameters of its exported, pruned network."""
    from paretoskip.export import export_configuration

    for name in ("resnet20-adn", "resnet32-adn"):
        model = paretoskip.create_model(name, **DIGITS)
        table = count_costs(model)
        plain = paretoskip.create_model(name.removesuffix("-adn"), **DIGITS)
        assert table.full_params == sum(p.numel() for p in plain.parameters())
        assert table.full_params < sum(p.numel() for p in model.parameters())
    model = tiny_adn("resnet32-adn")
    table = count_costs(model)
    x = torch.randn(2, 1, 8, 8)
    mask = adn_space(model).mask_from_genes([1, 0, 0])
    exported = export_configuration(model, mask, example_input=x)
    used = sum(v.numel() for k, v in exported.state_dict().items() if not _is_buffer(exported, k))
    assert table.params(mask) <= used


def _is_buffer(module, key):
    return key in dict(module.named_buffers())


def test_export_keeps_the_batch_norm_selection():
    from paretoskip.export import export_configuration

    model = tiny_adn("resnet32-adn")
    x = torch.randn(2, 1, 8, 8)
    for mask in (base_mask(model), adn_space(model).mask_from_genes([1, 0, 1])):
        exported = export_configuration(model, mask, example_input=x)
        with torch.no_grad(), masked(model, mask):
            torch.testing.assert_close(exported(x), model(x))


# -- spaces and exact prefix-shared evaluation ---------------------------------------------


def test_spaces():
    m56 = paretoskip.create_model("resnet56-adn", **DIGITS)
    tied, finer = adn_space(m56), adn_space(m56, tied=False)
    assert (tied.size, finer.size) == (8, 2**12)
    assert tied.gene_names[0] == "layer1.5+layer1.6+layer1.7+layer1.8"
    assert (
        set(tied.locked) == set(finer.locked) == {n for s in adn_stages(m56) for n in s.mandatory}
    )
    r50 = paretoskip.create_model("resnet50-adn", num_classes=10, input_size=32)
    assert adn_space(r50).size == 16 and adn_space(r50, tied=False).size == 2**7
    assert adn_space(r50).to_bitstring(adn_space(r50).mask_from_genes([1] * 4)) == "".join(
        map(str, base_mask(r50))
    )


def _random_masks(space: SkipSpace, n: int, seed: int) -> list:
    rng = random.Random(seed)
    masks = [
        space.mask_from_genes([rng.randint(0, 1) for _ in range(space.n_genes)]) for _ in range(n)
    ]
    return masks + [space.full, space.mask_from_genes([1] * space.n_genes)]


@pytest.mark.parametrize("which", ["tied", "finer", "every unit"])
def test_prefix_shared_evaluation_is_exact(digits, which):
    model = tiny_adn("resnet32-adn")
    space = {
        "tied": adn_space(model),
        "finer": adn_space(model, tied=False),
        "every unit": SkipSpace.from_model(model),
    }[which]
    ev = Evaluator(model, digits, space=space, settings=MeasureSettings(eval_batch=100))
    masks = _random_masks(space, 24, seed=1)
    results = ev.evaluate_many(masks)
    naive = [ev.naive_accuracy(m) for m in masks]
    assert [r["accuracy"] for r in results] == naive
    assert len(set(naive)) > 3  # the masks really differ
    assert ev.test_accuracy(masks[:4]) == [ev.naive_accuracy(m, "test") for m in masks[:4]]
    for r, m in zip(results, masks):
        assert r["flops"] == ev.costs.flops(m)
    assert get_mask(model) == [0] * 15
    assert not any(getattr(u, "subpath_skipped", False) for _, u in skippable_units(model))


def test_prefix_tree_on_raw_bits_would_be_wrong(digits):
    """The check above can fail: branching on the skip bits alone (ignoring that a mandatory
    block's batch norms depend on a later bit) gives other accuracies."""
    import dataclasses

    model = tiny_adn("resnet32-adn")
    space = adn_space(model, tied=False)
    masks = _random_masks(space, 24, seed=2)
    ev = Evaluator(model, digits, space=space)
    exact = ev.accuracy_many(masks)
    wrong = Evaluator(model, digits, space=space)
    wrong._parts = dataclasses.replace(wrong._parts, states=None)
    assert wrong.accuracy_many(masks) != exact
