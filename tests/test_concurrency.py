"""Several processes on one study: the study lease, and two plain searches that share the
budget (SQLite and PostgreSQL) without computing a mask twice."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import make_tiny_model

import paretoskip
from paretoskip.coordination import StudyBusyError, StudyLease
from paretoskip.data import load_dataset
from paretoskip.study import StudyDB

SEARCH_SCRIPT = textwrap.dedent(
    """
    import json, sys, paretoskip
    from paretoskip.checkpoint import load_checkpoint
    from paretoskip.data import load_dataset
    ckpt, storage, engine, seed, budget = sys.argv[1:6]
    model, _ = load_checkpoint(ckpt)
    ev = paretoskip.Evaluator(model, load_dataset("digits", seed=0), cache=storage)
    front = paretoskip.search(ev, engine=engine, seed=int(seed), budget=int(budget),
                              storage=storage, study_name="c", progress=False,
                              engine_options={"pop_size": 8} if engine.startswith("pymoo") else None)
    print("SUMMARY", json.dumps(front.data["study"]["run"]), "MISSES", ev.misses, flush=True)
    """
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from paretoskip.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(make_tiny_model(), path)
    return path


def _start(tmp_path: Path, checkpoint: Path, storage: str, engine: str, seed: int, budget: int):
    script = tmp_path / "search.py"
    script.write_text(SEARCH_SCRIPT)
    return subprocess.Popen(
        [sys.executable, str(script), str(checkpoint), storage, engine, str(seed), str(budget)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_plain_searches_share_the_budget(kind, checkpoint, tmp_path, request):
    """Two `search` processes with an Optuna sampler (other seeds) on one study: together
    they stop at the budget, and no mask is measured twice."""
    storage = (
        str(tmp_path / "c.db") if kind == "sqlite" else request.getfixturevalue("postgres_url")
    )
    budget = 30
    procs = [_start(tmp_path, checkpoint, storage, "tpe", seed, budget) for seed in (1, 2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    db = StudyDB.load(storage, "c")
    records = db.records()
    masks = [r.mask for r in records]
    measured = sum(int(out.split("MISSES")[1].split()[0]) for out, _ in outs)
    print(
        f"{kind}: distinct masks {len(set(masks))}, trials {len(records)}, "
        f"measured {measured} (re-computations {measured - len(set(masks))})"
    )
    assert len(set(masks)) == budget  # exactly the budget, between them
    assert measured == budget  # each mask measured once, by one of the two
    assert len(records) <= 3 * budget
    assert not db.trials(states=(paretoskip.study.TrialState.RUNNING,))


def test_an_exclusive_search_is_refused_beside_a_live_one(tmp_path):
    """A pymoo search keeps its state in one process: beside any other search of the study
    it is refused, naming the holder, and writes nothing (nor does a search beside it)."""
    storage = tmp_path / "x.db"
    ev = paretoskip.Evaluator(make_tiny_model(), load_dataset("digits", seed=0), cache=str(storage))
    paretoskip.search(ev, engine="random", budget=4, storage=str(storage), study_name="x",
                      progress=False)  # fmt: skip
    before = storage.read_bytes()
    holder = StudyLease(str(storage), "x", mode="shared", what="worker, engine tpe").acquire()
    try:
        with pytest.raises(StudyBusyError, match=r"worker, engine tpe.*Nothing was written"):
            paretoskip.search(ev, budget=8, storage=str(storage), study_name="x", progress=False)
    finally:
        holder.release()
    holder = StudyLease(str(storage), "x", mode="exclusive", what="search, engine pymoo-nsga2")
    with holder, pytest.raises(StudyBusyError, match=r"search, engine pymoo-nsga2"):
        paretoskip.search(ev, engine="tpe", budget=8, storage=str(storage), study_name="x",
                          progress=False)  # fmt: skip
    assert storage.read_bytes() == before
    # once the holder is gone, it runs
    front = paretoskip.search(ev, budget=8, storage=str(storage), study_name="x", progress=False,
                              engine="pymoo-nsga2", engine_options={"pop_size": 8})  # fmt: skip
    assert front.data["study"]["distinct_masks"] == 8


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_lease_modes(kind, tmp_path, request):
    storage = (
        str(tmp_path / "l.db") if kind == "sqlite" else request.getfixturevalue("postgres_url")
    )
    a = StudyLease(storage, "s", mode="shared", what="worker, engine tpe").acquire()
    b = StudyLease(storage, "s", mode="shared", what="search, engine random").acquire()
    with pytest.raises(StudyBusyError) as info:
        StudyLease(storage, "s", mode="exclusive", what="search, engine pymoo-nsga2").acquire()
    msg = str(info.value)
    assert "worker, engine tpe" in msg and "\n" not in msg
    a.release()
    b.release()
    with StudyLease(storage, "s", mode="exclusive", what="search, engine pymoo-nsga2"):
        with pytest.raises(StudyBusyError, match="pymoo-nsga2"):
            StudyLease(storage, "s", mode="shared", what="worker").acquire()
        # another study of the same storage is free
        StudyLease(storage, "other", mode="exclusive", what="search").acquire().release()
    StudyLease(storage, "s", mode="exclusive", what="search").acquire().release()
