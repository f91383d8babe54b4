"""Gate networks: what decides, per input, which units run and which inner channels they keep.

Two styles share one interface (:class:`GateNetwork`), chosen by name in
:class:`~paretoskip.dynamic.GatedModel` (``gate="block"`` or ``gate="policy"``):

* ``"block"`` (default; ConvNet-AIG / L-Net style): one small head per unit reads the unit's
  own input, global-average-pooled, through ``Linear → ReLU → Linear``.  Its decisions see
  the features the network has actually computed for this input, which is why a head of a few
  hundred multiply-accumulates suffices; the cost is paid only for the units the network
  reaches, and decisions are made in execution order, which is what the dual mode's halting
  needs.
* ``"policy"`` (BlockDrop style): one network reads the stem's output once (two strided
  3×3 convolutions, pooling, ``Linear → ReLU → Linear``) and decides for every unit up front.
  The whole configuration, hence the exact cost, is known before any unit runs.

Every head outputs, per unit, the logits and scales of its layout (:class:`UnitLayout`):
one layer-gate logit (run the unit when it is > 0), one logit per channel group (keep the
group's inner channels when > 0), a learned scale per kept inner channel and per output
channel (``2·sigmoid``, exactly 1 at initialisation).  The last layer's logit weights start
near zero with biases that open every gate, so a fresh gated model computes what its backbone
computes.

A further style is one :class:`GateNetwork` subclass and one :func:`register_gate_style` call.

Example:
    >>> from paretoskip.dynamic import GATE_STYLES
    >>> sorted(GATE_STYLES)
    ['block', 'policy']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError

__all__ = [
    "UnitLayout",
    "GateOutput",
    "GateNetwork",
    "BlockGates",
    "PolicyGates",
    "GATE_STYLES",
    "register_gate_style",
]

#: Initial bias of every gate logit: sigmoid(2) ≈ 0.88 open under training noise, open in eval.
OPEN_BIAS = 2.0


@dataclass(frozen=True)
class UnitLayout:
    """What the gates decide for one unit.

    Attributes:
        name: the unit's module path.
        in_channels: channels of the unit's input (what a block head reads).
        inner_channels: output channels of the branch's inner convolution (0: no adapter).
        out_channels: channels of the unit's output (0: no adapter).
        layer_gate: the unit has a skip decision (False for units that always run).
        groups: sizes of the channel groups a channel gate keeps or drops (empty: none).
        inner_scale: kept inner channels are scaled by a learned per-input factor.
        out_scale: the branch output is scaled by a learned per-input, per-channel factor.
    """

    name: str
    in_channels: int
    inner_channels: int
    out_channels: int
    layer_gate: bool
    groups: tuple[int, ...]
    inner_scale: bool
    out_scale: bool

    @property
    def n_outputs(self) -> int:
        return (
            int(self.layer_gate)
            + len(self.groups)
            + (self.inner_channels if self.inner_scale else 0)
            + (self.out_channels if self.out_scale else 0)
        )

    def channel_group(self) -> torch.Tensor:
        """The group index of every inner channel (contiguous groups)."""
        return torch.repeat_interleave(
            torch.arange(len(self.groups)), torch.tensor(self.groups, dtype=torch.long)
        )

    def split(self, z: torch.Tensor) -> GateOutput:
        """Cut a head's ``n×n_outputs`` output into its parts."""
        i = 0
        parts: dict[str, torch.Tensor | None] = {}
        for key, size in (
            ("layer", int(self.layer_gate)),
            ("groups", len(self.groups)),
            ("inner_scale", self.inner_channels if self.inner_scale else 0),
            ("out_scale", self.out_channels if self.out_scale else 0),
        ):
            parts[key] = z[:, i : i + size] if size else None
            i += size
        layer = parts["layer"]
        return GateOutput(
            layer=None if layer is None else layer[:, 0],
            groups=parts["groups"],
            inner_scale=parts["inner_scale"],
            out_scale=parts["out_scale"],
        )

    def init_bias(self) -> torch.Tensor:
        """Initial bias of the head's last layer: gates open, scales 1."""
        b = torch.zeros(self.n_outputs)
        b[: int(self.layer_gate) + len(self.groups)] = OPEN_BIAS
        return b


@dataclass(frozen=True)
class GateOutput:
    """Raw gate outputs of one unit for a batch: logits (decide at 0), scale pre-activations."""

    layer: torch.Tensor | None
    groups: torch.Tensor | None
    inner_scale: torch.Tensor | None
    out_scale: torch.Tensor | None


