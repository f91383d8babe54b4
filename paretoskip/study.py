"""The study database: Optuna storage shared by every engine, and its trials as records.

One Optuna trial per evaluation: parameters ``skip.<gene>`` ∈ {0, 1}, values = the
objectives (named on the study with ``set_metric_names``, so optuna-dashboard and
``optuna trials`` show ``accuracy`` and ``flops``, not ``Objective 0``).

**Trial user attributes** (study schema 2), one short attribute each, so the dashboard's
attribute table and the ``optuna`` command line read well:

* ``mask`` (bitstring, 1 = skipped), ``n_skipped``, ``engine``, ``generation``, ``worker``,
  ``cache_hit``, ``seconds``;
* one attribute per metric value, named after the metric (``accuracy``, ``flops``,
  ``params``, ``latency``, ...; null when it could not be measured, with
  ``<metric>.reason``), and ``<metric>.spread`` where the metric has one;
* ``<metric>.unit`` / ``<metric>.source`` only where they differ from the study's (below);
* ``test_accuracy`` on the trials of front members, once the front has been extracted;
* ``fidelity`` and ``fidelity_images`` in a multi-fidelity search
  (:mod:`paretoskip.search`, ``fidelity="multi"``): ``"full"`` for a trial measured on the
  whole validation split, ``"subset"`` for a candidate dropped after screening on a
  stratified subset of ``fidelity_images`` images.  A dropped candidate is a PRUNED trial
  (no values; its exact costs and its accuracy estimated from the subset, source
  ``estimated:paired-validation-subset``, in its attributes), so it never
  enters a front, here or in Optuna's own ``best_trials``.  A trial without ``fidelity``
  was measured on the whole split.

**Study attributes.**  The study's *user* attributes are a few readable lines (``paretoskip``,
``model``, ``dataset``, ``objectives``, ``constraints``, ``engine``, ``full_model``) that
``optuna studies`` prints in a narrow column.  The documents paretoskip works from are
study *system* attributes: ``paretoskip:meta`` (space, objectives, constraints,
fingerprints, provenance; reopening the study with a different model, space, objectives or
constraints raises :class:`~paretoskip.errors.StudyMismatchError` before anything is
written), ``paretoskip:reference`` (the full model's evaluation), ``paretoskip:metrics``
(each metric's unit, source and what its spread is) and ``paretoskip:test_accuracy``
(mask → test accuracy).

Studies of schema 1 (every metric of a trial in one JSON attribute ``metrics``, the
documents as study user attributes) are still read (front, plots, ``select``); continuing
one is refused with a :class:`~paretoskip.errors.StudyMismatchError` that says so.

:class:`TrialRecord` is the one decoder of a trial back into what paretoskip wrote (mask,
values, metrics, constraint values, feasibility, engine, generation, worker); the front,
the plots, the engines, the workers and the command line all read trials through it.
:meth:`StudyDB.objective_table` reads what front extraction needs (values, masks, spreads,
constraints of every COMPLETE trial) in one SQL query on a relational storage.
This module is also the one place that reaches into Optuna below its public API (trial ids,
system attributes, the storage object and its tables).

Storage: see :mod:`paretoskip.storage` (a path, ``:memory:``, an SQLAlchemy URL,
``redis://…`` or a ``.log`` journal file).  optuna-dashboard and the ``optuna`` command
line open the same database.

Example:
    >>> from paretoskip.study import StudyDB
    >>> meta = {"schema_version": 2, "space": {"units": ["a", "b"], "locked": [], "groups": []},
    ...         "objectives": [{"name": "accuracy", "direction": "maximize", "unit": "fraction"},
    ...                        {"name": "flops", "direction": "minimize", "unit": "FLOPs"}],
    ...         "constraints": []}
    >>> db = StudyDB.open(":memory:", "demo", meta=meta)
    >>> db.name, db.space.units, db.records(), db.study.metric_names
    ('demo', ('a', 'b'), [], ['accuracy', 'flops'])
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from .errors import ConfigError, StudyMismatchError
from .metrics import METRICS, Constraint, Objective
from .space import SkipSpace
from .storage import StorageLocation

if TYPE_CHECKING:
    from .evaluate import Evaluation

__all__ = [
    "StudyDB",
    "TrialRecord",
    "ObjectiveTable",
    "StudySnapshot",
    "SCHEMA_VERSION",
    "READABLE_SCHEMA_VERSIONS",
    "TRIAL_ATTRS",
    "worker_id",
    "trial_id",
    "is_feasible",
    "metric_attrs",
    "metrics_from_attrs",
]

log = logging.getLogger(__name__)
#: The study schema this paretoskip writes (2: one trial attribute per metric value).
SCHEMA_VERSION = 2
#: The study schemas it reads (1: every metric of a trial in one JSON attribute ``metrics``).
READABLE_SCHEMA_VERSIONS = (1, 2)
#: Trial user attributes that are not metrics.
TRIAL_ATTRS = (
    "mask",
    "n_skipped",
    "engine",
    "generation",
    "worker",
    "cache_hit",
    "seconds",
    "test_accuracy",
    "fidelity",
    "fidelity_images",
)
_DIST = CategoricalDistribution((0, 1))
_META, _REFERENCE, _METRIC_INFO, _TESTS, _FAMILIES = (
    "paretoskip:meta",
    "paretoskip:reference",
    "paretoskip:metrics",
    "paretoskip:test_accuracy",
    "paretoskip:families",
)
#: What the spread of each metric is (recorded in ``paretoskip:metrics``).
_SPREAD_MEANING = {
    "accuracy": "binomial standard error over the validation images",
    "latency": "inter-quartile range of the timed runs",
    "latency_ratio": "inter-quartile range of the interleaved ratios",
    "energy": "spread of the repeated energy windows",
}


def worker_id() -> str:
    """This process, as ``host:pid`` (recorded with every trial it writes)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def trial_id(trial: Any) -> int:
    """The storage id of an Optuna trial (asked or frozen); Optuna keeps it private."""
    return trial._trial_id


def is_feasible(constraints: Mapping[str, float] | None) -> bool:
    """Whether constraint values (≤ 0 satisfied, Optuna's convention) are all satisfied."""
    return not any(c > 0 for c in (constraints or {}).values())


