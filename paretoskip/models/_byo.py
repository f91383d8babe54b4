"""Bring your own model: make any residual ``nn.Module`` skippable.

:func:`make_skippable` finds the residual blocks of torchvision's ResNets (ResNet, ResNeXt,
Wide-ResNet) and timm's ResNets by their class, or takes the module names of your own blocks
with what each computes when its branch is left out (``shortcut=``).  It never returns a
model without units: when it finds none it raises :class:`~paretoskip.errors.ConfigError`.

:func:`generic_parts` cuts a model that paretoskip has no :func:`register_parts` entry for
into stem, units and head with ``torch.fx`` (the units are leaves of the trace), and checks
that the units form one chain.

A model built by a *factory reference* ``"package.module:function"`` (in a study file
``[model] factory = "..."``, or ``create_model("package.module:function")``) records that
reference as its architecture, so :func:`~paretoskip.load_checkpoint` rebuilds it in a
fresh process by importing the module again.

Example:
    >>> import torch, torchvision
    >>> from paretoskip.models import make_skippable, skippable_units, model_parts
    >>> net = make_skippable(torchvision.models.resnext50_32x4d(num_classes=10), input_shape=(3, 32, 32))
    >>> len(skippable_units(net)), net.input_shape
    (16, (3, 32, 32))
    >>> make_skippable(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)))
    Traceback (most recent call last):
    ...
    paretoskip.errors.ConfigError: no residual blocks found in this Sequential (paretoskip detects torchvision's and timm's ResNet blocks and SkippableUnit subclasses); name yours: make_skippable(model, units=["layer1.0", ...], shortcut="identity" or a function (block, x) -> the block's output without its branch)
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ._skip import ModelParts, SkippableUnit, skippable_units

__all__ = ["make_skippable", "generic_parts", "build_from_factory", "is_factory_reference"]

Shortcut = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class _SwappedUnit(SkippableUnit):
    """Skip behaviour added to a block class: ``forward`` checks ``skip`` once."""

    _paretoskip_shortcut: Shortcut

    def shortcut_forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self)._paretoskip_shortcut(self, x)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.skip:
            return self.shortcut_forward(x)
        return super().forward(x, *args, **kwargs)  # type: ignore[misc]


_CLASSES: dict[tuple[type, Any], type] = {}


def _swap(block: nn.Module, shortcut: Shortcut) -> None:
    key = (type(block), shortcut)
    cls = _CLASSES.get(key)
    if cls is None:
        base = type(block)
        cls = type(
            f"Skippable{base.__name__}",
            (_SwappedUnit, base),
            {"_paretoskip_shortcut": staticmethod(shortcut), "__module__": __name__},
        )
        _CLASSES[key] = cls
    block.__class__ = cls
    block.skip = False


def _identity(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x


def _timm_basic(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # timm BasicBlock: act2(branch(x) + shortcut(x)); skipped: act2(shortcut(x))
    s = x if block.downsample is None else block.downsample(x)  # type: ignore[attr-defined]
    return block.act2(s)  # type: ignore[attr-defined]


def _timm_bottleneck(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    s = x if block.downsample is None else block.downsample(x)  # type: ignore[attr-defined]
    return block.act3(s)  # type: ignore[attr-defined]


def _timm_shortcut(block: nn.Module) -> Shortcut | None:
    cls = type(block)
    if not cls.__module__.startswith("timm.models.resnet"):
        return None
    return {"BasicBlock": _timm_basic, "Bottleneck": _timm_bottleneck}.get(cls.__name__)


def _known(block: nn.Module) -> str | Shortcut | None:
    """``"torchvision"``, a timm shortcut, or None for a block class paretoskip does not know."""
    from ._torchvision import _SWAP

    if type(block) in _SWAP:
        return "torchvision"
    return _timm_shortcut(block)


def _resolve_shortcut(name: str, block: nn.Module, shortcut: str | Shortcut | None) -> Shortcut:
    if shortcut == "identity":
        return _identity
    if callable(shortcut):
        return shortcut  # type: ignore[return-value]
    if shortcut is None:
        raise ConfigError(
            f"unit {name!r} is a {type(block).__name__}, which paretoskip does not know: say what "
            "it computes when its branch is left out: shortcut='identity' (a block returning "
            "x + f(x)) or shortcut=a function (block, x) -> tensor"
        )
    raise ConfigError(
        f"shortcut={shortcut!r}: accepted: 'identity' or a function (block, x) -> tensor"
    )


def make_skippable(
    model: nn.Module,
    units: Iterable[str] | None = None,
    *,
    shortcut: str | Shortcut | None = None,
    input_shape: Sequence[int] | None = None,
    p_last: float = 1.0,
) -> nn.Module:
    """Make the residual blocks of ``model`` skippable units, in place, and return ``model``.

    Args:
        model: any ``nn.Module`` with residual blocks.
        units: module names of the blocks to make skippable (``"layer1.0"``), in execution
            order; by default every torchvision or timm ResNet block is detected.  Modules
            that already are :class:`SkippableUnit` s count as units as they are.
        shortcut: for named blocks of a class paretoskip does not know: ``"identity"`` (the
            block returns ``x + f(x)``: skipped, it returns ``x``) or a function
            ``(block, x) -> tensor`` computing the block's output without its branch (e.g.
            ``lambda b, x: torch.relu(b.proj(x))`` for a post-activation projection block).
        input_shape: ``(C, H, W)`` of one input, stored as ``model.input_shape`` (needed by
            the evaluator and the FLOPs counter unless the model has one).
        p_last: stochastic-depth survival probability of the last block (torchvision blocks
            only; timm models take ``drop_path_rate`` themselves).

    Raises:
        ConfigError: no units found or named, an unknown name, or a block paretoskip cannot
            skip without ``shortcut``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.f = nn.Conv2d(4, 4, 3, padding=1)
        ...     def forward(self, x):
        ...         return x + self.f(x)
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), Block(), Block(), nn.Flatten(), nn.LazyLinear(3))
        >>> net = make_skippable(net, ["1", "2"], shortcut="identity", input_shape=(1, 8, 8))
        >>> [n for n, _ in skippable_units(net)]
        ['1', '2']
    """
    if not 0.0 < p_last <= 1.0:
        raise ConfigError(f"p_last={p_last} must be in (0, 1]")
    modules = dict(model.named_modules())
    if units is None:
        found = [(n, m) for n, m in modules.items() if n and _known(m) is not None]
        if not found and not skippable_units(model):
            raise ConfigError(
                f"no residual blocks found in this {type(model).__name__} (paretoskip detects "
                "torchvision's and timm's ResNet blocks and SkippableUnit subclasses); name "
                'yours: make_skippable(model, units=["layer1.0", ...], shortcut="identity" or a '
                "function (block, x) -> the block's output without its branch)"
            )
    else:
        names = list(units)
        if not names:
            raise ConfigError("units=[] names no unit; give module names such as 'layer1.0'")
        unknown = [n for n in names if n not in modules or not n]
        if unknown:
            raise ConfigError(
                f"units {unknown} are not modules of this {type(model).__name__}; its modules "
                f"include {', '.join(list(n for n in modules if n)[:12])}, ..."
            )
        found = [(n, modules[n]) for n in names]
    tv = [m for _, m in found if _known(m) == "torchvision"]
    if tv:
        from ._torchvision import make_skippable as tv_make_skippable

        tv_make_skippable(model, p_last=p_last, blocks=tv)
    elif p_last != 1.0:
        raise ConfigError(
            f"p_last={p_last}: paretoskip adds stochastic depth to torchvision blocks only; "
            "train your model with its own stochastic depth (timm: drop_path_rate) and p_last=1"
        )
    for name, block in found:
        if isinstance(block, SkippableUnit):
            continue
        known = _known(block)
        _swap(block, known if callable(known) else _resolve_shortcut(name, block, shortcut))
    if input_shape is not None:
        model.input_shape = tuple(int(s) for s in input_shape)
    return model


# --------------------------------------------------------------------------- generic cut


class _UnitTracer(torch.fx.Tracer):
    def __init__(self, unit_ids: set[int]):
        super().__init__()
        self._unit_ids = unit_ids

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self._unit_ids or super().is_leaf_module(m, qualname)


def generic_parts(model: nn.Module) -> ModelParts:
    """Cut ``model`` into stem, units and head by tracing it with ``torch.fx``.

    Works when the units run one after the other, each taking only the previous one's
    output, and the head uses only the last unit's output (as in every ResNet).  Raises
    :class:`ConfigError` saying why otherwise (then register a cut with
    :func:`~paretoskip.models.register_parts`).
    """
    units = skippable_units(model)
    if not units:
        raise ConfigError(f"this {type(model).__name__} has no skippable units")
    names = [n for n, _ in units]
    tracer = _UnitTracer({id(u) for _, u in units})
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - torch.fx raises many kinds
        raise ConfigError(
            f"cannot cut this {type(model).__name__} into stem, units and head: torch.fx could "
            f"not trace it ({type(exc).__name__}: {exc}); register a cut with "
            "paretoskip.models.register_parts"
        ) from None
    nodes = list(graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target in names]
    where = f"this {type(model).__name__}"
    if [n.target for n in calls] != names:
        raise ConfigError(
            f"{where}: its units do not each run once in module order (traced order "
            f"{[n.target for n in calls][:6]}...); register a cut with register_parts"
        )
    for prev, node in zip(calls, calls[1:]):
        if node.args != (prev,) or node.kwargs or len(prev.users) != 1:
            raise ConfigError(
                f"{where}: unit {node.target} does not take exactly unit {prev.target}'s output "
                "(something runs between them, or an output is used twice); register a cut "
                "with register_parts"
            )
    first, last = calls[0], calls[-1]
    if len(first.args) != 1 or first.kwargs:
        raise ConfigError(f"{where}: unit {first.target} takes more than one input")
    i0, i1 = nodes.index(first), nodes.index(last)
    between = [n for n in nodes[i0:i1] if n not in calls]
    if between:
        raise ConfigError(f"{where}: {between[0].op} {between[0].target} runs between its units")

    # stem: every node before the first unit, output = the first unit's input
    stem_graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for n in nodes[:i0]:
        env[n] = stem_graph.node_copy(n, lambda a: env[a])
    stem_graph.output(env[first.args[0]])  # type: ignore[index]
    # head: the nodes after the last unit, reading only its output and constants
    head_graph = torch.fx.Graph()
    h = head_graph.placeholder("h")
    env2: dict[torch.fx.Node, torch.fx.Node] = {last: h}

    def arg(a: torch.fx.Node) -> torch.fx.Node:
        if a in env2:
            return env2[a]
        if a.op == "get_attr":
            env2[a] = head_graph.node_copy(a, arg)
            return env2[a]
        raise ConfigError(
            f"{where}: its head uses {a.op} {a.target} besides the last unit's output; "
            "register a cut with register_parts"
        )

    for n in nodes[i1 + 1 :]:
        env2[n] = head_graph.node_copy(n, arg)
    stem = torch.fx.GraphModule(model, stem_graph, "Stem")
    head = torch.fx.GraphModule(model, head_graph, "Head")
    return ModelParts(stem, tuple(units), head)


# --------------------------------------------------------------------------- factories


def is_factory_reference(name: str) -> bool:
    """True for ``"package.module:function"`` (a model factory, not a registered name)."""
    mod, sep, fn = name.partition(":")
    return bool(sep) and bool(mod) and bool(fn) and all(p.isidentifier() for p in mod.split("."))


def _import_factory(ref: str) -> Callable[..., Any]:
    mod_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        top = mod_name.split(".")[0]
        if exc.name != top or os.getcwd() in sys.path:
            raise ConfigError(f"model factory {ref!r}: cannot import {mod_name!r}: {exc}") from None
        # like `python -m`, look in the working directory too (the console script does not)
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc2:
            sys.path.remove(os.getcwd())
            raise ConfigError(
                f"model factory {ref!r}: no module {mod_name!r} on the Python path or in the "
                f"working directory {os.getcwd()} ({exc2})"
            ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model factory {ref!r}: module {mod_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model factory {ref!r} is a {type(obj).__name__}, not a function")
    return obj


def build_from_factory(ref: str, **kwargs: Any) -> nn.Module:
    """Call the factory ``"package.module:function"`` and make its model skippable.

    The dataset's ``num_classes``, ``in_channels``, ``input_size`` and the recipe's
    ``p_last`` are passed when the factory takes them; other keywords always are.  A model
    without units is given to :func:`make_skippable` (detection); ``input_shape`` is set
    from ``in_channels``/``input_size`` when the model has none.
    """
    fn = _import_factory(ref)
    try:
        params = inspect.signature(fn).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        params, takes_all = {}, True  # type: ignore[assignment]
    from ._registry import CONTRACT_ARGS

    call = {k: v for k, v in kwargs.items() if takes_all or k in params or k not in CONTRACT_ARGS}
    if "num_classes" in kwargs and "num_classes" not in call:
        raise ConfigError(
            f"model factory {ref!r} does not take num_classes; add it (the dataset sets it): "
            "def build(num_classes=10, in_channels=3, input_size=32): ..."
        )
    try:
        model = fn(**call)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for model factory {ref!r}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model factory {ref!r} returned a {type(model).__name__}, not an nn.Module"
        )
    p_last = float(kwargs.get("p_last", 1.0))
    if not skippable_units(model):
        make_skippable(model, p_last=1.0 if "p_last" in call else p_last)
    elif "p_last" not in call and p_last != 1.0:
        raise ConfigError(
            f"model factory {ref!r} does not take p_last={p_last}: give it a p_last argument "
            "(stochastic depth) or train with recipe 'plain'"
        )
    has_shape = getattr(model, "input_shape", None) is not None
    if not has_shape and "in_channels" in kwargs and "input_size" in kwargs:
        s = int(kwargs["input_size"])
        model.input_shape = (int(kwargs["in_channels"]), s, s)
    return model
