"""How often each unit is skipped along the front (:func:`plot_unit_frequency`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._common import (
    check_formats,
    legend_below,
    new_figure,
    save_figure,
    set_title,
    style,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..front import Front

__all__ = ["build_unit_frequency", "plot_unit_frequency"]


def _stage(unit: str) -> str:
    return unit.rsplit(".", 1)[0] if "." in unit else ""


def build_unit_frequency(front: Front) -> Figure:
    """The figure of :func:`plot_unit_frequency`."""
    from matplotlib.patches import Patch

    from ..space import SkipSpace

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
    with style():
        fig = new_figure((width, 3.9))
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
        set_title(ax, front.data.get("study", {}).get("name") or "Pareto front", pad=16)
        handles = []
        labels = []
        if locked.any():
            handles.append(Patch(facecolor="#F2F2F2", edgecolor="#B5B5B5", hatch="///", lw=0))
            labels.append("locked (never skipped)")
        if grouped:
            handles.append(Patch(facecolor="none", edgecolor="none"))
            labels.append("gN: skipped together (group N)")
        if handles:
            legend_below(fig, handles, labels)
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
    check_formats(formats)
    return save_figure(build_unit_frequency(front), out, formats)
