"""Every pair of objectives, with every evaluation of the study (:func:`plot_pairs`)."""

from __future__ import annotations

import itertools
import logging
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..metrics import METRICS
from ._axis import axis_for
from ._common import (
    CLOUD_COLOR,
    COLORS,
    FULL_COLOR,
    NOTE_SIZE,
    PAIR_SIZE,
    batch_size_of,
    check_formats,
    legend_below,
    member_value,
    new_figure,
    nondominated_2d,
    relative_secondary,
    save_figure,
    set_title,
    sources_of,
    staircase,
    style,
    value_of,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..front import Front
    from ..study import StudyDB

__all__ = ["build_pairs", "plot_pairs", "member_points"]

log = logging.getLogger("paretoskip.plots")


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
    for r in db.records():
        if r.mask is None or not r.metrics or r.mask in seen:
            continue
        seen[r.mask] = (r.metrics, r.feasible)
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
        for cost in (n for n, s in METRICS.items() if s.objective and s.is_cost):
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


def member_points(members: Iterable[Mapping[str, Any]], x: str, y: str) -> np.ndarray:
    """(x, y) of front members, those lacking either value left out (never set to 0)."""
    p = np.array([[member_value(m, x), member_value(m, y)] for m in members], dtype=float).reshape(
        -1, 2
    )
    return p[np.all(np.isfinite(p), axis=1)]


def build_pairs(
    db: StudyDB, front: Front | None = None, *, extra: bool = True
) -> dict[str, Figure]:
    """The figures of :func:`plot_pairs`, keyed by file stem (``"accuracy-vs-flops"``).

    A pair whose metric was not measured at all (energy without a counter) gives a note
    figure (stem ending in ``_unavailable``) saying why, with no axes and no points.
    """
    from ..front import Front

    if front is None:
        front = Front.from_study(db)
    data = _study_data(db)
    figs: dict[str, Figure] = {}
    with style():
        for xname, yname in _pairs(data, extra):
            stem = f"{yname}-vs-{xname}"
            raw = {
                n: np.array([value_of(m, n) for m in data.metrics], dtype=float)
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

    batch = batch_size_of(data.provenance)
    ax_x, ax_y = (
        axis_for(
            n,
            np.concatenate([raw[n], [member_value(m, n) for m in front.members]]),
            reference=value_of(data.reference, n),
            sources=sources_of([*data.metrics, data.reference], n),
            batch=batch,
        )
        for n in (xname, yname)
    )
    fig = new_figure(PAIR_SIZE)
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
    band = member_points([m for m in front.members if not m.get("strict")], xname, yname)
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
    strict = member_points([m for m in front.members if m.get("strict")], xname, yname)
    if len(strict):
        order = nondominated_2d(strict, [ax_x.direction, ax_y.direction])
        staircase(
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
    rx, ry = value_of(data.reference, xname), value_of(data.reference, yname)
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
    reference = {k: value_of(data.reference, k) for k in data.reference}
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

    # stored spreads of the front members as error bars
    for axis, col in ((ax_y, 1), (ax_x, 0)):
        pts, errs = [], []
        for m in front.members:
            spread = (m.get("metrics", {}).get(axis.name) or {}).get("spread")
            if spread and math.isfinite(float(spread)):
                pts.append((member_value(m, xname), member_value(m, yname)))
                errs.append(float(spread))
        if pts:
            arr, err = np.asarray(pts, float), np.asarray(errs)
            value = arr[:, col]
            lo = np.asarray(axis.show(value - err), float)
            hi = np.asarray(axis.show(value + err), float)
            mid = np.asarray(axis.show(value), float)
            bars = np.abs(np.vstack([mid - lo, hi - mid]))
            ox = np.asarray(ax_x.show(arr[:, 0]), float)
            oy = np.asarray(ax_y.show(arr[:, 1]), float)
            h = ax.errorbar(
                ox,
                oy,
                **({"yerr": bars} if col == 1 else {"xerr": bars}),
                fmt="none",
                ecolor=color,
                elinewidth=0.8,
                capsize=2,
                alpha=0.7,
                zorder=3.5,
            )
            entries.append((6, h, f"front member ± stored {axis.name} spread"))
    # accuracy axis zoomed to the front's region (the cloud far below is not what matters)
    n_below = 0
    if yname == "accuracy":
        vals = [member_value(m, "accuracy") for m in front.members] + [ry]
        vals = [v for v in vals if math.isfinite(v)]
        if vals:
            lo_v, hi_v = min(vals), max(vals)
            pad = max(0.1 * (hi_v - lo_v), 0.005)
            lo_s, hi_s = sorted(
                float(axis_v) for axis_v in ax_y.show(np.array([lo_v - pad, hi_v + pad]))
            )
            ax.set_ylim(lo_s, hi_s)
            shown = np.asarray(ax_y.show(raw[yname][ok]), float)
            n_below = int((shown < lo_s).sum())

    ax.set_xlabel(ax_x.label)
    ax.set_ylabel(ax_y.label)
    set_title(ax, data.name)
    relative_secondary(ax, ax_x, "x")
    relative_secondary(ax, ax_y, "y")
    notes = []
    objective_names = [o.name for o in data.objectives]
    if {xname, yname} != set(objective_names):
        notes.append(
            "front: non-dominated in (" + ", ".join(objective_names) + "); "
            "line: its members non-dominated in this plane"
        )
    if n_below:
        notes.append(f"accuracy axis zoomed to the front: {n_below} evaluations lie below it")
    n_missing = int((~ok).sum())
    if n_missing:
        notes.append(f"{n_missing} evaluations lack {xname} or {yname} (not shown)")
    entries.sort(key=lambda e: e[0])
    legend_below(
        fig,
        [e[1] for e in entries],
        [e[2] for e in entries],
        ncols=2,  # three columns of these labels are wider than the figure
        note="; ".join(notes) or None,
    )
    return fig


def _note_figure(title: str, text: str) -> Figure:
    fig = new_figure(NOTE_SIZE)
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
    check_formats(formats)
    paths: list[Path] = []
    for stem, fig in build_pairs(db, front, extra=extra).items():
        paths += save_figure(fig, Path(out_dir) / f"{prefix}{stem}", formats)
    return paths
