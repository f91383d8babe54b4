"""Skippable residual networks, created by name.

Example:
    >>> import torch, paretoskip
    >>> model = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    >>> paretoskip.models.apply_mask(model, "1" + "0" * 8)
    >>> model.eval()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError
from ._cifar import BasicBlock, CifarResNet
from ._skip import (
    ModelParts,
    SkippableUnit,
    apply_mask,
    get_mask,
    model_parts,
    register_parts,
    skippable_units,
)
from ._torchvision import TORCHVISION_RESNETS, make_skippable, torchvision_resnet

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "model_spec",
    "skippable_units",
    "apply_mask",
    "get_mask",
    "model_parts",
    "register_parts",
    "make_skippable",
    "ModelParts",
    "SkippableUnit",
    "CifarResNet",
    "BasicBlock",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    """Register a builder so that ``create_model(name, **kwargs)`` finds it."""
    _REGISTRY[name] = builder


def _cifar(depth: int) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        return CifarResNet(depth=depth, **kwargs)

    build.__signature__ = inspect.signature(CifarResNet).replace(  # type: ignore[attr-defined]
        parameters=[
            p for p in inspect.signature(CifarResNet).parameters.values() if p.name != "depth"
        ]
    )
    return build


for _d in (20, 32, 44, 56, 110):
    register_model(f"resnet{_d}", _cifar(_d))
for _name in TORCHVISION_RESNETS:
    register_model(_name, lambda _n=_name, **kw: torchvision_resnet(_n, **kw))


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY, key=lambda n: (not n[-1].isdigit() or n.startswith("wide"), len(n), n))


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a skippable model by name.

    CIFAR-style ``resnet20/32/44/56/110`` take ``num_classes``, ``in_channels``,
    ``input_size``, ``p_last`` (stochastic-depth survival of the last block, default 0.5),
    ``shortcut`` ("A" or "B") and ``widths``.  torchvision's ``resnet18/34/50/101/152`` and
    ``wide_resnet50_2`` take ``num_classes``, ``in_channels``, ``input_size`` and ``p_last``
    (default 1.0).  The name and arguments are kept in ``model.paretoskip_spec`` so a
    checkpoint can rebuild the same architecture.

    Example:
        >>> import paretoskip
        >>> m = paretoskip.create_model("resnet56", num_classes=100)
        >>> len(paretoskip.models.skippable_units(m))
        27
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    try:
        model = _REGISTRY[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for model {name!r}: {exc}") from exc
    model.paretoskip_spec = {"name": name, "kwargs": dict(kwargs)}
    return model


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The ``{"name", "kwargs"}`` a model was created with (see :func:`create_model`)."""
    spec = getattr(model, "paretoskip_spec", None)
    if spec is None:
        raise ConfigError(
            "this model was not built by paretoskip.create_model; its architecture is unknown"
        )
    return {"name": spec["name"], "kwargs": dict(spec["kwargs"])}
