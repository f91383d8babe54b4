"""Study files: one TOML document describing a whole search.

A study file names the model (and how to train it when its checkpoint is missing), the
dataset and its split, the skip space, the search (engine, budget, objectives,
constraints) and how costs are measured.  :func:`load_study_config` reads and validates it;
every error is a :class:`~paretoskip.errors.ConfigError` that names the file, the dotted
key (``search.engine``) and the accepted values.

:data:`MINIMAL_STUDY` is a small complete study (``studies/digits-resnet20.toml``, the
default one, is the same with every section commented).  A study file is turned into data,
a model, an evaluator and a search by :mod:`paretoskip.pipeline`.

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
    ``name`` (*required*, see :func:`paretoskip.list_models`) or ``factory`` (instead of
    ``name``: ``"package.module:function"`` returning your own model, see
    :func:`paretoskip.models.make_skippable`; the module is imported from the Python path or
    the working directory), ``kwargs`` (table of extra
    :func:`~paretoskip.create_model` arguments, e.g. ``shortcut = "B"``),
    ``checkpoint`` (default ``studies/checkpoints/<name>``).
``[model.train]``
    How to train the model when its checkpoint is missing; without this table (or with
    ``enabled = false``) the checkpoint must exist.  ``recipe`` (``stochastic-depth`` or
    ``plain``), ``epochs``, ``batch_size``, ``lr``, ``momentum``, ``weight_decay``,
    ``p_last``, ``seed`` (default: ``study.seed``), ``augment``, and every other keyword of
    :func:`paretoskip.train.train_model` (``nesterov``, ``schedule``, ``milestones``,
    ``recipe_options``, ...).
``[data]``
    ``name`` (*required*, see :data:`paretoskip.data.DATASETS`), ``root``,
    ``split_seed`` (default 0), ``val_size``, ``test_size`` (fractions or counts),
    ``limit``, ``input_size``.
``[space]``
    ``locked`` (units never skipped), ``groups`` (lists of units skipped together).
``[search]``
    ``engine`` (default ``surrogate``, see :data:`paretoskip.search.ENGINES`),
    ``budget`` (distinct masks, the full model included), ``timeout`` (seconds per call),
    ``objectives`` (default ``["accuracy", "flops"]``), ``constraints``
    (e.g. ``["accuracy >= 0.9", "flops <= 60%"]``), ``options`` (engine settings table,
    e.g. ``pop_size = 24``), ``epsilon`` (per-objective width of the near-Pareto band),
    ``fidelity`` (``"full"``, the default, or ``"multi"``: screen candidates on a stratified
    validation subset first, see :func:`paretoskip.search`) with ``screen_fraction``
    (default 0.8), ``screen_k`` (default 2) and ``screen_rungs`` (default 5).
``[measure]``
    ``latency`` (bool), ``batch_size``, ``repeats``, ``warmup``, ``threads``, ``energy``
    (one of :data:`paretoskip.energy.ENERGY_BACKENDS`), ``energy_seconds``,
    ``eval_batch`` (images per chunk, or ``"auto"``), ``memory_mb``, ``device`` (``"cpu"``,
    ``"cuda"`` or ``"cuda:N"``), ``cudnn_benchmark``: the fields of
    :class:`paretoskip.MeasureSettings`.

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
from typing import Any

from .errors import ConfigError
from .evaluate import MeasureSettings
from .storage import StorageLocation

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
    "DEFAULT_STUDY",
    "MINIMAL_STUDY",
]

log = logging.getLogger(__name__)

#: The study ``paretoskip run`` uses when none is given (relative to the working directory).
DEFAULT_STUDY = "studies/digits-resnet20.toml"

#: A small complete study: ResNet-20 with stochastic depth on 8x8 digits, NSGA-II.
MINIMAL_STUDY = """\
[study]
name = "digits-resnet20"

[model]
name = "resnet20"

[model.train]
recipe = "stochastic-depth"
epochs = 30
p_last = 0.5

[data]
name = "digits"

