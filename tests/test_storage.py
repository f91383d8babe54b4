"""A storage string is parsed once, into everything that goes with it; reading it creates
nothing; SQLite files get the same connection settings in the study and the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from paretoskip.cache import EvalCache
from paretoskip.errors import ConfigError
from paretoskip.storage import StorageLocation
from paretoskip.study import StudyDB

META = {
    "schema_version": 1,
    "space": {"units": ["a", "b"], "locked": [], "groups": []},
    "objectives": [
        {"name": "accuracy", "direction": "maximize", "unit": "fraction"},
        {"name": "flops", "direction": "minimize", "unit": "FLOPs"},
    ],
    "constraints": [],
}


@pytest.mark.parametrize(
    "text, kind, url, cache_url, lock_kind, side_dir",
    [
        (None, "sqlite", "sqlite:///studies/s.db", "sqlite:///studies/s.db", "file", "studies"),
        ("x/s.db", "sqlite", "sqlite:///x/s.db", "sqlite:///x/s.db", "file", "x"),
        ("sqlite:////abs/s.db", "sqlite", "sqlite:////abs/s.db", "sqlite:////abs/s.db", "file", "/abs"),
        ("runs/j.log", "journal", "runs/j.log", "sqlite:///runs/j.cache.db", "file", "runs"),
        (":memory:", "memory", ":memory:", None, "thread", "studies"),
        ("sqlite://", "sqlite-memory", "sqlite://", "sqlite://", "thread", "studies"),
        ("sqlite:///:memory:", "sqlite-memory", "sqlite:///:memory:", "sqlite:///:memory:", "thread", "studies"),
        ("redis://h:6379/0", "redis", "redis://h:6379/0", None, "redis", "studies"),
        ("postgresql+psycopg://u@h/db", "postgresql", "postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db", "postgresql", "studies"),
        ("mysql+pymysql://u@h/db", "mysql", "mysql+pymysql://u@h/db", "mysql+pymysql://u@h/db", "mysql", "studies"),
    ],
)  # fmt: skip
def test_parse(text, kind, url, cache_url, lock_kind, side_dir):
    loc = StorageLocation.parse(text, "s")
    assert (loc.kind, loc.url, loc.cache_url, loc.lock_kind) == (kind, url, cache_url, lock_kind)
    assert loc.side_dir == Path(side_dir)
    assert loc.persistent == (kind not in ("memory", "sqlite-memory"))


def test_side_files_keep_their_old_names():
    sqlite = StorageLocation.parse("studies/d.db", "d")
    assert sqlite.side_file("d.pymoo-nsga2.pkl", "d") == Path("studies/d.db.d.pymoo-nsga2.pkl")
    assert sqlite.lock_path == Path("studies/d.db.paretoskip.lock")
    server = StorageLocation.parse("postgresql+psycopg://u@h/db", "d")
    assert server.side_file("d.pymoo-nsga2.pkl", "d") == Path("studies/d.d.pymoo-nsga2.pkl")
    assert server.lock_path is None
    assert StorageLocation.parse(":memory:").side_file("x", "d") is None


def test_redacted_hides_the_password_only():
    loc = StorageLocation.parse("postgresql+psycopg://me:s3cret@db.example:5432/x")
    assert loc.redacted == "postgresql+psycopg://me:***@db.example:5432/x"
    assert StorageLocation.parse("postgresql+psycopg://me@db/x").redacted.endswith("me@db/x")


def test_bad_storage_is_refused():
    with pytest.raises(ConfigError, match="empty"):
        StorageLocation.parse("  ")
    with pytest.raises(ConfigError, match="no study name"):
        StorageLocation.parse(None)
    with pytest.raises(ConfigError, match="not an SQL database"):
        StorageLocation.parse("redis://h/0").create_engine()


def test_reading_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = StorageLocation.parse("deep/er/s.db", "s")
    for attr in ("kind", "url", "cache_url", "side_dir", "lock_path", "redacted", "persistent"):
        getattr(loc, attr)
    assert not loc.exists() and not (tmp_path / "deep").exists()
    with pytest.raises(ConfigError, match="no study database"):
        StudyDB.load("deep/er/s.db", "s")
    assert not (tmp_path / "deep").exists()
    loc.prepare()  # a writer creates the folder, and only that
    assert (tmp_path / "deep/er").is_dir() and not (tmp_path / "deep/er/s.db").exists()


def test_study_and_cache_share_the_sqlite_settings(tmp_path):
    path = tmp_path / "sub" / "s.db"
    db = StudyDB.open(str(path), "s", meta=META)
    cache = EvalCache(db.location.cache_url)
    assert cache.url == db.url == f"sqlite:///{path}"
    for engine in (db.storage.engine, cache.engine):
        with engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(sa.text("PRAGMA busy_timeout")).scalar() == 60000
            assert conn.execute(sa.text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    again = StudyDB.load(str(path))
    assert again.name == "s" and again.location == db.location
