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
    "describe_failure",
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


def describe_failure(exc: BaseException) -> str | None:
    """One line for a failure a user can cause that is not a :class:`ParetoSkipError` (a
    storage that cannot be reached or written, a full disk, a missing permission, a damaged
    compressed file), or None for anything else (a bug: its traceback is what helps).

    Example:
        >>> import errno
        >>> describe_failure(OSError(errno.ENOSPC, "No space left on device", "front.json"))
        'cannot write front.json: the disk is full (no space left on device); free some space and run again (finished evaluations are kept)'
        >>> describe_failure(ZeroDivisionError()) is None
        True
    """
    import errno
    import zlib

    from .storage import describe_storage_error

    message = describe_storage_error(exc)
    if message is not None:
        return message
    if isinstance(exc, OSError) and exc.errno is not None:
        what = f" {exc.filename}" if exc.filename else ""
        reason = (exc.strerror or str(exc)).lower()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (
                f"cannot write{what}: the disk is full ({reason}); free some space and run "
                "again (finished evaluations are kept)"
            )
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"cannot write{what}: {reason}; make it writable or choose another place"
        if exc.errno == errno.ENOENT and exc.filename:
            return f"{exc.filename} does not exist; check the path"
    if isinstance(exc, (zlib.error, EOFError)):
        return (
            f"a compressed data file is damaged ({type(exc).__name__}: {exc}); delete it so "
            "that it is downloaded again, or restore it"
        )
    return None
