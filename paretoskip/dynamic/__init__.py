"""Per-input (dynamic) skipping: layer and channel gates, a budget-bound dual mode, accounting.

The static method of paretoskip picks *one* skip configuration for every input.  This
package lets the configuration depend on the input, on the same backbone, data splits and
FLOPs counter, so the two can be compared fairly:

* :class:`GatedModel` — gates on a trained skippable backbone: per-unit layer gates
  (ConvNet-AIG / LC-Net's L-Net), channel gates on each branch's inner convolution with
  learned scaling of what is kept (C-Net), or both (``mode="layer" | "channel" | "lc"``);
  per-block heads (``gate="block"``, default) or one up-front policy network (``"policy"``,
  BlockDrop style).  Hard decisions at inference, straight-through Gumbel in training.
  Inference groups the inputs of a batch by their decision at each unit and runs each group
  with only its work (:meth:`GatedModel.run`).
* :func:`train_gates` — trains the gates (backbone frozen, or jointly fine-tuned) towards a
  target mean FLOPs fraction, through the shared resumable loop
  :func:`paretoskip.train.fit`; :func:`train_gates_and_save` / :func:`load_gated` keep
  checkpoints in safetensors + JSON.
* :class:`DualModel` — the dual mode (DDI): a hard FLOPs budget that every input meets; a
  gated decision that would exceed it is replaced by the most accurate static configuration
  that fits, or halted.
* :func:`profile` — exact FLOPs per input (gates included): mean, std, percentiles, distinct
  configurations, capped share; :func:`dynamic_family` — a sweep as a JSON-able front family
  with costs labelled *mean per input*.

Example:
    >>> import torch, paretoskip
    >>> from paretoskip.dynamic import GatedModel
    >>> bb = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    >>> gated = GatedModel(bb, mode="lc", gate="block").eval()
    >>> gated(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from ._branch import BranchAdapter, branch_adapter, register_branch
from ._checkpoint import gated_fingerprint, load_gated, save_gated
from ._dual import FALLBACKS, DualModel, StaticConfig, parse_budget, static_configurations
from ._gates import (
    GATE_STYLES,
    BlockGates,
    GateNetwork,
    GateOutput,
    PolicyGates,
    UnitLayout,
    register_gate_style,
)
from ._model import MODES, CostModel, GatedModel, GatedOutput, MaskedOutput
from ._report import PERCENTILES, DynamicProfile, dynamic_family, profile
from ._train import GATE_RECIPE, GateRecipe, GateTrainResult, train_gates, train_gates_and_save

__all__ = [
    "GatedModel",
    "GatedOutput",
    "MaskedOutput",
    "CostModel",
    "MODES",
    "GATE_STYLES",
    "GateNetwork",
    "GateOutput",
    "BlockGates",
    "PolicyGates",
    "UnitLayout",
    "register_gate_style",
    "BranchAdapter",
    "branch_adapter",
    "register_branch",
    "DualModel",
    "StaticConfig",
    "static_configurations",
    "parse_budget",
    "FALLBACKS",
    "DynamicProfile",
    "profile",
    "dynamic_family",
    "PERCENTILES",
    "GateRecipe",
    "GATE_RECIPE",
    "GateTrainResult",
    "train_gates",
    "train_gates_and_save",
    "save_gated",
    "load_gated",
    "gated_fingerprint",
]
