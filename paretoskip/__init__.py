"""paretoskip: the Pareto front of skip configurations of residual networks."""

from __future__ import annotations

from . import models
from ._version import __version__
from .checkpoint import load_checkpoint, save_checkpoint
from .data import load_dataset
from .errors import (
    BudgetError,
    CheckpointError,
    ConfigError,
    DataNotFoundError,
    MaskError,
    ParetoSkipError,
    StudyMismatchError,
)
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
