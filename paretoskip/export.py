"""Export one skip configuration as a standalone file a device can run, without the skipped blocks.

Four formats, chosen by :func:`resolve_format` from an explicit name or the file suffix:

=================  =========  ===================================================  ==========
format             suffix     how it is produced                                   extra
=================  =========  ===================================================  ==========
``torch.export``   ``.pt2``   ``torch.export.export`` with a dynamic batch          (none)
``torchscript``    ``.pt``    ``torch.jit.trace``                                  (none)
``onnx``           ``.onnx``  ``torch.onnx.export`` of the exported program        ``onnx``
``iree``           ``.vmfb``  the ONNX graph imported into IREE, compiled for      ``iree``
                              the ``llvm-cpu`` target
=================  =========  ===================================================  ==========

:func:`export_file` writes one of them and, next to it, a sidecar JSON ``<file>.json``
holding what a device needs to use it: the input shape (batch dimension ``"batch"``,
dynamic by default), the input normalisation (mean/std), the mask and the names of the
skipped units, the front member's metrics, the model's architecture and weights
fingerprint, and the versions that produced it.  The same document is embedded in the file
where the format has room for it: ``paretoskip.json`` in the torch.export / TorchScript
archive, the ONNX ``metadata_props`` (key ``paretoskip``, plus a few flat keys), and the
``iree.reflection`` attribute of the IREE entry function (``main``).
:func:`read_metadata` reads it back; :func:`load_exported` loads any of the four formats as
a callable (ONNX through onnxruntime, IREE through its runtime).

How the skipped blocks are removed: :func:`prune_skipped` deep-copies the model in eval
mode, applies the mask, and *prunes* every skipped unit: the unit is kept (so the remaining
weights keep their state-dict names, e.g. ``layer2.0.downsample.0.weight``) but every child
module its shortcut path does not use is deleted.  Which children the shortcut uses is not
guessed from attribute names: the copy is run once on the example input with a forward
pre-hook on every submodule of each skipped unit, and only the children that were called are
kept.  Because each ``skip`` flag is a plain Python bool read once per forward call, tracing
resolves it at export time: the exported graph contains only the shortcut path of a skipped
unit, and its FLOPs are those of the masked model.

Example:
    >>> import torch, paretoskip
    >>> from paretoskip.export import export_configuration, resolve_format
    >>> m = paretoskip.create_model("resnet20", in_channels=1, input_size=8)
    >>> exported = export_configuration(m, "100000001")
    >>> exported(torch.zeros(1, 1, 8, 8)).shape, exported(torch.zeros(5, 1, 8, 8)).shape
    (torch.Size([1, 10]), torch.Size([5, 10]))
    >>> any(k.startswith("layer1.0.conv") for k in exported.state_dict())
    False
    >>> exported.paretoskip_export["input"]["shape"]
    ['batch', 1, 8, 8]
    >>> resolve_format("out/model.onnx")
    ('onnx', PosixPath('out/model.onnx'))
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import logging
import math
import os
import platform
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, ExportCheckError, ExportError, ParetoSkipError
from .models import apply_mask, skippable_units

__all__ = [
    "FORMATS",
    "METHODS",
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "IREE_ENTRY",
    "ExportCheckError",
    "ExportResult",
    "RuntimeModule",
    "resolve_format",
    "sidecar_path",
    "normalization_of",
    "prune_skipped",
    "export_configuration",
    "export_file",
    "check_exported",
    "save_exported",
    "load_exported",
    "read_metadata",
]

logger = logging.getLogger(__name__)

#: Every export format and the file suffix it is written with.
FORMATS: dict[str, str] = {
    "torch.export": ".pt2",
    "torchscript": ".pt",
    "onnx": ".onnx",
    "iree": ".vmfb",
}
#: The formats :func:`export_configuration` returns as an in-memory module.
METHODS: dict[str, str] = {"torch.export": ".pt2", "torchscript": ".pt"}

#: ``format`` field of the export metadata document, and its version.
EXPORT_FORMAT = "paretoskip-export"
EXPORT_FORMAT_VERSION = 1
#: Name of the function an IREE module exposes.
IREE_ENTRY = "main"
#: Names of the graph's input and output (ONNX, IREE metadata).
INPUT_NAME, OUTPUT_NAME = "input", "logits"
BATCH_DIM = "batch"

_EXTRAS = {"onnx": "onnx", "iree": "iree"}
_META_FILE = "paretoskip.json"
_META_KEY = "paretoskip"
_META_ATTR = "paretoskip_export"
_PROGRAM_ATTR = "paretoskip_exported_program"


def _dumps(obj: Any) -> str:
    """JSON with NaN/inf as null (an unmeasured metric), so every reader can parse it."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), default=str, allow_nan=False)


