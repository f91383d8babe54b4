"""Several fronts overlaid (:func:`plot_fronts`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..metrics import METRICS
from ._axis import Axis, axis_for
from ._common import (
    COLORS,
    LINESTYLES,
    MARKERS,
    PAIR_SIZE,
    batch_size_of,
    check_formats,
    legend_below,
    member_value,
    new_figure,
    nondominated_2d,
    save_figure,
    set_title,
    sources_of,
    staircase,
    style,
    value_of,
)
from .pairs import member_points

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..front import Front

__all__ = ["build_fronts", "plot_fronts", "family_points", "family_label"]


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
    families: bool = True,
) -> Figure:
    """The figure of :func:`plot_fronts`."""
    from matplotlib.lines import Line2D

    from ..front import Front

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
        return value_of(f.reference.get("metrics"), name)

    for name in (x, y):
        if name not in METRICS:
            raise ConfigError(f"cannot plot {name!r}; accepted: {', '.join(METRICS)}")
        if not any(np.isfinite([member_value(m, name) for m in f.members]).any() for f in fronts):
            raise ConfigError(
                f"no front has a value for {name!r} (unavailable or not measured); "
                "an unmeasured value is never plotted as 0"
            )

    def pool_axis(name: str, pool: Sequence[Front], reference: float) -> Axis:
        vals = [member_value(m, name) for g in pool for m in g.members]
        refs = [ref_value(g, name) for g in pool]
        srcs = sources_of(
            [m.get("metrics") for g in pool for m in g.members]
            + [g.reference.get("metrics") for g in pool],
            name,
        )
        return axis_for(
            name,
            np.array(vals + refs, dtype=float),
            reference=reference,
            sources=srcs,
            batch=batch_size_of(pool[0].data.get("provenance")),
            relative=relative,
        )

    with style():
        fig = new_figure(PAIR_SIZE)
        ax = fig.add_subplot()
        handles: list[Any] = []
        leg: list[str] = []
        n_families = 0
        # the labels: of all fronts together (relative: of a full model of 1)
        shown = {n: pool_axis(n, fronts, 1.0 if relative else math.nan) for n in (x, y)}
        for i, (f, label) in enumerate(zip(fronts, labels)):
            color = COLORS[i % len(COLORS)]
            marker = MARKERS[i % len(MARKERS)]
            ls = LINESTYLES[i % len(LINESTYLES)]
            if relative:  # each front against its own full model
                ax_x, ax_y = (pool_axis(n, [f], ref_value(f, n)) for n in (x, y))
            else:
                ax_x, ax_y = shown[x], shown[y]
            missing = [
                n for n in (x, y) if not np.isfinite([member_value(m, n) for m in f.members]).any()
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

            s = member_points([m for m in f.members if m.get("strict")], x, y)
            if "test_accuracy" in (x, y):
                # members were chosen on validation accuracy: join every one of them in
                # cost order (a test-accuracy staircase would hide the ones that drop)
                order = np.argsort(s[:, 0] if y == "test_accuracy" else s[:, 1], kind="stable")
                ax.plot(
                    ax_x.show(s[order, 0]), ax_y.show(s[order, 1]), color=color, ls=ls, zorder=3
                )
            else:
                order = nondominated_2d(s, dirs)
                staircase(
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
                b = member_points([m for m in f.members if not m.get("strict")], x, y)
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
            if families:
                for fam in f.families:
                    k = len(fronts) + n_families
                    n_families += 1
                    prefix = label if len(fronts) > 1 else None
                    h, text = _draw_family(ax, fam, x, y, ax_x, ax_y, k, prefix=prefix)
                    handles.append(h)
                    leg.append(text)
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
        set_title(ax, "Pareto fronts")
        # long entries (families say how their costs are counted) one per row: never cut off
        legend_below(fig, handles, leg, ncols=1 if max(map(len, leg)) > 40 else 2)
    return fig


def family_points(
    members: Sequence[Mapping[str, Any]], x: str, y: str
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a family's members and the spread of x (NaN where none), members lacking
    either value left out.  Against ``test_accuracy`` a cost is the test split's mean
    (``test_flops``) where the member has one: the two then describe the same inputs."""
    rows, spreads = [], []
    test = "test_accuracy" in (x, y)
    for m in members:
        vals, spread = [], math.nan
        for name in (x, y):
            tf = m.get("test_flops") if name == "flops" else None
            if test and isinstance(tf, Mapping) and tf.get("mean") is not None:
                vals.append(float(tf["mean"]))
                spread = float(tf["std"]) if tf.get("std") is not None else math.nan
                continue
            vals.append(member_value(m, name))
            entry = (m.get("metrics") or {}).get(name)
            if name == x and isinstance(entry, Mapping) and entry.get("spread") is not None:
                spread = float(entry["spread"])
        rows.append(vals)
        spreads.append(spread)
    p = np.array(rows, dtype=float).reshape(-1, 2)
    e = np.array(spreads, dtype=float)
    keep = np.all(np.isfinite(p), axis=1)
    order = np.argsort(p[keep, 0], kind="stable")
    return p[keep][order], e[keep][order]


