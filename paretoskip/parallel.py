"""Evaluate batches of masks in parallel: in-process, local worker processes, or a Dask cluster.

:class:`ParallelEvaluator` has the interface of :class:`~paretoskip.Evaluator`, so
``paretoskip.search(ParallelEvaluator(spec, executor="processes"))`` runs any engine
unchanged.  It keeps a local :class:`~paretoskip.Evaluator` (in the calling process, the
*driver*) for metadata, fingerprints and the cache, and sends the masks the cache does not
hold to its workers:

``"local"``
    in-process (the default): exactly :class:`~paretoskip.Evaluator`.
``"processes"``
    ``workers`` local processes (``concurrent.futures.ProcessPoolExecutor``, spawn
    context).  Each process builds the model, data and evaluator once, in its
    initializer, and reuses them for every task.
``"dask"``
    a ``dask.distributed`` cluster given by its scheduler ``address`` (or an existing
    ``client``), or a ``LocalCluster`` of ``workers`` processes when neither is given.  Each
    Dask worker process builds the evaluator once (a per-process cache keyed by the spec)
    and reuses it.

Workers rebuild the evaluator from a picklable, JSON-able :class:`EvaluatorSpec` (a
checkpoint path, the dataset's name, root and split arguments, the skip space and the
measurement settings), so a worker on another machine needs only paths that resolve there
(see ``docs/scaling.md``).  A rebuilt evaluator must have the driver's model and data
fingerprints, or the worker refuses to evaluate.  Tasks carry mask bitstrings, never
tensors, and return :class:`~paretoskip.Evaluation` objects.

A batch is split into contiguous chunks of its lexicographically sorted distinct masks, one
chunk per worker, so each worker still shares prefixes within its chunk (the prefix tree of
:meth:`Evaluator.accuracy_many`).  Accuracy runs in parallel.  Latency and energy are
measured inside the workers under :func:`paretoskip.measure.measurement_lock`, a per-host
``flock``: two processes on one host never measure at once.  Each host measures its own
device; workers on different hosts must report the same hardware as the driver when latency
or energy is measured (else the worker refuses), because mixing devices would mix their
numbers.  The driver alone reads and writes the evaluation cache, under its own cache key,
so workers need no database access.

Results are identical to a serial run: the same operations on the same tensors, per mask
(accuracy runs with ``threads_per_worker`` intra-op threads; the tests and
``benchmarks/parallel.py`` check every accuracy against a serial run's).

Example:
    >>> from paretoskip.parallel import EvaluatorSpec, ParallelEvaluator
    >>> spec = EvaluatorSpec(model="resnet20", init_seed=0, dataset="digits",
    ...     model_kwargs={"num_classes": 10, "in_channels": 1, "input_size": 8})
    >>> with ParallelEvaluator(spec, executor="local") as ev:
    ...     ev.evaluate("000000001").metrics["flops"].unit
    'FLOPs'
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .cache import CacheKey, EvalCache
from .errors import ConfigError, ParetoSkipError
from .evaluate import Evaluation, Evaluator, MeasureSettings
from .progress import progress_bar
from .space import SkipSpace

__all__ = ["EvaluatorSpec", "ParallelEvaluator", "EXECUTORS", "split_batch"]

log = logging.getLogger(__name__)

#: Executors of :class:`ParallelEvaluator`.
EXECUTORS: dict[str, str] = {
    "local": "in-process (no parallelism)",
    "processes": "local worker processes (concurrent.futures, spawn)",
    "dask": "a dask.distributed cluster (scheduler address, client, or a LocalCluster)",
}


# -- the spec a worker rebuilds the evaluator from ---------------------------------------------
@dataclass(frozen=True)
class EvaluatorSpec:
    """Everything a worker process needs to rebuild the same :class:`~paretoskip.Evaluator`.

    Only paths, names and numbers: it pickles small and converts to JSON
    (:meth:`to_dict` / :meth:`from_dict`).  Paths must resolve on the machine that builds it.

    Args:
        checkpoint: a checkpoint written by :func:`paretoskip.checkpoint.save_checkpoint`
            (path with or without suffix).  The preferred way: weights are checked by hash.
        model: instead of a checkpoint, a model name for :func:`paretoskip.create_model`
            with ``model_kwargs``; its weights are the random initial ones after
            ``torch.manual_seed(init_seed)`` (untrained: for benchmarks and tests).
        model_kwargs: keyword arguments of :func:`paretoskip.create_model`.
        init_seed: seed of the random initial weights (required with ``model``).
        dataset: dataset name for :func:`paretoskip.data.load_dataset`.
        data_root: where its files are (None: the dataset's default location).
        data_args: other arguments of :func:`~paretoskip.data.load_dataset` (``seed``,
            ``val_size``, ``test_size``, ``input_size``, ``limit``, ``split``).
        space: the skip space as :meth:`SkipSpace.to_dict` (None: every unit of the model).
        settings: :class:`~paretoskip.MeasureSettings`.
        cache: an evaluation-cache database URL or path (used by :meth:`build`, never by
            the workers of a :class:`ParallelEvaluator`).
        expect: fingerprints the rebuilt evaluator must have (``model``, ``data``,
            ``settings``); :class:`ParallelEvaluator` fills them from the driver.
    """

    checkpoint: str | None = None
    model: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    init_seed: int | None = None
    dataset: str = "digits"
    data_root: str | None = None
    data_args: Mapping[str, Any] = field(default_factory=dict)
    space: Mapping[str, Any] | None = None
    settings: MeasureSettings = field(default_factory=MeasureSettings)
    cache: str | None = None
    expect: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.model is None):
            raise ConfigError(
                "EvaluatorSpec needs exactly one of checkpoint= (a saved checkpoint) or model= "
                "(a model name, with init_seed= for its random weights)"
            )
        if self.model is not None and self.init_seed is None:
            raise ConfigError(
                f"model={self.model!r} without a checkpoint has random weights: give init_seed= so "
                "that every worker builds the same ones (or save a checkpoint and pass checkpoint=)"
            )
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", os.fspath(self.checkpoint))
        if self.data_root is not None:
            object.__setattr__(self, "data_root", os.fspath(self.data_root))
        if isinstance(self.settings, Mapping):
            object.__setattr__(self, "settings", MeasureSettings(**self.settings))

    # -- conversions ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (read back by :meth:`from_dict`)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["settings"] = dataclasses.asdict(self.settings)
        for k in ("model_kwargs", "data_args", "space", "expect"):
            if d[k] is not None:
                d[k] = json.loads(json.dumps(dict(d[k]), default=str))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluatorSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown EvaluatorSpec keys {unknown}; accepted: {sorted(names)}")
        return cls(**dict(d))

    @property
    def key(self) -> str:
        """sha256 of the spec (a worker process keeps one evaluator per key)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_evaluator(cls, evaluator: Evaluator, checkpoint: str | os.PathLike) -> EvaluatorSpec:
        """The spec of an existing evaluator.

        ``checkpoint`` must hold the evaluator's weights; when the file does not exist it is
        written (:func:`~paretoskip.checkpoint.save_checkpoint`).  The data are reloaded from
        ``evaluator.data.describe()`` (name, root, seed and split arguments).
        """
        from .checkpoint import checkpoint_paths, save_checkpoint

        weights, _ = checkpoint_paths(checkpoint)
        if not weights.exists():
            save_checkpoint(evaluator.model, checkpoint)
        desc = evaluator.data.describe()
        args = {k: v for k, v in desc.get("load_args", {}).items() if v is not None}
        args["seed"] = desc["seed"]
        return cls(
            checkpoint=os.fspath(checkpoint),
            dataset=desc["name"],
            data_root=desc.get("root"),
            data_args=args,
            space=evaluator.space.to_dict(),
            settings=evaluator.settings,
            cache=getattr(evaluator.cache, "url", None),
            expect=_fingerprints(evaluator),
        )

    # -- building ------------------------------------------------------------------------
    def build(self, *, with_cache: bool = True) -> Evaluator:
        """Load the model and the data and make the evaluator (checked against ``expect``)."""
        return self._build(Evaluator, with_cache)

    def _build(self, cls: type[Evaluator], with_cache: bool) -> Evaluator:
        from .data import load_dataset

        if self.checkpoint is not None:
            from .checkpoint import load_checkpoint

            model, meta = load_checkpoint(self.checkpoint)
            fingerprint = meta["weights_fingerprint"]
        else:
            from .models import create_model

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.init_seed))  # type: ignore[arg-type]
                model = create_model(self.model, **dict(self.model_kwargs))  # type: ignore[arg-type]
            fingerprint = None
        data = load_dataset(self.dataset, self.data_root, **dict(self.data_args))
        space = SkipSpace.from_dict(dict(self.space)) if self.space is not None else None
        ev = cls(
            model.eval(),
            data,
            space=space,
            settings=self.settings,
            cache=self.cache if with_cache else None,
            model_fingerprint=fingerprint,
        )
        self._check(ev)
        return ev

    def _check(self, ev: Evaluator) -> None:
        if not self.expect:
            return
        from .study import worker_id

        got = _fingerprints(ev)
        where = f"worker {worker_id()}"
        for what, text in (
            ("model", f"model weights (checkpoint {self.checkpoint!r})"),
            ("data", f"dataset {self.dataset!r} (root {self.data_root!r}, {dict(self.data_args)})"),
        ):
            if what in self.expect and self.expect[what] != got[what]:
                raise ConfigError(
                    f"{where} rebuilt different {text}: fingerprint {got[what][:12]}… instead of "
                    f"{self.expect[what][:12]}…. Every worker must read the same files (copy them, or "
                    "put them on shared storage)."
                )
        if "settings" in self.expect and self.expect["settings"] != got["settings"]:
            if self.settings.latency or self.settings.energy != "none":
                raise ConfigError(
                    f"{where} runs on other hardware than the driver ({ev.hardware}); latency and "
                    "energy measured there would mix devices. Use workers on identical machines, "
                    "or measure accuracy only."
                )
            log.info("%s runs on other hardware than the driver (accuracy only: allowed)", where)


