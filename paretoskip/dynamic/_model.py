"""A skippable backbone with gates that decide per input: execution and exact accounting.

:class:`GatedModel` wraps any skippable model of this project.  Its gates (see
:mod:`paretoskip.dynamic._gates`) decide for every input which units run (*layer* gates) and
which groups of each branch's inner channels are computed (*channel* gates); kept units and
channels are scaled by learned per-input factors.  Modes: ``"layer"``, ``"channel"`` and
``"lc"`` (both).

Two ways to run it compute the same function:

* **masked** (:meth:`GatedModel.forward_masked`; training): every unit and channel is
  computed for every input and multiplied by its 0/1 decision.  In training the decisions
  are hard straight-through Gumbel samples (forward: 0/1; backward: the gradient of the
  relaxed sigmoid), and the method also returns each input's expected FLOPs as a
  differentiable fraction of the full backbone's.
* **grouped** (:meth:`GatedModel.run`, what ``model(x)`` does in eval mode): decisions are
  hard (a logit > 0), a function of the input alone; at each unit the inputs of a batch are
  grouped by their decision there (skip, or the set of kept channel groups) and each group
  runs that configuration only: skipped inputs take the shortcut, kept inputs run the branch
  with only their kept inner filters (the next convolution reads only those channels, which is
  exact: the dropped channels would be zeros).  Grouping per unit, rather than per whole
  configuration, keeps the groups large: a batch of 64 rarely has two inputs with the same
  full configuration, but at one unit it has at most ``1 + 2^groups`` distinct decisions.

Every input's FLOPs are exact: counted once per unit and per number of kept channels with
:class:`~torch.utils.flop_counter.FlopCounterMode` (2 × MACs, the counter
:mod:`paretoskip.measure` uses for static configurations), gate networks included, and summed
along the input's own path (:class:`CostModel`).  As for static configurations, the counter
counts convolutions and matrix products, not batch norm, activations, pooling or the
element-wise gate scaling.

Batch norm always uses its running statistics (the backbone stays in eval mode, also while
the gates train), so an input's decisions and output do not depend on its batch.

Example:
    >>> import torch, paretoskip
    >>> from paretoskip.dynamic import GatedModel
    >>> backbone = paretoskip.create_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    >>> gated = GatedModel(backbone, mode="lc").eval()
    >>> out = gated.run(torch.randn(4, 1, 8, 8))
    >>> out.logits.shape, out.flops.shape, out.skipped.shape
    (torch.Size([4, 10]), torch.Size([4]), torch.Size([4, 9]))
    >>> bool((out.flops > gated.costs.full).all())  # fresh gates are open: full model + gates
    True
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError
from ..measure import count_costs
from ..models import model_parts
from ._branch import BranchAdapter, branch_adapter
from ._gates import GATE_STYLES, GateNetwork, UnitLayout

__all__ = ["GatedModel", "GatedOutput", "MaskedOutput", "CostModel", "MODES"]

#: Gating modes: layer gates only, channel gates only, both.
MODES: tuple[str, ...] = ("layer", "channel", "lc")

#: ``GatedOutput.capped`` codes.
NOT_CAPPED, CAPPED_STATIC, CAPPED_PREFIX = 0, 1, 2


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _flops_of(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops())


def _split_sizes(total: int, parts: int) -> tuple[int, ...]:
    base, extra = divmod(total, parts)
    return tuple(base + (1 if i < extra else 0) for i in range(parts))


@dataclass(frozen=True)
class CostModel:
    """Exact FLOPs per input of a gated model, by table lookup (batch 1, 2 × MACs).

    ``flops(input) = base + [policy] + Σ_units (gate_i if the unit's head ran) +
    (run[i][k] if the unit ran with k inner channels, else skip[i])``.

    Attributes:
        base: stem, head and everything outside the units.
        full: the backbone with every unit run, no gates (the reference of fractions).
        skip: per unit, its cost when skipped (a projection shortcut).
        run: per unit, its cost when run, indexed by kept inner channels ``k`` (0 … C).
        gate: per unit, its head's cost (block style; 0 for units without a head).
        policy: the up-front policy network's cost (policy style; 0 otherwise).
        fixed, per_channel: ``run[i][k] == fixed[i] + per_channel[i] * k`` for ``k >= 1``
            (checked), the affine form the training loss uses (at ``k = 0`` only the shortcut
            runs: ``run[i][0] == skip[i]``, which the affine form overestimates by the layers
            before the inner convolution, zero for basic blocks).
    """

    base: int
    full: int
    skip: tuple[int, ...]
    run: tuple[tuple[int, ...], ...]
    gate: tuple[int, ...]
    policy: int
    fixed: tuple[int, ...]
    per_channel: tuple[int, ...]

    @property
    def minimum(self) -> int:
        """The cheapest an input can cost: every unit skipped, no block head evaluated.

        What the dual mode's halting guarantees at least (the policy network, when there is
        one, runs before anything else).
        """
        return self.base + self.policy + sum(self.skip)

    @property
    def gated_minimum(self) -> int:
        """The cheapest gated execution: every unit skipped by its gate, every head paid."""
        return self.minimum + sum(self.gate)

    def static(self, skipped: Sequence[bool]) -> int:
        """FLOPs of a static configuration of the backbone (no gates, every channel)."""
        return self.base + sum(s if k else r[-1] for k, s, r in zip(skipped, self.skip, self.run))

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "full": self.full,
            "skip": list(self.skip),
            "run_full": [r[-1] for r in self.run],
            "gate": list(self.gate),
            "policy": self.policy,
            "unit": "FLOPs per input (2 × MACs), torch FlopCounterMode",
        }


@dataclass(frozen=True, eq=False)
class GatedOutput:
    """What :meth:`GatedModel.run` computed for a batch, per input.

    Attributes:
        logits: ``n×classes``.
        flops: ``n`` exact FLOPs of each input's own path, gates included (int64).
        skipped: ``n×units`` True where the unit was skipped.
        kept: ``n×units`` inner channels computed (0 where skipped).
        groups: ``n×units×G`` the channel groups kept (all True without channel gates).
        gated: ``n×units`` True where the unit's decision came from the gates (False after
            the dual mode capped the input).
        capped: ``n`` 0 = not capped, 1 = the rest replaced by a static configuration,
            2 = halted (the rest skipped).
    """

    logits: torch.Tensor
    flops: torch.Tensor
    skipped: torch.Tensor
    kept: torch.Tensor
    groups: torch.Tensor
    gated: torch.Tensor
    capped: torch.Tensor

    def configurations(self) -> list[str]:
        """Each input's configuration as text: the skip mask, then the kept groups per unit.

        Two inputs have the same string exactly when they executed the same units with the
        same inner channels.
        """
        out = []
        skipped = self.skipped.cpu().numpy()
        groups = self.groups.cpu().numpy()
        for s, g in zip(skipped, groups):
            mask = "".join("1" if b else "0" for b in s)
            chans = ".".join(
                "-" if b else "".join("1" if x else "0" for x in row) for b, row in zip(s, g)
            )
            out.append(f"{mask}/{chans}")
        return out


@dataclass(frozen=True, eq=False)
class MaskedOutput:
    """What :meth:`GatedModel.forward_masked` computed.

    Attributes:
        logits: ``n×classes``.
        cost: each input's FLOPs as a fraction of the full backbone's under the decisions
            the forward pass used (sampled in training), differentiable through them.
        cost_eval: the same under the decisions inference would make (logit > 0), with the
            gradient of the relaxed sigmoid: what the training's compute target acts on, so
            that the target is met at inference, not only under the training noise.
        skipped: ``n×units`` the decisions used.
    """

    logits: torch.Tensor
    cost: torch.Tensor
    cost_eval: torch.Tensor
    skipped: torch.Tensor


@dataclass
class Budget:
    """A hard FLOPs budget per input and what replaces a gated decision that would exceed it.

    Built by :class:`~paretoskip.dynamic.DualModel`; see there.
    """

    flops: int
    fallback: str
    members: torch.Tensor  # M×U skip bits, most accurate first
    suffix: torch.Tensor  # M×(U+1): FLOPs of units i.. under member m


class GatedModel(nn.Module):
    """A skippable backbone with per-input layer and/or channel gates.

    Args:
        backbone: a skippable model of this project (:func:`paretoskip.create_model`),
            trained; it becomes a submodule (``backbone.*`` in the state dict).
        mode: ``"layer"`` (skip units), ``"channel"`` (drop groups of inner channels) or
            ``"lc"`` (both).
        gate: the gate style, a name in :data:`~paretoskip.dynamic.GATE_STYLES`
            (``"block"``: a head per unit; ``"policy"``: one up-front network).
        hidden: hidden width of the gate heads.
        channel_groups: groups of inner channels per unit a channel gate keeps or drops
            (contiguous, as equal as possible; at most the unit's inner channels).
        scale: learned per-input scaling of kept channels and kept branches.
        never_skip: unit names without a layer gate (they always run).
        policy_width: channels of the policy network's first convolution (policy style).

    Units are run through their branch adapter (:mod:`paretoskip.dynamic._branch`); their
    own ``skip`` flags are ignored.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        mode: str = "lc",
        gate: str = "block",
        hidden: int = 16,
        channel_groups: int = 4,
        scale: bool = True,
        never_skip: Sequence[str] = (),
        policy_width: int = 16,
    ):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r} is not accepted; accepted: {', '.join(MODES)}")
        if gate not in GATE_STYLES:
            raise ConfigError(
                f"gate={gate!r} is not accepted; accepted: {', '.join(sorted(GATE_STYLES))}"
            )
        for name, value in (
            ("hidden", hidden),
            ("channel_groups", channel_groups),
            ("policy_width", policy_width),
        ):
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name}={value!r} is not accepted; give an integer >= 1")
        if not isinstance(scale, bool):
            raise ConfigError(f"scale={scale!r} is not accepted; give true or false")
        if isinstance(never_skip, str):
            never_skip = [never_skip]
        self.backbone = backbone
        self.backbone.eval()
        shape = getattr(backbone, "input_shape", None)
        if shape is None:
            raise ConfigError("the backbone has no input_shape; build it with create_model")
        self.input_shape = tuple(int(s) for s in shape)
        parts = model_parts(backbone)
        names = [n for n, _ in parts.units]
        if not names:
            raise ConfigError("the backbone has no skippable units to gate")
        unknown = sorted(set(never_skip) - set(names))
        if unknown:
            raise ConfigError(
                f"never_skip names {unknown}, which are not units of the backbone; its units: "
                f"{', '.join(names)}"
            )
        self.mode = mode
        layer, channel = mode in ("layer", "lc"), mode in ("channel", "lc")
        adapters = [branch_adapter(u) for _, u in parts.units]
        if channel:
            missing = [
                (n, type(u).__name__) for (n, u), a in zip(parts.units, adapters) if a is None
            ]
            if missing:
                raise ConfigError(
                    f"channel gates need a branch adapter, and units {missing[:3]} have none; "
                    "use mode='layer', or register one with paretoskip.dynamic.register_branch"
                )
        shapes = self._unit_shapes()
        layouts = []
        for (name, _), a, shp in zip(parts.units, adapters, shapes):
            inner = a.inner_channels if a is not None else 0
            if channel and channel_groups > inner:
                raise ConfigError(
                    f"channel_groups={channel_groups} is more than unit {name!r}'s "
                    f"{inner} inner channels; accepted: 1 … {inner}"
                )
            layouts.append(
                UnitLayout(
                    name=name,
                    in_channels=int(shp[1]),
                    inner_channels=inner,
                    out_channels=a.out_channels if a is not None else 0,
                    layer_gate=layer and name not in never_skip,
                    groups=_split_sizes(inner, channel_groups) if channel else (),
                    inner_scale=channel and scale,
                    out_scale=layer and scale and a is not None and name not in never_skip,
                )
            )
        self.layouts = tuple(layouts)
        stem_channels = int(shapes[0][1])
        kwargs: dict[str, Any] = {"hidden": hidden, "stem_channels": stem_channels}
        if GATE_STYLES[gate].upfront:
            kwargs["width"] = policy_width
        self.gates: GateNetwork = GATE_STYLES[gate](self.layouts, **kwargs)
        self.gate_config = {
            "mode": mode,
            "gate": gate,
            "hidden": hidden,
            "channel_groups": channel_groups,
            "scale": scale,
            "never_skip": sorted(never_skip),
            "policy_width": policy_width,
        }
        self._cache: dict[Any, Any] = {}
        self.costs = self._count_costs(shapes)

    def __getstate__(self) -> dict[str, Any]:
        # the cache holds references into this object's backbone: never copy it
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    # ------------------------------------------------------------------ structure
    @property
    def unit_names(self) -> tuple[str, ...]:
        return tuple(lay.name for lay in self.layouts)

    @property
    def max_groups(self) -> int:
        return max((len(lay.groups) for lay in self.layouts), default=0) or 1

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gates' parameters (what trains when the backbone is frozen)."""
        return list(self.gates.parameters())

    def train(self, mode: bool = True) -> GatedModel:
        """Set the gates' training mode; the backbone always stays in eval mode."""
        self.training = mode
        self.gates.train(mode)
        self.backbone.eval()
        return self

    def _structure(self) -> tuple[Any, list[tuple[str, nn.Module]], list[BranchAdapter | None]]:
        """``(parts, units, adapters)`` of the current backbone object (rebuilt after a copy)."""
        key = ("structure", id(self.backbone))
        hit = self._cache.get(key)
        if hit is None:
            parts = model_parts(self.backbone)
            units = list(parts.units)
            hit = (parts, units, [branch_adapter(u) for _, u in units])
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "structure"}
            self._cache[key] = hit
        return hit

    def _unit_shapes(self) -> list[tuple[int, ...]]:
        meta = copy.deepcopy(self.backbone).to("meta").eval()
        parts = model_parts(meta)
        shapes = []
        with torch.no_grad():
            h = parts.stem(torch.empty(1, *self.input_shape, device="meta"))
            for _, unit in parts.units:
                shapes.append(tuple(h.shape))
                h = unit.run(h, False)
        return shapes

    def _count_costs(self, shapes: list[tuple[int, ...]]) -> CostModel:
        table = count_costs(self.backbone, self.input_shape)
        meta = copy.deepcopy(self).to("meta")
        _, units, adapters = meta._structure()
        run, fixed, per_channel, gate = [], [], [], []
        for i, (lay, (name, _), a, shp) in enumerate(zip(self.layouts, units, adapters, shapes)):
            x = torch.empty(*shp, device="meta")
            full = table.run_flops[i]
            if lay.groups:
                # With k >= 1 kept inner channels the FLOPs are affine in k (the inner
                # convolution computes k filters, the next one reads k channels; layers before
                # the inner one are a constant).  With k = 0 only the shortcut is computed (the
                # branch is a constant).  Count k = 1 and one group, check that they lie on the
                # line through the full count.
                c = lay.inner_channels
                counted = {c: full}
                for k in sorted({1, lay.groups[0]} - {c}):
                    ch = torch.arange(k, device="meta")
                    counted[k] = _flops_of(
                        lambda t, c_=ch, a_=a: a_.finish(a_.branch(t, c_), a_.identity(t)), x
                    )
                zero = table.skip_flops[i]
                if len(counted) == 1:  # one channel: nothing between 0 and all
                    step, base_k = full - zero, zero
                else:
                    k_lo = min(counted)
                    step, rem = divmod(full - counted[k_lo], c - k_lo)
                    base_k = full - step * c
                    if rem or any(v != base_k + step * k for k, v in counted.items()):
                        raise RuntimeError(
                            f"unit {name!r}: FLOPs are not affine in the kept inner channels "
                            f"({counted})"
                        )
                run.append(tuple(zero if k == 0 else base_k + step * k for k in range(c + 1)))
                fixed.append(base_k)
                per_channel.append(step)
            else:
                run.append((full,))
                fixed.append(full)
                per_channel.append(0)
            if not meta.gates.upfront and lay.n_outputs:
                gate.append(_flops_of(lambda t, j=i: meta.gates.unit(j, t), x))
            else:
                gate.append(0)
        policy = 0
        if meta.gates.upfront:
            h0 = torch.empty(*shapes[0], device="meta")
            policy = _flops_of(meta.gates.plan, h0)
        return CostModel(
            base=table.base_flops,
            full=table.full_flops,
            skip=tuple(table.skip_flops),
            run=tuple(run),
            gate=tuple(gate),
            policy=policy,
            fixed=tuple(fixed),
            per_channel=tuple(per_channel),
        )

    def _tables(self, device: torch.device) -> dict[str, Any]:
        """Cost tables and channel indices as tensors on ``device`` (cached)."""
        key = ("tables", str(device))
        hit = self._cache.get(key)
        if hit is None:
            c = self.costs
            rest = [0] * (len(self.layouts) + 1)
            for i in range(len(self.layouts) - 1, -1, -1):
                rest[i] = rest[i + 1] + c.skip[i]
            hit = {
                "run": [torch.tensor(r, dtype=torch.long, device=device) for r in c.run],
                "rest_skip": rest,
                "sizes": [
                    torch.tensor(lay.groups, dtype=torch.long, device=device)
                    if lay.groups
                    else None
                    for lay in self.layouts
                ],
                "channel_group": [
                    lay.channel_group().to(device) if lay.groups else None for lay in self.layouts
                ],
                "pow2": torch.tensor(
                    [1 << g for g in range(self.max_groups)], dtype=torch.long, device=device
                ),
                "channels": {},
            }
            self._cache[key] = hit
        return hit

    def _channels(self, i: int, pattern: int, device: torch.device) -> torch.Tensor | None:
        """Indices of the inner channels of unit ``i`` kept by a group bit pattern."""
        lay = self.layouts[i]
        if not lay.groups or pattern == (1 << len(lay.groups)) - 1:
            return None
        chans = self._tables(device)["channels"]
        hit = chans.get((i, pattern))
        if hit is None:
            keep = [(pattern >> g) & 1 for g in range(len(lay.groups))]
            group = lay.channel_group()
            hit = torch.nonzero(torch.tensor(keep)[group]).flatten().to(device)
            chans[(i, pattern)] = hit
        return hit

    # ------------------------------------------------------------------ masked path
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: the masked path with sampled gates in training, grouped execution in eval."""
        if self.training:
            return self.forward_masked(x).logits
        with torch.no_grad():
            return self._logits(x)

    def forward_masked(
        self, x: torch.Tensor, *, stochastic: bool | None = None, temperature: float = 1.0
    ) -> MaskedOutput:
        """Every unit and channel computed and multiplied by its decision.

        Args:
            stochastic: straight-through Gumbel decisions (default: in training mode);
                otherwise the hard eval decisions (logit > 0).
            temperature: of the relaxed sigmoid whose gradient the decisions pass back.
        """
        stochastic = self.training if stochastic is None else stochastic
        parts, units, adapters = self._structure()
        c = self.costs
        tables = self._tables(x.device)
        h = parts.stem(x)
        n = x.shape[0]
        cost = torch.full((n,), float(c.base + c.policy), device=x.device)
        cost_eval = cost
        plan = self.gates.plan(h) if self.gates.upfront else None
        skipped = []

        def unit_cost(i: int, run: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor:
            k = keep @ tables["sizes"][i].to(keep.dtype) if keep is not None else None
            on = c.fixed[i] + (c.per_channel[i] * k if k is not None else 0.0)
            return on if run is None else run * on + (1 - run) * c.skip[i]

        for i, (lay, (_, unit), a) in enumerate(zip(self.layouts, units, adapters)):
            g = None
            if lay.n_outputs:
                z = plan[i] if plan is not None else self.gates.unit(i, h)
                cost = cost + c.gate[i]
                cost_eval = cost_eval + c.gate[i]
                g = lay.split(z)
            has_layer = g is not None and g.layer is not None
            has_groups = g is not None and g.groups is not None
            run = _decide(g.layer, stochastic, temperature) if has_layer else None
            keep = _decide(g.groups, stochastic, temperature) if has_groups else None
            inner = None
            if keep is not None:
                inner = keep[:, tables["channel_group"][i]]
                if g.inner_scale is not None:
                    inner = inner * 2 * torch.sigmoid(g.inner_scale)
            out_scale = None
            if g is not None and g.out_scale is not None:
                out_scale = 2 * torch.sigmoid(g.out_scale)
            if a is None:
                on = unit.run(h, False)
                h = on if run is None else _mix(run, on, unit.shortcut_forward(h))
            else:
                branch = a.branch(h, None, inner, out_scale)
                if run is not None:
                    branch = branch * run[:, None, None, None]
                h = a.finish(branch, a.identity(h))
            cost = cost + unit_cost(i, run, keep)
            if stochastic:
                run_e = _threshold_st(g.layer, temperature) if has_layer else None
                keep_e = _threshold_st(g.groups, temperature) if has_groups else None
                cost_eval = cost_eval + unit_cost(i, run_e, keep_e)
            skipped.append(
                run.detach() < 0.5
                if run is not None
                else torch.zeros(n, dtype=torch.bool, device=x.device)
            )
        if not stochastic:
            cost_eval = cost
        return MaskedOutput(
            logits=parts.head(h),
            cost=cost / c.full,
            cost_eval=cost_eval / c.full,
            skipped=torch.stack(skipped, 1),
        )

    # ------------------------------------------------------------------ grouped path
    def run(self, x: torch.Tensor, *, budget: Budget | None = None) -> GatedOutput:
        """Grouped execution with hard decisions (see the module docstring); no gradients.

        ``budget`` is the dual mode's (use :class:`~paretoskip.dynamic.DualModel`).
        """
        with torch.no_grad():
            return self._run(x, budget)

    def _run(self, x: torch.Tensor, budget: Budget | None) -> GatedOutput:
        parts, units, adapters = self._structure()
        c = self.costs
        dev = x.device
        tables = self._tables(dev)
        n, nu, mg = x.shape[0], len(self.layouts), self.max_groups
        h = parts.stem(x)
        spent = torch.full((n,), c.base + c.policy, dtype=torch.long, device=dev)
        skipped = torch.zeros(n, nu, dtype=torch.bool, device=dev)
        kept = torch.zeros(n, nu, dtype=torch.long, device=dev)
        groups = torch.ones(n, nu, mg, dtype=torch.bool, device=dev)
        gated = torch.zeros(n, nu, dtype=torch.bool, device=dev)
        capped = torch.zeros(n, dtype=torch.int8, device=dev)
        forced = torch.zeros(n, dtype=torch.bool, device=dev)
        plan_bits = torch.ones(n, nu, dtype=torch.bool, device=dev)  # skip bits once forced
        rest = tables["rest_skip"]
        limit = budget.flops if budget is not None else None

        def cap(sel: torch.Tensor, i: int) -> None:
            idx = torch.nonzero(sel).flatten()
            if idx.numel() == 0:
                return
            remaining = limit - spent[idx]
            code = torch.full((idx.numel(),), CAPPED_PREFIX, dtype=torch.int8, device=dev)
            bits = torch.ones(idx.numel(), nu, dtype=torch.bool, device=dev)
            if budget.fallback == "static" and budget.members.numel():
                fits = budget.suffix[:, i].to(dev)[None, :] <= remaining[:, None]
                has = fits.any(1)
                first = torch.argmax(fits.to(torch.int8), 1)
                bits[has] = budget.members.to(dev)[first[has]]
                code[has] = CAPPED_STATIC
            plan_bits[idx, i:] = bits[:, i:]
            capped[idx] = code
            forced[idx] = True

        plan = self.gates.plan(h) if self.gates.upfront else None
        decoded: list[Any] = []
        if plan is not None:
            decoded = [
                lay.split(z) if lay.n_outputs else None for lay, z in zip(self.layouts, plan)
            ]
            if budget is not None and budget.fallback == "static":
                total = spent.clone()
                for i, g in enumerate(decoded):
                    run_i, k_i = self._hard(i, g, n, dev)[:2]
                    total += torch.where(run_i, tables["run"][i][k_i], c.skip[i])
                cap(total > limit, 0)

        for i, (lay, (_, unit), a) in enumerate(zip(self.layouts, units, adapters)):
            live = ~forced
            g = None
            if lay.n_outputs:
                if plan is not None:
                    g = decoded[i]
                else:
                    if limit is not None:
                        cap(live & (spent + c.gate[i] + c.skip[i] + rest[i + 1] > limit), i)
                        live = ~forced
                    if bool(live.all()):
                        g = lay.split(self.gates.unit(i, h))
                    elif bool(live.any()):
                        idx = torch.nonzero(live).flatten()
                        g = _scatter(lay.split(self.gates.unit(i, h[idx])), idx, n)
                    spent += torch.where(live, c.gate[i], 0)
            run_i, k_i, pattern, inner, out_scale = self._hard(i, g, n, dev)
            cost = torch.where(run_i, tables["run"][i][k_i], c.skip[i])
            if limit is not None:
                cap(live & (spent + cost + rest[i + 1] > limit), i)
            # forced inputs follow their plan with the backbone's own unit
            force_run = forced & ~plan_bits[:, i]
            run_i = torch.where(forced, force_run, run_i)
            k_full = lay.inner_channels if lay.groups else 0
            k_i = torch.where(forced, k_full, k_i)
            cost = torch.where(run_i, tables["run"][i][k_i], c.skip[i])
            spent += cost
            skipped[:, i] = ~run_i
            kept[:, i] = torch.where(run_i, k_i if lay.groups else lay.inner_channels, 0)
            if lay.groups:
                bits = ((pattern[:, None] >> torch.arange(len(lay.groups), device=dev)) & 1).bool()
                bits = torch.where(forced[:, None], True, bits)
                groups[:, i, : len(lay.groups)] = bits & run_i[:, None]
                groups[:, i, len(lay.groups) :] = False
            else:
                groups[:, i] = run_i[:, None]
            gated[:, i] = ~forced & (g is not None)
            key = torch.where(~run_i, -1, torch.where(forced, -2, pattern))
            h = self._execute(i, unit, a, h, key, inner, out_scale)
        logits = parts.head(h)
        return GatedOutput(
            logits=logits,
            flops=spent,
            skipped=skipped,
            kept=kept,
            groups=groups,
            gated=gated,
            capped=capped,
        )

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`run`'s logits without its accounting (the same operations, so the same bits)."""
        parts, units, adapters = self._structure()
        n, dev = x.shape[0], x.device
        h = parts.stem(x)
        plan = self.gates.plan(h) if self.gates.upfront else None
        for i, (lay, (_, unit), a) in enumerate(zip(self.layouts, units, adapters)):
            g = None
            if lay.n_outputs:
                g = lay.split(plan[i] if plan is not None else self.gates.unit(i, h))
            run_i, _, pattern, inner, out_scale = self._hard(i, g, n, dev)
            key = torch.where(run_i, pattern, -1)
            h = self._execute(i, unit, a, h, key, inner, out_scale)
        return parts.head(h)

    def _hard(self, i: int, g: Any, n: int, dev: torch.device):
        """Hard decisions of unit ``i``: run, kept channels, group pattern, scales."""
        lay = self.layouts[i]
        if g is not None and g.layer is not None:
            run_i = g.layer > 0
        else:
            run_i = torch.ones(n, dtype=torch.bool, device=dev)
        if g is not None and g.groups is not None:
            keep = g.groups > 0
            tables = self._tables(dev)
            pattern = (keep.long() * tables["pow2"][: len(lay.groups)]).sum(1)
            k_i = (keep.long() * tables["sizes"][i]).sum(1)
            inner = 2 * torch.sigmoid(g.inner_scale) if g.inner_scale is not None else None
        else:
            full = (1 << len(lay.groups)) - 1 if lay.groups else 0
            pattern = torch.full((n,), full, dtype=torch.long, device=dev)
            k_i = torch.full(
                (n,), lay.inner_channels if lay.groups else 0, dtype=torch.long, device=dev
            )
            inner = None
        out_scale = (
            2 * torch.sigmoid(g.out_scale) if g is not None and g.out_scale is not None else None
        )
        return run_i, k_i, pattern, inner, out_scale

    def _execute(
        self,
        i: int,
        unit: nn.Module,
        a: BranchAdapter | None,
        h: torch.Tensor,
        key: torch.Tensor,
        inner: torch.Tensor | None,
        out_scale: torch.Tensor | None,
    ) -> torch.Tensor:
        keys = [int(key)] if key.numel() == 1 else torch.unique(key).tolist()
        if len(keys) == 1:
            return self._one(i, unit, a, h, keys[0], None, inner, out_scale)
        out = None
        for k in keys:
            idx = torch.nonzero(key == k).flatten()
            y = self._one(i, unit, a, h[idx], k, idx, inner, out_scale)
            if out is None:
                out = h.new_empty((h.shape[0], *y.shape[1:]))
            out[idx] = y
        return out

    def _one(self, i, unit, a, x, k, idx, inner, out_scale) -> torch.Tensor:
        if k == -1:
            return unit.shortcut_forward(x)
        if k == -2 or a is None:
            return unit.run(x, False)
        ch = self._channels(i, k, x.device)
        sub = (lambda t: t) if idx is None else (lambda t: t[idx])
        if inner is not None:
            inner = sub(inner)
            if ch is not None:
                inner = inner[:, ch]
        if out_scale is not None:
            out_scale = sub(out_scale)
        ident = a.identity(x)
        if ch is not None and ch.numel() == 0:
            branch = a.zero_branch(ident)
            if out_scale is not None:
                branch = branch * out_scale[:, :, None, None]
        else:
            branch = a.branch(x, ch, inner, out_scale)
        return a.finish(branch, ident)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.gate_config.items())


