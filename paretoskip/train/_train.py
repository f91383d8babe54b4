"""``train_model`` and ``train_and_save``: a named model, a recipe, the shared loop."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DatasetSplits
from ..errors import ConfigError
from ..measure import resolve_device
from ..models import create_model, model_spec
from ._loop import TrainSettings, evaluate_accuracy, fit
from ._recipes import get_recipe
from ._state import state_path_for

__all__ = ["TrainResult", "train_model", "train_and_save"]

logger = logging.getLogger("paretoskip.train")


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What :func:`train_model` produced.

    ``history`` has one dict per epoch: ``epoch``, ``lr`` (at the epoch's end),
    ``train_loss``, ``train_accuracy`` (on augmented batches, as the recipe trains them),
    ``val_accuracy``, ``seconds`` (since the start, resumed runs included) and the recipe's
    loss terms (``loss_<name>``).  ``val_accuracy`` and ``test_accuracy`` are those of the
    final model.  ``settings`` holds the recipe, its options and every hyper-parameter;
    ``checkpoint`` the ``.safetensors`` path when saved; ``resumed_from`` the epoch a
    resumed run started after (0 for a fresh run).
    """

    model: nn.Module
    epochs: int
    seconds: float
    val_accuracy: float
    test_accuracy: float
    history: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    resumed_from: int = 0


def train_model(
    model_name: str,
    data: DatasetSplits,
    *,
    recipe: str = "stochastic-depth",
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 5e-4,
    warmup_epochs: float | None = None,
    schedule: str = "cosine",
    milestones: tuple[float, ...] | list[float] = (),
    gamma: float = 0.1,
    label_smoothing: float = 0.0,
    seed: int = 0,
    p_last: float | None = None,
    augment: bool | None = None,
    hflip: bool | None = None,
    threads: int | None = None,
    recipe_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    state_path: str | os.PathLike | None = None,
) -> TrainResult:
    """Train ``model_name`` on ``data.train`` and measure it on ``data.val`` and ``data.test``.

    SGD (optionally Nesterov) with weight decay, a linear warm-up then a cosine decay to
    zero updated every step (:class:`TrainSettings`), standard augmentation per dataset,
    optional label smoothing; the recipe decides what a step computes.  With
    ``state_path`` the run is resumable (see :func:`paretoskip.train.fit`).

    Args:
        model_name: a name accepted by :func:`paretoskip.create_model`.
        data: from :func:`paretoskip.data.load_dataset`; gives ``num_classes``,
            ``in_channels`` and ``input_size``.
        recipe: a name in :data:`RECIPES`: ``"stochastic-depth"`` (survival of the last
            block ``p_last``, default 0.5), ``"plain"`` (``p_last=1``), or a registered one.
        p_last: the stochastic-depth option (ignored by ``plain``, as before).
        recipe_options: further options of the recipe (see ``get_recipe(name).options``).
        model_kwargs: further :func:`create_model` arguments (``shortcut``, ``widths``).
        device: where to train; the returned model stays there, in eval mode.
        The other arguments are those of :class:`TrainSettings`.

    Example:
        >>> from paretoskip.data import load_dataset
        >>> data = load_dataset("digits", limit=300)
        >>> result = train_model("resnet20", data, epochs=1, progress=False)
        >>> 0.0 <= result.test_accuracy <= 1.0, result.settings["recipe"]
        (True, 'stochastic-depth')
    """
    rec = get_recipe(recipe) if isinstance(recipe, str) else None
    if rec is None:
        raise ConfigError(f"recipe={recipe!r} must be a recipe name")
    options = dict(recipe_options or {})
    if p_last is not None and "p_last" in rec.options:
        options.setdefault("p_last", p_last)
    options = rec.resolve_options(options)
    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        schedule=schedule,
        milestones=tuple(milestones),
        gamma=gamma,
        label_smoothing=label_smoothing,
        augment=augment,
        hflip=hflip,
        seed=seed,
        threads=threads,
    )
    kwargs = dict(model_kwargs or {})
    for key in rec.model_kwargs(options):
        if key in kwargs:
            raise ConfigError(
                f"give {key} as a training option (train_model({key}=...) or "
                f"recipe_options), not in model_kwargs"
            )
    if "p_last" in kwargs:
        raise ConfigError("give p_last as train_model(p_last=...), not in model_kwargs")
    for key, value in (
        ("num_classes", data.num_classes),
        ("in_channels", data.in_channels),
        ("input_size", data.input_size),
    ):
        if key in kwargs and kwargs[key] != value:
            raise ConfigError(
                f"model_kwargs {key}={kwargs[key]!r} contradicts the dataset ({value})"
            )
        kwargs[key] = value
    kwargs.update(rec.model_kwargs(options))
    device = resolve_device(device)  # a clear error for a device not here

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(model_name, **kwargs).to(device)
        rec.check_model(model)
        spec = model_spec(model)
        run = {"model": spec, "dataset_fingerprint": data.fingerprint}
        logger.info(
            "training %s on %s: recipe %s %s, %s",
            model_name,
            data.name,
            rec.name,
            options,
            asdict(settings),
        )
        fitted = fit(
            model,
            data,
            recipe=rec,
            recipe_options=options,
            settings=settings,
            run_description=run,
            state_path=state_path,
            progress=progress,
            desc=f"{model_name} {data.name}",
            device=device,
        )
    history = fitted.history
    steps = fitted.steps_per_epoch
    total = max(1, epochs * steps)
    summary = {
        "model": model_name,
        "recipe": rec.name,
        "recipe_options": options,
        "p_last": spec["kwargs"].get("p_last"),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "nesterov": nesterov,
        "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing,
        "seed": seed,
        "threads": fitted.threads,
        "schedule": (
            f"linear warm-up {settings.warmup_steps(steps)} steps, cosine to 0 over {total} steps"
        ),
        "augment": fitted.augment,
        "model_kwargs": dict(spec["kwargs"]),
        "steps_per_epoch": steps,
        "passes_per_step": rec.passes_per_step,
        "device": str(device),
    }
    val_accuracy = history[-1]["val_accuracy"] if history else evaluate_accuracy(model, data.val)
    test_accuracy = evaluate_accuracy(model, data.test)
    logger.info(
        "trained %s on %s in %.1f s: val acc %.4f, test acc %.4f",
        model_name,
        data.name,
        fitted.seconds,
        val_accuracy,
        test_accuracy,
    )
    return TrainResult(
        model=model,
        epochs=epochs,
        seconds=fitted.seconds,
        val_accuracy=val_accuracy,
        test_accuracy=test_accuracy,
        history=history,
        settings=summary,
        resumed_from=fitted.resumed_from,
    )


