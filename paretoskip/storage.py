"""Where a study lives: a storage string parsed once.

A study storage is given as a path (``studies/x.db``: an SQLite file), ``:memory:`` (kept
in this process only), an SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``,
``mysql+pymysql://…``), ``redis://…`` (Optuna's journal on Redis) or a ``.log`` file
(Optuna's journal file).  :meth:`StorageLocation.parse` reads it once; everything else
asks the :class:`StorageLocation`: the URL Optuna opens, the evaluation cache's URL, the
side files (study lock, pymoo checkpoints, the front file's folder), the kind of lock the
workers of a study share, and the form that is safe to print (password hidden).

Reading a :class:`StorageLocation` creates nothing; a writer calls :meth:`~StorageLocation.
prepare` (which creates the folder of a file database) before it opens the storage.  The
SQLite connection settings (WAL journal, ``synchronous=NORMAL``, a 60 s busy timeout) are
set here, in :func:`sqlite_pragmas`, for the study and the cache alike.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["StorageLocation", "sqlite_pragmas", "KINDS"]

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
        """Create the folder of a file database (a writer calls this before opening)."""
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
        return self

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
        engine = sa.create_engine(self.url, **kwargs)
        if self.kind == "sqlite":
            sa.event.listen(engine, "connect", sqlite_pragmas)
        return engine

    def open_optuna(self) -> Any:
        """The Optuna storage of this location."""
        import optuna

        if self.kind == "memory":
            return optuna.storages.InMemoryStorage()
        if self.kind == "redis":
            from optuna.storages.journal import JournalRedisBackend

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
