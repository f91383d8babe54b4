"""From a study file to a front: data, model (trained if missing), evaluator, search, files.

:class:`StudyPipeline` is what ``paretoskip run``, ``search``, ``worker`` and ``train`` do
with a study file, as a Python API; each step is built once, when first asked for::

    pipe = StudyPipeline.from_file("studies/digits-resnet20.toml")
    front, json_path, csv_path = pipe.run()          # train if needed, search, write the front

The functions underneath (:func:`build_data`, :func:`build_model`, :func:`build_evaluator`,
:func:`search_kwargs`, :func:`front_path`) take a validated
:class:`~paretoskip.config.StudyConfig` (see :mod:`paretoskip.config` for the file format).

Example:
    >>> import os, pathlib, tempfile
    >>> from paretoskip.config import parse_study_config
    >>> from paretoskip.pipeline import StudyPipeline
    >>> cfg = parse_study_config({"study": {"name": "demo", "storage": ":memory:"},
    ...     "model": {"name": "resnet20", "checkpoint": tempfile.mkdtemp() + "/r20",
    ...               "train": {"epochs": 0}},
    ...     "data": {"name": "digits", "limit": 300},
    ...     "search": {"budget": 8, "options": {"batch": 4}}})
    >>> pipe = StudyPipeline(cfg)
    >>> front = pipe.search(progress=False)
    >>> front.data["study"]["distinct_masks"], str(pipe.front_path())
    (8, 'studies/demo.front.json')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DataSection, StudyConfig, TrainSection, load_study_config
from .errors import CheckpointError, ConfigError, ParetoSkipError

if TYPE_CHECKING:
    from torch import nn

    from .data import DatasetSplits
    from .evaluate import Evaluator
    from .front import Front
    from .study import StudyDB

__all__ = [
    "StudyPipeline",
    "load_data",
    "build_data",
    "build_model",
    "check_checkpoint",
    "build_evaluator",
    "search_kwargs",
    "front_path",
    "train_checkpoint",
    "model_for_front",
    "check_fingerprint",
    "resolve_member",
    "check_locked",
    "plot_front",
    "DEFAULT_TRAINING",
]

log = logging.getLogger("paretoskip.pipeline")


# --------------------------------------------------------------------------- building blocks


def front_path(cfg: StudyConfig, out: str | os.PathLike | None = None) -> Path:
    """Where the front file of a study goes.

    ``out`` ending in ``.json`` is the file itself; any other ``out`` is a directory that
    receives ``<name>.front.json``.  Without ``out``: beside the SQLite or journal file
    (``studies/<name>.front.json`` by default), or in ``studies/`` for a server database.
    """
    if out is not None:
        out = Path(out)
        return out if out.suffix == ".json" else out / f"{cfg.name}.front.json"
    return cfg.location.side_dir / f"{cfg.name}.front.json"


def load_data(d: DataSection) -> DatasetSplits:
    """Load a dataset and its split as a ``[data]`` table describes them (see
    :func:`paretoskip.data.load_dataset`)."""
    from .data import load_dataset

    return load_dataset(
        d.name,
        d.root,
        seed=d.split_seed,
        val_size=d.val_size,
        test_size=d.test_size,
        input_size=d.input_size,
        limit=d.limit,
    )


def build_data(cfg: StudyConfig) -> DatasetSplits:
    """Load the study's dataset and split (see :func:`load_data`)."""
    try:
        return load_data(cfg.data)
    except ConfigError as exc:
        raise ConfigError(f"{cfg.source}: [data]: {exc}") from None


def checkpoint_exists(cfg: StudyConfig) -> bool:
    """Whether the study's checkpoint (weights and metadata) is there."""
    from .checkpoint import checkpoint_paths

    weights, meta_path = checkpoint_paths(cfg.model.checkpoint)
    return weights.is_file() and meta_path.is_file()


