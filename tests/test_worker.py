"""Several worker processes on one PostgreSQL study: shared budget and cache, no lost or
duplicated evaluations, and the mask of a killed worker done again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest
from optuna.trial import TrialState

from paretoskip import MeasureSettings, SkipSpace
from paretoskip.checkpoint import save_checkpoint
from paretoskip.errors import ConfigError
from paretoskip.parallel import EvaluatorSpec
from paretoskip.study import StudyDB
from paretoskip.worker import StudyLock, run_worker, worker_seed

STUDY = "shared"

# A worker process: build the evaluator from the spec, wait for the start signal, run.
# ``slow`` seconds of sleep *before* each search evaluation keep its trials RUNNING long enough for
# other workers to meet them (and for the test to kill it mid-task, before any result exists).
WORKER = r"""
import json, os, sys, time
from paretoskip.parallel import EvaluatorSpec
from paretoskip.worker import run_worker

args = json.loads(sys.argv[1])
ev = EvaluatorSpec.from_dict(args["spec"]).build()
inner = ev.evaluate_many

def evaluate_many(masks, **kw):
    masks = list(masks)
    if any("1" in "".join(map(str, m)) for m in masks):  # not the full-model reference
        time.sleep(args["slow"])
    return inner(masks, **kw)

ev.evaluate_many = evaluate_many
print("READY", flush=True)
while not os.path.exists(args["go"]):
    time.sleep(0.02)