def _num(v: Any) -> float | None:
    """A metric value as a JSON number (NaN, the "not measured" value, becomes null)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) or math.isinf(v) else None


def metric_attrs(
    metrics: Mapping[str, Mapping[str, Any]], info: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Trial user attributes of metric dicts (``{"value", "unit", "source", "spread"}``).

    One attribute per value, ``<name>.spread`` where there is one, ``<name>.reason`` when
    unmeasured; unit and source only where they differ from ``info`` (the study's).

    Example:
        >>> m = {"accuracy": {"value": 0.9, "unit": "fraction", "source": "measured:validation",
        ...                   "spread": 0.01}}
        >>> metric_attrs(m, {"accuracy": {"unit": "fraction", "source": "measured:validation"}})
        {'accuracy': 0.9, 'accuracy.spread': 0.01}
        >>> metrics_from_attrs(metric_attrs(m), {}) == m
        True
    """
    info = info or {}
    out: dict[str, Any] = {}
    for name, m in metrics.items():
        if name in TRIAL_ATTRS:
            raise ConfigError(f"metric name {name!r} is reserved for a trial attribute")
        out[name] = _num(m.get("value"))
        if m.get("spread") is not None:
            out[f"{name}.spread"] = _num(m["spread"])
        known = info.get(name, {})
        for key in ("unit", "source"):
            if m.get(key) is not None and m.get(key) != known.get(key):
                out[f"{name}.{key}"] = m[key]
        if m.get("reason"):
            out[f"{name}.reason"] = m["reason"]
    return out


