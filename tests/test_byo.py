"""Bring your own model: torchvision ResNeXt, timm ResNet and a module of the user's own become
skippable, are cut for the evaluator, and (built by a factory reference) reload from their
checkpoint in a fresh process and run from a study file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import StochasticDepth

import paretoskip
from paretoskip.errors import ConfigError
from paretoskip.models import apply_mask, make_skippable, model_parts, skippable_units


def _chain(model, x):
    parts = model_parts(model)
    h = parts.stem(x)
    for _, unit in parts.units:
        h = unit(h)
    return parts.head(h)


def _check_skips_equal_dropped_branches(model, x):
    """Single-unit masks: the cut model equals the model, and differs from the full one."""
    torch.manual_seed(0)
    for mod in model.modules():  # timm zero-initialises each branch's last batch norm
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.running_mean.uniform_(-0.3, 0.3)
    model.eval()
    with torch.no_grad():
        full = model(x)
        n = len(skippable_units(model))
        for i in (0, n // 2, n - 1):
            mask = ["0"] * n
            mask[i] = "1"
            apply_mask(model, "".join(mask))
            got = model(x)
            torch.testing.assert_close(_chain(model, x), got)
            assert not torch.allclose(got, full)
        apply_mask(model, "0" * n)


def test_torchvision_resnext_is_detected_and_evaluated(digits):
    net = torchvision.models.resnext50_32x4d(num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    make_skippable(net, input_shape=(1, 8, 8))
    assert len(skippable_units(net)) == 16
    _check_skips_equal_dropped_branches(net, torch.randn(2, 1, 8, 8))
    # a model not built by create_model still gets a fingerprint and an evaluator
    ev = paretoskip.Evaluator(net, digits)
    skipped, full = ev.evaluate("1" + "0" * 15), ev.evaluate("0" * 16)
    assert 0.0 <= skipped["accuracy"] <= 1.0
    assert skipped["flops"] < full["flops"]


def test_timm_resnet_is_detected_cut_and_skips_exactly():
    timm = pytest.importorskip(
        "timm", reason="timm is not installed: pip install 'paretoskip[test]'"
    )
    net = timm.create_model("resnet18", num_classes=10, in_chans=1)
    make_skippable(net, input_shape=(1, 16, 16))
    units = [n for n, _ in skippable_units(net)]
    assert units == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    _check_skips_equal_dropped_branches(net, torch.randn(2, 1, 16, 16))
    # skipped = the block's output when its branch is dropped (drop_path in training mode)
    block = net.layer2[0]  # a projection shortcut
    x = torch.randn(3, 64, 8, 8)
    block.eval()
    block.skip = True
    skipped = block(x)
    block.skip = False
    block.drop_path = StochasticDepth(1.0, mode="row")
    block.drop_path.train()
    torch.testing.assert_close(block(x), skipped)


class PreActBlock(nn.Module):
    """x + f(x): skipped, it returns x."""

    def __init__(self, c):
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.f(x)


class OwnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.blocks = nn.Sequential(PreActBlock(8), PreActBlock(8), PreActBlock(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_own_module_named_units():
    net = make_skippable(
        OwnNet(), ["blocks.0", "blocks.1", "blocks.2"], shortcut="identity", input_shape=(1, 8, 8)
    )
    _check_skips_equal_dropped_branches(net, torch.randn(4, 1, 8, 8))
    x = torch.randn(2, 8, 8, 8)
    net.blocks[1].skip = True
    torch.testing.assert_close(net.blocks[1](x), x)


def test_no_units_is_an_error_never_zero_units():
    with pytest.raises(ConfigError, match="no residual blocks found in this OwnNet"):
        make_skippable(OwnNet())
    with pytest.raises(ConfigError, match="PreActBlock, which paretoskip does not know"):
        make_skippable(OwnNet(), ["blocks.0"])
    with pytest.raises(ConfigError, match=r"\['blocks.9'\] are not modules"):
        make_skippable(OwnNet(), ["blocks.9"], shortcut="identity")


def test_a_cut_that_cannot_work_says_why():
    class Parallel(OwnNet):
        def forward(self, x):
            h = self.stem(x)
            return self.fc((self.blocks[0](h) + self.blocks[1](h)).mean((2, 3)))

    net = make_skippable(Parallel(), ["blocks.0", "blocks.1"], shortcut="identity")
    with pytest.raises(ConfigError, match="does not take exactly unit blocks.0's output"):
        model_parts(net)


OWN_MODULE = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.f(x)


class Net(nn.Module):
    def __init__(self, num_classes, in_channels, width):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(4)])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def build(num_classes=10, in_channels=1, input_size=8, width=8):
    from paretoskip.models import make_skippable

    units = [f"blocks.{i}" for i in range(4)]
    return make_skippable(Net(num_classes, in_channels, width), units, shortcut="identity")
"""