summary = run_worker(
    ev, storage=args["storage"], study_name=args["study"], objectives=["accuracy", "flops"],
    constraints=[], engine=args["engine"], budget=args["budget"], seed=args["seed"],
    progress=False, poll_interval=0.1,
)
print("SUMMARY " + json.dumps(summary), flush=True)
"""


@pytest.fixture
def spec(tmp_path, tiny_model):
    path = tmp_path / "tiny"
    save_checkpoint(tiny_model, path)
    # lock 3 of 9 units: 64 masks, so that workers propose the same masks often
    space = SkipSpace.from_model(tiny_model, locked=["layer1.0", "layer2.0", "layer3.0"])
    # threads fixed: the settings fingerprint (part of the study) must not depend on the process
    return EvaluatorSpec(
        checkpoint=str(path),
        dataset="digits",
        data_args={"seed": 0},
        space=space.to_dict(),
        settings=MeasureSettings(threads=1),
    )


def _start(tmp_path, spec, url, *, slow, budget, engine="random", seed=None):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = {
        "spec": spec.to_dict(),
        "storage": url,
        "study": STUDY,
        "slow": slow,
        "budget": budget,
        "engine": engine,
        "seed": seed,
        "go": str(tmp_path / "go"),
    }
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(args)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _ready(*procs):
    for p in procs:
        line = p.stdout.readline()
        assert line.strip() == "READY", line


def _summary(proc, timeout=180):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    line = [x for x in out.splitlines() if x.startswith("SUMMARY ")][-1]
    return json.loads(line[len("SUMMARY ") :])


def _check_study(url, spec, budget):
    """Every trial accounted for; each mask evaluated exactly once; serial accuracies."""
    db = StudyDB.load(url, STUDY)
    trials = db.trials(states=None)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    masks = {t.user_attrs["mask"] for t in done}
    assert len(masks) == budget  # shared budget: exactly, across the workers
    evaluated = Counter(t.user_attrs["mask"] for t in done if not t.user_attrs["cache_hit"])
    assert set(evaluated) == masks and set(evaluated.values()) == {1}  # no duplicate work
    for t in trials:
        names = db.space.param_names
        if t.state == TrialState.FAIL and all(p in t.params for p in names):
            # a failed trial's mask was done again
            assert (
                db.space.to_bitstring(
                    db.space.mask_from_genes([t.params[p] for p in db.space.param_names])
                )
                in masks
            )
    serial = spec.build()
    acc = {t.user_attrs["mask"]: t.user_attrs["accuracy"] for t in done}
    assert list(acc.values()) == serial.accuracy_many(list(acc))
    return db, trials


@pytest.mark.postgres
def test_two_workers_share_budget_cache_and_in_flight_masks(tmp_path, spec, postgres_url):
    budget = 12
    # the same seed: both random samplers propose the same masks at the same time, so the
    # second must wait for the first's evaluation instead of repeating it
    procs = [
        _start(tmp_path, spec, postgres_url, slow=0.6, budget=budget, seed=7) for _ in range(2)
    ]
    _ready(*procs)
    (tmp_path / "go").touch()
    a, b = (_summary(p) for p in procs)
    _check_study(postgres_url, spec, budget)
    assert a["new_evaluations"] + b["new_evaluations"] == budget - 1  # + the reference
    assert a["taken_from_other_workers"] + b["taken_from_other_workers"] >= 1
    assert a["distinct_masks"] == b["distinct_masks"] == budget
    assert a["wait_timeouts"] == b["wait_timeouts"] == 0


@pytest.mark.postgres
def test_killed_worker_mask_is_redone_by_the_others(tmp_path, spec, postgres_url):
    budget = 14
    victim = _start(tmp_path, spec, postgres_url, slow=30, budget=budget)
    other = _start(tmp_path, spec, postgres_url, slow=0.3, budget=budget)
    _ready(victim, other)
    (tmp_path / "go").touch()
    me = f"{socket.gethostname()}:{victim.pid}"
    db = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill the victim while it evaluates a trial
        try:
            db = db or StudyDB.load(postgres_url, STUDY)
            running = [
                t
                for t in db.trials(states=[TrialState.RUNNING])
                if t.user_attrs.get("worker") == me and len(t.params) == 6
            ]
        except Exception:  # the study does not exist yet
            running = []
        if running:
            break
        time.sleep(0.05)
    assert running, "the victim never started a trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    summary = _summary(other)
    _, trials = _check_study(postgres_url, spec, budget)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert {t.number for t in running} <= {t.number for t in failed}
    # the victim's trial was failed by the survivor, which did its mask again (either
    # enqueued anew, or taken over when it was waiting for exactly that mask)
    assert summary["stale_trials_failed"] >= 1


@pytest.mark.postgres
def test_restarted_worker_redoes_the_mask_of_a_killed_one(tmp_path, spec, postgres_url):
    budget = 6
    victim = _start(tmp_path, spec, postgres_url, slow=30, budget=budget)
    _ready(victim)
    (tmp_path / "go").touch()
    db = None
    running = []
    deadline = time.monotonic() + 120
    while not running and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            db = db or StudyDB.load(postgres_url, STUDY)
            running = [t for t in db.trials(states=[TrialState.RUNNING]) if len(t.params) == 6]
        except Exception:
            pass
    assert running
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # the restart (here: this process) fails the dead worker's trial and does its mask again
    summary = run_worker(
        spec.build(),
        storage=postgres_url,
        study_name=STUDY,
        objectives=["accuracy", "flops"],
        constraints=[],
        engine="tpe",
        budget=budget,
        progress=False,
    )
    _check_study(postgres_url, spec, budget)
    assert summary["stale_trials_failed"] >= len(running) and summary["masks_reenqueued"] >= 1


def test_worker_seeds_differ_and_engines_are_checked(digits, tiny_model):
    from paretoskip import Evaluator

    assert worker_seed("host:1") != worker_seed("host:2")
    assert worker_seed() == worker_seed(f"{socket.gethostname()}:{os.getpid()}")
    ev = Evaluator(tiny_model, digits)
    kwargs = dict(storage="sqlite://", study_name="s", objectives=["accuracy", "flops"])
    with pytest.raises(ConfigError, match="cannot be shared by several workers"):
        run_worker(ev, constraints=[], engine="pymoo-nsga2", budget=5, **kwargs)
    with pytest.raises(ConfigError, match="budget=0"):
        run_worker(ev, constraints=[], budget=0, **kwargs)


def test_study_lock_on_an_sqlite_file_excludes_other_processes(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    code = (
        "import sys, time; from paretoskip.worker import StudyLock\n"
        "with StudyLock(sys.argv[1], 's'):\n"
        "    print('IN', flush=True); time.sleep(1.0)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "IN"
    t0 = time.monotonic()
    with StudyLock(url, "s"):
        waited = time.monotonic() - t0
    child.wait(10)
    assert waited > 0.3  # it waited for the other process to leave
