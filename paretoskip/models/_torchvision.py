"""torchvision's ResNets made skippable, without copying their code.

Each ``BasicBlock``/``Bottleneck`` gets a subclass (created once per class) that checks its
``skip`` flag and otherwise defers to torchvision's own ``forward``.  Stochastic depth is a
forward hook on the branch's last batch norm, so it acts on the branch before the
addition; it adds no parameters, so torchvision state dicts load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import BasicBlock as TVBasic
from torchvision.models.resnet import Bottleneck as TVBottleneck
from torchvision.ops import StochasticDepth

from ..errors import ConfigError
from ._registry import register_model
from ._skip import ModelParts, SkippableUnit, register_parts, skippable_units

__all__ = ["torchvision_resnet", "TORCHVISION_RESNETS"]

TORCHVISION_RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
)


class _SkippableTV(SkippableUnit):
    """Skip behaviour for torchvision's residual blocks (both end in ``relu(out + identity)``)."""

    output_nonnegative = True

    def shortcut_forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # type: ignore[attr-defined]
        return F.relu(identity)

    def skip_passes_nonnegative(self) -> bool:
        return self.downsample is None  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip:
            return self.shortcut_forward(x)
        return super().forward(x)  # type: ignore[misc]


class SkippableBasicBlock(_SkippableTV, TVBasic):
    pass


class SkippableBottleneck(_SkippableTV, TVBottleneck):
    pass


_SWAP = {TVBasic: SkippableBasicBlock, TVBottleneck: SkippableBottleneck}


class _DropBranch:
    """Forward hook on a branch's last batch norm applying the block's stochastic depth."""

    def __call__(self, module: nn.Module, args, output: torch.Tensor):
        sd = module._paretoskip_sd  # type: ignore[attr-defined]
        return sd(output) if sd.training else None


def make_skippable(
    model: nn.Module, p_last: float = 1.0, blocks: list[nn.Module] | None = None
) -> nn.Module:
    """Turn torchvision residual blocks of ``model`` (default: every one) into skippable
    units, in place (:func:`paretoskip.models.make_skippable` is the general entry point)."""
    if blocks is None:
        blocks = [m for m in model.modules() if type(m) in _SWAP]
    for i, block in enumerate(blocks, start=1):
        block.__class__ = _SWAP[type(block)]
        block.skip = False
        drop = i / len(blocks) * (1.0 - p_last)
        if drop > 0:
            last_bn = block.bn3 if isinstance(block, TVBottleneck) else block.bn2
            sd = StochasticDepth(drop, mode="row")
            block.stochastic_depth = sd
            object.__setattr__(last_bn, "_paretoskip_sd", sd)
            last_bn.register_forward_hook(_DropBranch())
    return model


def torchvision_resnet(
    name: str,
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int = 224,
    p_last: float = 1.0,
) -> nn.Module:
    """A torchvision ResNet (random weights) with skippable blocks."""
    if name not in TORCHVISION_RESNETS:
        raise ConfigError(
            f"unknown torchvision ResNet {name!r}; accepted: {', '.join(TORCHVISION_RESNETS)}"
        )
    if not 0.0 < p_last <= 1.0:
        raise ConfigError(f"p_last={p_last} must be in (0, 1]")
    model = getattr(tvm, name)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    model.input_shape = (in_channels, input_size, input_size)
    return make_skippable(model, p_last)


def _tv_stem(m: tvm.ResNet):
    def stem(x: torch.Tensor) -> torch.Tensor:
        return m.maxpool(m.relu(m.bn1(m.conv1(x))))

    return stem


def _tv_head(m: tvm.ResNet):
    def head(x: torch.Tensor) -> torch.Tensor:
        return m.fc(torch.flatten(m.avgpool(x), 1))

    return head


register_parts(
    tvm.ResNet, lambda m: ModelParts(_tv_stem(m), tuple(skippable_units(m)), _tv_head(m))
)
for _name in TORCHVISION_RESNETS:
    register_model(_name, lambda _n=_name, **kw: torchvision_resnet(_n, **kw))
