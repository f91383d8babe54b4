"""Parallel evaluation: local processes and a real Dask LocalCluster give the serial results."""

from __future__ import annotations

import multiprocessing
import random
import time

import pytest
from conftest import make_tiny_model
from optuna.trial import TrialState

import paretoskip
from paretoskip import Evaluator, MeasureSettings
from paretoskip.cache import EvalCache
from paretoskip.checkpoint import save_checkpoint
from paretoskip.errors import ConfigError
from paretoskip.parallel import EvaluatorSpec, ParallelEvaluator, split_batch


def _tiny_model():
    """The conftest ``tiny_model`` (module-scoped fixtures cannot use it)."""
    return make_tiny_model()


def _masks(n, seed=0, units=9):
    rng = random.Random(seed)
    return ["".join(str(rng.randint(0, 1)) for _ in range(units)) for _ in range(n)]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(_tiny_model(), path)
    return EvaluatorSpec(checkpoint=str(path), dataset="digits", data_args={"seed": 0})


@pytest.fixture(scope="module")
def serial(spec):
    return spec.build()


@pytest.fixture(scope="module")
def processes(spec):
    with ParallelEvaluator(spec, executor="processes", workers=2) as pe:
        pe.start()
        yield pe


def test_split_batch_contiguous_sorted_chunks():
    masks = _masks(11) + _masks(3)
    chunks = split_batch(masks, 2)
    assert [m for c in chunks for m in c] == sorted(set(masks))
    assert abs(len(chunks[0]) - len(chunks[1])) <= 1
    assert split_batch(["1"], 4) == [["1"]]


def test_spec_round_trip_and_fingerprint_checks(spec, serial, digits, tiny_model, tmp_path):
    again = EvaluatorSpec.from_dict(spec.to_dict())
    assert again == spec and again.key == spec.key
    assert serial.cache_key == Evaluator(tiny_model, digits).cache_key  # same weights, data
    with pytest.raises(ConfigError, match="exactly one of checkpoint"):
        EvaluatorSpec(dataset="digits")
    with pytest.raises(ConfigError, match="init_seed"):
        EvaluatorSpec(model="resnet20")
    derived = EvaluatorSpec.from_evaluator(Evaluator(tiny_model, digits), tmp_path / "saved")
    assert (tmp_path / "saved.safetensors").exists()
    assert derived.build().cache_key == serial.cache_key
    wrong = EvaluatorSpec(
        **{**spec.to_dict(), "data_args": {"seed": 1}, "expect": {"data": "0" * 64}}
    )
    with pytest.raises(ConfigError, match="rebuilt different dataset"):
        wrong.build()


def test_processes_equal_serial_and_build_once(processes, serial):
    masks = _masks(40)
    reference = serial.evaluate_many(masks)
    first = processes.evaluate_many(masks)
    again = processes.evaluate_many(_masks(10, seed=1))
    assert [e.metrics for e in first] == [e.metrics for e in reference]
    assert [e.mask for e in first] == masks
    assert processes.test_accuracy(masks[:7]) == serial.test_accuracy(masks[:7])
    assert processes.accuracy_many(masks[:7]) == [e["accuracy"] for e in reference[:7]]
    assert len({e["accuracy"] for e in reference}) > 3  # the masks really differ
    batch = processes.batches[0]
    assert batch["task"] == "evaluate"
    assert batch["chunks"] == [len(c) for c in split_batch(masks, 2)]
    assert len({w["worker"] for w in batch["workers"]}) == 2  # one chunk per worker process
    # every process built the model and data once, and reused them for every task
    assert {w["builds"] for b in processes.batches for w in b["workers"]} == {1}
    assert len(again) == 10


def test_search_through_processes_equals_serial_search(processes, serial, tmp_path):
    kwargs = dict(
        engine="pymoo-nsga2", budget=20, seed=3, progress=False, engine_options={"pop_size": 8}
    )
    par = paretoskip.search(processes, storage=str(tmp_path / "p.db"), **kwargs)
    ser = paretoskip.search(serial, storage=str(tmp_path / "s.db"), **kwargs)
    strip = [{k: m[k] for k in ("mask", "metrics", "test_accuracy")} for m in par.data["members"]]
    assert strip == [
        {k: m[k] for k in ("mask", "metrics", "test_accuracy")} for m in ser.data["members"]
    ]
    assert par.data["study"]["distinct_masks"] == 20
    assert par.data["provenance"]["executor"]["name"] == "processes"


@pytest.mark.postgres
def test_dask_local_cluster_with_postgres(spec, serial, postgres_url, tmp_path, monkeypatch):
    from dask.distributed import Client, LocalCluster

    monkeypatch.chdir(tmp_path)  # the pymoo checkpoint of a server study goes to studies/
    budget = 16
    with (
        LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
        ParallelEvaluator(spec, executor="dask", client=client) as pe,
    ):
        pe.cache = postgres_url
        front = paretoskip.search(
            pe,
            engine="pymoo-nsga2",
            budget=budget,
            seed=0,
            storage=postgres_url,
            study_name="dask",
            progress=False,
            engine_options={"pop_size": 8},
        )
        workers = {w["worker"] for b in pe.batches for w in b["workers"]}
        builds = {w["builds"] for b in pe.batches for w in b["workers"]}
        n_batches = len(pe.batches)
        db = paretoskip.study.StudyDB.load(postgres_url, "dask")
        trials = db.trials()
        key = pe.cache_key
    assert len(workers) == 2 and builds == {1} and n_batches >= 3
    # N evaluations, none lost, each evaluated once, identical to a serial run
    masks = [t.user_attrs["mask"] for t in trials]
    assert len(set(masks)) == budget == front.data["study"]["distinct_masks"]
    assert EvalCache(postgres_url).count(key) == budget
    assert not db.trials(states=[TrialState.RUNNING])
    accuracy = {t.user_attrs["mask"]: t.user_attrs["accuracy"] for t in trials}
    assert list(accuracy.values()) == serial.accuracy_many(list(accuracy))


# -- the per-host measurement lock ----------------------------------------------------------
def _measure_in_child(spec_dict, barrier, queue):
    """Child process: evaluate with latency on, recording when it holds the measurement lock."""
    import contextlib

    import paretoskip.evaluate
    import paretoskip.measure

    real = paretoskip.measure.measurement_lock
    held = []

    @contextlib.contextmanager
    def recording(*args, **kwargs):
        asked = time.time()
        with real(*args, **kwargs):
            got = time.time()
            try:
                yield
            finally:
                held.append((asked, got, time.time()))

    paretoskip.measure.measurement_lock = recording
    paretoskip.evaluate.measurement_lock = recording
    ev = EvaluatorSpec.from_dict(spec_dict).build()
    ev.accuracy_many(["0" * 9])  # warm up before the race
    barrier.wait()
    ev.evaluate_many(_masks(6, seed=int(time.time() * 1e6) % 1000))
    queue.put(held)


def test_latency_measurements_of_two_processes_never_overlap(spec):
    settings = MeasureSettings(latency=True, repeats=4, warmup=1, batch_size=32, threads=1)
    child_spec = EvaluatorSpec(**{**spec.to_dict(), "settings": settings}).to_dict()
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_measure_in_child, args=(child_spec, barrier, queue)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    held = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(len(h) == 6 for h in held)  # one locked latency run per mask
    spans = sorted((got, end, i) for i, h in enumerate(held) for _, got, end in h)
    for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
        assert start >= end, f"process {i} and {j} measured at the same time"
    # the processes really competed: some measurement waited for the other process's lock
    assert max(got - asked for h in held for asked, got, _ in h) > 0.005
