"""Per-input gating (paretoskip.dynamic): decisions, grouped execution, exact FLOPs, dual mode."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import make_tiny_model
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import paretoskip
from paretoskip.data import load_dataset
from paretoskip.dynamic import (
    DualModel,
    GatedModel,
    dynamic_family,
    load_gated,
    profile,
    save_gated,
)
from paretoskip.errors import BudgetError, CheckpointError, ConfigError, ParetoSkipError
from paretoskip.measure import count_costs
from paretoskip.models import apply_mask, skippable_units

STYLES = [(g, m) for g in ("block", "policy") for m in ("layer", "channel", "lc")]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def randomised(gated: GatedModel, seed: int = 0) -> GatedModel:
    """Gates with random weights, so that decisions differ between inputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gated.gates.parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * 3.0 / fan_in**0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return gated.eval()


_BUILT: dict = {}


def gated_model(gate: str, mode: str, seed: int = 0, **kw) -> GatedModel:
    """A gated tiny model with random gates (built once per setting, then copied)."""
    key = (gate, mode, seed, tuple(sorted((k, str(v)) for k, v in kw.items())))
    if key not in _BUILT:
        _BUILT[key] = randomised(GatedModel(make_tiny_model(), mode=mode, gate=gate, **kw), seed)
    return copy.deepcopy(_BUILT[key])


def assert_varied(out, mode: str) -> None:
    """The decisions are not trivial: some units skipped and some run, channel groups dropped."""
    if mode in ("layer", "lc"):
        assert out.skipped.any() and (~out.skipped).any()
    if mode in ("channel", "lc"):
        run = ~out.skipped
        assert (~out.groups[run]).any(), "no channel group was ever dropped"
    assert len(set(out.configurations())) >= 2


# --------------------------------------------------------------------------- decisions


