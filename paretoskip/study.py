"""The study database: Optuna storage shared by every engine.

One Optuna trial per evaluation: parameters ``skip.<gene>`` ∈ {0, 1}, values = the
objectives, user attributes = everything else (mask, every metric with unit, source and
spread, cache hit, engine, generation, worker).  The space, objectives, constraints,
fingerprints and provenance are stored as the study's user attribute ``paretoskip``;
reopening the study with a different model, space, objectives or constraints raises
:class:`~paretoskip.errors.StudyMismatchError` before anything is written.

Storage: a path (``studies/x.db`` → SQLite), ``:memory:`` (nothing kept), an SQLAlchemy URL (``postgresql+psycopg://…``,
``mysql+pymysql://…``), ``redis://…`` (Optuna's journal on Redis) or a ``.log`` file
(Optuna's journal file).  optuna-dashboard and the ``optuna`` command line open the same
database.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from .errors import ConfigError, StudyMismatchError
from .evaluate import Evaluation
from .objectives import Constraint, Objective
from .space import SkipSpace

__all__ = ["StudyDB", "open_storage", "storage_url_for", "SCHEMA_VERSION", "worker_id"]

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
_DIST = CategoricalDistribution((0, 1))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def storage_url_for(storage: str | os.PathLike | None, study_name: str) -> str:
    """The storage URL for a path, a URL or None (``studies/<name>.db``)."""
    if storage is None:
        storage = Path("studies") / f"{study_name}.db"
    text = os.fspath(storage)
    if "://" in text or text == ":memory:":
        return text
    Path(text).parent.mkdir(parents=True, exist_ok=True)
    if text.endswith(".log"):
        return text
    return f"sqlite:///{text}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for a URL (see the module docstring); ``:memory:`` keeps it in memory."""
    if url == ":memory:":
        return optuna.storages.InMemoryStorage()
    if url.startswith("redis://") or url.startswith("rediss://"):
        from optuna.storages.journal import JournalRedisBackend

        return optuna.storages.JournalStorage(JournalRedisBackend(url))
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    if url not in ("sqlite://", "sqlite:///:memory:"):
        # WAL lets readers (dashboard, front extraction) work beside a writer, and
        # synchronous=NORMAL makes a commit cheap while staying safe against a killed process
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()
    return storage


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA journal_mode=WAL")
    dbapi_conn.execute("PRAGMA synchronous=NORMAL")
    dbapi_conn.execute("PRAGMA busy_timeout=60000")


def cache_url_for(url: str) -> str | None:
    """Where the evaluation cache lives for a study storage URL (same database when SQL)."""
    if url == ":memory:":
        return None
    if "://" in url and not url.startswith(("redis://", "rediss://")):
        return url
    if "://" not in url:  # journal file: a SQLite file beside it
        return f"sqlite:///{os.path.splitext(url)[0]}.cache.db"
    return None


