"""The front file format: one reader and validator, driven by the published JSON Schema.

The schema ships inside the package (``paretoskip/schemas/front.schema.json``,
:func:`schema`), so a deployment can validate a front file with any JSON Schema library and
no paretoskip.  :func:`validate_front` checks a document against that same file (the
keywords it uses: ``type``, ``required``, ``properties``, ``additionalProperties``,
``items``, ``enum``, ``const``, ``minItems``, ``$ref``) and raises
:class:`~paretoskip.errors.ConfigError` naming the source and the dotted key.  Both
:class:`paretoskip.Front` and :class:`paretoskip.AdaptiveModel` read files through
:func:`load_front`.  This module imports neither torch nor SQLAlchemy nor Optuna.

The required keys are what choosing a member takes (``schema_version``, ``space.units``,
``objectives`` with name and direction, ``reference.metrics``, at least one member with
``mask`` and ``metrics``); everything else paretoskip writes (``study``, ``provenance``,
``hypervolume``, ...) is described by the schema and checked when present.

Example:
    >>> from paretoskip.frontfile import validate_front
    >>> doc = {"schema_version": 1, "space": {"units": ["a"]}, "reference": {"metrics": {}},
    ...        "objectives": [{"name": "flops", "direction": "minimize"}],
    ...        "members": [{"mask": "1", "metrics": {"flops": {"value": 2.0}}}]}
    >>> validate_front(doc) is doc
    True
    >>> del doc["members"][0]["mask"]
    >>> validate_front(doc, "x.json")
    Traceback (most recent call last):
    ...
    paretoskip.errors.ConfigError: front x.json: missing required key 'members[0].mask'
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from .errors import ConfigError

__all__ = [
    "SCHEMA_VERSION",
    "SCHEMA_RESOURCE",
    "schema",
    "validate_front",
    "validate_family",
    "replace_family",
    "load_front",
    "metric_value",
]

#: The front file schema version this paretoskip writes and reads.
SCHEMA_VERSION = 1
#: The JSON Schema file, relative to the package.
SCHEMA_RESOURCE = "schemas/front.schema.json"

_TYPES: dict[str, tuple[str, Any]] = {
    "object": ("an object", lambda v: isinstance(v, Mapping)),
    "array": ("an array", lambda v: isinstance(v, list)),
    "string": ("a string", lambda v: isinstance(v, str)),
    "boolean": ("true or false", lambda v: isinstance(v, bool)),
    "integer": (
        "an integer",
        lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
    ),
    "number": ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    "null": ("null", lambda v: v is None),
}
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema of front files (``paretoskip/schemas/front.schema.json``).

    Example:
        >>> schema()["properties"]["schema_version"]
        {'const': 1}
    """
    text = resources.files("paretoskip").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return "a number"
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"front schema: only local references are supported, not {ref}")
        target: Any = schema()
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def _check(value: Any, node: Mapping[str, Any], path: str, source: str) -> None:
    node = _resolve(node)
    where = path or "the document"
    if "const" in node and value != node["const"]:
        raise ConfigError(
            f"front {source}: {where} {value!r} is not supported "
            f"(this paretoskip reads {where} {node['const']!r})"
        )
    if "enum" in node and value not in node["enum"]:
        accepted = ", ".join(repr(v) for v in node["enum"])
        raise ConfigError(f"front {source}: {where} is {value!r}; accepted: {accepted}")
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not any(_TYPES[t][1](value) for t in types):
            expected = " or ".join(_TYPES[t][0] for t in types)
            target = f"key {path!r}" if path else "the document"
            raise ConfigError(f"front {source}: {target} must be {expected}, not {_kind(value)}")
    if isinstance(value, Mapping):
        prefix = f"{path}." if path else ""
        for key in node.get("required", ()):
            if key not in value:
                raise ConfigError(f"front {source}: missing required key {prefix + key!r}")
        props = node.get("properties", {})
        extra = node.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                _check(item, props[key], prefix + str(key), source)
            elif isinstance(extra, Mapping):
                _check(item, extra, prefix + str(key), source)
    elif isinstance(value, list):
        least = node.get("minItems", 0)
        if len(value) < least:
            raise ConfigError(
                f"front {source}: {path!r} is empty; it needs at least {least} "
                + ("entry" if least == 1 else "entries")
            )
        if "items" in node:
            for i, item in enumerate(value):
                _check(item, node["items"], f"{path}[{i}]", source)


def validate_front(front: Any, source: str = "<dict>") -> dict:
    """Check a front document against the schema; returns it.

    The schema version is checked first (a file of another version is refused before its
    keys are looked at).  Raises :class:`~paretoskip.errors.ConfigError` naming ``source``
    (the file, when there is one) and the missing or malformed key.
    """
    root = schema()
    if not isinstance(front, Mapping):
        raise ConfigError(f"front {source}: expected a JSON object, got {type(front).__name__}")
    if "schema_version" not in front:
        raise ConfigError(f"front {source}: missing required key 'schema_version'")
    _check(front["schema_version"], root["properties"]["schema_version"], "schema_version", source)
    _check(front, root, "", source)
    names = [f["name"] for f in front.get("families", ())]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(
            f"front {source}: families {twice} appear more than once; each family needs its own name"
        )
    return front  # type: ignore[return-value]


def validate_family(family: Any, source: str = "<dict>") -> dict:
    """Check one family of operating points against the schema (``$defs.family``).

    Example:
        >>> validate_family({"name": "gated", "members": [{"metrics": {}}]})["name"]
        'gated'
        >>> validate_family({"name": "gated", "kind": "fast", "members": [{"metrics": {}}]})
        Traceback (most recent call last):
        ...
        paretoskip.errors.ConfigError: front <dict>: kind is 'fast'; accepted: 'static', 'dynamic', 'dual'
    """
    if not isinstance(family, Mapping):
        raise ConfigError(f"front {source}: a family must be a JSON object, not {_kind(family)}")
    _check(family, schema()["$defs"]["family"], "", source)
    return family  # type: ignore[return-value]


def replace_family(families: Sequence[Mapping[str, Any]], family: Mapping[str, Any]) -> list:
    """``families`` with ``family`` in the place of the one of its name, or appended."""
    out = [dict(f) for f in families]
    names = [f.get("name") for f in out]
    if family["name"] in names:
        out[names.index(family["name"])] = dict(family)
    else:
        out.append(dict(family))
    return out


def load_front(path: str | os.PathLike) -> dict:
    """Read a front file (JSON) and validate it (see :func:`validate_front`).

    Raises :class:`~paretoskip.errors.ConfigError` naming the file for a file that does not
    exist, is not valid JSON, has another schema version or misses a key.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            front = json.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"front file {path!r} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"front file {path!r} is a directory, not a front file") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"front file {path!r} is not valid JSON: {exc}") from exc
    return validate_front(front, f"file {path!r}")


def metric_value(entry: Any, where: str = "metric") -> float:
    """A metric entry (``{"value": ...}`` or a bare number) as a float; null becomes NaN.

    Example:
        >>> metric_value({"value": None}), metric_value(2)
        (nan, 2.0)
    """
    value = entry.get("value") if isinstance(entry, Mapping) else entry
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"front: {where} has a non-numeric value {value!r}")
    return float(value)
