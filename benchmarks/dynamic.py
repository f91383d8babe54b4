"""Per-input gating against the static front of the same stochastic-depth backbone.

On one trained backbone, one data split and one FLOPs counter:

* **static front**: every skip mask (exhaustively, with activations shared along the mask
  prefix tree) evaluated on the validation split; the non-dominated (val accuracy, FLOPs)
  members, each then measured on the test split.  Or the members of a front file (``--front``);
* **layer-gated**, **channel-gated**, **LC** (both): gates trained on the frozen backbone for
  each compute target (:func:`paretoskip.dynamic.train_gates`, resumable checkpoints in
  ``--work``);
* **dual**: one gated model (``--dual-mode`` at ``--dual-target``) under hard FLOPs budgets,
  falling back to the most accurate static front member that fits.

For every point: test accuracy, FLOPs per input (mean ± std, percentiles, max; gates
included), distinct configurations, training time; the most accurate static member (by
validation accuracy) with FLOPs at most the point's mean (its *match*) and the accuracy
difference; latency at batch 1 and 64 measured interleaved against the full model and the
match, on test images (decisions depend on the input), as median ratios.  Writes a JSON
(``--out``) and a figure (``--plot``, PNG and PDF) and prints a plain summary.

Run for real (after the backbone exists)::

    python benchmarks/dynamic.py --checkpoint studies/checkpoints/fashion-mnist-resnet20

Quick end-to-end check on digits (trains a tiny backbone first; about a minute)::

    python benchmarks/dynamic.py --quick
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paretoskip.checkpoint import load_checkpoint, weights_fingerprint
from paretoskip.data import load_dataset
from paretoskip.dynamic import (
    DualModel,
    dynamic_family,
    load_gated,
    profile,
    train_gates_and_save,
)
from paretoskip.measure import count_costs, hardware_info, measurement_lock
from paretoskip.models import apply_mask, model_parts

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("benchmarks.dynamic")

LABELS = {
    "layer": "layer gates",
    "channel": "channel gates",
    "lc": "layer + channel gates",
}


# --------------------------------------------------------------------------- static front


def exhaustive_static(model: torch.nn.Module, split: Any, batch: int = 1000) -> np.ndarray:
    """Correct predictions of every skip mask on ``split`` (index = mask as a binary number,
    unit 0 the most significant bit, 1 = skipped), sharing activations along mask prefixes."""
    parts = model_parts(model)
    units = [u for _, u in parts.units]
    n_units = len(units)
    correct = np.zeros(2**n_units, dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(split), batch):
            x, y = split.x[start : start + batch], split.y[start : start + batch]

            def walk(i: int, h: torch.Tensor, code: int, y: torch.Tensor) -> None:
                if i == n_units:
                    correct[code] += int((parts.head(h).argmax(1) == y).sum())
                    return
                walk(i + 1, units[i].run(h, False), code << 1, y)
                walk(i + 1, units[i].shortcut_forward(h), (code << 1) | 1, y)

            walk(0, parts.stem(x), 0, y)
    return correct


def accuracy_of(model: torch.nn.Module, mask: str, split: Any) -> float:
    m = copy.deepcopy(model).eval()
    apply_mask(m, mask)
    with torch.inference_mode():
        pred = torch.cat([m(split.x[i : i + 1000]).argmax(1) for i in range(0, len(split), 1000)])
    return float((pred == split.y).double().mean())


def static_front(model: torch.nn.Module, data: Any, front_file: str | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    table = count_costs(model)
    n = len(table.units)
    if front_file:
        doc = json.loads(Path(front_file).read_text())
        members = [
            {
                "mask": m["mask"],
                "val_accuracy": float(m["metrics"]["accuracy"]["value"]),
                "flops": int(table.flops([int(c) for c in m["mask"]])),
            }
            for m in doc["members"]
        ]
        source = f"front file {front_file}"
        evaluated = len(members)
    else:
        if n > 14:
            raise SystemExit(
                f"{n} units are too many for an exhaustive static front; pass --front FILE"
            )
        correct = exhaustive_static(model, data.val)
        masks = [format(code, f"0{n}b") for code in range(2**n)]
        flops = [table.flops([int(c) for c in m]) for m in masks]
        acc = correct / len(data.val)
        order = sorted(range(len(masks)), key=lambda i: (flops[i], -acc[i]))
        members, best = [], -1.0
        for i in order:
            if acc[i] > best:
                members.append({"mask": masks[i], "val_accuracy": float(acc[i]), "flops": flops[i]})
                best = acc[i]
        source = "exhaustive"
        evaluated = len(masks)
    for m in members:
        m["test_accuracy"] = accuracy_of(model, m["mask"], data.test)
        m["flops_fraction"] = m["flops"] / table.full_flops
    return {
        "source": source,
        "masks_evaluated": evaluated,
        "full_flops": table.full_flops,
        "members": sorted(members, key=lambda m: m["flops"]),
        "seconds": time.perf_counter() - t0,
        "cost_basis": "per_configuration",
    }


def match(static: dict[str, Any], mean_flops: float) -> dict[str, Any] | None:
    """The most accurate static member (validation) whose FLOPs are at most ``mean_flops``."""
    fits = [m for m in static["members"] if m["flops"] <= mean_flops]
    return max(fits, key=lambda m: (m["val_accuracy"], -m["flops"])) if fits else None


# --------------------------------------------------------------------------- latency


def latency(
    candidate: Any,
    others: dict[str, torch.nn.Module],
    x: torch.Tensor,
    *,
    batch: int,
    rounds: int,
    warmup: int = 3,
) -> dict[str, Any]:
    """Seconds per call of ``candidate`` and of each model in ``others`` on batches of test
    images, interleaved (the order rotates every call), with median ratios candidate/other."""
    batches = [x[i : i + batch] for i in range(0, len(x) - batch + 1, batch)]
    models = {"candidate": candidate, **others}
    names = list(models)
    times: dict[str, list[float]] = {k: [] for k in names}
    with measurement_lock(), torch.inference_mode():
        for m in models.values():
            for b in batches[:warmup]:
                m(b)
        for r in range(rounds):
            for j, b in enumerate(batches):
                shift = (r + j) % len(names)
                for name in names[shift:] + names[:shift]:
                    t = time.perf_counter()
                    models[name](b)
                    times[name].append(time.perf_counter() - t)
    out: dict[str, Any] = {
        "batch_size": batch,
        "calls": len(times["candidate"]),
        "distinct_batches": len(batches),
        "threads": torch.get_num_threads(),
    }
    for name in names:
        out[f"{name}_median_s"] = statistics.median(times[name])
    for name in others:
        ratios = [c / o for c, o in zip(times["candidate"], times[name])]
        q = np.percentile(ratios, [25, 50, 75])
        out[f"ratio_to_{name}"] = float(q[1])
        out[f"ratio_to_{name}_iqr"] = float(q[2] - q[0])
    return out


def masked_copy(model: torch.nn.Module, mask: str) -> torch.nn.Module:
    m = copy.deepcopy(model).eval()
    apply_mask(m, mask)
    return m


# --------------------------------------------------------------------------- main


def settings_key(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:10]


def quick_backbone(work: Path, threads: int):
    from paretoskip.train import train_and_save

    data = load_dataset("digits", seed=0)
    path = work / "digits-resnet20"
    if not Path(str(path) + ".json").exists():
        train_and_save("resnet20", data, path, epochs=15, threads=threads, progress=False)
    model, meta = load_checkpoint(path)
    return model, meta, data, str(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint", default="studies/checkpoints/fashion-mnist-resnet20")
    ap.add_argument("--front", default=None, help="static front file (default: exhaustive)")
    ap.add_argument("--modes", default="layer,channel,lc")
    ap.add_argument("--targets", default="0.35,0.5,0.65,0.8")
    ap.add_argument("--gate", default="block", help="gate style: block or policy")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--cost-weight", type=float, default=8.0)
    ap.add_argument("--channel-groups", type=int, default=4)
    ap.add_argument("--dual-mode", default="lc")
    ap.add_argument(
        "--dual-gate",
        default="policy",
        help="gate style of the dual mode's model (policy: whole plan known up front, so an "
        "over-budget plan is replaced by a static member from the start)",
    )
    ap.add_argument("--dual-target", type=float, default=None, help="default: the highest target")
    ap.add_argument("--budgets", default="0.35,0.5,0.65", help="fractions of the full FLOPs")
    ap.add_argument("--latency-rounds", type=int, default=3)
    ap.add_argument("--latency-images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="default: 2 (--quick: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--work", default=None, help="gated checkpoints (default: next to the backbone)"
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--quick", action="store_true", help="digits, tiny settings (end-to-end check)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads is None:
        args.threads = 1 if args.quick else 2
    torch.set_num_threads(args.threads)
    started, load_start = time.time(), os.getloadavg()

    if args.quick:
        work = Path(args.work or "/tmp/paretoskip-dynamic-quick")
        work.mkdir(parents=True, exist_ok=True)
        backbone, meta, data, ckpt = quick_backbone(work, args.threads)
        if args.targets == ap.get_default("targets"):
            args.targets = "0.45,0.7"
        if args.epochs == ap.get_default("epochs"):
            args.epochs = 10
        args.lr = 0.2 if args.lr == ap.get_default("lr") else args.lr
        args.latency_images = min(args.latency_images, 64)
        args.budgets = "0.4,0.6" if args.budgets == ap.get_default("budgets") else args.budgets
        args.latency_rounds = 1
        name = "dynamic-quick"
    else:
        ckpt = args.checkpoint
        backbone, meta = load_checkpoint(ckpt)
        d = meta["dataset"]
        data = load_dataset(d["name"], d.get("root"), seed=d["seed"], **d.get("load_args", {}))
        if data.fingerprint != meta.get("dataset_fingerprint", data.fingerprint):
            raise SystemExit("the dataset does not match the backbone checkpoint's fingerprint")
        work = Path(args.work or (Path(ckpt).parent / f"{Path(ckpt).name}-dynamic"))
        name = "dynamic"
    out_path = Path(args.out or ROOT / "benchmarks" / "results" / f"{name}.json")
    plot_path = Path(args.plot or ROOT / "plots" / f"{name}.png")
    backbone.eval()
    fingerprint = weights_fingerprint(backbone)
    provenance = {
        "backbone_checkpoint": str(ckpt),
        "weights_fingerprint": fingerprint,
        "dataset_fingerprint": data.fingerprint,
    }

    log.info("static front of %s on %s", ckpt, data.name)
    static = static_front(backbone, data, args.front)
    full = static["full_flops"]
    full_model = masked_copy(backbone, "0" * len(static["members"][0]["mask"]))
    x_lat = data.test.x[: args.latency_images]

    families, matched = [], []
    trained: dict[tuple[str, str, float], Any] = {}
    targets = [float(t) for t in args.targets.split(",")]
    dual_target = args.dual_target if args.dual_target is not None else max(targets)
    runs = [(args.gate, mode, targets) for mode in args.modes.split(",")]
    if args.dual_gate != args.gate or args.dual_mode not in args.modes.split(","):
        runs.append((args.dual_gate, args.dual_mode, [dual_target]))
    for gate, mode, mode_targets in runs:
        points = []
        for target in mode_targets:
            train_kw = dict(
                mode=mode,
                target=target,
                gate=gate,
                epochs=args.epochs,
                lr=args.lr,
                batch_size=args.batch_size,
                cost_weight=args.cost_weight,
                channel_groups=args.channel_groups,
                seed=args.seed,
                threads=args.threads,
            )
            key = settings_key({"backbone": fingerprint, "data": data.fingerprint, **train_kw})
            path = work / f"{gate}-{mode}-t{target:g}-{key}"
            if Path(str(path) + ".json").exists():
                gated, gmeta = load_gated(path)
                seconds, val, test = gmeta["train_seconds"], None, None
            else:
                res = train_gates_and_save(backbone, data, path, progress=True, **train_kw)
                gated, seconds, val, test = res.model, res.seconds, res.val, res.test
            gated.eval()
            val = val or profile(gated, data.val, split_name="val")
            test = test or profile(gated, data.test, split_name="test")
            trained[(gate, mode, target)] = gated
            mean = test.flops_mean
            m = match(static, mean)
            others = {"full": full_model}
            if m is not None:
                others["static_match"] = masked_copy(backbone, m["mask"])
            lat = {
                str(b): latency(gated, others, x_lat, batch=b, rounds=args.latency_rounds)
                for b in (1, 64)
                if len(x_lat) >= b
            }
            family = f"{mode}-gated" if gate == args.gate else f"{mode}-{gate}-gated"
            row = {
                "family": family,
                "target": target,
                "test_accuracy": test.accuracy,
                "mean_flops_fraction": mean / full,
                "std_flops_fraction": test.flops_std / full,
                "max_flops_fraction": float(test.flops.max()) / full,
                "distinct_configurations": test.distinct_configurations,
                "train_seconds": seconds,
                "static_match": m,
                "accuracy_minus_static": test.accuracy - m["test_accuracy"] if m else None,
                "latency": lat,
            }
            matched.append(row)
            points.append(
                {
                    "target": target,
                    "val": val,
                    "test": test,
                    "checkpoint": str(path),
                    "train_seconds": seconds,
                    "latency": lat,
                }
            )
            log.info("%s", {k: v for k, v in row.items() if k != "latency"})
        families.append(
            dynamic_family(
                points,
                name=family,
                label=LABELS[mode] + ("" if gate == args.gate else f", {gate} network"),
                method={
                    **trained[(gate, mode, mode_targets[0])].gate_config,
                    "frozen_backbone": True,
                    "epochs": args.epochs,
                    "lr": args.lr,
                    "cost_weight": args.cost_weight,
                },
                provenance=provenance,
            )
        )

    # dual mode: one gated model under hard budgets, static front members as the fallback
    dual_points = []
    if (args.dual_gate, args.dual_mode, dual_target) in trained:
        gated = trained[(args.dual_gate, args.dual_mode, dual_target)]
        fallback = [(m["mask"], m["val_accuracy"], m["flops"]) for m in static["members"]]
        for frac in (float(b) for b in args.budgets.split(",")):
            budget = int(frac * full)
            if budget < gated.costs.minimum:
                continue
            dual = DualModel(gated, budget, static=fallback)
            val = profile(dual, data.val, split_name="val")
            test = profile(dual, data.test, split_name="test")
            assert int(test.flops.max()) <= budget and int(val.flops.max()) <= budget
            m = match(static, budget)
            others = {"full": full_model}
            if m is not None:
                others["static_match"] = masked_copy(backbone, m["mask"])
            lat = {
                str(b): latency(dual, others, x_lat, batch=b, rounds=args.latency_rounds)
                for b in (1, 64)
                if len(x_lat) >= b
            }
            dual_points.append(
                {
                    "budget": budget,
                    "budget_fraction": frac,
                    "val": val,
                    "test": test,
                    "latency": lat,
                }
            )
            matched.append(
                {
                    "family": "dual",
                    "budget_fraction": frac,
                    "test_accuracy": test.accuracy,
                    "mean_flops_fraction": test.flops_mean / full,
                    "std_flops_fraction": test.flops_std / full,
                    "max_flops_fraction": float(test.flops.max()) / full,
                    "capped_share": test.to_dict()["capped_share"],
                    "distinct_configurations": test.distinct_configurations,
                    "static_match": m,
                    "static_match_basis": "most accurate static member within the budget",
                    "accuracy_minus_static": test.accuracy - m["test_accuracy"] if m else None,
                    "latency": lat,
                }
            )
        if dual_points:
            families.append(
                dynamic_family(
                    dual_points,
                    name="dual",
                    label=f"dual: {LABELS[args.dual_mode]}, {args.dual_gate} network, hard budget",
                    kind="dual",
                    method={
                        "gated": f"{args.dual_mode}, {args.dual_gate} gates, target {dual_target}",
                        "fallback": "static",
                    },
                    sweep="budget",
                    provenance=provenance,
                )
            )

    summary = summarise(matched, len(data.test))
    for line in summary:
        print(line)
    doc = {
        "benchmark": "dynamic",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": time.time() - started,
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "hardware": hardware_info(),
        "threads": args.threads,
        "backbone": {
            "checkpoint": ckpt,
            "architecture": meta["architecture"],
            "weights_fingerprint": fingerprint,
            "val_accuracy": meta.get("val_accuracy"),
            "test_accuracy": meta.get("test_accuracy"),
            "full_flops": full,
        },
        "dataset": data.describe(),
        "static": static,
        "families": families,
        "matched": matched,
        "summary": summary,
        "notes": [
            "FLOPs: torch FlopCounterMode, 2 x MACs, per input; dynamic costs include the gate "
            "networks and are means over the test inputs (std and max alongside); static costs "
            "are per configuration.",
            "static_match: the static front member with the best validation accuracy whose "
            "FLOPs are at most the point's mean FLOPs (dual: at most the budget).",
            "latency: seconds per call on test images, candidate/full and candidate/static "
            "medians of per-call ratios, calls interleaved; batch-norm in eval mode.",
        ],
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n")
    plot(doc, plot_path)
    print(f"wrote {out_path} and {plot_path} (load average {os.getloadavg()})")
    return doc


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def summarise(rows: list[dict[str, Any]], n_test: int) -> list[str]:
    """Plain sentences: which wins where (differences beyond two standard errors)."""
    lines = []
    for r in rows:
        m = r["static_match"]
        where = (
            f"budget {r['budget_fraction']:.2f}"
            if r["family"] == "dual"
            else f"target {r['target']:.2f}"
        )
        if m is None:
            lines.append(f"{r['family']} ({where}): no static member is as cheap; no comparison")
            continue
        p1, p2 = r["test_accuracy"], m["test_accuracy"]
        se = ((p1 * (1 - p1) + p2 * (1 - p2)) / n_test) ** 0.5
        diff = p1 - p2
        verdict = "dynamic wins" if diff > 2 * se else "static wins" if diff < -2 * se else "tie"
        lat1 = r["latency"].get("1", {}).get("ratio_to_static_match")
        lat64 = r["latency"].get("64", {}).get("ratio_to_static_match")
        lat = (
            f"; latency vs that static member: x{lat1:.2f} at batch 1, x{lat64:.2f} at batch 64"
            if lat1 is not None and lat64 is not None
            else ""
        )
        lines.append(
            f"{r['family']} ({where}): {100 * p1:.2f}% at {r['mean_flops_fraction']:.3f} ± "
            f"{r['std_flops_fraction']:.3f} mean FLOPs vs static {100 * p2:.2f}% at "
            f"{m['flops_fraction']:.3f}: {verdict} ({100 * diff:+.2f} points, 2 SE = "
            f"{200 * se:.2f}){lat}"
        )
    return lines


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = doc["backbone"]["full_flops"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    st = doc["static"]["members"]
    xs = [m["flops"] / full for m in st]
    ys = [100 * m["test_accuracy"] for m in st]
    ax.step(
        xs,
        ys,
        where="post",
        color="0.35",
        lw=1.5,
        label="static front (selected on val; FLOPs per configuration)",
    )
    ax.plot(xs, ys, "o", color="0.35", ms=3)
    markers = {"layer-gated": "s", "channel-gated": "^", "lc-gated": "D", "dual": "*"}
    markers.update({"lc-policy-gated": "P", "layer-policy-gated": "X"})
    for fam in doc["families"]:
        pts = fam["members"]
        fx = [p["test_flops"]["mean"] / full for p in pts]
        fy = [100 * p["test_accuracy"] for p in pts]
        ferr = [p["test_flops"]["std"] / full for p in pts]
        ax.errorbar(
            fx,
            fy,
            xerr=ferr,
            fmt=markers.get(fam["name"], "o") + "-",
            ms=7 if fam["kind"] == "dual" else 5,
            capsize=3,
            label=f"{fam['label']} (mean ± std per input)",
        )
        if fam["kind"] == "dual":
            for p in pts:
                ax.axvline(p["budget"] / full, color="C3", lw=0.5, ls=":")
    ax.set_xlabel("FLOPs / full model (static: per configuration; gated: mean per input)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"{doc['dataset']['name']} {doc['backbone']['architecture']['name']}: static vs per-input"
    )
    dyn = [100 * p["test_accuracy"] for f in doc["families"] for p in f["members"]]
    top = max(ys + dyn)
    lo = min(dyn) if dyn else min(ys)
    ax.set_ylim(max(min(lo - 5, top - 10), 0), top + 1.5)
    ax.set_xlim(0, 1.05 * max(xs + [1.0]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)


if __name__ == "__main__":
    main()
