"""Study files: one TOML document describing a whole search.

A study file names the model (and how to train it when its checkpoint is missing), the
dataset and its split, the skip space, the search (engine, budget, objectives,
constraints) and how costs are measured.  :func:`load_study_config` reads and validates it;
every error is a :class:`~paretoskip.errors.ConfigError` that names the file, the dotted
key (``search.engine``) and the accepted values.

Example study (``studies/digits-resnet20.toml`` is the default one)::

    [study]
    name = "digits-resnet20"          # default: the file name without .toml
    # storage = "studies/digits-resnet20.db"   # default; or a URL (postgresql+psycopg://...)
    seed = 0

    [model]
    name = "resnet20"
    # checkpoint = "studies/checkpoints/digits-resnet20"   # default
    [model.train]                     # used only when the checkpoint is missing
    recipe = "stochastic-depth"
    epochs = 30
    p_last = 0.5

    [data]
    name = "digits"

    [search]
    engine = "pymoo-nsga2"
    budget = 150
    objectives = ["accuracy", "flops"]

**Relative paths** (``study.storage``, ``model.checkpoint``, ``data.root``) are relative to
the *current working directory*, like every path given to a command line tool: run
``paretoskip`` from the repository root and ``studies/...`` means the ``studies/`` folder
there.

Sections and keys (all optional unless marked *required*):

``[study]``
    ``name`` (default: the file's stem; letters, digits, ``.``, ``_``, ``-``),
    ``storage`` (default ``studies/<name>.db``: a path, an SQLAlchemy URL, ``redis://…``
    or a ``.log`` journal file), ``seed`` (engine seed, default 0), ``description``.
``[model]``
    ``name`` (*required*, see :func:`paretoskip.list_models`), ``kwargs`` (table of extra
    :func:`~paretoskip.create_model` arguments, e.g. ``shortcut = "B"``),
    ``checkpoint`` (default ``studies/checkpoints/<name>``).
``[model.train]``
    How to train the model when its checkpoint is missing; without this table (or with
    ``enabled = false``) the checkpoint must exist.  ``recipe`` (``stochastic-depth`` or
    ``plain``), ``epochs``, ``batch_size``, ``lr``, ``momentum``, ``weight_decay``,
    ``p_last``, ``seed`` (default: ``study.seed``), ``augment``.
``[data]``
    ``name`` (*required*, see :data:`paretoskip.data.DATASETS`), ``root``,
    ``split_seed`` (default 0), ``val_size``, ``test_size`` (fractions or counts),
    ``limit``, ``input_size``.
``[space]``
    ``locked`` (units never skipped), ``groups`` (lists of units skipped together).
``[search]``
    ``engine`` (default ``pymoo-nsga2``, see :data:`paretoskip.search.ENGINES`),
    ``budget`` (distinct masks, the full model included), ``timeout`` (seconds per call),
    ``objectives`` (default ``["accuracy", "flops"]``), ``constraints``
    (e.g. ``["accuracy >= 0.9", "flops <= 60%"]``), ``options`` (engine settings table,
    e.g. ``pop_size = 24``), ``epsilon`` (per-objective width of the near-Pareto band).
``[measure]``
    ``latency`` (bool), ``batch_size``, ``repeats``, ``warmup``, ``threads``, ``energy``
    (one of :data:`paretoskip.energy.ENERGY_BACKENDS`), ``energy_seconds``,
    ``eval_batch``, ``memory_mb`` (see :class:`paretoskip.MeasureSettings`).

Example:
    >>> import pathlib, tempfile
    >>> from paretoskip.config import load_study_config
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.toml"
    >>> _ = p.write_text('[model]\\nname = "resnet20"\\n[model.train]\\n[data]\\nname = "digits"\\n')
    >>> cfg = load_study_config(p)
    >>> cfg.name, cfg.storage, cfg.model.checkpoint, cfg.model.train.epochs
    ('s', 'studies/s.db', 'studies/checkpoints/s', 30)
    >>> _ = p.write_text('[model]\\nname = "resnet20"\\n[data]\\nname = "digits"\\n[serch]\\n')
    >>> load_study_config(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    paretoskip.errors.ConfigError: ...s.toml: unknown key 'serch'; did you mean 'search'? ...
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ParetoSkipError

if TYPE_CHECKING:
    from torch import nn

    from .data import DatasetSplits
    from .evaluate import Evaluator
    from .front import Front

__all__ = [
    "StudyConfig",
    "StudySection",
    "ModelSection",
    "TrainSection",
    "DataSection",
    "SpaceSection",
    "SearchSection",
    "MeasureSection",
    "load_study_config",
    "parse_study_config",
    "build_data",
    "build_model",
    "build_evaluator",
    "run_search",
    "search_kwargs",
    "check_checkpoint",
    "front_path",
    "DEFAULT_STUDY",
]

log = logging.getLogger(__name__)

#: The study ``paretoskip run`` uses when none is given (relative to the working directory).
DEFAULT_STUDY = "studies/digits-resnet20.toml"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class StudySection:
    name: str
    storage: str
    seed: int = 0
    description: str = ""


@dataclass(frozen=True)
class TrainSection:
    """How to train the model when its checkpoint is missing (``enabled=False``: never)."""

    enabled: bool = True
    recipe: str = "stochastic-depth"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    p_last: float = 0.5
    seed: int = 0
    augment: bool | None = None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`paretoskip.train.train_model`."""
        return {
            "recipe": self.recipe,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "p_last": self.p_last,
            "seed": self.seed,
            "augment": self.augment,
        }


