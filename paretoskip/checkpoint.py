"""Checkpoints: weights in safetensors, architecture and provenance in a JSON twin.

``save_checkpoint(model, "studies/checkpoints/r20")`` writes ``r20.safetensors`` (the state
dict, no pickle) and ``r20.json``::

    {"format": "paretoskip-checkpoint", "format_version": 1,
     "architecture": {"name": "resnet20", "kwargs": {...}},
     "weights_fingerprint": "<sha256>", "weights_file": "r20.safetensors",
     "created": "...", "versions": {"torch": ..., "torchvision": ..., "paretoskip": ..., "python": ...},
     ...user metadata (recipe, dataset, epochs, val_accuracy, ...)}

:func:`load_checkpoint` rebuilds the model with :func:`paretoskip.create_model` from the
JSON's architecture, checks that the file's tensors have exactly the model's names and shapes
and that their hash equals the recorded fingerprint, and only then loads them.  Anything
wrong raises :class:`~paretoskip.errors.CheckpointError` naming the file.

Example:
    >>> import paretoskip, tempfile, os
    >>> from paretoskip.checkpoint import save_checkpoint, load_checkpoint
    >>> m = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    >>> d = tempfile.mkdtemp()
    >>> _ = save_checkpoint(m, os.path.join(d, "r20"), metadata={"epochs": 0})
    >>> m2, meta = load_checkpoint(os.path.join(d, "r20"))
    >>> meta["epochs"], meta["architecture"]["name"]
    (0, 'resnet20')
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .models import create_model, model_spec

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "read_metadata",
    "weights_fingerprint",
    "checkpoint_paths",
    "library_versions",
    "FORMAT",
    "FORMAT_VERSION",
]

FORMAT = "paretoskip-checkpoint"
FORMAT_VERSION = 1
_RESERVED = ("format", "format_version", "architecture", "weights_fingerprint", "weights_file")
_FINGERPRINT_TAG = b"paretoskip-weights/1\0"


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights, metadata)`` paths of a checkpoint.

    ``path`` may be given without suffix (``ckpt/r20``) or as either file
    (``ckpt/r20.safetensors``, ``ckpt/r20.json``).
    """
    p = Path(path).expanduser()
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return Path(str(p) + ".safetensors"), Path(str(p) + ".json")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that produced a result (torch, torchvision, paretoskip, python, ...)."""
    import safetensors
    import torchvision

    from ._version import __version__

    return {
        "paretoskip": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _canonical_spec(spec: dict[str, Any]) -> bytes:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=_json_default).encode()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def _fingerprint(spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(_FINGERPRINT_TAG)
    h.update(_canonical_spec(spec))
    for name in sorted(tensors):
        t = tensors[name]
        h.update(
            f"\0{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0{t.numel() * t.element_size()}\0".encode()
        )
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the architecture spec and every state-dict tensor (name, dtype, shape, bytes).

    Deterministic: the same architecture with the same weights gives the same hex digest on
    any machine (tensors are hashed in name order, as little-endian bytes).
    """
    if getattr(model, "paretoskip_spec", None) is None:
        # a model not built by create_model (e.g. made skippable in place): its class names
        # the architecture; the state dict's names and shapes are hashed too
        cls = type(model)
        return _fingerprint(
            {"class": f"{cls.__module__}.{cls.__qualname__}"}, _state_tensors(model)
        )
    return _fingerprint(model_spec(model), _state_tensors(model))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _clean_floats(obj: Any) -> Any:
    """NaN/inf are not valid JSON: store them as the strings "nan"/"inf" so any tool can read the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``<path>.safetensors`` (weights) and ``<path>.json`` (architecture + metadata).

    ``model`` must have been built by :func:`paretoskip.create_model`.  ``metadata`` is any
    JSON-able dict (recipe, dataset, epochs, accuracies, ...); its keys are stored at the top
    level of the JSON next to ``format``, ``format_version``, ``architecture``,
    ``weights_fingerprint`` and ``weights_file`` (which it may not use), ``created`` and
    ``versions`` (which it may override).  Both files are written atomically.

    Returns the path of the ``.safetensors`` file.
    """
    from safetensors.torch import save

    spec = model_spec(model)
    metadata = dict(metadata or {})
    clash = sorted(set(metadata) & set(_RESERVED))
    if clash:
        raise ConfigError(f"metadata keys {clash} are reserved by the checkpoint format")
    weights_path, json_path = checkpoint_paths(path)
    tensors = {k: v.to("cpu").contiguous() for k, v in _state_tensors(model).items()}
    fingerprint = _fingerprint(spec, tensors)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": spec,
        "weights_fingerprint": fingerprint,
        "weights_file": weights_path.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }
    doc.update(metadata)
    try:
        text = json.dumps(
            _clean_floats(doc), indent=2, sort_keys=False, default=_json_default, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint metadata is not JSON-able: {exc}") from exc
    try:
        spec_text = _canonical_spec(spec).decode()
        blob = save(
            tensors,
            metadata={
                "format": "pt",
                "paretoskip_format": FORMAT,
                "paretoskip_architecture": spec_text,
                "paretoskip_weights_fingerprint": fingerprint,
            },
        )
    except (RuntimeError, ValueError) as exc:  # e.g. tensors sharing memory
        raise CheckpointError(
            f"cannot serialise the weights for {str(weights_path)!r}: {exc}"
        ) from exc
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(weights_path, blob)
    _atomic_write(json_path, (text + "\n").encode())
    return weights_path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (without reading its weights)."""
    _, json_path = checkpoint_paths(path)
    try:
        text = json_path.read_text()
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint metadata {str(json_path)!r} does not exist") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint metadata {str(json_path)!r}: {exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(
            f"checkpoint metadata {str(json_path)!r} is not valid JSON (truncated or corrupted?): {exc}"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(json_path)!r} is not a paretoskip checkpoint (format != {FORMAT!r})"
        )
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(json_path)!r} has format_version {version!r}; this paretoskip reads up to {FORMAT_VERSION}"
        )
    spec = doc.get("architecture")
    if not (
        isinstance(spec, dict)
        and isinstance(spec.get("name"), str)
        and isinstance(spec.get("kwargs"), dict)
    ):
        raise CheckpointError(f"{str(json_path)!r} has no valid 'architecture' {{name, kwargs}}")
    if not isinstance(doc.get("weights_fingerprint"), str):
        raise CheckpointError(f"{str(json_path)!r} has no 'weights_fingerprint'")
    return doc


def _header_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (its header is 8-byte length + JSON)."""
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + n])
    except (struct.error, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint and load its weights (strictly, after checking them).

    Returns ``(model, metadata)``; the model is in eval mode on ``map_location``.  Never
    unpickles anything.

    Raises:
        CheckpointError: a file is missing, truncated or corrupted, or the weights do not
            match the recorded architecture or fingerprint.
    """
    from safetensors.torch import load

    weights_path, json_path = checkpoint_paths(path)
    meta = read_metadata(path)
    spec = meta["architecture"]
    try:
        blob = weights_path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint weights {str(weights_path)!r} do not exist") from exc
    except OSError as exc:
        raise CheckpointError(
            f"cannot read checkpoint weights {str(weights_path)!r}: {exc}"
        ) from exc
    try:
        tensors = load(blob)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on bad bytes
        raise CheckpointError(
            f"checkpoint weights {str(weights_path)!r} are truncated or corrupted ({len(blob)} bytes): {exc}"
        ) from exc

    header = _header_metadata(blob)
    header_spec = header.get("paretoskip_architecture")
    if header_spec is not None and header_spec != _canonical_spec(spec).decode():
        raise CheckpointError(
            f"{str(json_path)!r} records the architecture {_canonical_spec(spec).decode()} but "
            f"{str(weights_path)!r} was saved from {header_spec}"
        )
    header_fp = header.get("paretoskip_weights_fingerprint")
    if header_fp is not None and header_fp != meta["weights_fingerprint"]:
        raise CheckpointError(
            f"{str(json_path)!r} and {str(weights_path)!r} belong to different checkpoints "
            "(their weights fingerprints differ)"
        )
    try:
        model = create_model(spec["name"], **spec["kwargs"])
    except Exception as exc:  # noqa: BLE001 - ConfigError or the model's own errors
        raise CheckpointError(
            f"cannot rebuild the architecture recorded in {str(json_path)!r} ({spec}): {exc}"
        ) from exc

    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: file {tuple(tensors[k].shape)} {tensors[k].dtype}, model {tuple(v.shape)} {v.dtype}"
        for k, v in expected.items()
        if k in tensors
        and (tuple(tensors[k].shape) != tuple(v.shape) or tensors[k].dtype != v.dtype)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} with another shape or dtype (e.g. {wrong[:3]})")
        raise CheckpointError(
            f"the weights in {str(weights_path)!r} do not fit the architecture {spec['name']} "
            f"recorded in {str(json_path)!r}: " + "; ".join(parts)
        )

    fingerprint = _fingerprint(model_spec(model), tensors)
    if fingerprint != meta["weights_fingerprint"]:
        raise CheckpointError(
            f"the weights in {str(weights_path)!r} do not hash to the fingerprint recorded in "
            f"{str(json_path)!r} (corrupted bytes, or the JSON was edited): "
            f"{fingerprint[:16]}… != {meta['weights_fingerprint'][:16]}…"
        )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"cannot load {str(weights_path)!r} into {spec['name']}: {exc}"
        ) from exc
    model.to(map_location)
    model.eval()
    return model, meta
