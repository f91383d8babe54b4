"""Search engines: pymoo (NSGA-II, NSGA-III, SMS-EMOA), Optuna samplers, exhaustive, greedy."""

from __future__ import annotations

import itertools
import logging
from abc import ABC, abstractmethod
from typing import Any

from ..errors import ConfigError
from ._context import SearchContext

log = logging.getLogger("paretoskip.search")

EXHAUSTIVE_LIMIT = 2**16


class Engine(ABC):
    """Proposes masks; the :class:`SearchContext` evaluates and records them."""

    name: str = ""
    default_budget: int | None = 200

    def __init__(self, seed: int = 0, **options: Any):
        self.seed = seed
        self.options = options

    @abstractmethod
    def run(self, ctx: SearchContext) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "seed": self.seed, **self.options}


def _check_options(name: str, options: dict[str, Any], accepted: set[str]) -> None:
    bad = set(options) - accepted
    if bad:
        raise ConfigError(
            f"engine {name!r} does not take {sorted(bad)}; accepted: {sorted(accepted) or 'none'}"
        )


# -- exhaustive and greedy -----------------------------------------------------------------
class Exhaustive(Engine):
    """Every mask of the space, in lexicographic order (best prefix sharing)."""

    name = "exhaustive"
    default_budget = None

    def __init__(self, seed: int = 0, batch: int = 256, **options: Any):
        _check_options(self.name, options, set())
        super().__init__(seed, batch=batch)

    def run(self, ctx: SearchContext) -> None:
        space = ctx.space
        if space.size > EXHAUSTIVE_LIMIT:
            raise ConfigError(
                f"the space has 2^{space.n_genes} = {space.size:,} masks; 'exhaustive' handles up to "
                f"2^16 = {EXHAUSTIVE_LIMIT:,}. Use engine 'pymoo-nsga2' (or lock/group units to shrink the space)"
            )
        todo = (space.mask_from_genes(g) for g in itertools.product((0, 1), repeat=space.n_genes))
        todo = (m for m in todo if space.to_bitstring(m) not in ctx.evaluated)
        while not ctx.done():
            batch = list(itertools.islice(todo, min(self.options["batch"], ctx.remaining)))
            if not batch:
                break
            ctx.evaluate(batch)


class Greedy(Engine):
    """The hand method: repeatedly drop the unit whose removal costs the least accuracy."""

    name = "greedy"

    def __init__(self, seed: int = 0, **options: Any):
        _check_options(self.name, options, set())
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


