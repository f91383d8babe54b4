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
from ..front import hypervolume, nondominated
from ..progress import NullBar, progress_bar
from ..study import StudyDB, TrialRecord

if TYPE_CHECKING:
    from ..coordination import Coordination

__all__ = ["SearchContext", "Fidelity", "FIDELITIES", "paired_shortfall"]

log = logging.getLogger("paretoskip.search")

#: The accepted values of ``fidelity``.
FIDELITIES = ("full", "multi")
#: Objectives a multi-fidelity search screens on: accuracy, and costs counted exactly.
_EXACT_COSTS = ("flops", "params")
#: The source of a dropped candidate's accuracy: estimated from the subset, paired with
#: whole-split masks (see :meth:`SearchContext._beaten`).
_PAIRED_SOURCE = "estimated:paired-validation-subset"
#: How many whole-split masks nearest a candidate predict its per-image results when it
#: is screened (see :meth:`SearchContext._beaten`).
PROXIES = 6


def paired_shortfall(
    reference: np.ndarray, candidate: np.ndarray, population: int
) -> tuple[np.ndarray, np.ndarray]:
    """How far each reference beats a candidate on the same images, and its standard error.

    ``candidate`` (images) says which of n images drawn without replacement from
    ``population`` it classifies correctly; ``reference`` (points × images) the same of
    each reference, or, as numbers in [0, 1], a prediction of the candidate's per-image
    results (the mean of several masks').  With e = reference - candidate per image, the
    estimate of the difference on the whole population is mean(e); its standard error is
    that of a mean of n draws without replacement, with the per-image variance
    (sum(e^2) + 1) / n - mean(e)^2 (add-one: images without a disagreement still leave a
    spread).  For 0/1 results sum(e^2) counts the images where the two disagree.  Errors
    the two share cancel, which is what makes this test sharper than comparing two
    accuracies.
    """
    ref = np.atleast_2d(np.asarray(reference))
    cand = np.asarray(candidate, dtype=float)
    n = cand.shape[-1]
    e = ref.astype(float) - cand
    diff = e.sum(axis=1) / n
    var = np.maximum(((e * e).sum(axis=1) + 1) / n - diff**2, 0.0)
    return diff, np.sqrt(var / n * max(1.0 - n / population, 0.0))


