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

Example:
    >>> from paretoskip.study import StudyDB
    >>> from paretoskip import plots
    >>> db = StudyDB.load("studies/digits-resnet20.db")          # doctest: +SKIP
    >>> plots.plot_study(db, None, "plots/")                     # doctest: +SKIP
    [PosixPath('plots/digits-resnet20_accuracy-vs-flops.png'), ...]
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .front import Front
    from .study import StudyDB

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
    "COLORS",
    "DPI",
]

log = logging.getLogger(__name__)

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

_STYLE = {
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

# metric -> direction (units and scales are chosen from the values, see _axis)
_DIRECTIONS = {
    "accuracy": "maximize",
    "test_accuracy": "maximize",
    "flops": "minimize",
    "params": "minimize",
    "latency": "minimize",
    "latency_ratio": "minimize",
    "energy": "minimize",
}
_COSTS = ("flops", "params", "latency", "energy")


# -- matplotlib plumbing -----------------------------------------------------------------
@contextmanager
def _style():
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        yield


def _figure(size: tuple[float, float]) -> Figure:
    """A figure with an Agg canvas, outside pyplot (no global state, no backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.get_layout_engine().set(h_pad=0.06, w_pad=0.06, hspace=0.02, wspace=0.02)
    return fig


def _stem(out: str | Path) -> Path:
    """``out`` without a figure extension: files are ``<stem>.<format>``."""
    path = Path(out)
    if path.suffix.lower().lstrip(".") in FORMATS:
        path = path.with_suffix("")
    return path


def _formats(formats: Iterable[str] | str) -> tuple[str, ...]:
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
    stem = _stem(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with _style():
        for fmt in _formats(formats):
            path = stem.with_name(f"{stem.name}.{fmt}")
            # no creation date in vector files: the same study gives the same bytes
            meta: dict[str, Any] = {"Creator": "paretoskip"}
            if fmt in ("pdf", "svg"):
                meta["CreationDate" if fmt == "pdf" else "Date"] = None
            fig.savefig(path, format=fmt, dpi=DPI, metadata=meta)
            paths.append(path)
    return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "study"


# -- metrics and axis labels -------------------------------------------------------------
def _value(metrics: Mapping[str, Any] | None, name: str) -> float:
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


def _member_value(member: Mapping[str, Any], name: str) -> float:
    if name == "test_accuracy":
        v = member.get("test_accuracy")
        return math.nan if v is None else float(v)
    return _value(member.get("metrics"), name)


def _sources(metric_dicts: Iterable[Mapping[str, Any] | None], name: str) -> set[str]:
    out = set()
    for m in metric_dicts:
        if m and name in m and isinstance(m[name], Mapping):
            src = m[name].get("source")
            if src:
                out.add(str(src))
    return out


def _batch_size(provenance: Mapping[str, Any] | None) -> int | None:
    prov = provenance or {}
    b = prov.get("batch_size") or (prov.get("settings") or {}).get("batch_size")
    return int(b) if b else None


_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))
_SUB = ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))


def _si_up(m: float) -> tuple[float, str]:
    for factor, prefix in _SI:
        if m >= factor:
            return factor, prefix
    return 1.0, ""


def _si_down(m: float) -> tuple[float, str]:
    for factor, prefix in _SUB:
        if m >= factor:
            return factor, prefix
    return _SUB[-1]


@dataclass(frozen=True)
class _Axis:
    """How one metric is shown: ``shown = value * scale`` (or % of the full model)."""

    name: str
    label: str
    scale: float
    direction: str
    reference: float = math.nan  # the full model's value (raw)
    relative: bool = False

    def show(self, values: np.ndarray | float) -> np.ndarray:
        v = np.asarray(values, dtype=float)
        if self.relative:
            return v / self.reference * 100.0
        return v * self.scale

    @property
    def is_cost(self) -> bool:
        return self.direction == "minimize"


def _axis(
    name: str,
    values: np.ndarray,
    *,
    reference: float = math.nan,
    sources: set[str] = frozenset(),
    batch: int | None = None,
    relative: bool = False,
) -> _Axis:
    vals = np.asarray(values, dtype=float)
    finite = np.abs(vals[np.isfinite(vals)])
    if math.isfinite(reference):
        finite = np.append(finite, abs(reference))
    m = float(finite.max()) if len(finite) else 1.0
    per_batch = f"per batch of {batch}" if batch else "per batch"
    direction = _DIRECTIONS.get(name, "minimize")
    estimated = any(s.startswith("estimated") for s in sources)
    measured = sorted(s.split(":", 1)[1] for s in sources if s.startswith("measured:"))
    if relative and name not in ("accuracy", "test_accuracy") and math.isfinite(reference):
        what = {
            "flops": "FLOPs",
            "params": "Parameters",
            "latency": "Latency",
            "energy": "Energy",
        }.get(name, name)
        label = f"{what} (% of full model)"
        if name == "energy" and estimated:
            label = "Energy (% of full model)\n(estimated)"
        return _Axis(name, label, 1.0, direction, reference, relative=True)
    if name in ("accuracy", "test_accuracy"):
        split = "Test" if name == "test_accuracy" else "Validation"
        return _Axis(name, f"{split} accuracy (%)", 100.0, direction, reference)
    if name == "flops":
        factor, prefix = _si_up(m)
        return _Axis(name, f"Compute ({prefix}FLOPs per image)", 1.0 / factor, direction, reference)
    if name == "params":
        factor, prefix = _si_up(m)
        unit = f" ({prefix})" if prefix else ""
        return _Axis(name, f"Parameters{unit}", 1.0 / factor, direction, reference)
    if name == "latency":
        factor, prefix = _si_down(m)
        return _Axis(name, f"Latency ({prefix}s {per_batch})", 1.0 / factor, direction, reference)
    if name == "latency_ratio":
        return _Axis(name, "Latency (× full model)", 1.0, direction, reference)
    if name == "energy":
        factor, prefix = _si_down(m)
        if estimated:
            how = "\n(estimated)"
        elif measured:
            how = "\n(measured: " + ", ".join(measured).upper() + ")"
        else:
            how = ""
        return _Axis(
            name, f"Energy ({prefix}J {per_batch}){how}", 1.0 / factor, direction, reference
        )
    return _Axis(name, name, 1.0, direction, reference)


def _minimised(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    return points * signs


def _nondominated_2d(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Indices of the non-dominated rows (weakly kept), ordered along the front."""
    if len(points) == 0:
        return np.zeros(0, dtype=int)
    y = _minimised(points, directions)
    order = np.lexsort((y[:, 1], y[:, 0]))  # by first, then second (both minimised)
    keep = []
    best = math.inf
    for i in order:
        if y[i, 1] < best or (keep and np.all(y[i] == y[keep[-1]])):
            keep.append(i)
            best = min(best, y[i, 1])
    return np.array(keep, dtype=int)


def _staircase(ax: Axes, xs: np.ndarray, ys: np.ndarray, **kw: Any) -> None:
    """The attainment boundary of a 2-D front (points given in front order)."""
    if len(xs) == 0:
        return
    ax.plot(xs, ys, drawstyle="steps-post", **kw)


def _title(ax: Axes, text: str, **kw: Any) -> None:
    """A bold left-aligned title, in smaller type when it is long."""
    fig_w = ax.figure.get_figwidth()
    size = 10.5 if len(text) * 0.085 < fig_w else max(7.0, 10.5 * fig_w / (len(text) * 0.085))
    ax.set_title(text, loc="left", fontweight="bold", fontsize=size, **kw)


def _legend_below(
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


def _relative_secondary(ax: Axes, axis: _Axis, which: str) -> None:
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


# -- study data --------------------------------------------------------------------------
@dataclass
class _StudyData:
    name: str
    metrics: list[Mapping[str, Any]]  # one per distinct evaluated mask
    feasible: np.ndarray
    reference: Mapping[str, Any]
    objectives: tuple[Any, ...]
    constraints: tuple[Any, ...]
    provenance: Mapping[str, Any]


def _study_data(db: StudyDB) -> _StudyData:
    ref = db.reference()
    if ref is None:
        raise ConfigError(
            f"study {db.name!r} has no reference (full model) evaluation yet; run the search first"
        )
    seen: dict[str, tuple[Mapping[str, Any], bool]] = {}
    for t in db.trials():
        mask = t.user_attrs.get("mask")
        metrics = t.user_attrs.get("metrics")
        if mask is None or metrics is None or mask in seen:
            continue
        feasible = not any(c > 0 for c in (t.constraints or {}).values())
        seen[mask] = (metrics, feasible)
    return _StudyData(
        name=db.name,
        metrics=[m for m, _ in seen.values()],
        feasible=np.array([f for _, f in seen.values()], dtype=bool),
        reference=ref["metrics"],
        objectives=db.objectives,
        constraints=db.constraints,
        provenance=db.meta.get("provenance", {}),
    )


def _pairs(data: _StudyData, extra: bool) -> list[tuple[str, str]]:
    """(x, y) metric pairs: every pair of objectives, then accuracy against other costs."""
    names = [o.name for o in data.objectives]
    out = []
    for a, b in itertools.combinations(names, 2):
        out.append((a, b) if a != "accuracy" else (b, a))  # accuracy always on y
    if extra and "accuracy" in names:
        for cost in _COSTS:
            if cost not in names and cost in data.reference:
                out.append((cost, "accuracy"))
    return out


def _unavailable_reason(data: _StudyData, name: str, values: np.ndarray) -> str | None:
    if np.isfinite(values).any():
        return None
    ref = data.reference.get(name) or {}
    reason = ref.get("reason")
    if not reason:
        for m in data.metrics:
            reason = (m.get(name) or {}).get("reason")
            if reason:
                break
    source = ref.get("source", "unavailable")
    return f"{name} is {source}" + (f": {reason}" if reason else "")


def _member_points(members: Iterable[Mapping[str, Any]], x: str, y: str) -> np.ndarray:
    """(x, y) of front members, those lacking either value left out (never set to 0)."""
    p = np.array(
        [[_member_value(m, x), _member_value(m, y)] for m in members], dtype=float
    ).reshape(-1, 2)
    return p[np.all(np.isfinite(p), axis=1)]


def build_pairs(
    db: StudyDB, front: Front | None = None, *, extra: bool = True
) -> dict[str, Figure]:
    """The figures of :func:`plot_pairs`, keyed by file stem (``"accuracy-vs-flops"``).

    A pair whose metric was not measured at all (energy without a counter) gives a note
    figure (stem ending in ``_unavailable``) saying why, with no axes and no points.
    """
    from .front import Front

    if front is None:
        front = Front.from_study(db)
    data = _study_data(db)
    figs: dict[str, Figure] = {}
    with _style():
        for xname, yname in _pairs(data, extra):
            stem = f"{yname}-vs-{xname}"
            raw = {
                n: np.array([_value(m, n) for m in data.metrics], dtype=float)
                for n in (xname, yname)
            }
            reasons = [r for n in (xname, yname) if (r := _unavailable_reason(data, n, raw[n]))]
            if reasons:
                hint = " or ask for energy='estimated'" if "energy" in (xname, yname) else ""
                figs[f"{stem}_unavailable"] = _note_figure(
                    f"{db.name}: {yname} vs {xname} not drawn",
                    " ".join(reasons) + ". An unmeasured value is never plotted as 0; "
                    f"measure it where a counter is readable{hint}.",
                )
                log.info("%s: %s vs %s not drawn: %s", db.name, yname, xname, "; ".join(reasons))
                continue
            figs[stem] = _pair_figure(data, front, xname, yname, raw)
    return figs


def _pair_figure(
    data: _StudyData, front: Front, xname: str, yname: str, raw: Mapping[str, np.ndarray]
) -> Figure:
    from matplotlib.lines import Line2D

    batch = _batch_size(data.provenance)
    ax_x, ax_y = (
        _axis(
            n,
            np.concatenate([raw[n], [_member_value(m, n) for m in front.members]]),
            reference=_value(data.reference, n),
            sources=_sources([*data.metrics, data.reference], n),
            batch=batch,
        )
        for n in (xname, yname)
    )
    fig = _figure(PAIR_SIZE)
    ax = fig.add_subplot()
    entries: list[tuple[int, Any, str]] = []  # (legend rank, handle, label)

    ok = np.isfinite(raw[xname]) & np.isfinite(raw[yname])
    many = bool(ok.sum() > 2000)  # rasterise big clouds: PDFs stay small
    for mask, marker, label, rank in (
        (ok & data.feasible, "o", "evaluated", 3),
        (ok & ~data.feasible, "x", "infeasible", 4),
    ):
        if rank == 4 and not mask.any():
            continue
        h = ax.scatter(
            ax_x.show(raw[xname][mask]),
            ax_y.show(raw[yname][mask]),
            s=12 if marker == "o" else 14,
            marker=marker,
            color=CLOUD_COLOR,
            alpha=0.4 if marker == "o" else 0.55,
            linewidths=0 if marker == "o" else 0.8,
            rasterized=many,
            zorder=1,
        )
        entries.append((rank, h, f"{label} ({int(mask.sum())})"))

    color = COLORS[0]
    band = _member_points([m for m in front.members if not m.get("strict")], xname, yname)
    if len(band):
        h = ax.scatter(
            ax_x.show(band[:, 0]),
            ax_y.show(band[:, 1]),
            s=30,
            facecolors="white",
            edgecolors=color,
            linewidths=1.1,
            zorder=3,
        )
        entries.append((1, h, f"near-Pareto band ({len(band)})"))
    strict = _member_points([m for m in front.members if m.get("strict")], xname, yname)
    if len(strict):
        order = _nondominated_2d(strict, [ax_x.direction, ax_y.direction])
        _staircase(
            ax,
            ax_x.show(strict[order, 0]),
            ax_y.show(strict[order, 1]),
            color=color,
            lw=1.4,
            alpha=0.9,
            zorder=4,
        )
        ax.scatter(
            ax_x.show(strict[:, 0]),
            ax_y.show(strict[:, 1]),
            s=30,
            color=color,
            edgecolors="white",
            linewidths=0.5,
            zorder=5,
        )
        h = Line2D(
            [],
            [],
            color=color,
            marker="o",
            markersize=5.5,
            markeredgecolor="white",
            markeredgewidth=0.5,
        )
        entries.append((0, h, f"Pareto front ({len(strict)})"))
    rx, ry = _value(data.reference, xname), _value(data.reference, yname)
    if math.isfinite(rx) and math.isfinite(ry):
        h = ax.scatter(
            ax_x.show(rx),
            ax_y.show(ry),
            s=190,
            marker="*",
            color=FULL_COLOR,
            edgecolors="black",
            linewidths=0.6,
            zorder=6,
        )
        entries.append((2, h, "full model"))
    reference = {k: _value(data.reference, k) for k in data.reference}
    for c in data.constraints:
        for axis, line in ((ax_x, ax.axvline), (ax_y, ax.axhline)):
            if c.metric != axis.name:
                continue
            try:
                bound = float(c.bound(reference))
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(bound):
                h = line(float(axis.show(bound)), color="#555555", ls="--", lw=1.0, zorder=2)
                entries.append((5, h, f"constraint {c}"))

    ax.set_xlabel(ax_x.label)
    ax.set_ylabel(ax_y.label)
    _title(ax, data.name)
    _relative_secondary(ax, ax_x, "x")
    _relative_secondary(ax, ax_y, "y")
    notes = []
    objective_names = [o.name for o in data.objectives]
    if {xname, yname} != set(objective_names):
        notes.append(
            "front: non-dominated in (" + ", ".join(objective_names) + "); "
            "line: its members non-dominated in this plane"
        )
    n_missing = int((~ok).sum())
    if n_missing:
        notes.append(f"{n_missing} evaluations lack {xname} or {yname} (not shown)")
    entries.sort(key=lambda e: e[0])
    _legend_below(
        fig, [e[1] for e in entries], [e[2] for e in entries], note="; ".join(notes) or None
    )
    return fig


def _note_figure(title: str, text: str) -> Figure:
    fig = _figure(NOTE_SIZE)
    fig.text(0.03, 0.9, title, fontsize=11, fontweight="bold", va="top", ha="left")
    fig.text(
        0.03,
        0.68,
        textwrap.fill(text, 92),
        fontsize=8,
        va="top",
        ha="left",
        color="#333333",
    )
    return fig


def plot_pairs(
    db: StudyDB,
    front: Front | None = None,
    out_dir: str | Path = "plots",
    *,
    prefix: str = "",
    formats: Sequence[str] = ("png", "pdf"),
    extra: bool = True,
) -> list[Path]:
    """One figure per pair of objectives, plus accuracy against each other measured cost.

    All evaluated masks are faded grey (infeasible ones as crosses), the strict front is
    solid markers joined by its attainment staircase, near-Pareto band members are hollow,
    and the full model is a star.  Cost axes carry a second scale in % of the full model.
    Files are ``<out_dir>/<prefix><y>-vs-<x>.<format>``; a pair whose metric is unavailable
    becomes ``<prefix><y>-vs-<x>_unavailable.<format>``, a note saying why.

    Args:
        db: the study.
        front: its front (default: :meth:`Front.from_study`).
        out_dir: directory for the files.
        prefix: prepended to every file name.
        formats: any of png, pdf, svg, eps.
        extra: also plot accuracy against costs that are measured but not objectives.
    """
    _formats(formats)
    paths: list[Path] = []
    for stem, fig in build_pairs(db, front, extra=extra).items():
        paths += save_figure(fig, Path(out_dir) / f"{prefix}{stem}", formats)
    return paths


# -- hypervolume -------------------------------------------------------------------------
def hypervolume_curve(db: StudyDB) -> tuple[np.ndarray, np.ndarray]:
    """Hypervolume of the feasible points among the first ``n`` evaluations, for every ``n``.

    Returns ``(n, hv)``: evaluation counts 1…N (COMPLETE trials in trial order, the full
    model's reference trial included) and the hypervolume after each, in the space of
    :func:`paretoskip.front.hypervolume` (computed by it).  The hypervolume is recomputed only
    when a point enters the current non-dominated set, so long studies stay fast.
    """
    from .front import hypervolume

    ref_attr = db.reference()
    if ref_attr is None:
        raise ConfigError(
            f"study {db.name!r} has no reference (full model) evaluation yet; run the search first"
        )
    objectives = db.objectives
    reference = {k: _value(ref_attr["metrics"], k) for k in ref_attr["metrics"]}
    signs = np.array([o.sign for o in objectives])
    trials = sorted(db.trials(), key=lambda t: t.number)
    hv = np.zeros(len(trials))
    k = len(objectives)
    front_raw = np.empty((0, k))
    front_min = np.empty((0, k))
    current = 0.0
    for i, t in enumerate(trials):
        values = t.values
        feasible = not any(c > 0 for c in (t.constraints or {}).values())
        if feasible and values is not None and len(values) == k:
            v = np.asarray(values, dtype=float)
            if np.all(np.isfinite(v)):
                y = v * signs
                if not (len(front_min) and np.any(np.all(front_min <= y, axis=1))):
                    keep = ~np.all(y <= front_min, axis=1)
                    front_raw = np.vstack([front_raw[keep], v])
                    front_min = np.vstack([front_min[keep], y])
                    current = hypervolume(front_raw, objectives, reference)
        hv[i] = current
    return np.arange(1, len(trials) + 1), hv


def _study_label(db: StudyDB, names: Sequence[str]) -> str:
    engine = db.meta.get("engine") or "?"
    if len(set(names)) == 1:  # one study, or one name in several storages
        return str(engine)
    if names.count(db.name) > 1:
        return f"{db.name} ({engine})"
    return db.name


def build_hypervolume(
    studies: Sequence[StudyDB] | StudyDB,
    *,
    labels: Sequence[str] | None = None,
    logx: bool = False,
) -> Figure:
    """The figure of :func:`plot_hypervolume`."""
    from .study import StudyDB

    if isinstance(studies, StudyDB):
        studies = [studies]
    studies = list(studies)
    if not studies:
        raise ConfigError("plot_hypervolume needs at least one study")
    if labels is not None and len(labels) != len(studies):
        raise ConfigError(f"{len(labels)} labels for {len(studies)} studies")
    names = [db.name for db in studies]
    labels = list(labels) if labels is not None else [_study_label(db, names) for db in studies]
    objective_sets = {tuple(o.name for o in db.objectives) for db in studies}
    if len(objective_sets) > 1:
        log.warning(
            "plot_hypervolume: the studies have different objectives %s; their hypervolumes "
            "are not comparable",
            sorted(objective_sets),
        )
    with _style():
        fig = _figure(HV_SIZE)
        ax = fig.add_subplot()
        for i, (db, label) in enumerate(zip(studies, labels)):
            n, hv = hypervolume_curve(db)
            if len(n) == 0:
                continue
            n = np.append(n, n[-1])
            hv = np.append(hv, hv[-1])
            ax.plot(
                n,
                hv,
                drawstyle="steps-post",
                color=COLORS[i % len(COLORS)],
                ls=LINESTYLES[i % len(LINESTYLES)],
                lw=1.8,
                label=f"{label} (final {hv[-1]:.4g})",
            )
        if logx:
            ax.set_xscale("log")
        ax.set_xlim(left=1)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("Evaluations (trials, in order)")
        ax.set_ylabel("Hypervolume (normalised)")
        title = studies[0].name if len(set(names)) == 1 else "Hypervolume"
        _title(ax, title)
        objs = sorted(objective_sets)[0]
        refs = ", ".join(
            f"{o} {0 if _DIRECTIONS.get(o) == 'maximize' else '1.1 × full'}" for o in objs
        )
        note = (
            "feasible evaluated points; costs ÷ full model's; reference point: "
            + refs
            + ("" if len(objective_sets) == 1 else " (objectives differ: not comparable)")
        )
        handles, lab = ax.get_legend_handles_labels()
        _legend_below(fig, handles, lab, ncols=2, note=note)
    return fig


def plot_hypervolume(
    studies: Sequence[StudyDB] | StudyDB,
    out: str | Path,
    *,
    labels: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    logx: bool = False,
) -> list[Path]:
    """Hypervolume of the feasible evaluated points against evaluations, studies overlaid.

    Same normalisation as :func:`paretoskip.front.hypervolume` (accuracy as is with
    reference 0, each cost divided by the full model's with reference 1.1), so the last
    value of a study's curve equals its front file's hypervolume.  Files are
    ``<out>.<format>``.  Labels default to the study names (the engines, when every study
    has the same name).
    """
    _formats(formats)
    return save_figure(build_hypervolume(studies, labels=labels, logx=logx), out, formats)


# -- unit frequency ----------------------------------------------------------------------
def _stage(unit: str) -> str:
    return unit.rsplit(".", 1)[0] if "." in unit else ""


def build_unit_frequency(front: Front) -> Figure:
    """The figure of :func:`plot_unit_frequency`."""
    from matplotlib.patches import Patch

    from .space import SkipSpace

    space = SkipSpace.from_dict(front.data["space"])
    units = list(space.units)
    n = len(units)
    strict = [m for m in front.members if m.get("strict")]
    if strict:
        bits = np.array([[c == "1" for c in m["mask"]] for m in strict], dtype=float)
        freq = bits.mean(axis=0) * 100.0
    else:
        freq = np.zeros(n)
    locked = np.array([u in space.locked for u in units])
    stages = [_stage(u) for u in units]
    stage_names = list(dict.fromkeys(stages))
    grouped = {u: g for g, group in enumerate(space.groups) for u in group}

    width = float(np.clip(1.6 + 0.2 * n, 5.6, 14.0))
    with _style():
        fig = _figure((width, 3.9))
        ax = fig.add_subplot()
        x = np.arange(n)
        colors = [("#0072B2", "#56B4E9")[stage_names.index(s) % 2] for s in stages]
        ax.bar(x[~locked], freq[~locked], width=0.75, color=np.array(colors)[~locked], zorder=2)
        for i in np.flatnonzero(locked):
            # a light hatched background band (not a bar: a locked unit is skipped by no one)
            ax.axvspan(
                i - 0.45,
                i + 0.45,
                facecolor="#F2F2F2",
                edgecolor="#B5B5B5",
                hatch="///",
                linewidth=0.0,
                zorder=0,
            )
            ax.text(
                i,
                52,
                "locked",
                rotation=90,
                ha="center",
                va="center",
                fontsize=8,
                color="#555555",
                zorder=3,
                bbox={"facecolor": "#F2F2F2", "edgecolor": "none", "pad": 1.5},
            )
        # stage boundaries and names
        for i in range(1, n):
            if stages[i] != stages[i - 1]:
                ax.axvline(i - 0.5, color="#555555", ls="--", lw=0.9, zorder=1)
        trans = ax.get_xaxis_transform()
        for s in stage_names:
            idx = [i for i, st in enumerate(stages) if st == s]
            if s:
                ax.text(
                    (idx[0] + idx[-1]) / 2,
                    1.01,
                    s,
                    transform=trans,
                    ha="center",
                    va="bottom",
                    fontsize=9,
                    color="#333333",
                )
        for u, g in grouped.items():
            i = units.index(u)
            ax.text(
                i,
                freq[i] + 1.5,
                f"g{g + 1}",
                ha="center",
                va="bottom",
                fontsize=7,
                color="#333333",
            )
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylim(0, 105)
        ax.set_xticks(x)
        short = [u.rsplit(".", 1)[-1] if stages[i] else u for i, u in enumerate(units)]
        use_full = len(stage_names) == 1 and not stage_names[0]
        ax.set_xticklabels(
            units if use_full else short, rotation=90 if n > 24 else 0, fontsize=8 if n > 24 else 9
        )
        ax.grid(axis="x", visible=False)
        ax.set_xlabel("Unit (in depth order; index within its stage)")
        ax.set_ylabel(f"Skipped by strict front\nmembers (%, n = {len(strict)})")
        for i in np.flatnonzero(locked):
            ax.get_xticklabels()[i].set_color("#8C8C8C")
        _title(ax, front.data.get("study", {}).get("name") or "Pareto front", pad=16)
        handles = []
        labels = []
        if locked.any():
            handles.append(Patch(facecolor="#F2F2F2", edgecolor="#B5B5B5", hatch="///", lw=0))
            labels.append("locked (never skipped)")
        if grouped:
            handles.append(Patch(facecolor="none", edgecolor="none"))
            labels.append("gN: skipped together (group N)")
        if handles:
            _legend_below(fig, handles, labels)
        if not strict:
            ax.text(0.5, 0.5, "no strict front members", transform=ax.transAxes, ha="center")
    return fig


def plot_unit_frequency(
    front: Front, out: str | Path, *, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Per unit, in depth order, the share of strict front members that skip it.

    Stages (units sharing the name before the last dot, e.g. ``layer2``) are separated by
    dashed lines and named above the bars; locked units are hatched and marked ``locked``.
    Files are ``<out>.<format>``.
    """
    _formats(formats)
    return save_figure(build_unit_frequency(front), out, formats)


# -- several fronts ----------------------------------------------------------------------
def _front_label(front: Front, names: Sequence[str]) -> str:
    study = front.data.get("study", {})
    name = study.get("name") or "front"
    if names.count(name) > 1:
        return f"{name} ({study.get('engine') or '?'})"
    return name


def build_fronts(
    fronts: Sequence[Front] | Front,
    *,
    labels: Sequence[str] | None = None,
    x: str = "flops",
    y: str = "accuracy",
    relative: bool = False,
    band: bool = True,
) -> Figure:
    """The figure of :func:`plot_fronts`."""
    from matplotlib.lines import Line2D

    from .front import Front

    if isinstance(fronts, Front):
        fronts = [fronts]
    fronts = list(fronts)
    if not fronts:
        raise ConfigError("plot_fronts needs at least one front")
    if labels is not None and len(labels) != len(fronts):
        raise ConfigError(f"{len(labels)} labels for {len(fronts)} fronts")
    names = [f.data.get("study", {}).get("name") or "front" for f in fronts]
    labels = list(labels) if labels is not None else [_front_label(f, names) for f in fronts]

    def ref_value(f: Front, name: str) -> float:
        if name == "test_accuracy":
            v = f.reference.get("test_accuracy")
            return math.nan if v is None else float(v)
        return _value(f.reference.get("metrics"), name)

    for name in (x, y):
        if name not in _DIRECTIONS:
            raise ConfigError(f"cannot plot {name!r}; accepted: {', '.join(_DIRECTIONS)}")
        if not any(np.isfinite([_member_value(m, name) for m in f.members]).any() for f in fronts):
            raise ConfigError(
                f"no front has a value for {name!r} (unavailable or not measured); "
                "an unmeasured value is never plotted as 0"
            )

    def axis_for(name: str, pool: Sequence[Front], reference: float) -> _Axis:
        vals = [_member_value(m, name) for g in pool for m in g.members]
        refs = [ref_value(g, name) for g in pool]
        srcs = _sources(
            [m.get("metrics") for g in pool for m in g.members]
            + [g.reference.get("metrics") for g in pool],
            name,
        )
        return _axis(
            name,
            np.array(vals + refs, dtype=float),
            reference=reference,
            sources=srcs,
            batch=_batch_size(pool[0].data.get("provenance")),
            relative=relative,
        )

    with _style():
        fig = _figure(PAIR_SIZE)
        ax = fig.add_subplot()
        handles: list[Any] = []
        leg: list[str] = []
        # the labels: of all fronts together (relative: of a full model of 1)
        shown = {n: axis_for(n, fronts, 1.0 if relative else math.nan) for n in (x, y)}
        for i, (f, label) in enumerate(zip(fronts, labels)):
            color = COLORS[i % len(COLORS)]
            marker = MARKERS[i % len(MARKERS)]
            ls = LINESTYLES[i % len(LINESTYLES)]
            if relative:  # each front against its own full model
                ax_x, ax_y = (axis_for(n, [f], ref_value(f, n)) for n in (x, y))
            else:
                ax_x, ax_y = shown[x], shown[y]
            missing = [
                n for n in (x, y) if not np.isfinite([_member_value(m, n) for m in f.members]).any()
            ]
            missing += [
                f"full-model {a.name}"
                for a in (ax_x, ax_y)
                if a.is_cost and relative and not a.relative
            ]
            handles.append(
                Line2D(
                    [],
                    [],
                    color=color,
                    ls=ls,
                    marker=marker,
                    markersize=5.5,
                    markeredgecolor="white",
                    markeredgewidth=0.5,
                )
            )
            if missing:
                leg.append(f"{label}: {', '.join(missing)} unavailable, not drawn")
                continue
            dirs = [ax_x.direction, ax_y.direction]

            s = _member_points([m for m in f.members if m.get("strict")], x, y)
            if "test_accuracy" in (x, y):
                # members were chosen on validation accuracy: join every one of them in
                # cost order (a test-accuracy staircase would hide the ones that drop)
                order = np.argsort(s[:, 0] if y == "test_accuracy" else s[:, 1], kind="stable")
                ax.plot(
                    ax_x.show(s[order, 0]), ax_y.show(s[order, 1]), color=color, ls=ls, zorder=3
                )
            else:
                order = _nondominated_2d(s, dirs)
                _staircase(
                    ax, ax_x.show(s[order, 0]), ax_y.show(s[order, 1]), color=color, ls=ls, zorder=3
                )
            ax.scatter(
                ax_x.show(s[:, 0]),
                ax_y.show(s[:, 1]),
                s=28,
                marker=marker,
                color=color,
                edgecolors="white",
                linewidths=0.5,
                zorder=4,
            )
            if band:
                b = _member_points([m for m in f.members if not m.get("strict")], x, y)
                if len(b):
                    ax.scatter(
                        ax_x.show(b[:, 0]),
                        ax_y.show(b[:, 1]),
                        s=28,
                        marker=marker,
                        facecolors="white",
                        edgecolors=color,
                        linewidths=1.0,
                        zorder=3,
                    )
            rx, ry = ref_value(f, x), ref_value(f, y)
            if math.isfinite(rx) and math.isfinite(ry):
                ax.scatter(
                    ax_x.show(rx),
                    ax_y.show(ry),
                    s=200,
                    marker="*",
                    color=color,
                    edgecolors="black",
                    linewidths=0.6,
                    zorder=5,
                )
            leg.append(f"{label} ({len(s)})")
        handles.append(
            Line2D(
                [],
                [],
                ls="none",
                marker="*",
                markersize=12,
                color="#BBBBBB",
                markeredgecolor="black",
                markeredgewidth=0.6,
            )
        )
        leg.append("full model (each)")
        if band and any(not m.get("strict") for f in fronts for m in f.members):
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="none",
                    marker="o",
                    markersize=5.5,
                    markerfacecolor="white",
                    markeredgecolor="#555555",
                )
            )
            leg.append("near-Pareto band")
        own = "own full model" if len(fronts) > 1 else "full model"
        ax.set_xlabel(shown[x].label.replace("full model", own))
        ax.set_ylabel(shown[y].label.replace("full model", own))
        _title(ax, "Pareto fronts")
        _legend_below(fig, handles, leg, ncols=2)
    return fig


def plot_fronts(
    fronts: Sequence[Front] | Front,
    out: str | Path,
    *,
    labels: Sequence[str] | None = None,
    x: str = "flops",
    y: str = "accuracy",
    relative: bool = False,
    band: bool = True,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Several fronts overlaid (e.g. a stochastic-depth model against a plainly trained one).

    Each front is drawn in its own colour, marker and line style: strict members joined by
    their staircase, band members hollow (``band=False`` hides them), its full model as a
    star of the same colour.  ``x`` and ``y`` are metric names, or ``test_accuracy`` (the
    members are then joined in cost order rather than by a staircase: they were chosen on
    validation accuracy, and the test accuracy shows how much that choice overfit).  With
    ``relative=True`` every cost is shown in % of *that front's own* full model (for models
    of different sizes); accuracy stays absolute.  Files are ``<out>.<format>``.
    """
    _formats(formats)
    fig = build_fronts(fronts, labels=labels, x=x, y=y, relative=relative, band=band)
    return save_figure(fig, out, formats)


# -- everything for one study ------------------------------------------------------------
def plot_study(
    db: StudyDB,
    front: Front | None = None,
    out_dir: str | Path = "plots",
    *,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Every figure of one study in ``out_dir``, file names starting with the study name:
    ``<name>_<y>-vs-<x>``, ``<name>_hypervolume``, ``<name>_units``."""
    from .front import Front

    _formats(formats)
    if front is None:
        front = Front.from_study(db)
    out_dir = Path(out_dir)
    name = _safe(db.name)
    paths = plot_pairs(db, front, out_dir, prefix=f"{name}_", formats=formats)
    paths += plot_hypervolume([db], out_dir / f"{name}_hypervolume", formats=formats)
    paths += plot_unit_frequency(front, out_dir / f"{name}_units", formats=formats)
    return paths
