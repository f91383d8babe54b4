"""Where a study lives: a storage string parsed once.

A study storage is given as a path (``studies/x.db``: an SQLite file), ``:memory:`` (kept
in this process only), an SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``,
``mysql+pymysql://…``), ``redis://…`` (Optuna's journal on Redis) or a ``.log`` file
(Optuna's journal file).  :meth:`StorageLocation.parse` reads it once; everything else
asks the :class:`StorageLocation`: the URL Optuna opens, the evaluation cache's URL, the
side files (study lock, pymoo checkpoints, the front file's folder), the kind of lock the
workers of a study share, and the form that is safe to print (password hidden).

Reading a :class:`StorageLocation` creates nothing; a writer calls :meth:`~StorageLocation.
prepare` (which checks that the database driver is installed and the folder of a file
database can be written, and creates that folder) before it opens the storage.  The
SQLite connection settings (WAL journal, ``synchronous=NORMAL``, a 60 s busy timeout) are
set here, in :func:`sqlite_pragmas`, for the study and the cache alike.

Every failure of a storage that a user can cause (an unknown URL scheme, a missing driver,
a server that does not answer, a database that does not exist, a folder that cannot be
written, a full disk, a file that is not a database) becomes a :class:`StorageError` with
one line naming the storage and what to do (:func:`storage_errors`,
:func:`describe_storage_error`); passwords never appear in it.

Example:
    >>> from paretoskip.storage import StorageLocation
    >>> loc = StorageLocation.parse(None, "digits-resnet20")
    >>> loc.kind, loc.url, loc.cache_url, loc.lock_kind
    ('sqlite', 'sqlite:///studies/digits-resnet20.db', 'sqlite:///studies/digits-resnet20.db', 'file')
    >>> str(loc.lock_path), str(loc.side_dir)
    ('studies/digits-resnet20.db.paretoskip.lock', 'studies')
    >>> StorageLocation.parse("postgresql+psycopg://me:secret@db/x").redacted
    'postgresql+psycopg://me:***@db/x'
    >>> StorageLocation.parse("runs/a.log").cache_url
    'sqlite:///runs/a.cache.db'
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, ParetoSkipError

__all__ = [
    "StorageLocation",
    "StorageError",
    "sqlite_pragmas",
    "storage_errors",
    "describe_storage_error",
    "check_writable",
    "KINDS",
    "DRIVERS",
]

#: Kinds of storage, and what they are.
KINDS: dict[str, str] = {
    "memory": "Optuna's in-memory storage (nothing kept)",
    "sqlite-memory": "an in-memory SQLite database (nothing kept)",
    "sqlite": "an SQLite file",
    "journal": "Optuna's journal in a file",
    "redis": "Optuna's journal on Redis",
    "postgresql": "a PostgreSQL database",
    "mysql": "a MySQL database",
    "rdb": "another SQLAlchemy database",
}
_IN_MEMORY_SQLITE = ("sqlite://", "sqlite:///:memory:")

#: Python module of a database driver → what installs it.
DRIVERS: dict[str, str] = {
    "psycopg": "pip install 'paretoskip[postgres]' (psycopg 3)",
    "psycopg2": "pip install psycopg2-binary, or use postgresql+psycopg:// with "
    "pip install 'paretoskip[postgres]'",
    "pymysql": "pip install 'paretoskip[mysql]' (PyMySQL)",
    "MySQLdb": "pip install mysqlclient, or use mysql+pymysql:// with pip install 'paretoskip[mysql]'",
    "redis": "pip install redis",
}
_SCHEMES = (
    "a path (an SQLite file), ':memory:', sqlite:///PATH, postgresql+psycopg://USER@HOST/DB, "
    "mysql+pymysql://USER@HOST/DB, redis://HOST:PORT/N or a .log journal file"
)


class StorageError(ParetoSkipError, RuntimeError):
    """A study storage cannot be opened, reached or written (see the module docstring)."""


def sqlite_pragmas(dbapi_conn: Any, _record: Any = None) -> None:
    """Connection settings of every SQLite file paretoskip opens (an SQLAlchemy ``connect``
    listener): WAL lets readers (a dashboard, front extraction) work beside a writer,
    ``synchronous=NORMAL`` makes a commit cheap while staying safe against a killed
    process, and a busy timeout lets several processes share the file."""
    dbapi_conn.execute("PRAGMA journal_mode=WAL")
    dbapi_conn.execute("PRAGMA synchronous=NORMAL")
    dbapi_conn.execute("PRAGMA busy_timeout=60000")


@dataclass(frozen=True)
class StorageLocation:
    """A parsed study storage (see the module docstring).

    Attributes:
        text: the storage as given (or the default path).
        kind: one of :data:`KINDS`.
        url: what Optuna opens: ``:memory:``, an SQLAlchemy URL, ``redis://…`` or the
            journal file's path.
        file: the SQLite or journal file, None for every other kind.
    """

    text: str
    kind: str
    url: str
    file: Path | None = None

    # -- parsing -------------------------------------------------------------------------
    @classmethod
    def parse(
        cls,
        storage: str | os.PathLike | StorageLocation | None,
        study_name: str | None = None,
        *,
        journal_files: bool = True,
    ) -> StorageLocation:
        """Parse a storage string; None means ``studies/<study_name>.db``.

        With ``journal_files=False`` a path ending in ``.log`` is an SQLite file too (the
        evaluation cache is always an SQL table).
        """
        if isinstance(storage, StorageLocation):
            return storage
        if storage is None:
            if not study_name:
                raise ConfigError("no storage given and no study name to derive one from")
            storage = Path("studies") / f"{study_name}.db"
        text = os.fspath(storage)
        if not text.strip():
            raise ConfigError("the storage is empty; give a path or a URL")
        if text == ":memory:":
            return cls(text, "memory", text)
        if text in _IN_MEMORY_SQLITE:
            return cls(text, "sqlite-memory", text)
        if "://" in text:
            scheme = text.split("://", 1)[0].lower()
            if scheme.startswith("sqlite"):
                from sqlalchemy.engine import make_url

                database = make_url(text).database
                if not database or database == ":memory:":
                    return cls(text, "sqlite-memory", text)
                return cls(text, "sqlite", text, Path(database))
            if scheme in ("redis", "rediss"):
                return cls(text, "redis", text)
            if scheme.startswith("postgres"):
                return cls(text, "postgresql", text)
            if scheme.startswith("mysql"):
                return cls(text, "mysql", text)
            _check_dialect(text, scheme)
            return cls(text, "rdb", text)
        if journal_files and text.endswith(".log"):
            return cls(text, "journal", text, Path(text))
        return cls(text, "sqlite", f"sqlite:///{text}", Path(text))

    # -- what it is ----------------------------------------------------------------------
    @property
    def persistent(self) -> bool:
        """False for the in-memory kinds: nothing outlives the process."""
        return self.kind not in ("memory", "sqlite-memory")

    @property
    def is_sql(self) -> bool:
        """An SQLAlchemy database (SQLite, PostgreSQL, MySQL, ...)."""
        return self.kind in ("sqlite", "sqlite-memory", "postgresql", "mysql", "rdb")

    @property
    def redacted(self) -> str:
        """The URL with its password hidden, for files and logs."""
        url = self.url
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            cred, host = rest.rsplit("@", 1)
            if ":" in cred:
                cred = cred.split(":", 1)[0] + ":***"
            return f"{scheme}://{cred}@{host}"
        return url

    def exists(self) -> bool:
        """For a file storage, whether the file is there; True for a server (not checked);
        False for an in-memory storage."""
        if self.file is not None:
            return self.file.is_file()
        return self.persistent

    # -- what goes with it ---------------------------------------------------------------
    @property
    def cache_url(self) -> str | None:
        """Where the evaluation cache lives: the same database for an SQL storage, an SQLite
        file beside a journal file, none for Redis and Optuna's in-memory storage."""
        if self.is_sql:
            return self.url
        if self.kind == "journal":
            return f"sqlite:///{os.path.splitext(self.url)[0]}.cache.db"
        return None

    @property
    def cache_is_shared(self) -> bool:
        """Whether other processes see the evaluation cache (not an in-memory one)."""
        return self.cache_url is not None and self.kind != "sqlite-memory"

    @property
    def side_dir(self) -> Path:
        """The folder of the study's other files (front file): the database file's folder,
        or ``studies/`` for a server or in-memory storage."""
        return self.file.parent if self.file is not None else Path("studies")

    def side_file(self, suffix: str, study_name: str) -> Path | None:
        """A file that belongs to the study: ``<database file>.<suffix>`` beside a file
        database, ``studies/<study_name>.<suffix>`` for a server; None in memory."""
        if not self.persistent:
            return None
        if self.file is not None:
            return self.file.with_name(f"{self.file.name}.{suffix}")
        return Path("studies") / f"{study_name}.{suffix}"

    @property
    def lock_kind(self) -> str:
        """The study lock the workers share: ``postgresql`` (advisory lock), ``mysql``
        (``GET_LOCK``), ``redis``, ``file`` (``flock`` beside the file) or ``thread`` (this
        process only)."""
        if self.kind in ("postgresql", "mysql", "redis"):
            return self.kind
        if self.file is not None:
            return "file"
        return "thread"

    @property
    def lock_path(self) -> Path | None:
        """The ``flock`` file of a file storage."""
        return self.file.with_name(f"{self.file.name}.paretoskip.lock") if self.file else None

    # -- opening -------------------------------------------------------------------------
    def prepare(self) -> StorageLocation:
        """Check that the storage can be opened for writing, and create the folder of a file
        database (a writer calls this before opening anything).

        Raises :class:`StorageError` when the database driver is missing, or when the file
        database (or the folder it goes in) cannot be written; nothing is created then.
        """
        self.check_driver()
        if self.file is not None:
            check_writable(self.file.parent, what=f"the study database {self.file}")
            if self.file.exists():
                try:  # opening for update writes nothing, and fails on a read-only file
                    with open(self.file, "r+b"):
                        pass
                except OSError as exc:
                    raise StorageError(
                        f"the study database {self.file} cannot be written ({_strerror(exc)}); "
                        "make it writable, or give another --storage"
                    ) from None
            with storage_errors(self):
                self.file.parent.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def driver(self) -> str | None:
        """The Python module this storage needs (``psycopg``, ``pymysql``, ``redis``, ...)."""
        if self.kind == "redis":
            return "redis"
        if self.kind in ("postgresql", "mysql", "rdb"):
            from sqlalchemy.engine import make_url

            dialect = make_url(self.url).get_dialect()
            return getattr(dialect, "driver", None)
        return None

    def check_driver(self) -> None:
        """Raise :class:`StorageError` naming what to install when the driver is missing."""
        if self.kind in ("postgresql", "mysql", "rdb"):
            from sqlalchemy.engine import make_url

            try:
                make_url(self.url).get_dialect().import_dbapi()
            except ImportError as exc:
                raise StorageError(_missing_driver(self, exc)) from None
        elif self.kind == "redis":
            try:
                import redis  # noqa: F401
            except ImportError as exc:
                raise StorageError(_missing_driver(self, exc)) from None

    def create_engine(self, **kwargs: Any) -> Any:
        """An SQLAlchemy engine on this (SQL) storage, with the SQLite settings on a file."""
        import sqlalchemy as sa

        if not self.is_sql:
            raise ConfigError(
                f"{self.redacted} is {KINDS[self.kind]}, not an SQL database; the evaluation "
                "cache and SQL locks need SQLite, PostgreSQL or MySQL"
            )
        if self.kind == "sqlite-memory":
            kwargs.setdefault("poolclass", sa.pool.StaticPool)
            kwargs.setdefault("connect_args", {"timeout": 60, "check_same_thread": False})
        elif self.kind == "sqlite":
            kwargs.setdefault("connect_args", {"timeout": 60})
        else:
            kwargs.setdefault("pool_pre_ping", True)
        with storage_errors(self):
            engine = sa.create_engine(self.url, **kwargs)
            if self.kind == "sqlite":
                sa.event.listen(engine, "connect", sqlite_pragmas)
            with engine.connect():  # fail here, with a clear message, not at first use
                pass
        return engine

    def open_optuna(self) -> Any:
        """The Optuna storage of this location (:class:`StorageError` when it cannot be
        opened or reached)."""
        with storage_errors(self):
            return self._open_optuna()

    def _open_optuna(self) -> Any:
        import optuna

        if self.kind == "memory":
            return optuna.storages.InMemoryStorage()
        if self.kind == "redis":
            import redis
            from optuna.storages.journal import JournalRedisBackend

            redis.Redis.from_url(self.url).ping()  # fail now when the server does not answer
            return optuna.storages.JournalStorage(JournalRedisBackend(self.url))
        if self.kind == "journal":
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(self.url))
        if self.kind not in ("sqlite", "sqlite-memory"):
            return optuna.storages.RDBStorage(self.url, engine_kwargs={"pool_pre_ping": True})
        storage = optuna.storages.RDBStorage(
            self.url, engine_kwargs={"connect_args": {"timeout": 60}}
        )
        if self.kind == "sqlite":
            import sqlalchemy as sa

            sa.event.listen(storage.engine, "connect", sqlite_pragmas)
            storage.engine.dispose()  # connections made before the listener go
        return storage


