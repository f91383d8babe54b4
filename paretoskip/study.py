"""The study database: Optuna storage shared by every engine, and its trials as records.

One Optuna trial per evaluation: parameters ``skip.<gene>`` ∈ {0, 1}, values = the
objectives, user attributes = everything else (mask, every metric with unit, source and
spread, cache hit, engine, generation, worker).  The space, objectives, constraints,
fingerprints and provenance are stored as the study's user attribute ``paretoskip``;
reopening the study with a different model, space, objectives or constraints raises
:class:`~paretoskip.errors.StudyMismatchError` before anything is written.

:class:`TrialRecord` is the one decoder of a trial back into what paretoskip wrote (mask,
values, metrics, constraint values, feasibility, engine, generation, worker); the front,
the plots, the engines, the workers and the command line all read trials through it.
This module is also the one place that reaches into Optuna below its public API (trial ids
and the storage object, which the multi-worker protocol needs).

Storage: see :mod:`paretoskip.storage` (a path, ``:memory:``, an SQLAlchemy URL,
``redis://…`` or a ``.log`` journal file).  optuna-dashboard and the ``optuna`` command
line open the same database.

Example:
    >>> from paretoskip.study import StudyDB
    >>> meta = {"schema_version": 1, "space": {"units": ["a", "b"], "locked": [], "groups": []},
    ...         "objectives": [{"name": "accuracy", "direction": "maximize", "unit": "fraction"},
    ...                        {"name": "flops", "direction": "minimize", "unit": "FLOPs"}],
    ...         "constraints": []}
    >>> db = StudyDB.open(":memory:", "demo", meta=meta)
    >>> db.name, db.space.units, db.records()
    ('demo', ('a', 'b'), [])
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from .errors import ConfigError, StudyMismatchError
from .evaluate import Evaluation, Metric
from .metrics import Constraint, Objective
from .space import SkipSpace
from .storage import StorageLocation

__all__ = [
    "StudyDB",
    "TrialRecord",
    "SCHEMA_VERSION",
    "worker_id",
    "trial_id",
    "is_feasible",
]

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
_DIST = CategoricalDistribution((0, 1))


def worker_id() -> str:
    """This process, as ``host:pid`` (recorded with every trial it writes)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_id(trial: Any) -> int:
    """The storage id of an Optuna trial (asked or frozen); Optuna keeps it private."""
    return trial._trial_id


def is_feasible(constraints: Mapping[str, float] | None) -> bool:
    """Whether constraint values (≤ 0 satisfied, Optuna's convention) are all satisfied."""
    return not any(c > 0 for c in (constraints or {}).values())


@dataclass(frozen=True)
class TrialRecord:
    """A trial of a paretoskip study, decoded (see :meth:`from_trial`).

    ``mask`` comes from the ``mask`` user attribute (written when the trial was told), or
    from the parameters when a :class:`SkipSpace` is given and every gene is set (a
    RUNNING or FAILed trial); None otherwise.  ``metrics`` are the raw metric dicts
    (``{"value", "unit", "source", "spread"}``) as stored.
    """

    number: int
    trial_id: int
    state: TrialState
    mask: str | None
    values: tuple[float, ...] | None
    metrics: Mapping[str, Mapping[str, Any]]
    constraints: Mapping[str, float]
    feasible: bool
    engine: str | None
    generation: int | None
    worker: str | None
    cache_hit: bool | None
    params_complete: bool
    datetime_start: Any = field(default=None, compare=False)

    @classmethod
    def from_trial(cls, trial: FrozenTrial, space: SkipSpace | None = None) -> TrialRecord:
        """Decode one Optuna trial."""
        attrs = trial.user_attrs
        complete = space is not None and all(p in trial.params for p in space.param_names)
        mask = attrs.get("mask")
        if mask is None and complete:
            mask = space.to_bitstring(
                space.mask_from_genes([trial.params[p] for p in space.param_names])
            )
        constraints = dict(trial.constraints or {})
        return cls(
            number=trial.number,
            trial_id=trial_id(trial),
            state=trial.state,
            mask=mask,
            values=tuple(trial.values) if trial.values is not None else None,
            metrics=attrs.get("metrics") or {},
            constraints=constraints,
            feasible=is_feasible(constraints),
            engine=attrs.get("engine"),
            generation=attrs.get("generation"),
            worker=attrs.get("worker"),
            cache_hit=attrs.get("cache_hit"),
            params_complete=complete,
            datetime_start=trial.datetime_start,
        )

    @property
    def completed(self) -> bool:
        """A COMPLETE trial with its mask: one evaluation of the study."""
        return self.state == TrialState.COMPLETE and self.mask is not None

    def evaluation(self, space: SkipSpace) -> Evaluation:
        """The evaluation this trial recorded, as one the evaluator returns (a cache hit)."""
        if self.mask is None:
            raise ConfigError(f"trial {self.number} has no mask: it was not told by paretoskip")
        return Evaluation(
            self.mask,
            tuple(space.skipped_names(self.mask)),
            {k: Metric.from_dict(v) for k, v in self.metrics.items()},
            cache_hit=True,
        )


