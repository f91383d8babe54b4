"""Fault injection: what an attacker or a careless user can do to a study, and what must
hold then (nothing executed, nothing lost, one clear error, nothing written on a refusal)."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model

import paretoskip
from paretoskip.data import load_dataset
from paretoskip.search import make_engine, open_study, run_engine


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
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT trial_id, state FROM trials ORDER BY trial_id").fetchall()
    except sqlite3.Error:  # not created yet
        return []


def _done_masks(db: Path) -> set[str]:
    """Masks of the COMPLETE trials, read without opening the study (read-only)."""
    if not db.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute(
                "SELECT a.value_json FROM trial_user_attributes a JOIN trials t "
                "ON a.trial_id = t.trial_id WHERE a.key = 'mask' AND t.state = 'COMPLETE'"
            ).fetchall()
    except sqlite3.Error:
        return set()
    return {json.loads(v) for (v,) in rows}


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


# --------------------------------------------------------------------------- bad inputs

STUDY = """\
[study]
name = "bad"
[model]
name = "resnet20"
checkpoint = "{ckpt}"
[data]
name = "digits"
[search]
engine = "random"
budget = 6
objectives = {objectives}
"""


def _snapshot(folder: Path) -> dict[str, object]:
    """Every file under ``folder`` and its content: an SQLite database as its rows (its
    ``-wal``/``-shm`` companions change when it is only read), lock files aside (they hold
    no data)."""
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        name = str(p.relative_to(folder))
        if not p.is_file() or p.name.endswith((".lock", "-shm", "-wal")):
            continue
        try:
            with sqlite3.connect(f"file:{p}?mode=ro", uri=True) as conn:
                out[name] = list(conn.iterdump())
        except sqlite3.DatabaseError:
            out[name] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A study file with a saved checkpoint, and its study searched once."""
    from paretoskip.checkpoint import save_checkpoint
    from paretoskip.cli import main

    work = tmp_path_factory.mktemp("bad")
    save_checkpoint(make_tiny_model(), work / "ckpt")
    (work / "bad.toml").write_text(
        STUDY.format(ckpt=work / "ckpt", objectives='["accuracy", "flops"]')
    )
    (work / "other.toml").write_text(
        STUDY.format(ckpt=work / "ckpt", objectives='["accuracy", "params"]')
    )
    # with [model.train]: a checkpoint without its metadata must not be trained over
    (work / "train.toml").write_text(
        STUDY.format(ckpt=work / "ckpt", objectives='["accuracy", "flops"]')
        + "[model.train]\nepochs = 1\n"
    )
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert main(["search", "bad.toml", "-q"]) == 0
    finally:
        os.chdir(cwd)
    return work