def _fingerprints(ev: Any) -> dict[str, str]:
    return {
        "model": ev.model_fingerprint,
        "data": ev.data.fingerprint,
        "settings": ev.settings_fingerprint,
    }


# -- inside a worker process -------------------------------------------------------------------
class _WorkerEvaluator(Evaluator):
    """An evaluator whose accuracy runs with ``accuracy_threads`` threads (latency and energy
    keep the settings' threads)."""

    accuracy_threads: int | None = None

    def accuracy_many(self, masks, split: str = "val") -> list[float]:  # type: ignore[override]
        if self.accuracy_threads is None or self.accuracy_threads == self.settings.threads:
            return super().accuracy_many(masks, split)
        settings = self.settings
        self.settings = dataclasses.replace(settings, threads=self.accuracy_threads)
        try:
            return super().accuracy_many(masks, split)
        finally:
            self.settings = settings


#: evaluators built in this process, by spec key (a worker builds one once and reuses it)
_BUILT: dict[str, tuple[_WorkerEvaluator, threading.Lock]] = {}
_BUILT_LOCK = threading.Lock()
_BUILDS = 0


def _worker_evaluator(
    spec: EvaluatorSpec, threads: int | None
) -> tuple[_WorkerEvaluator, threading.Lock]:
    global _BUILDS
    key = spec.key
    with _BUILT_LOCK:
        if key not in _BUILT:
            if threads is not None:
                torch.set_num_threads(threads)
            ev = spec._build(_WorkerEvaluator, with_cache=False)
            assert isinstance(ev, _WorkerEvaluator)
            ev.accuracy_threads = threads
            _BUILT[key] = (ev, threading.Lock())
            _BUILDS += 1
        return _BUILT[key]


