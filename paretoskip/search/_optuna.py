"""Optuna's samplers as engines, driven through ask/tell on the study itself."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import signal
import threading
import time
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from ..coordination import Coordination
from ..errors import ConfigError
from ..evaluate import Evaluation
from ..study import worker_id
from ._base import Engine, register_engine
from ._context import SearchContext

__all__ = ["OptunaEngine", "SAMPLER_OPTIONS"]

log = logging.getLogger("paretoskip.search")

#: Sampler name → (description, the sampler settings it accepts).
SAMPLER_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "nsga2": (
        "Optuna NSGAIISampler",
        ("population_size", "mutation_prob", "crossover_prob", "swapping_prob"),
    ),
    "nsga3": (
        "Optuna NSGAIIISampler",
        ("population_size", "mutation_prob", "crossover_prob", "swapping_prob"),
    ),
    "tpe": ("Optuna TPESampler (multivariate)", ("n_startup_trials", "multivariate")),
    "gp": ("Optuna GPSampler", ("n_startup_trials",)),
    "random": ("Optuna RandomSampler", ()),
    "bruteforce": ("Optuna BruteForceSampler", ()),
}


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold Ctrl-C (SIGINT) back until the block ends, then raise it.

    ``study.ask()`` writes a RUNNING trial before it returns; an interrupt inside it would
    leave that trial RUNNING with nobody holding it.  Only the main thread receives signals,
    so elsewhere (or where SIGINT is not Python's default handler) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class OptunaEngine(Engine):
    """An Optuna sampler driven through ask/tell; trials are the study's own.

    Its state is the study, so several workers can share it (:mod:`paretoskip.worker`).

    Near the end of a small space a sampler keeps proposing masks the study holds already
    (each costs a trial, not an evaluation).  After ``duplicate_cap`` such trials in a row
    (default: the batch size, at least 4) the engine says so once and from then on follows
    every batch that had a duplicate with a batch of masks nobody has explored yet (drawn at
    random); it stops when the space is explored.  So the trials of a run stay below about
    twice its new masks plus the cap.
    """

    shareable = True

    def __init__(
        self,
        sampler: str,
        seed: int = 0,
        batch: int | None = None,
        duplicate_cap: int | None = None,
        **options: Any,
    ):
        self.sampler_name = sampler
        self.name = sampler
        super().__init__(seed, **options)
        self.batch = batch
        if duplicate_cap is not None and (
            isinstance(duplicate_cap, bool)
            or not isinstance(duplicate_cap, int)
            or duplicate_cap < 1
        ):
            raise ConfigError(f"duplicate_cap={duplicate_cap!r}; a positive number of trials")
        self.duplicate_cap = duplicate_cap

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        """The configured Optuna sampler."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            o = dict(self.options)
            s = self.sampler_name
            if s in ("nsga2", "nsga3"):
                o.setdefault("population_size", 20)
                cls = (
                    optuna.samplers.NSGAIISampler
                    if s == "nsga2"
                    else optuna.samplers.NSGAIIISampler
                )
                return cls(seed=self.seed, **o)
            if s == "tpe":
                o.setdefault("multivariate", True)
                # several workers: avoid masks others are evaluating
                o.setdefault("constant_liar", True)
                return optuna.samplers.TPESampler(seed=self.seed, **o)
            if s == "gp":
                return optuna.samplers.GPSampler(seed=self.seed, **o)
            if s == "random":
                return optuna.samplers.RandomSampler(seed=self.seed)
            return _AskTellBruteForceSampler(seed=self.seed)

    def _batch_size(self) -> int:
        if self.batch:
            return self.batch
        if self.sampler_name in ("nsga2", "nsga3"):
            return self.options.get("population_size", 20)
        return 1 if self.sampler_name == "gp" else 4

    def run(self, ctx: SearchContext) -> None:
        """Ask a batch, evaluate it, tell it, until the study holds the budget.

        Several processes may run this on one study at once (see :mod:`paretoskip.worker`,
        which gives the context a :class:`~paretoskip.coordination.Coordination`): the
        budget counts the masks completed by every worker plus those other workers are
        evaluating; a mask another worker is already evaluating is waited for and taken
        from the cache instead of evaluated again; and RUNNING trials of dead workers are
        failed and their masks enqueued again, before every ask.  A single process behaves
        as a plain ask/tell loop.
        """
        db = ctx.db
        space = ctx.space
        study = db.study
        study.sampler = self.make_sampler()
        dists = db.distributions()
        coord = ctx.coordination or Coordination()
        batch = self._batch_size()
        me = worker_id()
        cap = self.duplicate_cap if self.duplicate_cap is not None else max(4, batch)
        rng = np.random.default_rng(self.seed)
        streak = 0  # duplicate trials in a row (masks the study held already)
        exploring = False  # the cap was hit: a batch with a duplicate is followed by new masks
        refill = False

        trials: list[Any] = []
        try:
            while True:
                with coord.locked():  # asks are atomic across the workers sharing this lock
                    coord.redo_stale(ctx)
                    others = coord.sync(ctx)
                    if ctx.done():
                        break
                    busy = {r.mask for r in others} - ctx.evaluated
                    n = min(batch, ctx.remaining - len(busy))
                    if refill and n > 0:
                        added = self._enqueue_unexplored(ctx, busy, n, rng)
                        ctx.unexplored_enqueued += added
                        if added == 0 and not busy:
                            log.info("%s: every mask of the space is explored", self.name)
                            break
                    refill = False
                    trials = []
                    for _ in range(max(n, 0)):
                        with _interrupts_deferred():  # no trial asked but not held
                            trials.append(study.ask())
                        t = trials[-1]
                        # owner first, so that a dead worker's trial is found
                        t.set_user_attr("worker", me)
                        t.set_user_attr("engine", self.name)
                        for name, dist in dists.items():
                            t.suggest_categorical(name, dist.choices)
                    masks = [
                        space.mask_from_genes([t.params[p] for p in space.param_names])
                        for t in trials
                    ]
                    waits = coord.in_flight(ctx, trials) if trials else {}
                if not trials:  # the rest of the budget is in other workers' hands: wait
                    time.sleep(coord.poll_interval)
                    continue
                own = [i for i in range(len(trials)) if i not in waits]
                dups = self._tell(ctx, [trials[i] for i in own], [masks[i] for i in own])
                if waits:
                    idx = sorted(waits)
                    known = coord.wait_for(ctx, {i: waits[i] for i in idx}, masks)
                    self._tell(ctx, [trials[i] for i in idx], [masks[i] for i in idx], known)
                trials = []
                for dup in dups:
                    streak = streak + 1 if dup else 0
                ctx.duplicate_trials += sum(dups)
                if not exploring and streak >= cap:
                    exploring = True
                    ctx.duplicate_cap_hit = True
                    log.warning(
                        "%s proposed %d masks in a row that the study holds already (the "
                        "neighbourhood it searches is exhausted): from now on a batch with a "
                        "duplicate is followed by masks not explored yet",
                        self.name,
                        streak,
                    )
                refill = exploring and any(dups)
                ctx.refresh()
        except BaseException:
            # an interrupt (Ctrl-C) or a failure leaves no trial of this process RUNNING
            for t in trials:
                with contextlib.suppress(Exception):
                    db.fail(t)
            raise

    def _enqueue_unexplored(
        self, ctx: SearchContext, busy: set[str], n: int, rng: np.random.Generator
    ) -> int:
        """Enqueue up to ``n`` masks nobody has evaluated, is evaluating or has enqueued
        (drawn at random); returns how many."""
        space, db = ctx.space, ctx.db
        waiting = set()
        for t in db.trials(states=(TrialState.WAITING,)):
            fixed = t.system_attrs.get("fixed_params") or {}
            if all(p in fixed for p in space.param_names):
                genes = [int(fixed[p]) for p in space.param_names]
                waiting.add(space.to_bitstring(space.mask_from_genes(genes)))
        taken = ctx.evaluated | busy | waiting
        g = space.n_genes
        picks: list[str] = []
        if g <= 16:
            free = [
                b
                for b in (
                    space.to_bitstring(space.mask_from_genes([(i >> k) & 1 for k in range(g)]))
                    for i in range(2**g)
                )
                if b not in taken
            ]
            if free:
                picks = [free[i] for i in rng.choice(len(free), min(n, len(free)), replace=False)]
        else:
            for _ in range(100 * n):
                if len(picks) == n:
                    break
                b = space.to_bitstring(space.mask_from_genes(list(rng.integers(0, 2, g))))
                if b not in taken and b not in picks:
                    picks.append(b)
        for b in picks:
            db.study.enqueue_trial(db.params_of(b), skip_if_exists=False)
        return len(picks)

    def _tell(
        self,
        ctx: SearchContext,
        trials: list[Any],
        masks: list[Any],
        known: dict[str, Evaluation] | None = None,
    ) -> list[bool]:
        """Evaluate the masks (except ``known`` results) and tell the trials; which of them
        were duplicates (masks the study held already)."""
        if not trials:
            return []
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
        ctx.count_images(evs)
        results = {**known, **{ev.mask: ev for ev in evs}}
        told: set[str] = set()
        dups = []
        for t, b in zip(trials, bits):
            ev = results[b]
            if b in told:  # asked twice in this batch: evaluated once, the second is a hit
                ev = dataclasses.replace(ev, cache_hit=True, seconds=0.0)
            dups.append(b in ctx.evaluated or b in told)
            told.add(b)
            ctx.account(ev)
            db.tell(t, ev, ctx.reference, engine=self.name)
            ctx.trials_this_run += 1
        return dups


class _AskTellBruteForceSampler(optuna.samplers.BruteForceSampler):
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


for _sampler, (_description, _options) in SAMPLER_OPTIONS.items():
    register_engine(
        _sampler,
        _description,
        functools.partial(OptunaEngine, _sampler),
        options=(*_options, "batch", "duplicate_cap"),
        shareable=True,
    )