BAD_INPUTS = {
    "unknown dialect": (["search", "bad.toml", "--storage", "foo://x"], "unknown storage scheme"),
    "server port closed": (
        ["search", "bad.toml", "--storage", "postgresql+psycopg://postgres@127.0.0.1:1/test"],
        "cannot reach the database server",
    ),
    "database missing": (
        [
            "search",
            "bad.toml",
            "--storage",
            "postgresql+psycopg://postgres@127.0.0.1:5432/nodb_h14",
        ],
        "does not exist",
    ),
    "driver missing": (
        ["search", "bad.toml", "--storage", "mysql+pymysql://u@127.0.0.1/db"],
        "paretoskip[mysql]",
    ),
    "not a database": (["search", "bad.toml", "--storage", "junk.db"], "not an SQLite database"),
    "other objectives": (["search", "other.toml"], "nothing was written"),
    "checkpoint json missing": (["run", "train.toml", "--no-plots"], "metadata"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_writes_nothing(case, study_dir, capsys, monkeypatch):
    from paretoskip.cli import main

    argv, expected = BAD_INPUTS[case]
    monkeypatch.chdir(study_dir)
    (study_dir / "junk.db").write_bytes(b"this is not a database" * 100)
    moved = None
    if case == "checkpoint json missing":
        moved = study_dir / "ckpt.json.away"
        (study_dir / "ckpt.json").rename(moved)
    before = _snapshot(study_dir)
    try:
        code = main(argv)
    finally:
        if moved is not None:
            moved.rename(study_dir / "ckpt.json")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("paretoskip: error:")]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and expected.lower() in lines[0].lower(), err[-3000:]
    assert "Traceback" not in err
    after = _snapshot(study_dir)
    if moved is not None:
        after.pop("ckpt.json", None)
        before.pop("ckpt.json.away", None)
    assert after == before, "a refused command changed files"


def test_refused_reopen_adds_no_cache_row(study_dir, monkeypatch):
    """The reference is evaluated before the study accepts the search; a refusal must not
    leave it in the evaluation cache (it used to)."""
    from paretoskip.cache import EvalCache
    from paretoskip.errors import StudyMismatchError

    model = make_tiny_model()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # other weights: a study that refuses them
    cache = EvalCache(str(study_dir / "studies/bad.db"))
    ev = paretoskip.Evaluator(model, load_dataset("digits", seed=0), cache=cache)
    rows = ev.cache.count()
    with pytest.raises(StudyMismatchError):
        open_study(ev, storage=str(study_dir / "studies/bad.db"), study_name="bad")
    assert ev.cache.count() == rows


def test_budget_beyond_the_space_is_clamped(caplog):
    from paretoskip.search import clamp_budget

    space = make_tiny_model_space()
    assert clamp_budget(100_000, space) == space.size
    assert f"searching all {space.size}" in caplog.text
    assert clamp_budget(5, space) == 5


def make_tiny_model_space():
    return paretoskip.SkipSpace.from_model(make_tiny_model())


def test_locked_units_are_enforced_on_every_mask_path(tmp_path):
    from paretoskip.errors import MaskError
    from paretoskip.front import Front
    from paretoskip.pipeline import resolve_member
    from paretoskip.runtime import AdaptiveModel

    model = make_tiny_model()
    space = paretoskip.SkipSpace.from_model(model, locked=["layer1.0"])
    ev = paretoskip.Evaluator(model, load_dataset("digits", seed=0), space=space)
    front = paretoskip.search(ev, engine="random", budget=6, storage=":memory:", progress=False)
    bad = "1" + "0" * (space.n_units - 1)  # skips layer1.0
    adaptive = AdaptiveModel(model, front.data)
    with pytest.raises(MaskError, match="locked unit 'layer1.0'"):
        adaptive.apply(bad)
    with pytest.raises(MaskError, match="locked unit 'layer1.0'"):
        resolve_member(front, mask=bad)
    crafted = json.loads(json.dumps(front.data))
    crafted["members"][0]["mask"] = bad
    crafted["members"][0]["skipped"] = ["layer1.0"]
    with pytest.raises(MaskError, match="locked unit 'layer1.0'"):
        AdaptiveModel(model, crafted)
    with pytest.raises(MaskError, match="locked unit 'layer1.0'"):
        resolve_member(Front(crafted), member=0)


# --------------------------------------------------------------------------- SIGKILL loop

KILL_SCRIPT = """
import sys, paretoskip
from paretoskip.checkpoint import load_checkpoint
from paretoskip.data import load_dataset
ckpt, storage, engine, budget = sys.argv[1:5]
model, _ = load_checkpoint(ckpt)
ev = paretoskip.Evaluator(model, load_dataset("digits", seed=0), cache=storage)
paretoskip.search(ev, engine=engine, budget=int(budget), storage=storage, study_name="k",
                  engine_options={"pop_size": 8} if engine.startswith("pymoo") else None,
                  progress=False)
print("MISSES", ev.misses, flush=True)
"""


@pytest.mark.parametrize("engine", ["pymoo-nsga2", "tpe"])
def test_random_sigkills_lose_nothing_and_measure_nothing_twice(engine, tmp_path):
    """A search SIGKILLed at seeded random points, and started again each time: no finished
    evaluation is lost, none is measured again, and the study ends at the budget."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from optuna.trial import TrialState

    from paretoskip.checkpoint import save_checkpoint
    from paretoskip.study import StudyDB

    save_checkpoint(make_tiny_model(), tmp_path / "ckpt")
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    storage = str(tmp_path / "k.db")
    budget, kills = 40, 3
    rng = random.Random(14)
    cmd = [sys.executable, str(script), str(tmp_path / "ckpt"), storage, engine, str(budget)]

    def masks() -> set[str]:  # read-only: opening the study would race its creation
        return _done_masks(Path(storage))

    seen: set[str] = set()
    killed = 0
    for _ in range(kills):
        target = len(seen) + rng.randint(2, 8)  # kill once this many masks are in the study
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and len(masks()) < target:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.communicate()
        now = masks()
        assert seen <= now, f"finished evaluations lost: {sorted(seen - now)}"
        seen = now
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    db = StudyDB.load(storage, "k")
    final = db.evaluated_masks()
    failed = len(db.trials(states=(TrialState.FAIL,)))
    measured_last = int(out.stdout.split("MISSES")[1].split()[0])
    print(
        f"{engine}: {killed} kills, masks before the last run {len(seen)}, final {len(final)}, "
        f"measured by the last run {measured_last}, failed trials {failed}"
    )
    assert killed == kills and seen <= final and len(final) == budget
    # the last run measured only masks the study did not hold (plus those the kill cut)
    assert measured_last <= budget - len(seen) + failed
    assert not db.trials(states=(TrialState.RUNNING,))


def test_ctrl_c_during_tpe_leaves_no_running_trial(tmp_path):
    """SIGINT in the middle of an Optuna search: every trial it asked is finished (told or
    failed) before it exits, so the next run has nothing to clean up."""
    import signal
    import subprocess
    import sys
    import time

    from optuna.trial import TrialState

    from paretoskip.checkpoint import save_checkpoint
    from paretoskip.study import StudyDB

    save_checkpoint(make_tiny_model(), tmp_path / "ckpt")
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    storage = str(tmp_path / "i.db")
    cmd = [sys.executable, str(script), str(tmp_path / "ckpt"), storage, "tpe", "200"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    n = 0
    while proc.poll() is None and time.monotonic() < deadline and n < 6:
        time.sleep(0.05)
        n = len(_trials(Path(storage))) if Path(storage).exists() else 0
    assert proc.poll() is None, "the search ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    db = StudyDB.load(storage, "k")
    assert db.trials(states=None)
    assert not db.trials(states=(TrialState.RUNNING,))


def test_ctrl_c_inside_ask_leaves_no_running_trial(evaluator, tmp_path, monkeypatch):
    """SIGINT that arrives while ``study.ask()`` has written its RUNNING trial but not yet
    returned it: the interrupt waits until the engine holds the trial, which it then fails."""
    import signal

    import optuna
    from optuna.trial import TrialState

    from paretoskip.study import StudyDB

    original = optuna.Study.ask
    asked = []

    def ask(self, *args, **kwargs):
        trial = original(self, *args, **kwargs)
        asked.append(trial.number)
        if len(asked) == 3:  # the trial is in the storage, RUNNING; Ctrl-C now
            signal.raise_signal(signal.SIGINT)
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask)
    storage = str(tmp_path / "a.db")
    with pytest.raises(KeyboardInterrupt):
        _search(evaluator, storage, "a", 20, engine="tpe")
    monkeypatch.undo()
    db = StudyDB.load(storage, "a")
    assert len(asked) == 3
    assert not db.trials(states=(TrialState.RUNNING,))
    assert {t.number for t in db.trials(states=(TrialState.FAIL,))} >= {asked[-1]}