[search]
engine = "pymoo-nsga2"
budget = 200
objectives = ["accuracy", "flops"]
"""

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
    #: every other keyword of :func:`paretoskip.train.train_model` the table sets
    #: (``nesterov``, ``schedule``, ``milestones``, ``recipe_options``, ...)
    extra: dict[str, Any] = field(default_factory=dict)

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
            **self.extra,
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
    engine: str = "surrogate"
    budget: int | None = None
    timeout: float | None = None
    objectives: tuple[str, ...] = ("accuracy", "flops")
    constraints: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    epsilon: dict[str, float] = field(default_factory=dict)
    fidelity: str = "full"
    screen_fraction: float | None = None
    screen_k: float | None = None
    screen_rungs: int | None = None


class MeasureSection(MeasureSettings):
    """The ``[measure]`` table: :class:`paretoskip.MeasureSettings` itself (same fields,
    defaults and checks), read from a study file."""

    def settings(self) -> MeasureSettings:
        """These settings as a plain :class:`paretoskip.MeasureSettings`."""
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
    def location(self) -> StorageLocation:
        """The storage, parsed (see :mod:`paretoskip.storage`); creates nothing."""
        return StorageLocation.parse(self.study.storage, self.name)

    @property
    def storage_url(self) -> str:
        """The storage as Optuna opens it (a URL, or a journal file's path)."""
        return self.location.url

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else "<study config>"

    def replace(self, **overrides: Any) -> StudyConfig:
        """A copy with command-line overrides applied and validated.

        Accepted: ``budget``, ``engine``, ``timeout``, ``storage``, ``seed``, ``device``
        (``measure.device``), ``fidelity``, ``screen_fraction``, ``screen_k``,
        ``screen_rungs``.  Changing the
        engine drops ``search.options`` (they belong to the engine named in the file).
        """
        study, search, measure = self.study, self.search, self.measure
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
            elif key == "device":
                _check_device(value, "measure.device", where)
                measure = dataclasses.replace(measure, device=value.strip())
            elif key == "fidelity":
                search = dataclasses.replace(search, fidelity=value)
                if value == "full":  # the file's screening settings do not apply
                    search = dataclasses.replace(
                        search, screen_fraction=None, screen_k=None, screen_rungs=None
                    )
            elif key in ("screen_fraction", "screen_k", "screen_rungs"):
                search = dataclasses.replace(search, **{key: value})
            else:
                raise ConfigError(
                    f"cannot override {key!r}; accepted: budget, engine, timeout, storage, "
                    "seed, device, fidelity, screen_fraction, screen_k, screen_rungs"
                )
        _check_fidelity(search, study.seed, where)
        return dataclasses.replace(self, study=study, search=search, measure=measure)


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
        "factory": (lambda v: isinstance(v, str), "a string 'package.module:function'"),
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
        "fidelity": (lambda v: isinstance(v, str), 'a string ("full" or "multi")'),
        "screen_fraction": (_is_number, "a number in (0, 1)"),
        "screen_k": (_is_number, "a number >= 0"),
        "screen_rungs": (_is_int, "an integer >= 1"),
    },
    "measure": {},  # filled from MeasureSettings below
}
_REQUIRED = {"data": ("name",)}  # and model.name or model.factory
_FREE_TABLES = {
    "model.kwargs",
    "model.train.recipe_options",
    "search.options",
    "search.epsilon",
}

# [measure] takes exactly the fields of MeasureSettings, checked by their annotated type
_BY_TYPE: dict[str, tuple[Callable[[Any], bool], str]] = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (_is_int, "an integer"),
    "int | None": (_is_int, "an integer"),
    "int | str": (lambda v: _is_int(v) or isinstance(v, str), 'an integer or "auto"'),
    "float": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
}

# [model.train] also takes every other keyword of train_model, checked by its annotated type
_TRAIN_NOT_IN_FILE = ("progress", "model_kwargs", "state_path")
_TRAIN_EXTRA: dict[str, Any] | None = None


