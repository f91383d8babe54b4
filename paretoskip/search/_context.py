"""What every engine shares: budget, evaluation, recording, progress."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..evaluate import Evaluation, Evaluator
from ..front import hypervolume
from ..progress import NullBar, progress_bar
from ..study import StudyDB, TrialRecord

if TYPE_CHECKING:
    from ..coordination import Coordination

__all__ = ["SearchContext", "Fidelity", "FIDELITIES"]

log = logging.getLogger("paretoskip.search")

#: The accepted values of ``fidelity``.
FIDELITIES = ("full", "multi")
#: Objectives a multi-fidelity search screens on: accuracy, and costs counted exactly.
_EXACT_COSTS = ("flops", "params")


class Fidelity:
    """How candidates are evaluated: ``"full"`` (every one on the whole validation split)
    or ``"multi"`` (screened first on a stratified subset, see :class:`SearchContext`).

    Args:
        mode: ``"full"`` or ``"multi"``.
        screen_fraction: the share of each class of the validation split in the subset.
        screen_k: a candidate is dropped when its subset accuracy is below the accuracy a
            full-split point of no higher cost reaches by more than ``screen_k`` standard
            errors of the difference.
        screen_seed: seeds the subset draw.
    """

    def __init__(
        self,
        mode: str = "full",
        *,
        screen_fraction: float = 0.2,
        screen_k: float = 2.0,
        screen_seed: int = 0,
    ):
        if mode not in FIDELITIES:
            raise ConfigError(f"fidelity={mode!r}; accepted: {', '.join(map(repr, FIDELITIES))}")
        if (
            isinstance(screen_fraction, bool)
            or not isinstance(screen_fraction, (int, float))
            or not 0 < screen_fraction < 1
        ):
            raise ConfigError(
                f"screen_fraction={screen_fraction!r}; accepted: a number in (0, 1), the "
                "share of the validation split candidates are screened on"
            )
        if (
            isinstance(screen_k, bool)
            or not isinstance(screen_k, (int, float))
            or not (math.isfinite(screen_k) and screen_k >= 0)
        ):
            raise ConfigError(
                f"screen_k={screen_k!r}; accepted: a number >= 0 (standard errors of margin)"
            )
        if isinstance(screen_seed, bool) or not isinstance(screen_seed, int):
            raise ConfigError(f"screen_seed={screen_seed!r}; accepted: an integer")
        self.mode = mode
        self.screen_fraction = float(screen_fraction)
        self.screen_k = float(screen_k)
        self.screen_seed = screen_seed

    @property
    def multi(self) -> bool:
        return self.mode == "multi"

    def check(self, objectives: Sequence[Any]) -> None:
        """Refuse screening where it could drop a front member unseen: it needs accuracy
        among the objectives and every other objective counted exactly."""
        if not self.multi:
            return
        names = [o.name for o in objectives]
        other = [n for n in names if n != "accuracy" and n not in _EXACT_COSTS]
        if "accuracy" not in names or other:
            raise ConfigError(
                f"fidelity='multi' screens on accuracy against exactly counted costs; the "
                f"objectives are {names} (accepted: accuracy with {' / '.join(_EXACT_COSTS)})"
            )

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"fidelity": self.mode}
        if self.multi:
            d.update(
                screen_fraction=self.screen_fraction,
                screen_k=self.screen_k,
                screen_seed=self.screen_seed,
            )
        return d


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
        fidelity: Fidelity | None = None,
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
        self.fidelity = fidelity or Fidelity()
        self.fidelity.check(self.objectives)
        if self.fidelity.multi and coordination is not None:
            raise ConfigError(
                f"fidelity='multi' is not supported by engine {engine!r}: Optuna samplers "
                "and workers sharing a study evaluate on the whole split (fidelity='full')"
            )
        self.evaluated: set[str] = set()
        self.recorded: set[tuple[str, int | None, str]] = set()
        self._values: list[list[float]] = []
        #: masks measured on the whole split (feasible ones with their objective values)
        self.full_masks: set[str] = set()
        self._full_points: list[tuple[float, tuple[float, ...]]] = []
        #: candidates dropped after screening, by mask (their subset evaluations)
        self.screened: dict[str, Evaluation] = {}
        self.n_val = len(evaluator.data.val.y)
        self.subset = (
            evaluator.validation_subset(self.fidelity.screen_fraction, self.fidelity.screen_seed)
            if self.fidelity.multi
            else None
        )
        self.image_evaluations = 0
        self.screen_evaluations = 0
        self.screened_out = 0
        self.promoted = 0
        for r in db.records(states=None):
            if r.mask is None or not (r.completed or r.screened):
                continue
            self.recorded.add((r.engine or "", r.generation, r.mask))
            self.evaluated.add(r.mask)
            if r.screened:
                self.screened[r.mask] = r.evaluation(self.space)
                continue
            self.full_masks.add(r.mask)
            if r.feasible:
                self._values.append(list(r.values or ()))
                self._add_full_point(r.values or ())
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
        recorded for this generation, e.g. before a crash).

        With ``fidelity="multi"`` a mask not measured on the whole split yet is first
        evaluated on the validation subset; it is dropped when a feasible full-split point
        of no higher cost (every cost objective ≤ its own) beats its subset accuracy by
        more than ``screen_k`` standard errors of the difference.  A dropped candidate is
        recorded as a PRUNED trial with ``fidelity="subset"`` and its subset evaluation is
        what the engine gets back; the others are evaluated on the whole split by the
        evaluator, exactly as without screening.
        """
        if not self.fidelity.multi:
            evs = self.evaluator.evaluate_many(masks)
            fid: dict[str, tuple[str, int] | None] = {ev.mask: None for ev in evs}
        else:
            evs, fid = self._evaluate_multi(masks)
        self.count_images(ev for ev in evs if fid[ev.mask] is None or fid[ev.mask][0] == "full")
        for ev in evs:
            self.account(ev, fidelity=fid[ev.mask])
            key = (self.engine, generation, ev.mask)
            if record and key not in self.recorded:
                self.db.record(
                    ev,
                    self.reference,
                    engine=self.engine,
                    generation=generation,
                    fidelity=fid[ev.mask],
                )
                self.recorded.add(key)
                self.trials_this_run += 1
        self.refresh()
        return evs

    def _evaluate_multi(
        self, masks: Sequence[Sequence[int]]
    ) -> tuple[list[Evaluation], dict[str, tuple[str, int] | None]]:
        space, subset = self.space, self.subset
        assert subset is not None
        keys = [space.to_bitstring(m) for m in masks]
        distinct = list(dict.fromkeys(keys))
        full_cached = set(self.evaluator.cached(distinct)) | self.full_masks
        fresh = [k for k in distinct if k not in full_cached and k not in self.screened]
        dropped: dict[str, Evaluation] = {}
        if fresh:
            subs = self.evaluator.subset_evaluate_many(fresh, subset)
            for ev in subs:
                if not ev.cache_hit:
                    self.screen_evaluations += 1
                    self.image_evaluations += len(subset)
                if self._dominated(ev):
                    dropped[ev.mask] = ev
            self.screened_out += len(dropped)
            self.promoted += len(fresh) - len(dropped)
        full = [k for k in distinct if k not in dropped and k not in self.screened]
        results = {ev.mask: ev for ev in self.evaluator.evaluate_many(full)} if full else {}
        out: dict[str, Evaluation] = {}
        fid: dict[str, tuple[str, int] | None] = {}
        for k in distinct:
            if k in results:
                out[k], fid[k] = results[k], ("full", self.n_val)
            else:
                out[k] = dropped.get(k) or self.screened[k]
                fid[k] = ("subset", len(subset))
        return [out[k] for k in keys], fid

    def _costs(self, values: Sequence[float]) -> tuple[float, ...]:
        return tuple(v for o, v in zip(self.objectives, values) if o.name != "accuracy")

    def _add_full_point(self, values: Sequence[float]) -> None:
        acc = next(v for o, v in zip(self.objectives, values) if o.name == "accuracy")
        self._full_points.append((float(acc), self._costs(values)))

    def _dominated(self, ev: Evaluation) -> bool:
        """Whether a screened evaluation is beaten beyond its spread by a full-split point."""
        n_s, n_f, k = len(self.subset), self.n_val, self.fidelity.screen_k
        acc = ev["accuracy"]
        # the subset's proportion estimate kept off 0 and 1 (add-one), so a perfect or
        # null subset score still has a spread
        p = (acc * n_s + 1) / (n_s + 2)
        costs = self._costs(self.db.values_of(ev))
        for best, c in self._full_points:
            if best <= acc or any(a > b for a, b in zip(c, costs)):
                continue
            se = math.sqrt(p * (1 - p) / n_s + best * (1 - best) / n_f)
            if best - acc > k * se:
                return True
        return False

    def account(self, ev: Evaluation, *, fidelity: tuple[str, int] | None = None) -> None:
        """Count an evaluation this process got (measured, or from the cache);
        ``fidelity`` as :meth:`StudyDB.record` takes it (None: the whole split)."""
        new = ev.mask not in self.evaluated
        if ev.cache_hit:
            self.cache_hits += 1
        elif new:
            self.new_evaluations += 1
        subset = fidelity is not None and fidelity[0] == "subset"
        self.evaluated.add(ev.mask)
        if subset:
            self.screened.setdefault(ev.mask, ev)
            return
        first_full = ev.mask not in self.full_masks
        self.full_masks.add(ev.mask)
        if first_full and all(
            c <= 0 for c in self.db.constraint_values(ev, self.reference).values()
        ):
            self._values.append(self.db.values_of(ev))
            if self.fidelity.multi:
                self._add_full_point(self.db.values_of(ev))

    def count_images(self, evs: Any) -> None:
        """Add the validation images of the whole-split evaluations measured in one batch
        (each distinct one that was not a cache hit) to ``image_evaluations``."""
        seen: set[str] = set()
        for ev in evs:
            if not ev.cache_hit and ev.mask not in seen:
                self.image_evaluations += self.n_val
            seen.add(ev.mask)

    def account_other(self, record: TrialRecord) -> None:
        """Count an evaluation another worker completed (a COMPLETE trial of the study)."""
        if record.mask is None or record.mask in self.evaluated:
            return
        self.evaluated.add(record.mask)
        self.full_masks.add(record.mask)
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
            **self.fidelity.describe(),
            # validation images × masks this run measured (cache hits cost none)
            "image_evaluations": self.image_evaluations,
            "validation_images": self.n_val,
            **(
                {
                    "screen_images": len(self.subset),
                    "screen_evaluations": self.screen_evaluations,
                    "screened_out": self.screened_out,
                    "promoted": self.promoted,
                }
                if self.subset is not None
                else {}
            ),
        }
