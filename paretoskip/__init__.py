"""paretoskip: the Pareto front of skip configurations of residual networks."""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    BudgetError,
    CheckpointError,
    ConfigError,
    DataNotFoundError,
    MaskError,
    ParetoSkipError,
    StudyMismatchError,
)

# Everything else is imported when first used (PEP 562), so that `paretoskip --help` and
# the torch-free parts (front files, study databases) start without importing torch.
_LAZY: dict[str, tuple[str, str | None]] = {
    "models": (".models", None),
    "load_checkpoint": (".checkpoint", "load_checkpoint"),
    "save_checkpoint": (".checkpoint", "save_checkpoint"),
    "load_dataset": (".data", "load_dataset"),
    "Evaluation": (".evaluate", "Evaluation"),
    "Evaluator": (".evaluate", "Evaluator"),
    "MeasureSettings": (".evaluate", "MeasureSettings"),
    "Metric": (".evaluate", "Metric"),
    "Front": (".front", "Front"),
    "create_model": (".models", "create_model"),
    "list_models": (".models", "list_models"),
    "AdaptiveModel": (".runtime", "AdaptiveModel"),
    "search": (".search", "search"),
    "SkipSpace": (".space", "SkipSpace"),
    "train_model": (".train", "train_model"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'paretoskip' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """Importing the subpackage ``paretoskip.search`` binds it on the package; the public
    name ``paretoskip.search`` stays the function (as with an eager import)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "search" and isinstance(value, types.ModuleType):
            value = value.search
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # pragma: no cover
    from . import models
    from .checkpoint import load_checkpoint, save_checkpoint
    from .data import load_dataset
    from .evaluate import Evaluation, Evaluator, MeasureSettings, Metric
    from .front import Front
    from .models import create_model, list_models
    from .runtime import AdaptiveModel
    from .search import search
    from .space import SkipSpace
    from .train import train_model

__all__ = [
    "__version__",
    "models",
    "create_model",
    "list_models",
    "SkipSpace",
    "Evaluator",
    "Evaluation",
    "MeasureSettings",
    "Metric",
    "Front",
    "search",
    "AdaptiveModel",
    "load_dataset",
    "load_checkpoint",
    "save_checkpoint",
    "train_model",
    "ParetoSkipError",
    "ConfigError",
    "DataNotFoundError",
    "CheckpointError",
    "MaskError",
    "StudyMismatchError",
    "BudgetError",
]
