"""The near-Pareto front of a study, and its file (JSON plus a CSV twin).

The front file is self-contained: a deployment reads it without paretoskip installed.

* ``strict`` members are non-dominated among the feasible evaluations;
* the *near-Pareto band* holds members that are dominated, but by less than the
  measurement's own spread (or a user-set ε per objective): shifted by ε in their favour,
  no strict member dominates them any more.  They are listed with ``strict: false``.

Hypervolume is computed by moocore in a normalised space: accuracy as is (reference 0),
every cost divided by the full model's (reference 1.1).

The file format (and its JSON Schema) is :mod:`paretoskip.frontfile`.

Example:
    >>> import numpy as np
    >>> from paretoskip.front import hypervolume, nondominated
    >>> from paretoskip.metrics import parse_objectives
    >>> objs = parse_objectives(["accuracy", "flops"])
    >>> values = np.array([[0.9, 100.0], [0.8, 50.0], [0.7, 80.0]])
    >>> nondominated(values, objs).tolist()
    [True, True, False]
    >>> round(hypervolume(values[:2], objs, {"flops": 100.0}), 3)
    0.49
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import moocore
import numpy as np

from ._version import __version__
from .errors import ConfigError
from .frontfile import SCHEMA_VERSION as FRONT_SCHEMA_VERSION
from .frontfile import load_front, replace_family, validate_front
from .metrics import METRICS, Objective

__all__ = [
    "Front",
    "FRONT_SCHEMA_VERSION",
    "nondominated",
    "hypervolume",
    "normalise",
    "hv_reference_point",
    "near_pareto",
    "clean_json",
    "HV_COST_REFERENCE",
]

HV_COST_REFERENCE = 1.1
log = logging.getLogger("paretoskip.front")


def _minimised(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    return values * np.array([o.sign for o in objectives])


def nondominated(
    values: np.ndarray, objectives: Sequence[Objective], *, keep_weakly: bool = True
) -> np.ndarray:
    """Boolean mask of the rows of ``values`` that no other row dominates (with
    ``keep_weakly=False``, of rows with the same values only the first)."""
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(
        moocore.is_nondominated(_minimised(values, objectives), keep_weakly=keep_weakly)
    )


def normalise(
    values: np.ndarray, objectives: Sequence[Objective], reference: Mapping[str, float]
) -> np.ndarray:
    """Objectives in the space hypervolume is computed in (minimised; costs / full model's)."""
    cols = []
    for j, o in enumerate(objectives):
        col = values[:, j].astype(float)
        if o.direction == "minimize":
            col = col / float(reference[o.name])
        else:
            col = -col
        cols.append(col)
    return np.stack(cols, axis=1) if cols else values


def hv_reference_point(objectives: Sequence[Objective]) -> list[float]:
    """The hypervolume reference point in the normalised space (see :func:`normalise`)."""
    return [HV_COST_REFERENCE if o.direction == "minimize" else 0.0 for o in objectives]


def hypervolume(
    values: np.ndarray, objectives: Sequence[Objective], reference: Mapping[str, float]
) -> float:
    """Hypervolume of ``values`` (raw objective values) in the normalised space."""
    if len(values) == 0:
        return 0.0
    pts = normalise(np.asarray(values, dtype=float), objectives, reference)
    ref = np.array(hv_reference_point(objectives))
    pts = pts[np.all(pts < ref, axis=1)]
    return float(moocore.hypervolume(pts, ref=ref)) if len(pts) else 0.0


def near_pareto(
    values: np.ndarray, eps: np.ndarray, objectives: Sequence[Objective], strict: np.ndarray
) -> np.ndarray:
    """Rows that are not strict but would be non-dominated if improved by ``eps`` (per row/objective)."""
    y = _minimised(values, objectives)
    shifted = y - np.abs(eps)
    front = y[strict]
    band = np.zeros(len(values), dtype=bool)
    candidates = np.flatnonzero(~strict)
    if len(front) == 0:
        band[candidates] = True
        return band
    # p is dominated when some front point is <= p everywhere and differs somewhere
    # (<= everywhere and not == everywhere); one 2-D comparison per objective, not a
    # candidates x front x objectives array and its reductions (4-8x faster on 20,000 rows)
    step = max(1, 2_000_000 // max(1, len(front)))
    for lo in range(0, len(candidates), step):
        p = shifted[candidates[lo : lo + step]]
        le = np.ones((len(p), len(front)), dtype=bool)
        eq = np.ones_like(le)
        for j in range(front.shape[1]):
            f, q = front[None, :, j], p[:, j, None]
            le &= f <= q
            eq &= f == q
        band[candidates[lo : lo + step]] = ~np.any(le & ~eq, axis=1)
    return band


@dataclass
class Front:
    """The front of a study: a JSON-able document (see the module docstring)."""

    data: dict[str, Any]
    all_values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    #: the :class:`~paretoskip.study.StudyDB` the front was extracted from (None when loaded from a file)
    study: Any = field(default=None, repr=False, compare=False)

    # -- access --------------------------------------------------------------------------
    @property
    def members(self) -> list[dict[str, Any]]:
        return self.data["members"]

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return tuple(Objective(**o) for o in self.data["objectives"])

    @property
    def hypervolume(self) -> float:
        """The front's hypervolume (NaN when the document does not carry one)."""
        return float(self.data.get("hypervolume", {}).get("value", math.nan))

    @property
    def reference(self) -> dict[str, Any]:
        return self.data["reference"]

    @property
    def families(self) -> list[dict[str, Any]]:
        """Other families of operating points carried beside the members (``families`` in
        the file: gated or dual-mode sweeps, see :func:`paretoskip.dynamic.dynamic_family`);
        empty when there are none."""
        return self.data.get("families", [])

    def add_family(self, family: Mapping[str, Any], *, force: bool = False) -> None:
        """Add a family of operating points (replacing one of the same name), validated
        against the front file schema (``$defs.family``) before anything changes.

        A front extracted from a study attaches the family to the study as well
        (:meth:`paretoskip.study.StudyDB.set_family`), so that the next extraction, the front
        file and ``paretoskip plot`` keep it; a family made from other weights than the
        study's model is then refused unless ``force``.

        Example:
            >>> front = Front({"schema_version": 1, "space": {"units": ["a"]},
            ...     "objectives": [{"name": "flops", "direction": "minimize"}],
            ...     "reference": {"metrics": {}},
            ...     "members": [{"mask": "1", "metrics": {"flops": {"value": 2.0}}}]})
            >>> front.add_family({"name": "gated", "kind": "dynamic",
            ...     "members": [{"metrics": {"flops": {"value": 1.5}}, "test_accuracy": 0.9}]})
            >>> [f["name"] for f in front.families]
            ['gated']
            >>> front.add_family({"name": "x", "members": []})
            Traceback (most recent call last):
            ...
            paretoskip.errors.ConfigError: front family 'x': 'families[0].members' is empty; it needs at least 1 entry
        """
        if not isinstance(family, Mapping):
            raise ConfigError(f"a front family must be a mapping, not {type(family).__name__}")
        fam = clean_json(dict(family))
        name = fam.get("name")
        validate_front({**self.data, "families": [fam]}, f"family {name!r}")
        if self.study is not None:
            fam = self.study.set_family(fam, force=force)
        self.data["families"] = replace_family(self.families, fam)

    def strict_members(self) -> list[dict[str, Any]]:
        return [m for m in self.members if m["strict"]]

    def values(self, strict_only: bool = True) -> np.ndarray:
        rows = self.strict_members() if strict_only else self.members
        return np.array(
            [[m["metrics"][o.name]["value"] for o in self.objectives] for m in rows], dtype=float
        )

    def __len__(self) -> int:
        return len(self.members)

    # -- building ------------------------------------------------------------------------
    @classmethod
    def from_study(
        cls,
        db: Any,
        *,
        epsilon: Mapping[str, float] | None = None,
        evaluator: Any = None,
        budget: int | None = None,
        engine: str | None = None,
        seed: int | None = None,
        use_sql: bool = True,
    ) -> Front:
        """Extract the front from a :class:`paretoskip.study.StudyDB`.

        Reads values, masks, spreads and constraints of every trial in one SQL query on a
        relational storage (:meth:`~paretoskip.study.StudyDB.objective_table`; no Optuna
        trial objects), then decodes only the members.  With an ``evaluator``, the test
        accuracy of every member (and of the full model) that lacks one is measured and
        stored in the study and on the members' trials.
        """
        if evaluator is not None and getattr(db, "read_only", False):
            raise ConfigError(
                f"study {db.name!r} was opened read-only (StudyDB.read); open it with "
                "StudyDB.load to measure and record test accuracies"
            )
        objectives = db.objectives
        table = db.objective_table(use_sql=use_sql)
        # the first feasible trial of each mask
        first: dict[str, int] = {}
        for i in np.flatnonzero(table.feasible):
            first.setdefault(table.masks[i], int(i))
        rows = np.array(sorted(first.values()), dtype=np.int64)
        values = table.values[rows].reshape(len(rows), len(objectives))
        strict = nondominated(values, objectives)
        eps = _epsilon(table.spreads[rows].reshape(len(rows), len(objectives)), objectives, epsilon)
        band = near_pareto(values, eps, objectives, strict)
        chosen = [i for i in range(len(rows)) if strict[i] or band[i]]

        ref_attr = db.reference()
        if ref_attr is None:
            raise ConfigError(
                f"study {db.name!r} has no reference (full model) evaluation yet; run the search first"
            )
        ref_metrics = {k: m["value"] for k, m in ref_attr["metrics"].items()}

        ids = [int(table.trial_ids[rows[i]]) for i in chosen]
        records = db.records_by_id(ids)
        masks = [records[t].mask for t in ids]
        tests = db.test_accuracies()
        missing = [m for m in dict.fromkeys([*masks, ref_attr["mask"]]) if m not in tests]
        if evaluator is not None and missing:
            started = time.monotonic()
            n_test = _test_size(evaluator)
            log.info(
                "measuring the test accuracy of %d configurations (front members and the full "
                "model) on %s test images",
                len(missing),
                n_test,
            )
            measured = dict(zip(missing, evaluator.test_accuracy(missing)))
            tests.update(measured)
            trial_of = {m: [t] for m, t in zip(masks, ids)}
            ref_rows = [
                int(table.trial_ids[i])
                for i in range(len(table.masks))
                if table.masks[i] == ref_attr["mask"]
            ][:1]
            if ref_rows:
                trial_of.setdefault(ref_attr["mask"], ref_rows)
            db.set_test_accuracies(measured, trials=trial_of)
            log.info("test accuracies measured in %.1f s", time.monotonic() - started)

        space = db.space
        members = []
        for i, t in zip(chosen, ids):
            r = records[t]
            members.append(
                {
                    "mask": r.mask,
                    "skipped": space.skipped_names(r.mask),
                    "metrics": r.metrics,
                    "test_accuracy": tests.get(r.mask),
                    "strict": bool(strict[i]),
                    "trial": r.number,
                }
            )
        first_obj = objectives[0]
        members.sort(
            key=lambda m: (
                first_obj.sign * (m["metrics"][first_obj.name]["value"] or 0.0),
                m["mask"],
            )
        )
        meta = db.meta
        hv = hypervolume(values[strict], objectives, ref_metrics)
        data = {
            "schema_version": FRONT_SCHEMA_VERSION,
            "study": {
                "name": db.name,
                "storage": db.location.redacted,
                "engine": engine or meta.get("engine"),
                "budget": budget if budget is not None else meta.get("budget"),
                "seed": seed if seed is not None else meta.get("seed"),
                "evaluations": table.n_trials,
                "distinct_masks": len(set(table.masks)),
                "feasible": len(rows),
                "constraints": meta.get("constraints", []),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "paretoskip": __version__,
            },
            "provenance": meta.get("provenance", {}),
            "space": meta["space"],
            "objectives": [o.to_dict() for o in objectives],
            "near_pareto": {"epsilon": {o.name: _eps_text(epsilon, o.name) for o in objectives}},
            "reference": {
                "mask": ref_attr["mask"],
                "metrics": ref_attr["metrics"],
                "test_accuracy": tests.get(ref_attr["mask"]),
            },
            "members": members,
            "hypervolume": {
                "value": hv,
                "reference_point": dict(
                    zip([o.name for o in objectives], hv_reference_point(objectives))
                ),
                "space": "accuracy as is; each cost divided by the full model's",
                "computed_by": "moocore",
            },
        }
        families = db.families()
        if families:
            data["families"] = families
        return cls(data, values, db)

    # -- files ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``path`` (JSON) and its CSV twin (same name, ``.csv``)."""
        path = Path(path)
        if path.suffix != ".json":
            path = (
                path.with_suffix(path.suffix + ".json")
                if path.suffix
                else path.with_suffix(".json")
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(clean_json(self.data), indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
        csv_path = path.with_suffix(".csv")
        names = sorted({k for m in self.members for k in m["metrics"]})
        with open(csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            header = ["mask", "strict", "n_skipped", "test_accuracy"]
            for n in names:
                header += [n, f"{n}_spread", f"{n}_unit", f"{n}_source"]
            w.writerow(header + ["skipped"])
            for m in self.members:
                row = [m["mask"], m["strict"], len(m["skipped"]), _num(m["test_accuracy"])]
                for n in names:
                    x = m["metrics"].get(n, {})
                    row += [
                        _num(x.get("value")),
                        _num(x.get("spread")),
                        x.get("unit", ""),
                        x.get("source", ""),
                    ]
                w.writerow(row + [" ".join(m["skipped"])])
        return path, csv_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Front:
        """Read a front file (see :func:`paretoskip.frontfile.load_front`)."""
        return cls(load_front(path))

    def table(self, *, strict_only: bool = False) -> str:
        """The front as a text table; ``#`` is the member number ``select``/``export`` use."""
        objs = self.objectives
        ref = {k: v.get("value") for k, v in self.reference["metrics"].items()}
        units = self.data.get("space", {}).get("units", [])
        show_mask = len(units) <= 32
        head = ["#", "strict", *(["mask"] if show_mask else []), "skipped"]
        head += [f"{o.name} [{o.unit}]" for o in objs] + ["test acc"]
        rows = []
        for i, m in enumerate(self.members):
            strict = m.get("strict", True)
            if strict_only and not strict:
                continue
            cells = [str(i), "yes" if strict else "band"]
            cells += [m["mask"]] if show_mask else []
            cells.append(str(m["mask"].count("1")))
            for o in objs:
                v = m["metrics"].get(o.name, {}).get("value")
                spec = METRICS.get(o.name)
                if v is None:
                    cells.append("n/a")
                elif spec is not None and spec.is_fraction:
                    cells.append(f"{v:.4f}")
                else:
                    rel = f" ({v / ref[o.name]:.0%})" if ref.get(o.name) else ""
                    cells.append(f"{v:.4g}{rel}")
            cells.append(_fmt(m.get("test_accuracy")))
            rows.append(cells)
        widths = [max(len(r[j]) for r in [head, *rows]) for j in range(len(head))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        hidden = len(self.members) - len(rows)
        if hidden:
            lines.append(
                f"(+ {hidden} members in the near-Pareto band, within measurement spread of the "
                "front: `paretoskip front` lists them)"
            )
        hv = self.data.get("hypervolume")
        if hv is not None:
            lines.append(
                f"hypervolume {hv['value']:.4f} (reference point {hv.get('reference_point')})"
            )
        return "\n".join(lines)


def _epsilon(
    spreads: np.ndarray, objectives: Sequence[Objective], epsilon: Mapping[str, float] | None
) -> np.ndarray:
    """Per row and objective, the width of the near-Pareto band: the user's ε, or the
    measurement spread (0 where there is none)."""
    if epsilon is not None:
        unknown = set(epsilon) - {o.name for o in objectives}
        if unknown:
            raise ConfigError(
                f"epsilon names {sorted(unknown)}, which are not objectives ({[o.name for o in objectives]})"
            )
    eps = np.where(np.isfinite(spreads), spreads, 0.0).astype(float)
    for j, o in enumerate(objectives):
        if epsilon is not None and o.name in epsilon:
            eps[:, j] = float(epsilon[o.name])
    return eps


def _test_size(evaluator: Any) -> Any:
    try:
        return f"{len(evaluator.data.test.y):,}"
    except (AttributeError, TypeError):
        return "the"


def _eps_text(epsilon: Mapping[str, float] | None, name: str) -> Any:
    if epsilon is not None and name in epsilon:
        return float(epsilon[name])
    return "measurement spread"


def _num(v: Any) -> Any:
    return "" if v is None else v


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def clean_json(obj: Any) -> Any:
    """``obj`` ready for strict JSON: non-finite floats become null, numpy scalars numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