# --------------------------------------------------------------------------- errors


def _check_dialect(text: str, scheme: str) -> None:
    """Refuse a URL whose scheme SQLAlchemy does not know (``foo://``)."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        make_url(text).get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise ConfigError(
            f"unknown storage scheme {scheme + '://'!r} in {_redact(text)!r}; accepted: {_SCHEMES}"
        ) from None
    except sqlalchemy.exc.ArgumentError as exc:
        raise ConfigError(
            f"malformed storage URL {_redact(text)!r} ({exc}); accepted: {_SCHEMES}"
        ) from None


def _redact(url: str) -> str:
    return StorageLocation(url, "rdb", url).redacted


def _strerror(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _missing_driver(location: StorageLocation, exc: ImportError) -> str:
    module = (exc.name or str(exc)).split(".")[0]
    how = DRIVERS.get(module, f"pip install {module}")
    return (
        f"the storage {location.redacted} needs the Python module {module!r}, which is not "
        f"installed: {how}"
    )


def check_writable(folder: str | os.PathLike, *, what: str | None = None) -> None:
    """Raise :class:`StorageError` unless files can be created in ``folder`` (or in the
    nearest existing folder above it, where the missing ones would be created).

    A temporary file is created and removed at once: this finds read-only file systems and
    missing permissions (which ``os.access`` misses for root) before any work is done.

    Example:
        >>> import tempfile
        >>> check_writable(tempfile.gettempdir())
    """
    import errno
    import tempfile

    folder = Path(folder)
    what = what or f"files in {folder}"
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise StorageError(f"cannot write {what}: {probe} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".paretoskip-write-check-", dir=probe)
    except OSError as exc:
        hint = {
            errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is exceeded",
        }.get(exc.errno, _strerror(exc))
        raise StorageError(
            f"cannot write {what}: {hint} in {probe}; make it writable or choose another place"
        ) from None
    os.close(fd)
    os.unlink(name)


_FULL = ("database or disk is full", "no space left on device", "disk quota exceeded")
_READ_ONLY = ("attempt to write a readonly database", "read-only file system", "readonly database")


def describe_storage_error(
    exc: BaseException, location: StorageLocation | None = None
) -> str | None:
    """One line for a storage failure a user can cause, or None when ``exc`` is not one.

    Follows the exception's causes (SQLAlchemy, Optuna's ``StorageInternalError``, the
    driver's own error, the OS error underneath).
    """
    import errno

    if location is None:
        where = "the study database"
    else:
        where = str(location.file) if location.file is not None else location.redacted
    chain: list[BaseException] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(x).lower() for x in chain)
    for x in chain:
        if isinstance(x, ParetoSkipError):
            return None
        if isinstance(x, ImportError) and location is not None:
            module = (x.name or "").split(".")[0]
            if module in DRIVERS:
                return _missing_driver(location, x)
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"cannot write {x.filename or where}: the disk is full ({_strerror(x)}); free some space and run again (finished evaluations are kept)"
        if isinstance(x, OSError) and x.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            name = f" {x.filename}" if x.filename else ""
            return f"cannot write{name or ' ' + where}: {_strerror(x)}; make it writable or choose another place"
    if any(k in text for k in _FULL):
        return (
            f"cannot write {where}: the disk is full (database or disk is full); free some "
            "space and run again (finished evaluations are kept)"
        )
    if any(k in text for k in _READ_ONLY):
        return f"cannot write {where}: it is read-only; make it writable or give another --storage"
    if "file is not a database" in text:
        return f"{where} is not an SQLite database (or it is damaged); give another --storage"
    if "unable to open database file" in text:
        return (
            f"cannot open {where}: its folder does not exist or cannot be written; give a "
            "writable path"
        )
    m = _match(text, r'database "([^"]+)" does not exist') or _match(
        text, r"unknown database '([^']+)'"
    )
    if m:
        return (
            f"the database {m!r} does not exist on the server of {where}; create it (e.g. "
            f"`createdb {m}`) or fix the URL"
        )
    m = _match(text, r'role "([^"]+)" does not exist') or _match(
        text, r"password authentication failed"
    )
    if m or "access denied for user" in text:
        return (
            f"the server of {where} refused the user or password; check the URL's user and password"
        )
    if any(
        k in text
        for k in (
            "connection refused",
            "could not connect",
            "connection failed",
            "timed out",
            "timeout expired",
            "name or service not known",
            "could not translate host name",
            "can't connect",
            "no route to host",
            "error 111 connecting",
        )
    ):
        return (
            f"cannot reach the database server of {where} ({_reason(text)}); is it running, "
            "and are the host and port right?"
        )
    if (
        any(type(x).__name__ == "JSONDecodeError" for x in chain)
        and location is not None
        and location.kind == "journal"
    ):
        return f"{where} is not an Optuna journal file (or it is damaged); give another --storage"
    return None


def _match(text: str, pattern: str) -> str | None:
    import re

    m = re.search(pattern, text)
    if m is None:
        return None
    return m.group(1) if m.groups() else m.group(0)


def _reason(text: str) -> str:
    for k in (
        "connection refused",
        "timed out",
        "timeout expired",
        "name or service not known",
        "could not translate host name",
        "no route to host",
    ):
        if k in text:
            return k
    return "no answer"


@contextmanager
def storage_errors(location: StorageLocation | None) -> Iterator[None]:
    """Turn the storage failures of the block that a user can cause into one
    :class:`StorageError` each (see :func:`describe_storage_error`); others pass unchanged."""
    try:
        yield
    except ParetoSkipError:
        raise
    except Exception as exc:
        message = describe_storage_error(exc, location)
        if message is None:
            raise
        raise StorageError(message) from exc
