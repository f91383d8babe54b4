"""The exhaustive engine: every mask of the space."""

from __future__ import annotations

import itertools

from ..errors import ConfigError
from ._base import Engine, register_engine
from ._context import SearchContext

__all__ = ["Exhaustive", "EXHAUSTIVE_LIMIT"]

#: The largest space ``exhaustive`` enumerates.
EXHAUSTIVE_LIMIT = 2**16


class Exhaustive(Engine):
    """Every mask of the space, in lexicographic order (best prefix sharing)."""

    name = "exhaustive"
    default_budget = None

    def __init__(self, seed: int = 0, batch: int = 256):
        super().__init__(seed, batch=batch)

    def run(self, ctx: SearchContext) -> None:
        space = ctx.space
        if space.size > EXHAUSTIVE_LIMIT:
            raise ConfigError(
                f"the space has 2^{space.n_genes} = {space.size:,} masks; 'exhaustive' handles up to "
                f"2^16 = {EXHAUSTIVE_LIMIT:,}. Use engine 'surrogate' (the default) or 'pymoo-nsga2' (or lock/group units to shrink the space)"
            )
        todo = (space.mask_from_genes(g) for g in itertools.product((0, 1), repeat=space.n_genes))
        todo = (m for m in todo if space.to_bitstring(m) not in ctx.evaluated)
        while not ctx.done():
            batch = list(itertools.islice(todo, min(self.options["batch"], ctx.remaining)))
            if not batch:
                break
            ctx.evaluate(batch)


register_engine("exhaustive", "every mask, spaces up to 2^16", Exhaustive, options=("batch",))
