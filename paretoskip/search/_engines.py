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
        import warnings

        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return self._make_sampler(optuna)

    def _make_sampler(self, optuna):

        o = dict(self.options)
        s = self.sampler_name
        if s in ("nsga2", "nsga3"):
            o.setdefault("population_size", 20)
            cls = optuna.samplers.NSGAIISampler if s == "nsga2" else optuna.samplers.NSGAIIISampler
            return cls(seed=self.seed, **o)
        if s == "tpe":
            o.setdefault("multivariate", True)
            o.setdefault(
                "constant_liar", True
            )  # several workers: avoid masks others are evaluating
            return optuna.samplers.TPESampler(seed=self.seed, **o)
        if s == "gp":
            return optuna.samplers.GPSampler(seed=self.seed, **o)
        if s == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        return _ask_tell_bruteforce()(seed=self.seed)

    def run(self, ctx: SearchContext) -> None:
        """Ask a batch, evaluate it, tell it, until the study holds the budget.

        Several processes may run this on one study at once (see :mod:`paretoskip.worker`,
        which sets ``ctx.coordination``): the budget counts the masks completed by every
        worker plus those other workers are evaluating; a mask another worker is already
        evaluating is waited for and taken from the cache instead of evaluated again; and
        RUNNING trials of dead workers are failed and their masks enqueued again, before
        every ask.  A single process behaves as a plain ask/tell loop.
        """
        import contextlib
        import time

        from ..study import worker_id

        db = ctx.db
        space = ctx.space
        study = db.study
        study.sampler = self.make_sampler(space.n_genes)
        dists = db.distributions()
        coord = getattr(ctx, "coordination", None) or Coordination()
        lock = coord.lock if coord.lock is not None else contextlib.nullcontext()
        batch = self.batch or (
            self.options.get("population_size", 20)
            if self.sampler_name in ("nsga2", "nsga3")
            else 4
        )
        if self.sampler_name == "gp":
            batch = self.batch or 1
        me = worker_id()

        while True:
            with lock:  # asks are atomic across the workers that share this lock
                _redo_stale(ctx, coord)
                others = _sync(ctx, coord)
                if ctx.done():
                    break
                busy = {mask for _, mask in others} - ctx.evaluated
                n = min(batch, ctx.remaining - len(busy))
                trials = []
                for _ in range(max(n, 0)):
                    t = study.ask()  # owner first, so that a dead worker's trial is found
                    t.set_user_attr("worker", me)
                    t.set_user_attr("engine", self.name)
                    for name, dist in dists.items():
                        t.suggest_categorical(name, dist.choices)
                    trials.append(t)
                masks = [
                    space.mask_from_genes([t.params[p] for p in space.param_names]) for t in trials
                ]
                waits = _in_flight(ctx, coord, trials) if trials else {}
            if not trials:  # the rest of the budget is in other workers' hands: wait
                time.sleep(coord.poll_interval)
                continue
            own = [i for i in range(len(trials)) if i not in waits]
            _tell_batch(self.name, ctx, [trials[i] for i in own], [masks[i] for i in own])
            if waits:
                idx = sorted(waits)
                known = _wait_for(ctx, coord, lock, {i: waits[i] for i in idx}, masks)
                _tell_batch(
                    self.name, ctx, [trials[i] for i in idx], [masks[i] for i in idx], known
                )
            ctx._update_bar()


class Coordination:
    """How the workers of one study coordinate in :meth:`OptunaEngine.run`.

    Args:
        lock: a context manager every worker of the study shares (a
            :class:`paretoskip.worker.StudyLock`), held while counting the budget and asking;
            None: no lock, and a worker waits only for trials started before its own.
        stale_after: seconds after which another host's RUNNING trial counts as dead.
        wait_timeout: longest wait for another worker's evaluation of the same mask.
        poll_interval: seconds between looks at the study while waiting.
    """

    def __init__(
        self,
        lock: Any = None,
        stale_after: float = 3600.0,
        wait_timeout: float = 600.0,
        poll_interval: float = 0.5,
    ):
        self.lock = lock
        self.stale_after = stale_after
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval
        self.taken_over = 0  # masks whose result came from another worker's trial
        self.wait_timeouts = 0  # waits that gave up (the mask was evaluated again)
        self.stale_failed = 0  # RUNNING trials of dead workers marked FAIL
        self.reenqueued = 0  # masks of those trials enqueued again
        self.orphans: set[int] = set()  # trials left half-asked (ignored without a lock)


def _bits(space, params: dict[str, Any]) -> str:
    return space.to_bitstring(space.mask_from_genes([params[p] for p in space.param_names]))


def _redo_stale(
    ctx: SearchContext, coord: Coordination, taking_over: frozenset[str] | set[str] = frozenset()
) -> None:
    """Fail RUNNING trials of dead workers and enqueue their masks again."""
    for mask in ctx.db.fail_stale_trials(coord.stale_after):
        coord.stale_failed += 1
        if mask in taking_over or mask in ctx.evaluated:
            continue  # this worker evaluates it now, or another already has
        ctx.db.study.enqueue_trial(ctx.db.params_of(mask), skip_if_exists=False)
        coord.reenqueued += 1


