"""How the workers of one study coordinate: the study lock, the shared budget, in-flight
de-duplication and dead-worker recovery (see :mod:`paretoskip.worker` for the protocol).

:class:`Coordination` is what an Optuna engine consults before every ask
(:meth:`~Coordination.redo_stale`, :meth:`~Coordination.sync`) and right after it
(:meth:`~Coordination.in_flight`, :meth:`~Coordination.wait_for`); :class:`StudyLock` is
the lock they share.  A single process uses a :class:`Coordination` without a lock, which
makes every step a no-op or a plain read of the study.

Example:
    >>> from paretoskip.coordination import StudyLock
    >>> lock = StudyLock("sqlite://", "demo")   # in memory: a lock of this process
    >>> with lock:
    ...     lock.kind, lock.shared
    ('thread', False)
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState

from .storage import StorageLocation
from .study import trial_id

if TYPE_CHECKING:
    from .evaluate import Evaluation
    from .search import SearchContext
    from .study import TrialRecord

__all__ = ["Coordination", "StudyLock"]

log = logging.getLogger("paretoskip.worker")


class StudyLock:
    """A lock shared by every worker of one study (re-entrant within a process).

    PostgreSQL: ``pg_advisory_lock``; MySQL: ``GET_LOCK``; Redis: a redis-py lock with a
    lease (``lease`` seconds, renewed by nobody: keep the locked sections short); SQLite
    file or journal file: ``flock`` on ``<file>.paretoskip.lock`` (one machine, or a file
    system with working ``flock``); in-memory storage: a thread lock.  A worker that dies
    releases it (its connection or file closes; the Redis lease expires).  The kind comes
    from :attr:`paretoskip.storage.StorageLocation.lock_kind`.
    """

    def __init__(self, storage: str | StorageLocation, study_name: str, *, lease: float = 120.0):
        self.location = StorageLocation.parse(storage, study_name)
        self.url = self.location.url
        self.name = f"paretoskip:{study_name}"
        self.kind = self.location.lock_kind
        self.path = self.location.lock_path
        self.lease = lease
        self._local = threading.RLock()
        self._depth = 0
        self._engine: Any = None
        self._conn: Any = None
        self._fh: Any = None
        self._redis_lock: Any = None
        digest = hashlib.sha256(self.name.encode()).digest()
        self._pg_key = int.from_bytes(digest[:8], "big", signed=True)
        self._mysql_name = hashlib.sha256(self.name.encode()).hexdigest()[:60]
        if self.kind == "thread" and self.location.persistent:
            log.warning(
                "no cross-process study lock for %s: workers fall back to ordering",
                self.location.redacted,
            )

    @property
    def shared(self) -> bool:
        """True when the lock excludes other processes (not only other threads)."""
        return self.kind != "thread"

    def _acquire(self) -> None:
        if self.kind in ("postgresql", "mysql"):
            import sqlalchemy as sa

            if self._engine is None:
                self._engine = self.location.create_engine(pool_size=1)
            self._conn = self._engine.connect()
            if self.kind == "postgresql":
                self._conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": self._pg_key})
            else:
                self._conn.execute(sa.text("SELECT GET_LOCK(:n, -1)"), {"n": self._mysql_name})
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
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": self._mysql_name})
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


class Coordination:
    """How the workers of one study coordinate in an Optuna engine's ask/tell loop.

    Args:
        lock: a context manager every worker of the study shares (a :class:`StudyLock`),
            held while counting the budget and asking; None: no lock, and a worker waits
            only for trials started before its own.
        stale_after: seconds after which another host's RUNNING trial counts as dead.
        wait_timeout: longest wait for another worker's evaluation of the same mask.
        poll_interval: seconds between looks at the study while waiting.
    """

    def __init__(
        self,
        lock: Any = None,
        stale_after: float = 3600.0,
        wait_timeout: float = 600.0,
        poll_interval: float = 0.5,
    ):
        self.lock = lock
        self.stale_after = stale_after
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval
        self.taken_over = 0  # masks whose result came from another worker's trial
        self.wait_timeouts = 0  # waits that gave up (the mask was evaluated again)
        self.stale_failed = 0  # RUNNING trials of dead workers marked FAIL
        self.reenqueued = 0  # masks of those trials enqueued again
        self.orphans: set[int] = set()  # trials left half-asked (ignored without a lock)

    def locked(self) -> Any:
        """The shared lock (a no-op context without one)."""
        return self.lock if self.lock is not None else contextlib.nullcontext()

    def redo_stale(
        self, ctx: SearchContext, taking_over: set[str] | frozenset[str] = frozenset()
    ) -> None:
        """Fail RUNNING trials of dead workers and enqueue their masks again."""
        for mask in ctx.db.fail_stale_trials(self.stale_after):
            self.stale_failed += 1
            if mask in taking_over or mask in ctx.evaluated:
                continue  # this worker evaluates it now, or another already has
            ctx.db.study.enqueue_trial(ctx.db.params_of(mask), skip_if_exists=False)
            self.reenqueued += 1

    def sync(self, ctx: SearchContext) -> list[TrialRecord]:
        """Count the masks every worker completed; return other workers' RUNNING trials.

        Under the shared lock no other ask is in progress, so a RUNNING trial with parameters
        missing is what remains of an ask interrupted by a crash: it is marked FAIL.
        """
        running = []
        for r in ctx.db.records(states=None):
            if r.state == TrialState.COMPLETE:
                ctx.account_other(r)
            elif r.state == TrialState.RUNNING:
                if r.params_complete:
                    running.append(r)
                elif self.lock is not None and ctx.db.fail(r.trial_id):
                    self.stale_failed += 1
                    log.warning(
                        "trial %d was left half-asked (worker %s died?); marked failed",
                        r.number,
                        r.worker or "unknown",
                    )
        return running

    def in_flight(self, ctx: SearchContext, trials: list[Any]) -> dict[int, int]:
        """Index of each asked trial → id of another RUNNING trial with the same parameters.

        Without a shared lock, only trials that started before it count (two workers that
        asked the same mask must not wait for each other), and a trial whose parameters are
        still being written and agree so far is re-read for up to 2 s (then taken for the
        remains of a crashed ask and ignored).
        """
        ordered = self.lock is None
        n_params = len(ctx.space.param_names)
        mine = {trial_id(t) for t in trials}
        deadline = time.monotonic() + 2.0
        while True:
            running = [
                t
                for t in ctx.db.trials(states=(TrialState.RUNNING,))
                if trial_id(t) not in self.orphans
            ]
            start = {
                trial_id(t): (t.datetime_start or datetime.datetime.min, t.number) for t in running
            }
            out: dict[int, int] = {}
            partial = set()
            for i, t in enumerate(trials):
                key = start.get(trial_id(t), (datetime.datetime.max, t.number))
                for o in running:
                    oid = trial_id(o)
                    if oid in mine or (ordered and start[oid] >= key):
                        continue
                    if any(t.params.get(p) != v for p, v in o.params.items()):
                        continue
                    if len(o.params) < n_params:
                        partial.add(oid)
                        continue
                    out[i] = oid
                    break
            if not partial:
                return out
            if time.monotonic() > deadline:
                self.orphans |= partial
                return out
            time.sleep(0.05)

    def wait_for(
        self, ctx: SearchContext, waits: dict[int, int], masks: list[Any]
    ) -> dict[str, Evaluation]:
        """Wait until the other workers' trials finish; their results, when the evaluator
        has no cache to take them from (mask → Evaluation)."""
        pending = set(waits.values())
        finished: dict[int, TrialRecord] = {}
        taking = {ctx.space.to_bitstring(masks[i]) for i in waits}
        deadline = time.monotonic() + self.wait_timeout
        while pending:
            for tid in list(pending):
                record = ctx.db.record_of(tid)
                if record.state.is_finished():
                    finished[tid] = record
                    pending.discard(tid)
            if not pending:
                break
            if time.monotonic() >= deadline:
                self.wait_timeouts += len(pending)
                log.warning(
                    "gave up waiting %.0f s for %d trial(s) of other workers; evaluating their "
                    "masks here",
                    self.wait_timeout,
                    len(pending),
                )
                break
            time.sleep(self.poll_interval)
            with self.locked():
                self.redo_stale(ctx, taking)
        known = {}
        for record in finished.values():
            if not record.completed:
                continue
            self.taken_over += 1
            if ctx.evaluator.cache is None and record.metrics:
                known[record.mask] = record.evaluation(ctx.space)
        return known