def _reproducibility(settings: Mapping[str, Any]) -> dict[str, Any]:
    import platform

    return {
        "seed": settings["seed"],
        "threads": settings["threads"],
        "device": settings["device"],
        "cpu": platform.processor() or platform.machine(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "bitwise": (
            "the same seed, thread count, torch build and CPU type give the same weights bit "
            "for bit (an interrupted run resumed included); another thread count gives a "
            "statistically equivalent but not bitwise identical model"
        ),
    }


def train_and_save(
    model_name: str,
    data: DatasetSplits,
    out_path: str | os.PathLike,
    *,
    resume: bool = True,
    **kw: Any,
) -> TrainResult:
    """:func:`train_model`, then :func:`~paretoskip.checkpoint.save_checkpoint` to ``out_path``.

    Resumable: the training state goes to ``<out_path>.train-state.safetensors`` after every
    epoch, a killed run started again continues from its last completed epoch (``resume``
    False: start over), and the state file is removed once the checkpoint is written.

    The checkpoint's JSON records the recipe and every training setting, the dataset
    (``data.describe()``, including its fingerprint), the epochs, time, validation and test
    accuracy, the per-epoch history, what makes the run reproducible (seed, threads, device)
    and the library versions.  The returned result's ``checkpoint`` is the ``.safetensors``
    path.
    """
    from ..checkpoint import save_checkpoint

    state = state_path_for(out_path)
    if not resume and state.exists():
        state.unlink()
    started = time.time()
    result = train_model(model_name, data, state_path=state, **kw)
    seconds_per_epoch = (
        [
            b["seconds"] - a["seconds"]
            for a, b in zip([{"seconds": 0.0}] + result.history, result.history)
        ]
        if result.history
        else []
    )
    metadata = {
        "recipe": result.settings["recipe"],
        "p_last": result.settings["p_last"],
        "training": result.settings,
        "dataset": data.describe(),
        "dataset_fingerprint": data.fingerprint,
        "epochs": result.epochs,
        "train_seconds": result.seconds,
        "training_cost": {
            "seconds": result.seconds,
            "seconds_per_epoch_median": (
                sorted(seconds_per_epoch)[len(seconds_per_epoch) // 2]
                if seconds_per_epoch
                else None
            ),
            "passes_per_step": result.settings["passes_per_step"],
            "images_per_epoch": result.settings["steps_per_epoch"]
            * min(result.settings["batch_size"], len(data.train)),
            "resumed_from_epoch": result.resumed_from,
            "wall_seconds_this_process": time.time() - started,
        },
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
        "history": result.history,
        "reproducibility": _reproducibility(result.settings),
    }
    path = save_checkpoint(result.model, out_path, metadata=metadata)
    state.unlink(missing_ok=True)
    logger.info("saved %s to %s", model_name, path)
    return dataclasses.replace(result, checkpoint=str(Path(path)))
