"""Several fronts overlaid (:func:`plot_fronts`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
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

__all__ = ["build_fronts", "plot_fronts"]


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
        legend_below(fig, handles, leg, ncols=2)
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
    check_formats(formats)
    fig = build_fronts(fronts, labels=labels, x=x, y=y, relative=relative, band=band)
    return save_figure(fig, out, formats)
