"""What every engine is, and the registry that finds engines by name.

An engine family is one module of this package: its :class:`Engine` subclass and one
:func:`register_engine` call per engine name.  ``paretoskip/search/__init__.py`` imports
each family module once (its ``_FAMILIES`` line), which registers its names.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, MaskError

if TYPE_CHECKING:
    from ..space import Mask, SkipSpace
    from ._context import SearchContext

__all__ = [
    "Engine",
    "EngineSpec",
    "ENGINES",
    "register_engine",
    "engine_spec",
    "make_engine",
    "check_options",
    "structured_masks",
]


class Engine(ABC):
    """Proposes masks; the :class:`~paretoskip.search.SearchContext` evaluates and records them.

    ``name`` is the registered name; ``options`` are the settings :meth:`describe` records
    in the study.  ``shareable`` engines keep their state in the study itself, so several
    workers can run them on one study (:mod:`paretoskip.worker`).
    """

    name: str = ""
    default_budget: int | None = 200
    shareable: bool = False

    def __init__(self, seed: int = 0, **options: Any):
        self.seed = seed
        self.options = options

    @abstractmethod
    def run(self, ctx: SearchContext) -> None:
        """Propose masks through ``ctx.evaluate`` until ``ctx.done()``."""

    def describe(self) -> dict[str, Any]:
        """The engine's settings (recorded in the study)."""
        return {"engine": self.name, "seed": self.seed, **self.options}


@dataclass(frozen=True)
class EngineSpec:
    """A registered engine: how to build it, what it is, which options it takes."""

    name: str
    description: str
    factory: Callable[..., Engine]
    options: tuple[str, ...]
    shareable: bool = False


class _Registry(Mapping[str, str]):
    """Engine name → one-line description, in registration order (read-only)."""

    def __init__(self) -> None:
        self._specs: dict[str, EngineSpec] = {}

    def __getitem__(self, name: str) -> str:
        return self._specs[name].description

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"ENGINES({dict(self)!r})"


#: Every engine, name → description (a read-only mapping, filled by :func:`register_engine`).
ENGINES = _Registry()


def register_engine(
    name: str,
    description: str,
    factory: Callable[..., Engine],
    *,
    options: Sequence[str] = (),
    shareable: bool = False,
) -> None:
    """Register an engine: ``factory(seed=..., **options)`` builds it.

    ``options`` are the settings it accepts (``search.options`` in a study file,
    ``engine_options`` of :func:`paretoskip.search`); ``shareable`` says whether several
    workers can run it on one study.  A name is registered once: a second registration
    raises :class:`~paretoskip.errors.ConfigError`.
    """
    if name in ENGINES._specs:
        raise ConfigError(f"engine {name!r} is registered already; choose another name")
    ENGINES._specs[name] = EngineSpec(name, description, factory, tuple(options), shareable)


def engine_spec(name: str) -> EngineSpec:
    """The registration of an engine; :class:`~paretoskip.errors.ConfigError` if unknown."""
    try:
        return ENGINES._specs[name]
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}; accepted: {', '.join(ENGINES)}") from None


def check_options(name: str, options: Mapping[str, Any], accepted: Sequence[str]) -> None:
    """Refuse options an engine does not take, naming them and the accepted ones."""
    bad = set(options) - set(accepted)
    if bad:
        close = difflib.get_close_matches(sorted(bad)[0], list(accepted), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"engine {name!r} does not take {sorted(bad)}; {hint}"
            f"accepted: {sorted(accepted) or 'none'}"
        )


def make_engine(name: str, seed: int = 0, **options: Any) -> Engine:
    """An engine by name (see :data:`ENGINES`).

    Example:
        >>> from paretoskip.search import make_engine
        >>> make_engine("pymoo-nsga2", seed=1, pop_size=8).describe()["pop_size"]
        8
    """
    spec = engine_spec(name)
    check_options(name, options, spec.options)
    return spec.factory(seed=seed, **options)


def structured_masks(space: SkipSpace) -> list[Mask]:
    """The full mask and, for k = 1, 2, ..., the mask skipping the last k units of every stage.

    A stage is the units sharing a module-path prefix (``layer2`` for ``layer2.3``).  Masks
    that would skip a locked unit or split a group are left out.
    """
    stages: dict[str, list[int]] = {}
    for i, u in enumerate(space.units):
        stages.setdefault(u.rsplit(".", 1)[0], []).append(i)
    out = [space.full]
    longest = max(len(v) for v in stages.values())
    for k in range(1, longest):
        bits = [0] * space.n_units
        for idx in stages.values():
            for i in idx[max(1, len(idx) - k) :]:
                bits[i] = 1
        try:
            m = space.validate(bits)
        except MaskError:
            continue
        if m not in out:
            out.append(m)
    return out
