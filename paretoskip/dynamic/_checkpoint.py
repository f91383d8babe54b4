"""Gated-model checkpoints: weights in safetensors, architecture and provenance in JSON.

``save_gated(model, "studies/checkpoints/fm-r20-lc-0.5")`` writes ``….safetensors`` (the
whole state dict: ``backbone.*`` and ``gates.*``; no pickle) and ``….json``::

    {"format": "paretoskip-gated-checkpoint", "format_version": 1,
     "backbone": {"architecture": {"name": "resnet20", "kwargs": {...}}},
     "gates": {"mode": "lc", "gate": "block", "hidden": 16, ...},
     "weights_fingerprint": "<sha256>", "weights_file": "….safetensors",
     "created": "...", "versions": {...}, ...metadata (target, training, accuracies, ...)}

:func:`load_gated` rebuilds the backbone with :func:`paretoskip.create_model` and the gates
from the JSON, checks that the tensors have exactly the model's names and shapes and hash to
the recorded fingerprint, and only then loads them; anything wrong raises
:class:`~paretoskip.errors.CheckpointError` naming the file.

Example:
    >>> import os, tempfile, paretoskip
    >>> from paretoskip.dynamic import GatedModel, load_gated, save_gated
    >>> bb = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    >>> path = os.path.join(tempfile.mkdtemp(), "gated")
    >>> _ = save_gated(GatedModel(bb, mode="layer"), path, metadata={"target": 0.5})
    >>> model, meta = load_gated(path)
    >>> meta["gates"]["mode"], meta["target"]
    ('layer', 0.5)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import _atomic_write, checkpoint_paths, library_versions
from ..errors import CheckpointError, ConfigError
from ..models import create_model, model_spec
from ._model import GatedModel

__all__ = ["save_gated", "load_gated", "gated_fingerprint", "FORMAT", "FORMAT_VERSION"]

FORMAT = "paretoskip-gated-checkpoint"
FORMAT_VERSION = 1
_RESERVED = ("format", "format_version", "backbone", "gates", "weights_fingerprint", "weights_file")
_TAG = b"paretoskip-gated/1\0"


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _fingerprint(
    spec: dict[str, Any], gates: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> str:
    h = hashlib.sha256(_TAG)
    h.update(_canonical({"backbone": spec, "gates": gates}))
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def gated_fingerprint(model: GatedModel) -> str:
    """sha256 over the backbone architecture, the gate configuration and every tensor."""
    return _fingerprint(model_spec(model.backbone), model.gate_config, model.state_dict())


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def save_gated(
    model: GatedModel, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` (atomically); returns the weights path.

    The backbone must have been built by :func:`paretoskip.create_model`.
    """
    from safetensors.torch import save

    if not isinstance(model, GatedModel):
        raise ConfigError(f"save_gated saves a GatedModel, not {type(model).__name__}")
    metadata = dict(metadata or {})
    clash = sorted(set(metadata) & set(_RESERVED))
    if clash:
        raise ConfigError(f"metadata keys {clash} are reserved by the gated checkpoint format")
    spec = model_spec(model.backbone)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    fingerprint = _fingerprint(spec, model.gate_config, tensors)
    weights_path, json_path = checkpoint_paths(path)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": {"architecture": spec},
        "gates": dict(model.gate_config),
        "weights_fingerprint": fingerprint,
        "weights_file": weights_path.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "costs": model.costs.to_dict(),
    }
    doc.update(metadata)
    try:
        text = json.dumps(_clean(doc), indent=2, allow_nan=False, default=str)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"gated checkpoint metadata is not JSON-able: {exc}") from exc
    blob = save(tensors, metadata={"paretoskip_format": FORMAT, "fingerprint": fingerprint})
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(weights_path, blob)
    _atomic_write(json_path, (text + "\n").encode())
    return weights_path


def load_gated(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[GatedModel, dict[str, Any]]:
    """Rebuild a gated model from its checkpoint; returns ``(model, metadata)`` in eval mode."""
    from safetensors.torch import load

    weights_path, json_path = checkpoint_paths(path)
    try:
        doc = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"gated checkpoint metadata {str(json_path)!r} does not exist"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"gated checkpoint metadata {str(json_path)!r} is not readable JSON: {exc}"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{str(json_path)!r} is not a paretoskip gated checkpoint")
    if not isinstance(doc.get("format_version"), int) or doc["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(json_path)!r} has format_version {doc.get('format_version')!r}; this "
            f"paretoskip reads up to {FORMAT_VERSION}"
        )
    try:
        spec = doc["backbone"]["architecture"]
        gates = dict(doc["gates"])
        backbone = create_model(spec["name"], **spec["kwargs"])
        model = GatedModel(backbone, **gates)
    except Exception as exc:  # noqa: BLE001 - KeyError, ConfigError, the model's own errors
        raise CheckpointError(
            f"cannot rebuild the gated model recorded in {str(json_path)!r}: {exc}"
        ) from exc
    try:
        tensors = load(weights_path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(
            f"gated checkpoint weights {str(weights_path)!r} do not exist"
        ) from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on bad bytes
        raise CheckpointError(
            f"gated checkpoint weights {str(weights_path)!r} are truncated or corrupted: {exc}"
        ) from exc
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(tensors)) + [
        k for k in expected if k in tensors and tensors[k].shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(
            f"the weights in {str(weights_path)!r} do not fit the gated model recorded in "
            f"{str(json_path)!r} (e.g. {wrong[:3]})"
        )
    fingerprint = _fingerprint(model_spec(backbone), model.gate_config, tensors)
    if fingerprint != doc.get("weights_fingerprint"):
        raise CheckpointError(
            f"the weights in {str(weights_path)!r} do not hash to the fingerprint recorded in "
            f"{str(json_path)!r} (corrupted, or the JSON was edited)"
        )
    model.load_state_dict(tensors, strict=True)
    model.to(map_location)
    model.eval()
    return model, doc
