import pytest
import torch

import paretoskip
from paretoskip.errors import ConfigError, MaskError
from paretoskip.models import apply_mask, get_mask, model_parts, skippable_units

CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
TV = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2"]


@pytest.mark.parametrize("name", CIFAR)
@pytest.mark.parametrize("shape", [(1, 8), (1, 28), (3, 32)])
def test_cifar_shapes(name, shape):
    c, s = shape
    m = paretoskip.create_model(name, num_classes=7, in_channels=c, input_size=s).eval()
    depth = int(name[6:])
    assert len(skippable_units(m)) == 3 * (depth - 2) // 6
    with torch.no_grad():
        assert m(torch.randn(2, c, s, s)).shape == (2, 7)


@pytest.mark.parametrize("name", TV)
def test_torchvision_shapes(name):
    m = paretoskip.create_model(name, num_classes=5, input_size=32).eval()
    units = skippable_units(m)
    expected = {"resnet18": 8, "resnet34": 16, "resnet50": 16, "resnet101": 33, "resnet152": 50}
    assert len(units) == expected.get(name, 16)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_torchvision_keeps_state_dict_keys():
    import torchvision

    ours = paretoskip.create_model("resnet18", p_last=0.5)
    theirs = torchvision.models.resnet18(weights=None)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())


def test_unit_names_in_execution_order():
    m = paretoskip.create_model("resnet20")
    names = [n for n, _ in skippable_units(m)]
    assert names == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]


def test_unknown_model_lists_available():
    with pytest.raises(ConfigError, match="resnet56"):
        paretoskip.create_model("resnet57")


def test_bad_depth():
    with pytest.raises(ConfigError, match="6n\\+2"):
        paretoskip.models.CifarResNet(depth=21)


def test_stochastic_depth_decays_linearly():
    m = paretoskip.create_model("resnet20", p_last=0.5)
    probs = [u.stochastic_depth.p for _, u in skippable_units(m)]
    assert probs[0] == pytest.approx(0.5 / 9)
    assert probs[-1] == pytest.approx(0.5)
    assert probs == sorted(probs)


def _sd_dropped(block, sd, x):
    """Run block in training-mode stochastic depth that drops every sample's branch."""
    sd.p = 1.0
    sd.train()
    with torch.no_grad():
        return block(x)


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("index", [0, 3])  # identity block and a downsampling block
def test_skip_equals_stochastic_depth_drop_cifar(shortcut, index):
    torch.manual_seed(0)
    m = paretoskip.create_model("resnet20", shortcut=shortcut, p_last=0.5).eval()
    # give batch norms non-trivial running statistics
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    name, block = skippable_units(m)[index]
    x = torch.randn(4, block.conv1.in_channels, 16, 16)
    dropped = _sd_dropped(block, block.stochastic_depth, x)
    block.stochastic_depth.eval()
    block.skip = True
    with torch.no_grad():
        skipped = block(x)
    assert torch.equal(dropped, skipped)
    block.skip = False
    with torch.no_grad():
        assert not torch.equal(block(x), skipped)


@pytest.mark.parametrize(
    "name,index", [("resnet18", 0), ("resnet18", 2), ("resnet50", 0), ("resnet50", 1)]
)
def test_skip_equals_stochastic_depth_drop_torchvision(name, index):
    torch.manual_seed(0)
    m = paretoskip.create_model(name, p_last=0.5).eval()
    _, block = skippable_units(m)[index]
    in_ch = block.conv1.in_channels
    x = torch.randn(2, in_ch, 16, 16)
    dropped = _sd_dropped(block, block.stochastic_depth, x)
    block.stochastic_depth.eval()
    block.skip = True
    with torch.no_grad():
        skipped = block(x)
    assert torch.equal(dropped, skipped)


def test_sd_random_drop_matches_skip_for_dropped_rows():
    """With p=0.5 per-row drops, rows whose branch was dropped equal the skipped output."""
    torch.manual_seed(1)
    m = paretoskip.create_model("resnet20", shortcut="B").eval()
    _, block = skippable_units(m)[3]
    x = torch.randn(64, 16, 8, 8)
    block.stochastic_depth.p = 0.5
    block.stochastic_depth.train()
    with torch.no_grad():
        mixed = block(x)
        block.stochastic_depth.eval()
        full = block(x)
        block.skip = True
        skipped = block(x)
    dropped_rows = [i for i in range(64) if torch.equal(mixed[i], skipped[i])]
    assert 10 < len(dropped_rows) < 54
    for i in set(range(64)) - set(dropped_rows):
        assert not torch.equal(mixed[i], full[i])  # survivors are scaled by 1/(1-p)


def test_apply_mask_and_errors():
    m = paretoskip.create_model("resnet20")
    apply_mask(m, "100000001")
    assert get_mask(m) == [1, 0, 0, 0, 0, 0, 0, 0, 1]
    apply_mask(m, [0] * 9)
    assert get_mask(m) == [0] * 9
    with pytest.raises(MaskError, match="8 entries.*9 skippable"):
        apply_mask(m, [0] * 8)
    with pytest.raises(MaskError, match="'2'"):
        apply_mask(m, "000000002")
    with pytest.raises(MaskError, match="not 0/1"):
        apply_mask(m, [0] * 8 + [3])


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_model_parts_compose_to_forward(name):
    torch.manual_seed(0)
    m = paretoskip.create_model(name, num_classes=10).eval()
    apply_mask(m, [i % 2 for i in range(len(skippable_units(m)))])
    parts = model_parts(m)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = parts.stem(x)
        for _, unit in parts.units:
            h = unit(h)
        assert torch.equal(parts.head(h), m(x))


def test_skipping_everything_still_runs():
    m = paretoskip.create_model("resnet20", in_channels=1, input_size=8).eval()
    apply_mask(m, "1" * 9)
    with torch.no_grad():
        assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)