def _init_process(spec: EvaluatorSpec, threads: int | None) -> None:
    """Initializer of a local worker process: build the evaluator once."""
    logging.basicConfig(level=logging.WARNING)
    _worker_evaluator(spec, threads)


def _ping(spec: EvaluatorSpec, threads: int | None) -> str:
    from .study import worker_id

    _worker_evaluator(spec, threads)
    time.sleep(0.05)
    return worker_id()


def _run_chunk(
    spec: EvaluatorSpec, index: int, masks: list[str], task: str, threads: int | None
) -> dict[str, Any]:
    """One task on a chunk of masks: ``"evaluate"`` (every metric, as Evaluations) or the
    accuracy on split ``"val"`` or ``"test"`` (floats)."""
    from .study import worker_id

    ev, lock = _worker_evaluator(spec, threads)
    with lock:  # an evaluator is not thread-safe (it switches the model's skip flags)
        start, cpu = time.time(), time.process_time()
        if task == "evaluate":
            results: list[Any] = ev.evaluate_many(masks)
        else:
            results = ev.accuracy_many(masks, task)
        end, cpu = time.time(), time.process_time() - cpu
    return {
        "index": index,
        "worker": worker_id(),
        "results": results,
        "start": start,
        "end": end,
        "cpu_seconds": cpu,
        "builds": _BUILDS,
    }


