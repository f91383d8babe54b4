"""The space of skip configurations of a model.

A *mask* has one bit per unit in execution order, ``1`` = skipped.  Its canonical text
form is a bitstring (``"010011"``).  *Locked* units are never skipped; a *group* is a set
of units skipped together.  The search works on *genes*: one per group and one per
remaining free unit, ordered by their first unit.

A mask is checked once: :meth:`SkipSpace.validate` (and every method that builds a mask)
returns a :class:`Mask`, a tuple of 0/1 that remembers its space, and the space's methods
take a :class:`Mask` of theirs as it is, without checking it again.

Example:
    >>> import paretoskip
    >>> model = paretoskip.create_model("resnet20")
    >>> space = paretoskip.SkipSpace.from_model(model, locked=["layer1.0"])
    >>> space.n_genes, space.size
    (8, 256)
    >>> space.to_bitstring(space.mask_from_genes([1, 0, 0, 0, 0, 0, 0, 1]))
    '010000001'
    >>> space.skipped_names("010000001")
    ['layer1.1', 'layer3.2']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import MaskError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["SkipSpace", "Mask"]


class Mask(tuple):
    """A mask checked against its :class:`SkipSpace`: a tuple of 0/1 (equal to the plain
    tuple), built by the space (:meth:`SkipSpace.validate`, :meth:`~SkipSpace.mask_from_genes`,
    ...), never directly.  It pickles as a plain tuple (a receiver checks it again)."""

    space: SkipSpace

    def __new__(cls, bits: Iterable[int], space: SkipSpace) -> Mask:
        mask = super().__new__(cls, bits)
        mask.space = space
        return mask

    @property
    def bitstring(self) -> str:
        """The canonical text form (``"0101"``)."""
        text = self.__dict__.get("_text")
        if text is None:
            text = self.__dict__["_text"] = "".join("1" if b else "0" for b in self)
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (tuple, (tuple(self),))


@dataclass(frozen=True)
class SkipSpace:
    """Units of a model, which are locked, and which are grouped."""

    units: tuple[str, ...]
    locked: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _genes: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        units = tuple(self.units)
        if not units:
            raise MaskError("a skip space needs at least one unit")
        if len(set(units)) != len(units):
            dup = sorted({u for u in units if units.count(u) > 1})
            raise MaskError(f"duplicate unit names: {dup}")
        index = {u: i for i, u in enumerate(units)}
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "_index", index)
        locked = tuple(sorted(set(self.locked), key=lambda u: self._lookup(u, "locked unit")))
        object.__setattr__(self, "locked", locked)
        seen: dict[str, int] = {}
        groups = []
        for g, group in enumerate(self.groups):
            group = tuple(sorted(set(group), key=lambda u: self._lookup(u, "grouped unit")))
            if not group:
                raise MaskError(f"group {g} is empty")
            for u in group:
                if u in locked:
                    raise MaskError(
                        f"unit {u!r} is both locked and in group {g}; a locked unit is never skipped"
                    )
                if u in seen:
                    raise MaskError(
                        f"unit {u!r} is in groups {seen[u]} and {g}; a unit belongs to one group at most"
                    )
                seen[u] = g
            groups.append(group)
        object.__setattr__(self, "groups", tuple(groups))
        genes = [tuple(index[u] for u in g) for g in groups]
        genes += [(i,) for i, u in enumerate(units) if u not in locked and u not in seen]
        genes.sort(key=lambda g: g[0])
        if not genes:
            raise MaskError("every unit is locked: nothing can be skipped")
        object.__setattr__(self, "_genes", tuple(genes))
        object.__setattr__(self, "_names", tuple("+".join(units[i] for i in g) for g in genes))

    def _lookup(self, name: str, what: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise MaskError(
                f"unknown {what} {name!r}; units are {', '.join(self.units[:6])}"
                + (", ..." if len(self.units) > 6 else "")
            ) from None

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_model(
        cls, model: nn.Module, locked: Iterable[str] = (), groups: Iterable[Iterable[str]] = ()
    ) -> SkipSpace:
        """The space of every skippable unit of ``model``."""
        from .models import skippable_units

        return cls(
            tuple(n for n, _ in skippable_units(model)),
            tuple(locked),
            tuple(tuple(g) for g in groups),
        )

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`MaskError` unless ``model`` has exactly this space's units."""
        from .models import skippable_units

        names = tuple(n for n, _ in skippable_units(model))
        if names != self.units:
            missing = [u for u in self.units if u not in names]
            extra = [u for u in names if u not in self.units]
            raise MaskError(
                f"skip space does not match the model: {len(self.units)} units in the space, "
                f"{len(names)} in the model; missing from the model: {missing[:5]}, "
                f"not in the space: {extra[:5]}"
            )

    # -- sizes ---------------------------------------------------------------------------
    @property
    def n_units(self) -> int:
        return len(self.units)

    @property
    def n_genes(self) -> int:
        return len(self._genes)

    @property
    def size(self) -> int:
        """Number of distinct masks in the space (2 ** genes)."""
        return 2**self.n_genes

    @property
    def gene_names(self) -> tuple[str, ...]:
        """One name per gene: the unit name, or the group's unit names joined with '+'."""
        return self._names

    @property
    def param_names(self) -> tuple[str, ...]:
        """Optuna parameter names, ``skip.<gene name>``."""
        return tuple(f"skip.{g}" for g in self.gene_names)

    @property
    def locked_prefix(self) -> int:
        """How many leading units are locked (their output never changes)."""
        n = 0
        while n < self.n_units and self.units[n] in self.locked:
            n += 1
        return n

    # -- conversions ---------------------------------------------------------------------
    def validate(self, mask: Sequence[int] | Sequence[bool] | str) -> Mask:
        """Check ``mask`` against the space and return it as a :class:`Mask` of 0/1.

        A :class:`Mask` of this space (or of an equal one) is returned as it is.
        """
        if isinstance(mask, Mask) and (mask.space is self or mask.space == self):
            return mask
        if isinstance(mask, str):
            bad = sorted(set(mask) - {"0", "1"})
            if bad:
                raise MaskError(
                    f"mask {mask!r} contains {bad}; only '0' (run) and '1' (skip) are accepted"
                )
            bits = tuple(int(c) for c in mask)
        else:
            bits = []
            for v in mask:
                if v not in (0, 1):  # True/False and 0.0/1.0 compare equal to 1/0
                    raise MaskError(f"mask entry {v!r} is not 0/1")
                bits.append(int(v))
            bits = tuple(bits)
        if len(bits) != self.n_units:
            raise MaskError(f"mask has {len(bits)} entries; this space has {self.n_units} units")
        for u in self.locked:
            if bits[self._index[u]]:
                raise MaskError(f"mask skips locked unit {u!r}")
        for g in self._genes:
            if len(g) > 1 and len({bits[i] for i in g}) > 1:
                names = [self.units[i] for i in g]
                raise MaskError(
                    f"mask splits the group {names}: its units are skipped together or not at all"
                )
        return Mask(bits, self)

    def mask_from_genes(self, genes: Sequence[int] | Sequence[bool]) -> Mask:
        """The mask of one value (0/1) per gene."""
        genes = list(genes)
        if len(genes) != self.n_genes:
            raise MaskError(f"got {len(genes)} genes; this space has {self.n_genes}")
        bits = [0] * self.n_units
        for g, v in zip(self._genes, genes):
            if v not in (0, 1):
                raise MaskError(f"gene value {v!r} is not 0/1")
            for i in g:
                bits[i] = int(v)
        return Mask(bits, self)

    def genes_from_mask(self, mask: Sequence[int] | str) -> tuple[int, ...]:
        """One value per gene (the inverse of :meth:`mask_from_genes`)."""
        bits = self.validate(mask)
        return tuple(bits[g[0]] for g in self._genes)

    def to_bitstring(self, mask: Sequence[int] | str) -> str:
        """The canonical text form of ``mask`` (``"0101"``)."""
        return self.validate(mask).bitstring

    def from_bitstring(self, text: str) -> Mask:
        """The mask of a bitstring."""
        return self.validate(text)

    def skipped_names(self, mask: Sequence[int] | str) -> list[str]:
        """Names of the units ``mask`` skips."""
        return [u for u, b in zip(self.units, self.validate(mask)) if b]

    def from_names(self, skipped: Iterable[str]) -> Mask:
        """The mask skipping exactly the named units."""
        bits = [0] * self.n_units
        for name in skipped:
            bits[self._lookup(name, "unit")] = 1
        return self.validate(bits)

    @property
    def full(self) -> Mask:
        """The mask that skips nothing."""
        return Mask((0,) * self.n_units, self)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "units": list(self.units),
            "locked": list(self.locked),
            "groups": [list(g) for g in self.groups],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkipSpace:
        unknown = set(data) - {"units", "locked", "groups"}
        if unknown:
            raise MaskError(
                f"unknown keys in skip space: {sorted(unknown)}; accepted: units, locked, groups"
            )
        return cls(
            tuple(data["units"]),
            tuple(data.get("locked", ())),
            tuple(tuple(g) for g in data.get("groups", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> SkipSpace:
        return cls.from_dict(json.loads(text))

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()