def _decide(logits: torch.Tensor, stochastic: bool, temperature: float) -> torch.Tensor:
    """0/1 decisions (logit > 0); straight-through Gumbel-sigmoid samples when stochastic."""
    if not stochastic:
        return (logits > 0).to(logits.dtype)
    u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
    noisy = (logits + torch.log(u) - torch.log1p(-u)) / temperature
    soft = torch.sigmoid(noisy)
    hard = (noisy > 0).to(soft.dtype)
    return hard + soft - soft.detach()


def _threshold_st(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The eval decisions (logit > 0) with the gradient of ``sigmoid(logit / temperature)``."""
    soft = torch.sigmoid(logits / temperature)
    return (logits > 0).to(soft.dtype) + soft - soft.detach()


def _mix(run: torch.Tensor, on: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    r = run[:, None, None, None]
    return r * on + (1 - r) * off


def _scatter(g: Any, idx: torch.Tensor, n: int) -> Any:
    """Gate outputs of the inputs ``idx`` spread to a batch of ``n`` (others: zeros)."""

    def spread(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        out = t.new_zeros((n, *t.shape[1:]))
        out[idx] = t
        return out

    return type(g)(
        layer=spread(g.layer),
        groups=spread(g.groups),
        inner_scale=spread(g.inner_scale),
        out_scale=spread(g.out_scale),
    )
