"""The skip mechanism shared by every supported architecture.

A *unit* is a residual block whose branch can be left out.  Each unit carries one plain
boolean attribute, ``skip``, read once per forward call: when it is set the block returns
its shortcut path passed through whatever follows the addition (the final ReLU of a
post-activation block), which is exactly what stochastic-depth training computes when it
drops the branch.  There are no gates and no per-sample branching.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import MaskError

__all__ = [
    "SkippableUnit",
    "ModelParts",
    "skippable_units",
    "apply_mask",
    "get_mask",
    "mask_bits",
    "model_parts",
    "register_parts",
]


class SkippableUnit:
    """Mixin for a residual block that can be skipped.

    Subclasses implement :meth:`shortcut_forward`, the output of the block when its branch
    is left out.  ``forward`` must check ``self.skip`` once and return
    ``shortcut_forward(x)`` when it is set.
    """

    skip: bool = False
    #: the block's output is ≥ 0 in every state (it ends in a ReLU)
    output_nonnegative: bool = False

    def shortcut_forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def skip_passes_nonnegative(self) -> bool:
        """Whether :meth:`shortcut_forward` returns a non-negative input unchanged (an
        identity shortcut followed by a ReLU): the evaluator then passes such an input on
        without running the ReLU (bit-identical)."""
        return False

    def run(self, x: torch.Tensor, skip: bool) -> torch.Tensor:
        """Run the block with the given skip decision, without changing its flag."""
        if skip:
            return self.shortcut_forward(x)
        old, self.skip = self.skip, False
        try:
            return self(x)  # type: ignore[operator]
        finally:
            self.skip = old

    def run_state(self, x: torch.Tensor, state: Hashable) -> torch.Tensor:
        """Run the block in ``state`` (see :meth:`ModelParts.unit_states`), flags untouched.

        The state of an ordinary unit is its skip bit; a unit whose output also depends on
        other units' bits (an ADN mandatory block) overrides this.
        """
        return self.run(x, bool(state))


@dataclass(frozen=True)
class ModelParts:
    """A model cut into the pieces the evaluator runs one by one.

    ``head(units[-1](... units[0](stem(x))))`` equals ``model(x)``.  ``states``, when
    given, maps a whole mask to one hashable *state* per unit: what that unit's output
    depends on besides its input (by default its own skip bit); units in equal states
    compute equal outputs from equal inputs, which is what the evaluator's prefix sharing
    relies on.
    """

    stem: Callable[[torch.Tensor], torch.Tensor]
    units: tuple[tuple[str, nn.Module], ...]
    head: Callable[[torch.Tensor], torch.Tensor]
    states: Callable[[Sequence[int]], tuple[Hashable, ...]] | None = None

    def unit_states(self, mask: Sequence[int]) -> tuple[Hashable, ...]:
        """One state per unit for ``mask`` (its skip bits, unless ``states`` says otherwise).

        Example:
            >>> import paretoskip
            >>> m = paretoskip.create_model("resnet20")
            >>> paretoskip.models.model_parts(m).unit_states([0, 1] + [0] * 7)[:3]
            (False, True, False)
        """
        if self.states is None:
            return tuple(bool(b) for b in mask)
        return tuple(self.states(mask))


def skippable_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The skippable units of ``model`` in execution order, named by module path.

    Example:
        >>> import paretoskip
        >>> m = paretoskip.create_model("resnet20", num_classes=10)
        >>> [name for name, _ in paretoskip.models.skippable_units(m)][:3]
        ['layer1.0', 'layer1.1', 'layer1.2']
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SkippableUnit)]


def mask_bits(mask: Sequence[int] | Sequence[bool] | str, n: int) -> list[bool]:
    """``mask`` (a bitstring or 0/1 sequence) as ``n`` booleans, one per unit (True = skipped).

    Checks only the form (0/1, length) against ``n`` units: what a model alone can check.
    Locked units and groups belong to a :class:`~paretoskip.SkipSpace`.

    Example:
        >>> mask_bits("0110", 4)
        [False, True, True, False]
    """
    if isinstance(mask, str):
        bad = sorted(set(mask) - {"0", "1"})
        if bad:
            raise MaskError(
                f"mask {mask!r} contains {bad}; only '0' (run) and '1' (skip) are accepted"
            )
        bits = [c == "1" for c in mask]
    else:
        bits = []
        for v in list(mask):
            iv = int(v)
            if iv not in (0, 1) or float(v) != iv:
                raise MaskError(f"mask entry {v!r} is not 0/1 (or False/True)")
            bits.append(bool(iv))
    if len(bits) != n:
        raise MaskError(f"mask has {len(bits)} entries but the model has {n} skippable units")
    return bits


def apply_mask(model: nn.Module, mask: Sequence[int] | Sequence[bool] | str) -> None:
    """Set each unit's ``skip`` flag from ``mask`` (one entry per unit, 1 = skipped).

    A bitstring such as ``"0101"`` is accepted too.
    """
    units = skippable_units(model)
    bits = mask_bits(mask, len(units))
    for (_, unit), bit in zip(units, bits):
        unit.skip = bit


def get_mask(model: nn.Module) -> list[int]:
    """The current skip flags of ``model`` as a list of 0/1."""
    return [int(bool(u.skip)) for _, u in skippable_units(model)]


_PARTS: dict[type, Callable[[nn.Module], ModelParts]] = {}


def register_parts(cls: type, fn: Callable[[nn.Module], ModelParts]) -> None:
    """Teach :func:`model_parts` how to cut models of class ``cls``."""
    _PARTS[cls] = fn


def model_parts(model: nn.Module) -> ModelParts:
    """Cut ``model`` into stem, units and head (see :class:`ModelParts`).

    A class registered with :func:`register_parts` is cut by its function; any other model
    by tracing it (:func:`paretoskip.models.generic_parts`, which raises
    :class:`~paretoskip.errors.ConfigError` saying why when it cannot)."""
    for cls in type(model).__mro__:
        if cls in _PARTS:
            return _PARTS[cls](model)
    from ._byo import generic_parts

    return generic_parts(model)