@pytest.mark.parametrize("gate, mode", STYLES)
def test_decisions_depend_on_the_input_alone(digits, gate, mode):
    gated = gated_model(gate, mode)
    x = digits.test.x[:64]
    out = gated.run(x)
    assert_varied(out, mode)
    again = gated.run(x)
    assert torch.equal(out.logits, again.logits) and torch.equal(out.flops, again.flops)
    # batch 1, a permuted batch and a batch mixed with other inputs give the same decisions
    ones = [gated.run(x[i : i + 1]) for i in range(64)]
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    shuffled = gated.run(x[perm])
    mixed = gated.run(torch.cat([digits.test.x[100:140], x[:24]]))
    for field in ("skipped", "groups", "kept", "flops"):
        a = getattr(out, field)
        assert torch.equal(torch.cat([getattr(o, field) for o in ones]), a), field
        assert torch.equal(getattr(shuffled, field), a[perm]), field
        assert torch.equal(getattr(mixed, field)[40:], a[:24]), field
    assert out.configurations() == [c for o in ones for c in o.configurations()]
    # logits agree up to the kernels' batch-size-dependent rounding (float32)
    torch.testing.assert_close(
        torch.cat([o.logits for o in ones]), out.logits, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(shuffled.logits, out.logits[perm], rtol=1e-4, atol=1e-4)


def test_gated_forward_in_eval_mode_is_grouped_execution(digits):
    gated = gated_model("block", "lc")
    x = digits.test.x[:16]
    assert torch.equal(gated(x), gated.run(x).logits)
    gated.train()
    assert gated.gates.training and not gated.backbone.training
    assert not any(m.training for m in gated.backbone.modules())


# --------------------------------------------------------------------------- execution


@pytest.mark.parametrize("gate, mode", STYLES)
def test_grouped_execution_equals_per_input_masked_execution(digits, gate, mode):
    """In float64, so that the comparison is exact up to rounding (1e-10), not to float32's."""
    gated = gated_model(gate, mode).double()
    x = digits.test.x[:48].double()
    out = gated.run(x)
    assert_varied(out, mode)
    batched = gated.forward_masked(x, stochastic=False)
    assert torch.equal(batched.skipped, out.skipped)
    torch.testing.assert_close(batched.logits, out.logits, rtol=1e-10, atol=1e-10)
    for i in range(0, 48, 5):
        single = gated.forward_masked(x[i : i + 1], stochastic=False)
        assert torch.equal(single.skipped[0], out.skipped[i])
        torch.testing.assert_close(single.logits[0], out.logits[i], rtol=1e-10, atol=1e-10)
    # the masked path's cost is the grouped path's exact FLOPs
    torch.testing.assert_close(
        batched.cost * gated.costs.full, out.flops.double(), rtol=1e-12, atol=0
    )


def test_fresh_gates_compute_the_backbone(digits):
    """Gates start open with scales 1: the gated model is its backbone (plus the gates' cost)."""
    backbone = make_tiny_model()
    x = digits.test.x[:32]
    for gate, mode in STYLES:
        gated = GatedModel(copy.deepcopy(backbone), mode=mode, gate=gate).eval()
        out = gated.run(x)
        assert not out.skipped.any() and out.groups.all()
        torch.testing.assert_close(out.logits, backbone(x), rtol=1e-5, atol=1e-5)
        assert (out.flops == gated.costs.full + sum(gated.costs.gate) + gated.costs.policy).all()


# --------------------------------------------------------------------------- FLOPs


def _count(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops())


def _executed_configuration(backbone: nn.Module, skipped, kept_channels) -> nn.Module:
    """The backbone rebuilt as the static network one input executed: skipped units flagged,
    each kept unit's inner convolution cut to its kept filters (plain nn modules)."""
    net = copy.deepcopy(backbone).eval()
    units = skippable_units(net)
    apply_mask(net, [int(s) for s in skipped])
    for (_, unit), s, chans in zip(units, skipped, kept_channels):
        if s or chans is None:
            continue
        if len(chans) == 0:  # no inner channel: only the shortcut is computed
            unit.skip = True
            continue
        c1, c2 = unit.conv1, unit.conv2
        new1 = nn.Conv2d(c1.in_channels, len(chans), 3, c1.stride, 1, bias=False)
        new1.weight.data = c1.weight.data[chans].clone()
        new2 = nn.Conv2d(len(chans), c2.out_channels, 3, 1, 1, bias=False)
        new2.weight.data = c2.weight.data[:, chans].clone()
        bn = nn.BatchNorm2d(len(chans)).eval()
        unit.conv1, unit.bn1, unit.conv2 = new1, bn, new2
    return net


@pytest.mark.parametrize("gate, mode", STYLES)
def test_per_input_flops_equal_a_direct_count(digits, gate, mode):
    gated = gated_model(gate, mode)
    x = digits.test.x[:40]
    out = gated.run(x)
    assert_varied(out, mode)
    groups = [lay.channel_group() for lay in gated.layouts]
    for i in range(0, 40, 3):
        # 1. the grouped execution itself, at batch 1, under the counter
        assert _count(gated.run, x[i : i + 1]) == int(out.flops[i])
        # 2. an independent count: the executed static network plus the gate networks run
        kept = []
        for u, lay in enumerate(gated.layouts):
            if not lay.groups:
                kept.append(None)
                continue
            keep = out.groups[i, u, : len(lay.groups)]
            kept.append(torch.nonzero(keep[groups[u]]).flatten())
        net = _executed_configuration(gated.backbone, out.skipped[i].tolist(), kept)
        total = _count(net, x[i : i + 1])
        if gated.gates.upfront:
            total += _count(gated.gates.plan, net.forward_stem(x[i : i + 1]))
        else:
            h = net.forward_stem(x[i : i + 1])
            for u, (_, unit) in enumerate(skippable_units(net)):
                if gated.layouts[u].n_outputs:
                    total += _count(gated.gates.unit, u, h)
                h = unit(h)
        assert total == int(out.flops[i]), f"input {i}"
    # grouping really saves the work: the whole batch costs the sum of its inputs
    assert _count(gated.run, x) == int(out.flops.sum())


def test_cost_table_matches_the_static_counter():
    backbone = make_tiny_model()
    table = count_costs(backbone)
    for mode in ("layer", "lc"):
        costs = GatedModel(backbone, mode=mode).costs
        assert costs.full == table.full_flops and costs.base == table.base_flops
        assert [r[-1] for r in costs.run] == list(table.run_flops)
        assert list(costs.skip) == list(table.skip_flops)
        for mask in ("000000000", "101010101", "111111111"):
            assert costs.static([c == "1" for c in mask]) == table.flops([int(c) for c in mask])


# --------------------------------------------------------------------------- dual mode


def _static_members(backbone: nn.Module, split, n: int = 24) -> list[tuple[str, float, int]]:
    table = count_costs(backbone)
    gen = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        bits = (torch.rand(9, generator=gen) < 0.5).int().tolist()
        apply_mask(backbone, bits)
        with torch.no_grad():
            acc = float((backbone(split.x).argmax(1) == split.y).float().mean())
        out.append(("".join(map(str, bits)), acc, table.flops(bits)))
    apply_mask(backbone, [0] * 9)
    return out


@pytest.mark.parametrize("gate, mode", STYLES)
@pytest.mark.parametrize("fallback", ["static", "prefix"])
def test_dual_mode_never_exceeds_its_budget(digits, gate, mode, fallback):
    gated = gated_model(gate, mode)
    members = _static_members(copy.deepcopy(gated.backbone), digits.val)
    x = digits.test.x
    free = gated.run(x)
    costs = gated.costs
    static = members if fallback == "static" else None
    middle = (int(free.flops.min()) + int(free.flops.max())) // 2
    for budget in (costs.minimum, int(0.25 * costs.full), middle, int(free.flops.max())):
        dual = DualModel(gated, budget, static=static, fallback=fallback)
        out = dual.run(x)
        assert int(out.flops.max()) <= budget
        # inputs that were not capped ran exactly their gated decisions
        free_rows = out.capped == 0
        assert torch.equal(out.flops[free_rows], free.flops[free_rows])
        assert torch.equal(out.skipped[free_rows], free.skipped[free_rows])
        if budget >= int(free.flops.max()):
            assert not out.capped.any()
            assert torch.equal(out.flops, free.flops) and torch.equal(out.logits, free.logits)
        if budget < int(free.flops.min()):
            assert out.capped.all()
        # the bookkeeping is the real cost: count some capped inputs directly
        for i in torch.nonzero(out.capped).flatten()[:3].tolist():
            assert _count(dual.run, x[i : i + 1]) == int(out.flops[i])
        if fallback == "prefix":
            assert not (out.capped == 1).any()
    low = DualModel(gated, int(free.flops.max()) - 1, static=static, fallback=fallback)
    report = profile(low, digits.test)
    assert report.budget == int(free.flops.max()) - 1
    assert 0 < report.to_dict()["capped_share"] <= 1
    assert int(report.flops.max()) <= report.budget


def test_policy_dual_mode_replaces_an_over_budget_plan_by_the_best_static_member(digits):
    gated = gated_model("policy", "layer")
    members = _static_members(copy.deepcopy(gated.backbone), digits.val)
    budget = int(0.45 * gated.costs.full)
    dual = DualModel(gated, budget, static=members)
    out = dual.run(digits.test.x)
    fitting = [m for m in members if m[2] + gated.costs.policy <= budget]
    best = max(fitting, key=lambda m: (m[1], -m[2]))
    replaced = torch.nonzero(out.capped == 1).flatten()
    assert replaced.numel() > 0
    for i in replaced.tolist():
        mask = "".join("1" if s else "0" for s in out.skipped[i].tolist())
        assert mask == best[0] and not out.gated[i].any()
        assert int(out.flops[i]) == best[2] + gated.costs.policy


def test_dual_mode_accepts_a_front_file(tmp_path, digits):
    gated = gated_model("block", "lc")
    members = _static_members(copy.deepcopy(gated.backbone), digits.val, n=6)
    front = {
        "schema_version": 1,
        "space": {"units": list(gated.unit_names)},
        "members": [
            {"mask": m, "metrics": {"accuracy": {"value": a}, "flops": {"value": f}}}
            for m, a, f in members
        ],
    }
    path = tmp_path / "front.json"
    path.write_text(json.dumps(front))
    budget = int(0.3 * gated.costs.full)
    a = DualModel(gated, budget, static=path).run(digits.test.x[:64])
    b = DualModel(gated, budget, static=members).run(digits.test.x[:64])
    assert torch.equal(a.flops, b.flops) and torch.equal(a.skipped, b.skipped)
    front["space"]["units"] = list(reversed(gated.unit_names))
    path.write_text(json.dumps(front))
    with pytest.raises(ConfigError, match="made for units"):
        DualModel(gated, budget, static=path)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"mode": "depth"}, ["mode='depth'", "layer, channel, lc"]),
        ({"gate": "lstm"}, ["gate='lstm'", "block, policy"]),
        ({"channel_groups": 40}, ["channel_groups=40", "accepted: 1 … 16"]),
        ({"channel_groups": 0}, ["channel_groups=0", "integer >= 1"]),
        ({"hidden": 2.5}, ["hidden=2.5", "integer >= 1"]),
        ({"never_skip": ["layer9.0"]}, ["['layer9.0']", "layer1.0"]),
    ],
)
def test_bad_gate_settings_are_refused(kwargs, words):
    with pytest.raises(ConfigError) as err:
        GatedModel(make_tiny_model(), **kwargs)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize(
    "budget, kwargs, exc, words",
    [
        (-5, {}, ConfigError, ["budget=-5", "FLOPs per input", "'50%'"]),
        ("half", {}, ConfigError, ["budget='half'", "percentage"]),
        ("0%", {}, ConfigError, ["budget='0%'"]),
        (10, {}, BudgetError, ["budget=10", "accepted: budgets >="]),
        ("50%", {"fallback": "greedy"}, ConfigError, ["fallback='greedy'", "static, prefix"]),
        ("50%", {"fallback": "static"}, ConfigError, ["needs static configurations"]),
        ("50%", {"static": [("0101", 0.9, 10)]}, ConfigError, ["'0101'", "9 skippable units"]),
        ("50%", {"static": [("000000000", 0.9, 10)]}, ConfigError, ["cost 10 FLOPs", "counts"]),
        (
            "50%",
            {"static": [("000000000", "high", 10)]},
            ConfigError,
            ["(mask bitstring, accuracy, flops)"],
        ),
    ],
)
def test_bad_budgets_are_refused(budget, kwargs, exc, words):
    gated = GatedModel(make_tiny_model(), mode="layer")
    with pytest.raises(exc) as err:
        DualModel(gated, budget, **kwargs)
    assert isinstance(err.value, ParetoSkipError)
    for w in words:
        assert w in str(err.value)