@dataclass(frozen=True)
class ModelSection:
    name: str
    checkpoint: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    train: TrainSection = field(default_factory=lambda: TrainSection(enabled=False))


@dataclass(frozen=True)
class DataSection:
    name: str
    root: str | None = None
    split_seed: int = 0
    val_size: int | float = 0.2
    test_size: int | float = 0.2
    limit: int | None = None
    input_size: int | None = None


@dataclass(frozen=True)
class SpaceSection:
    locked: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class SearchSection:
    engine: str = "pymoo-nsga2"
    budget: int | None = None
    timeout: float | None = None
    objectives: tuple[str, ...] = ("accuracy", "flops")
    constraints: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    epsilon: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MeasureSection:
    latency: bool = False
    batch_size: int = 64
    repeats: int = 15
    warmup: int = 3
    threads: int | None = None
    energy: str = "none"
    energy_seconds: float = 1.0
    eval_batch: int = 256
    memory_mb: float = 1024.0

    def settings(self):
        """These settings as a :class:`paretoskip.MeasureSettings`."""
        from .evaluate import MeasureSettings

        return MeasureSettings(**dataclasses.asdict(self))


@dataclass(frozen=True)
class StudyConfig:
    """A validated study file (see the module docstring for every key)."""

    path: Path | None
    study: StudySection
    model: ModelSection
    data: DataSection
    space: SpaceSection = field(default_factory=SpaceSection)
    search: SearchSection = field(default_factory=SearchSection)
    measure: MeasureSection = field(default_factory=MeasureSection)

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def storage(self) -> str:
        """The storage as written (a path relative to the working directory, or a URL)."""
        return self.study.storage

    @property
    def storage_url(self) -> str:
        """The storage as a URL (creates the parent folder of a file database)."""
        from .study import storage_url_for

        return storage_url_for(self.study.storage, self.name)

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else "<study config>"

    def replace(self, **overrides: Any) -> StudyConfig:
        """A copy with command-line overrides applied and validated.

        Accepted: ``budget``, ``engine``, ``timeout``, ``storage``, ``seed``.  Changing the
        engine drops ``search.options`` (they belong to the engine named in the file).
        """
        study, search = self.study, self.search
        where = f"{self.source} (overridden on the command line)"
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "budget":
                _check_int(value, "search.budget", where, minimum=1)
                search = dataclasses.replace(search, budget=int(value))
            elif key == "timeout":
                if not isinstance(value, (int, float)) or value <= 0:
                    raise ConfigError(f"{where}: search.timeout={value!r} must be > 0 seconds")
                search = dataclasses.replace(search, timeout=float(value))
            elif key == "engine":
                from .search import ENGINES

                _check_choice(value, ENGINES, "search.engine", where)
                if value != search.engine and search.options:
                    log.info(
                        "engine %s replaces %s: the file's search.options %s are not used",
                        value,
                        search.engine,
                        dict(search.options),
                    )
                    search = dataclasses.replace(search, options={})
                search = dataclasses.replace(search, engine=value)
            elif key == "storage":
                study = dataclasses.replace(study, storage=os.fspath(value))
            elif key == "seed":
                _check_int(value, "study.seed", where, minimum=0)
                study = dataclasses.replace(study, seed=int(value))
            else:
                raise ConfigError(
                    f"cannot override {key!r}; accepted: budget, engine, timeout, storage, seed"
                )
        return dataclasses.replace(self, study=study, search=search)