class Fidelity:
    """How candidates are evaluated: ``"full"`` (every one on the whole validation split)
    or ``"multi"`` (screened first on a stratified subset, see :class:`SearchContext`).

    Args:
        mode: ``"full"`` or ``"multi"``.
        screen_fraction: the share of each class of the validation split in the largest
            subset.
        screen_k: a candidate is dropped when a front point of the whole-split
            evaluations of no higher cost is more accurate than the candidate's estimate
            (paired on the subset images with its nearest whole-split neighbours) by more
            than ``screen_k`` standard errors, or another candidate of its batch of no
            higher cost beats it on the same images by as much.
        screen_seed: seeds the subset draw.
        screen_rungs: the number of nested subsets a candidate passes before the whole
            split, each twice the one before and the last ``screen_fraction`` (5 with
            0.8: 5, 10, 20, 40 and 80 % of each class); a candidate dropped on a small one
            costs only its images.
    """

    def __init__(
        self,
        mode: str = "full",
        *,
        screen_fraction: float = 0.8,
        screen_k: float = 2.0,
        screen_seed: int = 0,
        screen_rungs: int = 5,
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
        if isinstance(screen_rungs, bool) or not isinstance(screen_rungs, int) or screen_rungs < 1:
            raise ConfigError(
                f"screen_rungs={screen_rungs!r}; accepted: an integer >= 1 (nested subsets "
                "before the whole split)"
            )
        self.mode = mode
        self.screen_fraction = float(screen_fraction)
        self.screen_k = float(screen_k)
        self.screen_seed = screen_seed
        self.screen_rungs = screen_rungs

    @property
    def fractions(self) -> list[float]:
        """The share of each class in each subset, smallest first."""
        r = self.screen_rungs
        return [self.screen_fraction / 2 ** (r - 1 - i) for i in range(r)]

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
                screen_rungs=self.screen_rungs,
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
        #: (objective values, mask) of the feasible whole-split evaluations
        self._full_points: list[tuple[Sequence[float], str]] = []
        #: candidates dropped after screening, by mask (their subset evaluations), and the
        #: images of the subset each was dropped on
        self.screened: dict[str, Evaluation] = {}
        self.screen_images: dict[str, int] = {}
        self.n_val = len(evaluator.data.val.y)
        #: the nested screening subsets (positions in the validation split), smallest first
        self.rungs: list[np.ndarray] = []
        if self.fidelity.multi:
            seed = self.fidelity.screen_seed
            self.rungs = [evaluator.validation_subset(f, seed) for f in self.fidelity.fractions]
            for small, large in zip(self.rungs, self.rungs[1:]):
                assert np.isin(small, large).all(), "screening subsets must be nested"
        self.subset = self.rungs[-1] if self.rungs else None
        #: per rung: the positions of its images in the largest subset
        self._rung_pos = [np.searchsorted(self.subset, r) for r in self.rungs]
        #: which images of the largest subset each mask classifies correctly
        self._correct: dict[str, np.ndarray] = {}
        self.image_evaluations = 0
        #: per rung: the candidates that entered it, and those it dropped
        self.screen_candidates_by_rung = [0] * len(self.rungs)
        self.screened_out_by_rung = [0] * len(self.rungs)
        #: of those, the candidates a batch-mate beat (see :meth:`_beaten_by_peer`)
        self.screened_out_by_peer = 0
        self._peers_pair = all(
            c.metric in _EXACT_COSTS or (c.metric == "accuracy" and c.op == ">=")
            for c in self.constraints
        )
        #: front points measured on the largest subset to pair candidates with
        self.pairing_evaluations = 0
        self.screen_image_evaluations = 0
        for r in db.records(states=None):
            if r.mask is None or not (r.completed or r.screened):
                continue
            self.recorded.add((r.engine or "", r.generation, r.mask))
            self.evaluated.add(r.mask)
            if r.screened:
                self.screened[r.mask] = r.evaluation(self.space)
                self.screen_images[r.mask] = int(r.fidelity_images or 0)
                continue
            self.full_masks.add(r.mask)
            if r.feasible:
                self._values.append(list(r.values or ()))
                self._add_full_point(r.values or (), r.mask)
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

    @property
    def screen_evaluations(self) -> int:
        """Candidates screened (each enters the smallest subset once)."""
        return self.screen_candidates_by_rung[0] if self.rungs else 0

    @property
    def screened_out(self) -> int:
        return sum(self.screened_out_by_rung)

    @property
    def promoted(self) -> int:
        """Candidates that passed every subset (finished on the whole split)."""
        if not self.rungs:
            return 0
        return self.screen_candidates_by_rung[-1] - self.screened_out_by_rung[-1]

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
        evaluated on the nested validation subsets, smallest first; after each it is
        dropped when a front point of the whole-split evaluations of no higher cost (every
        cost objective ≤ its own) is more accurate than its estimated whole-split
        accuracy by more than ``screen_k`` standard errors (:meth:`_beaten`), or else
        another candidate of the batch still in the running beats it on the same images
        by as much (:meth:`_beaten_by_peer`).  A dropped candidate is recorded as a PRUNED trial
        with ``fidelity="subset"`` (and the images of the subset it was dropped on), its
        accuracy estimated on the whole split's scale (see :meth:`_beaten`; against a
        batch-mate, that one's whole-split accuracy or estimate less the shortfall, the
        standard errors combined); that evaluation is what the engine gets
        back.  The others are evaluated on the rest of the validation split, so
        their accuracy is a whole-split value, every image classified once.
        """
        if not self.fidelity.multi:
            evs = self.evaluator.evaluate_many(masks)
            fid: dict[str, tuple[str, int] | None] = {ev.mask: None for ev in evs}
            self.count_images(evs)
        else:  # counts its images itself
            evs, fid = self._evaluate_multi(masks)
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
        space, top = self.space, self.subset
        assert top is not None
        keys = [space.to_bitstring(m) for m in masks]
        distinct = list(dict.fromkeys(keys))
        full_cached = set(self.evaluator.cached(distinct)) | self.full_masks
        alive = [k for k in distinct if k not in full_cached and k not in self.screened]
        #: candidates a front point beat: (estimated accuracy, its SE, rung)
        front_drops: dict[str, tuple[float, float, int]] = {}
        #: candidates a batch-mate beat: (that batch-mate, shortfall, its SE, rung)
        peer_drops: dict[str, tuple[str, float, float, int]] = {}
        done = np.zeros(len(top), dtype=bool)  # images of the largest subset measured so far
        rows = {k: np.zeros(len(top), dtype=bool) for k in alive}
        for r, pos in enumerate(self._rung_pos):
            if not alive:
                break
            new = np.setdiff1d(pos, np.flatnonzero(done))
            got = self.evaluator.subset_correct_many(alive, top[new])
            self.screen_candidates_by_rung[r] += len(alive)
            self._count_screen_images(len(alive) * len(new))
            for k, row in zip(alive, got):
                rows[k][new] = row
            done[new] = True
            beaten = self._beaten({k: rows[k][pos] for k in alive}, r)
            front_drops.update((k, (*drop, r)) for k, drop in beaten.items())
            alive = [k for k in alive if k not in beaten]
            peers = self._beaten_by_peer({k: rows[k][pos] for k in alive})
            peer_drops.update((k, (*drop, r)) for k, drop in peers.items())
            for k in [*beaten, *peers]:
                self.screen_images[k] = len(self.rungs[r])
            self.screened_out_by_rung[r] += len(beaten) + len(peers)
            self.screened_out_by_peer += len(peers)
            alive = [k for k in alive if k not in peers]
        for k in alive:  # measured on every subset image: kept to pair later candidates with
            self._correct[k] = rows[k]
        full = [
            k
            for k in distinct
            if k not in front_drops and k not in peer_drops and k not in self.screened
        ]
        # the images of the subsets are measured already: only the others are run
        known = {k: (top, rows[k]) for k in alive}
        results = {}
        if full:
            results = {ev.mask: ev for ev in self.evaluator.evaluate_many(full, known=known)}
        for ev in results.values():
            if not ev.cache_hit:
                self.image_evaluations += self.n_val - (len(top) if ev.mask in known else 0)
        estimates: dict[str, tuple[float, float]] = {}

        def estimate(k: str) -> tuple[float, float]:
            """k's accuracy on the whole split's scale and its SE: exact when measured
            there, else from what beat it (a chain ends: a batch-mate that beat k was
            alive on the subset k was dropped on, and beat it there)."""
            if k in results:
                return float(results[k]["accuracy"]), 0.0
            if k in front_drops:
                return front_drops[k][:2]
            if k not in estimates:
                peer, diff, se, _ = peer_drops[k]
                acc, acc_se = estimate(peer)
                estimates[k] = (max(acc - diff, 0.0), math.hypot(acc_se, se))
            return estimates[k]

        dropped = {}
        for k, drop in (*front_drops.items(), *peer_drops.items()):  # drop[-1]: its rung
            acc, se = estimate(k)
            dropped[k] = self.evaluator.subset_evaluation(
                k, acc, self.rungs[drop[-1]], source=_PAIRED_SOURCE, spread=se
            )
        out: dict[str, Evaluation] = {}
        fid: dict[str, tuple[str, int] | None] = {}
        for k in distinct:
            if k in results:
                out[k], fid[k] = results[k], ("full", self.n_val)
            else:
                out[k] = dropped.get(k) or self.screened[k]
                fid[k] = ("subset", self.screen_images[k])
        return [out[k] for k in keys], fid

    def _count_screen_images(self, n: int) -> None:
        self.screen_image_evaluations += n
        self.image_evaluations += n

    def _add_full_point(self, values: Sequence[float], mask: str) -> None:
        self._full_points.append((tuple(values), mask))

    def _beaten(self, rows: dict[str, np.ndarray], rung: int) -> dict[str, tuple[float, float]]:
        """The candidates (their correctness on the images of ``rung``) that a whole-split
        front point of no higher cost beats beyond the spread, each with its estimated
        whole-split accuracy and that estimate's standard error.

        A candidate c's whole-split accuracy is estimated from its *proxies*: the
        :data:`PROXIES` masks nearest to it (fewest differing units; then the most
        accurate) among those measured on the whole split and on the screening subsets.
        Their mean per-image result predicts c's; the estimate is their mean whole-split
        accuracy (exact) less :func:`paired_shortfall` of c against that prediction on
        the same images.  This is a difference estimator: unbiased whatever the proxies
        are, as the subset is a random draw, and its only error is that of the
        shortfall, which is small where the prediction is good: near neighbours share
        most of c's errors.  (With the front point itself as the prediction, this is the
        plain paired comparison against it.)  The proxies are chosen from the
        masks and their whole-split accuracies, before c's results are seen, so the
        choice does not bias the test.
        c is dropped when the most accurate front point of no higher cost (its accuracy
        exact) is above the estimate by more than ``screen_k`` standard errors; the
        estimate is then below a point of no higher cost, so dominated, as screening
        found.  (The plain subset accuracy is not: a subset easier than the whole split
        lifts every candidate's, and a dropped candidate could then seem to beat the
        front.)
        """
        if not rows or not self._full_points:
            return {}
        pos = self._rung_pos[rung]
        names = [o.name for o in self.objectives]
        cost_cols = [i for i, n in enumerate(names) if n != "accuracy"]
        acc_col = names.index("accuracy")
        values = np.array([v for v, _ in self._full_points], dtype=float)
        keep = nondominated(values, self.objectives, keep_weakly=False)
        front = [m for (_, m), kept in zip(self._full_points, keep) if kept]
        missing = [m for m in front if m not in self._correct]
        if missing:  # front points not screened in this run: measure them on the subsets
            got = self.evaluator.subset_correct_many(missing, self.subset)
            self.pairing_evaluations += len(missing)
            self._count_screen_images(len(missing) * len(self.subset))
            self._correct.update(zip(missing, got))
        d_costs = values[keep][:, cost_cols]
        d_acc = values[keep][:, acc_col]
        full_acc = {m: float(v[acc_col]) for v, m in self._full_points}
        proxies = [m for m in self._correct if m in full_acc]
        bits = np.array([[b == "1" for b in m] for m in proxies])
        proxy_acc = np.array([full_acc[m] for m in proxies])
        beaten = {}
        k = self.fidelity.screen_k
        for key, c in rows.items():
            costs = self.evaluator.exact_costs(key)
            c_costs = np.array([costs[names[i]] for i in cost_cols], dtype=float)
            eligible = (d_costs <= c_costs).all(axis=1)
            if not eligible.any():
                continue
            # the nearest (then the most accurate among those as near, then the first found)
            dist = (bits != np.array([b == "1" for b in key])).sum(axis=1)
            near = np.lexsort((-proxy_acc, dist))[:PROXIES]
            model = np.mean([self._correct[proxies[q]][pos] for q in near], axis=0)
            diff, se = paired_shortfall(model, c, self.n_val)
            estimate = float(proxy_acc[near].mean() - diff[0])
            margin = float(d_acc[eligible].max()) - estimate
            if margin > 0 and margin > k * float(se[0]):
                beaten[key] = (max(estimate, 0.0), float(se[0]))
        return beaten

    def _beater(
        self, refs: np.ndarray, eligible: np.ndarray, c: np.ndarray
    ) -> tuple[int, float, float] | None:
        """Of the rows of ``refs`` where ``eligible``, the one that beats ``c`` on the same
        images by more than ``screen_k`` standard errors of the paired difference, with the
        smallest such error: (its row, the shortfall, its SE); None when none does."""
        rows = np.flatnonzero(eligible)
        if not len(rows):
            return None
        diff, se = paired_shortfall(refs[rows], c, self.n_val)
        beats = (diff > self.fidelity.screen_k * se) & (diff > 0)
        if not beats.any():
            return None
        best = np.flatnonzero(beats)[np.argmin(se[beats])]
        return int(rows[best]), float(diff[best]), float(se[best])

    def _beaten_by_peer(self, rows: dict[str, np.ndarray]) -> dict[str, tuple[str, float, float]]:
        """The candidates (their correctness on one subset's images) that another candidate
        of the same batch, of no higher cost, beats beyond the spread on the same images,
        each with that batch-mate, the paired shortfall and its standard error.

        Such a candidate is no front member either: the batch-mate that beat it is
        finished on the whole split, or dropped because something of no higher cost beat
        it in turn.  A batch-mate pairs only where the study's constraints cannot make it
        infeasible while the candidate is feasible: every constraint bounds an exactly
        counted cost (checked for the batch-mate) or bounds accuracy from below.
        """
        if len(rows) < 2 or not self._peers_pair:
            return {}
        names = [o.name for o in self.objectives]
        cost_names = [n for n in names if n != "accuracy"]
        keys = list(rows)
        exact = [self.evaluator.exact_costs(k) for k in keys]
        costs = np.array([[e[n] for n in cost_names] for e in exact], dtype=float)
        cost_bounds = [c for c in self.constraints if c.metric != "accuracy"]
        if cost_bounds and not self.reference:
            return {}
        feasible = np.array(
            [all(c.violation(e, self.reference) <= 0 for c in cost_bounds) for e in exact]
        )
        correct = np.stack([rows[k] for k in keys])
        beaten = {}
        for j, key in enumerate(keys):
            eligible = feasible & (costs <= costs[j]).all(axis=1)
            eligible[j] = False
            hit = self._beater(correct, eligible, correct[j])
            if hit is not None:
                i, diff, se = hit
                beaten[key] = (keys[i], diff, se)
        return beaten

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
                self._add_full_point(self.db.values_of(ev), ev.mask)

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
                    "screen_rung_images": [len(r) for r in self.rungs],
                    "screen_evaluations": self.screen_evaluations,
                    "screen_candidates_by_rung": self.screen_candidates_by_rung,
                    "screened_out": self.screened_out,
                    "screened_out_by_rung": self.screened_out_by_rung,
                    "screened_out_by_peer": self.screened_out_by_peer,
                    "promoted": self.promoted,
                    "pairing_evaluations": self.pairing_evaluations,
                    "screen_image_evaluations": self.screen_image_evaluations,
                }
                if self.subset is not None
                else {}
            ),
        }
