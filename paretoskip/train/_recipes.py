"""Training recipes: what one optimisation step computes, and how the model is built for it.

A recipe is the part of training that differs between the methods this project compares:
``plain`` (the baseline), ``stochastic-depth`` (residual branches dropped at random, survival
decaying linearly to ``p_last``) and, registered by their own modules, e.g. ``adn`` (a
super-net and a base-net trained together by self-distillation).  Everything else (optimizer,
schedule, augmentation, resuming, progress, metadata) is shared by :func:`paretoskip.train.fit`,
so methods trained with the same settings are compared fairly.

A new recipe is one :class:`Recipe` subclass and one :func:`register_recipe` call.

Example:
    >>> from paretoskip.train import RECIPES, get_recipe
    >>> {"plain", "stochastic-depth"} <= set(RECIPES)
    True
    >>> get_recipe("plain").model_kwargs({})
    {'p_last': 1.0}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

__all__ = [
    "Recipe",
    "StepOutput",
    "RecipeOption",
    "register_recipe",
    "get_recipe",
    "RECIPES",
    "Plain",
    "StochasticDepth",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StepOutput:
    """What one training step returns to the loop.

    ``loss`` is what was back-propagated (already ``.backward()``-ed by the recipe, so a
    recipe may run several forward/backward passes before the one optimizer step);
    ``logits`` are the predictions counted in the running train accuracy; ``parts`` are
    named loss terms shown in the history (e.g. ``{"ce": …, "kd": …}``).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    parts: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class RecipeOption:
    """One recipe-specific option: its default, a check and what it means."""

    default: Any
    check: Callable[[Any], bool]
    accepted: str
    help: str


def _in_unit_interval_open_closed(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v <= 1.0


class Recipe:
    """Base class of training recipes.

    Attributes:
        name: the recipe's name (``train_model(recipe=name)``, ``[model.train] recipe``).
        description: one line.
        options: recipe-specific options (name → :class:`RecipeOption`).
        passes_per_step: forward/backward passes of the network per optimizer step (the
            training cost relative to plain training).
    """

    name: str = ""
    description: str = ""
    options: Mapping[str, RecipeOption] = {}
    passes_per_step: int = 1

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults filled in and every value checked; unknown names refused."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            accepted = ", ".join(self.options) or "none"
            raise ConfigError(
                f"recipe {self.name!r} does not take {unknown}; its options: {accepted}"
            )
        out = {}
        for key, opt in self.options.items():
            value = given.get(key, opt.default)
            if not opt.check(value):
                raise ConfigError(
                    f"recipe {self.name!r}: {key}={value!r} is not accepted; {opt.accepted}"
                )
            out[key] = value
        return out

    def model_kwargs(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Arguments this recipe adds to :func:`paretoskip.create_model`."""
        return {}

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`ConfigError` when the recipe cannot train ``model``."""

    def step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: LossFn,
        options: Mapping[str, Any],
    ) -> StepOutput:
        """One step's forward and backward passes (the loop zeroes gradients and steps)."""
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        return StepOutput(loss.detach(), logits.detach(), {})


class Plain(Recipe):
    name = "plain"
    description = "the same network trained without stochastic depth (the baseline)"

    def model_kwargs(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"p_last": 1.0}


class StochasticDepth(Recipe):
    name = "stochastic-depth"
    description = (
        "residual branches dropped at random in training (Huang et al., 2016), survival "
        "decaying linearly from 1 to p_last"
    )
    options = {
        "p_last": RecipeOption(
            0.5,
            _in_unit_interval_open_closed,
            "p_last must be in (0, 1]",
            "survival probability of the last block (linear decay from 1)",
        )
    }

    def model_kwargs(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"p_last": float(options["p_last"])}


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    """Make ``recipe`` available by its name; a name registered twice is refused."""
    if not recipe.name:
        raise ConfigError(f"{type(recipe).__name__} has no name")
    if recipe.name in _RECIPES:
        raise ConfigError(
            f"a recipe named {recipe.name!r} is already registered "
            f"({type(_RECIPES[recipe.name]).__name__})"
        )
    _RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """The registered recipe called ``name``."""
    try:
        return _RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; available: {', '.join(_RECIPES)}") from None


class _Names(Mapping):
    """A live, read-only view of the registered recipe names (``name in RECIPES`` works)."""

    def __getitem__(self, key: str) -> Recipe:
        return _RECIPES[key]

    def __iter__(self):
        return iter(_RECIPES)

    def __len__(self) -> int:
        return len(_RECIPES)

    def __repr__(self) -> str:
        return f"RECIPES({', '.join(_RECIPES)})"


#: Registered recipes by name (a live view: recipes registered later appear here too).
RECIPES: Mapping[str, Recipe] = _Names()

register_recipe(Plain())
register_recipe(StochasticDepth())