# --------------------------------------------------------------------------- validation

_T = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_groups(v: Any) -> bool:
    return isinstance(v, list) and all(_is_str_list(g) for g in v)


# (checker, description) per key; a nested dict is a sub-table.
_SCHEMA: dict[str, Any] = {
    "study": {
        "name": (lambda v: isinstance(v, str), "a string"),
        "storage": (lambda v: isinstance(v, str), "a string (path or URL)"),
        "seed": (_is_int, "an integer"),
        "description": (lambda v: isinstance(v, str), "a string"),
    },
    "model": {
        "name": (lambda v: isinstance(v, str), "a string"),
        "checkpoint": (lambda v: isinstance(v, str), "a string (path)"),
        "kwargs": (lambda v: isinstance(v, dict), "a table"),
        "train": {
            "enabled": (lambda v: isinstance(v, bool), "true or false"),
            "recipe": (lambda v: isinstance(v, str), "a string"),
            "epochs": (_is_int, "an integer"),
            "batch_size": (_is_int, "an integer"),
            "lr": (_is_number, "a number"),
            "momentum": (_is_number, "a number"),
            "weight_decay": (_is_number, "a number"),
            "p_last": (_is_number, "a number"),
            "seed": (_is_int, "an integer"),
            "augment": (lambda v: isinstance(v, bool), "true or false"),
        },
    },
    "data": {
        "name": (lambda v: isinstance(v, str), "a string"),
        "root": (lambda v: isinstance(v, str), "a string (path)"),
        "split_seed": (_is_int, "an integer"),
        "val_size": (_is_number, "a number (fraction in [0, 1) or a count)"),
        "test_size": (_is_number, "a number (fraction in [0, 1) or a count)"),
        "limit": (_is_int, "an integer"),
        "input_size": (_is_int, "an integer"),
    },
    "space": {
        "locked": (_is_str_list, "a list of unit names"),
        "groups": (_is_groups, "a list of lists of unit names"),
    },
    "search": {
        "engine": (lambda v: isinstance(v, str), "a string"),
        "budget": (_is_int, "an integer"),
        "timeout": (_is_number, "a number of seconds"),
        "objectives": (_is_str_list, "a list of metric names"),
        "constraints": (_is_str_list, "a list of strings such as 'accuracy >= 0.9'"),
        "options": (lambda v: isinstance(v, dict), "a table"),
        "epsilon": (lambda v: isinstance(v, dict), "a table of numbers"),
    },
    "measure": {
        "latency": (lambda v: isinstance(v, bool), "true or false"),
        "batch_size": (_is_int, "an integer"),
        "repeats": (_is_int, "an integer"),
        "warmup": (_is_int, "an integer"),
        "threads": (_is_int, "an integer"),
        "energy": (lambda v: isinstance(v, str), "a string"),
        "energy_seconds": (_is_number, "a number of seconds"),
        "eval_batch": (_is_int, "an integer"),
        "memory_mb": (_is_number, "a number"),
    },
}
_REQUIRED = {"model": ("name",), "data": ("name",)}
_FREE_TABLES = {"model.kwargs", "search.options", "search.epsilon"}