STUDY = """
[model]
factory = "mynets:build"
kwargs = {{ width = 6 }}
checkpoint = "ckpt/own"

[model.train]
recipe = "plain"
epochs = 1

[data]
name = "digits"

[search]
engine = "exhaustive"
budget = {budget}
"""


def _py(code: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


def test_own_module_round_trip_through_a_study_file(tmp_path):
    (tmp_path / "mynets.py").write_text(textwrap.dedent(OWN_MODULE))
    (tmp_path / "own.toml").write_text(STUDY.format(budget=16))
    # the console entry point, in a fresh process: trains, searches all 16 masks, writes the front
    run = _py(
        "import sys; from paretoskip.cli import main; sys.exit(main(['search', 'own.toml', '-q']))",
        tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    front = json.loads((tmp_path / "studies/own.front.json").read_text())
    assert front["provenance"]["model"]["name"] == "mynets:build"
    assert front["space"]["units"] == [f"blocks.{i}" for i in range(4)]
    assert front["study"]["distinct_masks"] == 16
    # another fresh process reloads the checkpoint: the factory is imported again
    load = _py(
        "import json, torch\n"
        "from paretoskip import load_checkpoint\n"
        "from paretoskip.models import skippable_units, apply_mask\n"
        "m, meta = load_checkpoint('ckpt/own')\n"
        "apply_mask(m.eval(), '0101')\n"
        "y = m(torch.zeros(2, 1, 8, 8))\n"
        "print(json.dumps({'units': [n for n, _ in skippable_units(m)], 'arch': meta['architecture'],"
        " 'shape': list(y.shape), 'width': m.stem.out_channels}))\n",
        tmp_path,
    )
    assert load.returncode == 0, load.stderr[-3000:]
    got = json.loads(load.stdout.strip().splitlines()[-1])
    assert got["units"] == [f"blocks.{i}" for i in range(4)]
    assert got["arch"]["name"] == "mynets:build" and got["arch"]["kwargs"]["width"] == 6
    assert got["shape"] == [2, 10] and got["width"] == 6


def test_factory_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the factory import may add the cwd
    (tmp_path / "flat.py").write_text(
        "from torch import nn\n"
        "def build(num_classes=10, in_channels=1, input_size=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
        "def no_classes():\n    return nn.Linear(2, 2)\n"
    )
    with pytest.raises(ConfigError, match="no residual blocks found in this Sequential"):
        paretoskip.create_model("flat:build", num_classes=10)
    with pytest.raises(ConfigError, match="does not take num_classes"):
        paretoskip.create_model("flat:no_classes", num_classes=10)
    with pytest.raises(ConfigError, match="has no 'nothing'"):
        paretoskip.create_model("flat:nothing")
    with pytest.raises(
        ConfigError, match="cannot import 'nowhere_at_all'|no module 'nowhere_at_all'"
    ):
        paretoskip.create_model("nowhere_at_all:build")
    from paretoskip.config import load_study_config

    p = tmp_path / "s.toml"
    p.write_text('[model]\nfactory = "not a reference"\n[data]\nname = "digits"\n')
    with pytest.raises(
        ConfigError, match="model.factory='not a reference': write 'package.module:function'"
    ):
        load_study_config(p, check_files=False)
    p.write_text('[model]\nname = "resnet20"\nfactory = "flat:build"\n[data]\nname = "digits"\n')
    with pytest.raises(ConfigError, match="not both"):
        load_study_config(p, check_files=False)
