"""Training gates on a trained backbone, through the shared loop :func:`paretoskip.train.fit`.

The loss of one step (:class:`GateRecipe`) is

    cross-entropy(logits, y) + cost_weight · (mean over the batch of FLOPs fraction − target)²

where each input's FLOPs fraction (of the full backbone, gates included) is computed from its
sampled decisions and the exact cost table, so it is differentiable through the
straight-through decisions (:meth:`~paretoskip.dynamic.GatedModel.forward_masked`).  This is
ConvNet-AIG's target-rate loss, put on FLOPs instead of per-layer execution rates, so the gates
may spend the budget where it matters.  Sweeping ``target`` gives the dynamic front.

The backbone is frozen by default (only the gates train, as BlockDrop's policy does before its
joint fine-tuning); ``finetune=True`` trains it jointly.  Its batch norm keeps the running
statistics it was trained with in either case.  The optimiser, schedule, augmentation,
progress, seeding and resumable state are those of every other recipe (:func:`fit`); a killed
run continues from its last epoch and ends with the same gates.

Example:
    >>> import paretoskip
    >>> from paretoskip.data import load_dataset
    >>> from paretoskip.dynamic import train_gates
    >>> data = load_dataset("digits", limit=300)
    >>> bb = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    >>> result = train_gates(bb, data, mode="layer", target=0.6, epochs=1, progress=False)
    >>> 0.0 < result.val.flops_mean / result.val.full_flops < 1.2
    True
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..train import Recipe, RecipeOption, StepOutput, TrainSettings, fit, state_path_for
from ._model import GatedModel
from ._report import DynamicProfile, profile

__all__ = ["GateRecipe", "GATE_RECIPE", "GateTrainResult", "train_gates", "train_gates_and_save"]

logger = logging.getLogger("paretoskip.dynamic")


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _non_negative(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


class GateRecipe(Recipe):
    """Cross-entropy plus a squared deviation of the batch's mean FLOPs fraction from a target."""

    name = "gates"
    description = (
        "per-input gates on a trained backbone: cross-entropy + cost_weight * (mean FLOPs "
        "fraction - target)^2, straight-through Gumbel decisions"
    )
    options = {
        "target": RecipeOption(
            0.5, _positive, "target must be a number in (0, 1]", "mean FLOPs fraction to aim at"
        ),
        "cost_weight": RecipeOption(
            8.0, _non_negative, "cost_weight must be a number >= 0", "weight of the cost term"
        ),
        "temperature": RecipeOption(
            1.0, _positive, "temperature must be a number > 0", "of the relaxed decisions"
        ),
    }

    def check_model(self, model: nn.Module) -> None:
        if not isinstance(model, GatedModel):
            raise ConfigError(
                f"the {self.name!r} recipe trains a paretoskip.dynamic.GatedModel, not a "
                f"{type(model).__name__}; use paretoskip.dynamic.train_gates"
            )

    def step(self, model, x, y, loss_fn, options) -> StepOutput:
        out = model.forward_masked(x, stochastic=True, temperature=float(options["temperature"]))
        ce = loss_fn(out.logits, y)
        mean = out.cost_eval.mean()
        loss = ce + float(options["cost_weight"]) * (mean - float(options["target"])) ** 2
        loss.backward()
        return StepOutput(
            loss.detach(),
            out.logits.detach(),
            {
                "ce": ce.detach(),
                "flops_fraction": mean.detach(),
                "flops_fraction_sampled": out.cost.mean().detach(),
            },
        )


#: The recipe instance :func:`train_gates` uses (not in the backbone recipe registry).
GATE_RECIPE = GateRecipe()


@dataclass(frozen=True, eq=False)
class GateTrainResult:
    """What :func:`train_gates` produced.

    ``val`` and ``test`` are :class:`~paretoskip.dynamic.DynamicProfile` of the final gated
    model (grouped execution, hard decisions); ``history`` has one record per epoch (see
    :class:`~paretoskip.train.TrainResult`), with ``loss_ce`` and ``loss_flops_fraction``
    (the mean sampled FLOPs fraction in training).
    """

    model: GatedModel
    seconds: float
    history: list[dict[str, Any]]
    val: DynamicProfile
    test: DynamicProfile
    settings: dict[str, Any] = field(default_factory=dict)
    resumed_from: int = 0
    checkpoint: str | None = None


def _backbone_description(backbone: nn.Module) -> dict[str, Any]:
    from ..checkpoint import weights_fingerprint
    from ..models import model_spec

    try:
        return {
            "architecture": model_spec(backbone),
            "weights_fingerprint": weights_fingerprint(backbone),
        }
    except ConfigError:
        h = torch.cat([p.detach().flatten().double() for p in backbone.state_dict().values()])
        return {"architecture": type(backbone).__name__, "weights_sum": float(h.sum())}