def family_label(family: Mapping[str, Any], prefix: str | None = None) -> str:
    """What a legend says for a family: its label, and how its costs are counted."""
    text = str(family.get("label") or family.get("name") or "family")
    notes = []
    if family.get("cost_basis") == "mean_per_input":
        notes.append("mean per input ± std")
    if family.get("kind") == "dual":
        notes.append("every input within its budget")
    body = f"{text} ({'; '.join(notes)})" if notes else text
    return f"{prefix}: {body}" if prefix else body


def _draw_family(
    ax: Any,
    fam: Mapping[str, Any],
    x: str,
    y: str,
    ax_x: Axis,
    ax_y: Axis,
    k: int,
    prefix: str | None,
) -> tuple[Any, str]:
    from matplotlib.lines import Line2D

    color = COLORS[k % len(COLORS)]
    marker = MARKERS[k % len(MARKERS)]
    ls = LINESTYLES[k % len(LINESTYLES)]
    handle = Line2D([], [], color=color, ls=ls, marker=marker, markersize=5.5, mfc="white")
    pts, spread = family_points(fam.get("members", ()), x, y)
    label = family_label(fam, prefix)
    if not len(pts):
        return handle, f"{label}: no {x} / {y} values, not drawn"
    px, py = ax_x.show(pts[:, 0]), ax_y.show(pts[:, 1])
    ax.plot(px, py, color=color, ls=ls, lw=1.2, zorder=3)
    ok = np.isfinite(spread)
    if ok.any():  # the spread of the per-input cost, in the axis' own scale
        lo = ax_x.show(pts[ok, 0] - spread[ok])
        hi = ax_x.show(pts[ok, 0] + spread[ok])
        ax.errorbar(
            px[ok],
            py[ok],
            xerr=np.abs(np.vstack([px[ok] - lo, hi - px[ok]])),
            fmt="none",
            ecolor=color,
            elinewidth=0.8,
            capsize=2,
            zorder=3,
        )
    ax.scatter(
        px, py, s=34, marker=marker, facecolors="white", edgecolors=color, linewidths=1.4, zorder=4
    )
    return handle, f"{label} ({len(pts)})"


def plot_fronts(
    fronts: Sequence[Front] | Front,
    out: str | Path,
    *,
    labels: Sequence[str] | None = None,
    x: str = "flops",
    y: str = "accuracy",
    relative: bool = False,
    band: bool = True,
    families: bool = True,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Several fronts overlaid (e.g. a stochastic-depth model against a plainly trained one).

    Each front is drawn in its own colour, marker and line style: strict members joined by
    their staircase, band members hollow (``band=False`` hides them), its full model as a
    star of the same colour.  ``x`` and ``y`` are metric names, or ``test_accuracy`` (the
    members are then joined in cost order rather than by a staircase: they were chosen on
    validation accuracy, and the test accuracy shows how much that choice overfit).  With
    ``relative=True`` every cost is shown in % of *that front's own* full model (for models
    of different sizes); accuracy stays absolute.  The families a front carries (per-input
    gated or dual-mode sweeps, :attr:`paretoskip.Front.families`) are drawn beside it, hollow
    markers joined in cost order, with the spread of a mean-per-input cost as horizontal bars
    and that basis said in the legend; ``families=False`` leaves them out.  Files are
    ``<out>.<format>``.
    """
    check_formats(formats)
    fig = build_fronts(
        fronts, labels=labels, x=x, y=y, relative=relative, band=band, families=families
    )
    return save_figure(fig, out, formats)