def test_profile_and_family(digits):
    gated = gated_model("block", "lc")
    val, test = profile(gated, digits.val, split_name="val"), profile(gated, digits.test)
    direct = gated.run(digits.test.x)
    assert test.n == len(digits.test) and torch.equal(torch.from_numpy(test.flops), direct.flops)
    assert test.flops_mean == pytest.approx(direct.flops.double().mean().item())
    assert test.flops_std == pytest.approx(direct.flops.double().std(unbiased=False).item())
    assert test.distinct_configurations == len(set(direct.configurations()))
    assert test.accuracy == pytest.approx(
        (direct.logits.argmax(1) == digits.test.y).double().mean().item()
    )
    # batch size does not change the account
    small = profile(gated, digits.test, batch_size=7)
    assert (small.flops == test.flops).all() and small.accuracy == test.accuracy
    doc = test.to_dict()
    assert (
        doc["flops"]["percentiles"]["50"]
        <= doc["flops"]["percentiles"]["95"]
        <= doc["flops"]["max"]
    )
    dominated = {
        "val": {"accuracy": val.accuracy - 0.1, "flops": {"mean": val.flops_mean * 2, "std": 0.0}}
    }
    fam = dynamic_family(
        [{"target": 0.5, "val": val, "test": test}, {"target": 0.9, **dominated}],
        name="lc-gated",
        label="layer + channel gates",
        method=gated.gate_config,
    )
    text = json.dumps(fam, allow_nan=False)
    assert json.loads(text)["cost_basis"] == "mean_per_input"
    assert [m["strict"] for m in fam["members"]] == [True, False]
    assert fam["members"][0]["metrics"]["flops"]["basis"] == "mean_per_input"
    assert fam["members"][0]["test_accuracy"] == test.accuracy
    with pytest.raises(ConfigError, match="kind='static'"):
        dynamic_family([{"val": doc}], name="x", label="x", kind="static")
    with pytest.raises(ConfigError, match="batch_size=0"):
        profile(gated, digits.test, batch_size=0)


