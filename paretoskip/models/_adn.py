"""Adaptive Depth Networks: residual stages with a skippable sub-path and skip-aware batch norm.

Kang & Lee, "Adaptive Depth Networks with Skippable Sub-Paths" (NeurIPS 2024).  Each residual
stage of ``n`` blocks is split in two: its first ``max(1, min(n - 1, ceil(n / 2)))`` blocks
are *mandatory*, the rest are the stage's *skippable sub-path* (ResNet-20: 2 + 1 per stage,
ResNet-56: 5 + 4, ResNet-50 ``[3, 4, 6, 3]``: 1, 2, 3, 1 skippable blocks).  Training
(recipe ``adn``) distils the *super-net* (nothing skipped) into the *base-net* (every
sub-path skipped).

Skip-aware batch norm: every mandatory block holds a second set of batch norms
(``bn1_skip``, ``bn2_skip``, and ``bn3_skip`` for bottlenecks), used instead of its own
when its stage's sub-path is skipped; skippable blocks, the stem and the downsampling
shortcuts have one set.

The models use the same unit interface as every other paretoskip model: every residual
block, mandatory or not, is a :class:`~paretoskip.models.SkippableUnit`, so FLOPs
accounting, export and the runtime switch work unchanged; the skip spaces of
:func:`adn_space` lock the mandatory blocks.  Each mandatory block has one plain bool,
``subpath_skipped``, read once per forward call.  It is set whenever the ``skip`` flag of a
skippable block of its stage is set (``skip`` is a property on skippable blocks), so
:func:`~paretoskip.models.apply_mask`, :class:`~paretoskip.AdaptiveModel` and anything else
that sets ``skip`` flags keep the batch norms consistent with the mask.  No per-sample work.

Partly skipped sub-paths (the finer space, one bit per skippable block): a mandatory block
uses its skip-aware batch norms only when *every* skippable block of its stage is skipped,
exactly the base-net path it was trained for.  As long as one skippable block of the stage
runs, the mandatory blocks keep their ordinary batch norms, so the first running skippable
block receives the features it was trained on (the super-net's), and the remaining
sub-path acts on them like a residual stack with some blocks dropped.  Switching to the
skip-aware set earlier would feed the remaining skippable blocks features they never saw in
training.  In the stage-tied space both rules coincide with the paper.

Example:
    >>> import torch, paretoskip
    >>> from paretoskip.models._adn import adn_space, adn_stages
    >>> m = paretoskip.create_model("resnet56-adn", num_classes=10, in_channels=1, input_size=8)
    >>> [(s.name, len(s.mandatory), len(s.skippable)) for s in adn_stages(m)]
    [('layer1', 5, 4), ('layer2', 5, 4), ('layer3', 5, 4)]
    >>> adn_space(m).size, adn_space(m, tied=False).size
    (8, 4096)
    >>> paretoskip.models.apply_mask(m, adn_space(m).mask_from_genes([1, 0, 0]))
    >>> [b.subpath_skipped for b in (m.layer1[0], m.layer2[0])]
    [True, False]
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import Bottleneck as TVBottleneck
from torchvision.ops import StochasticDepth

from ..errors import ConfigError
from ._cifar import BasicBlock, CifarResNet
from ._registry import register_model
from ._skip import ModelParts, apply_mask, get_mask, register_parts, skippable_units
from ._torchvision import (
    TORCHVISION_RESNETS,
    SkippableBasicBlock,
    SkippableBottleneck,
    _tv_head,
    _tv_stem,
    torchvision_resnet,
)

if TYPE_CHECKING:
    from ..space import SkipSpace

__all__ = [
    "ADN_MODELS",
    "AdnCifarResNet",
    "AdnResNet",
    "AdnStage",
    "adn_stages",
    "adn_space",
    "adn_torchvision_resnet",
    "adn_unit_states",
    "base_mask",
    "is_adn",
    "mandatory_count",
    "masked",
]


def mandatory_count(blocks: int) -> int:
    """How many leading blocks of a stage of ``blocks`` blocks are mandatory.

    ``min(blocks - 1, ceil(blocks / 2))``, and at least the first block (as in the reference
    code, where a stage's first block is never skippable).

    Example:
        >>> [mandatory_count(n) for n in (1, 2, 3, 4, 6, 9, 23)]
        [1, 1, 2, 2, 3, 5, 12]
    """
    if blocks < 1:
        raise ConfigError(f"a stage has {blocks} blocks; it needs at least 1")
    return max(1, min(blocks - 1, math.ceil(blocks / 2)))


class _Stage:
    """The blocks of one stage: the mandatory ones and the skippable sub-path."""

    def __init__(self, name: str, mandatory: Sequence[nn.Module], skippable: Sequence[nn.Module]):
        self.name = name
        self.mandatory = tuple(mandatory)
        self.skippable = tuple(skippable)

    @staticmethod
    def rule(skipped: Sequence[bool]) -> bool:
        """The skip-aware batch norms are used when every skippable block is skipped."""
        return bool(skipped) and all(skipped)

    def refresh(self) -> None:
        flag = self.rule([b.skip for b in self.skippable])
        for block in self.mandatory:
            block.subpath_skipped = flag


class _SubPathBlock:
    """A block of a skippable sub-path: setting its ``skip`` flag updates its stage's
    mandatory blocks (a property, so ``object.__setattr__`` updates them too)."""

    @property
    def skip(self) -> bool:
        return self.__dict__.get("_adn_skip", False)

    @skip.setter
    def skip(self, value: bool) -> None:
        self.__dict__["_adn_skip"] = bool(value)
        stage = self.__dict__.get("_adn_stage")
        if stage is not None:
            stage.refresh()

    def run(self, x: torch.Tensor, skip: bool) -> torch.Tensor:
        """Run the block with the given skip decision, without touching any flag."""
        return self.shortcut_forward(x) if skip else self._branch(x)  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip:
            return self.shortcut_forward(x)  # type: ignore[attr-defined]
        return self._branch(x)  # type: ignore[attr-defined]


class _MandatoryBlock:
    """A mandatory block: ``subpath_skipped`` selects its skip-aware batch norms.

    Its unit *state* (see :func:`adn_unit_states`) is ``(skip, subpath_skipped)``, and
    ``(True, False)`` when it is skipped itself (its batch norms are then not used).
    """

    subpath_skipped: bool = False

    def run(self, x: torch.Tensor, skip: bool) -> torch.Tensor:
        """Run with the given skip decision and the current ``subpath_skipped`` flag."""
        if skip:
            return self.shortcut_forward(x)  # type: ignore[attr-defined]
        return self._branch(x, self.subpath_skipped)  # type: ignore[attr-defined]

    def run_state(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        """Run in the state ``(skip, subpath_skipped)``, without touching any flag."""
        if isinstance(state, bool):  # a stage without a sub-path: the bit alone
            return self.run(x, state)
        skip, aware = state
        if skip:
            return self.shortcut_forward(x)  # type: ignore[attr-defined]
        return self._branch(x, aware)  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip:  # type: ignore[attr-defined]
            return self.shortcut_forward(x)  # type: ignore[attr-defined]
        return self._branch(x, self.subpath_skipped)  # type: ignore[attr-defined]


# -- CIFAR ResNets ----------------------------------------------------------------------------


class AdnCifarSkippable(_SubPathBlock, BasicBlock):
    """A CIFAR basic block of a skippable sub-path (one set of batch norms)."""

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.stochastic_depth(out) + self.shortcut(x))


class AdnCifarMandatory(_MandatoryBlock, BasicBlock):
    """A mandatory CIFAR basic block with skip-aware batch norms ``bn1_skip``, ``bn2_skip``."""

    def _branch(self, x: torch.Tensor, aware: bool) -> torch.Tensor:
        bn1, bn2 = (self.bn1_skip, self.bn2_skip) if aware else (self.bn1, self.bn2)
        out = F.relu(bn1(self.conv1(x)))
        out = bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


# -- torchvision ResNets ----------------------------------------------------------------------


def _tv_branch(block: nn.Module, x: torch.Tensor, bns: Sequence[nn.Module]) -> torch.Tensor:
    """torchvision's block computation with the batch norms ``bns`` (2 or 3 of them)."""
    identity = x if block.downsample is None else block.downsample(x)
    if len(bns) == 3:
        out = block.relu(bns[0](block.conv1(x)))
        out = block.relu(bns[1](block.conv2(out)))
        out = bns[2](block.conv3(out))
    else:
        out = block.relu(bns[0](block.conv1(x)))
        out = bns[1](block.conv2(out))
    sd = block.__dict__["_modules"].get("stochastic_depth")
    if sd is not None:
        out = sd(out)
    return block.relu(out + identity)


class AdnBasicSkippable(_SubPathBlock, SkippableBasicBlock):
    """A torchvision basic block of a skippable sub-path."""

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        return _tv_branch(self, x, (self.bn1, self.bn2))


class AdnBottleneckSkippable(_SubPathBlock, SkippableBottleneck):
    """A torchvision bottleneck of a skippable sub-path."""

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        return _tv_branch(self, x, (self.bn1, self.bn2, self.bn3))


class AdnBasicMandatory(_MandatoryBlock, SkippableBasicBlock):
    """A mandatory torchvision basic block with skip-aware batch norms."""

    def _branch(self, x: torch.Tensor, aware: bool) -> torch.Tensor:
        bns = (self.bn1_skip, self.bn2_skip) if aware else (self.bn1, self.bn2)
        return _tv_branch(self, x, bns)


class AdnBottleneckMandatory(_MandatoryBlock, SkippableBottleneck):
    """A mandatory torchvision bottleneck with skip-aware batch norms."""

    def _branch(self, x: torch.Tensor, aware: bool) -> torch.Tensor:
        bns = (
            (self.bn1_skip, self.bn2_skip, self.bn3_skip)
            if aware
            else (self.bn1, self.bn2, self.bn3)
        )
        return _tv_branch(self, x, bns)


_CONVERT: dict[type, tuple[type, type]] = {
    BasicBlock: (AdnCifarMandatory, AdnCifarSkippable),
    SkippableBasicBlock: (AdnBasicMandatory, AdnBasicSkippable),
    SkippableBottleneck: (AdnBottleneckMandatory, AdnBottleneckSkippable),
}


def _bn_names(block: nn.Module) -> tuple[str, ...]:
    return ("bn1", "bn2", "bn3") if isinstance(block, TVBottleneck) else ("bn1", "bn2")


def _split_stages(model: nn.Module, stage_names: Sequence[str]) -> None:
    """Turn each named stage's blocks into mandatory blocks and a skippable sub-path."""
    stages = []
    for name in stage_names:
        blocks = list(getattr(model, name))
        m = mandatory_count(len(blocks))
        for i, block in enumerate(blocks):
            if type(block) not in _CONVERT:
                raise ConfigError(f"{name}.{i} is a {type(block).__name__}, not a residual block")
            skip = block.__dict__.pop("skip", False)
            mandatory_cls, skippable_cls = _CONVERT[type(block)]
            if i < m:
                block.__class__ = mandatory_cls
                for bn in _bn_names(block):
                    block.add_module(f"{bn}_skip", copy.deepcopy(getattr(block, bn)))
                # stochastic depth acts inside the skippable sub-paths only
                sd = block.__dict__["_modules"].get("stochastic_depth")
                if isinstance(sd, StochasticDepth):
                    sd.p = 0.0
                block.subpath_skipped = False
            else:
                block.__class__ = skippable_cls
            block.skip = skip
        stage = _Stage(name, blocks[:m], blocks[m:])
        for block in blocks:
            block.__dict__["_adn_stage"] = stage
        stage.refresh()
        stages.append(stage)
    object.__setattr__(model, "_adn_stages", tuple(stages))


class AdnCifarResNet(CifarResNet):
    """CIFAR ResNet-(6n+2) split into mandatory blocks and skippable sub-paths (ADN).

    The arguments are those of :class:`~paretoskip.models.CifarResNet`, except that
    ``p_last`` (default 1.0: none) is the stochastic-depth survival of the last block
    *inside the skippable sub-paths*: the drop rate decays linearly with depth as in
    :class:`CifarResNet`, and mandatory blocks are never dropped.  The weights are
    initialised as those of :class:`CifarResNet` with the same seed; the skip-aware batch
    norms start as copies of the ordinary ones.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        p_last: float = 1.0,
        shortcut: str = "A",
        widths: tuple[int, int, int] = (16, 32, 64),
    ):
        super().__init__(depth, num_classes, in_channels, input_size, p_last, shortcut, widths)
        _split_stages(self, ("layer1", "layer2", "layer3"))


class AdnResNet(tvm.ResNet):
    """A torchvision ResNet split into mandatory blocks and skippable sub-paths (ADN).

    Built by :func:`adn_torchvision_resnet`; the class only marks the model as ADN (its
    forward is torchvision's).  The state-dict names follow the reference implementation
    (``layerK.i.bnJ_skip`` for the skip-aware batch norms).
    """


def adn_torchvision_resnet(
    name: str,
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int = 224,
    p_last: float = 1.0,
) -> nn.Module:
    """The ADN variant of torchvision's ResNet ``name`` (random weights).

    ``p_last`` is the stochastic-depth survival of the last block inside the skippable
    sub-paths (1.0: none); see :func:`~paretoskip.models.torchvision_resnet` for the rest.

    Example:
        >>> from paretoskip.models._adn import adn_stages, adn_torchvision_resnet
        >>> m = adn_torchvision_resnet("resnet50", num_classes=10, input_size=32)
        >>> [len(s.skippable) for s in adn_stages(m)]
        [1, 2, 3, 1]
    """
    if not 0.0 < p_last <= 1.0:
        raise ConfigError(f"p_last={p_last} must be in (0, 1]")
    model = torchvision_resnet(name, num_classes, in_channels, input_size, 1.0)
    model.__class__ = AdnResNet
    blocks = [u for _, u in skippable_units(model)]
    for i, block in enumerate(blocks, start=1):
        drop = i / len(blocks) * (1.0 - p_last)
        if drop > 0:
            block.stochastic_depth = StochasticDepth(drop, mode="row")
    _split_stages(model, ("layer1", "layer2", "layer3", "layer4"))
    return model


# -- stages, states, spaces -------------------------------------------------------------------


@dataclass(frozen=True)
class AdnStage:
    """One stage of an ADN model, by unit names."""

    name: str
    mandatory: tuple[str, ...]
    skippable: tuple[str, ...]


def is_adn(model: nn.Module) -> bool:
    """Whether ``model`` is an ADN model with at least one skippable sub-path.

    Example:
        >>> import paretoskip
        >>> is_adn(paretoskip.create_model("resnet20")), is_adn(paretoskip.create_model("resnet20-adn"))
        (False, True)
    """
    stages = getattr(model, "_adn_stages", ())
    return any(s.skippable for s in stages)


def adn_stages(model: nn.Module) -> list[AdnStage]:
    """The stages of an ADN model: names of their mandatory and skippable blocks."""
    stages = getattr(model, "_adn_stages", None)
    if stages is None:
        raise ConfigError(
            f"{type(model).__name__} is not an ADN model (no skippable sub-paths); "
            f"ADN models: {', '.join(ADN_MODELS)}"
        )
    names = {id(u): n for n, u in skippable_units(model)}
    return [
        AdnStage(
            s.name,
            tuple(names[id(b)] for b in s.mandatory),
            tuple(names[id(b)] for b in s.skippable),
        )
        for s in stages
    ]


def base_mask(model: nn.Module) -> list[int]:
    """The base-net's mask: every skippable block skipped, every mandatory block run."""
    skippable = {n for s in adn_stages(model) for n in s.skippable}
    return [int(n in skippable) for n, _ in skippable_units(model)]


def adn_space(model: nn.Module, tied: bool = True) -> SkipSpace:
    """The skip space of an ADN model: mandatory blocks locked.

    ``tied=True`` (the paper's space): one gene per stage, skipping its whole sub-path
    (2^3 masks for CIFAR ResNets, 2^4 for ResNet-50).  ``tied=False``: every skippable
    block on its own (a finer space; see the module docstring for the batch norms a partly
    skipped sub-path uses).
    """
    from ..space import SkipSpace

    stages = adn_stages(model)
    locked = [n for s in stages for n in s.mandatory]
    groups = [s.skippable for s in stages if s.skippable] if tied else []
    return SkipSpace.from_model(model, locked=locked, groups=groups)


def adn_unit_states(model: nn.Module) -> Callable[[Sequence[int]], tuple[Hashable, ...]]:
    """The function from a mask to each unit's state (what its output depends on).

    A skippable block's state is its skip bit; a mandatory block's is ``(skip,
    subpath_skipped)`` with ``subpath_skipped`` derived from its stage's bits by the same
    rule as the flags, and ``(True, False)`` when it is skipped itself.
    """
    units = [u for _, u in skippable_units(model)]
    index = {id(u): i for i, u in enumerate(units)}
    plan: list[tuple[int, ...] | None] = []
    for u in units:
        stage = u.__dict__.get("_adn_stage")
        if isinstance(u, _MandatoryBlock) and stage is not None and stage.skippable:
            plan.append(tuple(index[id(b)] for b in stage.skippable))
        else:
            plan.append(None)

    def states(mask: Sequence[int]) -> tuple[Hashable, ...]:
        out: list[Hashable] = []
        for i, sub in enumerate(plan):
            bit = bool(mask[i])
            if sub is None:
                out.append(bit)
            elif bit:
                out.append((True, False))
            else:
                out.append((False, _Stage.rule([bool(mask[j]) for j in sub])))
        return tuple(out)

    return states


@contextmanager
def masked(model: nn.Module, mask: Sequence[int] | str) -> Iterator[nn.Module]:
    """Apply ``mask`` to ``model`` for the duration of a ``with`` block, then restore it.

    Example:
        >>> import paretoskip
        >>> m = paretoskip.create_model("resnet20-adn")
        >>> with masked(m, base_mask(m)):
        ...     m.layer1[0].subpath_skipped
        True
        >>> m.layer1[0].subpath_skipped
        False
    """
    saved = get_mask(model)
    apply_mask(model, mask)
    try:
        yield model
    finally:
        apply_mask(model, saved)


def _cifar_parts(m: AdnCifarResNet) -> ModelParts:
    return ModelParts(
        m.forward_stem, tuple(skippable_units(m)), m.forward_head, states=adn_unit_states(m)
    )


def _tv_parts(m: AdnResNet) -> ModelParts:
    return ModelParts(
        _tv_stem(m), tuple(skippable_units(m)), _tv_head(m), states=adn_unit_states(m)
    )


register_parts(AdnCifarResNet, _cifar_parts)
register_parts(AdnResNet, _tv_parts)


def _cifar_builder(depth: int) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        return AdnCifarResNet(depth=depth, **kwargs)

    signature = inspect.signature(AdnCifarResNet)
    build.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "depth"]
    )
    return build


def _tv_builder(name: str) -> Callable[..., nn.Module]:
    def build(
        num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, p_last: float = 1.0
    ) -> nn.Module:
        return adn_torchvision_resnet(name, num_classes, in_channels, input_size, p_last)

    return build


#: The registered ADN model names.
ADN_MODELS: tuple[str, ...] = tuple(
    [f"resnet{d}-adn" for d in (20, 32, 44, 56, 110)] + [f"{n}-adn" for n in TORCHVISION_RESNETS]
)

for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}-adn", _cifar_builder(_depth))
for _name in TORCHVISION_RESNETS:
    register_model(f"{_name}-adn", _tv_builder(_name))