@dataclass
class StudyDB:
    """An Optuna study holding a paretoskip search.

    Attributes:
        study: the Optuna study.
        location: where it lives (:class:`~paretoskip.storage.StorageLocation`).
        meta: what the search is (space, objectives, constraints, fingerprints, ...).
        storage: the Optuna storage object (for the multi-worker protocol).
    """

    study: optuna.Study
    location: StorageLocation
    meta: dict[str, Any]
    storage: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._space = SkipSpace.from_dict(self.meta["space"])

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def url(self) -> str:
        """The URL (or path) Optuna opened."""
        return self.location.url

    @property
    def space(self) -> SkipSpace:
        return self._space

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return tuple(Objective(**o) for o in self.meta["objectives"])

    @property
    def constraints(self) -> tuple[Constraint, ...]:
        return tuple(Constraint.parse(c) for c in self.meta["constraints"])

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        storage: str | os.PathLike | StorageLocation | None,
        study_name: str,
        *,
        meta: Mapping[str, Any],
        sampler: optuna.samplers.BaseSampler | None = None,
    ) -> StudyDB:
        """Create the study, or reopen it after checking that it holds the same search."""
        location = StorageLocation.parse(storage, study_name).prepare()
        store = location.open_optuna()
        sampler = sampler or optuna.samplers.RandomSampler(seed=0)
        directions = [o["direction"] for o in meta["objectives"]]
        where = location.redacted
        if study_name in _study_names(store):
            study = optuna.load_study(study_name=study_name, storage=store, sampler=sampler)
            stored = study.user_attrs.get("paretoskip")
            if stored is None:
                raise StudyMismatchError(
                    f"study {study_name!r} in {where} was not made by paretoskip; choose another study name"
                )
            _check_same(stored, meta, study_name, where)
            return cls(study, location, stored, store)
        try:
            study = optuna.create_study(
                study_name=study_name, storage=store, directions=directions, sampler=sampler
            )
            study.set_user_attr("paretoskip", dict(meta))
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it just now
            return cls.open(location, study_name, meta=meta, sampler=sampler)
        return cls(study, location, dict(meta), store)

    @classmethod
    def load(
        cls, storage: str | os.PathLike | StorageLocation, study_name: str | None = None
    ) -> StudyDB:
        """Open an existing paretoskip study for reading (front, plots); creates nothing."""
        location = StorageLocation.parse(storage, study_name or "")
        if location.file is not None and not location.exists():
            raise ConfigError(f"no study database at {location.file}")
        store = location.open_optuna()
        names = _study_names(store)
        where = location.redacted
        if study_name is None:
            if len(names) != 1:
                raise ConfigError(f"{where} holds {len(names)} studies ({names}); name one")
            study_name = names[0]
        if study_name not in names:
            raise ConfigError(f"no study {study_name!r} in {where}; it holds: {names}")
        study = optuna.load_study(study_name=study_name, storage=store)
        meta = study.user_attrs.get("paretoskip")
        if meta is None:
            raise ConfigError(f"study {study_name!r} in {where} was not made by paretoskip")
        return cls(study, location, meta, store)

    # -- reading trials ------------------------------------------------------------------
    def trials(
        self, states: Sequence[TrialState] | None = (TrialState.COMPLETE,)
    ) -> list[FrozenTrial]:
        """Trials without copying them (fast on large studies)."""
        return self.study.get_trials(deepcopy=False, states=tuple(states) if states else None)

    def records(
        self, states: Sequence[TrialState] | None = (TrialState.COMPLETE,)
    ) -> list[TrialRecord]:
        """The trials (COMPLETE ones by default) decoded, in trial order."""
        space = self.space
        return [TrialRecord.from_trial(t, space) for t in self.trials(states)]

    def evaluated_masks(self) -> set[str]:
        """Masks of the completed evaluations."""
        return {r.mask for r in self.records() if r.mask is not None}

    def record_of(self, trial: Any) -> TrialRecord:
        """The current state of one trial (asked here or by another worker), decoded."""
        tid = trial if isinstance(trial, int) else trial_id(trial)
        return TrialRecord.from_trial(self.storage.get_trial(tid), self.space)

    def generation_of(self, trial: Any) -> int | None:
        """The generation an Optuna sampler (NSGA-II/III) gave an asked trial, if any."""
        system = self.storage.get_trial_system_attrs(trial_id(trial))
        return next((v for k, v in system.items() if k.endswith(":generation")), None)

    # -- writing trials ------------------------------------------------------------------
    def params_of(self, mask: str) -> dict[str, int]:
        """The trial parameters of a mask."""
        space = self.space
        return dict(zip(space.param_names, space.genes_from_mask(mask)))

    def distributions(self) -> dict[str, CategoricalDistribution]:
        return {p: _DIST for p in self.space.param_names}

    def values_of(self, ev: Evaluation) -> list[float]:
        """The objective values of an evaluation (the trial's values)."""
        return [ev[o.name] for o in self.objectives]

    def constraint_values(self, ev: Evaluation, reference: Mapping[str, float]) -> dict[str, float]:
        """Each constraint's value for an evaluation (≤ 0: satisfied)."""
        metrics = {k: m.value for k, m in ev.metrics.items()}
        return {c.key: c.violation(metrics, reference) for c in self.constraints}

    def user_attrs_of(
        self, ev: Evaluation, *, engine: str, generation: int | None
    ) -> dict[str, Any]:
        """What a trial records besides its values (read back by :class:`TrialRecord`)."""
        attrs: dict[str, Any] = {
            "mask": ev.mask,
            "n_skipped": len(ev.skipped),
            "metrics": {k: m.to_dict() for k, m in ev.metrics.items()},
            "cache_hit": ev.cache_hit,
            "seconds": round(ev.seconds, 6),
            "engine": engine,
            "worker": worker_id(),
        }
        if generation is not None:
            attrs["generation"] = generation
        return attrs

    def record(
        self,
        ev: Evaluation,
        reference: Mapping[str, float],
        *,
        engine: str,
        generation: int | None = None,
    ) -> FrozenTrial:
        """Add one finished evaluation as a COMPLETE trial (engines that are not Optuna samplers)."""
        trial = optuna.trial.create_trial(
            params=self.params_of(ev.mask),
            distributions=self.distributions(),
            values=self.values_of(ev),
            user_attrs=self.user_attrs_of(ev, engine=engine, generation=generation),
            constraints=self.constraint_values(ev, reference) or None,
        )
        self.study.add_trial(trial)
        return trial

    def tell(
        self,
        trial: Any,
        ev: Evaluation,
        reference: Mapping[str, float],
        *,
        engine: str,
    ) -> None:
        """Finish an asked trial with an evaluation (Optuna samplers)."""
        attrs = self.user_attrs_of(ev, engine=engine, generation=self.generation_of(trial))
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        for key, value in self.constraint_values(ev, reference).items():
            trial.set_constraint(key, value)
        self.study.tell(trial, self.values_of(ev))

    def fail(self, trial: Any) -> bool:
        """Mark a RUNNING trial (of any worker) FAIL; False when it has finished already."""
        tid = trial if isinstance(trial, int) else trial_id(trial)
        try:
            self.storage.set_trial_state_values(tid, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return False  # another worker got there first
        return True

    def fail_stale_trials(self, stale_after: float = 3600.0) -> list[str]:
        """Mark RUNNING trials of dead workers as FAIL; return their masks (to be done again).

        A trial is stale when its worker ran on this host and its process is gone, or when
        it has been running for more than ``stale_after`` seconds.
        """
        host = socket.gethostname()
        redo = []
        for r in self.records(states=(TrialState.RUNNING,)):
            whost, _, pid = (r.worker or "").partition(":")
            if whost == host and pid.isdigit():
                dead = not _alive(int(pid))
            elif r.datetime_start is not None:
                dead = time.time() - r.datetime_start.timestamp() > stale_after
            else:
                dead = False
            if not dead or not self.fail(r.trial_id):
                continue
            log.warning(
                "trial %d of dead worker %s marked failed; its mask is done again",
                r.number,
                r.worker or "",
            )
            if r.params_complete and r.mask is not None:
                redo.append(r.mask)
        return redo

    # -- study-level attributes ----------------------------------------------------------
    def test_accuracies(self) -> dict[str, float]:
        return dict(self.study.user_attrs.get("paretoskip.test_accuracy", {}))

    def set_test_accuracies(self, values: Mapping[str, float]) -> None:
        merged = {**self.test_accuracies(), **values}
        self.study.set_user_attr("paretoskip.test_accuracy", merged)

    def reference(self) -> dict[str, Any] | None:
        """The full model's evaluation (``{"mask", "metrics", ...}``), once recorded."""
        return self.study.user_attrs.get("paretoskip.reference")

    def reference_values(self) -> dict[str, float]:
        """The full model's metric values (empty before the reference is recorded)."""
        ref = self.reference()
        return {k: m["value"] for k, m in ref["metrics"].items()} if ref else {}

    def set_reference(self, ev: Evaluation) -> None:
        self.study.set_user_attr("paretoskip.reference", ev.to_dict())


def _study_names(store: Any) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child counts as dead
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


_MUST_MATCH = (
    "schema_version",
    "space",
    "objectives",
    "constraints",
    "model_fingerprint",
    "data_fingerprint",
    "settings_fingerprint",
)


def _check_same(stored: Mapping[str, Any], new: Mapping[str, Any], name: str, where: str) -> None:
    for key in _MUST_MATCH:
        if stored.get(key) != new.get(key):
            what = {
                "space": "skip space",
                "model_fingerprint": "model weights or architecture",
                "data_fingerprint": "dataset or split",
                "settings_fingerprint": "measurement settings or hardware",
            }.get(key, key)
            raise StudyMismatchError(
                f"study {name!r} in {where} was made with a different {what}: stored {_short(stored.get(key))}, "
                f"now {_short(new.get(key))}. Use another study name (or storage) for a different search; "
                "nothing was written."
            )


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) < 120 else text[:117] + "..."
