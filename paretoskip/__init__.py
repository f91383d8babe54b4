"""paretoskip: the Pareto front of skip configurations of residual networks."""

from __future__ import annotations

from . import models
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
from .evaluate import Evaluation, Evaluator, MeasureSettings, Metric
from .front import Front
from .models import create_model, list_models
from .search import search
from .space import SkipSpace

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
    "ParetoSkipError",
    "ConfigError",
    "DataNotFoundError",
    "CheckpointError",
    "MaskError",
    "StudyMismatchError",
    "BudgetError",
]