def metrics_from_attrs(
    attrs: Mapping[str, Any], info: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """The metric dicts a trial's user attributes hold (schema 2, or schema 1's ``metrics``)."""
    if isinstance(attrs.get("metrics"), Mapping):  # schema 1
        return {k: dict(v) for k, v in attrs["metrics"].items()}
    info = info or {}
    names = [n for n in info if n in attrs]
    names += [k[:-5] for k in attrs if k.endswith(".unit") and k[:-5] not in info]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        known = info.get(name, {})
        spec = METRICS.get(name)
        d: dict[str, Any] = {
            "value": attrs.get(name),
            "unit": attrs.get(f"{name}.unit", known.get("unit", spec.unit if spec else "")),
            "source": attrs.get(f"{name}.source", known.get("source", "unknown")),
            "spread": attrs.get(f"{name}.spread"),
        }
        if attrs.get(f"{name}.reason"):
            d["reason"] = attrs[f"{name}.reason"]
        out[name] = d
    return out


@dataclass(frozen=True)
class TrialRecord:
    """A trial of a paretoskip study, decoded (see :meth:`from_trial`).

    ``mask`` comes from the ``mask`` user attribute (written when the trial was told), or
    from the parameters when a :class:`SkipSpace` is given and every gene is set (a
    RUNNING or FAILed trial); None otherwise.  ``metrics`` are the metric dicts
    (``{"value", "unit", "source", "spread"}``), rebuilt from the trial's attributes and
    the study's units and sources (``metric_info``) in schema 2, as stored in schema 1.
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
    test_accuracy: float | None = field(default=None, compare=False)
    #: ``"full"`` (the whole validation split) or ``"subset"`` (screened out, see
    #: :data:`TRIAL_ATTRS`), and the validation images its accuracy used (None: not recorded)
    fidelity: str = field(default="full", compare=False)
    fidelity_images: int | None = field(default=None, compare=False)

    @classmethod
    def from_trial(
        cls,
        trial: FrozenTrial,
        space: SkipSpace | None = None,
        metric_info: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> TrialRecord:
        """Decode one Optuna trial (``metric_info``: :meth:`StudyDB.metric_info`)."""
        attrs = trial.user_attrs
        complete = space is not None and all(p in trial.params for p in space.param_names)
        mask = attrs.get("mask")
        if mask is None and complete:
            mask = space.to_bitstring(
                space.mask_from_genes([trial.params[p] for p in space.param_names])
            )
        return cls.from_attrs(
            attrs,
            number=trial.number,
            trial_id=trial_id(trial),
            state=trial.state,
            mask=mask,
            values=tuple(trial.values) if trial.values is not None else None,
            constraints=dict(trial.constraints or {}),
            metric_info=metric_info,
            params_complete=complete,
            datetime_start=trial.datetime_start,
        )

    @classmethod
    def from_attrs(
        cls,
        attrs: Mapping[str, Any],
        *,
        number: int,
        trial_id: int,
        state: TrialState,
        mask: str | None,
        values: tuple[float, ...] | None,
        constraints: Mapping[str, float],
        metric_info: Mapping[str, Mapping[str, Any]] | None,
        params_complete: bool,
        datetime_start: Any = None,
    ) -> TrialRecord:
        """A record from a trial's user attributes and the parts read beside them (the one
        decoder behind :meth:`from_trial` and :meth:`StudyDB.records_by_id`)."""
        return cls(
            number=number,
            trial_id=trial_id,
            state=state,
            mask=mask,
            values=values,
            metrics=metrics_from_attrs(attrs, metric_info),
            constraints=constraints,
            feasible=is_feasible(constraints),
            engine=attrs.get("engine"),
            generation=attrs.get("generation"),
            worker=attrs.get("worker"),
            cache_hit=attrs.get("cache_hit"),
            params_complete=params_complete,
            datetime_start=datetime_start,
            test_accuracy=attrs.get("test_accuracy"),
            fidelity=attrs.get("fidelity") or "full",
            fidelity_images=attrs.get("fidelity_images"),
        )

    @property
    def completed(self) -> bool:
        """A COMPLETE trial with its mask: one evaluation of the study."""
        return self.state == TrialState.COMPLETE and self.mask is not None

    @property
    def screened(self) -> bool:
        """A candidate dropped after screening on a validation subset (a PRUNED trial)."""
        return self.state == TrialState.PRUNED and self.fidelity == "subset" and bool(self.mask)

    def objective_values(self, objectives: Sequence[Objective]) -> tuple[float, ...]:
        """The objective values: the trial's values, or for a screened trial the ones its
        attributes hold (its accuracy a low-fidelity value)."""
        if self.values is not None:
            return tuple(self.values)
        return tuple(float((self.metrics.get(o.name) or {}).get("value")) for o in objectives)

    def evaluation(self, space: SkipSpace) -> Evaluation:
        """The evaluation this trial recorded, as one the evaluator returns (a cache hit)."""
        from .evaluate import Evaluation, Metric

        if self.mask is None:
            raise ConfigError(f"trial {self.number} has no mask: it was not told by paretoskip")
        return Evaluation(
            self.mask,
            tuple(space.skipped_names(self.mask)),
            {k: Metric.from_dict(v) for k, v in self.metrics.items()},
            cache_hit=True,
        )


@dataclass(frozen=True)
class ObjectiveTable:
    """What front extraction needs of every COMPLETE trial with a mask, in trial order.

    Attributes:
        trial_ids, numbers: one per row.
        masks: the bitstrings.
        values: rows × objectives (the trial values).
        spreads: rows × objectives, each objective's measurement spread (NaN when none).
        feasible: whether every constraint is satisfied.
        n_trials: COMPLETE trials read (rows without a mask included).
    """

    trial_ids: np.ndarray
    numbers: np.ndarray
    masks: list[str]
    values: np.ndarray
    spreads: np.ndarray
    feasible: np.ndarray
    n_trials: int


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
        self._info: dict[str, dict[str, Any]] | None = None
        self._reference_trial: bool | None = None
        if self.storage is None:
            self.storage = self.study._storage

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

    @property
    def schema_version(self) -> int:
        """The study schema its trials were written with (see the module docstring)."""
        return int(self.meta.get("schema_version", 1))

    # -- study attributes ----------------------------------------------------------------
    def _system_attrs(self) -> dict[str, Any]:
        return self.storage.get_study_system_attrs(self.study._study_id)

    def _set_system_attr(self, key: str, value: Any) -> None:
        self.storage.set_study_system_attr(self.study._study_id, key, value)

    def _document(self, key: str, old_key: str) -> Any:
        """A paretoskip document: a system attribute (schema 2) or a user attribute (1)."""
        value = self._system_attrs().get(key)
        return value if value is not None else self.study.user_attrs.get(old_key)

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
            stored = _stored_meta(study, store)
            if stored is None:
                raise StudyMismatchError(
                    f"study {study_name!r} in {where} was not made by paretoskip; choose another study name"
                )
            old = stored.get("schema_version", 1)
            if (
                old != meta.get("schema_version", SCHEMA_VERSION)
                and old in READABLE_SCHEMA_VERSIONS
            ):
                raise StudyMismatchError(
                    f"study {study_name!r} in {where} was written by an older paretoskip (study "
                    f"schema {old}; this one writes schema {meta.get('schema_version')}). It can "
                    "still be read (`paretoskip front`, `plot`, `select`) but not continued: use "
                    "another study name (or storage) to search again; nothing was written."
                )
            _check_same(stored, meta, study_name, where)
            return cls(study, location, stored, store)
        try:
            study = optuna.create_study(
                study_name=study_name, storage=store, directions=directions, sampler=sampler
            )
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it just now
            return cls.open(location, study_name, meta=meta, sampler=sampler)
        db = cls(study, location, dict(meta), store)
        db._write_meta()
        return db

    def _write_meta(self) -> None:
        meta = self.meta
        self._set_system_attr(_META, dict(meta))
        names = [o["name"] for o in meta["objectives"]]
        with warnings.catch_warnings():  # set_metric_names is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names(names)
        for key, value in _summary_attrs(meta).items():
            self.study.set_user_attr(key, value)

    @classmethod
    def load(
        cls, storage: str | os.PathLike | StorageLocation, study_name: str | None = None
    ) -> StudyDB:
        """Open an existing paretoskip study for reading (front, plots); creates nothing."""
        location = StorageLocation.parse(storage, study_name or "")
        if location.file is not None and not location.exists():
            raise ConfigError(f"no study database at {location.file}")
        store = location.open_optuna()
        where = location.redacted
        study_name = _choose_study(_study_names(store), study_name, where)
        study = optuna.load_study(study_name=study_name, storage=store)
        meta = _check_readable(_stored_meta(study, store), study_name, where)
        return cls(study, location, meta, store)

    @classmethod
    def read(
        cls, storage: str | os.PathLike | StorageLocation, study_name: str | None = None
    ) -> StudyDB | StudySnapshot:
        """Open an existing study for extracting its front, as fast as the storage allows.

        An SQLite file whose tables are of a layout this paretoskip knows is read as a
        :class:`StudySnapshot` (the standard library's ``sqlite3``, read-only: no Optuna
        storage, SQLAlchemy or alembic); anything else is
        :meth:`load`-ed.  Both give the same front.
        """
        location = StorageLocation.parse(storage, study_name or "")
        if location.kind == "sqlite" and location.exists():
            snapshot = StudySnapshot.open(location, study_name)
            if snapshot is not None:
                return snapshot
        return cls.load(location, study_name)

    # -- reading trials ------------------------------------------------------------------
    def trials(
        self, states: Sequence[TrialState] | None = (TrialState.COMPLETE,)
    ) -> list[FrozenTrial]:
        """Trials without copying them (fast on large studies)."""
        return self.study.get_trials(deepcopy=False, states=tuple(states) if states else None)

    def metric_info(self) -> dict[str, dict[str, Any]]:
        """Each metric's unit, source and spread meaning, as the study records them."""
        if not self._info:
            self._info = dict(self._system_attrs().get(_METRIC_INFO) or {})
        return self._info

    def records(
        self, states: Sequence[TrialState] | None = (TrialState.COMPLETE,)
    ) -> list[TrialRecord]:
        """The trials (COMPLETE ones by default) decoded, in trial order."""
        space, info = self.space, self.metric_info()
        return [TrialRecord.from_trial(t, space, info) for t in self.trials(states)]

    def evaluated_masks(self) -> set[str]:
        """Masks of the completed evaluations."""
        return {r.mask for r in self.records() if r.mask is not None}

    def record_of(self, trial: Any) -> TrialRecord:
        """The current state of one trial (asked here or by another worker), decoded."""
        tid = trial if isinstance(trial, int) else trial_id(trial)
        return TrialRecord.from_trial(self.storage.get_trial(tid), self.space, self.metric_info())

    def generation_of(self, trial: Any) -> int | None:
        """The generation an Optuna sampler (NSGA-II/III) gave an asked trial, if any."""
        system = self.storage.get_trial_system_attrs(trial_id(trial))
        return next((v for k, v in system.items() if k.endswith(":generation")), None)

    def objective_table(self, *, use_sql: bool = True) -> ObjectiveTable:
        """Values, masks, objective spreads and feasibility of every COMPLETE trial.

        On a relational storage this is one SQL query (no Optuna trial objects are built:
        the fast path of front extraction); elsewhere, or with ``use_sql=False``, it is
        read from :meth:`records`.  Both give the same table.
        """
        if use_sql and isinstance(self.storage, optuna.storages.RDBStorage):
            return self._sql_objective_table()
        objectives = self.objectives
        rows = self.records()
        with_mask = [r for r in rows if r.mask is not None]
        spreads = [[_spread_of(r.metrics.get(o.name)) for o in objectives] for r in with_mask]
        return ObjectiveTable(
            trial_ids=np.array([r.trial_id for r in with_mask], dtype=np.int64),
            numbers=np.array([r.number for r in with_mask], dtype=np.int64),
            masks=[r.mask for r in with_mask],
            values=np.array([r.values for r in with_mask], dtype=float).reshape(
                len(with_mask), len(objectives)
            ),
            spreads=np.array(spreads, dtype=float).reshape(len(with_mask), len(objectives)),
            feasible=np.array([r.feasible for r in with_mask], dtype=bool),
            n_trials=len(rows),
        )

    def _sql_objective_table(self) -> ObjectiveTable:
        import sqlalchemy as sa
        from optuna.storages._rdb import models

        engine = self.storage.engine
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                cursor = conn.connection.dbapi_connection.cursor()
                try:
                    return _sqlite_objective_table(
                        cursor, self.study._study_id, self.objectives, self.schema_version
                    )
                finally:
                    cursor.close()
        objectives = self.objectives
        k = len(objectives)
        trials = models.TrialModel.__table__
        values = models.TrialValueModel.__table__
        uattrs = models.TrialUserAttributeModel.__table__
        sattrs = models.TrialSystemAttributeModel.__table__
        where = (trials.c.study_id == self.study._study_id) & (
            trials.c.state == TrialState.COMPLETE.name
        )
        keys = ["mask", "metrics"] + [f"{o.name}.spread" for o in objectives]

        def part(kind: int, table: Any, a: Any, b: Any, num: Any, cond: Any = None) -> Any:
            q = sa.select(
                table.c.trial_id,
                sa.literal(kind).label("kind"),
                sa.cast(a, sa.String).label("a"),
                sa.cast(b, sa.String).label("b"),
                sa.cast(num, sa.Float).label("num"),
            )
            if table is not trials:
                q = q.select_from(table.join(trials, table.c.trial_id == trials.c.trial_id))
            q = q.where(where)
            return q.where(cond) if cond is not None else q

        null = sa.null()
        query = sa.union_all(
            part(0, trials, null, null, trials.c.number),
            part(1, values, values.c.objective, values.c.value_type, values.c.value),
            part(2, uattrs, uattrs.c.key, uattrs.c.value_json, null, uattrs.c.key.in_(keys)),
            part(
                3,
                sattrs,
                sattrs.c.key,
                sattrs.c.value_json,
                null,
                sattrs.c.key.like("constraints%"),
            ),
        )
        # literal values (the study id, attribute keys) and the driver's own cursor: no
        # per-row SQLAlchemy processing of the ~10 rows per trial
        sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
        with engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                cursor.execute(sql)
                rows = cursor.fetchall()
            finally:
                cursor.close()

        index: dict[int, int] = {}
        number: list[int] = []
        for tid, kind, _a, _b, num in rows:
            if kind == 0:
                index[tid] = len(number)
                number.append(int(num))
        n = len(number)
        vals = np.full((n, k), np.nan)
        spreads = np.full((n, k), np.nan)
        masks: list[str | None] = [None] * n
        feasible = np.ones(n, dtype=bool)
        spread_col = {f"{o.name}.spread": j for j, o in enumerate(objectives)}
        inf = {"INF_POS": math.inf, "INF_NEG": -math.inf}
        for tid, kind, a, b, num in rows:
            if kind == 0:
                continue
            i = index[tid]
            if kind == 1:
                j = int(a)
                if j < k:
                    vals[i, j] = inf.get(b, num)
            elif kind == 2:
                if a == "mask":
                    masks[i] = b[1:-1] if b.startswith('"') and "\\" not in b else json.loads(b)
                elif a == "metrics":  # schema 1
                    metrics = json.loads(b)
                    for j, o in enumerate(objectives):
                        s = _spread_of(metrics.get(o.name))
                        if not math.isnan(s) and math.isnan(spreads[i, j]):
                            spreads[i, j] = s
                else:
                    spreads[i, spread_col[a]] = _json_number(b)
            else:
                if b.startswith("["):  # Optuna's old list form
                    if any(float(c) > 0 for c in json.loads(b)):
                        feasible[i] = False
                elif _json_number(b) > 0:
                    feasible[i] = False
        order = np.argsort(np.array(number, dtype=np.int64), kind="stable")
        keep = [i for i in order if masks[i] is not None]
        ids = np.empty(n, dtype=np.int64)
        for tid, i in index.items():
            ids[i] = tid
        return ObjectiveTable(
            trial_ids=ids[keep],
            numbers=np.array(number, dtype=np.int64)[keep],
            masks=[masks[i] for i in keep],  # type: ignore[misc]
            values=vals[keep].reshape(len(keep), k),
            spreads=spreads[keep].reshape(len(keep), k),
            feasible=feasible[keep],
            n_trials=n,
        )

    def records_by_id(self, ids: Iterable[int]) -> dict[int, TrialRecord]:
        """Some trials, decoded, by storage id (one query per 500 on a relational storage)."""
        ids = [int(i) for i in ids]
        if not isinstance(self.storage, optuna.storages.RDBStorage) or not ids:
            return {i: self.record_of(i) for i in ids}
        import sqlalchemy as sa
        from optuna.storages._rdb import models

        t = models.TrialModel.__table__
        v = models.TrialValueModel.__table__
        u = models.TrialUserAttributeModel.__table__
        s = models.TrialSystemAttributeModel.__table__
        attrs: dict[int, dict[str, Any]] = {i: {} for i in ids}
        system: dict[int, dict[str, Any]] = {i: {} for i in ids}
        vals: dict[int, dict[int, float]] = {i: {} for i in ids}
        numbers: dict[int, int] = {}
        with self.storage.engine.connect() as conn:
            for lo in range(0, len(ids), 500):
                chunk = ids[lo : lo + 500]
                for tid, number in conn.execute(
                    sa.select(t.c.trial_id, t.c.number).where(t.c.trial_id.in_(chunk))
                ):
                    numbers[tid] = number
                for tid, key, value in conn.execute(
                    sa.select(u.c.trial_id, u.c.key, u.c.value_json).where(u.c.trial_id.in_(chunk))
                ):
                    attrs[tid][key] = json.loads(value)
                for tid, key, value in conn.execute(
                    sa.select(s.c.trial_id, s.c.key, s.c.value_json).where(
                        s.c.trial_id.in_(chunk), s.c.key.like("constraints%")
                    )
                ):
                    system[tid][key] = json.loads(value)
                for tid, obj, value in conn.execute(
                    sa.select(v.c.trial_id, v.c.objective, v.c.value).where(v.c.trial_id.in_(chunk))
                ):
                    vals[tid][obj] = value
        return _complete_records(ids, attrs, numbers, vals, system, self.metric_info(), self.space)

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

    def _ensure_metric_info(self, ev: Evaluation) -> dict[str, dict[str, Any]]:
        info = self.metric_info()
        missing = {k: m for k, m in ev.metrics.items() if k not in info}
        if missing:
            for k, m in missing.items():
                entry = {"unit": m.unit, "source": m.source}
                if k in _SPREAD_MEANING:
                    entry["spread"] = _SPREAD_MEANING[k]
                info[k] = entry
            self._set_system_attr(_METRIC_INFO, info)
        return info

    def user_attrs_of(
        self,
        ev: Evaluation,
        *,
        engine: str,
        generation: int | None,
        fidelity: tuple[str, int] | None = None,
    ) -> dict[str, Any]:
        """What a trial records besides its values (read back by :class:`TrialRecord`)."""
        info = self._ensure_metric_info(ev)
        attrs: dict[str, Any] = {
            "mask": ev.mask,
            "n_skipped": len(ev.skipped),
            **metric_attrs({k: m.to_dict() for k, m in ev.metrics.items()}, info),
            "cache_hit": ev.cache_hit,
            "seconds": round(ev.seconds, 6),
            "engine": engine,
            "worker": worker_id(),
        }
        if generation is not None:
            attrs["generation"] = generation
        if fidelity is not None:
            attrs["fidelity"], attrs["fidelity_images"] = fidelity[0], int(fidelity[1])
        return attrs

    def frozen_trial(
        self,
        ev: Evaluation,
        reference: Mapping[str, float],
        *,
        engine: str,
        generation: int | None = None,
        fidelity: tuple[str, int] | None = None,
    ) -> FrozenTrial:
        """A COMPLETE trial of an evaluation, not yet added (``study.add_trials`` takes many);
        a PRUNED one without values for a screened candidate (``fidelity[0] == "subset"``)."""
        attrs = self.user_attrs_of(ev, engine=engine, generation=generation, fidelity=fidelity)
        if fidelity is not None and fidelity[0] == "subset":
            return optuna.trial.create_trial(
                params=self.params_of(ev.mask),
                distributions=self.distributions(),
                user_attrs=attrs,
                constraints=self.constraint_values(ev, reference) or None,
                state=TrialState.PRUNED,
            )
        return optuna.trial.create_trial(
            params=self.params_of(ev.mask),
            distributions=self.distributions(),
            values=self.values_of(ev),
            user_attrs=attrs,
            constraints=self.constraint_values(ev, reference) or None,
        )

    def record(
        self,
        ev: Evaluation,
        reference: Mapping[str, float],
        *,
        engine: str,
        generation: int | None = None,
        fidelity: tuple[str, int] | None = None,
    ) -> FrozenTrial | None:
        """Add one finished evaluation as a COMPLETE trial (engines that are not Optuna samplers).

        ``fidelity``: ``("full", images)`` or ``("subset", images)`` in a multi-fidelity
        search (recorded as the trial's ``fidelity`` attributes; a subset trial is PRUNED).
        The full model is recorded once: an engine that proposes it again (its structured
        start, say) gets no second trial (None is returned).
        """
        ref = self.reference()
        if ref is not None and ev.mask == ref.get("mask"):
            if engine != "reference" and self._has_reference_trial():
                return None
            self._reference_trial = True
        trial = self.frozen_trial(
            ev, reference, engine=engine, generation=generation, fidelity=fidelity
        )
        self.study.add_trial(trial)
        return trial

    def _has_reference_trial(self) -> bool:
        if not self._reference_trial:
            ref = self.reference()
            self._reference_trial = ref is not None and ref.get("mask") in self.evaluated_masks()
        return bool(self._reference_trial)

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
        """Test accuracies measured so far, by mask (front members and the full model)."""
        return dict(self._document(_TESTS, "paretoskip.test_accuracy") or {})

    def set_test_accuracies(
        self, values: Mapping[str, float], trials: Mapping[str, Iterable[int]] | None = None
    ) -> None:
        """Record test accuracies by mask: in the study, and as the ``test_accuracy`` user
        attribute of the given trials (mask → trial ids; default: every COMPLETE trial of
        those masks) where the storage lets a finished trial be annotated (SQL databases
        and in-memory studies; not Optuna's journal)."""
        merged = {**self.test_accuracies(), **{k: float(v) for k, v in values.items()}}
        if self.schema_version >= 2:
            self._set_system_attr(_TESTS, merged)
        else:
            self.study.set_user_attr("paretoskip.test_accuracy", merged)
        if trials is None:
            wanted = set(values)
            found: dict[str, list[int]] = {}
            for r in self.records():
                if r.mask in wanted:
                    found.setdefault(r.mask, []).append(r.trial_id)
            trials = found
        pairs = [
            (int(t), float(values[m])) for m, ids in trials.items() if m in values for t in ids
        ]
        self._annotate_finished(pairs, "test_accuracy")

    def _annotate_finished(self, pairs: Sequence[tuple[int, Any]], key: str) -> bool:
        """Set a user attribute on finished trials (Optuna refuses it through its API)."""
        if not pairs:
            return True
        store = self.storage
        if isinstance(store, optuna.storages.RDBStorage):
            import sqlalchemy as sa
            from optuna.storages._rdb import models

            table = models.TrialUserAttributeModel.__table__
            for attempt in range(5):  # another process may annotate the same trials at once
                try:
                    with store.engine.begin() as conn:
                        for lo in range(0, len(pairs), 500):
                            chunk = pairs[lo : lo + 500]
                            conn.execute(
                                sa.delete(table).where(
                                    table.c.trial_id.in_([t for t, _ in chunk]), table.c.key == key
                                )
                            )
                            conn.execute(
                                sa.insert(table),
                                [
                                    {"trial_id": t, "key": key, "value_json": json.dumps(v)}
                                    for t, v in chunk
                                ],
                            )
                    return True
                except sa.exc.IntegrityError:
                    if attempt == 4:
                        raise
                    time.sleep(0.1 * (attempt + 1))
        if isinstance(store, optuna.storages.InMemoryStorage):
            import copy

            with store._lock:
                for tid, v in pairs:
                    frozen = copy.copy(store._get_trial(tid))
                    frozen.user_attrs = {**frozen.user_attrs, key: v}
                    store._set_trial(tid, frozen)
            return True
        log.debug("%s: this storage cannot annotate finished trials; kept in the study", key)
        return False

    def families(self) -> list[dict[str, Any]]:
        """The families of operating points attached to the study (per-input gated or
        dual-mode sweeps of its model, see :func:`paretoskip.dynamic.dynamic_family`), in
        the order they were attached.  Front extraction carries them into the front file."""
        return [dict(f) for f in self._document(_FAMILIES, "paretoskip.families") or []]

    def set_family(self, family: Mapping[str, Any], *, force: bool = False) -> dict[str, Any]:
        """Attach a family of operating points (replacing one of the same name), validated
        against the front file schema (``$defs.family``) first.

        A family that records the weights it was made from (``provenance.weights_fingerprint``)
        is refused when they are not the study's model (``force=True`` attaches it anyway):
        its points would not describe this model.  Returns the stored (JSON-clean) family.
        """
        from .front import clean_json
        from .frontfile import replace_family, validate_family

        if not isinstance(family, Mapping):
            raise ConfigError(f"a front family must be a mapping, not {type(family).__name__}")
        fam = clean_json(dict(family))
        validate_family(fam, f"family {fam.get('name')!r}")
        theirs = (fam.get("provenance") or {}).get("weights_fingerprint")
        ours = ((self.meta.get("provenance") or {}).get("model") or {}).get("fingerprint")
        if theirs and ours and theirs != ours and not force:
            raise ConfigError(
                f"family {fam['name']!r} was made from other weights ({theirs[:12]}…) than the "
                f"model of study {self.name!r} ({ours[:12]}…): its points do not describe this "
                "model; pass force=True (--force) to attach it anyway"
            )
        self._store_families(replace_family(self.families(), fam))
        return fam

    def remove_family(self, name: str) -> bool:
        """Detach the family ``name``; False when the study has none of that name."""
        families = self.families()
        kept = [f for f in families if f.get("name") != name]
        if len(kept) == len(families):
            return False
        self._store_families(kept)
        return True

    def _store_families(self, families: list[dict[str, Any]]) -> None:
        if self.schema_version >= 2:
            self._set_system_attr(_FAMILIES, families)
        else:
            self.study.set_user_attr("paretoskip.families", families)

    def reference(self) -> dict[str, Any] | None:
        """The full model's evaluation (``{"mask", "metrics", ...}``), once recorded."""
        return self._document(_REFERENCE, "paretoskip.reference")

    def reference_values(self) -> dict[str, float]:
        """The full model's metric values (empty before the reference is recorded)."""
        ref = self.reference()
        return {k: m["value"] for k, m in ref["metrics"].items()} if ref else {}

    def set_reference(self, ev: Evaluation) -> None:
        """Record the full model's evaluation (and the units and sources of its metrics)."""
        self._set_system_attr(_REFERENCE, ev.to_dict())
        self._ensure_metric_info(ev)
        values = ", ".join(
            f"{k} {_short_number(m.value)}" + (f" {m.unit}" if m.unit != "fraction" else "")
            for k, m in ev.metrics.items()
        )
        self.study.set_user_attr("full_model", values)