@dataclass
class ExportResult:
    """What :func:`export_file` wrote.

    Attributes:
        path: the exported file.
        sidecar: the JSON document next to it (``<path>.json``).
        format: one of :data:`FORMATS`.
        metadata: the document written to the sidecar (and embedded in the file).
        max_abs_diff: batch size → max |file output − masked model output| measured on
            random inputs after writing (empty when the check was turned off).
    """

    path: Path
    sidecar: Path
    format: str
    metadata: dict[str, Any]
    max_abs_diff: dict[int, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- formats


def resolve_format(path: str | os.PathLike, format: str | None = None) -> tuple[str, Path]:
    """The export format for ``path`` and the path to write, refusing a contradiction.

    With ``format`` given, a path without suffix gets the format's suffix and a path whose
    suffix is another format's is refused; any other suffix is kept.  Without ``format`` the
    suffix decides and must be one of ``.pt2``, ``.pt``, ``.onnx``, ``.vmfb``.

    Example:
        >>> resolve_format("m.pt2")
        ('torch.export', PosixPath('m.pt2'))
        >>> resolve_format("exports/m", "iree")
        ('iree', PosixPath('exports/m.vmfb'))
        >>> resolve_format("m.onnx", "torch.export")
        Traceback (most recent call last):
        ...
        paretoskip.errors.ConfigError: output file 'm.onnx' has the suffix of format 'onnx' but format 'torch.export' was asked for; use a '.pt2' file or format 'onnx'
    """
    p = Path(path)
    by_suffix = {s: f for f, s in FORMATS.items()}
    suffix = p.suffix.lower()
    if format is not None:
        if format not in FORMATS:
            raise ConfigError(f"unknown export format {format!r}; accepted: {', '.join(FORMATS)}")
        if suffix == "":
            return format, p.with_suffix(FORMATS[format])
        other = by_suffix.get(suffix)
        if other is not None and other != format:
            raise ConfigError(
                f"output file {str(p)!r} has the suffix of format {other!r} but format "
                f"{format!r} was asked for; use a {FORMATS[format]!r} file or format {other!r}"
            )
        return format, p
    if suffix not in by_suffix:
        accepted = ", ".join(f"{s} ({f})" for f, s in FORMATS.items())
        why = f"from its suffix {suffix!r}" if suffix else "(it has no suffix)"
        raise ConfigError(
            f"cannot tell the export format of {str(p)!r} {why}; use one of {accepted} "
            "or name the format"
        )
    return by_suffix[suffix], p


def sidecar_path(path: str | os.PathLike) -> Path:
    """The metadata JSON written next to an exported file: ``<file>.json``.

    Example:
        >>> sidecar_path("exports/m.onnx")
        PosixPath('exports/m.onnx.json')
    """
    p = Path(path)
    return p.with_name(p.name + ".json")


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _require(fmt: str, *modules: str) -> None:
    missing = [m for m in modules if not _has(m)]
    if missing:
        raise ConfigError(
            f"export format {fmt!r} needs {', '.join(missing)}, which is not installed: "
            f"pip install 'paretoskip[{_EXTRAS[fmt]}]'"
        )


# --------------------------------------------------------------------------- metadata


def normalization_of(source: Any) -> dict[str, Any] | None:
    """The ``{"mean", "std"}`` input normalisation recorded from ``source``.

    ``source`` may be a :class:`~paretoskip.data.DatasetSplits`, a mapping with ``mean`` and
    ``std`` (``DatasetSplits.describe()``, a front file's ``provenance["dataset"]``, or a
    plain dict), a ``(mean, std)`` pair, or ``None`` (no normalisation known: returns None).
    The model expects ``x = (image - mean[c]) / std[c]`` per channel, with the image scaled
    to [0, 1].

    Example:
        >>> normalization_of({"mean": [0.3], "std": [0.4]})["std"]
        [0.4]
        >>> normalization_of(([0.5], [0.0]))
        Traceback (most recent call last):
        ...
        paretoskip.errors.ConfigError: normalisation std must be positive numbers, got [0.0]
    """
    if source is None:
        return None
    if hasattr(source, "mean") and hasattr(source, "std") and not isinstance(source, Mapping):
        if isinstance(source, torch.Tensor):
            raise ConfigError("normalisation must be a (mean, std) pair or a mapping, not a tensor")
        mean, std = source.mean, source.std
    elif isinstance(source, Mapping):
        if "mean" not in source or "std" not in source:
            raise ConfigError(
                f"normalisation mapping needs 'mean' and 'std' keys; it has {sorted(source)}"
            )
        mean, std = source["mean"], source["std"]
    elif isinstance(source, Sequence) and not isinstance(source, str) and len(source) == 2:
        mean, std = source
    else:
        raise ConfigError(
            "normalisation must be a DatasetSplits, a mapping with 'mean' and 'std', or a "
            f"(mean, std) pair, not {type(source).__name__}"
        )
    try:
        mean = [float(v) for v in mean]
        std = [float(v) for v in std]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"normalisation mean/std must be lists of numbers: {exc}") from exc
    if not mean and not std:
        return None  # recorded as unknown (e.g. a dataset without normalisation)
    if len(mean) != len(std):
        raise ConfigError(
            f"normalisation mean has {len(mean)} values but std has {len(std)}; give one per channel"
        )
    if not all(math.isfinite(v) for v in mean):
        raise ConfigError(f"normalisation mean must be finite numbers, got {mean}")
    if not all(math.isfinite(v) and v > 0 for v in std):
        raise ConfigError(f"normalisation std must be positive numbers, got {std}")
    scale = source.get("scale") if isinstance(source, Mapping) else getattr(source, "scale", None)
    out: dict[str, Any] = {"mean": mean, "std": std}
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0:
        out["pixel_scale"] = float(scale)  # raw pixel value of full intensity (255, or 16)
    return out


