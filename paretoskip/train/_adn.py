"""The ``adn`` recipe: a super-net and its base-net trained together by self-distillation.

Kang & Lee, "Adaptive Depth Networks with Skippable Sub-Paths" (NeurIPS 2024).  Each step
runs two forward/backward passes on the same batch before the loop's one optimizer step:

1. the *super-net* (nothing skipped): ``alpha * CE(super, y)``, with the loop's loss
   function (so its label smoothing);
2. the *base-net* (every skippable sub-path skipped, the mandatory blocks on their
   skip-aware batch norms): ``(1 - alpha) * T² * KL(softmax(super / T).detach() ‖
   softmax(base / T))``, averaged over the batch (``KLDivLoss(reduction="batchmean")``).

Only these two extremes are trained; the other configurations are used as they come.  The
KL covers every class (the reference code keeps the super-net's top 500 of ImageNet's 1000).
The history records ``loss_ce`` (super-net cross-entropy) and ``loss_kd`` (the distillation
term before weighting); the running train accuracy is the super-net's.  Option
``subpath_p_last`` (default 1.0: off) adds stochastic depth inside the skippable sub-paths of
the super-net (the model's ``p_last``); it has its own name so that the ``p_last`` of
:func:`~paretoskip.train.train_model` and of study files (stochastic depth's option, 0.5 by
default there) never turns it on by accident.

The model must be an ADN variant (``resnet20-adn``, ``resnet50-adn``, ...; see
:mod:`paretoskip.models._adn`).

Example:
    >>> from paretoskip.train import get_recipe
    >>> adn = get_recipe("adn")
    >>> adn.resolve_options({"alpha": 0.7}), adn.passes_per_step
    ({'alpha': 0.7, 'temperature': 1.0, 'subpath_p_last': 1.0}, 2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models._adn import ADN_MODELS, base_mask, is_adn, masked
from ._recipes import LossFn, Recipe, RecipeOption, StepOutput, register_recipe

__all__ = ["AdaptiveDepth", "distillation_loss"]


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``T² · KL(softmax(teacher / T) ‖ softmax(student / T))``, batch mean; no gradient to
    the teacher.

    Example:
        >>> import torch
        >>> z = torch.tensor([[2.0, 0.0, -1.0]])
        >>> abs(float(distillation_loss(z, z))) < 1e-6  # a student equal to its teacher
        True
        >>> round(float(distillation_loss(z, torch.zeros(1, 3))), 4)
        0.7379
    """
    t = temperature
    target = F.softmax(teacher.detach() / t, dim=1)
    return F.kl_div(F.log_softmax(student / t, dim=1), target, reduction="batchmean") * (t * t)


class AdaptiveDepth(Recipe):
    name = "adn"
    description = (
        "Adaptive Depth Networks (Kang & Lee, 2024): super-net (cross-entropy) and base-net "
        "(every sub-path skipped, distilled from the super-net) in every step"
    )
    options = {
        "alpha": RecipeOption(
            0.5,
            lambda v: _is_real(v) and 0.0 <= v <= 1.0,
            "alpha must be a number in [0, 1]",
            "weight of the super-net's cross-entropy; the base-net's distillation gets 1 - alpha",
        ),
        "temperature": RecipeOption(
            1.0,
            lambda v: _is_real(v) and v > 0,
            "temperature must be a number > 0",
            "softmax temperature T of the distillation (the term is scaled by T²)",
        ),
        "subpath_p_last": RecipeOption(
            1.0,
            lambda v: _is_real(v) and 0.0 < v <= 1.0,
            "subpath_p_last must be a number in (0, 1]",
            "stochastic-depth survival of the last block inside the skippable sub-paths "
            "(1: none, as in the paper)",
        ),
    }
    passes_per_step = 2

    def model_kwargs(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"p_last": float(options["subpath_p_last"])}

    def check_model(self, model: nn.Module) -> None:
        if not is_adn(model):
            spec = getattr(model, "paretoskip_spec", None)
            what = repr(spec["name"]) if spec else type(model).__name__
            raise ConfigError(
                f"recipe 'adn' needs a model with skippable sub-paths; {what} has none. "
                f"Accepted: an ADN model ({', '.join(ADN_MODELS)})"
            )

    def step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: LossFn,
        options: Mapping[str, Any],
    ) -> StepOutput:
        alpha = float(options["alpha"])
        t = float(options["temperature"])
        base = base_mask(model)
        with masked(model, [0] * len(base)):
            logits = model(x)
            ce = loss_fn(logits, y)
            (alpha * ce).backward()
        with masked(model, base):
            kd = distillation_loss(model(x), logits, t)
            ((1.0 - alpha) * kd).backward()
        loss = alpha * ce.detach() + (1.0 - alpha) * kd.detach()
        return StepOutput(loss, logits.detach(), {"ce": ce.detach(), "kd": kd.detach()})


register_recipe(AdaptiveDepth())
