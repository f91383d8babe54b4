"""Export one skip configuration as a standalone module that no longer contains the skipped blocks.

:func:`export_configuration` deep-copies the model in eval mode, applies the mask, and
*prunes* every skipped unit: the unit is kept (so the remaining weights keep their
state-dict names, e.g. ``layer2.0.downsample.0.weight``) but every child module its shortcut
path does not use (the branch convolutions, batch norms and stochastic-depth module) is
deleted.  Which children the shortcut uses is not guessed from attribute names: the copy is
run once on the example input with a forward pre-hook on every submodule of each skipped
unit, and only the children that were called are kept.  This works for the CIFAR blocks
(``shortcut``), torchvision's blocks (``downsample``) and any user
:class:`~paretoskip.models.SkippableUnit` whose ``shortcut_forward`` only calls child modules.

Because each ``skip`` flag is a plain Python bool read once per forward call, tracing
(``torch.export`` or TorchScript) resolves it at export time: the exported graph contains
only the shortcut path of a skipped unit, the skipped convolutions are absent from both the
graph and the state dict, and its FLOPs are those of the masked model.

Example:
    >>> import torch, paretoskip
    >>> from paretoskip.export import export_configuration
    >>> m = paretoskip.create_model("resnet20", in_channels=1, input_size=8)
    >>> exported = export_configuration(m, "100000001")
    >>> exported(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> any(k.startswith("layer1.0.conv") for k in exported.state_dict())
    False
"""

from __future__ import annotations

import copy
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .models import apply_mask, skippable_units

__all__ = ["export_configuration", "prune_skipped", "save_exported", "load_exported", "METHODS"]

#: Accepted values of ``method`` and the file suffix :func:`save_exported` uses for each.
METHODS = {"torch.export": ".pt2", "torchscript": ".pt"}

_META_FILE = "paretoskip.json"
_META_ATTR = "paretoskip_export"
_PROGRAM_ATTR = "paretoskip_exported_program"


def _mask_of(mask: Any) -> Any:
    """Accept a front member (a dict with ``"mask"``) as well as a mask."""
    if isinstance(mask, Mapping):
        if "mask" not in mask:
            raise ConfigError("a front member given as the mask must have a 'mask' key")
        return mask["mask"]
    return mask


def _example_input(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor):
            raise ConfigError(f"example_input must be a tensor, not {type(example_input).__name__}")
        return example_input
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError(
            "example_input is required: this model has no 'input_shape' attribute to build one from"
        )
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else None
    return torch.randn(2, *shape, dtype=dtype, device=device)


def prune_skipped(
    model: nn.Module, mask: Sequence[int] | Sequence[bool] | str, example_input: torch.Tensor
) -> nn.Module:
    """An eval-mode deep copy of ``model`` with ``mask`` applied and skipped branches deleted.

    The result is still an ordinary ``nn.Module`` (eager, not traced); its skipped units
    only hold the children their shortcut path calls.  Raises
    :class:`~paretoskip.errors.MaskError` for a mask that does not fit the model.
    """
    mask = _mask_of(mask)
    pruned = copy.deepcopy(model).eval()
    apply_mask(pruned, mask)  # validates the mask exactly like apply_mask does
    skipped = [(name, unit) for name, unit in skippable_units(pruned) if unit.skip]

    called: set[int] = set()
    handles = []
    for _, unit in skipped:
        for sub in unit.modules():
            if sub is not unit:
                handles.append(sub.register_forward_pre_hook(lambda m, a: called.add(id(m))))
    try:
        with torch.no_grad():
            pruned(example_input)
    finally:
        for h in handles:
            h.remove()

    for _, unit in skipped:
        for child_name, child in list(unit.named_children()):
            if not any(id(sub) in called for sub in child.modules()):
                delattr(unit, child_name)
    return pruned