def _typename(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _suggest(key: str, accepted: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
    return f"did you mean {prefix + close[0]!r}? " if close else ""


def _check_keys(doc: Mapping[str, Any], schema: Mapping[str, Any], prefix: str, where: str) -> None:
    accepted = list(schema)
    for key, value in doc.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            section = f"[{prefix[:-1]}]" if prefix else "the top level"
            raise ConfigError(
                f"{where}: unknown key {dotted!r}; "
                f"{_suggest(key, accepted, prefix)}"
                f"accepted in {section}: {', '.join(accepted)}"
            )
        rule = schema[key]
        if isinstance(rule, dict):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{where}: {dotted} must be a table ([{dotted}]), not {_typename(value)}"
                )
            _check_keys(value, rule, f"{dotted}.", where)
            continue
        check, what = rule
        if dotted in _FREE_TABLES and not isinstance(value, dict):
            raise ConfigError(
                f"{where}: {dotted} must be a table ([{dotted}]), not {_typename(value)}"
            )
        if not check(value):
            raise ConfigError(
                f"{where}: {dotted} must be {what}, not {_typename(value)} ({value!r})"
            )


def _check_choice(value: str, accepted: Any, key: str, where: str, what: str = "") -> None:
    accepted = list(accepted)
    if value not in accepted:
        hint = _suggest(value, accepted)
        raise ConfigError(
            f"{where}: {key}: unknown {what or key.rsplit('.', 1)[-1]} {value!r}; {hint}"
            f"accepted: {', '.join(accepted)}"
        )


def _check_int(value: Any, key: str, where: str, *, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{where}: {key}={value!r} must be an integer >= {minimum}")


def _check_positive(value: Any, key: str, where: str, *, upper: float | None = None) -> None:
    ok = _is_number(value) and math.isfinite(value) and value > 0
    if ok and upper is not None:
        ok = value <= upper
    if not ok:
        rng = f"in (0, {upper:g}]" if upper is not None else "> 0"
        raise ConfigError(f"{where}: {key}={value!r} must be a number {rng}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                "reading study files on Python 3.10 needs the 'tomli' package: pip install tomli"
            ) from None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (in the working directory {os.getcwd()})"
        raise ConfigError(f"{path}: study file does not exist{where}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a study file (.toml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the study file: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None


def load_study_config(path: str | os.PathLike, *, check_files: bool = True) -> StudyConfig:
    """Read and validate a study file.

    Args:
        path: the ``.toml`` file.
        check_files: when the model cannot be trained (no ``[model.train]``), check that its
            checkpoint exists.  Commands that only read the study database pass ``False``.

    Raises:
        ConfigError: the file is missing or not TOML, or a key is unknown, has the wrong
            type or an unaccepted value; the message names the file and the dotted key.
    """
    path = Path(path)
    return parse_study_config(_read_toml(path), path=path, check_files=check_files)


def parse_study_config(
    doc: Mapping[str, Any], *, path: str | os.PathLike | None = None, check_files: bool = True
) -> StudyConfig:
    """Validate a study document already parsed from TOML (see :func:`load_study_config`)."""
    path = Path(path) if path is not None else None
    where = str(path) if path is not None else "<study config>"
    _check_keys(doc, _SCHEMA, "", where)
    for section, keys in _REQUIRED.items():
        for key in keys:
            if key not in doc.get(section, {}):
                raise ConfigError(f"{where}: missing required key '{section}.{key}'")

    # [study]
    s = doc.get("study", {})
    name = s.get("name", path.stem if path is not None else None)
    if name is None:
        raise ConfigError(f"{where}: missing required key 'study.name'")
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{where}: study.name={name!r}: use letters, digits, '.', '_' and '-' only "
            "(it names files)"
        )
    seed = s.get("seed", 0)
    _check_int(seed, "study.seed", where, minimum=0)
    storage = s.get("storage", f"studies/{name}.db")
    if not storage.strip():
        raise ConfigError(f"{where}: study.storage is empty")
    study = StudySection(
        name=name, storage=storage, seed=seed, description=s.get("description", "")
    )

    # [model]
    from .models import list_models

    m = doc["model"]
    _check_choice(m["name"], list_models(), "model.name", where, "model")
    kwargs = dict(m.get("kwargs", {}))
    for reserved in ("num_classes", "in_channels", "input_size", "p_last"):
        if reserved in kwargs:
            src = "model.train.p_last" if reserved == "p_last" else "the dataset"
            raise ConfigError(
                f"{where}: model.kwargs.{reserved}: set by {src}, not in [model.kwargs]"
            )
    t = m.get("train")
    train = TrainSection(enabled=False, seed=seed)
    if t is not None:
        from .train import RECIPES

        train = TrainSection(
            enabled=t.get("enabled", True),
            recipe=t.get("recipe", "stochastic-depth"),
            epochs=t.get("epochs", 30),
            batch_size=t.get("batch_size", 128),
            lr=float(t.get("lr", 0.1)),
            momentum=float(t.get("momentum", 0.9)),
            weight_decay=float(t.get("weight_decay", 5e-4)),
            p_last=float(t.get("p_last", 0.5)),
            seed=t.get("seed", seed),
            augment=t.get("augment"),
        )
        _check_choice(train.recipe, RECIPES, "model.train.recipe", where, "recipe")
        _check_int(train.epochs, "model.train.epochs", where, minimum=0)
        _check_int(train.batch_size, "model.train.batch_size", where, minimum=1)
        _check_int(train.seed, "model.train.seed", where, minimum=0)
        _check_positive(train.lr, "model.train.lr", where)
        _check_positive(train.p_last, "model.train.p_last", where, upper=1.0)
        for key in ("momentum", "weight_decay"):
            v = getattr(train, key)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{where}: model.train.{key}={v!r} must be a number >= 0")
        if train.recipe == "plain" and "p_last" in t and t["p_last"] != 1.0:
            raise ConfigError(
                f"{where}: model.train.p_last={t['p_last']!r} contradicts recipe 'plain' "
                "(no stochastic depth, p_last = 1); remove it or use recipe 'stochastic-depth'"
            )
    checkpoint = m.get("checkpoint", f"studies/checkpoints/{name}")
    model = ModelSection(name=m["name"], checkpoint=checkpoint, kwargs=kwargs, train=train)
    # [data]
    from .data import DATASETS

    d = doc["data"]
    _check_choice(d["name"], DATASETS, "data.name", where, "dataset")
    data = DataSection(
        name=d["name"],
        root=d.get("root"),
        split_seed=d.get("split_seed", 0),
        val_size=d.get("val_size", 0.2),
        test_size=d.get("test_size", 0.2),
        limit=d.get("limit"),
        input_size=d.get("input_size"),
    )
    _check_int(data.split_seed, "data.split_seed", where, minimum=0)
    for key in ("val_size", "test_size"):
        v = getattr(data, key)
        if isinstance(v, float) and not 0.0 <= v < 1.0:
            raise ConfigError(
                f"{where}: data.{key}={v!r}: a fraction must be in [0, 1) (or give a count)"
            )
        if isinstance(v, int) and v < 0:
            raise ConfigError(f"{where}: data.{key}={v!r} must be >= 0")
    if data.limit is not None:
        _check_int(data.limit, "data.limit", where, minimum=1)
    if data.input_size is not None:
        _check_int(data.input_size, "data.input_size", where, minimum=1)

    # [space]
    sp = doc.get("space", {})
    space = SpaceSection(
        locked=tuple(sp.get("locked", ())),
        groups=tuple(tuple(g) for g in sp.get("groups", ())),
    )
    if space.locked or space.groups or model.kwargs:
        _check_space(space, model, where)

    # [search]
    from .evaluate import METRICS
    from .objectives import Constraint

    se = doc.get("search", {})
    search = SearchSection(
        engine=se.get("engine", "pymoo-nsga2"),
        budget=se.get("budget"),
        timeout=float(se["timeout"]) if "timeout" in se else None,
        objectives=tuple(se.get("objectives", ("accuracy", "flops"))),
        constraints=tuple(se.get("constraints", ())),
        options=dict(se.get("options", {})),
        epsilon=dict(se.get("epsilon", {})),
    )
    from .search import ENGINES, make_engine

    _check_choice(search.engine, ENGINES, "search.engine", where, "engine")
    if search.budget is not None:
        _check_int(search.budget, "search.budget", where, minimum=1)
    if search.timeout is not None:
        _check_positive(search.timeout, "search.timeout", where)
    for i, o in enumerate(search.objectives):
        _check_choice(o, METRICS, f"search.objectives[{i}]", where, "objective")
    if len(search.objectives) < 2:
        raise ConfigError(
            f"{where}: search.objectives={list(search.objectives)}: a Pareto search needs at "
            'least two, e.g. ["accuracy", "flops"]'
        )
    if len(set(search.objectives)) != len(search.objectives):
        raise ConfigError(f"{where}: search.objectives={list(search.objectives)} names one twice")
    constraints = []
    for i, c in enumerate(search.constraints):
        try:
            constraints.append(Constraint.parse(c))
        except ConfigError as exc:
            raise ConfigError(f"{where}: search.constraints[{i}]: {exc}") from None
    for k, v in search.epsilon.items():
        if k not in search.objectives:
            raise ConfigError(
                f"{where}: search.epsilon.{k}: not an objective; accepted: "
                f"{', '.join(search.objectives)}"
            )
        if not _is_number(v) or v < 0:
            raise ConfigError(f"{where}: search.epsilon.{k}={v!r} must be a number >= 0")
    if search.engine.startswith("pymoo-"):
        import inspect

        from .search._pymoo import PymooEngine

        accepted = [
            n
            for n, prm in inspect.signature(PymooEngine).parameters.items()
            if n not in ("algorithm", "seed") and prm.kind is prm.POSITIONAL_OR_KEYWORD
        ]
        for k in search.options:
            if k not in accepted:
                raise ConfigError(
                    f"{where}: search.options.{k}: engine {search.engine!r} does not take {k!r}; "
                    f"{_suggest(k, accepted, 'search.options.')}accepted: {', '.join(accepted)}"
                )
    try:
        make_engine(search.engine, seed, **search.options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: search.options: {exc}") from None
    except TypeError as exc:
        raise ConfigError(
            f"{where}: search.options: bad settings for engine {search.engine!r}: {exc}"
        ) from None

    # [measure]
    from .energy import ENERGY_BACKENDS

    me = doc.get("measure", {})
    measure = MeasureSection(
        **{k: (float(v) if k in ("energy_seconds", "memory_mb") else v) for k, v in me.items()}
    )
    _check_choice(measure.energy, ENERGY_BACKENDS, "measure.energy", where, "energy backend")
    for key in ("batch_size", "repeats", "eval_batch"):
        _check_int(getattr(measure, key), f"measure.{key}", where, minimum=1)
    _check_int(measure.warmup, "measure.warmup", where, minimum=0)
    if measure.threads is not None:
        _check_int(measure.threads, "measure.threads", where, minimum=1)
    _check_positive(measure.memory_mb, "measure.memory_mb", where)
    if measure.energy_seconds < 0:
        raise ConfigError(f"{where}: measure.energy_seconds must be >= 0")
    if measure.latency and measure.repeats < 2:
        raise ConfigError(
            f"{where}: measure.repeats={measure.repeats}: latency needs at least 2 repeats"
        )
    needed = [(f"search.objectives[{i}]", o) for i, o in enumerate(search.objectives)]
    needed += [(f"search.constraints[{i}]", c.metric) for i, c in enumerate(constraints)]
    for key, metric in needed:
        if metric == "latency" and not measure.latency:
            raise ConfigError(f"{where}: {key}: 'latency' needs measure.latency = true")
        if metric == "energy" and measure.energy == "none":
            raise ConfigError(
                f"{where}: {key}: 'energy' needs measure.energy = one of "
                f"{', '.join(b for b in ENERGY_BACKENDS if b != 'none')} (see `paretoskip info`)"
            )

    # last: a missing checkpoint is the least informative error
    if check_files and not train.enabled:
        from .checkpoint import checkpoint_paths

        weights, meta = checkpoint_paths(checkpoint)
        missing = [str(p) for p in (weights, meta) if not p.is_file()]
        if missing:
            why = (
                "[model.train] has enabled = false"
                if t is not None
                else "there is no [model.train] table"
            )
            rel = (
                ""
                if Path(checkpoint).is_absolute()
                else f" (relative to the working directory {os.getcwd()})"
            )
            raise ConfigError(
                f"{where}: model.checkpoint: {' and '.join(missing)} not found{rel}, and {why}, "
                "so it cannot be trained. Fix the path, train it with `paretoskip train "
                f"{where}`, or add a [model.train] table (recipe, epochs, ...)"
            )

    return StudyConfig(
        path=path, study=study, model=model, data=data, space=space, search=search, measure=measure
    )


def _check_space(space: SpaceSection, model: ModelSection, where: str) -> None:
    """Check unit names against the model's architecture (built without weights)."""
    from .errors import MaskError
    from .models import create_model, skippable_units
    from .space import SkipSpace

    try:
        arch = create_model(model.name, **model.kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: model.kwargs: {exc}") from None
    units = [n for n, _ in skippable_units(arch)]
    for key, names in [("space.locked", space.locked)] + [
        (f"space.groups[{i}]", g) for i, g in enumerate(space.groups)
    ]:
        for u in names:
            if u not in units:
                raise ConfigError(
                    f"{where}: {key}: unknown unit {u!r}; {_suggest(u, units)}"
                    f"units of {model.name}: {', '.join(units)}"
                )
    try:
        SkipSpace(tuple(units), space.locked, space.groups)
    except MaskError as exc:
        raise ConfigError(f"{where}: [space]: {exc}") from None


# --------------------------------------------------------------------------- builders


def front_path(cfg: StudyConfig, out: str | os.PathLike | None = None) -> Path:
    """Where the front file of a study goes.

    ``out`` ending in ``.json`` is the file itself; any other ``out`` is a directory that
    receives ``<name>.front.json``.  Without ``out``: beside the SQLite or journal file
    (``studies/<name>.front.json`` by default), or in ``studies/`` for a server database.
    """
    if out is not None:
        out = Path(out)
        return out if out.suffix == ".json" else out / f"{cfg.name}.front.json"
    storage = cfg.storage
    if storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        directory = Path(storage[len("sqlite:///") :]).parent
    elif "://" not in storage:
        directory = Path(storage).parent
    else:
        directory = Path("studies")
    return directory / f"{cfg.name}.front.json"


def build_data(cfg: StudyConfig) -> DatasetSplits:
    """Load the study's dataset and split (see :func:`paretoskip.data.load_dataset`)."""
    from .data import load_dataset

    d = cfg.data
    try:
        return load_dataset(
            d.name,
            d.root,
            seed=d.split_seed,
            val_size=d.val_size,
            test_size=d.test_size,
            input_size=d.input_size,
            limit=d.limit,
        )
    except ConfigError as exc:
        raise ConfigError(f"{cfg.source}: [data]: {exc}") from None


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
        CheckpointError: the checkpoint is unreadable or corrupted.
    """
    from .checkpoint import checkpoint_paths, load_checkpoint

    weights, meta_path = checkpoint_paths(cfg.model.checkpoint)
    if not (weights.is_file() and meta_path.is_file()):
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
    for key, value in (
        ("num_classes", data.num_classes),
        ("in_channels", data.in_channels),
        ("input_size", data.input_size),
    ):
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
    from .study import cache_url_for

    try:
        space = SkipSpace.from_model(model, cfg.space.locked, cfg.space.groups)
    except MaskError as exc:
        raise ConfigError(f"{cfg.source}: [space]: {exc}") from None
    url = cache_url_for(cfg.storage_url)
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
        "storage": cfg.storage,
        "study_name": cfg.name,
        "seed": cfg.study.seed,
        "engine_options": dict(cfg.search.options),
        "epsilon": dict(cfg.search.epsilon) or None,
    }


def run_search(
    cfg: StudyConfig,
    *,
    train_if_missing: bool = True,
    progress: bool = True,
    data: DatasetSplits | None = None,
    model: nn.Module | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Front:
    """Load the data, build (or train) the model, and search; returns the front.

    Running it again resumes the study up to its budget.  The front is not written to a file
    (see :func:`front_path` and :meth:`paretoskip.Front.save`).
    """
    from .search import search

    data = data if data is not None else build_data(cfg)
    if model is None:
        model, metadata = build_model(
            cfg, train_if_missing=train_if_missing, progress=progress, data=data
        )
    else:
        check_checkpoint(cfg, metadata or {"architecture": _spec(model)}, data)
    evaluator = build_evaluator(cfg, model, data, metadata)
    try:
        return search(evaluator, progress=progress, **search_kwargs(cfg))
    except ParetoSkipError as exc:
        if isinstance(exc, ConfigError) and cfg.source not in str(exc):
            raise ConfigError(f"{cfg.source}: {exc}") from None
        raise


def _spec(model: nn.Module) -> dict[str, Any]:
    from .models import model_spec

    return model_spec(model)
