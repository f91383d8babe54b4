"""Search the skip space for the Pareto front.

Every engine drives the same loop through one :class:`~paretoskip.search.SearchContext`:
it proposes masks, the evaluator measures them (from the cache where it can), and each
evaluation becomes a trial of one Optuna study, the study database.  Running the same
search again resumes it up to the budget.

Engines: :data:`ENGINES` lists them by name.  An engine family is one module of this
package (an :class:`Engine` subclass and a :func:`register_engine` call per name) and one
entry in the ``from . import`` line below; several workers on one study are coordinated by
:mod:`paretoskip.coordination`.

Example:
    >>> import paretoskip
    >>> from paretoskip.data import load_dataset
    >>> data = load_dataset("digits")
    >>> model = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    >>> ev = paretoskip.Evaluator(model, data)
    >>> front = paretoskip.search(ev, budget=30, storage=":memory:", progress=False)
    >>> front.strict_members()[0]["strict"]
    True
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .._version import __version__
from ..errors import ConfigError
from ..evaluate import Evaluator
from ..front import Front
from ..metrics import METRICS, Constraint, parse_constraints, parse_objectives
from ..study import SCHEMA_VERSION, StudyDB
from ._base import (
    ENGINES,
    Engine,
    EngineSpec,
    check_options,
    engine_spec,
    make_engine,
    register_engine,
    structured_masks,
)
from ._context import FIDELITIES, Fidelity, SearchContext, paired_shortfall

# the engine families, in the order ENGINES lists them (each module registers its names)
from . import _pymoo, _optuna, _exhaustive, _greedy, _surrogate  # noqa: E402, F401, I001  isort: skip
from ._exhaustive import EXHAUSTIVE_LIMIT  # noqa: E402  isort: skip

__all__ = [
    "search",
    "open_study",
    "run_engine",
    "check_run_limits",
    "clamp_budget",
    "ENGINES",
    "Engine",
    "EngineSpec",
    "register_engine",
    "engine_spec",
    "make_engine",
    "check_options",
    "SearchContext",
    "Fidelity",
    "FIDELITIES",
    "make_fidelity",
    "paired_shortfall",
    "structured_masks",
    "EXHAUSTIVE_LIMIT",
]

log = logging.getLogger("paretoskip.search")


def _default_name(evaluator: Evaluator) -> str:
    prov = evaluator.provenance()
    return f"{prov['dataset'].get('name', 'data')}-{prov['model'].get('name', 'model')}"


def open_study(
    evaluator: Evaluator,
    *,
    objectives: Sequence[str] = ("accuracy", "flops"),
    constraints: Sequence[str | Constraint] | str | None = (),
    storage: str | os.PathLike | None = None,
    study_name: str | None = None,
    engine: str = "surrogate",
    engine_settings: Mapping[str, Any] | None = None,
    budget: int | None = None,
    seed: int = 0,
) -> StudyDB:
    """Create or reopen the study of this search, with its reference (full model) evaluation.

    Raises :class:`~paretoskip.errors.StudyMismatchError` (writing nothing) when the study
    exists with another model, dataset, space, objectives, constraints or measurement.
    """
    objs = parse_objectives(objectives)
    cons = parse_constraints(constraints)
    for name in [o.name for o in objs] + [c.metric for c in cons]:
        needs = METRICS[name].needs
        if needs is not None and not needs.met_by(evaluator.settings):
            raise ConfigError(
                f"{name!r} needs MeasureSettings({needs.setting}={needs.example!r}); these "
                f"settings have {needs.setting}={getattr(evaluator.settings, needs.setting)!r}"
            )
    # the reference is measured before anything is written, so an unmeasurable objective
    # (e.g. energy without a counter) fails cleanly; it goes into the cache only once the
    # study has accepted this search (a refusal writes nothing, cache included)
    full = evaluator.space.to_bitstring(evaluator.space.full)
    cache, ref = evaluator.cache, evaluator.cached([full]).get(full)
    if ref is None:
        evaluator.cache = None
        try:
            ref = evaluator.evaluate(evaluator.space.full)
        finally:
            evaluator.cache = cache
    for name in [o.name for o in objs] + [c.metric for c in cons]:
        if name not in ref.metrics:
            raise ConfigError(f"{name!r} is not measured with these settings")
        if math.isnan(ref[name]):
            m = ref.metrics[name]
            raise ConfigError(
                f"{name} cannot be measured here ({m.reason or m.source}); drop it from the objectives "
                "and constraints, or use energy='estimated' to search on a labelled estimate"
            )
    prov = evaluator.provenance()
    meta = {
        "schema_version": SCHEMA_VERSION,
        "paretoskip": __version__,
        "space": evaluator.space.to_dict(),
        "objectives": [o.to_dict() for o in objs],
        "constraints": [str(c) for c in cons],
        "model_fingerprint": evaluator.model_fingerprint,
        "data_fingerprint": evaluator.data.fingerprint,
        "settings_fingerprint": evaluator.settings_fingerprint,
        "provenance": prov,
        "engine": engine,
        "engine_settings": dict(engine_settings or {}),
        "budget": budget,
        "seed": seed,
    }
    db = StudyDB.open(storage, study_name or _default_name(evaluator), meta=meta)
    if cache is not None and not ref.cache_hit:
        cache.put(
            evaluator.cache_key,
            ref.mask,
            {k: m.to_dict() for k, m in ref.metrics.items()},
            ref.seconds,
        )
    if db.reference() is None:
        db.set_reference(ref)
    if ref.mask not in db.evaluated_masks():
        db.record(ref, {k: m.value for k, m in ref.metrics.items()}, engine="reference")
    return db


def run_engine(
    engine: Engine,
    evaluator: Evaluator,
    db: StudyDB,
    *,
    budget: int,
    timeout: float | None = None,
    progress: bool = True,
    coordination: Any = None,
    fidelity: Fidelity | None = None,
) -> SearchContext:
    """Run ``engine`` on an open study until it holds ``budget`` distinct masks (or time
    runs out); returns the finished context (its :meth:`~SearchContext.summary`)."""
    ctx = SearchContext(
        evaluator,
        db,
        engine=engine.name,
        budget=budget,
        timeout=timeout,
        progress=progress,
        coordination=coordination,
        fidelity=fidelity,
    )
    try:
        engine.run(ctx)
    finally:
        ctx.close()
        log.info("search %s: %s", db.name, ctx.summary())
    return ctx


def clamp_budget(budget: int, space: Any) -> int:
    """A budget no larger than the skip space (a larger one is clamped, with a message)."""
    if budget > space.size:
        log.warning(
            "budget %d is more than the %d masks of the skip space; searching all %d",
            budget,
            space.size,
            space.size,
        )
        return int(space.size)
    return budget


def make_fidelity(
    fidelity: str = "full",
    *,
    engine: str,
    screen_fraction: float | None = None,
    screen_k: float | None = None,
    screen_rungs: int | None = None,
    seed: int = 0,
) -> Fidelity:
    """The :class:`Fidelity` of a search, checked against its engine: Optuna samplers
    (engines several workers can share) evaluate on the whole split only."""
    if fidelity not in FIDELITIES:
        raise ConfigError(f"fidelity={fidelity!r}; accepted: {', '.join(map(repr, FIDELITIES))}")
    if fidelity == "full" and any(v is not None for v in (screen_fraction, screen_k, screen_rungs)):
        raise ConfigError(
            "screen_fraction, screen_k and screen_rungs apply to fidelity='multi' only; "
            f"fidelity={fidelity!r}"
        )
    if fidelity == "multi" and engine_spec(engine).shareable:
        multi = [n for n in ENGINES if not engine_spec(n).shareable]
        raise ConfigError(
            f"fidelity='multi' is not supported by engine {engine!r} (an Optuna sampler, "
            f"told by workers on the whole split); accepted engines: {', '.join(multi)}"
        )
    opts: dict[str, Any] = {"screen_seed": seed}
    if screen_fraction is not None:
        opts["screen_fraction"] = screen_fraction
    if screen_k is not None:
        opts["screen_k"] = screen_k
    if screen_rungs is not None:
        opts["screen_rungs"] = screen_rungs
    return Fidelity(fidelity, **opts)


def check_run_limits(budget: int | None, timeout: float | None) -> None:
    """Refuse a budget below 1 or a timeout that is not positive."""
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
    ):
        raise ConfigError(f"budget={budget!r} must be a positive number of distinct masks")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"timeout={timeout} must be positive seconds")


def search(
    evaluator: Evaluator,
    *,
    objectives: Sequence[str] = ("accuracy", "flops"),
    constraints: Sequence[str | Constraint] | str | None = (),
    engine: str = "surrogate",
    budget: int | None = None,
    timeout: float | None = None,
    storage: str | os.PathLike | None = None,
    study_name: str | None = None,
    seed: int = 0,
    engine_options: Mapping[str, Any] | None = None,
    epsilon: Mapping[str, float] | None = None,
    progress: bool = True,
    fidelity: str = "full",
    screen_fraction: float | None = None,
    screen_k: float | None = None,
    screen_rungs: int | None = None,
) -> Front:
    """Search for the Pareto front of skip masks and return it.

    Args:
        evaluator: the :class:`~paretoskip.Evaluator` of the model and data.
        objectives: two or more of ``accuracy`` (maximised), ``flops``, ``params``,
            ``latency``, ``energy`` (minimised).
        constraints: e.g. ``["accuracy >= 0.95", "flops <= 0.5 * full"]``.
        engine: one of :data:`ENGINES` (default ``surrogate``: on the search-quality spaces
            it reaches 0.987-0.995 of the exact hypervolume with 128 masks and 0.997-0.999
            with 256, NSGA-II 0.91-0.96 and 0.95-0.98).
        budget: distinct masks to evaluate in the study, the full model included (default
            200; every mask for ``exhaustive``).  A resumed search continues to it.
        timeout: wall-clock limit in seconds for this call.
        storage: study database: a path (SQLite), an SQLAlchemy URL, ``redis://…``, a
            ``.log`` journal file, or ``":memory:"``; default ``studies/<study_name>.db``.
        study_name: default ``<dataset>-<model>``.
        seed: seeds the engine.
        engine_options: engine settings (e.g. ``{"pop_size": 32}`` for pymoo engines,
            ``{"population_size": 20}`` for Optuna's NSGA-II).
        epsilon: per-objective width of the near-Pareto band (default: each point's own
            measurement spread).
        progress: show a progress bar (evaluations, cache hits, hypervolume).
        fidelity: ``"full"`` (default: every candidate on the whole validation split) or
            ``"multi"``: each new candidate is first evaluated on nested, stratified
            subsets of the validation split (``screen_rungs``, default 5, subsets each
            twice the one before, the largest ``screen_fraction`` of each class, default
            0.8, drawn with ``seed``); after each it is dropped when a front point of the
            whole-split evaluations of no higher cost is more accurate than its estimated
            whole-split accuracy (paired on the same images with its nearest
            whole-split neighbours) by more than ``screen_k`` (default 2) standard
            errors, or another candidate of the same batch of no higher cost beats it on
            the same images by as much (recorded as a PRUNED trial with
            ``fidelity="subset"``, never a front member, its accuracy that estimate).
            The rest are evaluated on the other validation images, so their accuracy is a
            whole-split value.  Needs accuracy and exactly counted costs (FLOPs,
            parameters) as the objectives, and an engine that is not an Optuna sampler.
            The run summary (``front.data["study"]["run"]``) counts ``image_evaluations``
            (validation images × masks measured) either way.
    """
    from ..coordination import Coordination, StudyLease, StudyLock
    from ..storage import StorageLocation

    eng = make_engine(engine, seed, **dict(engine_options or {}))
    check_run_limits(budget, timeout)
    fid = make_fidelity(
        fidelity,
        engine=engine,
        screen_fraction=screen_fraction,
        screen_k=screen_k,
        screen_rungs=screen_rungs,
        seed=seed,
    )
    fid.check(parse_objectives(objectives))
    budget = clamp_budget(budget or eng.default_budget or evaluator.space.size, evaluator.space)
    study_name = study_name or _default_name(evaluator)
    location = StorageLocation.parse(storage, study_name).prepare()
    shareable = engine_spec(engine).shareable
    # every process on a study holds its lease: Optuna samplers share it (and coordinate
    # through the study lock, as workers do), the other engines hold it alone
    lease = StudyLease(
        location,
        study_name,
        mode="shared" if shareable else "exclusive",
        what=f"search, engine {engine}",
    )
    with lease:
        lock = StudyLock(location, study_name) if shareable else None
        try:
            with lock if lock is not None else contextlib.nullcontext():
                db = open_study(
                    evaluator,
                    objectives=objectives,
                    constraints=constraints,
                    storage=location,
                    study_name=study_name,
                    engine=engine,
                    engine_settings=eng.describe(),
                    budget=budget,
                    seed=seed,
                )
            coord = Coordination(lock=lock if lock.shared else None) if lock is not None else None
            ctx = run_engine(
                eng,
                evaluator,
                db,
                budget=budget,
                timeout=timeout,
                progress=progress,
                coordination=coord,
                fidelity=fid,
            )
        finally:
            if lock is not None:
                lock.close()
    front = Front.from_study(
        db, epsilon=epsilon, evaluator=evaluator, budget=budget, engine=eng.name, seed=seed
    )
    front.data["study"]["run"] = ctx.summary()
    if fid.multi:
        # candidates dropped after screening: in the study (PRUNED trials), never in a front
        front.data["study"]["screened_masks"] = len(ctx.screened)
    return front