def export_configuration(
    model: nn.Module,
    mask: Sequence[int] | Sequence[bool] | str | Mapping[str, Any],
    *,
    example_input: torch.Tensor | None = None,
    method: str = "torch.export",
) -> nn.Module:
    """A standalone module computing ``model`` with ``mask`` applied, without the skipped blocks.

    Args:
        model: a skippable model (it is not modified; a deep copy is exported).
        mask: one 0/1 per unit or a bitstring (1 = skipped), or a front member dict.
        example_input: input used to trace; by default a batch of 2 random inputs of
            ``model.input_shape``.  The exported module is specialised to this input's
            shape (``torch.export``) or traced on it (TorchScript).
        method: ``"torch.export"`` (returns ``ExportedProgram.module()``; the program itself is
            kept in the ``paretoskip_exported_program`` attribute) or ``"torchscript"``
            (``torch.jit.trace``).

    The returned module carries ``paretoskip_export``: a dict with the mask bitstring, the
    unit names, the skipped units and the method, which :func:`save_exported` stores too.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown export method {method!r}; accepted: {', '.join(METHODS)}")
    x = _example_input(model, example_input)
    pruned = prune_skipped(model, mask, x)
    units = skippable_units(pruned)
    meta = {
        "mask": "".join("1" if u.skip else "0" for _, u in units),
        "units": [n for n, _ in units],
        "skipped": [n for n, u in units if u.skip],
        "method": method,
        "input_shape": list(x.shape),
        "spec": getattr(model, "paretoskip_spec", None),
    }
    with torch.no_grad():
        if method == "torch.export":
            program = torch.export.export(pruned, (x,))
            out = program.module()
            setattr(out, _PROGRAM_ATTR, program)
        else:
            out = torch.jit.trace(pruned, (x,), check_trace=False)
    setattr(out, _META_ATTR, meta)
    return out


def _metadata_json(module: Any) -> str:
    return json.dumps(getattr(module, _META_ATTR, None) or {}, default=str)


def save_exported(module: Any, path: str | os.PathLike) -> None:
    """Save a module returned by :func:`export_configuration` (or an ``ExportedProgram``).

    ``torch.export`` results are written with ``torch.export.save`` (conventionally ``.pt2``),
    TorchScript ones with ``torch.jit.save`` (``.pt``); the export metadata travels in the
    file as ``paretoskip.json``.
    """
    path = os.fspath(path)
    if isinstance(module, torch.export.ExportedProgram):
        program, meta = module, "{}"
    else:
        program, meta = getattr(module, _PROGRAM_ATTR, None), _metadata_json(module)
    if program is not None:
        # A file object, not the path: torch.export warns about any suffix other than .pt2.
        with open(path, "wb") as f:
            torch.export.save(program, f, extra_files={_META_FILE: meta})
    elif isinstance(module, torch.jit.ScriptModule):
        torch.jit.save(module, path, _extra_files={_META_FILE: _metadata_json(module)})
    else:
        raise ConfigError(
            f"cannot save a {type(module).__name__}: pass a module returned by "
            "export_configuration (torch.export or torchscript) or an ExportedProgram"
        )


def load_exported(path: str | os.PathLike) -> nn.Module:
    """Load a file written by :func:`save_exported`; returns a callable module.

    The format is detected from the file content (a ``torch.export`` archive or a
    TorchScript archive), not from the suffix.  The metadata is restored as
    ``module.paretoskip_export``; for ``torch.export`` files the program is in
    ``module.paretoskip_exported_program``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"exported model file {path!r} does not exist")
    if _is_pt2_archive(path):
        extra = {_META_FILE: ""}
        with open(path, "rb") as f:
            program = torch.export.load(f, extra_files=extra)
        module = program.module()
        setattr(module, _PROGRAM_ATTR, program)
    else:
        extra = {_META_FILE: ""}
        try:
            module = torch.jit.load(path, _extra_files=extra)
        except Exception as exc:
            raise ConfigError(
                f"{path!r} is neither a torch.export (.pt2) archive nor a TorchScript file: {exc}"
            ) from exc
    raw = extra[_META_FILE]
    if isinstance(raw, bytes):
        raw = raw.decode()
    setattr(module, _META_ATTR, json.loads(raw or "{}"))
    return module


def _is_pt2_archive(path: str) -> bool:
    """True for a ``torch.export.save`` archive (it has an ``archive_format`` record)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n == "archive_format" or n.endswith("/archive_format") for n in zf.namelist())