def _by_annotation(text: str) -> tuple[Callable[[Any], bool], str]:
    if text.strip() in _BY_TYPE:  # a union with its own check
        return _BY_TYPE[text.strip()]
    head = text.split("|")[0].strip()
    if head.startswith(("tuple", "list", "Sequence")):
        return (lambda v: isinstance(v, list) and all(map(_is_number, v)), "a list of numbers")
    if head.startswith(("Mapping", "dict")):
        return (lambda v: isinstance(v, dict), "a table")
    return _BY_TYPE.get(head, ((lambda v: True), "a value"))


_SCHEMA["measure"] = {
    f.name: _by_annotation(str(f.type)) for f in dataclasses.fields(MeasureSettings)
}


def _train_schema() -> dict[str, Any]:
    """The checkers of [model.train]: the fixed ones above, then train_model's keywords."""
    global _TRAIN_EXTRA
    if _TRAIN_EXTRA is None:
        import inspect

        from .train import train_model

        fixed = _SCHEMA["model"]["train"]
        _TRAIN_EXTRA = {
            name: _by_annotation(str(p.annotation))
            for name, p in inspect.signature(train_model).parameters.items()
            if p.kind is p.KEYWORD_ONLY and name not in fixed and name not in _TRAIN_NOT_IN_FILE
        }
        fixed.update(_TRAIN_EXTRA)
    return _TRAIN_EXTRA


_FLOAT_FIELDS = {f.name for f in dataclasses.fields(MeasureSettings) if str(f.type) == "float"}


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


