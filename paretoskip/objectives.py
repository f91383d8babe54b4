"""Objectives and constraints of a search: the names :mod:`paretoskip.metrics` defines.

Kept so that ``from paretoskip.objectives import parse_objectives`` goes on working; the
metric table, :class:`Objective` and :class:`Constraint` live in :mod:`paretoskip.metrics`.

Example:
    >>> from paretoskip.objectives import Constraint
    >>> str(Constraint.parse("latency <= 50%"))
    'latency <= 0.5 * full'
"""

from __future__ import annotations

from .metrics import Constraint, Objective, parse_constraints, parse_objectives

__all__ = ["Objective", "Constraint", "parse_objectives", "parse_constraints"]
