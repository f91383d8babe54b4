"""export_configuration: a standalone module without the skipped blocks, same outputs and FLOPs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import paretoskip
from paretoskip.errors import ConfigError, MaskError
from paretoskip.export import export_configuration, load_exported, prune_skipped, save_exported
from paretoskip.models import apply_mask, get_mask, skippable_units

# TorchScript is deprecated in recent torch: its FutureWarnings are expected here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")

MODELS = {
    "resnet20": ("resnet20", {"num_classes": 10, "in_channels": 1, "input_size": 8}),
    "resnet20B": (
        "resnet20",
        {"num_classes": 10, "in_channels": 1, "input_size": 8, "shortcut": "B"},
    ),
    "resnet18": ("resnet18", {"num_classes": 10, "input_size": 32, "p_last": 0.5}),
}
# Shortcut children that a skipped unit keeps (the only parameters it may still own).
SHORTCUT_CHILDREN = ("shortcut", "downsample")


def make(key):
    name, kwargs = MODELS[key]
    torch.manual_seed(0)
    model = paretoskip.create_model(name, **kwargs).eval()
    # Non-trivial batch-norm statistics, so that a wrong path cannot match by accident.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model


def example(model, batch=3):
    return torch.randn(batch, *model.input_shape)


def masks_for(n):
    return [
        "0" * n,
        "1" + "0" * (n - 2) + "1",
        "01" * (n // 2) + "0" * (n % 2),
        "1" * (n - 1) + "0",  # all skipped but the last
        "0" + "1" * (n - 1),  # all skipped but the first
    ]


def masked(model, mask):
    m = copy.deepcopy(model).eval()
    apply_mask(m, mask)
    return m


def flops(module, x):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


def exported_state_dict(exported):
    program = getattr(exported, "paretoskip_exported_program", None)
    return dict(program.state_dict) if program is not None else exported.state_dict()


def check_pruned_state_dict(model, mask, state):
    units = skippable_units(model)
    original = model.state_dict()
    skipped = [n for (n, _), b in zip(units, mask) if b == "1"]
    for key in original:
        owner = next((u for u in skipped if key.startswith(u + ".")), None)
        keep = owner is None or key[len(owner) + 1 :].split(".")[0] in SHORTCUT_CHILDREN
        assert (key in state) == keep, (key, keep)
        if keep:
            torch.testing.assert_close(state[key], original[key])
    return skipped


def branch_convs(unit):
    """Convolutions of a unit outside its shortcut path."""
    shortcut = [getattr(unit, c) for c in SHORTCUT_CHILDREN if getattr(unit, c, None) is not None]
    in_shortcut = {id(m) for s in shortcut for m in s.modules()}
    return sum(1 for m in unit.modules() if isinstance(m, nn.Conv2d) and id(m) not in in_shortcut)


def conv_nodes(graph_module):
    return sum(
        1 for n in graph_module.graph.nodes if n.op == "call_function" and "conv" in str(n.target)
    )


@pytest.mark.parametrize("key", list(MODELS))
def test_torch_export_matches_masked_model(key):
    model = make(key)
    n = len(skippable_units(model))
    x = example(model)
    for mask in masks_for(n):
        exported = export_configuration(model, mask, example_input=x)
        ref = masked(model, mask)
        y = torch.randn_like(x)  # not the tracing input
        with torch.no_grad():
            torch.testing.assert_close(exported(y), ref(y))
            torch.testing.assert_close(exported(x), ref(x))
        # Exactly the masked model's work, and no skipped convolution in the graph.
        assert flops(exported, x) == flops(ref, x), mask
        n_convs = sum(1 for m in ref.modules() if isinstance(m, nn.Conv2d))
        skipped_convs = sum(
            branch_convs(u) for (_, u), b in zip(skippable_units(ref), mask) if b == "1"
        )
        assert conv_nodes(exported) == n_convs - skipped_convs, mask
        # The skipped blocks' weights are gone; everything else is kept unchanged.
        skipped = check_pruned_state_dict(model, mask, exported_state_dict(exported))
        assert exported.paretoskip_export["skipped"] == skipped
        assert exported.paretoskip_export["mask"] == mask


@pytest.mark.parametrize("key", ["resnet20B", "resnet18"])
def test_torchscript_matches_masked_model(key):
    model = make(key)
    n = len(skippable_units(model))
    x = example(model)
    for mask in masks_for(n)[1:4]:
        exported = export_configuration(model, mask, example_input=x, method="torchscript")
        assert isinstance(exported, torch.jit.ScriptModule)
        ref = masked(model, mask)
        y = torch.randn_like(x)
        with torch.no_grad():
            torch.testing.assert_close(exported(y), ref(y))
        assert flops(exported, x) == flops(ref, x)
        check_pruned_state_dict(model, mask, exported.state_dict())


@pytest.mark.parametrize("method", ["torch.export", "torchscript"])
def test_save_load_round_trip(tmp_path, method):
    model = make("resnet20B")
    mask = "101000011"
    x = example(model)
    exported = export_configuration(model, mask, example_input=x, method=method)
    path = tmp_path / ("m.pt2" if method == "torch.export" else "m.pt")
    save_exported(exported, path)
    loaded = load_exported(path)
    y = torch.randn_like(x)
    with torch.no_grad():
        torch.testing.assert_close(loaded(y), masked(model, mask)(y))
    assert loaded.paretoskip_export == exported.paretoskip_export
    assert loaded.paretoskip_export["skipped"] == ["layer1.0", "layer1.2", "layer3.1", "layer3.2"]
    check_pruned_state_dict(model, mask, exported_state_dict(loaded))


def test_round_trip_any_suffix_and_program(tmp_path):
    model = make("resnet20")
    exported = export_configuration(model, "0" * 8 + "1")
    save_exported(exported, tmp_path / "model.bin")  # format is read from the content
    assert load_exported(tmp_path / "model.bin").paretoskip_export["mask"] == "0" * 8 + "1"
    save_exported(exported.paretoskip_exported_program, tmp_path / "p.pt2")
    x = example(model, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path / "p.pt2")(x), exported(x))


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_exported(tmp_path / "nope.pt2")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="junk.pt2"):
        load_exported(junk)
    with pytest.raises(ConfigError, match="cannot save"):
        save_exported(nn.Linear(2, 2), tmp_path / "x.pt2")


def test_default_example_input_and_member_dict():
    model = make("resnet20")
    member = {"mask": "110000000", "metrics": {}}
    exported = export_configuration(model, member)  # example input from model.input_shape
    assert exported.paretoskip_export["input_shape"] == [2, 1, 8, 8]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), masked(model, "110000000")(x))


def test_model_is_not_modified():
    model = make("resnet18").train()
    apply_mask(model, "00100000")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_configuration(model, "11000011", example_input=example(model, 2))
    assert model.training
    assert get_mask(model) == [0, 0, 1, 0, 0, 0, 0, 0]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(hasattr(u, "conv1") for _, u in skippable_units(model))


def test_prune_skipped_keeps_only_shortcut_children():
    model = make("resnet18")
    pruned = prune_skipped(model, "10010000", example(model, 2))
    units = dict(skippable_units(pruned))
    assert [n for n, _ in units["layer1.0"].named_children()] == []  # identity shortcut
    assert [n for n, _ in units["layer2.1"].named_children()] == []
    assert [n for n, _ in units["layer2.0"].named_children()] != []  # not skipped
    pruned4 = prune_skipped(model, "00000010", example(model, 2))
    assert [n for n, _ in dict(skippable_units(pruned4))["layer4.0"].named_children()] == [
        "downsample"
    ]


def test_bad_method_and_masks():
    model = make("resnet20")
    with pytest.raises(
        ConfigError, match="unknown export method 'onnx'.*torch.export.*torchscript"
    ):
        export_configuration(model, "0" * 9, method="onnx")
    with pytest.raises(MaskError, match="9 skippable units"):
        export_configuration(model, "0" * 8)
    with pytest.raises(MaskError, match="only '0'"):
        export_configuration(model, "0" * 8 + "x")
    with pytest.raises(MaskError):
        export_configuration(model, [0] * 8 + [2])
    with pytest.raises(ConfigError, match="example_input"):
        export_configuration(nn.Sequential(model), "0" * 9)
