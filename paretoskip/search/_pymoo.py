"""pymoo engines (NSGA-II, NSGA-III, SMS-EMOA) through pymoo's ask/tell interface."""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.sampling import Sampling

from ..errors import ConfigError
from ..space import Mask, SkipSpace
from ._base import Engine, register_engine, structured_masks
from ._context import SearchContext

__all__ = ["PymooEngine", "ALGORITHMS", "ArchiveDuplicates", "StructuredSampling"]

#: pymoo algorithm → description (registered as engines ``pymoo-<algorithm>``).
ALGORITHMS: dict[str, str] = {
    "nsga2": "pymoo NSGA-II with archive duplicate elimination (default)",
    "nsga3": "pymoo NSGA-III (Das-Dennis reference directions)",
    "smsemoa": "pymoo SMS-EMOA (hypervolume-based selection)",
}

log = logging.getLogger("paretoskip.search")


class PymooEngine(Engine):
    """pymoo's NSGA-II (default), NSGA-III or SMS-EMOA through ask/tell.

    Its state is the study: every evaluation is a trial labelled with its generation, and a
    resumed run rebuilds the algorithm by telling it the recorded generations in order
    (its population, ranks and generation counter come back; nothing is unpickled, so no
    file beside the study can run code).  Evaluations of a generation interrupted by a
    crash are in the study and the cache, so none is measured twice: the partial
    generation is told as it is, and the search goes on from there.
    """

    def __init__(
        self,
        algorithm: str = "nsga2",
        seed: int = 0,
        pop_size: int = 24,
        crossover: str = "two-point",
        mutation_prob: float | None = None,
        structured_start: bool = True,
    ):
        if crossover not in ("two-point", "uniform"):
            raise ConfigError(f"crossover={crossover!r}; accepted: 'two-point', 'uniform'")
        if pop_size < 4:
            raise ConfigError(f"pop_size={pop_size}; at least 4")
        super().__init__(
            seed,
            pop_size=pop_size,
            crossover=crossover,
            mutation_prob=mutation_prob,
            structured_start=structured_start,
        )
        self.algorithm = algorithm
        self.name = f"pymoo-{algorithm}"

    def _build(self, ctx: SearchContext, seeds: list[tuple[int, ...]] | None = None):
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.algorithms.moo.nsga3 import NSGA3
        from pymoo.algorithms.moo.sms import SMSEMOA
        from pymoo.core.problem import Problem
        from pymoo.operators.crossover.pntx import TwoPointCrossover
        from pymoo.operators.crossover.ux import UniformCrossover
        from pymoo.operators.mutation.bitflip import BitflipMutation
        from pymoo.termination.default import DefaultMultiObjectiveTermination  # noqa: F401
        from pymoo.util.ref_dirs import get_reference_directions

        n = ctx.space.n_genes
        problem = Problem(
            n_var=n,
            n_obj=len(ctx.objectives),
            n_ieq_constr=len(ctx.constraints),
            xl=0,
            xu=1,
            vtype=bool,
        )
        o = self.options
        common = dict(
            pop_size=o["pop_size"],
            sampling=StructuredSampling(ctx.space, o["structured_start"], seeds),
            crossover=TwoPointCrossover() if o["crossover"] == "two-point" else UniformCrossover(),
            mutation=BitflipMutation(prob=1.0, prob_var=o["mutation_prob"] or 1.0 / n),
            eliminate_duplicates=ArchiveDuplicates(),
        )
        if self.algorithm == "nsga2":
            algo = NSGA2(**common)
        elif self.algorithm == "nsga3":
            m = len(ctx.objectives)
            ref_dirs = get_reference_directions(
                "das-dennis", m, n_partitions=max(2, o["pop_size"] - 1 if m == 2 else 4)
            )
            algo = NSGA3(ref_dirs=ref_dirs, **common)
        else:
            algo = SMSEMOA(**common)
        from pymoo.termination.max_gen import MaximumGenerationTermination

        algo.setup(problem, termination=MaximumGenerationTermination(10**9), seed=self.seed)
        return algo

    def _leftover_state_files(self, ctx: SearchContext) -> list[Path]:
        """State files older paretoskip versions pickled beside the study
        (``<database file>.<study>.<engine>.pkl``): they are never read."""
        base = ctx.db.location.side_file(f"{ctx.db.name}.{self.name}.pkl", ctx.db.name)
        if base is None:
            return []
        return [p for p in (base, base.with_name(base.name + ".tmp")) if p.exists()]

    def run(self, ctx: SearchContext) -> None:
        for path in self._leftover_state_files(ctx):
            log.warning(
                "ignoring %s: pymoo's state is rebuilt from the study's trials and this file "
                "(a pickle written by an older paretoskip) is never read; you can delete it",
                path,
            )
        history = _generations(ctx, self.name)
        # a study searched by other engines only: the first population starts from its best
        seeds = (
            _study_elite(ctx, self.options["pop_size"])
            if not history and len(ctx.evaluated) > 1
            else None
        )
        algo = self._build(ctx, seeds)
        replayed = _replay(ctx, algo, history)
        if replayed:
            log.info(
                "%s: rebuilt from the study's trials (%d generation(s), %d trials)",
                self.name,
                len(history),
                replayed,
            )
        dedup: ArchiveDuplicates = algo.eliminate_duplicates
        dedup.archive = {tuple(ctx.space.genes_from_mask(m)) for m in ctx.evaluated}
        dedup.active = bool(history)
        while not ctx.done():
            pop = algo.ask()
            if pop is None or len(pop) == 0:
                log.info("%s proposes nothing new (the space is exhausted)", self.name)
                break
            genes = pop.get("X").astype(int)
            masks = [ctx.space.mask_from_genes(g) for g in genes]
            take = _prefix_with_new(masks, ctx)
            evs = ctx.evaluate(masks[:take], generation=int(algo.n_gen or 0))
            if take < len(genes):
                break  # the budget ends inside this generation
            pop.set("F", np.array([ctx.minimised(ev) for ev in evs], dtype=float))
            if ctx.constraints:
                pop.set("G", np.array([ctx.constraint_vector(ev) for ev in evs], dtype=float))
            algo.tell(infills=pop)
            dedup.active = True
            dedup.archive.update(tuple(g) for g in genes)


