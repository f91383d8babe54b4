"""Fault injection: what an attacker or a careless user can do to a study, and what must
hold then (nothing executed, nothing lost, one clear error, nothing written on a refusal)."""

from __future__ import annotations

import os
import pickle
import sqlite3
from pathlib import Path

import pytest

import paretoskip
from paretoskip.data import load_dataset
from paretoskip.search import make_engine, open_study, run_engine

from conftest import make_tiny_model


@pytest.fixture(scope="module")
def evaluator():
    return paretoskip.Evaluator(make_tiny_model(), load_dataset("digits", seed=0))


class _Payload:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _search(evaluator, storage, name, budget, engine="pymoo-nsga2", **options):
    """What `paretoskip search` does up to the front: open the study, run the engine."""
    if engine.startswith("pymoo"):
        options.setdefault("pop_size", 8)
    eng = make_engine(engine, 0, **options)
    db = open_study(evaluator, storage=str(storage), study_name=name, budget=budget)
    return db, run_engine(eng, evaluator, db, budget=budget, progress=False)


def _trials(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT trial_id, state FROM trials ORDER BY trial_id").fetchall()


def test_crafted_pickle_beside_the_study_is_never_loaded(evaluator, tmp_path, caplog):
    storage = tmp_path / "digits-resnet20.db"
    pwned = tmp_path / "PWNED"
    # the payload in every place an older paretoskip read pymoo state from
    for name in ("pymoo-nsga2.pkl", "pymoo-nsga2.pkl.tmp"):
        (tmp_path / f"digits-resnet20.db.digits-resnet20.{name}").write_bytes(
            pickle.dumps(_Payload(pwned))
        )
    for budget in (10, 18):  # a fresh study, then a resumed one
        _search(evaluator, storage, "digits-resnet20", budget)
        assert not pwned.exists(), "a pickle beside the study was executed"
    assert "is never read" in caplog.text
    # and nothing new was pickled
    assert sorted(p.name for p in tmp_path.glob("*.pkl*")) == [
        "digits-resnet20.db.digits-resnet20.pymoo-nsga2.pkl",
        "digits-resnet20.db.digits-resnet20.pymoo-nsga2.pkl.tmp",
    ]


def test_pymoo_state_is_rebuilt_from_the_study(evaluator, tmp_path):
    """A resumed pymoo search tells the recorded generations to a fresh algorithm: it goes
    on where the study is, proposes no mask the study holds, and reaches the budget."""
    storage = str(tmp_path / "s.db")
    runs = []
    for budget in (13, 30):
        db, ctx = _search(evaluator, storage, "s", budget)
        runs.append(ctx.summary())
        gens = sorted({r.generation for r in db.records() if r.generation is not None})
    assert runs[0]["distinct_masks"] == 13 and runs[1]["distinct_masks"] == 30
    assert runs[1]["cache_hits"] == 0  # the rebuilt archive refuses every mask done before
    assert runs[1]["new_evaluations"] == 17
    # the second run's generations continue the first's numbering
    assert len(gens) >= 4 and gens == sorted(set(gens))
    first = {r.generation for r in db.records()[:13] if r.generation is not None}
    assert min(g for g in gens if g not in first) > max(first)
