"""Hypervolume against evaluations (:func:`plot_hypervolume`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError
from ..metrics import direction_of
from ..study import TrialRecord
from ._common import (
    COLORS,
    HV_SIZE,
    LINESTYLES,
    check_formats,
    legend_below,
    new_figure,
    save_figure,
    set_title,
    style,
    value_of,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..study import StudyDB

__all__ = ["hypervolume_curve", "build_hypervolume", "plot_hypervolume"]

log = logging.getLogger("paretoskip.plots")


def hypervolume_curve(db: StudyDB) -> tuple[np.ndarray, np.ndarray]:
    """Hypervolume of the feasible points among the first ``n`` evaluations, for every ``n``.

    Returns ``(n, hv)``: evaluation counts 1…N (COMPLETE trials in trial order, the full
    model's reference trial included) and the hypervolume after each, in the space of
    :func:`paretoskip.front.hypervolume` (computed by it).  The hypervolume is recomputed only
    when a point enters the current non-dominated set, so long studies stay fast.
    """
    from ..front import hypervolume

    ref_attr = db.reference()
    if ref_attr is None:
        raise ConfigError(
            f"study {db.name!r} has no reference (full model) evaluation yet; run the search first"
        )
    objectives = db.objectives
    reference = {k: value_of(ref_attr["metrics"], k) for k in ref_attr["metrics"]}
    signs = np.array([o.sign for o in objectives])
    records = sorted((TrialRecord.from_trial(t) for t in db.trials()), key=lambda r: r.number)
    hv = np.zeros(len(records))
    k = len(objectives)
    front_raw = np.empty((0, k))
    front_min = np.empty((0, k))
    current = 0.0
    for i, r in enumerate(records):
        values = r.values
        if r.feasible and values is not None and len(values) == k:
            v = np.asarray(values, dtype=float)
            if np.all(np.isfinite(v)):
                y = v * signs
                if not (len(front_min) and np.any(np.all(front_min <= y, axis=1))):
                    keep = ~np.all(y <= front_min, axis=1)
                    front_raw = np.vstack([front_raw[keep], v])
                    front_min = np.vstack([front_min[keep], y])
                    current = hypervolume(front_raw, objectives, reference)
        hv[i] = current
    return np.arange(1, len(records) + 1), hv


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
    from ..study import StudyDB

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
    with style():
        fig = new_figure(HV_SIZE)
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
        set_title(ax, title)
        objs = sorted(objective_sets)[0]
        refs = ", ".join(
            f"{o} {0 if direction_of(o) == 'maximize' else '1.1 × full'}" for o in objs
        )
        note = (
            "feasible evaluated points; costs ÷ full model's; reference point: "
            + refs
            + ("" if len(objective_sets) == 1 else " (objectives differ: not comparable)")
        )
        handles, lab = ax.get_legend_handles_labels()
        legend_below(fig, handles, lab, ncols=2, note=note)
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
    check_formats(formats)
    return save_figure(build_hypervolume(studies, labels=labels, logx=logx), out, formats)
