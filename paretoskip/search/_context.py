"""What every engine shares: budget, evaluation, recording, progress."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..evaluate import Evaluation, Evaluator
from ..front import hypervolume
from ..study import StudyDB

log = logging.getLogger("paretoskip.search")


class SearchContext:
    """Budget accounting, evaluation and recording for one engine run.

    The budget counts *distinct masks* evaluated in the study (the full-model reference
    included), across resumes and workers; a mask proposed again costs a cache look-up,
    not an evaluation.
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
    ):
        self.evaluator = evaluator
        self.db = db
        self.space = db.space
        self.objectives = db.objectives
        self.constraints = db.constraints
        self.engine = engine
        self.budget = budget
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.started = time.monotonic()
        trials = db.trials()
        self.evaluated: set[str] = {t.user_attrs["mask"] for t in trials if "mask" in t.user_attrs}
        self.recorded: set[tuple[str, int | None, str]] = {
            (t.user_attrs.get("engine", ""), t.user_attrs.get("generation"), t.user_attrs["mask"])
            for t in trials
            if "mask" in t.user_attrs
        }
        self._values = [
            list(t.values) for t in trials if not any(c > 0 for c in t.constraints.values())
        ]
        self.trials_this_run = 0
        self.max_trials = max_trials if max_trials is not None else 20 * budget + 100
        self.cache_hits = 0
        self.new_evaluations = 0
        ref = db.reference()
        self.reference: dict[str, float] = (
            {k: m["value"] for k, m in ref["metrics"].items()} if ref else {}
        )
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=budget,
                initial=min(len(self.evaluated), budget),
                desc=f"{engine}",
                unit="eval",
            )
            self._update_bar()

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
        self._update_bar()
        return evs

    def account(self, ev: Evaluation) -> None:
        new = ev.mask not in self.evaluated
        if ev.cache_hit:
            self.cache_hits += 1
        elif new:
            self.new_evaluations += 1
        self.evaluated.add(ev.mask)
        if new and all(c <= 0 for c in self.db.constraint_values(ev, self.reference).values()):
            self._values.append(self.db.values_of(ev))

    def minimised(self, ev: Evaluation) -> list[float]:
        return [o.sign * ev[o.name] for o in self.objectives]

    def constraint_vector(self, ev: Evaluation) -> list[float]:
        values = self.db.constraint_values(ev, self.reference)
        return [values[c.key] for c in self.constraints]

    # -- progress ------------------------------------------------------------------------
    def current_hypervolume(self) -> float:
        if not self._values or not self.reference:
            return 0.0
        return hypervolume(np.array(self._values), self.objectives, self.reference)

    def _update_bar(self) -> None:
        if self._bar is None:
            return
        self._bar.n = min(len(self.evaluated), self.budget)
        self._bar.set_postfix(
            cache_hits=self.cache_hits, hv=f"{self.current_hypervolume():.4f}", refresh=False
        )
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def summary(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "distinct_masks": len(self.evaluated),
            "new_evaluations": self.new_evaluations,
            "cache_hits": self.cache_hits,
            "trials_recorded": self.trials_this_run,
            "seconds": time.monotonic() - self.started,
            "hypervolume": self.current_hypervolume(),
        }