@dataclass
class StudyDB:
    """An Optuna study holding a paretoskip search."""

    study: optuna.Study
    url: str
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def space(self) -> SkipSpace:
        return SkipSpace.from_dict(self.meta["space"])

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
        storage: str | os.PathLike | None,
        study_name: str,
        *,
        meta: Mapping[str, Any],
        sampler: optuna.samplers.BaseSampler | None = None,
    ) -> StudyDB:
        """Create the study, or reopen it after checking that it holds the same search."""
        url = storage_url_for(storage, study_name)
        store = open_storage(url)
        sampler = sampler or optuna.samplers.RandomSampler(seed=0)
        directions = [o["direction"] for o in meta["objectives"]]
        existing = {
            s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)
        }
        if study_name in existing:
            study = optuna.load_study(study_name=study_name, storage=store, sampler=sampler)
            stored = study.user_attrs.get("paretoskip")
            if stored is None:
                raise StudyMismatchError(
                    f"study {study_name!r} in {url} was not made by paretoskip; choose another study name"
                )
            _check_same(stored, meta, study_name, url)
            return cls(study, url, stored)
        try:
            study = optuna.create_study(
                study_name=study_name, storage=store, directions=directions, sampler=sampler
            )
            study.set_user_attr("paretoskip", dict(meta))
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it just now
            return cls.open(storage, study_name, meta=meta, sampler=sampler)
        return cls(study, url, dict(meta))

    @classmethod
    def load(cls, storage: str | os.PathLike, study_name: str | None = None) -> StudyDB:
        """Open an existing paretoskip study for reading (front, plots)."""
        url = storage_url_for(storage, study_name or "")
        store = open_storage(url)
        names = [
            s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)
        ]
        if study_name is None:
            if len(names) != 1:
                raise ConfigError(f"{url} holds {len(names)} studies ({names}); name one")
            study_name = names[0]
        if study_name not in names:
            raise ConfigError(f"no study {study_name!r} in {url}; it holds: {names}")
        study = optuna.load_study(study_name=study_name, storage=store)
        meta = study.user_attrs.get("paretoskip")
        if meta is None:
            raise ConfigError(f"study {study_name!r} in {url} was not made by paretoskip")
        return cls(study, url, meta)

    # -- trials --------------------------------------------------------------------------
    def trials(
        self, states: Sequence[TrialState] | None = (TrialState.COMPLETE,)
    ) -> list[FrozenTrial]:
        """Trials without copying them (fast on large studies)."""
        return self.study.get_trials(deepcopy=False, states=tuple(states) if states else None)

    def evaluated_masks(self) -> set[str]:
        return {t.user_attrs["mask"] for t in self.trials() if "mask" in t.user_attrs}

    def params_of(self, mask: str) -> dict[str, int]:
        space = self.space
        return dict(zip(space.param_names, space.genes_from_mask(mask)))

    def distributions(self) -> dict[str, CategoricalDistribution]:
        return {p: _DIST for p in self.space.param_names}

    def values_of(self, ev: Evaluation) -> list[float]:
        return [ev[o.name] for o in self.objectives]

    def constraint_values(self, ev: Evaluation, reference: Mapping[str, float]) -> dict[str, float]:
        metrics = {k: m.value for k, m in ev.metrics.items()}
        return {c.key: c.violation(metrics, reference) for c in self.constraints}

    def user_attrs_of(
        self, ev: Evaluation, *, engine: str, generation: int | None
    ) -> dict[str, Any]:
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

    def fail_stale_trials(self, stale_after: float = 3600.0) -> list[str]:
        """Mark RUNNING trials of dead workers as FAIL; return their masks (to be done again).

        A trial is stale when its worker ran on this host and its process is gone, or when
        it has been running for more than ``stale_after`` seconds.
        """
        host = socket.gethostname()
        redo = []
        storage = self.study._storage
        for t in self.trials(states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get("worker", "")
            whost, _, pid = worker.partition(":")
            dead = False
            if whost == host and pid.isdigit():
                dead = not _alive(int(pid))
            elif t.datetime_start is not None:
                dead = time.time() - t.datetime_start.timestamp() > stale_after
            if not dead:
                continue
            try:
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                continue  # another worker got there first
            log.warning(
                "trial %d of dead worker %s marked failed; its mask is done again", t.number, worker
            )
            if len(t.params) == len(self.space.param_names):
                redo.append(
                    self.space.to_bitstring(
                        self.space.mask_from_genes([t.params[p] for p in self.space.param_names])
                    )
                )
        return redo

    # -- study-level attributes ----------------------------------------------------------
    def test_accuracies(self) -> dict[str, float]:
        return dict(self.study.user_attrs.get("paretoskip.test_accuracy", {}))

    def set_test_accuracies(self, values: Mapping[str, float]) -> None:
        merged = {**self.test_accuracies(), **values}
        self.study.set_user_attr("paretoskip.test_accuracy", merged)

    def reference(self) -> dict[str, Any] | None:
        return self.study.user_attrs.get("paretoskip.reference")

    def set_reference(self, ev: Evaluation) -> None:
        self.study.set_user_attr("paretoskip.reference", ev.to_dict())


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


def _check_same(stored: Mapping[str, Any], new: Mapping[str, Any], name: str, url: str) -> None:
    for key in _MUST_MATCH:
        if stored.get(key) != new.get(key):
            what = {
                "space": "skip space",
                "model_fingerprint": "model weights or architecture",
                "data_fingerprint": "dataset or split",
                "settings_fingerprint": "measurement settings or hardware",
            }.get(key, key)
            raise StudyMismatchError(
                f"study {name!r} in {url} was made with a different {what}: stored {_short(stored.get(key))}, "
                f"now {_short(new.get(key))}. Use another study name (or storage) for a different search; "
                "nothing was written."
            )


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) < 120 else text[:117] + "..."
