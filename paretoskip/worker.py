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

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .coordination import Coordination, StudyLease, StudyLock
from .errors import ConfigError, StudyMismatchError
from .search import (
    ENGINES,
    check_run_limits,
    clamp_budget,
    engine_spec,
    make_engine,
    open_study,
    run_engine,
)
from .storage import StorageLocation
from .study import worker_id

__all__ = ["run_worker", "worker_seed", "StudyLock", "WORKER_ENGINES"]

log = logging.getLogger(__name__)

#: Engines a worker can run: those whose state is the shared study (Optuna samplers).
WORKER_ENGINES: tuple[str, ...] = tuple(n for n in ENGINES if engine_spec(n).shareable)


def worker_seed(worker: str | None = None) -> int:
    """A sampler seed derived from a worker id (default: this process, ``host:pid``).

    Example:
        >>> worker_seed("hostA:100") != worker_seed("hostA:101")
        True
    """
    text = worker or worker_id()
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


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

    if engine not in WORKER_ENGINES:
        raise ConfigError(
            f"engine {engine!r} cannot be shared by several workers; accepted: "
            f"{', '.join(WORKER_ENGINES)} (Optuna samplers, whose state is the study)"
        )
    if budget is None:
        raise ConfigError("budget=None: a worker needs the whole study's budget")
    check_run_limits(budget, timeout)
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
    location = StorageLocation.parse(storage, study_name).prepare()
    budget = clamp_budget(budget, evaluator.space)
    # held for the whole run, taken before anything is written: a search whose engine
    # cannot share the study is refused while this worker runs, and the other way round
    lease = StudyLease(location, study_name, mode="shared", what=f"worker, engine {engine}")
    lease.acquire()
    try:
        _give_cache(evaluator, location)
    except BaseException:
        lease.release()
        raise
    lock = StudyLock(location, study_name)
    started = time.monotonic()
    try:
        with lock:  # one worker creates the study and records the reference at a time
            db = _open_study(
                evaluator,
                objectives=objectives,
                constraints=constraints,
                storage=location,
                study_name=study_name,
                engine=engine,
                engine_settings=eng.describe(),
                budget=budget,
                seed=seed,
            )
        coord = Coordination(
            lock=lock if lock.shared else None,
            stale_after=stale_after,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
        )
        log.info(
            "worker %s (seed %d) joins study %s in %s", me, seed, study_name, location.redacted
        )
        ctx = run_engine(
            eng,
            evaluator,
            db,
            budget=budget,
            timeout=timeout,
            progress=progress,
            coordination=coord,
        )
    finally:
        lock.close()
        lease.release()
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


def _open_study(evaluator: Any, **kwargs: Any) -> Any:
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


def _give_cache(evaluator: Any, location: StorageLocation) -> None:
    """Give a cache-less evaluator the study database's shared cache."""
    from .cache import EvalCache

    if evaluator.cache is None:
        if location.cache_is_shared:
            evaluator.cache = EvalCache(location.cache_url)
        else:
            log.warning(
                "no shared evaluation cache for %s: workers take each other's results from the "
                "study's trials",
                location.redacted,
            )