def _mask_of(mask: Any) -> Any:
    """Accept a front member (a dict with ``"mask"``) as well as a mask."""
    if isinstance(mask, Mapping):
        if "mask" not in mask:
            raise ConfigError("a front member given as the mask must have a 'mask' key")
        return mask["mask"]
    return mask


def _member_of(mask: Any) -> dict[str, Any] | None:
    if not isinstance(mask, Mapping):
        return None
    keys = ("metrics", "test_accuracy", "strict", "trial")
    return {k: mask[k] for k in keys if k in mask} or None


def _versions(fmt: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"paretoskip": __version__, "torch": torch.__version__}
    extra = {
        "onnx": ("onnx", "onnxscript"),
        "iree": ("onnx", "onnxscript", "iree-base-compiler"),
    }.get(fmt, ())
    for name in extra:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    out["python"] = platform.python_version()
    return out


def _model_identity(model: nn.Module) -> dict[str, Any]:
    from .checkpoint import weights_fingerprint
    from .models import model_spec

    try:
        spec: dict[str, Any] | None = model_spec(model)
        fingerprint: str | None = weights_fingerprint(model)
    except ParetoSkipError as exc:  # a model not built by create_model: no architecture spec
        logger.info("no architecture fingerprint for this model: %s", exc)
        spec, fingerprint = None, None
    return {"architecture": spec, "fingerprint": fingerprint}


def _metadata(
    model: nn.Module,
    pruned: nn.Module,
    x: torch.Tensor,
    fmt: str,
    dynamic_batch: bool,
    member: dict[str, Any] | None,
    normalization: dict[str, Any] | None,
    provenance: Mapping[str, Any] | None,
) -> dict[str, Any]:
    units = skippable_units(pruned)
    batch: str | int = BATCH_DIM if dynamic_batch else int(x.shape[0])
    with torch.no_grad():
        n_out = list(pruned(x[:1]).shape[1:])
    ident = _model_identity(model)
    dataset = None
    if provenance is not None:
        front_fp = (provenance.get("model") or {}).get("fingerprint")
        if front_fp and ident["fingerprint"] and front_fp != ident["fingerprint"]:
            logger.warning(
                "the exported weights (fingerprint %s…) are not those the front was searched "
                "for (%s…): its metrics do not describe this file",
                ident["fingerprint"][:12],
                front_fp[:12],
            )
            ident["front_fingerprint"] = front_fp
        ds = provenance.get("dataset") or {}
        if ds:
            dataset = {k: ds[k] for k in ("name", "fingerprint", "classes") if k in ds}
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "export_format": fmt,
        "input": {
            "name": INPUT_NAME,
            "shape": [batch, *(int(s) for s in x.shape[1:])],
            "dtype": str(x.dtype).removeprefix("torch."),
            "layout": "NCHW" if x.dim() == 4 else None,
            "batch": {"dynamic": dynamic_batch, "min": 1 if dynamic_batch else int(x.shape[0])},
            "normalization": None
            if normalization is None
            else {
                **normalization,
                "formula": (
                    "x[:, c] = (pixel[:, c] / pixel_scale - mean[c]) / std[c]"
                    if "pixel_scale" in normalization
                    else "x[:, c] = (image[:, c] - mean[c]) / std[c], image scaled to [0, 1]"
                ),
                "in_graph": False,
            },
        },
        "output": {"name": OUTPUT_NAME, "shape": [batch, *n_out], "meaning": "class logits"},
        "entry": IREE_ENTRY if fmt == "iree" else None,
        "mask": "".join("1" if u.skip else "0" for _, u in units),
        "units": [n for n, _ in units],
        "skipped": [n for n, u in units if u.skip],
        "member": member,
        "model": ident,
        "dataset": dataset,
        "versions": _versions(fmt),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- building