def test_gated_checkpoint_round_trip(tmp_path, digits):
    gated = gated_model("policy", "lc", channel_groups=2, never_skip=["layer2.0"])
    path = tmp_path / "gated"
    save_gated(gated, path, metadata={"target": 0.4})
    again, meta = load_gated(path)
    assert meta["target"] == 0.4 and meta["gates"]["never_skip"] == ["layer2.0"]
    x = digits.test.x[:32]
    a, b = gated.run(x), again.run(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.flops, b.flops)
    weights = tmp_path / "gated.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-8:] = b"\x00" * 8
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_gated(path)
    weights.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_gated(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_gated(tmp_path / "nothing")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_blocks_basic_and_bottleneck(name):
    """Channel gates on torchvision's basic block (inner conv1) and bottleneck (inner conv2)."""
    torch.manual_seed(0)
    backbone = paretoskip.create_model(name, num_classes=10, in_channels=1, input_size=16)
    for mod in backbone.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 1.5)
    gated = randomised(GatedModel(backbone.eval(), mode="lc", channel_groups=2)).double()
    x = torch.randn(8, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = gated.run(x)
    assert_varied(out, "lc")
    masked = gated.forward_masked(x, stochastic=False)
    torch.testing.assert_close(masked.logits, out.logits, rtol=1e-10, atol=1e-10)
    for i in range(8):
        assert _count(gated.run, x[i : i + 1]) == int(out.flops[i])
