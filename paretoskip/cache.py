"""A persistent, shared cache of evaluations in an SQL table.

The table lives in the same kind of database as the study (an SQLite file by default, or
PostgreSQL/MySQL by URL) and is keyed by the model fingerprint, the dataset/split
fingerprint, the measurement-settings fingerprint and the mask bitstring.  Several
processes may read and write it at once: a row is inserted in one transaction after the
whole evaluation succeeded, and a concurrent insert of the same key is ignored.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .storage import StorageLocation

__all__ = ["EvalCache", "CacheKey"]

_META = sa.MetaData()
_TABLE = sa.Table(
    "paretoskip_eval_cache",
    _META,
    sa.Column("model_fp", sa.String(64), primary_key=True),
    sa.Column("data_fp", sa.String(64), primary_key=True),
    sa.Column("settings_fp", sa.String(64), primary_key=True),
    sa.Column("mask", sa.String(1024), primary_key=True),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class CacheKey:
    model_fp: str
    data_fp: str
    settings_fp: str


def _dumps(metrics: dict[str, Any]) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return json.dumps(clean(metrics), sort_keys=True)


class EvalCache:
    """Evaluations stored by (fingerprints, mask).

    Example:
        >>> from paretoskip.cache import EvalCache, CacheKey
        >>> cache = EvalCache("sqlite://")          # in memory
        >>> key = CacheKey("m", "d", "s")
        >>> cache.put(key, "0101", {"accuracy": {"value": 0.9}}, seconds=1.0)
        True
        >>> cache.get_many(key, ["0101", "1111"])
        {'0101': {'accuracy': {'value': 0.9}}}
    """

    def __init__(self, url: str | os.PathLike | StorageLocation):
        location = StorageLocation.parse(url, journal_files=False)
        self.url = location.url
        self.engine = location.prepare().create_engine()
        for attempt in range(5):
            try:
                _META.create_all(self.engine, checkfirst=True)
                break
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, IntegrityError):
                # another process created the table at the same moment
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def get_many(self, key: CacheKey, masks: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Cached metrics of those ``masks`` that are present."""
        masks = list(dict.fromkeys(masks))
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(masks), 500):
                part = masks[start : start + 500]
                rows = conn.execute(
                    sa.select(_TABLE.c.mask, _TABLE.c.metrics).where(
                        _TABLE.c.model_fp == key.model_fp,
                        _TABLE.c.data_fp == key.data_fp,
                        _TABLE.c.settings_fp == key.settings_fp,
                        _TABLE.c.mask.in_(part),
                    )
                )
                out.update({m: json.loads(js) for m, js in rows})
        return out

    def put(self, key: CacheKey, mask: str, metrics: dict[str, Any], seconds: float) -> bool:
        """Store one evaluation; False when another process stored it first."""
        row = {
            "model_fp": key.model_fp,
            "data_fp": key.data_fp,
            "settings_fp": key.settings_fp,
            "mask": mask,
            "metrics": _dumps(metrics),
            "seconds": float(seconds),
            "created": time.time(),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(_TABLE.insert().values(**row))
            return True
        except IntegrityError:
            return False

    def count(self, key: CacheKey | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(_TABLE)
        if key is not None:
            query = query.where(
                _TABLE.c.model_fp == key.model_fp,
                _TABLE.c.data_fp == key.data_fp,
                _TABLE.c.settings_fp == key.settings_fp,
            )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def close(self) -> None:
        self.engine.dispose()