def _check_device(value: Any, key: str, where: str) -> None:
    """A device name's form (whether this machine has it is checked where it is used)."""
    if not isinstance(value, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", value.strip()):
        raise ConfigError(
            f"{where}: {key}={value!r}; accepted: 'cpu', 'cuda' or 'cuda:N' (N a GPU index)"
        )


def _check_choice(value: str, accepted: Any, key: str, where: str, what: str = "") -> None:
    accepted = list(accepted)
    if value not in accepted:
        hint = _suggest(value, accepted)
        raise ConfigError(
            f"{where}: {key}: unknown {what or key.rsplit('.', 1)[-1]} {value!r}; {hint}"
            f"accepted: {', '.join(accepted)}"
        )


def _check_fidelity(search: SearchSection, seed: int, where: str) -> None:
    """Refuse a bad ``search.fidelity`` / ``screen_*`` setting, naming the key."""
    from .metrics import parse_objectives
    from .search import make_fidelity

    try:
        fid = make_fidelity(
            search.fidelity,
            engine=search.engine,
            screen_fraction=search.screen_fraction,
            screen_k=search.screen_k,
            screen_rungs=search.screen_rungs,
            seed=seed,
        )
        fid.check(parse_objectives(search.objectives))
    except ConfigError as exc:
        raise ConfigError(f"{where}: search: {exc}") from None


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


def toml_module() -> Any:
    """The standard library's ``tomllib`` (Python 3.11+) or, on Python 3.10, ``tomli``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                "reading TOML on Python 3.10 needs the 'tomli' package: pip install tomli"
            ) from None
    return tomllib


def _read_toml(path: Path) -> dict[str, Any]:
    tomllib = toml_module()
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
    train_extra = _train_schema()
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

    m = doc.get("model", {})
    if ("name" in m) == ("factory" in m):
        raise ConfigError(
            f"{where}: "
            + (
                "give model.name or model.factory, not both"
                if m
                else "missing required key 'model.name' (a registered model, see "
                "`paretoskip info`) or 'model.factory' ('package.module:function' building "
                "your own model)"
            )
        )
    if "factory" in m:
        from .models._byo import is_factory_reference

        if not is_factory_reference(m["factory"]):
            raise ConfigError(
                f"{where}: model.factory={m['factory']!r}: write 'package.module:function' "
                "(importable from the working directory or the Python path)"
            )
        m = {**m, "name": m["factory"]}
    else:
        _check_choice(m["name"], list_models(), "model.name", where, "model")
    kwargs = dict(m.get("kwargs", {}))
    from .models import CONTRACT_ARGS, RECIPE_ARGS

    for reserved in CONTRACT_ARGS:
        if reserved in kwargs:
            src = f"model.train.{reserved}" if reserved in RECIPE_ARGS else "the dataset"
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
            extra={k: v for k, v in t.items() if k in train_extra},
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
    from .metrics import METRICS, Constraint, objective_names

    se = doc.get("search", {})
    search = SearchSection(
        engine=se.get("engine", "surrogate"),
        budget=se.get("budget"),
        timeout=float(se["timeout"]) if "timeout" in se else None,
        objectives=tuple(se.get("objectives", ("accuracy", "flops"))),
        constraints=tuple(se.get("constraints", ())),
        options=dict(se.get("options", {})),
        epsilon=dict(se.get("epsilon", {})),
        fidelity=se.get("fidelity", "full"),
        screen_fraction=se.get("screen_fraction"),
        screen_k=se.get("screen_k"),
        screen_rungs=se.get("screen_rungs"),
    )
    from .search import ENGINES, engine_spec, make_engine

    _check_choice(search.engine, ENGINES, "search.engine", where, "engine")
    if search.budget is not None:
        _check_int(search.budget, "search.budget", where, minimum=1)
    if search.timeout is not None:
        _check_positive(search.timeout, "search.timeout", where)
    for i, o in enumerate(search.objectives):
        _check_choice(o, objective_names(), f"search.objectives[{i}]", where, "objective")
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
    accepted = list(engine_spec(search.engine).options)
    for k in search.options:
        if k not in accepted:
            raise ConfigError(
                f"{where}: search.options.{k}: engine {search.engine!r} does not take {k!r}; "
                f"{_suggest(k, accepted, 'search.options.')}accepted: {', '.join(accepted) or 'none'}"
            )
    try:
        make_engine(search.engine, seed, **search.options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: search.options: {exc}") from None
    except TypeError as exc:
        raise ConfigError(
            f"{where}: search.options: bad settings for engine {search.engine!r}: {exc}"
        ) from None
    _check_fidelity(search, seed, where)

    # [measure]
    from .energy import ENERGY_BACKENDS

    me = doc.get("measure", {})
    measure_args = {k: (float(v) if k in _FLOAT_FIELDS else v) for k, v in me.items()}
    defaults = MeasureSettings()
    m_get = lambda key: measure_args.get(key, getattr(defaults, key))  # noqa: E731
    _check_choice(m_get("energy"), ENERGY_BACKENDS, "measure.energy", where, "energy backend")
    for key in ("batch_size", "repeats"):
        _check_int(m_get(key), f"measure.{key}", where, minimum=1)
    if m_get("eval_batch") != "auto" and (
        not _is_int(m_get("eval_batch")) or m_get("eval_batch") < 1
    ):
        raise ConfigError(
            f"{where}: measure.eval_batch={m_get('eval_batch')!r}; accepted: an integer >= 1 "
            'or "auto" (the default)'
        )
    _check_int(m_get("warmup"), "measure.warmup", where, minimum=0)
    if m_get("threads") is not None:
        _check_int(m_get("threads"), "measure.threads", where, minimum=1)
    _check_positive(m_get("memory_mb"), "measure.memory_mb", where)
    if m_get("energy_seconds") < 0:
        raise ConfigError(f"{where}: measure.energy_seconds must be >= 0")
    _check_device(m_get("device"), "measure.device", where)
    if m_get("latency") and m_get("repeats") < 2:
        raise ConfigError(
            f"{where}: measure.repeats={m_get('repeats')}: latency needs at least 2 repeats"
        )
    measure = MeasureSection(**measure_args)
    choices = {"energy": ENERGY_BACKENDS}  # the [measure] keys with named values
    needed = [(f"search.objectives[{i}]", o) for i, o in enumerate(search.objectives)]
    needed += [(f"search.constraints[{i}]", c.metric) for i, c in enumerate(constraints)]
    for key, name in needed:
        needs = METRICS[name].needs
        if needs is None or needs.met_by(measure):
            continue
        if isinstance(needs.off, bool):
            accepted = "true"
        else:
            named = [c for c in choices.get(needs.setting, ()) if c != needs.off]
            accepted = f"one of {', '.join(named)} (see `paretoskip info`)"
        raise ConfigError(f"{where}: {key}: {name!r} needs measure.{needs.setting} = {accepted}")

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