def _example_input(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor):
            raise ConfigError(f"example_input must be a tensor, not {type(example_input).__name__}")
        if example_input.dim() < 1 or example_input.shape[0] < 1:
            raise ConfigError(
                f"example_input must have a batch dimension of at least 1, got shape "
                f"{list(example_input.shape)}"
            )
        return example_input
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError(
            "example_input is required: this model has no 'input_shape' attribute to build one from"
        )
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else None
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, *shape, generator=gen, dtype=dtype).to(device)


def prune_skipped(
    model: nn.Module, mask: Sequence[int] | Sequence[bool] | str, example_input: torch.Tensor
) -> nn.Module:
    """An eval-mode deep copy of ``model`` with ``mask`` applied and skipped branches deleted.

    The result is still an ordinary ``nn.Module`` (eager, not traced); its skipped units
    only hold the children their shortcut path calls.  Raises
    :class:`~paretoskip.errors.MaskError` for a mask that does not fit the model.

    Example:
        >>> import torch, paretoskip
        >>> m = paretoskip.create_model("resnet20", in_channels=1, input_size=8)
        >>> p = prune_skipped(m, "100000000", torch.zeros(1, 1, 8, 8))
        >>> hasattr(p.layer1[0], "conv1"), hasattr(p.layer1[1], "conv1")
        (False, True)
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


def _trace_input(x: torch.Tensor, dynamic_batch: bool) -> torch.Tensor:
    # torch.export specialises a dimension traced at size 1; trace a dynamic batch at 2.
    if dynamic_batch and x.shape[0] < 2:
        return torch.cat([x, x])
    return x


def _torch_export(pruned: nn.Module, x: torch.Tensor, dynamic_batch: bool):
    from torch._dynamo.exc import UserError

    dynamic_shapes = ({0: torch.export.Dim(BATCH_DIM, min=1)},) if dynamic_batch else None
    try:
        with torch.no_grad():
            return torch.export.export(pruned, (x,), dynamic_shapes=dynamic_shapes)
    except UserError as exc:  # the model fixes its batch size somewhere
        if not dynamic_batch:
            raise
        raise ConfigError(
            "this model cannot be exported with a dynamic batch dimension (its code fixes the "
            f"batch size); export with dynamic_batch=False. torch.export said: {exc}"
        ) from exc


def _build(
    model: nn.Module,
    mask: Any,
    example_input: torch.Tensor | None,
    fmt: str,
    dynamic_batch: bool,
    normalization: Any = None,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, torch.Tensor, Any, dict[str, Any]]:
    """``(pruned module, tracing input, exported program or None, metadata)``."""
    x = _example_input(model, example_input)
    member = _member_of(mask)
    pruned = prune_skipped(model, mask, x)
    x = _trace_input(x, dynamic_batch)
    if normalization is None and provenance is not None and provenance.get("dataset"):
        normalization = provenance["dataset"]
    normalization = normalization_of(normalization)
    meta = _metadata(model, pruned, x, fmt, dynamic_batch, member, normalization, provenance)
    program = None if fmt == "torchscript" else _torch_export(pruned, x, dynamic_batch)
    return pruned, x, program, meta


def export_configuration(
    model: nn.Module,
    mask: Sequence[int] | Sequence[bool] | str | Mapping[str, Any],
    *,
    example_input: torch.Tensor | None = None,
    method: str = "torch.export",
    dynamic_batch: bool = True,
    normalization: Any = None,
    provenance: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A standalone in-memory module computing ``model`` with ``mask`` applied, without the
    skipped blocks.  To write a file (any format, with its sidecar), use :func:`export_file`.

    Args:
        model: a skippable model (it is not modified; a deep copy is exported).
        mask: one 0/1 per unit or a bitstring (1 = skipped), or a front member dict (its
            metrics are then recorded in the metadata).
        example_input: input used to trace; by default 2 random inputs of
            ``model.input_shape``.  Only its shape past the batch dimension and its dtype
            are fixed in the export.
        method: ``"torch.export"`` (returns ``ExportedProgram.module()``; the program itself is
            kept in the ``paretoskip_exported_program`` attribute) or ``"torchscript"``
            (``torch.jit.trace``).
        dynamic_batch: export the batch dimension as dynamic (any batch size ≥ 1); with
            False a torch.export program accepts only the example input's batch size.
        normalization: the input normalisation to record (see :func:`normalization_of`).
        provenance: a front file's ``provenance`` (dataset and model fingerprint to record;
            its dataset's mean/std are the normalisation when ``normalization`` is None).

    The returned module carries ``paretoskip_export``: the metadata document (see
    :func:`export_file`), which :func:`save_exported` stores in the file too.

    Example:
        >>> import torch, paretoskip
        >>> m = paretoskip.create_model("resnet20", in_channels=1, input_size=8)
        >>> e = export_configuration(m, "110000000")
        >>> e.paretoskip_export["skipped"]
        ['layer1.0', 'layer1.1']
    """
    if method not in METHODS:
        hint = " (write it to a file with export_file)" if method in FORMATS else ""
        raise ConfigError(f"unknown export method {method!r}{hint}; accepted: {', '.join(METHODS)}")
    pruned, x, program, meta = _build(
        model, mask, example_input, method, dynamic_batch, normalization, provenance
    )
    if program is not None:
        out = program.module()
        setattr(out, _PROGRAM_ATTR, program)
    else:
        with torch.no_grad():
            out = torch.jit.trace(pruned, (x,), check_trace=False)
    setattr(out, _META_ATTR, meta)
    return out


