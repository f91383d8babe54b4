import random

import pytest
import torch

import paretoskip
from paretoskip.measure import count_costs, count_flops, measure_latency
from paretoskip.models import apply_mask, skippable_units


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("resnet20", {}),
        ("resnet56", {}),
        ("resnet20", {"shortcut": "B", "in_channels": 1, "input_size": 28}),
        ("resnet18", {"input_size": 64}),
    ],
)
def test_flops_table_matches_direct_count(name, kwargs):
    model = paretoskip.create_model(name, **kwargs)
    table = count_costs(model)
    n = len(skippable_units(model))
    rng = random.Random(0)
    masks = [[0] * n, [1] * n] + [[rng.randint(0, 1) for _ in range(n)] for _ in range(5)]
    for mask in masks:
        apply_mask(model, mask)
        assert table.flops(mask) == count_flops(model), mask
        # parameters actually used by the masked forward pass
        used = 0
        seen = set()
        hooks = []
        called = set()
        for mod in model.modules():
            hooks.append(
                mod.register_forward_hook(lambda m, *_, seen_ids=called: seen_ids.add(id(m)))
            )
        with torch.no_grad():
            model.eval()(torch.zeros(1, *model.input_shape))
        for h in hooks:
            h.remove()
        for mod in model.modules():
            if id(mod) in called:
                for p in mod.parameters(recurse=False):
                    if id(p) not in seen:
                        seen.add(id(p))
                        used += p.numel()
        assert table.params(mask) == used, mask


def test_known_flops():
    table = count_costs(paretoskip.create_model("resnet56"))
    assert table.full_flops == pytest.approx(251.0e6, rel=2e-3)
    assert count_costs(paretoskip.create_model("resnet20")).full_flops == pytest.approx(
        81.1e6, rel=2e-3
    )


def test_projection_shortcut_costs_flops_when_skipped():
    table = count_costs(paretoskip.create_model("resnet20", shortcut="B"))
    assert table.skip_flops[3] > 0 and table.skip_flops[0] == 0
    assert table.skip_params[3] > 0


def test_latency_stats_and_mask_restored():
    model = paretoskip.create_model("resnet20", in_channels=1, input_size=8)
    apply_mask(model, "000000001")
    stats = measure_latency(model, [1] * 9, batch_size=4, repeats=6, warmup=1, threads=1)
    assert stats.repeats == 6 and stats.batch_size == 4 and stats.threads == 1
    assert stats.median > 0 and stats.full_median > 0 and stats.iqr >= 0
    assert stats.ratio > 0
    from paretoskip.models import get_mask

    assert get_mask(model) == [0] * 8 + [1]
    with pytest.raises(ValueError, match="repeats=1"):
        measure_latency(model, [0] * 9, repeats=1)
