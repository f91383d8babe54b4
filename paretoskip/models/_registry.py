"""The model registry and the constructor contract every builder follows."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, overload

from torch import nn

from ..errors import ConfigError

__all__ = [
    "ModelBuilder",
    "DATA_ARGS",
    "RECIPE_ARGS",
    "CONTRACT_ARGS",
    "register_model",
    "create_model",
    "list_models",
    "model_spec",
]

#: Constructor arguments the dataset sets (``DatasetSplits.num_classes``, ...).
DATA_ARGS: tuple[str, ...] = ("num_classes", "in_channels", "input_size")
#: Constructor arguments the training recipe sets (stochastic-depth survival of the last block).
RECIPE_ARGS: tuple[str, ...] = ("p_last",)
#: Every argument of the contract (none of them belongs in a study's ``[model.kwargs]``).
CONTRACT_ARGS: tuple[str, ...] = DATA_ARGS + RECIPE_ARGS


class ModelBuilder(Protocol):
    """What :func:`register_model` accepts: a callable building one skippable model.

    Every builder takes (by keyword, each with a default) ``num_classes`` (classifier
    outputs), ``in_channels`` (image channels), ``input_size`` (image height = width),
    ``p_last`` (stochastic-depth survival probability of the last block; ``1.0`` is plain
    training) and any architecture options of its own (``**kwargs``).  The model it returns

    * has ``input_shape == (in_channels, input_size, input_size)``;
    * has its residual blocks as :class:`~paretoskip.models.SkippableUnit` submodules, in
      execution order;
    * is of a class :func:`~paretoskip.models.register_parts` knows how to cut into stem,
      units and head.
    """

    def __call__(
        self,
        *,
        num_classes: int = ...,
        in_channels: int = ...,
        input_size: int = ...,
        p_last: float = ...,
        **kwargs: Any,
    ) -> nn.Module: ...


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_B = TypeVar("_B", bound=Callable[..., nn.Module])


def _check_contract(name: str, builder: Callable[..., nn.Module]) -> None:
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # a builtin: nothing to check
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    missing = [a for a in CONTRACT_ARGS if a not in params]
    if missing:
        raise ConfigError(
            f"model builder {name!r} does not take {missing}; every builder takes "
            f"{', '.join(CONTRACT_ARGS)} (see paretoskip.models.ModelBuilder)"
        )


@overload
def register_model(name: str) -> Callable[[_B], _B]: ...
@overload
def register_model(name: str, builder: _B) -> _B: ...
def register_model(name: str, builder: Any = None) -> Any:
    """Register a builder so that ``create_model(name, **kwargs)`` finds it.

    Use it as a decorator (``@register_model("resnet20")``) or call it with the builder.
    A name is registered once: a second registration raises
    :class:`~paretoskip.errors.ConfigError`.

    Example:
        >>> from paretoskip.models import register_model
        >>> register_model("resnet20", lambda **kw: None)
        Traceback (most recent call last):
        ...
        paretoskip.errors.ConfigError: model 'resnet20' is registered already; choose another name
    """

    def add(fn: _B) -> _B:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a model name must be a non-empty string, not {name!r}")
        if name in _REGISTRY:
            raise ConfigError(f"model {name!r} is registered already; choose another name")
        _check_contract(name, fn)
        _REGISTRY[name] = fn
        return fn

    return add if builder is None else add(builder)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY, key=lambda n: (not n[-1].isdigit() or n.startswith("wide"), len(n), n))


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a skippable model by name.

    CIFAR-style ``resnet20/32/44/56/110`` take ``num_classes``, ``in_channels``,
    ``input_size``, ``p_last`` (stochastic-depth survival of the last block, default 0.5),
    ``shortcut`` ("A" or "B") and ``widths``.  torchvision's ``resnet18/34/50/101/152`` and
    ``wide_resnet50_2`` take ``num_classes``, ``in_channels``, ``input_size`` and ``p_last``
    (default 1.0).  A name ``"package.module:function"`` calls that function (a model of
    your own, see :func:`~paretoskip.models.make_skippable`).  The name and arguments are
    kept in ``model.paretoskip_spec`` so a checkpoint can rebuild the same architecture.

    Example:
        >>> import paretoskip
        >>> m = paretoskip.create_model("resnet56", num_classes=100)
        >>> len(paretoskip.models.skippable_units(m))
        27
    """
    from ._byo import build_from_factory, is_factory_reference

    if name not in _REGISTRY:
        if is_factory_reference(name):
            model = build_from_factory(name, **kwargs)
            model.paretoskip_spec = {"name": name, "kwargs": dict(kwargs)}
            return model
        raise ConfigError(
            f"unknown model {name!r}; available: {', '.join(list_models())}, or a factory "
            "'package.module:function' returning your own model"
        )
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
            "this model was not built by paretoskip.create_model; its architecture is unknown "
            "(to save a checkpoint that reloads, build it with "
            "create_model('package.module:function') from a function returning it)"
        )
    return {"name": spec["name"], "kwargs": dict(spec["kwargs"])}
