"""CIFAR-style ResNet-(6n+2) with stochastic depth on every residual branch.

He et al. (2016), section 4.2: a 3×3 stem with 16 channels, three stages of ``n`` basic
blocks with 16/32/64 channels, global average pooling and a linear classifier.  The
downsampling shortcut is option A (parameter-free: subsample and zero-pad channels) by
default, or option B (1×1 convolution + batch norm, a projection).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from ..errors import ConfigError
from ._registry import register_model
from ._skip import ModelParts, SkippableUnit, register_parts, skippable_units

__all__ = ["CifarResNet", "BasicBlock"]


class _PadShortcut(nn.Module):
    """Option-A shortcut: take every other pixel and zero-pad the new channels."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, half, self.pad - half))


class BasicBlock(SkippableUnit, nn.Module):
    """Post-activation basic block: ``relu(drop(bn2(conv2(relu(bn1(conv1 x))))) + shortcut(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str, drop_prob: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.stochastic_depth = StochasticDepth(drop_prob, mode="row")
        self.skip = False

    output_nonnegative = True

    def shortcut_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x))

    def skip_passes_nonnegative(self) -> bool:
        return isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip:
            return F.relu(self.shortcut(x))
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.stochastic_depth(out) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110, ...).
        num_classes: classifier outputs.
        in_channels: input image channels (1 for digits and Fashion-MNIST, 3 for CIFAR).
        input_size: input height = width; recorded for FLOPs and latency measurement
            (the network itself accepts any size).
        p_last: survival probability of the last block; it decays linearly from 1 over
            depth (Huang et al., 2016).  ``1.0`` is plain training.
        shortcut: ``"A"`` (parameter-free) or ``"B"`` (1×1 projection) for downsampling.
        widths: channels of the three stages.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        p_last: float = 0.5,
        shortcut: str = "A",
        widths: tuple[int, int, int] = (16, 32, 64),
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(
                f"depth={depth} is not of the form 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...)"
            )
        if not 0.0 < p_last <= 1.0:
            raise ConfigError(f"p_last={p_last} must be in (0, 1]")
        if shortcut not in ("A", "B"):
            raise ConfigError(
                f"shortcut={shortcut!r}; accepted: 'A' (zero-pad) or 'B' (projection)"
            )
        n = (depth - 2) // 6
        self.input_shape = (in_channels, input_size, input_size)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        total, idx = 3 * n, 0
        in_planes = widths[0]
        for stage, planes in enumerate(widths):
            blocks = []
            for i in range(n):
                idx += 1
                stride = 2 if (stage > 0 and i == 0) else 1
                drop = idx / total * (1.0 - p_last)
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut, drop))
                in_planes = planes
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.forward_head(x)


register_parts(
    CifarResNet,
    lambda m: ModelParts(m.forward_stem, tuple(skippable_units(m)), m.forward_head),
)


def _builder(depth: int) -> Callable[..., nn.Module]:
    """The builder of ResNet-``depth``: :class:`CifarResNet` with its depth fixed."""

    def build(**kwargs: Any) -> nn.Module:
        return CifarResNet(depth=depth, **kwargs)

    signature = inspect.signature(CifarResNet)
    build.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "depth"]
    )
    return build


for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", _builder(_depth))