def _choose_study(names: Sequence[str], study_name: str | None, where: str) -> str:
    """The study to read: the one named, or the only one there is."""
    if study_name is None:
        if len(names) != 1:
            raise ConfigError(f"{where} holds {len(names)} studies ({list(names)}); name one")
        return names[0]
    if study_name not in names:
        raise ConfigError(f"no study {study_name!r} in {where}; it holds: {list(names)}")
    return study_name


def _check_readable(meta: Any, study_name: str, where: str) -> dict[str, Any]:
    """A study's paretoskip meta, checked to be one this paretoskip reads."""
    if meta is None:
        raise ConfigError(f"study {study_name!r} in {where} was not made by paretoskip")
    version = meta.get("schema_version", 1)
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ConfigError(
            f"study {study_name!r} in {where} has study schema {version!r}; this paretoskip "
            f"reads schemas {', '.join(map(str, READABLE_SCHEMA_VERSIONS))} (upgrade paretoskip)"
        )
    return meta


def _sqlite_objective_table(
    cursor: Any, study_id: int, objectives: Sequence[Objective], schema_version: int
) -> ObjectiveTable:
    """The objective table of a study in an SQLite file: one query, one row per COMPLETE
    trial (each value, spread, the mask and the constraint values picked by the tables'
    (trial_id, key) indexes), on an sqlite3 cursor."""
    k = len(objectives)

    def user(key: str) -> str:
        return (
            "(SELECT value_json FROM trial_user_attributes u "
            f"WHERE u.trial_id = t.trial_id AND u.key = {_sql_text(key)})"
        )

    cols = ["t.trial_id", "t.number", user("mask")]
    cols.append(user("metrics") if schema_version == 1 else "NULL")
    for j, o in enumerate(objectives):
        # 9e999 is SQLite's infinity (Optuna stores ±inf as NULL and a value type)
        cols.append(
            "(SELECT CASE value_type WHEN 'INF_POS' THEN 9e999 WHEN 'INF_NEG' THEN -9e999 "
            f"ELSE value END FROM trial_values v WHERE v.trial_id = t.trial_id AND v.objective = {j})"
        )
        cols.append(user(f"{o.name}.spread"))
    cols.append(
        "(SELECT group_concat(value_json, char(10)) FROM trial_system_attributes s "
        "WHERE s.trial_id = t.trial_id AND s.key LIKE 'constraints%')"
    )
    sql = (
        f"SELECT {', '.join(cols)} FROM trials t WHERE t.study_id = {int(study_id)} "
        f"AND t.state = '{TrialState.COMPLETE.name}' ORDER BY t.number"
    )
    cursor.execute(sql)
    every = cursor.fetchall()
    rows = [r for r in every if r[2] is not None]  # (a trial without a mask is not an evaluation)
    cols = list(zip(*rows)) or [()] * (5 + 2 * k)
    masks = [m[1:-1] if m.startswith('"') and "\\" not in m else json.loads(m) for m in cols[2]]
    values = np.array(
        [[math.nan if v is None else v for v in cols[4 + 2 * j]] for j in range(k)], dtype=float
    )
    spreads = np.array(
        [[math.nan if s is None else _json_number(s) for s in cols[5 + 2 * j]] for j in range(k)],
        dtype=float,
    )
    if schema_version == 1:  # the spreads are in the one attribute ``metrics``
        for i, text in enumerate(cols[3]):
            if text is not None:
                metrics = json.loads(text)
                for j, o in enumerate(objectives):
                    if math.isnan(spreads[j, i]):
                        spreads[j, i] = _spread_of(metrics.get(o.name))
    n = len(rows)
    return ObjectiveTable(
        trial_ids=np.array(cols[0], dtype=np.int64),
        numbers=np.array(cols[1], dtype=np.int64),
        masks=masks,
        values=values.T.reshape(n, k),
        spreads=spreads.T.reshape(n, k),
        feasible=np.array([_feasible_text(c) for c in cols[-1]], dtype=bool),
        n_trials=len(every),
    )


