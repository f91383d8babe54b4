"""Progress bars (tqdm) that cost nothing when switched off.

Example:
    >>> from paretoskip.progress import progress_bar
    >>> bar = progress_bar(3, enabled=False)
    >>> bar.update(2); bar.n
    2
    >>> bar.close()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["progress_bar", "NullBar"]


@dataclass
class NullBar:
    """A progress bar that shows nothing (it counts, like tqdm's ``n``)."""

    n: int = 0
    total: int | None = None

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(
    total: int,
    enabled: bool,
    *,
    desc: str = "evaluating",
    unit: str = "mask",
    initial: int = 0,
    leave: bool = False,
) -> Any:
    """A tqdm bar of ``total`` steps, or a :class:`NullBar` when not ``enabled``."""
    if not enabled:
        return NullBar(initial, total)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave)
