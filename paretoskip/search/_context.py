"""What every engine shares: budget, evaluation, recording, progress."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..evaluate import Evaluation, Evaluator
from ..front import hypervolume
from ..progress import NullBar, progress_bar
from ..study import StudyDB, TrialRecord

if TYPE_CHECKING:
    from ..coordination import Coordination

__all__ = ["SearchContext"]

log = logging.getLogger("paretoskip.search")


class SearchContext:
    """Budget accounting, evaluation and recording for one engine run.

    The budget counts *distinct masks* evaluated in the study (the full-model reference
    included), across resumes and workers; a mask proposed again costs a cache look-up,
    not an evaluation.  ``coordination`` (set by :func:`paretoskip.worker.run_worker`) is
    how several workers of one study share it; None for a single process.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        db: StudyDB,
        *,
        engine: str,
        budget: int,
        timeout: float | None,
        progress: bool,
        max_trials: int | None = None,
        coordination: Coordination | None = None,
    ):
        self.evaluator = evaluator
        self.db = db
        self.space = db.space
        self.objectives = db.objectives
        self.constraints = db.constraints
        self.engine = engine
        self.budget = budget
        self.coordination = coordination
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.started = time.monotonic()
        self.evaluated: set[str] = set()
        self.recorded: set[tuple[str, int | None, str]] = set()
        self._values: list[list[float]] = []
        for r in db.records():
            if r.mask is None:
                continue
            self.recorded.add((r.engine or "", r.generation, r.mask))
            self.evaluated.add(r.mask)
            if r.feasible:
                self._values.append(list(r.values or ()))
        self.trials_this_run = 0
        self.max_trials = max_trials if max_trials is not None else 4 * budget + 100
        self.cache_hits = 0
        self.new_evaluations = 0
        self.duplicate_trials = 0  # trials of masks the study held already (Optuna samplers)
        self.duplicate_cap_hit = False
        self.unexplored_enqueued = 0
        self.reference: dict[str, float] = db.reference_values()
        self._bar = progress_bar(
            budget,
            progress,
            desc=engine,
            unit="eval",
            initial=min(len(self.evaluated), budget),
            leave=True,
        )
        self.refresh()

    # -- budget --------------------------------------------------------------------------
    @property
    def remaining(self) -> int:
        return max(0, self.budget - len(self.evaluated))

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def done(self) -> bool:
        return (
            self.remaining == 0
            or self.out_of_time()
            or len(self.evaluated) >= self.space.size
            or self.trials_this_run >= self.max_trials
        )

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(
        self, masks: Sequence[Sequence[int]], *, generation: int | None = None, record: bool = True
    ) -> list[Evaluation]:
        """Evaluate masks and record each as a trial (skipping ones this engine already
        recorded for this generation, e.g. before a crash)."""
        evs = self.evaluator.evaluate_many(masks)
        for ev in evs:
            self.account(ev)
            key = (self.engine, generation, ev.mask)
            if record and key not in self.recorded:
                self.db.record(ev, self.reference, engine=self.engine, generation=generation)
                self.recorded.add(key)
                self.trials_this_run += 1
        self.refresh()
        return evs

    def account(self, ev: Evaluation) -> None:
        """Count an evaluation this process got (measured, or from the cache)."""
        new = ev.mask not in self.evaluated
        if ev.cache_hit:
            self.cache_hits += 1
        elif new:
            self.new_evaluations += 1
        self.evaluated.add(ev.mask)
        if new and all(c <= 0 for c in self.db.constraint_values(ev, self.reference).values()):
            self._values.append(self.db.values_of(ev))

    def account_other(self, record: TrialRecord) -> None:
        """Count an evaluation another worker completed (a COMPLETE trial of the study)."""
        if record.mask is None or record.mask in self.evaluated:
            return
        self.evaluated.add(record.mask)
        if record.feasible:
            self._values.append(list(record.values or ()))

    def minimised(self, ev: Evaluation) -> list[float]:
        """The objective values of ``ev``, each signed so that it is minimised."""
        return [o.sign * ev[o.name] for o in self.objectives]

    def constraint_vector(self, ev: Evaluation) -> list[float]:
        """The constraint values of ``ev`` (≤ 0 satisfied), in the study's order."""
        values = self.db.constraint_values(ev, self.reference)
        return [values[c.key] for c in self.constraints]

    # -- progress ------------------------------------------------------------------------
    def current_hypervolume(self) -> float:
        if not self._values or not self.reference:
            return 0.0
        return hypervolume(np.array(self._values), self.objectives, self.reference)

    def refresh(self) -> None:
        """Bring the progress bar up to date (nothing without one)."""
        if isinstance(self._bar, NullBar):
            return
        self._bar.n = min(len(self.evaluated), self.budget)
        self._bar.set_postfix(
            cache_hits=self.cache_hits, hv=f"{self.current_hypervolume():.4f}", refresh=False
        )
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()

    def summary(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "distinct_masks": len(self.evaluated),
            "new_evaluations": self.new_evaluations,
            "cache_hits": self.cache_hits,
            "trials_recorded": self.trials_this_run,
            "duplicate_trials": self.duplicate_trials,
            "duplicate_cap_hit": self.duplicate_cap_hit,
            "unexplored_enqueued": self.unexplored_enqueued,
            "seconds": time.monotonic() - self.started,
            "hypervolume": self.current_hypervolume(),
        }