# -- Optuna samplers -----------------------------------------------------------------------
class OptunaEngine(Engine):
    """An Optuna sampler driven through ask/tell; trials are the study's own."""

    SAMPLERS = ("nsga2", "nsga3", "tpe", "gp", "random", "bruteforce")

    def __init__(self, sampler: str, seed: int = 0, batch: int | None = None, **options: Any):
        self.sampler_name = sampler
        self.name = sampler
        accepted = {
            "nsga2": {"population_size", "mutation_prob", "crossover_prob", "swapping_prob"},
            "nsga3": {"population_size", "mutation_prob", "crossover_prob", "swapping_prob"},
            "tpe": {"n_startup_trials", "multivariate"},
            "gp": {"n_startup_trials"},
            "random": set(),
            "bruteforce": set(),
        }[sampler]
        _check_options(sampler, options, accepted)
        super().__init__(seed, **options)
        self.batch = batch

    def make_sampler(self, n_genes: int):
        import optuna

        o = dict(self.options)
        s = self.sampler_name
        if s in ("nsga2", "nsga3"):
            o.setdefault("population_size", 20)
            cls = optuna.samplers.NSGAIISampler if s == "nsga2" else optuna.samplers.NSGAIIISampler
            return cls(seed=self.seed, **o)
        if s == "tpe":
            o.setdefault("multivariate", True)
            return optuna.samplers.TPESampler(seed=self.seed, **o)
        if s == "gp":
            return optuna.samplers.GPSampler(seed=self.seed, **o)
        if s == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        return _ask_tell_bruteforce()(seed=self.seed)

    def run(self, ctx: SearchContext) -> None:
        from optuna.trial import TrialState

        db = ctx.db
        space = ctx.space
        study = db.study
        study.sampler = self.make_sampler(space.n_genes)
        dists = db.distributions()
        for mask in db.fail_stale_trials():
            study.enqueue_trial(db.params_of(mask), skip_if_exists=False)
        batch = self.batch or (
            self.options.get("population_size", 20)
            if self.sampler_name in ("nsga2", "nsga3")
            else 4
        )
        if self.sampler_name == "gp":
            batch = self.batch or 1
        from ..study import worker_id

        while not ctx.done():
            n = max(1, min(batch, ctx.remaining))
            trials = []
            for _ in range(n):
                t = study.ask(dists)
                t.set_user_attr("worker", worker_id())
                t.set_user_attr("engine", self.name)
                trials.append(t)
            masks = [
                space.mask_from_genes([t.params[p] for p in space.param_names]) for t in trials
            ]
            try:
                evs = ctx.evaluator.evaluate_many(masks)
            except BaseException:
                for t in trials:
                    study.tell(t, state=TrialState.FAIL)
                raise
            for t, ev in zip(trials, evs):
                ctx.account(ev)
                system = study._storage.get_trial_system_attrs(t._trial_id)
                gen = next((v for k, v in system.items() if k.endswith(":generation")), None)
                attrs = db.user_attrs_of(ev, engine=self.name, generation=gen)
                for k, v in attrs.items():
                    t.set_user_attr(k, v)
                for key, value in db.constraint_values(ev, ctx.reference).items():
                    t.set_constraint(key, value)
                study.tell(t, db.values_of(ev))
                ctx.trials_this_run += 1
            ctx._update_bar()


def _ask_tell_bruteforce():
    import optuna

    class AskTellBruteForceSampler(optuna.samplers.BruteForceSampler):
        """BruteForceSampler whose end-of-space signal works outside ``optimize()``.

        Optuna's sampler calls ``study.stop()`` when the space is exhausted, which raises
        outside ``optimize()``; the search loop stops by itself when every mask is done.
        """

        def after_trial(self, study, trial, state, values) -> None:
            try:
                super().after_trial(study, trial, state, values)
            except RuntimeError as exc:
                if "Study.stop" not in str(exc):
                    raise

    return AskTellBruteForceSampler


def structured_masks(space) -> list[tuple[int, ...]]:
    """The full mask and, for k = 1, 2, ..., the mask skipping the last k units of every stage.

    A stage is the units sharing a module-path prefix (``layer2`` for ``layer2.3``).  Masks
    that would skip a locked unit or split a group are left out.
    """
    from ..errors import MaskError

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


ENGINES: dict[str, str] = {
    "pymoo-nsga2": "pymoo NSGA-II with archive duplicate elimination (default)",
    "pymoo-nsga3": "pymoo NSGA-III (Das-Dennis reference directions)",
    "pymoo-smsemoa": "pymoo SMS-EMOA (hypervolume-based selection)",
    "nsga2": "Optuna NSGAIISampler",
    "nsga3": "Optuna NSGAIIISampler",
    "tpe": "Optuna TPESampler (multivariate)",
    "gp": "Optuna GPSampler",
    "random": "Optuna RandomSampler",
    "bruteforce": "Optuna BruteForceSampler",
    "exhaustive": "every mask, spaces up to 2^16",
    "greedy": "drop the unit costing the least accuracy, repeat (baseline)",
}


def make_engine(name: str, seed: int = 0, **options: Any) -> Engine:
    """An engine by name (see :data:`ENGINES`)."""
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; accepted: {', '.join(ENGINES)}")
    if name.startswith("pymoo-"):
        from ._pymoo import PymooEngine

        return PymooEngine(name[len("pymoo-") :], seed=seed, **options)
    if name == "exhaustive":
        return Exhaustive(seed, **options)
    if name == "greedy":
        return Greedy(seed, **options)
    return OptunaEngine(name, seed=seed, **options)