def build_model(
    cfg: StudyConfig,
    train_if_missing: bool = True,
    progress: bool = True,
    *,
    data: DatasetSplits | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The study's model with its checkpoint's weights, trained first when missing.

    When the checkpoint does not exist and ``[model.train]`` is enabled (and
    ``train_if_missing``), the model is trained on the study's train split and saved to
    ``model.checkpoint``.  Returns ``(model, checkpoint metadata)``.

    Raises:
        ConfigError: the checkpoint is missing and cannot be trained, or it holds another
            architecture or was made for data of another shape.
        CheckpointError: the checkpoint is unreadable or corrupted, or its weights exist
            without their metadata (JSON) file: it is never trained over.
    """
    from .checkpoint import checkpoint_paths, load_checkpoint

    weights, meta_path = checkpoint_paths(cfg.model.checkpoint)
    if weights.is_file() and not meta_path.is_file():
        # training again would overwrite weights that may be the only copy
        raise CheckpointError(
            f"{cfg.source}: model.checkpoint: {weights} exists but its metadata {meta_path} is "
            "missing; restore it, or move the weights away to train anew (nothing was "
            "trained or overwritten)"
        )
    if not checkpoint_exists(cfg):
        if not cfg.model.train.enabled or not train_if_missing:
            why = (
                "training is disabled ([model.train] is absent or has enabled = false)"
                if not cfg.model.train.enabled
                else "this command does not train"
            )
            raise ConfigError(
                f"{cfg.source}: model.checkpoint: {weights} does not exist and {why}. Train it "
                f"with `paretoskip train {cfg.source}` or `paretoskip run {cfg.source}`"
            )
        from .train import train_and_save

        data = data if data is not None else build_data(cfg)
        log.info(
            "checkpoint %s is missing: training %s on %s (%s, %d epochs)",
            weights,
            cfg.model.name,
            cfg.data.name,
            cfg.model.train.recipe,
            cfg.model.train.epochs,
        )
        try:
            train_and_save(
                cfg.model.name,
                data,
                cfg.model.checkpoint,
                model_kwargs=dict(cfg.model.kwargs),
                progress=progress,
                **cfg.model.train.kwargs(),
            )
        except ConfigError as exc:
            raise ConfigError(f"{cfg.source}: [model.train]: {exc}") from None
    model, meta = load_checkpoint(cfg.model.checkpoint)
    check_checkpoint(cfg, meta, data)
    return model, meta


def check_checkpoint(
    cfg: StudyConfig, meta: Mapping[str, Any], data: DatasetSplits | None = None
) -> None:
    """Check that a checkpoint's architecture and data fit the study (see :func:`build_model`)."""
    from .models import DATA_ARGS

    arch = meta["architecture"]
    ckpt = cfg.model.checkpoint
    if arch["name"] != cfg.model.name:
        raise ConfigError(
            f"{cfg.source}: model.name is {cfg.model.name!r} but the checkpoint {ckpt} holds "
            f"{arch['name']!r}; fix model.name or model.checkpoint"
        )
    for key, value in cfg.model.kwargs.items():
        if key in arch["kwargs"] and arch["kwargs"][key] != value:
            raise ConfigError(
                f"{cfg.source}: model.kwargs.{key}={value!r} but the checkpoint {ckpt} was built "
                f"with {key}={arch['kwargs'][key]!r}"
            )
    if data is None:
        return
    for key in DATA_ARGS:
        value = getattr(data, key)
        if key in arch["kwargs"] and arch["kwargs"][key] != value:
            raise ConfigError(
                f"{cfg.source}: the checkpoint {ckpt} was built for {key}={arch['kwargs'][key]}, "
                f"but {cfg.data.name} has {key}={value}"
            )
    trained_on = meta.get("dataset_fingerprint")
    if trained_on is not None and trained_on != data.fingerprint:
        log.warning(
            "the checkpoint %s was trained on another dataset or split than the study's "
            "(fingerprint %s…, now %s…): validation images may have been seen in training, "
            "so validation accuracy can be optimistic. Use the same [data] settings as in "
            "training, or retrain.",
            ckpt,
            str(trained_on)[:12],
            data.fingerprint[:12],
        )


def build_evaluator(
    cfg: StudyConfig,
    model: nn.Module,
    data: DatasetSplits,
    metadata: Mapping[str, Any] | None = None,
) -> Evaluator:
    """The study's :class:`~paretoskip.Evaluator`; its cache lives in the study database."""
    from .cache import EvalCache
    from .errors import MaskError
    from .evaluate import Evaluator
    from .space import SkipSpace

    try:
        space = SkipSpace.from_model(model, cfg.space.locked, cfg.space.groups)
    except MaskError as exc:
        raise ConfigError(f"{cfg.source}: [space]: {exc}") from None
    url = cfg.location.cache_url
    fingerprint = metadata.get("weights_fingerprint") if metadata else None
    return Evaluator(
        model,
        data,
        space=space,
        settings=cfg.measure.settings(),
        cache=EvalCache(url) if url is not None else None,
        model_fingerprint=fingerprint,
    )


def search_kwargs(cfg: StudyConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`paretoskip.search` for this study (without the evaluator)."""
    return {
        "objectives": tuple(cfg.search.objectives),
        "constraints": tuple(cfg.search.constraints),
        "engine": cfg.search.engine,
        "budget": cfg.search.budget,
        "timeout": cfg.search.timeout,
        "storage": cfg.location,
        "study_name": cfg.name,
        "seed": cfg.study.seed,
        "engine_options": dict(cfg.search.options),
        "epsilon": dict(cfg.search.epsilon) or None,
        "fidelity": cfg.search.fidelity,
        "screen_fraction": cfg.search.screen_fraction,
        "screen_k": cfg.search.screen_k,
        "screen_rungs": cfg.search.screen_rungs,
    }


# --------------------------------------------------------------------------- the pipeline


class StudyPipeline:
    """A study file's whole run, step by step (each step built once, when first needed).

    Args:
        cfg: the validated study (:func:`paretoskip.config.load_study_config`).
    """

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self._data: DatasetSplits | None = None
        self._model: tuple[nn.Module, dict[str, Any]] | None = None
        self._evaluator: Evaluator | None = None

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, *, check_files: bool = True, **overrides: Any
    ) -> StudyPipeline:
        """The pipeline of a study file, with overrides (``budget``, ``engine``, ``timeout``,
        ``storage``, ``seed``; see :meth:`StudyConfig.replace`)."""
        cfg = load_study_config(path, check_files=check_files)
        return cls(cfg.replace(**overrides) if overrides else cfg)

    @property
    def name(self) -> str:
        return self.cfg.name

    # -- steps -------------------------------------------------------------------------
    def data(self) -> DatasetSplits:
        """The dataset and its split."""
        if self._data is None:
            self._data = build_data(self.cfg)
        return self._data

    def needs_training(self) -> bool:
        """Whether :meth:`model` will train (the checkpoint is missing)."""
        return self._model is None and not checkpoint_exists(self.cfg)

    def model(
        self, *, train_if_missing: bool = True, progress: bool = True
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The model and its checkpoint metadata (trained and saved first when missing)."""
        if self._model is None:
            self._model = build_model(
                self.cfg, train_if_missing=train_if_missing, progress=progress, data=self.data()
            )
        return self._model

    def evaluator(self, *, train_if_missing: bool = True, progress: bool = True) -> Evaluator:
        """The study's evaluator (its cache in the study database)."""
        if self._evaluator is None:
            model, meta = self.model(train_if_missing=train_if_missing, progress=progress)
            self._evaluator = build_evaluator(self.cfg, model, self.data(), meta)
        return self._evaluator

    def search(self, *, progress: bool = True) -> Front:
        """Search (resuming the study up to its budget) and return the front."""
        from .search import search

        evaluator = self.evaluator(progress=progress)
        try:
            return search(evaluator, progress=progress, **search_kwargs(self.cfg))
        except ParetoSkipError as exc:
            if isinstance(exc, ConfigError) and self.cfg.source not in str(exc):
                raise ConfigError(f"{self.cfg.source}: {exc}") from None
            raise

    def front_path(self, out: str | os.PathLike | None = None) -> Path:
        """Where the front file goes (see :func:`front_path`)."""
        return front_path(self.cfg, out)

    def run(
        self, *, out: str | os.PathLike | None = None, progress: bool = True
    ) -> tuple[Front, Path, Path]:
        """Search and write the front file: ``(front, JSON path, CSV path)``.

        The front file's folder is checked for writing before the search starts.
        """
        from .storage import check_writable

        path = self.front_path(out)
        check_writable(path.parent, what=f"the front file {path}")
        front = self.search(progress=progress)
        json_path, csv_path = front.save(path)
        return front, json_path, csv_path

    def plot(self, front: Front, out_dir: str | os.PathLike = "plots") -> list[Path]:
        """Every figure of the study (see :func:`plot_front`)."""
        return plot_front(front, out_dir, self.open_study() if front.study is None else None)

    # -- reading what a run wrote ---------------------------------------------------------
    def open_study(self) -> StudyDB:
        """The study database, for reading; a clear error when it was not made yet."""
        from .study import StudyDB

        location = self.cfg.location
        if location.file is not None and not location.exists():
            raise ConfigError(
                f"{self.cfg.source}: no study database at {location.file} yet; run "
                f"`paretoskip run {self.cfg.source}` first"
            )
        return StudyDB.load(location, self.cfg.name)

    def front(self) -> Front:
        """The front as the study database holds it now (nothing measured)."""
        from .front import Front

        return Front.from_study(self.open_study(), epsilon=dict(self.cfg.search.epsilon) or None)

    # -- other commands --------------------------------------------------------------------
    def worker(
        self,
        *,
        engine: str | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        """One more worker on the study's database (see :func:`paretoskip.worker.run_worker`).

        The engine defaults to the study's when workers can share it, else to the worker
        default; the seed defaults to one derived from the worker id.  The checkpoint must
        exist (a worker does not train).
        """
        from .worker import WORKER_ENGINES, run_worker

        cfg = self.cfg
        if engine is None and cfg.search.engine in WORKER_ENGINES:
            engine = cfg.search.engine
        if cfg.search.budget is None:
            raise ConfigError(f"{cfg.source}: give --budget or search.budget (the whole study's)")
        if cfg.search.fidelity != "full":
            raise ConfigError(
                f"{cfg.source}: search.fidelity={cfg.search.fidelity!r}: workers evaluate every "
                "candidate on the whole split; run a multi-fidelity study with `paretoskip run` "
                '(one process), or set fidelity = "full" to share it among workers'
            )
        evaluator = self.evaluator(train_if_missing=False, progress=progress)
        kwargs: dict[str, Any] = dict(
            storage=cfg.location,
            study_name=cfg.name,
            objectives=tuple(cfg.search.objectives),
            constraints=tuple(cfg.search.constraints),
            budget=cfg.search.budget,
            seed=seed,
            timeout=timeout if timeout is not None else cfg.search.timeout,
            progress=progress,
        )
        if engine is not None:
            kwargs["engine"] = engine
            if engine == cfg.search.engine and cfg.search.options:
                kwargs["engine_options"] = dict(cfg.search.options)
        else:
            log.info(
                "the study's engine %s cannot be shared by workers; this worker uses the worker "
                "default (an Optuna sampler; --engine chooses one)",
                cfg.search.engine,
            )
        return run_worker(evaluator, **kwargs)

    def train_settings(self) -> tuple[str, dict[str, Any], str, dict[str, Any]]:
        """``(model name, model kwargs, checkpoint path, training settings)`` of the study
        (its ``[model.train]``, or the defaults with the study's seed when it has none)."""
        cfg = self.cfg
        t = cfg.model.train if cfg.model.train.enabled else TrainSection(seed=cfg.study.seed)
        return cfg.model.name, dict(cfg.model.kwargs), cfg.model.checkpoint, t.kwargs()


#: Training settings without a study file (``paretoskip train --model ... --data ...``).
DEFAULT_TRAINING: dict[str, Any] = {
    "recipe": "stochastic-depth",
    "epochs": 30,
    "seed": 0,
    "p_last": 0.5,
}


def train_checkpoint(
    model_name: str,
    data: DatasetSplits | Callable[[], DatasetSplits],
    out: str | os.PathLike,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any],
    force: bool = False,
    progress: bool = True,
) -> Any:
    """Train and save a checkpoint; refuses to overwrite one unless ``force``.

    ``data`` may be a function that loads it (called after the checks).  ``settings`` are
    keyword arguments of :func:`paretoskip.train.train_and_save`; the ``plain`` recipe trains
    without stochastic depth (``p_last = 1``).
    """
    from .checkpoint import checkpoint_paths
    from .models import list_models
    from .models._byo import is_factory_reference
    from .train import train_and_save

    if model_name not in list_models() and not is_factory_reference(model_name):
        raise ConfigError(f"unknown model {model_name!r}; available: {', '.join(list_models())}")
    settings = dict(settings)
    if settings.get("recipe") == "plain":
        settings["p_last"] = 1.0
    weights, _ = checkpoint_paths(out)
    if weights.exists() and not force:
        raise ConfigError(
            f"{weights} exists; pass --force to overwrite it (studies searched with these "
            "weights will not resume with new ones: give them another study name or storage)"
        )
    if callable(data):
        data = data()
    return train_and_save(
        model_name, data, out, model_kwargs=dict(model_kwargs or {}), progress=progress, **settings
    )


# --------------------------------------------------------------------------- fronts and models


def plot_front(front: Front, out_dir: str | os.PathLike = "plots", db: Any = None) -> list[Path]:
    """Every figure of a front's study into ``out_dir`` (see
    :func:`paretoskip.plots.plot_study`); ``db`` defaults to the study it was extracted from."""
    from .plots import plot_study

    db = db if db is not None else front.study
    if db is None:
        raise ConfigError("this front was read from a file: its study is needed for the plots")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [Path(p) for p in plot_study(db, front, out_dir)]


def check_fingerprint(front: Front, meta: Mapping[str, Any], ckpt: str, *, strict: bool) -> None:
    """Compare a checkpoint's weights with those the front was searched for.

    A difference raises :class:`~paretoskip.errors.ConfigError` when ``strict`` (the front's
    accuracies would not describe the weights), else it is logged.
    """
    expected = front.data.get("provenance", {}).get("model", {}).get("fingerprint")
    actual = meta.get("weights_fingerprint")
    if expected and actual and expected != actual:
        msg = (
            f"the checkpoint {ckpt} has other weights than the model the front was searched for "
            f"(fingerprint {actual[:12]}…, front {expected[:12]}…): the front's accuracies do not "
            "describe it"
        )
        if strict:
            raise ConfigError(msg + "; pass --force to go on anyway")
        log.warning(msg)


def model_for_front(
    front: Front, checkpoint: str | None, *, need_weights: bool, force: bool = False
) -> nn.Module:
    """The model of a front: from ``checkpoint`` (checked against the front), or, when the
    weights are not needed, the architecture the front records (random weights)."""
    from .checkpoint import load_checkpoint

    if checkpoint is not None:
        model, meta = load_checkpoint(checkpoint)
        check_fingerprint(front, meta, checkpoint, strict=need_weights and not force)
        return model
    if need_weights:
        raise ConfigError(
            "the weights are needed: pass --checkpoint (the model the front was searched for)"
        )
    spec = front.data.get("provenance", {}).get("model", {})
    if "name" not in spec:
        raise ConfigError("the front does not record its model; pass --checkpoint")
    from .models import create_model

    return create_model(spec["name"], **spec.get("kwargs", {}))


def check_locked(front: Front, mask: str, what: str) -> None:
    """Refuse a mask that skips a unit the front's space locks (never skipped)."""
    from .errors import MaskError

    space = front.data.get("space", {})
    units = [str(u) for u in space.get("units", ())]
    locked = [str(u) for u in space.get("locked", ())]
    for u in locked:
        if u in units and mask[units.index(u)] == "1":
            raise MaskError(
                f"{what} skips locked unit {u!r}; the study's space never skips: {', '.join(locked)}"
            )


def resolve_member(
    front: Front, *, member: int | None = None, mask: str | None = None
) -> tuple[str, dict[str, Any] | None]:
    """``(mask, front entry or None)`` of a member number or a mask (the full model's
    reference counts as an entry; any other valid mask has none)."""
    if member is not None:
        if not 0 <= member < len(front.members):
            raise ConfigError(
                f"--member {member}: the front has members 0 to {len(front.members) - 1} "
                "(see `paretoskip front`)"
            )
        entry = front.members[member]
        check_locked(front, entry["mask"], f"--member {member} (mask {entry['mask']})")
        return entry["mask"], entry
    mask = (mask or "").strip()
    n = len(front.data["space"]["units"])
    if len(mask) != n or set(mask) - {"0", "1"}:
        raise ConfigError(f"--mask {mask!r}: give {n} bits of 0/1, one per unit (1 = skipped)")
    check_locked(front, mask, f"--mask {mask}")
    entry = next((m for m in front.members if m["mask"] == mask), None)
    if entry is None and mask == front.reference.get("mask"):
        entry = {"mask": mask, **front.reference}  # the full model
    elif entry is None:
        log.warning("mask %s is not a member of the front; exporting it anyway", mask)
    return mask, entry
