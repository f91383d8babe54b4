"""How the processes of one study coordinate: the study lease, the study lock, the shared
budget, in-flight de-duplication and dead-worker recovery (see :mod:`paretoskip.worker` for
the protocol).

:class:`StudyLease` is held by every search and worker for its whole run: *shared* by the
processes that coordinate through the study (Optuna samplers: workers and plain searches),
*exclusive* for engines that keep their state in one process (pymoo, exhaustive, greedy).
A process whose lease cannot be granted is refused with :class:`StudyBusyError`, naming the
processes that hold it, before it writes anything.

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
    >>> import os, tempfile
    >>> db = os.path.join(tempfile.mkdtemp(), "s.db")
    >>> with StudyLease(db, "s", mode="exclusive", what="search, engine pymoo-nsga2"):
    ...     try:
    ...         StudyLease(db, "s", mode="shared", what="worker, engine tpe").acquire()
    ...     except StudyBusyError as exc:
    ...         print("refused:", "search, engine pymoo-nsga2" in str(exc))
    refused: True
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState

from .errors import ParetoSkipError
from .storage import StorageLocation, storage_errors
from .study import trial_id, worker_id

if TYPE_CHECKING:
    from .evaluate import Evaluation
    from .search import SearchContext
    from .study import TrialRecord

__all__ = ["Coordination", "StudyLock", "StudyLease", "StudyBusyError", "LEASE_MODES"]

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


#: Lease modes: who may hold a study's lease at the same time.
LEASE_MODES = ("shared", "exclusive")


class StudyBusyError(ParetoSkipError, RuntimeError):
    """Another process searches the study in a way this one cannot share (nothing was
    written)."""


class StudyLease:
    """Who searches a study: held by every search and worker for its whole run.

    ``mode="shared"``: processes that coordinate through the study (Optuna samplers, as
    workers or plain searches); they hold the lease together.  ``mode="exclusive"``: an
    engine whose state lives in one process (pymoo, exhaustive, greedy); it holds the lease
    alone.  :meth:`acquire` never waits: when the lease is held in a conflicting mode it
    raises :class:`StudyBusyError` naming the holders (``host:pid``, what they run, since
    when), and writes nothing.

    Backends: an SQLite or journal file: ``flock`` (shared or exclusive) on
    ``<file>.<study>.paretoskip-lease.lock``, which also lists the holders; PostgreSQL: a session
    advisory lock (``pg_try_advisory_lock[_shared]``) on a connection kept open for the run,
    whose ``application_name`` names the holder; MySQL: ``GET_LOCK`` on one name for the
    exclusive holder and one of 64 slot names per shared holder; Redis: a hash of holders,
    each with an expiry its process renews every ``ttl / 3`` seconds.  A holder that dies
    releases the lease with its file or connection (Redis: when its entry expires, at once
    when it ran on this host).  In-memory storages need no lease (no other process sees
    them).

    Args:
        storage: the study storage.
        study_name: the study.
        mode: ``"shared"`` or ``"exclusive"``.
        what: what this process runs, for the messages of the refused
            (``"search, engine pymoo-nsga2"``).
        ttl: seconds a Redis entry lives without renewal.
    """

    _SLOTS = 64

    def __init__(
        self,
        storage: str | StorageLocation,
        study_name: str,
        *,
        mode: str,
        what: str,
        ttl: float = 30.0,
    ):
        if mode not in LEASE_MODES:
            raise ValueError(f"mode={mode!r}; accepted: {', '.join(LEASE_MODES)}")
        self.location = StorageLocation.parse(storage, study_name)
        self.study_name = study_name
        self.mode = mode
        self.what = what
        self.ttl = ttl
        self.kind = self.location.lock_kind if self.location.persistent else "none"
        if self.kind == "thread":
            self.kind = "none"
        self.path = (
            self.location.file.with_name(
                f"{self.location.file.name}.{study_name}.paretoskip-lease.lock"
            )
            if self.location.file is not None
            else None
        )
        self.name = f"paretoskip-lease:{study_name}"
        self.info = {
            "holder": worker_id(),
            "mode": mode,
            "what": what,
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        self.held = False
        self._fh: Any = None
        self._engine: Any = None
        self._conn: Any = None
        self._redis: Any = None
        self._field: str | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # -- public ------------------------------------------------------------------------
    def acquire(self) -> StudyLease:
        """Take the lease, or raise :class:`StudyBusyError` (see the class docstring)."""
        if self.held:
            return self
        if self.kind != "none":
            with storage_errors(self.location):
                getattr(self, f"_acquire_{self.kind}")()
        self.held = True
        return self

    def release(self) -> None:
        """Give the lease back (a no-op when it is not held)."""
        if not self.held:
            return
        self.held = False
        if self.kind != "none":
            with contextlib.suppress(Exception):
                getattr(self, f"_release_{self.kind}")()

    def __enter__(self) -> StudyLease:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- the refusal -------------------------------------------------------------------
    def _busy(self, holders: list[dict[str, Any]]) -> StudyBusyError:
        where = self.location.file or self.location.redacted
        who = "; ".join(_describe_holder(h) for h in holders) or "another process"
        if self.mode == "exclusive":
            advice = (
                f"this {self.what} keeps its search state in one process and cannot share the "
                "study: wait for the other process to finish (or stop it), or use another "
                "study name or storage; searches with an Optuna sampler (tpe, nsga2, random, "
                "...) and `paretoskip worker` can share a study"
            )
        else:
            advice = (
                "its engine keeps its search state in one process and cannot share the study: "
                "wait for it to finish (or stop it), or use another study name or storage"
            )
        return StudyBusyError(
            f"study {self.study_name!r} in {where} is being searched by another process: "
            f"{who}. {advice[0].upper() + advice[1:]}. Nothing was written."
        )

    # -- file --------------------------------------------------------------------------
    def _acquire_file(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held until release
        flag = fcntl.LOCK_SH if self.mode == "shared" else fcntl.LOCK_EX
        try:
            fcntl.flock(fh, flag | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holders = _live(_parse_lines(fh.read()))
            fh.close()
            raise self._busy(holders) from None
        if self.mode == "exclusive":  # no other holder: the old lines go
            fh.truncate(0)
        fh.write(json.dumps(self.info) + "\n")
        fh.flush()
        self._fh = fh

    def _release_file(self) -> None:
        import fcntl

        fh, self._fh = self._fh, None
        try:
            fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            fh.close()

    # -- PostgreSQL --------------------------------------------------------------------
    def _pg_key(self) -> int:
        digest = hashlib.sha256(self.name.encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _acquire_postgresql(self) -> None:
        import sqlalchemy as sa

        tag = f"paretoskip {self.mode[0]} {self.info['holder']} {self.what}"[:63]
        self._engine = self.location.create_engine(
            poolclass=sa.pool.NullPool, connect_args={"application_name": tag}
        )
        conn = self._engine.connect()
        fn = "pg_try_advisory_lock_shared" if self.mode == "shared" else "pg_try_advisory_lock"
        key = self._pg_key()
        ok = conn.execute(sa.text(f"SELECT {fn}(:k)"), {"k": key}).scalar()
        conn.commit()
        if ok:
            self._conn = conn
            return
        rows = conn.execute(
            sa.text(
                "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                "AND l.granted AND l.classid::bigint = :hi AND l.objid::bigint = :lo "
                "AND l.objsubid = 1 AND l.pid <> pg_backend_pid()"
            ),
            {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
        ).all()
        conn.close()
        self._engine.dispose()
        self._engine = None
        holders = []
        for app, addr, started in rows:
            h = _parse_tag(app or "")
            h.setdefault("since", started.isoformat(timespec="seconds") if started else "")
            if addr is not None and "holder" not in h:
                h["holder"] = str(addr)
            holders.append(h)
        raise self._busy(holders)

    def _release_postgresql(self) -> None:
        conn, self._conn = self._conn, None
        try:
            conn.close()  # closing the session releases its advisory locks
        finally:
            self._engine.dispose()
            self._engine = None

    # -- MySQL -------------------------------------------------------------------------
    def _mysql_names(self) -> tuple[str, list[str]]:
        base = "psl" + hashlib.sha256(self.name.encode()).hexdigest()[:40]
        return base + "x", [f"{base}{i:02d}" for i in range(self._SLOTS)]

    def _acquire_mysql(self) -> None:
        import sqlalchemy as sa

        self._engine = self.location.create_engine(poolclass=sa.pool.NullPool)
        conn = self._engine.connect()
        xname, slots = self._mysql_names()

        def get(name: str, wait: float) -> bool:
            return (
                conn.execute(sa.text("SELECT GET_LOCK(:n, :w)"), {"n": name, "w": wait}).scalar()
                == 1
            )

        def release(name: str) -> None:
            conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})

        def refuse(names: list[str]) -> StudyBusyError:
            holders = []
            for n in names:
                cid = conn.execute(sa.text("SELECT IS_USED_LOCK(:n)"), {"n": n}).scalar()
                if cid is not None:
                    holders.append({"holder": f"MySQL connection {cid}"})
            conn.close()
            self._engine.dispose()
            self._engine = None
            return self._busy(holders)

        if not get(xname, 5):
            raise refuse([xname])
        if self.mode == "shared":
            mine = next((n for n in slots if get(n, 0)), None)
            release(xname)
            if mine is None:
                raise refuse(slots[:4])
        else:
            taken = []
            for n in slots:
                if not get(n, 0):
                    for t in taken:
                        release(t)
                    release(xname)
                    raise refuse([n])
                taken.append(n)
        conn.commit()
        self._conn = conn

    def _release_mysql(self) -> None:
        conn, self._conn = self._conn, None
        try:
            conn.close()  # closing the session releases its named locks
        finally:
            self._engine.dispose()
            self._engine = None

    # -- Redis -------------------------------------------------------------------------
    def _acquire_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(self.location.url)
        key = self.name
        field = f"{self.info['holder']}:{uuid.uuid4().hex[:8]}"
        with client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    now = time.time()
                    entries = {
                        f.decode(): json.loads(v) for f, v in (pipe.hgetall(key) or {}).items()
                    }
                    gone = [f for f, h in entries.items() if not _holder_alive(h, now)]
                    live = [h for f, h in entries.items() if f not in gone]
                    conflict = (
                        live
                        if self.mode == "exclusive"
                        else [h for h in live if h.get("mode") == "exclusive"]
                    )
                    pipe.multi()
                    if gone:
                        pipe.hdel(key, *gone)
                    if not conflict:
                        pipe.hset(key, field, json.dumps({**self.info, "expires": now + self.ttl}))
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        if conflict:
            client.close()
            raise self._busy(conflict)
        self._redis, self._field = client, field
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="paretoskip-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with contextlib.suppress(Exception):
                self._redis.hset(
                    self.name,
                    self._field,
                    json.dumps({**self.info, "expires": time.time() + self.ttl}),
                )

    def _release_redis(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._redis.hdel(self.name, self._field)
        finally:
            self._redis.close()
            self._redis = None


def _parse_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            h = json.loads(line)
            if isinstance(h, dict):
                out.append(h)
    return out


def _pid_alive(pid: int) -> bool:
    from .study import _alive

    return _alive(pid)


def _holder_alive(h: dict[str, Any], now: float | None = None) -> bool:
    """Whether a lease entry's process may still run (a dead process of this host: no)."""
    if now is not None and float(h.get("expires", now + 1)) < now:
        return False
    host, _, pid = str(h.get("holder", "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return int(pid) == os.getpid() or _pid_alive(int(pid))
    return True


def _live(holders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of processes that may still run (shared holders' lines stay in the file
    until the next exclusive holder empties it)."""
    return [h for h in holders if _holder_alive(h)]


def _parse_tag(tag: str) -> dict[str, Any]:
    """A PostgreSQL ``application_name`` written by :class:`StudyLease`, decoded."""
    parts = tag.split(" ", 3)
    if len(parts) < 3 or parts[0] != "paretoskip":
        return {}
    mode = {"s": "shared", "e": "exclusive"}.get(parts[1], parts[1])
    return {"holder": parts[2], "mode": mode, "what": parts[3] if len(parts) > 3 else ""}


def _describe_holder(h: dict[str, Any]) -> str:
    text = str(h.get("holder", "unknown"))
    details = [str(h[k]) for k in ("what",) if h.get(k)]
    since = str(h.get("since", ""))
    if since:
        details.append(f"since {since.replace('T', ' ')[:19]}")
    return f"{text} ({', '.join(details)})" if details else text


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