def _sync(ctx: SearchContext, coord: Coordination) -> list[tuple[Any, str]]:
    """Count the masks every worker completed; return other workers' RUNNING trials.

    Under the shared lock no other ask is in progress, so a RUNNING trial with parameters
    missing is what remains of an ask interrupted by a crash: it is marked FAIL.
    """
    import optuna
    from optuna.trial import TrialState

    names = ctx.space.param_names
    running = []
    for t in ctx.db.trials(states=None):
        if t.state == TrialState.COMPLETE:
            mask = t.user_attrs.get("mask")
            if mask is not None and mask not in ctx.evaluated:
                ctx.evaluated.add(mask)
                if not any(c > 0 for c in t.constraints.values()):
                    ctx._values.append(list(t.values))
        elif t.state == TrialState.RUNNING:
            if all(p in t.params for p in names):
                running.append((t, _bits(ctx.space, t.params)))
            elif coord.lock is not None:
                try:
                    ctx.db.study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                    continue
                coord.stale_failed += 1
                log.warning(
                    "trial %d was left half-asked (worker %s died?); marked failed",
                    t.number,
                    t.user_attrs.get("worker", "unknown"),
                )
    return running


def _in_flight(ctx: SearchContext, coord: Coordination, trials: list[Any]) -> dict[int, int]:
    """Index of each asked trial → id of another RUNNING trial with the same parameters.

    Without a shared lock, only trials that started before it count (two workers that asked
    the same mask must not wait for each other), and a trial whose parameters are still
    being written and agree so far is re-read for up to 2 s (then taken for the remains of
    a crashed ask and ignored).
    """
    import datetime
    import time

    from optuna.trial import TrialState

    ordered = coord.lock is None
    n_params = len(ctx.space.param_names)
    mine = {t._trial_id for t in trials}
    deadline = time.monotonic() + 2.0
    while True:
        running = [
            t
            for t in ctx.db.trials(states=(TrialState.RUNNING,))
            if t._trial_id not in coord.orphans
        ]
        start = {
            t._trial_id: (t.datetime_start or datetime.datetime.min, t.number) for t in running
        }
        out: dict[int, int] = {}
        partial = set()
        for i, t in enumerate(trials):
            key = start.get(t._trial_id, (datetime.datetime.max, t.number))
            for o in running:
                if o._trial_id in mine or (ordered and start[o._trial_id] >= key):
                    continue
                if any(t.params.get(p) != v for p, v in o.params.items()):
                    continue
                if len(o.params) < n_params:
                    partial.add(o._trial_id)
                    continue
                out[i] = o._trial_id
                break
        if not partial:
            return out
        if time.monotonic() > deadline:
            coord.orphans |= partial
            return out
        time.sleep(0.05)


def _wait_for(
    ctx: SearchContext, coord: Coordination, lock: Any, waits: dict[int, int], masks: list[Any]
) -> dict[str, Any]:
    """Wait until the other workers' trials finish; their results, when the evaluator has no
    cache to take them from (mask → Evaluation)."""
    import time

    from ..evaluate import Evaluation, Metric

    storage = ctx.db.study._storage
    pending = set(waits.values())
    finished = {}
    taking = {ctx.space.to_bitstring(masks[i]) for i in waits}
    deadline = time.monotonic() + coord.wait_timeout
    while pending:
        for tid in list(pending):
            frozen = storage.get_trial(tid)
            if frozen.state.is_finished():
                finished[tid] = frozen
                pending.discard(tid)
        if not pending:
            break
        if time.monotonic() >= deadline:
            coord.wait_timeouts += len(pending)
            log.warning(
                "gave up waiting %.0f s for %d trial(s) of other workers; evaluating their "
                "masks here",
                coord.wait_timeout,
                len(pending),
            )
            break
        time.sleep(coord.poll_interval)
        with lock:
            _redo_stale(ctx, coord, taking)
    known = {}
    for frozen in finished.values():
        mask = frozen.user_attrs.get("mask")
        if frozen.state.name != "COMPLETE" or mask is None:
            continue
        coord.taken_over += 1
        if ctx.evaluator.cache is None and "metrics" in frozen.user_attrs:
            metrics = {k: Metric.from_dict(v) for k, v in frozen.user_attrs["metrics"].items()}
            known[mask] = Evaluation(
                mask, tuple(ctx.space.skipped_names(mask)), metrics, cache_hit=True
            )
    return known


def _tell_batch(
    engine: str,
    ctx: SearchContext,
    trials: list[Any],
    masks: list[Any],
    known: dict[str, Any] | None = None,
) -> None:
    """Evaluate the masks (except ``known`` results) and tell the trials."""
    import dataclasses

    from optuna.trial import TrialState

    if not trials:
        return
    db, study = ctx.db, ctx.db.study
    known = known or {}
    bits = [ctx.space.to_bitstring(m) for m in masks]
    todo = [m for m, b in zip(masks, bits) if b not in known]
    try:
        evs = ctx.evaluator.evaluate_many(todo) if todo else []
    except BaseException:
        for t in trials:
            study.tell(t, state=TrialState.FAIL)
        raise
    results = {**known, **{ev.mask: ev for ev in evs}}
    told: set[str] = set()
    for t, b in zip(trials, bits):
        ev = results[b]
        if b in told:  # asked twice in this batch: evaluated once, the second is a hit
            ev = dataclasses.replace(ev, cache_hit=True, seconds=0.0)
        told.add(b)
        ctx.account(ev)
        system = study._storage.get_trial_system_attrs(t._trial_id)
        gen = next((v for k, v in system.items() if k.endswith(":generation")), None)
        attrs = db.user_attrs_of(ev, engine=engine, generation=gen)
        for k, v in attrs.items():
            t.set_user_attr(k, v)
        for key, value in db.constraint_values(ev, ctx.reference).items():
            t.set_constraint(key, value)
        study.tell(t, db.values_of(ev))
        ctx.trials_this_run += 1


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