def _feasible_text(text: str | None) -> bool:
    """Whether every constraint value (JSON, one per line; Optuna's old form: a list) is ≤ 0."""
    if text is None or (text[0] == "-" and "\n" not in text):  # one value, ≤ 0
        return True
    for line in text.split("\n"):
        if line.startswith("["):
            if any(float(c) > 0 for c in json.loads(line)):
                return False
        elif _json_number(line) > 0:
            return False
    return True


def _sql_text(text: str) -> str:
    """An SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


#: Optuna table layouts (alembic revisions) that :class:`StudySnapshot` reads; a file of
#: any other layout is opened through Optuna (:meth:`StudyDB.load`), which checks it.
SNAPSHOT_TABLE_VERSIONS = ("v3.2.0.a",)


def _complete_records(
    ids: Iterable[int],
    attrs: Mapping[int, Mapping[str, Any]],
    numbers: Mapping[int, int],
    vals: Mapping[int, Mapping[int, float]],
    system: Mapping[int, Mapping[str, Any]],
    info: Mapping[str, Any],
    space: Any,
) -> dict[int, TrialRecord]:
    """COMPLETE trials' records from their rows (user and system attributes, numbers,
    objective values by index), as both SQL readers decode them."""
    from optuna.trial._frozen import _get_constraints_from_system_attrs

    return {
        tid: TrialRecord.from_attrs(
            attrs[tid],
            number=numbers.get(tid, -1),
            trial_id=tid,
            state=TrialState.COMPLETE,
            mask=attrs[tid].get("mask"),
            values=tuple(vals[tid][j] for j in sorted(vals[tid])) or None,
            constraints=_get_constraints_from_system_attrs(system[tid]),
            metric_info=info,
            params_complete=space is not None,
        )
        for tid in ids
    }


class StudySnapshot:
    """A read-only view of a paretoskip study in an SQLite file, for front extraction.

    Opened with the standard library's ``sqlite3`` in read-only mode; each read is one
    SQL statement (its own read transaction, so a search writing beside it is never held
    up, and COMPLETE trials do not change); it reads what
    :meth:`paretoskip.front.Front.from_study` needs (meta, reference, test accuracies,
    :meth:`objective_table`, :meth:`records_by_id`) and writes nothing.  Made by
    :meth:`StudyDB.read`.
    """

    #: it writes nothing (:meth:`paretoskip.front.Front.from_study` measures no test accuracy)
    read_only = True

    def __init__(self, conn: Any, location: StorageLocation, name: str, study_id: int) -> None:
        self._conn = conn
        self.location = location
        self.name = name
        self._study_id = study_id
        self._system = self._attrs("study_system_attributes")
        self._user: dict[str, Any] | None = None
        self.meta = _check_readable(self._stored_meta(), name, location.redacted)
        self._space = SkipSpace.from_dict(self.meta["space"])

    @classmethod
    def open(cls, location: StorageLocation, study_name: str | None = None) -> StudySnapshot | None:
        """The snapshot, or None when the file is not one it reads (its tables' layout is
        not in :data:`SNAPSHOT_TABLE_VERSIONS`, or it is not an SQLite database)."""
        import sqlite3
        from urllib.parse import quote

        uri = f"file:{quote(str(location.file.resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
        except sqlite3.Error:
            return None
        try:
            version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
            if [v for (v,) in version] not in ([v] for v in SNAPSHOT_TABLE_VERSIONS):
                conn.close()
                return None
            names = dict(conn.execute("SELECT study_name, study_id FROM studies ORDER BY study_id"))
        except sqlite3.Error:
            conn.close()
            return None
        try:
            name = _choose_study(list(names), study_name, location.redacted)
            return cls(conn, location, name, names[name])
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def _attrs(self, table: str) -> dict[str, Any]:
        rows = self._conn.execute(
            f"SELECT key, value_json FROM {table} WHERE study_id = ?", (self._study_id,)
        )
        return {key: json.loads(value) for key, value in rows}

    def _stored_meta(self) -> Any:
        meta = self._system.get(_META)
        if meta is None:
            old = self._user_attrs().get("paretoskip")
            meta = old if isinstance(old, dict) else None
        return meta

    def _user_attrs(self) -> dict[str, Any]:
        if self._user is None:
            self._user = self._attrs("study_user_attributes")
        return self._user

    def _document(self, key: str, old_key: str) -> Any:
        value = self._system.get(key)
        return value if value is not None else self._user_attrs().get(old_key)

    # -- what StudyDB offers for reading ---------------------------------------------------
    space = StudyDB.space
    objectives = StudyDB.objectives
    constraints = StudyDB.constraints
    schema_version = StudyDB.schema_version

    def metric_info(self) -> dict[str, dict[str, Any]]:
        return dict(self._system.get(_METRIC_INFO) or {})

    # (each reads the study's documents through _document only)
    reference = StudyDB.reference
    reference_values = StudyDB.reference_values
    test_accuracies = StudyDB.test_accuracies
    families = StudyDB.families

    def set_test_accuracies(self, *_args: Any, **_kwargs: Any) -> None:
        raise ConfigError(
            f"study {self.name!r} in {self.location.redacted} was opened read-only "
            "(StudyDB.read); open it with StudyDB.load to record test accuracies"
        )

    def objective_table(self, *, use_sql: bool = True) -> ObjectiveTable:
        """As :meth:`StudyDB.objective_table` (always by SQL: there are no Optuna trials here)."""
        cursor = self._conn.cursor()
        try:
            return _sqlite_objective_table(
                cursor, self._study_id, self.objectives, self.schema_version
            )
        finally:
            cursor.close()

    def records_by_id(self, ids: Iterable[int]) -> dict[int, TrialRecord]:
        """As :meth:`StudyDB.records_by_id`."""
        ids = [int(i) for i in ids]
        attrs: dict[int, dict[str, Any]] = {i: {} for i in ids}
        constraints: dict[int, dict[str, float]] = {i: {} for i in ids}
        vals: dict[int, dict[int, float]] = {i: {} for i in ids}
        numbers: dict[int, int] = {}
        inf = {"INF_POS": math.inf, "INF_NEG": -math.inf}
        for lo in range(0, len(ids), 500):
            chunk = ids[lo : lo + 500]
            marks = ", ".join("?" * len(chunk))
            ex = self._conn.execute
            for tid, number in ex(
                f"SELECT trial_id, number FROM trials WHERE trial_id IN ({marks})", chunk
            ):
                numbers[tid] = number
            for tid, key, value in ex(
                "SELECT trial_id, key, value_json FROM trial_user_attributes "
                f"WHERE trial_id IN ({marks})",
                chunk,
            ):
                attrs[tid][key] = json.loads(value)
            for tid, key, value in ex(
                "SELECT trial_id, key, value_json FROM trial_system_attributes "
                f"WHERE trial_id IN ({marks}) AND key LIKE 'constraints%'",
                chunk,
            ):
                constraints[tid][key] = json.loads(value)
            for tid, obj, value, kind in ex(
                "SELECT trial_id, objective, value, value_type FROM trial_values "
                f"WHERE trial_id IN ({marks})",
                chunk,
            ):
                vals[tid][obj] = inf.get(kind, value)
        return _complete_records(
            ids, attrs, numbers, vals, constraints, self.metric_info(), self.space
        )


def _json_number(text: str) -> float:
    """A JSON number as Optuna stores it (``null`` → NaN; ``NaN``/``Infinity`` as json.dumps
    writes them)."""
    return math.nan if text == "null" else float(text)


def _spread_of(metric: Mapping[str, Any] | None) -> float:
    s = (metric or {}).get("spread")
    return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else math.nan


def _short_number(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.4g}"


def _summary_attrs(meta: Mapping[str, Any]) -> dict[str, str]:
    """The study's readable user attributes (what ``optuna studies`` prints)."""
    prov = meta.get("provenance") or {}
    model = prov.get("model") or {}
    data = prov.get("dataset") or {}
    out = {
        "paretoskip": f"study schema {meta.get('schema_version')}, paretoskip {meta.get('paretoskip', '?')}"
    }
    if model:
        fp = str(model.get("fingerprint") or "")[:12]
        out["model"] = f"{model.get('name', '?')}" + (f" (weights {fp})" if fp else "")
    if data:
        sizes = data.get("sizes") or {}
        out["dataset"] = f"{data.get('name', '?')}" + (
            f" (val {sizes.get('val')}, test {sizes.get('test')})" if sizes else ""
        )
    out["objectives"] = ", ".join(
        f"{o['name']} ({o['direction'][:3]}, {o.get('unit', '')})" for o in meta["objectives"]
    )
    if meta.get("constraints"):
        out["constraints"] = "; ".join(meta["constraints"])
    if meta.get("engine"):
        out["engine"] = f"{meta['engine']}, budget {meta.get('budget')}, seed {meta.get('seed')}"
    return out


def _stored_meta(study: optuna.Study, store: Any) -> dict[str, Any] | None:
    """The study's paretoskip meta: a system attribute (schema 2) or a user attribute (1)."""
    meta = store.get_study_system_attrs(study._study_id).get(_META)
    if meta is None:
        old = study.user_attrs.get("paretoskip")
        meta = old if isinstance(old, dict) else None
    return meta


def _study_names(store: Any) -> list[str]:
    # not get_all_study_summaries: it reads every trial of every study
    return optuna.study.get_all_study_names(store)


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
