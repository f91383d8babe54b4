"""How to run one unit's residual branch with only some of its inner channels.

A *branch adapter* knows the layout of one kind of residual block: which convolution is the
branch's *inner* one (whose output channels a channel gate may drop), how to compute the
shortcut before the final activation, and how to run the branch

* **masked** (training and reference): every convolution at full width, the inner
  activations multiplied per input by a 0/1 keep mask times a learned scale;
* **gathered** (inference): the inner convolution computes only the kept filters and the next
  convolution reads only those input channels, so dropped channels cost nothing.

The two are the same function: a dropped inner channel is zero after the activation (it is
multiplied by 0), so the next convolution's weights on it meet only zeros.  The gathered
form is what really saves work; the masked one is what gradients flow through.

Adapters exist for :class:`paretoskip.models.BasicBlock` (CIFAR ResNets) and torchvision's
basic and bottleneck blocks; :func:`register_branch` adds others.  A unit without an adapter
can still be layer-gated (through its own ``run``), without branch scaling.

Batch norm is always applied with its running statistics (eval mode): a gated network's
output for one input must not depend on the other inputs of its batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BranchAdapter", "register_branch", "branch_adapter"]


def _stamp(*tensors: torch.Tensor | None) -> tuple:
    """What identifies the current contents of parameters (storage and in-place version)."""
    return tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors)


class _Slices:
    """Weights restricted to a channel subset, kept while the parameters are unchanged.

    Used only without autograd (inference): slicing is then done once per subset instead of
    once per call.  A parameter changed in place, or moved, invalidates its entries.
    """

    def __init__(self) -> None:
        self._store: dict[tuple, tuple[tuple, Any, tuple]] = {}

    def get(self, key: tuple, sources: tuple, make: Callable[[], Any], keep: tuple) -> Any:
        """``make()``, cached under ``key`` (ids of ``keep``, which the entry keeps alive so
        that their ids are not reused) while ``sources`` are unchanged."""
        if torch.is_grad_enabled():
            return make()
        stamp = _stamp(*sources)
        hit = self._store.get(key)
        if hit is None or hit[0] != stamp:
            hit = (stamp, make(), keep)
            self._store[key] = hit
        return hit[1]


def _bn(
    bn: nn.BatchNorm2d,
    x: torch.Tensor,
    idx: torch.Tensor | None = None,
    slices: _Slices | None = None,
) -> torch.Tensor:
    """``bn`` in eval mode on ``x``, optionally restricted to the channels ``idx``."""
    mean, var, weight, bias = bn.running_mean, bn.running_var, bn.weight, bn.bias
    if idx is not None:

        def make():
            return (
                mean[idx],
                var[idx],
                None if weight is None else weight[idx],
                None if bias is None else bias[idx],
            )

        if slices is None:
            mean, var, weight, bias = make()
        else:
            mean, var, weight, bias = slices.get(
                (id(bn), id(idx)),
                (bn.running_mean, bn.running_var, bn.weight, bn.bias),
                make,
                (bn, idx),
            )
    return F.batch_norm(x, mean, var, weight, bias, False, 0.0, bn.eps)


def _conv(
    conv: nn.Conv2d,
    x: torch.Tensor,
    out_idx: torch.Tensor | None = None,
    in_idx: torch.Tensor | None = None,
    slices: _Slices | None = None,
) -> torch.Tensor:
    """``conv`` on ``x`` computing only the filters ``out_idx`` / reading only ``in_idx``."""
    w, b = conv.weight, conv.bias
    if out_idx is not None or in_idx is not None:

        def make():
            ws, bs = w, b
            if out_idx is not None:
                ws = ws[out_idx]
                bs = None if bs is None else bs[out_idx]
            if in_idx is not None:
                ws = ws[:, in_idx]
            return ws, bs

        if slices is None:
            w, b = make()
        else:
            w, b = slices.get(
                (id(conv), id(out_idx), id(in_idx)),
                (conv.weight, conv.bias),
                make,
                (conv, out_idx, in_idx),
            )
    return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)


class BranchAdapter:
    """A unit's branch, runnable masked or with gathered inner channels.

    Attributes:
        unit: the skippable block.
        inner_channels: output channels of the inner convolution (what channel gates drop).
        out_channels: channels of the block's output (what a layer gate's scale acts on).
    """

    unit: nn.Module
    inner_channels: int
    out_channels: int

    def identity(self, x: torch.Tensor) -> torch.Tensor:
        """The shortcut path before the final activation."""
        raise NotImplementedError

    def branch(
        self,
        x: torch.Tensor,
        channels: torch.Tensor | None = None,
        inner: torch.Tensor | None = None,
        out_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The branch output before the addition.

        Args:
            x: the block's input, ``n×C×H×W``.
            channels: indices of the inner channels to compute (gathered form); ``None``
                computes all of them.
            inner: per-input multipliers of the computed inner channels, ``n×k`` (``k`` =
                ``len(channels)``, or ``inner_channels``): the keep mask times the learned
                scale in the masked form, the scale alone in the gathered form.
            out_scale: per-input multipliers of the branch's output channels, ``n×C_out``.
        """
        raise NotImplementedError

    def finish(self, branch: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """What follows the addition (the final ReLU of a post-activation block)."""
        return F.relu(branch + identity)

    def zero_branch(self, like: torch.Tensor) -> torch.Tensor:
        """The branch output when no inner channel is kept: the last layers on zeros.

        ``like`` is the shortcut output (it has the branch output's shape).  Computed by the
        same batch-norm call on a zero tensor, so that it equals the masked form bit for bit;
        it costs no multiply-accumulate.
        """
        last_conv, last_bn = self._last()
        zeros = like.new_zeros(like.shape)
        if last_conv.bias is not None:
            zeros = zeros + last_conv.bias[None, :, None, None]
        return _bn(last_bn, zeros)

    def _last(self) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
        raise NotImplementedError


class _TwoConv(BranchAdapter):
    """``bn2(conv2(relu(bn1(conv1 x))))``: the inner convolution is ``conv1``."""

    def __init__(self, unit: nn.Module, identity: Callable[[torch.Tensor], torch.Tensor]):
        self.unit = unit
        self._identity = identity
        self._slices = _Slices()
        self.inner_channels = int(unit.conv1.out_channels)
        self.out_channels = int(unit.conv2.out_channels)

    def identity(self, x: torch.Tensor) -> torch.Tensor:
        return self._identity(x)

    def branch(self, x, channels=None, inner=None, out_scale=None):
        u, sl = self.unit, self._slices
        out = F.relu(_bn(u.bn1, _conv(u.conv1, x, out_idx=channels, slices=sl), channels, sl))
        if inner is not None:
            out = out * inner[:, :, None, None]
        out = _bn(u.bn2, _conv(u.conv2, out, in_idx=channels, slices=sl))
        if out_scale is not None:
            out = out * out_scale[:, :, None, None]
        return out

    def _last(self):
        return self.unit.conv2, self.unit.bn2


class _Bottleneck(BranchAdapter):
    """torchvision's bottleneck: the inner (3×3) convolution is ``conv2``."""

    def __init__(self, unit: nn.Module):
        self.unit = unit
        self._slices = _Slices()
        self.inner_channels = int(unit.conv2.out_channels)
        self.out_channels = int(unit.conv3.out_channels)

    def identity(self, x):
        return x if self.unit.downsample is None else self.unit.downsample(x)

    def branch(self, x, channels=None, inner=None, out_scale=None):
        u, sl = self.unit, self._slices
        out = F.relu(_bn(u.bn1, _conv(u.conv1, x)))
        out = F.relu(_bn(u.bn2, _conv(u.conv2, out, out_idx=channels, slices=sl), channels, sl))
        if inner is not None:
            out = out * inner[:, :, None, None]
        out = _bn(u.bn3, _conv(u.conv3, out, in_idx=channels, slices=sl))
        if out_scale is not None:
            out = out * out_scale[:, :, None, None]
        return out

    def _last(self):
        return self.unit.conv3, self.unit.bn3


_ADAPTERS: dict[type, Callable[[nn.Module], BranchAdapter]] = {}


def register_branch(cls: type, factory: Callable[[nn.Module], BranchAdapter]) -> None:
    """Teach :func:`branch_adapter` the branch layout of units of class ``cls``."""
    _ADAPTERS[cls] = factory


def branch_adapter(unit: nn.Module) -> BranchAdapter | None:
    """The adapter of ``unit``'s class (by its MRO), or ``None`` when there is none.

    Example:
        >>> import paretoskip
        >>> from paretoskip.models import skippable_units
        >>> m = paretoskip.create_model("resnet20", num_classes=10)
        >>> a = branch_adapter(skippable_units(m)[3][1])
        >>> a.inner_channels, a.out_channels
        (32, 32)
    """
    for cls in type(unit).__mro__:
        if cls in _ADAPTERS:
            return _ADAPTERS[cls](unit)
    return None


def _register_builtin() -> None:
    from torchvision.models.resnet import BasicBlock as TVBasic
    from torchvision.models.resnet import Bottleneck as TVBottleneck

    from ..models import BasicBlock

    register_branch(BasicBlock, lambda u: _TwoConv(u, u.shortcut))
    register_branch(
        TVBasic,
        lambda u: _TwoConv(u, (lambda x: x) if u.downsample is None else u.downsample),
    )
    register_branch(TVBottleneck, _Bottleneck)


_register_builtin()