def train_gates(
    backbone: nn.Module,
    data: Any,
    *,
    mode: str = "lc",
    target: float = 0.5,
    gate: str = "block",
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 0.05,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 1e-4,
    warmup_epochs: float | None = None,
    augment: bool | None = None,
    hflip: bool | None = None,
    cost_weight: float = 8.0,
    temperature: float = 1.0,
    finetune: bool = False,
    hidden: int = 16,
    channel_groups: int = 4,
    scale: bool = True,
    never_skip: Sequence[str] = (),
    policy_width: int = 16,
    seed: int = 0,
    threads: int | None = None,
    state_path: str | os.PathLike | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> GateTrainResult:
    """Train gates on (a copy of) ``backbone`` towards a mean FLOPs fraction ``target``.

    Args:
        backbone: the trained skippable model (left untouched: a copy is gated).
        data: a :class:`~paretoskip.data.DatasetSplits` matching the backbone's input.
        mode, gate, hidden, channel_groups, scale, never_skip, policy_width: the
            :class:`~paretoskip.dynamic.GatedModel`.
        target: mean FLOPs per input as a fraction of the full backbone (gates included),
            above the cheapest gated path and at most 1.
        cost_weight, temperature: the :class:`GateRecipe` options.
        finetune: also train the backbone (jointly); otherwise it is frozen.
        state_path: resumable training state (see :func:`paretoskip.train.fit`).
        The others are :class:`~paretoskip.train.TrainSettings`.
    """
    if not isinstance(finetune, bool):
        raise ConfigError(f"finetune={finetune!r} is not accepted; give true or false")
    shape = tuple(getattr(backbone, "input_shape", ()) or ())
    want = (data.in_channels, data.input_size, data.input_size)
    if shape and shape != want:
        raise ConfigError(
            f"the backbone takes inputs of shape {shape} but {data.name} has {want}; train the "
            "gates on the data the backbone was trained for"
        )
    recipe_options = GATE_RECIPE.resolve_options(
        {"target": target, "cost_weight": cost_weight, "temperature": temperature}
    )
    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        augment=augment,
        hflip=hflip,
        seed=seed,
        threads=threads,
    )
    device = torch.device(device)
    description = _backbone_description(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GatedModel(
            copy.deepcopy(backbone).to(device),
            mode=mode,
            gate=gate,
            hidden=hidden,
            channel_groups=channel_groups,
            scale=scale,
            never_skip=never_skip,
            policy_width=policy_width,
        ).to(device)
        lowest = model.costs.gated_minimum / model.costs.full
        if not lowest < target <= 1.0:
            raise ConfigError(
                f"target={target!r} is not accepted; give the mean FLOPs fraction of the full "
                f"model to aim at, a number in ({lowest:.4f}, 1] (below {lowest:.4f} every unit "
                "would have to be skipped, with the gates still paid)"
            )
        GATE_RECIPE.check_model(model)
        for p in model.backbone.parameters():
            p.requires_grad_(finetune)
        run = {
            "backbone": description,
            "dataset_fingerprint": data.fingerprint,
            "gates": model.gate_config,
            "finetune": finetune,
        }
        fitted = fit(
            model,
            data,
            recipe=GATE_RECIPE,
            recipe_options=recipe_options,
            settings=settings,
            run_description=run,
            state_path=state_path,
            progress=progress,
            desc=f"gates {mode} target {target}",
            device=device,
            parameters=None if finetune else model.gate_parameters(),
        )
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.eval()
    val = profile(model, data.val, split_name="val")
    test = profile(model, data.test, split_name="test")
    logger.info(
        "gates %s, target %.3f: val acc %.4f at %.3f of the full FLOPs (± %.3f), test acc %.4f, "
        "%d distinct configurations, %.1f s",
        mode,
        target,
        val.accuracy,
        val.flops_mean / val.full_flops,
        val.flops_std / val.full_flops,
        test.accuracy,
        test.distinct_configurations,
        fitted.seconds,
    )
    summary = {
        "recipe": GATE_RECIPE.name,
        "recipe_options": recipe_options,
        "gates": model.gate_config,
        "finetune": finetune,
        "backbone": description,
        "train_settings": asdict(settings),
        "threads": fitted.threads,
        "steps_per_epoch": fitted.steps_per_epoch,
        "augment": fitted.augment,
        "device": str(device),
    }
    return GateTrainResult(
        model=model,
        seconds=fitted.seconds,
        history=fitted.history,
        val=val,
        test=test,
        settings=summary,
        resumed_from=fitted.resumed_from,
    )


def train_gates_and_save(
    backbone: nn.Module,
    data: Any,
    out_path: str | os.PathLike,
    *,
    resume: bool = True,
    metadata: Mapping[str, Any] | None = None,
    **kw: Any,
) -> GateTrainResult:
    """:func:`train_gates`, resumable from ``<out_path>.train-state.safetensors``, then saved.

    The checkpoint (:func:`~paretoskip.dynamic.save_gated`) records the target, every
    setting, the backbone's architecture and weights fingerprint, the dataset, the history,
    the time and the validation and test profiles; the state file is removed once it is
    written.
    """
    from ._checkpoint import save_gated

    state = state_path_for(out_path)
    if not resume and state.exists():
        state.unlink()
    started = time.time()
    result = train_gates(backbone, data, state_path=state, **kw)
    doc = {
        "target": result.settings["recipe_options"]["target"],
        "training": result.settings,
        "dataset": data.describe(),
        "train_seconds": result.seconds,
        "resumed_from_epoch": result.resumed_from,
        "wall_seconds_this_process": time.time() - started,
        "history": result.history,
        "val": result.val.to_dict(),
        "test": result.test.to_dict(),
        **dict(metadata or {}),
    }
    path = save_gated(result.model, out_path, metadata=doc)
    state.unlink(missing_ok=True)
    return dataclasses.replace(result, checkpoint=str(Path(path)))
