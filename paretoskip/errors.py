"""Exception types raised by paretoskip.

Every error the library raises on bad input is a :class:`ParetoSkipError`, so a caller can
catch them all at once; the subclasses say which part of the input was wrong.
"""

from __future__ import annotations

__all__ = [
    "ParetoSkipError",
    "ConfigError",
    "DataNotFoundError",
    "CheckpointError",
    "MaskError",
    "StudyMismatchError",
    "BudgetError",
    "EnergyUnavailableError",
    "ExportError",
    "ExportCheckError",
]


class ParetoSkipError(Exception):
    """Base class of every error raised by paretoskip."""


class ConfigError(ParetoSkipError, ValueError):
    """A setting, name or argument has a value that is not accepted."""


class DataNotFoundError(ParetoSkipError, FileNotFoundError):
    """A dataset is not where it was looked for."""


class CheckpointError(ParetoSkipError, ValueError):
    """A checkpoint is missing, truncated, corrupted or does not match the architecture."""


class MaskError(ParetoSkipError, ValueError):
    """A skip mask does not fit its skip space."""


class StudyMismatchError(ParetoSkipError, ValueError):
    """A study database was reopened with a different model, space or objectives."""


class BudgetError(ParetoSkipError, ValueError):
    """No front member fits the requested run-time budget."""


class EnergyUnavailableError(ParetoSkipError, RuntimeError):
    """An energy counter was asked for but cannot be read on this machine."""


class ExportError(ParetoSkipError, RuntimeError):
    """A configuration could not be exported (e.g. the IREE compiler rejected the graph)."""


class ExportCheckError(ExportError):
    """An exported file does not compute what the masked model computes."""