def _generations(ctx: SearchContext, engine: str) -> list[list[Any]]:
    """The study's COMPLETE trials of ``engine`` (and its candidates dropped after
    screening, with their low-fidelity values), one list per generation, in order.

    The full model is recorded once, as the study's reference trial; the first generation
    (whose structured start always proposes it) gets it back.
    """
    by_gen: dict[int, list[Any]] = {}
    reference = None
    for r in ctx.db.records(states=None):
        if r.mask is None or not (r.completed and r.values is not None or r.screened):
            continue
        if r.engine == "reference":
            reference = r
        elif r.engine == engine and r.generation is not None:
            by_gen.setdefault(int(r.generation), []).append(r)
    out = [by_gen[g] for g in sorted(by_gen)]
    if out and reference is not None and all(r.mask != reference.mask for r in out[0]):
        out[0].insert(0, reference)
    return out


def _replay(ctx: SearchContext, algo: Any, history: list[list[Any]]) -> int:
    """Tell ``algo`` every recorded generation, in order, as if it had just evaluated it:
    its population, ranks and generation counter come out as the search left them (only
    the random state differs).  Returns how many trials were told."""
    from pymoo.core.population import Population

    told = 0
    for records in history:
        seen: set[str] = set()
        rows = [r for r in records if not (r.mask in seen or seen.add(r.mask))]
        X = np.array([ctx.space.genes_from_mask(r.mask) for r in rows], dtype=bool)
        F = np.array(
            [
                [o.sign * v for o, v in zip(ctx.objectives, r.objective_values(ctx.objectives))]
                for r in rows
            ]
        )
        pop = Population.new("X", X, "F", F.astype(float))
        if ctx.constraints:
            G = [[float(r.constraints.get(c.key, 0.0)) for c in ctx.constraints] for r in rows]
            pop.set("G", np.array(G, dtype=float))
        algo.tell(infills=pop)
        told += len(rows)
    return told


def _prefix_with_new(masks: list[Mask], ctx: SearchContext) -> int:
    """How many leading masks fit the budget (masks already in the study cost nothing)."""
    new = 0
    for i, m in enumerate(masks):
        if ctx.space.to_bitstring(m) not in ctx.evaluated:
            if new == ctx.remaining:
                return i
            new += 1
    return len(masks)


def _study_elite(ctx: SearchContext, n: int) -> list[tuple[int, ...]]:
    """The ``n`` best masks of the study by non-dominated rank (feasible first)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    rows, genes = [], []
    for r in ctx.db.records():
        if r.mask is None:
            continue
        violation = sum(max(0.0, c) for c in r.constraints.values())
        rows.append([violation, *[o.sign * v for o, v in zip(ctx.objectives, r.values)]])
        genes.append(ctx.space.genes_from_mask(r.mask))
    if not rows:
        return []
    arr = np.array(rows)
    order: list[int] = []
    for feasible in (arr[:, 0] == 0, arr[:, 0] > 0):
        idx = np.flatnonzero(feasible)
        if len(idx):
            for front in NonDominatedSorting().do(arr[idx, 1:]):
                order.extend(idx[front].tolist())
    return list(dict.fromkeys(genes[i] for i in order))[:n]


class ArchiveDuplicates(DuplicateElimination):
    """pymoo duplicate elimination that also rejects every mask already evaluated in the study."""

    def __init__(self) -> None:
        super().__init__()
        self.archive: set[tuple[int, ...]] = set()
        self.active = False

    def _do(self, pop, other, is_duplicate):
        X = pop.get("X")
        keys = [tuple(int(v) for v in x) for x in X]
        seen = set()
        if other is not None:
            seen = {tuple(int(v) for v in x) for x in other.get("X")}
        for i, k in enumerate(keys):
            if k in seen or (self.active and k in self.archive):
                is_duplicate[i] = True
            else:
                seen.add(k)
        return is_duplicate


class StructuredSampling(Sampling):
    """The full model, 'skip the last k units of every stage' masks, then random masks."""

    def __init__(
        self, space: SkipSpace, structured: bool = True, seeds: list[tuple[int, ...]] | None = None
    ) -> None:
        super().__init__()
        self.space = space
        self.structured = structured
        self.seeds = seeds or []

    def _do(self, problem, n_samples, random_state=None, **kwargs):
        rows = structured_masks(self.space) if self.structured else [self.space.full]
        genes = list(
            dict.fromkeys(
                [tuple(s) for s in self.seeds]
                + [tuple(self.space.genes_from_mask(m)) for m in rows]
            )
        )[:n_samples]
        genes = [list(g) for g in genes]
        rng = random_state if random_state is not None else np.random.default_rng()
        while len(genes) < n_samples:
            genes.append(list((rng.random(problem.n_var) < 0.5).astype(int)))
        return np.array(genes, dtype=bool)


_OPTIONS = tuple(
    n for n in inspect.signature(PymooEngine).parameters if n not in ("algorithm", "seed")
)
for _algorithm, _description in ALGORITHMS.items():
    register_engine(
        f"pymoo-{_algorithm}",
        _description,
        functools.partial(PymooEngine, _algorithm),
        options=_OPTIONS,
    )
