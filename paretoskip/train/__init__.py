"""Train skippable ResNets: recipes, one shared resumable loop, checkpoints with provenance.

A model meant to have its residual branches skipped at inference should be trained with
stochastic depth (Huang et al., 2016): each block's branch is dropped at random during
training, with a survival probability decaying linearly from 1 to ``p_last``.  The
``"plain"`` recipe trains the same architecture without it (``p_last=1``), as a baseline.
Further recipes (e.g. ``"adn"``) register themselves (:func:`register_recipe`); every recipe
shares the optimiser, schedule, augmentation and resuming of :func:`fit`.

Example:
    >>> from paretoskip.data import load_dataset
    >>> from paretoskip.train import train_model
    >>> data = load_dataset("digits")
    >>> result = train_model("resnet20", data, epochs=1, progress=False)
    >>> 0.0 <= result.test_accuracy <= 1.0
    True

Training is seeded: ``torch.manual_seed(seed)`` before building the model, and one seeded
generator for shuffling and augmentation, so one seed gives the same weights on one machine
(with the same thread count; see :mod:`paretoskip.train._loop` for what is and is not
bit-reproducible).  The caller's global RNG state is restored afterwards.
"""

from __future__ import annotations

from ._adn import AdaptiveDepth, distillation_loss  # registers the "adn" recipe
from ._loop import FitResult, TrainSettings, augment_batch, evaluate_accuracy, fit
from ._recipes import (
    RECIPES,
    Recipe,
    RecipeOption,
    StepOutput,
    get_recipe,
    register_recipe,
)
from ._state import TrainState, read_state, state_path_for, write_state
from ._train import TrainResult, train_and_save, train_model

__all__ = [
    "RECIPES",
    "Recipe",
    "RecipeOption",
    "StepOutput",
    "get_recipe",
    "register_recipe",
    "TrainSettings",
    "TrainResult",
    "FitResult",
    "fit",
    "train_model",
    "train_and_save",
    "evaluate_accuracy",
    "augment_batch",
    "TrainState",
    "read_state",
    "write_state",
    "state_path_for",
    "AdaptiveDepth",
    "distillation_loss",
]
