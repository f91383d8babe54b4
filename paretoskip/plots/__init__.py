"""Figures of a search: objective pairs, hypervolume progress, unit frequency, fronts.

Every ``plot_*`` function writes one or more figures (PNG at 200 dpi and vector PDF by
default; SVG and EPS on request) and returns their paths.  Each has a ``build_*`` twin that
returns the :class:`matplotlib.figure.Figure` objects without saving them, so that a caller
(or a test) can inspect or restyle the Axes.

Figures are made without :mod:`matplotlib.pyplot`: each is a bare ``Figure`` with an Agg
canvas, so nothing is registered in pyplot's global state, the user's backend is left
alone, and nothing needs closing.  Importing this module does not import matplotlib.

Conventions shared by all figures:

* accuracy is shown in %, FLOPs in k/M/GFLOPs per image, parameters in k/M, latency and
  energy in s/ms/µs and J/mJ/µJ per batch (the batch size of the measurement);
* an energy axis says where the numbers come from, and says ``estimated`` when they are;
* an unavailable metric (NaN, source ``unavailable``) is never drawn as 0: a pair that needs
  it is replaced by a note giving the reason;
* colours are the Okabe–Ito palette (safe for colour-blind readers), and series also differ
  by marker and line style so that they survive greyscale printing;
* legends sit outside the axes, below them, so they never cover data.

One module per figure: :mod:`~paretoskip.plots.pairs` (objective pairs),
:mod:`~paretoskip.plots.hypervolume`, :mod:`~paretoskip.plots.units` (unit frequency) and
:mod:`~paretoskip.plots.fronts` (several fronts overlaid); axis labels and scales come from
the metric table (:mod:`paretoskip.metrics`).

Example:
    >>> import tempfile
    >>> from paretoskip import plots
    >>> front = plots.demo_front()                    # a small made-up front, no study
    >>> paths = plots.plot_fronts(front, tempfile.mkdtemp() + "/fronts", formats=("png",))
    >>> [p.suffix for p in paths]
    ['.png']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._axis import Axis, axis_for
from ._common import (
    COLORS,
    DPI,
    FORMATS,
    HV_SIZE,
    LINESTYLES,
    MARKERS,
    NOTE_SIZE,
    PAIR_SIZE,
    check_formats,
    safe_name,
    save_figure,
)
from .fronts import build_fronts, plot_fronts
from .hypervolume import build_hypervolume, hypervolume_curve, plot_hypervolume
from .pairs import build_pairs, plot_pairs
from .units import build_unit_frequency, plot_unit_frequency

if TYPE_CHECKING:
    from ..front import Front
    from ..study import StudyDB

__all__ = [
    "plot_pairs",
    "build_pairs",
    "plot_hypervolume",
    "build_hypervolume",
    "hypervolume_curve",
    "plot_unit_frequency",
    "build_unit_frequency",
    "plot_fronts",
    "build_fronts",
    "plot_study",
    "save_figure",
    "axis_for",
    "Axis",
    "demo_front",
    "COLORS",
    "MARKERS",
    "LINESTYLES",
    "DPI",
    "FORMATS",
    "PAIR_SIZE",
    "NOTE_SIZE",
    "HV_SIZE",
]

#: The name the axis helper had when this was one module.
_axis = axis_for


def plot_study(
    db: StudyDB,
    front: Front | None = None,
    out_dir: str | Path = "plots",
    *,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Every figure of one study in ``out_dir``, file names starting with the study name:
    ``<name>_<y>-vs-<x>``, ``<name>_hypervolume``, ``<name>_units``, and, when the front
    carries families of operating points (per-input gated or dual-mode sweeps),
    ``<name>_families`` (the static front and every family, accuracy against FLOPs) and
    ``<name>_families-test`` (the same against test accuracy)."""
    from ..front import Front

    check_formats(formats)
    if front is None:
        front = Front.from_study(db)
    out_dir = Path(out_dir)
    name = safe_name(db.name)
    paths = plot_pairs(db, front, out_dir, prefix=f"{name}_", formats=formats)
    paths += plot_hypervolume([db], out_dir / f"{name}_hypervolume", formats=formats)
    paths += plot_unit_frequency(front, out_dir / f"{name}_units", formats=formats)
    if front.families:
        y_axes = {"families": "accuracy", "families-test": "test_accuracy"}
        for stem, y in y_axes.items():
            x = "flops"
            if y == "test_accuracy" and not any(
                m.get("test_accuracy") is not None for m in front.members
            ):
                continue
            paths += plot_fronts(front, out_dir / f"{name}_{stem}", x=x, y=y, formats=formats)
    return paths


def demo_front() -> Front:
    """A small made-up front of a 3-unit model (for examples and trying figures out)."""
    from ..front import Front

    def member(mask: str, acc: float, flops: float, strict: bool = True) -> dict[str, Any]:
        metrics = {
            "accuracy": {"value": acc, "unit": "fraction", "source": "made-up"},
            "flops": {"value": flops, "unit": "FLOPs", "source": "made-up"},
        }
        return {"mask": mask, "metrics": metrics, "strict": strict, "test_accuracy": acc - 0.01}

    members = [member("000", 0.95, 3e6), member("010", 0.93, 2e6), member("011", 0.8, 1e6)]
    members.append(member("110", 0.78, 1.5e6, strict=False))
    return Front(
        {
            "schema_version": 1,
            "study": {"name": "demo", "engine": "made-up"},
            "space": {"units": ["layer1.0", "layer1.1", "layer2.0"], "locked": [], "groups": []},
            "objectives": [
                {"name": "accuracy", "direction": "maximize", "unit": "fraction"},
                {"name": "flops", "direction": "minimize", "unit": "FLOPs"},
            ],
            "reference": {"mask": "000", "metrics": members[0]["metrics"], "test_accuracy": 0.94},
            "members": members,
            "hypervolume": {"value": 0.0, "reference_point": {"accuracy": 0.0, "flops": 1.1}},
        }
    )
