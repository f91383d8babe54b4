"""What every figure shares: palette, style, figures outside pyplot, files, legends, metric values."""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ._axis import Axis

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "COLORS",
    "MARKERS",
    "LINESTYLES",
    "DPI",
    "FULL_COLOR",
    "CLOUD_COLOR",
    "FORMATS",
    "PAIR_SIZE",
    "NOTE_SIZE",
    "HV_SIZE",
    "STYLE",
    "style",
    "new_figure",
    "file_stem",
    "check_formats",
    "save_figure",
    "safe_name",
    "value_of",
    "member_value",
    "sources_of",
    "batch_size_of",
    "minimised",
    "nondominated_2d",
    "staircase",
    "set_title",
    "legend_below",
    "relative_secondary",
]

#: Okabe & Ito (2008) colour-blind-safe palette, most distinct first.
COLORS = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow (last: weak on white)
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)))
DPI = 200
FULL_COLOR = "#D55E00"
CLOUD_COLOR = "#8C8C8C"
FORMATS = ("png", "pdf", "svg", "eps")
PAIR_SIZE = (5.6, 4.2)
NOTE_SIZE = (5.6, 1.9)
HV_SIZE = (5.6, 3.8)

STYLE = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.color": "#B0B0B0",
    "grid.alpha": 0.35,
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "axes.linewidth": 0.8,
    "lines.linewidth": 1.6,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # TrueType: editable text, accepted by journals
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "savefig.dpi": DPI,
}

# metric -> direction (units and scales are chosen from the values, see axis_for)


# -- matplotlib plumbing -----------------------------------------------------------------
@contextmanager
def style():
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def new_figure(size: tuple[float, float]) -> Figure:
    """A figure with an Agg canvas, outside pyplot (no global state, no backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.get_layout_engine().set(h_pad=0.06, w_pad=0.06, hspace=0.02, wspace=0.02)
    return fig


def file_stem(out: str | Path) -> Path:
    """``out`` without a figure extension: files are ``<stem>.<format>``."""
    path = Path(out)
    if path.suffix.lower().lstrip(".") in FORMATS:
        path = path.with_suffix("")
    return path


def check_formats(formats: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    out = tuple(f.lower().lstrip(".") for f in formats)
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise ConfigError(f"formats={list(formats)}: accepted are {', '.join(FORMATS)}")
    return out


def save_figure(
    fig: Figure, out: str | Path, formats: Iterable[str] = ("png", "pdf")
) -> list[Path]:
    """Write ``fig`` as ``<out>.<format>`` for each format (PNG at 200 dpi); return the paths."""
    stem = file_stem(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with style():
        for fmt in check_formats(formats):
            path = stem.with_name(f"{stem.name}.{fmt}")
            # no creation date in vector files: the same study gives the same bytes
            meta: dict[str, Any] = {"Creator": "paretoskip"}
            if fmt in ("pdf", "svg"):
                meta["CreationDate" if fmt == "pdf" else "Date"] = None
            fig.savefig(path, format=fmt, dpi=DPI, metadata=meta)
            paths.append(path)
    return paths


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "study"


# -- metrics and axis labels -------------------------------------------------------------
def value_of(metrics: Mapping[str, Any] | None, name: str) -> float:
    """A metric's value as float; NaN when missing or unavailable (never 0)."""
    if not metrics or name not in metrics:
        return math.nan
    v = metrics[name].get("value") if isinstance(metrics[name], Mapping) else metrics[name]
    if v is None:
        return math.nan
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v


def member_value(member: Mapping[str, Any], name: str) -> float:
    if name == "test_accuracy":
        v = member.get("test_accuracy")
        return math.nan if v is None else float(v)
    return value_of(member.get("metrics"), name)


def sources_of(metric_dicts: Iterable[Mapping[str, Any] | None], name: str) -> set[str]:
    out = set()
    for m in metric_dicts:
        if m and name in m and isinstance(m[name], Mapping):
            src = m[name].get("source")
            if src:
                out.add(str(src))
    return out


def batch_size_of(provenance: Mapping[str, Any] | None) -> int | None:
    prov = provenance or {}
    b = prov.get("batch_size") or (prov.get("settings") or {}).get("batch_size")
    return int(b) if b else None


def minimised(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    return points * signs


def nondominated_2d(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Indices of the non-dominated rows (weakly kept), ordered along the front."""
    if len(points) == 0:
        return np.zeros(0, dtype=int)
    y = minimised(points, directions)
    order = np.lexsort((y[:, 1], y[:, 0]))  # by first, then second (both minimised)
    keep = []
    best = math.inf
    for i in order:
        if y[i, 1] < best or (keep and np.all(y[i] == y[keep[-1]])):
            keep.append(i)
            best = min(best, y[i, 1])
    return np.array(keep, dtype=int)


def staircase(ax: Axes, xs: np.ndarray, ys: np.ndarray, **kw: Any) -> None:
    """The attainment boundary of a 2-D front (points given in front order)."""
    if len(xs) == 0:
        return
    ax.plot(xs, ys, drawstyle="steps-post", **kw)


def set_title(ax: Axes, text: str, **kw: Any) -> None:
    """A bold left-aligned title, in smaller type when it is long."""
    fig_w = ax.figure.get_figwidth()
    size = 10.5 if len(text) * 0.085 < fig_w else max(7.0, 10.5 * fig_w / (len(text) * 0.085))
    ax.set_title(text, loc="left", fontweight="bold", fontsize=size, **kw)


def legend_below(
    fig: Figure, handles: list, labels: list[str], ncols: int = 3, note: str | None = None
) -> None:
    """The legend under the axes (outside them: it never covers data), with an optional note
    as its title in small grey type."""
    if not handles:
        return
    kw: dict[str, Any] = {}
    if note:
        kw = {
            "title": textwrap.fill(note, int(fig.get_figwidth() * 18)),
            "title_fontproperties": {"size": 7.5},
            "alignment": "left",
        }
    leg = fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(ncols, len(handles)),
        handlelength=1.8,
        columnspacing=1.4,
        borderaxespad=0.2,
        **kw,
    )
    if note:
        leg.get_title().set_color("#555555")


def relative_secondary(ax: Axes, axis: Axis, which: str) -> None:
    """A second scale (top or right) in % of the full model, for a cost axis."""
    if axis.relative or not axis.is_cost:
        return
    ref = axis.reference * axis.scale
    if not math.isfinite(ref) or ref <= 0:
        return

    def fwd(v):
        return np.asarray(v, dtype=float) / ref * 100.0

    def inv(p):
        return np.asarray(p, dtype=float) * ref / 100.0

    if which == "x":
        sec = ax.secondary_xaxis("top", functions=(fwd, inv))
        sec.set_xlabel("% of full model", fontsize=8.5, color="#444444")
    else:
        sec = ax.secondary_yaxis("right", functions=(fwd, inv))
        sec.set_ylabel("% of full model", fontsize=8.5, color="#444444")
    sec.tick_params(labelsize=8, colors="#444444")
