"""paretoskip: the Pareto front of skip configurations of residual networks."""

from __future__ import annotations

from . import models
from .errors import (
    BudgetError,
    CheckpointError,
    ConfigError,
    DataNotFoundError,
    MaskError,
    ParetoSkipError,
    StudyMismatchError,
)
from .models import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "models",
    "create_model",
    "list_models",
    "ParetoSkipError",
    "ConfigError",
    "DataNotFoundError",
    "CheckpointError",
    "MaskError",
    "StudyMismatchError",
    "BudgetError",
]
