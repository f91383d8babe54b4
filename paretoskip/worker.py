"""Several independent workers on one study: Optuna samplers over a shared database.

Start :func:`run_worker` (or ``paretoskip worker STUDY_FILE --storage URL``) in as many
processes, on as many machines, as you like, all with the same study storage URL
(PostgreSQL or MySQL; SQLite or a journal file for workers on one machine).  Each worker
asks its own sampler for masks, evaluates them, and tells the results to the shared study.

What they share:

- **The budget**: distinct masks completed in the study (the full-model reference
  included).  Before asking, a worker counts the masks completed by every worker and the
  masks other workers are evaluating at that moment, and asks only for what is left; when
  the rest of the budget is in other workers' hands, it waits for them (and takes over if
  one of them dies).
- **The evaluation cache**: the evaluator's cache table lives in the study database (unless
  the evaluator already has a cache), so a mask evaluated by one worker is a cache hit for
  every other.
- **A study lock** (:class:`StudyLock`): a PostgreSQL advisory lock, a MySQL ``GET_LOCK``, a
  Redis lock, or an ``flock`` beside an SQLite/journal file.  It is held while the study is
  created (with its reference evaluation) and while a worker counts the budget and asks its
  trials, so asks are atomic across workers: the budget is never overshot, and a worker
  always sees the masks asked before it.

**In-flight de-duplication.**  Right after asking (still under the study lock) a worker
looks at the other workers' RUNNING trials.  When one has the same parameters as a mask it
just asked, it does not evaluate that mask: it first evaluates and tells its other masks,
then waits (polling every ``poll_interval`` seconds, at most ``wait_timeout``) for that
trial to finish and takes the result from the cache.  If the other trial fails (its worker
died) or the wait times out, it evaluates the mask itself.  Without a study lock (a plain
:func:`paretoskip.search` in several processes, or a storage that has none) a worker waits
only for trials that started before its own (by start time, then number), so two workers
never wait for each other.  Remaining duplicate work, by design:

- a wait that outlasts ``wait_timeout`` (the mask is then evaluated twice);
- a worker killed mid-evaluation (its partial work is lost and the mask is evaluated again);
- without a study lock, two workers that ask the same mask at nearly the same instant may
  both evaluate it: when the earlier ask takes longer than 2 s to write its parameters (the
  later worker re-reads it that long), or when clock skew between hosts orders the two
  trials against their real order and the "earlier" one was not yet visible.

**Dead workers.**  Every worker, at start and before every ask (and while it waits), calls
:meth:`~paretoskip.study.StudyDB.fail_stale_trials`: a RUNNING trial whose worker
(``host:pid``) ran on this host and whose process is gone is marked FAIL at once; one from
another host after ``stale_after`` seconds.  Its mask is enqueued again, and the next ask of
any worker (they pop enqueued trials first) evaluates it.  A trial left half-asked by a
crash inside an ask is failed at once under the study lock (no ask can be in progress).  So a
killed worker's mask is redone by the workers that continue, or by the worker when it
restarts; nothing is lost.

**Seeds.**  Each worker's sampler needs its own seed, or identical workers propose identical
masks.  With ``seed=None`` (the default) the seed is derived from the worker id
(``host:pid``, see :func:`worker_seed`); an explicit seed is used as given (give each worker
its own to reproduce a run).

Example:
    >>> import paretoskip
    >>> from paretoskip.data import load_dataset
    >>> from paretoskip.worker import run_worker
    >>> data = load_dataset("digits")
    >>> model = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    >>> summary = run_worker(paretoskip.Evaluator(model, data), storage="sqlite://",
    ...     study_name="demo", objectives=["accuracy", "flops"], constraints=[], budget=8,
    ...     progress=False)
    >>> summary["distinct_masks"]
    8
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, StudyMismatchError
from .study import worker_id

__all__ = ["run_worker", "worker_seed", "StudyLock"]

log = logging.getLogger(__name__)

#: engines a worker can run (Optuna samplers: their state is the shared study)
WORKER_ENGINES = ("tpe", "nsga2", "nsga3", "gp", "random", "bruteforce")


def worker_seed(worker: str | None = None) -> int:
    """A sampler seed derived from a worker id (default: this process, ``host:pid``).

    Example:
        >>> worker_seed("hostA:100") != worker_seed("hostA:101")
        True
    """
    text = worker or worker_id()
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


class StudyLock:
    """A lock shared by every worker of one study (re-entrant within a process).

    PostgreSQL: ``pg_advisory_lock``; MySQL: ``GET_LOCK``; Redis: a redis-py lock with a
    lease (``lease`` seconds, renewed by nobody: keep the locked sections short); SQLite
    file or journal file: ``flock`` on ``<file>.paretoskip.lock`` (one machine, or a file
    system with working ``flock``); in-memory SQLite: a thread lock.  A worker that dies
    releases it (its connection or file closes; the Redis lease expires).
    """

    def __init__(self, url: str, study_name: str, *, lease: float = 120.0):
        self.url = url
        self.name = f"paretoskip:{study_name}"
        self._local = threading.RLock()
        self._depth = 0
        self._engine = None
        self._conn = None
        self._fh = None
        self._redis_lock = None
        self.lease = lease
        digest = hashlib.sha256(self.name.encode()).digest()
        self._pg_key = int.from_bytes(digest[:8], "big", signed=True)
        if url.startswith(("postgresql", "postgres")):
            self.kind = "postgresql"
        elif url.startswith("mysql"):
            self.kind = "mysql"
        elif url.startswith(("redis://", "rediss://")):
            self.kind = "redis"
        elif url in ("sqlite://", "sqlite:///:memory:", ":memory:"):
            self.kind = "thread"  # an in-memory study lives in one process
        elif url.startswith("sqlite"):
            import sqlalchemy as sa

            self.kind = "file"
            self.path = Path(str(sa.engine.make_url(url).database) + ".paretoskip.lock")
        elif "://" not in url:
            self.kind = "file"
            self.path = Path(url + ".paretoskip.lock")
        else:
            self.kind = "thread"
            log.warning("no cross-process study lock for %s: workers fall back to ordering", url)

    @property
    def shared(self) -> bool:
        """True when the lock excludes other processes (not only other threads)."""
        return self.kind != "thread"

    def _acquire(self) -> None:
        if self.kind in ("postgresql", "mysql"):
            import sqlalchemy as sa

            if self._engine is None:
                self._engine = sa.create_engine(self.url, pool_pre_ping=True, pool_size=1)
            self._conn = self._engine.connect()
            if self.kind == "postgresql":
                self._conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": self._pg_key})
            else:
                name = hashlib.sha256(self.name.encode()).hexdigest()[:60]
                self._conn.execute(sa.text("SELECT GET_LOCK(:n, -1)"), {"n": name})
            self._conn.commit()
        elif self.kind == "redis":
            import redis

            if self._redis_lock is None:
                client = redis.Redis.from_url(self.url)
                self._redis_lock = client.lock(self.name, timeout=self.lease, blocking=True)
            self._redis_lock.acquire()
        elif self.kind == "file":
            import fcntl

            self._fh = open(self.path, "a+")  # noqa: SIM115 - held until release
            fcntl.flock(self._fh, fcntl.LOCK_EX)

    def _release(self) -> None:
        if self.kind in ("postgresql", "mysql"):
            import sqlalchemy as sa

            conn, self._conn = self._conn, None
            try:
                if self.kind == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self._pg_key})
                else:
                    name = hashlib.sha256(self.name.encode()).hexdigest()[:60]
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
                conn.commit()
            finally:
                conn.close()
        elif self.kind == "redis":
            with contextlib.suppress(Exception):  # the lease expired: nothing to release
                self._redis_lock.release()
        elif self.kind == "file":
            import fcntl

            fh, self._fh = self._fh, None
            try:
                fcntl.flock(fh, fcntl.LOCK_UN)
            finally:
                fh.close()

    def __enter__(self) -> StudyLock:
        self._local.acquire()
        try:
            if self._depth == 0:
                self._acquire()
        except BaseException:
            self._local.release()
            raise
        self._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        try:
            if self._depth == 0:
                self._release()
        finally:
            self._local.release()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def run_worker(
    evaluator: Any,
    *,
    storage: str,
    study_name: str,
    objectives: Sequence[str],
    constraints: Sequence[str] | str | None,
    engine: str = "tpe",
    budget: int,
    seed: int | None = None,
    timeout: float | None = None,
    progress: bool = True,
    engine_options: Mapping[str, Any] | None = None,
    stale_after: float = 3600.0,
    wait_timeout: float = 600.0,
    poll_interval: float = 0.5,
) -> dict[str, Any]:
    """Run one worker of a shared study until the study holds ``budget`` distinct masks.

    Start it in several processes or machines with the same ``storage`` and
    ``study_name`` (and the same model, data, objectives, constraints): they share the
    budget, the evaluation cache and the sampler history (see the module docstring).

    Args:
        evaluator: an :class:`~paretoskip.Evaluator` or
            :class:`~paretoskip.parallel.ParallelEvaluator`.  Without a cache it gets one in
            the study database (for journal storages: an SQLite file beside it).
        storage: study storage URL (``postgresql+psycopg://user@host/db``,
            ``mysql+pymysql://…``, ``sqlite:///studies/x.db``, ``redis://…``) or path.
        study_name: the shared study.
        objectives, constraints: as for :func:`paretoskip.search`; every worker must give
            the same ones (else :class:`~paretoskip.errors.StudyMismatchError`).
        engine: an Optuna sampler: ``tpe`` (default), ``nsga2``, ``nsga3``, ``gp``,
            ``random``, ``bruteforce``.  (pymoo engines keep their population in one process
            and cannot be shared.)
        budget: distinct masks of the whole study, every worker together.
        seed: sampler seed; None derives one from the worker id (different per worker).
        timeout: wall-clock limit of this worker, in seconds.
        progress: show a progress bar.
        engine_options: sampler options (e.g. ``{"n_startup_trials": 5}``).
        stale_after: seconds after which a RUNNING trial from another host counts as dead.
        wait_timeout: longest wait for another worker's evaluation of the same mask.
        poll_interval: seconds between looks at the study while waiting.

    Returns:
        A summary: this worker's id, seed, new evaluations, cache hits, trials recorded,
        masks taken from other workers, stale trials failed, seconds; and the study's
        distinct masks.
    """
    from .cache import EvalCache
    from .search import SearchContext, make_engine, open_study
    from .search._engines import Coordination
    from .study import cache_url_for, storage_url_for

    if engine not in WORKER_ENGINES:
        raise ConfigError(
            f"engine {engine!r} cannot be shared by several workers; accepted: "
            f"{', '.join(WORKER_ENGINES)} (Optuna samplers, whose state is the study)"
        )
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"budget={budget!r} must be a positive number of distinct masks")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"timeout={timeout} must be positive seconds")
    for name, value in (
        ("stale_after", stale_after),
        ("wait_timeout", wait_timeout),
        ("poll_interval", poll_interval),
    ):
        if value <= 0:
            raise ConfigError(f"{name}={value} must be positive seconds")
    me = worker_id()
    seed = worker_seed(me) if seed is None else int(seed)
    eng = make_engine(engine, seed, **dict(engine_options or {}))
    url = storage_url_for(storage, study_name)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        import sqlalchemy as sa

        Path(str(sa.engine.make_url(url).database)).parent.mkdir(parents=True, exist_ok=True)
    if evaluator.cache is None:
        cache_url = cache_url_for(url)
        if cache_url is not None and cache_url not in ("sqlite://", "sqlite:///:memory:"):
            evaluator.cache = EvalCache(cache_url)
        else:
            log.warning(
                "no shared evaluation cache for %s: workers take each other's results from the "
                "study's trials",
                url,
            )
    lock = StudyLock(url, study_name)
    started = time.monotonic()
    try:
        with lock:  # one worker creates the study and records the reference at a time
            db = _open_study(
                open_study,
                evaluator,
                objectives=objectives,
                constraints=constraints,
                storage=url,
                study_name=study_name,
                engine=engine,
                engine_settings=eng.describe(),
                budget=budget,
                seed=seed,
            )
        ctx = SearchContext(
            evaluator, db, engine=eng.name, budget=budget, timeout=timeout, progress=progress
        )
        coord = Coordination(
            lock=lock if lock.shared else None,
            stale_after=stale_after,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
        )
        ctx.coordination = coord  # read by OptunaEngine.run
        log.info("worker %s (seed %d) joins study %s in %s", me, seed, study_name, db.url)
        try:
            eng.run(ctx)
        finally:
            ctx.close()
    finally:
        lock.close()
    summary = ctx.summary()
    summary.update(
        {
            "worker": me,
            "seed": seed,
            "study": study_name,
            "taken_from_other_workers": coord.taken_over,
            "wait_timeouts": coord.wait_timeouts,
            "stale_trials_failed": coord.stale_failed,
            "masks_reenqueued": coord.reenqueued,
            "seconds": time.monotonic() - started,
        }
    )
    log.info("worker %s done: %s", me, summary)
    return summary


def _open_study(open_study: Any, evaluator: Any, **kwargs: Any) -> Any:
    """``open_study``, retried for a few seconds over two races with processes that do not
    hold the study lock (a dashboard, a plain ``search``): Optuna creating its tables in an
    empty database at the same moment, and a study created but not yet labelled."""
    import sqlalchemy.exc

    deadline = time.monotonic() + 10.0
    while True:
        try:
            return open_study(evaluator, **kwargs)
        except StudyMismatchError as exc:
            if "not made by paretoskip" not in str(exc) or time.monotonic() > deadline:
                raise
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)