def _last_linear(fan_in: int, layouts: Sequence[UnitLayout]) -> nn.Linear:
    out = sum(lay.n_outputs for lay in layouts)
    lin = nn.Linear(fan_in, out)
    nn.init.normal_(lin.weight, 0.0, 1e-3)
    with torch.no_grad():
        lin.bias.copy_(torch.cat([lay.init_bias() for lay in layouts]))
        # scales start at exactly 1 (zero weights and bias): a fresh gated model computes
        # its backbone's function
        row = 0
        for lay in layouts:
            logits = int(lay.layer_gate) + len(lay.groups)
            lin.weight[row + logits : row + lay.n_outputs] = 0.0
            row += lay.n_outputs
    return lin


class GateNetwork(nn.Module):
    """Base class of gate styles.

    A style's constructor takes the layouts and, by keyword, ``hidden`` (head width) and
    ``stem_channels`` (channels of the stem's output), and ``width`` if it is up-front.

    Attributes:
        style: the name it is registered under.
        upfront: decisions for every unit come from :meth:`plan` on the stem output; otherwise
            from :meth:`unit` on each unit's input, in execution order.
    """

    style: ClassVar[str] = ""
    upfront: ClassVar[bool] = False

    def __init__(self, layouts: Sequence[UnitLayout]):
        super().__init__()
        self.layouts = tuple(layouts)

    def unit(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Head output of unit ``i`` (``n×n_outputs``) for its input ``h``."""
        raise NotImplementedError

    def plan(self, h0: torch.Tensor) -> list[torch.Tensor]:
        """Head outputs of every unit from the stem output ``h0`` (up-front styles)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The style's own constructor arguments (JSON-able)."""
        return {}


class BlockGates(GateNetwork):
    """One ``pool → Linear(C, hidden) → ReLU → Linear(hidden, outputs)`` head per gated unit."""

    style = "block"
    upfront = False

    def __init__(self, layouts: Sequence[UnitLayout], *, hidden: int = 16, stem_channels: int = 0):
        super().__init__(layouts)
        self.hidden = hidden
        heads: list[nn.Module] = []
        for lay in self.layouts:
            if lay.n_outputs == 0:
                heads.append(nn.Identity())
                continue
            heads.append(
                nn.Sequential(
                    nn.Linear(lay.in_channels, hidden), nn.ReLU(), _last_linear(hidden, [lay])
                )
            )
        self.heads = nn.ModuleList(heads)

    def unit(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return self.heads[i](h.mean((2, 3)))

    def config(self) -> dict[str, Any]:
        return {"hidden": self.hidden}


class PolicyGates(GateNetwork):
    """One network on the stem output deciding for every unit (BlockDrop style)."""

    style = "policy"
    upfront = True

    def __init__(
        self,
        layouts: Sequence[UnitLayout],
        *,
        hidden: int = 16,
        stem_channels: int,
        width: int = 16,
    ):
        super().__init__(layouts)
        self.hidden, self.width = hidden, width
        self.trunk = nn.Sequential(
            nn.Conv2d(stem_channels, width, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1),
            nn.ReLU(),
        )
        gated = [lay for lay in self.layouts if lay.n_outputs]
        self.fc = nn.Sequential(
            nn.Linear(2 * width, hidden), nn.ReLU(), _last_linear(hidden, gated)
        )
        self._sizes = [lay.n_outputs for lay in self.layouts]

    def plan(self, h0: torch.Tensor) -> list[torch.Tensor]:
        z = self.fc(self.trunk(h0).mean((2, 3)))
        out, i = [], 0
        for size in self._sizes:
            out.append(z[:, i : i + size])
            i += size
        return out

    def config(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "width": self.width}


#: Gate styles by name (``GatedModel(gate=name)``).
GATE_STYLES: dict[str, type[GateNetwork]] = {}


def register_gate_style(cls: type[GateNetwork]) -> type[GateNetwork]:
    """Make a :class:`GateNetwork` subclass available as ``GatedModel(gate=cls.style)``."""
    if not cls.style:
        raise ConfigError(f"{cls.__name__} has no style name")
    if cls.style in GATE_STYLES and GATE_STYLES[cls.style] is not cls:
        raise ConfigError(f"a gate style named {cls.style!r} is already registered")
    GATE_STYLES[cls.style] = cls
    return cls


register_gate_style(BlockGates)
register_gate_style(PolicyGates)
