"""The greedy baseline: drop one unit at a time."""

from __future__ import annotations

from ._base import Engine, register_engine
from ._context import SearchContext

__all__ = ["Greedy"]


class Greedy(Engine):
    """The hand method: repeatedly drop the unit whose removal costs the least accuracy."""

    name = "greedy"

    def __init__(self, seed: int = 0):
        super().__init__(seed)

    def run(self, ctx: SearchContext) -> None:
        space = ctx.space
        genes = [0] * space.n_genes
        while not ctx.done() and 0 in genes:
            cands = []
            for i, g in enumerate(genes):
                if g == 0:
                    c = list(genes)
                    c[i] = 1
                    cands.append(c)
            cands = cands[: max(ctx.remaining, 1)] if ctx.remaining < len(cands) else cands
            evs = ctx.evaluate([space.mask_from_genes(c) for c in cands])
            feasible = [
                (ev, c)
                for ev, c in zip(evs, cands)
                if all(v <= 0 for v in ctx.constraint_vector(ev))
            ]
            if not feasible:
                break  # every further step violates a constraint
            _, genes = max(feasible, key=lambda p: (p[0]["accuracy"], -p[0]["flops"]))


register_engine(
    "greedy", "drop the unit costing the least accuracy, repeat (baseline)", Greedy, options=()
)