def _onnx_proto(program: Any, x: torch.Tensor, dynamic_batch: bool) -> Any:
    _require("onnx", "onnx", "onnxscript")
    dynamic_shapes = ({0: torch.export.Dim(BATCH_DIM, min=1)},) if dynamic_batch else None
    onnx_program = torch.onnx.export(
        program,
        (x,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        verbose=False,
    )
    return onnx_program.model_proto


def _set_onnx_metadata(proto: Any, meta: dict[str, Any]) -> None:
    norm = meta["input"]["normalization"] or {}
    props = {
        _META_KEY: _dumps(meta),
        f"{_META_KEY}.mask": meta["mask"],
        f"{_META_KEY}.skipped": ",".join(meta["skipped"]),
        f"{_META_KEY}.input_shape": json.dumps(meta["input"]["shape"]),
        f"{_META_KEY}.mean": json.dumps(norm.get("mean")),
        f"{_META_KEY}.std": json.dumps(norm.get("std")),
        f"{_META_KEY}.model_fingerprint": meta["model"]["fingerprint"] or "",
    }
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _iree_vmfb(proto: Any, meta: dict[str, Any], target_cpu: str) -> bytes:
    _require("iree", "onnx", "onnxscript", "iree.compiler", "iree.runtime")
    import onnx
    from iree.compiler import compile_str, ir
    from iree.compiler.extras import onnx_importer

    onnx.checker.check_model(proto)
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    context = ir.Context()
    info = onnx_importer.ModelInfo(proto)
    module = info.create_module(context=context)
    onnx_importer.NodeImporter.define_function(info.main_graph, module.operation).import_all()
    with context:
        funcs = [op for op in module.body.operations if op.operation.name == "func.func"]
        if len(funcs) != 1:
            raise ConfigError(f"the ONNX graph imported into {len(funcs)} functions, expected 1")
        func = funcs[0]
        func.attributes["sym_name"] = ir.StringAttr.get(IREE_ENTRY)
        func.attributes["iree.reflection"] = ir.DictAttr.get(
            {_META_KEY: ir.StringAttr.get(_dumps(meta))}
        )
    module.operation.verify()
    try:
        return compile_str(
            module.operation.get_asm(binary=True),
            target_backends=["llvm-cpu"],
            extra_args=[f"--iree-llvmcpu-target-cpu={target_cpu}"],
        )
    except Exception as exc:  # noqa: BLE001 - iree.compiler raises its own CompilerToolError
        first = str(exc).strip().splitlines()
        detail = next(
            (line for line in first if "error" in line.lower()), first[0] if first else ""
        )
        raise ExportError(
            f"the IREE compiler (llvm-cpu, target CPU {target_cpu!r}) rejected this "
            f"configuration: {detail[:300]}. Other formats (.onnx, .pt2) may still work; a "
            "larger input size sometimes avoids IREE bugs"
        ) from exc


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def export_file(
    model: nn.Module,
    mask: Sequence[int] | Sequence[bool] | str | Mapping[str, Any],
    path: str | os.PathLike,
    *,
    format: str | None = None,
    example_input: torch.Tensor | None = None,
    dynamic_batch: bool = True,
    normalization: Any = None,
    provenance: Mapping[str, Any] | None = None,
    iree_target_cpu: str = "host",
    check_batch_sizes: Sequence[int] = (1, 8),
    tolerance: float = 1e-4,
) -> ExportResult:
    """Write ``model`` with ``mask`` applied, without its skipped blocks, as a deployable file.

    Args:
        model: a skippable model (not modified).
        mask: a mask or bitstring, or a front member dict (its ``metrics``, ``test_accuracy``,
            ``strict`` and ``trial`` are recorded).
        path: the file to write; its suffix chooses the format unless ``format`` is given
            (see :func:`resolve_format`: a contradiction is refused, a missing suffix added).
        format: ``"torch.export"``, ``"torchscript"``, ``"onnx"`` or ``"iree"``.
        example_input: tracing input (default: random inputs of ``model.input_shape``).
        dynamic_batch: any batch size ≥ 1 (default); False fixes the example's batch size.
        normalization: input mean/std to record (:func:`normalization_of` accepts a
            ``DatasetSplits``, its ``describe()``, or ``(mean, std)``); by default the one in
            ``provenance["dataset"]``.  Without either, ``null`` is recorded and a warning
            logged.
        provenance: a front file's ``provenance``: its dataset (name, fingerprint, classes,
            mean/std) is recorded, and a weights fingerprint other than the model's is logged
            and kept as ``model.front_fingerprint``.
        iree_target_cpu: ``--iree-llvmcpu-target-cpu`` for the ``iree`` format (``"host"``:
            this machine's CPU; ``"generic"`` or an LLVM CPU name for another device).
        check_batch_sizes: after writing, the file is loaded with its own runtime and run on
            random inputs of these batch sizes against the masked model (empty: no check).
            With a static batch only the traced batch size is checked.
        tolerance: the check fails (:class:`ExportCheckError`) when the max absolute
            difference exceeds ``tolerance × max(1, max |output|)``.

    Returns:
        an :class:`ExportResult` (paths, metadata, measured differences).

    Example:
        >>> import tempfile, os, json, paretoskip
        >>> m = paretoskip.create_model("resnet20", in_channels=1, input_size=8)
        >>> d = tempfile.mkdtemp()
        >>> r = export_file(m, "100000001", os.path.join(d, "m.pt2"), normalization=([0.3], [0.4]))
        >>> r.format, sorted(r.max_abs_diff), r.sidecar.name
        ('torch.export', [1, 8], 'm.pt2.json')
        >>> json.loads(r.sidecar.read_text())["input"]["normalization"]["mean"]
        [0.3]
        >>> read_metadata(r.path) == r.metadata
        True
    """
    fmt, out = resolve_format(path, format)
    if fmt == "onnx":
        _require(fmt, "onnx", "onnxscript")
    elif fmt == "iree":
        _require(fmt, "onnx", "onnxscript", "iree.compiler", "iree.runtime")
    if normalization is None and not (provenance or {}).get("dataset"):
        logger.warning(
            "no input normalisation given: the export records none (pass normalization= the "
            "dataset's mean/std, e.g. DatasetSplits.describe())"
        )
    pruned, x, program, meta = _build(
        model, mask, example_input, fmt, dynamic_batch, normalization, provenance
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torch.export":
        with open(out.with_name(out.name + ".tmp"), "wb") as f:
            torch.export.save(program, f, extra_files={_META_FILE: _dumps(meta)})
        os.replace(out.with_name(out.name + ".tmp"), out)
    elif fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(pruned, (x,), check_trace=False)
        tmp = out.with_name(out.name + ".tmp")
        torch.jit.save(traced, str(tmp), _extra_files={_META_FILE: _dumps(meta)})
        os.replace(tmp, out)
    else:
        proto = _onnx_proto(program, x, dynamic_batch)
        if fmt == "onnx":
            _set_onnx_metadata(proto, meta)
            _write_atomic(out, proto.SerializeToString())
        else:
            meta["iree"] = {"target_backend": "llvm-cpu", "target_cpu": iree_target_cpu}
            _write_atomic(out, _iree_vmfb(proto, meta, iree_target_cpu))
    side = sidecar_path(out)
    _write_atomic(side, (json.dumps(meta, indent=2) + "\n").encode())
    result = ExportResult(out, side, fmt, meta)
    if check_batch_sizes:
        sizes = list(check_batch_sizes) if dynamic_batch else [int(x.shape[0])]
        result.max_abs_diff = check_exported(out, model, meta["mask"], sizes, tolerance=tolerance)
    logger.info("wrote %s (%s) and %s", out, fmt, side.name)
    return result


def check_exported(
    path: str | os.PathLike,
    model: nn.Module,
    mask: Sequence[int] | Sequence[bool] | str | Mapping[str, Any],
    batch_sizes: Sequence[int] = (1, 8),
    *,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> dict[int, float]:
    """Max |exported file − masked model| on seeded random inputs, per batch size.

    The file is loaded with :func:`load_exported` (its own runtime).  Raises
    :class:`ExportCheckError` if a difference exceeds ``tolerance × max(1, max |output|)``.
    """
    exported = load_exported(path)
    shape = exported.paretoskip_export["input"]["shape"][1:]
    ref = copy.deepcopy(model).eval()
    apply_mask(ref, _mask_of(mask))
    dtype = next(iter(ref.parameters())).dtype
    gen = torch.Generator().manual_seed(seed)
    diffs: dict[int, float] = {}
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ConfigError(f"check batch sizes must be positive integers, got {b!r}")
        x = torch.randn(b, *shape, generator=gen, dtype=dtype)
        with torch.no_grad():
            want = ref(x)
            got = exported(x)
        if tuple(got.shape) != tuple(want.shape):
            raise ExportCheckError(
                f"{os.fspath(path)!r} returned shape {list(got.shape)} for batch {b}, "
                f"the masked model {list(want.shape)}"
            )
        diff = float((got.to(want.dtype) - want).abs().max())
        diffs[b] = diff
        if not diff <= tolerance * max(1.0, float(want.abs().max())):
            raise ExportCheckError(
                f"{os.fspath(path)!r} differs from the masked model by {diff:.3g} at batch {b} "
                f"(tolerance {tolerance} relative to the largest output)"
            )
    return diffs


# --------------------------------------------------------------------------- save / load


def save_exported(module: Any, path: str | os.PathLike) -> None:
    """Save a module returned by :func:`export_configuration` (or an ``ExportedProgram``).

    ``torch.export`` results are written with ``torch.export.save``, TorchScript ones with
    ``torch.jit.save``; the export metadata travels in the file as ``paretoskip.json`` (no
    sidecar: :func:`export_file` writes one).  A suffix of another format (``.onnx`` for a
    torch.export module, ...) is refused; an unknown suffix is accepted.
    """
    path = os.fspath(path)
    if isinstance(module, torch.export.ExportedProgram):
        program, meta, fmt = module, "{}", "torch.export"
    else:
        program = getattr(module, _PROGRAM_ATTR, None)
        meta = json.dumps(getattr(module, _META_ATTR, None) or {}, default=str)
        fmt = "torch.export" if program is not None else "torchscript"
    if program is None and not isinstance(module, torch.jit.ScriptModule):
        raise ConfigError(
            f"cannot save a {type(module).__name__}: pass a module returned by "
            "export_configuration (torch.export or torchscript) or an ExportedProgram"
        )
    suffix_fmt = {s: f for f, s in FORMATS.items()}.get(Path(path).suffix.lower())
    if suffix_fmt is not None and suffix_fmt != fmt:
        raise ConfigError(
            f"cannot save a {fmt} module as {path!r}: that suffix is format {suffix_fmt!r}; "
            f"use {FORMATS[fmt]!r}, or export_file(..., format={suffix_fmt!r})"
        )
    if program is not None:
        # A file object, not the path: torch.export warns about any suffix other than .pt2.
        with open(path, "wb") as f:
            torch.export.save(program, f, extra_files={_META_FILE: meta})
    else:
        torch.jit.save(module, path, _extra_files={_META_FILE: meta})


class RuntimeModule:
    """An ONNX or IREE file loaded with its own runtime, callable like a module.

    Calling it with a float tensor ``N×C×H×W`` (any batch size when exported with a dynamic
    batch) returns a CPU tensor of logits.  ``paretoskip_export`` is the file's metadata.

    Attributes:
        path: the loaded file.
        format: ``"onnx"`` or ``"iree"``.
        paretoskip_export: the embedded metadata document.
    """

    def __init__(
        self,
        path: Path,
        fmt: str,
        run: Callable[[Any], Any],
        metadata: dict[str, Any],
        keep: Any = None,
    ) -> None:
        self.path, self.format, self._run = path, fmt, run
        self.paretoskip_export = metadata
        self._keep = keep  # runtime objects the callable needs alive

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().contiguous().numpy()
        return torch.from_numpy(np.array(self._run(np.ascontiguousarray(x)), copy=True))

    def __repr__(self) -> str:
        return f"RuntimeModule({str(self.path)!r}, format={self.format!r})"


def _detect(path: str) -> str:
    """The format of an existing file, from its content."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any(n == "archive_format" or n.endswith("/archive_format") for n in names):
            return "torch.export"
        if "module.fb" in names:
            return "iree"
        return "torchscript"
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"IREE":
        return "iree"
    return "onnx"


def _load_onnx(path: Path, threads: int | None) -> RuntimeModule:
    _require("onnx", "onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise ConfigError(
            f"{str(path)!r} is not a torch.export, TorchScript, ONNX or IREE file: {exc}"
        ) from exc
    raw = session.get_modelmeta().custom_metadata_map.get(_META_KEY, "{}")
    name = session.get_inputs()[0].name

    def run(x: Any) -> Any:
        return session.run(None, {name: x})[0]

    return RuntimeModule(path, "onnx", run, json.loads(raw), keep=session)


def _load_iree(path: Path, threads: int | None) -> RuntimeModule:
    _require("iree", "iree.runtime")
    import iree.runtime as rt

    if threads is not None and threads > 1:
        # Process-wide: applies to every IREE device created from now on.
        rt.flags.parse_flags(f"--task_topology_group_count={threads}")
    config = rt.Config("local-sync" if threads == 1 else "local-task")
    context = rt.SystemContext(config=config)
    vm_module = rt.VmModule.mmap(config.vm_instance, str(path))
    context.add_vm_module(vm_module)
    names = [n for n in vm_module.function_names if not n.endswith("$async")]
    entry = IREE_ENTRY if IREE_ENTRY in names else next(n for n in names if n != "__init")
    raw = (vm_module.lookup_function(entry).reflection or {}).get(_META_KEY, "{}")
    fn = context.modules[vm_module.name][entry]

    def run(x: Any) -> Any:
        return fn(x).to_host()

    return RuntimeModule(path, "iree", run, json.loads(raw), keep=(config, context, vm_module))


def load_exported(path: str | os.PathLike, *, threads: int | None = None) -> Any:
    """Load a file written by :func:`export_file` or :func:`save_exported`; returns a callable.

    The format is detected from the content, not the suffix.  torch.export files give the
    program's module (the program is in ``module.paretoskip_exported_program``), TorchScript
    files a ``ScriptModule``, ONNX and IREE files a :class:`RuntimeModule` (onnxruntime on
    the CPU; IREE's ``local-task`` driver, or ``local-sync`` for ``threads=1``).  The
    metadata is ``module.paretoskip_export``.  ``threads`` sets the ONNX/IREE thread count
    (torch's is process-wide: ``torch.set_num_threads``).
    """
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"exported model file {str(p)!r} does not exist")
    fmt = _detect(str(p))
    if fmt == "onnx":
        return _load_onnx(p, threads)
    if fmt == "iree":
        return _load_iree(p, threads)
    extra = {_META_FILE: ""}
    if fmt == "torch.export":
        with open(p, "rb") as f:
            program = torch.export.load(f, extra_files=extra)
        module = program.module()
        setattr(module, _PROGRAM_ATTR, program)
    else:
        try:
            module = torch.jit.load(str(p), _extra_files=extra)
        except Exception as exc:
            raise ConfigError(
                f"{str(p)!r} is neither a torch.export (.pt2) archive nor a TorchScript file: {exc}"
            ) from exc
    raw = extra[_META_FILE]
    if isinstance(raw, bytes):
        raw = raw.decode()
    setattr(module, _META_ATTR, json.loads(raw or "{}"))
    return module


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata embedded in an exported file, or else the sidecar ``<file>.json``.

    Reads the torch.export / TorchScript archive entry, the ONNX ``metadata_props`` or the
    IREE entry function's reflection without running the model.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"exported model file {str(p)!r} does not exist")
    fmt = _detect(str(p))
    raw: str | bytes | None = None
    if fmt in ("torch.export", "torchscript"):
        with zipfile.ZipFile(p) as zf:
            hit = [n for n in zf.namelist() if n.endswith(f"extra/{_META_FILE}")]
            raw = zf.read(hit[0]) if hit else None
    elif fmt == "onnx" and _has("onnx"):
        import onnx

        try:
            proto = onnx.load(str(p), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf decode errors
            raise ConfigError(f"{str(p)!r} is not a readable ONNX file: {exc}") from exc
        raw = next((e.value for e in proto.metadata_props if e.key == _META_KEY), None)
    elif fmt == "iree" and _has("iree.runtime"):
        import iree.runtime as rt

        vm_module = rt.VmModule.mmap(rt.VmInstance(), str(p))
        if IREE_ENTRY in vm_module.function_names:
            raw = (vm_module.lookup_function(IREE_ENTRY).reflection or {}).get(_META_KEY)
    if raw:
        return json.loads(raw)
    side = sidecar_path(p)
    if side.is_file():
        return json.loads(side.read_text())
    raise ConfigError(f"{str(p)!r} carries no paretoskip metadata and has no sidecar {side.name!r}")