# -- executors ---------------------------------------------------------------------------------
def split_batch(masks: Iterable[str], n: int) -> list[list[str]]:
    """Contiguous chunks of the sorted distinct masks, at most ``n``, sizes differing by ≤ 1.

    Example:
        >>> split_batch(["11", "00", "01", "10", "00"], 2)
        [['00', '01'], ['10', '11']]
    """
    distinct = sorted(set(masks))
    n = max(1, min(n, len(distinct)))
    q, r = divmod(len(distinct), n)
    out, start = [], 0
    for i in range(n):
        size = q + (1 if i < r else 0)
        out.append(distinct[start : start + size])
        start += size
    return [c for c in out if c]


class _Runner:
    n_workers: int = 1

    def run(self, chunks: list[list[str]], task: str) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def warm(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


class _ProcessRunner(_Runner):
    def __init__(self, spec: EvaluatorSpec, workers: int, threads: int | None):
        self.spec = spec
        self.threads = threads
        self.n_workers = workers
        self.pool = cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_process,
            initargs=(spec, threads),
        )

    def run(self, chunks: list[list[str]], task: str) -> Iterator[dict[str, Any]]:
        futures = [
            self.pool.submit(_run_chunk, self.spec, i, chunk, task, self.threads)
            for i, chunk in enumerate(chunks)
        ]
        try:
            for fut in cf.as_completed(futures):
                yield fut.result()
        except cf.process.BrokenProcessPool as exc:
            raise ParetoSkipError(
                "a local worker process died (out of memory? killed?) or could not build the "
                f"evaluator; see its log above: {exc}"
            ) from exc
        finally:
            for fut in futures:
                fut.cancel()

    def warm(self, timeout: float = 600.0) -> list[str]:
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < self.n_workers and time.monotonic() < deadline:
            futs = [self.pool.submit(_ping, self.spec, self.threads) for _ in range(self.n_workers)]
            seen.update(f.result() for f in futs)
        return sorted(seen)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _DaskRunner(_Runner):
    def __init__(
        self,
        spec: EvaluatorSpec,
        address: str | None,
        client: Any,
        workers: int | None,
        threads: int | None,
    ):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:  # pragma: no cover
            raise ConfigError(
                "executor='dask' needs dask.distributed: pip install 'paretoskip[dask]'"
            ) from exc
        self.spec = spec
        self.threads = threads
        self.cluster = None
        self._own_client = client is None
        if client is not None:
            self.client = client
        elif address is not None:
            self.client = Client(address)
        else:
            self.cluster = LocalCluster(
                n_workers=workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
            self.client = Client(self.cluster)

    @property
    def addresses(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    @property
    def n_workers(self) -> int:  # type: ignore[override]
        return max(1, len(self.addresses))

    def run(self, chunks: list[list[str]], task: str) -> Iterator[dict[str, Any]]:
        from dask.distributed import as_completed

        addrs = self.addresses
        tag = uuid.uuid4().hex[:8]
        futures = [
            self.client.submit(
                _run_chunk,
                self.spec,
                i,
                chunk,
                task,
                self.threads,
                key=f"paretoskip-chunk-{tag}-{i}",
                workers=[addrs[i % len(addrs)]] if addrs else None,
                allow_other_workers=True,
                pure=False,
            )
            for i, chunk in enumerate(chunks)
        ]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            for fut in futures:
                fut.release()

    def warm(self) -> list[str]:
        futs = [
            self.client.submit(
                _ping,
                self.spec,
                self.threads,
                key=f"paretoskip-warm-{uuid.uuid4().hex[:8]}-{a}",
                workers=[a],
                pure=False,
            )
            for a in self.addresses
        ]
        return sorted(self.client.gather(futs))

    def close(self) -> None:
        if self._own_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# -- the evaluator ---------------------------------------------------------------------------
class ParallelEvaluator:
    """An :class:`~paretoskip.Evaluator` whose batches run on worker processes or a cluster.

    Args:
        spec: the :class:`EvaluatorSpec` every worker rebuilds the evaluator from.
        executor: ``"local"`` (default), ``"processes"`` or ``"dask"`` (see :data:`EXECUTORS`).
        workers: number of local processes (``processes``), or of ``LocalCluster`` worker
            processes (``dask`` without address or client); default: the number of CPUs.
        address: a Dask scheduler address (``tcp://host:8786``).
        client: an existing ``dask.distributed.Client`` (not closed by :meth:`close`).
        threads_per_worker: torch intra-op threads of accuracy evaluation in each worker;
            default ``max(1, cpus // workers)`` for local processes and local clusters, the
            settings' threads on a remote cluster.  Latency and energy always use
            ``settings.threads``.
        local: an already built evaluator of this spec for the driver (else built here).

    Use it as a context manager, or call :meth:`close`, to stop the workers.
    """

    def __init__(
        self,
        spec: EvaluatorSpec,
        *,
        executor: str = "local",
        workers: int | None = None,
        address: str | None = None,
        client: Any = None,
        threads_per_worker: int | None = None,
        local: Evaluator | None = None,
    ):
        if executor not in EXECUTORS:
            raise ConfigError(f"unknown executor {executor!r}; accepted: {', '.join(EXECUTORS)}")
        if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
            raise ConfigError(f"workers={workers!r} must be a positive integer")
        if threads_per_worker is not None and threads_per_worker < 1:
            raise ConfigError(f"threads_per_worker={threads_per_worker!r} must be >= 1")
        if executor != "dask" and (address is not None or client is not None):
            raise ConfigError(f"address= and client= belong to executor='dask', not {executor!r}")
        self.spec = spec
        self.executor = executor
        self.local = local if local is not None else spec.build()
        # workers get the driver's resolved settings (threads fixed) and check fingerprints
        self.worker_spec = dataclasses.replace(
            spec, settings=self.local.settings, cache=None, expect=_fingerprints(self.local)
        )
        cpus = os.cpu_count() or 1
        remote = executor == "dask" and (address is not None or client is not None)
        n = workers or cpus
        if threads_per_worker is None and executor != "local" and not remote:
            threads_per_worker = max(1, cpus // n)
        self.threads_per_worker = threads_per_worker
        self._workers = n
        self._address = address
        self._client = client
        self._runner: _Runner | None = None
        self._lock = threading.Lock()
        #: one record per batch sent to the workers: chunk sizes, workers, seconds
        self.batches: list[dict[str, Any]] = []

    @classmethod
    def from_evaluator(
        cls, evaluator: Evaluator, checkpoint: str | os.PathLike, **kwargs: Any
    ) -> ParallelEvaluator:
        """Parallelise an existing evaluator (its weights saved to ``checkpoint`` if missing)."""
        return cls(EvaluatorSpec.from_evaluator(evaluator, checkpoint), local=evaluator, **kwargs)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> list[str]:
        """Start the workers and let each build its evaluator; return the worker ids."""
        return self._get_runner().warm()

    def _get_runner(self) -> _Runner:
        with self._lock:
            if self._runner is None:
                if self.executor == "processes":
                    self._runner = _ProcessRunner(
                        self.worker_spec, self._workers, self.threads_per_worker
                    )
                elif self.executor == "dask":
                    self._runner = _DaskRunner(
                        self.worker_spec,
                        self._address,
                        self._client,
                        self._workers,
                        self.threads_per_worker,
                    )
                else:
                    self._runner = _Runner()
            return self._runner

    def close(self) -> None:
        """Stop the workers (the driver's evaluator stays usable in-process)."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()
        if self.local.cache is not None:
            self.local.cache.close()

    def __enter__(self) -> ParallelEvaluator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the Evaluator interface -----------------------------------------------------------
    @property
    def space(self) -> SkipSpace:
        return self.local.space

    @property
    def settings(self) -> MeasureSettings:
        return self.local.settings

    @property
    def settings_fingerprint(self) -> str:
        return self.local.settings_fingerprint

    @property
    def model_fingerprint(self) -> str:
        return self.local.model_fingerprint

    @property
    def cache_key(self) -> CacheKey:
        return self.local.cache_key

    @property
    def data(self) -> Any:
        return self.local.data

    @property
    def model(self) -> Any:
        return self.local.model

    @property
    def costs(self) -> Any:
        return self.local.costs

    @property
    def hardware(self) -> dict[str, Any]:
        return self.local.hardware

    @property
    def cache(self) -> EvalCache | None:
        return self.local.cache

    @cache.setter
    def cache(self, value: EvalCache | str | None) -> None:
        self.local.cache = EvalCache(value) if isinstance(value, str) else value

    @property
    def hits(self) -> int:
        return self.local.hits

    @property
    def misses(self) -> int:
        return self.local.misses

    def __getattr__(self, name: str) -> Any:  # anything else: the driver's evaluator
        if name.startswith("__") or name in ("local", "_runner", "_lock"):
            raise AttributeError(name)
        return getattr(self.local, name)

    def provenance(self) -> dict[str, Any]:
        prov = self.local.provenance()
        prov["executor"] = {"name": self.executor, "threads_per_worker": self.threads_per_worker}
        return prov

    def naive_accuracy(self, mask: Sequence[int] | str, split: str = "val") -> float:
        return self.local.naive_accuracy(mask, split)

    def evaluate(self, mask: Sequence[int] | str) -> Evaluation:
        """Evaluate one mask (see :meth:`evaluate_many`)."""
        return self.evaluate_many([mask])[0]

    def accuracy_many(
        self, masks: Sequence[Sequence[int] | str], split: str = "val"
    ) -> list[float]:
        """Top-1 accuracy of each mask on ``split``, computed by the workers."""
        if split not in ("val", "test"):
            raise ConfigError(f"split={split!r}; accepted: 'val' (searched) or 'test' (reported)")
        keys = [self.space.to_bitstring(self.space.validate(m)) for m in masks]
        if self.executor == "local" or not keys:
            return self.local.accuracy_many(keys, split)
        acc: dict[str, float] = {}
        for chunk, res in self._dispatch(sorted(set(keys)), split):
            acc.update(zip(chunk, res["results"]))
        return [acc[k] for k in keys]

    def test_accuracy(self, masks: Sequence[Sequence[int] | str]) -> list[float]:
        """Accuracy on the test split (reported for front members, never searched)."""
        return self.accuracy_many(masks, split="test")

    def evaluate_many(
        self, masks: Iterable[Sequence[int] | str], *, progress: bool = False
    ) -> list[Evaluation]:
        """Evaluate masks, from the cache where possible, the rest on the workers; input order."""
        if self.executor == "local":
            return self.local.evaluate_many(masks, progress=progress)
        local = self.local
        bits = [self.space.validate(m) for m in masks]
        keys = [self.space.to_bitstring(b) for b in bits]
        found = local.cached(bits)
        todo = sorted(set(keys) - set(found))
        local.hits += len(set(keys)) - len(todo)
        local.misses += len(todo)
        if todo:
            bar = progress_bar(len(todo), progress)
            for _, res in self._dispatch(todo, "evaluate"):
                for ev in res["results"]:
                    if local.cache is not None:
                        local.cache.put(
                            local.cache_key,
                            ev.mask,
                            {k: m.to_dict() for k, m in ev.metrics.items()},
                            ev.seconds,
                        )
                    found[ev.mask] = ev
                bar.update(len(res["results"]))
            bar.close()
        return [found[k] for k in keys]

    def _dispatch(self, todo: list[str], task: str) -> Iterator[tuple[list[str], dict[str, Any]]]:
        runner = self._get_runner()
        chunks = split_batch(todo, runner.n_workers)
        record: dict[str, Any] = {
            "task": task,
            "masks": len(todo),
            "chunks": [len(c) for c in chunks],
            "workers": [],
            "started": time.time(),
        }
        for res in runner.run(chunks, task):
            chunk = chunks[res["index"]]
            record["workers"].append(
                {
                    "worker": res["worker"],
                    "masks": len(chunk),
                    "seconds": res["end"] - res["start"],
                    "cpu_seconds": res["cpu_seconds"],
                    "builds": res["builds"],
                }
            )
            yield chunk, res
        record["seconds"] = time.time() - record["started"]
        self.batches.append(record)
