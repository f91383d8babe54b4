"""Skippable residual networks, created by name.

A *model family* is one module here: its classes, a :func:`register_parts` call that says
how to cut its models into stem, units and head, and a :func:`register_model` call per
name (each builder follows :class:`ModelBuilder`).  This package imports each family once
(the ``from . import`` lines below).  A model of your own becomes skippable with
:func:`make_skippable` (detected or named blocks), or is built from a study file by a
factory reference ``"package.module:function"`` given to :func:`create_model`.

Example:
    >>> import torch, paretoskip
    >>> model = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    >>> paretoskip.models.apply_mask(model, "1" + "0" * 8)
    >>> model.eval()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from ._registry import (
    CONTRACT_ARGS,
    DATA_ARGS,
    RECIPE_ARGS,
    ModelBuilder,
    create_model,
    list_models,
    model_spec,
    register_model,
)
from ._skip import (
    ModelParts,
    SkippableUnit,
    apply_mask,
    get_mask,
    mask_bits,
    model_parts,
    register_parts,
    skippable_units,
)

# the model families (each registers its models)
from ._cifar import BasicBlock, CifarResNet  # noqa: E402  isort: skip
from ._torchvision import TORCHVISION_RESNETS, torchvision_resnet  # noqa: E402  isort: skip
from ._byo import generic_parts, make_skippable  # noqa: E402  isort: skip
from . import _adn  # noqa: E402, F401  isort: skip

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "model_spec",
    "ModelBuilder",
    "DATA_ARGS",
    "RECIPE_ARGS",
    "CONTRACT_ARGS",
    "skippable_units",
    "apply_mask",
    "get_mask",
    "mask_bits",
    "model_parts",
    "register_parts",
    "make_skippable",
    "generic_parts",
    "torchvision_resnet",
    "TORCHVISION_RESNETS",
    "ModelParts",
    "SkippableUnit",
    "CifarResNet",
    "BasicBlock",
]
