"""The state of a training run between epochs, in one safetensors file (no pickle).

A training run that is killed (SIGKILL, power cut) at any moment restarts from its last
completed epoch and ends with the same weights as a run that was never interrupted (same
machine, same thread count).  For that, after every epoch the loop writes one file holding:

* every tensor: the model's state dict (``model.<name>``), the optimizer's per-parameter
  state (``optim.<param index>.<key>``, e.g. momentum buffers), the shuffling and
  augmentation generator (``rng.generator``), torch's global CPU generator (``rng.torch``,
  which stochastic depth draws from) and, on a GPU, the CUDA generators (``rng.cuda.<i>``);
* a JSON document in the safetensors header (key ``paretoskip_train_state``): the format,
  the epoch and global step reached, the history so far, the seconds spent, the settings
  fingerprint, and the optimizer's non-tensor state (hyper-parameters of its groups).

The file is replaced atomically (written beside it, fsynced, renamed), so a reader sees the
previous epoch's state or the new one, never a mixture.

Example:
    >>> import os, tempfile, torch
    >>> from paretoskip.train._state import TrainState, read_state, write_state
    >>> model = torch.nn.Linear(2, 2)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> path = os.path.join(tempfile.mkdtemp(), "run.train-state.safetensors")
    >>> write_state(path, TrainState(epoch=1, step=10, seconds=1.5, history=[],
    ...     settings_fingerprint="abc"), model, opt, torch.Generator().manual_seed(0))
    >>> read_state(path).epoch
    1
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["TrainState", "write_state", "read_state", "restore_state", "state_path_for"]

FORMAT = "paretoskip-train-state"
FORMAT_VERSION = 1
_HEADER_KEY = "paretoskip_train_state"


def state_path_for(checkpoint: str | os.PathLike) -> Path:
    """Where the training state of a checkpoint path lives (``<path>.train-state.safetensors``)."""
    p = Path(checkpoint).expanduser()
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return Path(str(p) + ".train-state.safetensors")


@dataclass
class TrainState:
    """What a resumed run needs besides the tensors."""

    epoch: int
    step: int
    seconds: float
    history: list[dict[str, Any]]
    settings_fingerprint: str
    settings: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The optimizer's state dict as (JSON part, tensors), without pickle."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def _optimizer_join(
    doc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], device: torch.device
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = t.to(device)
    for idx, entry in doc.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": state, "param_groups": doc["param_groups"]}


def write_state(
    path: str | os.PathLike,
    state: TrainState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    """Write the state after a completed epoch, atomically (see the module docstring)."""
    from safetensors.torch import save

    from ..checkpoint import _atomic_write  # one atomic writer for every file we keep

    opt_doc, tensors = _optimizer_split(optimizer)
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().to("cpu").contiguous()
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "epoch": state.epoch,
        "step": state.step,
        "seconds": state.seconds,
        "history": state.history,
        "settings_fingerprint": state.settings_fingerprint,
        "settings": state.settings,
        "optimizer": opt_doc,
    }
    blob = save(tensors, metadata={_HEADER_KEY: json.dumps(doc, default=str)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, blob)


def read_state(path: str | os.PathLike) -> TrainState:
    """Read a state file; :class:`CheckpointError` names the file when it is not one."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    except FileNotFoundError:
        raise CheckpointError(f"training state {str(path)!r} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on bad bytes
        raise CheckpointError(
            f"training state {str(path)!r} is truncated or corrupted: {exc}; delete it to "
            "train from the start"
        ) from exc
    try:
        doc = json.loads(header[_HEADER_KEY])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{str(path)!r} is not a paretoskip training state (no {_HEADER_KEY} header)"
        ) from exc
    if doc.get("format") != FORMAT or doc.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has format {doc.get('format')!r} version "
            f"{doc.get('format_version')!r}; this paretoskip reads {FORMAT} up to "
            f"version {FORMAT_VERSION}"
        )
    return TrainState(
        epoch=int(doc["epoch"]),
        step=int(doc["step"]),
        seconds=float(doc["seconds"]),
        history=list(doc["history"]),
        settings_fingerprint=str(doc["settings_fingerprint"]),
        settings=dict(doc.get("settings", {})),
        optimizer=dict(doc["optimizer"]),
        tensors=tensors,
    )


def restore_state(
    state: TrainState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    """Put the model, optimizer and random generators back where ``state`` left them."""
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in state.tensors.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the training state does not fit this model: {exc}") from exc
    optimizer.load_state_dict(_optimizer_join(state.optimizer, state.tensors, device))
    generator.set_state(state.tensors["rng.generator"])
    torch.set_rng_state(state.tensors["rng.torch"])
    cuda = sorted(
        (int(k.rsplit(".", 1)[1]), v) for k, v in state.tensors.items() if k.startswith("rng.cuda.")
    )
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([v for _, v in cuda])
