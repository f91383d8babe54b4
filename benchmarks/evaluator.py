"""Evaluator speed: the prefix tree against the naive loop, its floor, and block throughput.

64 masks on resnet56 over a validation split (Fashion-MNIST when the Debian package is
installed, else digits), one run:

* **floor** (counted, not timed): block runs and FLOPs of the naive loop (every mask runs
  every unit over the split) and of the prefix tree (a unit runs once per distinct prefix
  of unit states); their ratio is the speedup the tree could reach if time followed FLOPs;
* **measured** (interleaved within each repeat, so that both see the same load; median and
  inter-quartile range over the repeats, wall and CPU seconds): the naive loop
  (``naive_accuracy``), the tree (``accuracy_many``), and the tree with the pass-through of
  skipped identity blocks turned off (each such block then runs its ReLU, as before);
  ``evaluate_many`` into a fresh SQL cache and then warm; every accuracy must be identical;
* **per-stage throughput** of one identity block per stage (images/s and GFLOP/s, the
  block's FLOPs from the FLOPs counter) against a plain ``conv2d`` of the block's shape on
  this machine (one 3x3 convolution; the block is two of them plus batch norms, ReLUs and
  the addition), contiguous and channels_last, at several chunk sizes; and what a skipped
  identity block costs (its ReLU) against passing its input on;
* **chunk size** (interleaved, CPU seconds): the prefix tree on the first ``--chunk-masks``
  clustered masks over ``--chunk-val`` validation images at each of ``--chunk-sizes``
  (``auto``, the default, against fixed sizes: 256 was the default before ``auto``, 500 what
  the shipped Fashion-MNIST studies used), with every mask's per-image results compared.

Two populations: *clustered* (8 parent masks, each with 8 children differing in 1-3 bits,
like a late NSGA-II generation) and *uniform* random masks.  Writes
benchmarks/results/evaluator.json with the load average before and after.

    python benchmarks/evaluator.py [--val 2000] [--threads 1] [--repeats 3] [--chunk-val 2000]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

import paretoskip
from paretoskip.data import load_dataset
from paretoskip.errors import DataNotFoundError
from paretoskip.measure import torch_threads


def populations(n_units: int, seed: int = 0) -> dict[str, list[list[int]]]:
    rng = random.Random(seed)
    clustered = []
    for _ in range(8):
        parent = [rng.randint(0, 1) for _ in range(n_units)]
        for _ in range(8):
            child = list(parent)
            for i in rng.sample(range(n_units), rng.randint(1, 3)):
                child[i] ^= 1
            clustered.append(child)
    uniform = [[rng.randint(0, 1) for _ in range(n_units)] for _ in range(64)]
    return {"clustered": clustered, "uniform": uniform}


def floor(ev: paretoskip.Evaluator, masks: list[list[int]]) -> dict:
    """Block runs and FLOPs per image of the naive loop and of the prefix tree (the tree's
    grouping, as ``Evaluator.accuracy_many`` walks it; stem and head once per mask for
    both: an upper bound for the tree, whose stem runs once)."""
    costs = ev.costs
    n = len(costs.run_flops)
    bits = sorted({tuple(m) for m in masks})
    states = [ev._parts.unit_states(list(b)) for b in bits]
    counts = {"runs": 0, "skips": 0, "passes": 0, "flops": 0}

    def walk(k: int, idx: list[int]) -> None:
        while k < n:
            groups: dict = {}
            for i in idx:
                groups.setdefault(states[i][k], []).append(i)
            *others, last = sorted(groups, key=repr)
            for state in [*others, last]:
                skip = bool(state) if isinstance(state, bool | int) else bool(state[0])
                if skip and state == last and ev._skip_passes[k]:
                    counts["passes"] += 1
                    continue
                counts["skips" if skip else "runs"] += 1
                counts["flops"] += costs.skip_flops[k] if skip else costs.run_flops[k]
            for state in others:
                walk(k + 1, groups[state])
            idx = groups[last]
            k += 1
        counts["flops"] += costs.base_flops

    walk(0, list(range(len(bits))))
    naive_runs = sum(n - sum(m) for m in masks)
    naive_flops = sum(costs.flops(m) for m in masks)
    return {
        "naive_block_runs": naive_runs,
        "tree_block_runs": counts["runs"],
        "tree_skipped_blocks_run": counts["skips"],
        "tree_skipped_blocks_passed": counts["passes"],
        "naive_flops_per_image": naive_flops,
        "tree_flops_per_image": counts["flops"],
        "floor_ratio_block_runs": naive_runs / max(1, counts["runs"]),
        "floor_ratio_flops": naive_flops / counts["flops"],
    }


def med_iqr(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "values": xs}


def timed(fn, *args):
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t, time.process_time() - c


def naive_all(ev, masks):
    return [ev.naive_accuracy(m) for m in masks]


def block_throughput(model, ev, data, chunks: list[int], repeats: int) -> dict:
    """Per stage: one identity block (the stage's second) against a 3x3 conv2d."""
    parts = paretoskip.models.model_parts(model)
    names = [n for n, _ in parts.units]
    units = [u for _, u in parts.units]
    x = data.val.x
    x = x.repeat(-(-max(chunks) // len(x)), *[1] * (x.dim() - 1))[: max(chunks)]
    out: dict = {}
    with torch.inference_mode():
        h = parts.stem(x)
        acts = []
        for u in units:
            acts.append(h)
            h = u.run(h, False)
    for stage in ("layer1", "layer2", "layer3"):
        k = names.index(f"{stage}.1")
        block, h_in = units[k], acts[k]
        c, hh, ww = h_in.shape[1:]
        block_flops = ev.costs.run_flops[k]
        conv_flops = 2 * c * c * 9 * hh * ww
        row: dict = {
            "block": names[k],
            "shape": [c, hh, ww],
            "block_flops_per_image": block_flops,
            "conv3x3_flops_per_image": conv_flops,
            "chunks": {},
        }
        cl_block = copy.deepcopy(block).to(memory_format=torch.channels_last)
        for chunk in chunks:
            xin = h_in[:chunk].contiguous()
            xcl = xin.to(memory_format=torch.channels_last)
            w = block.conv1.weight
            wcl = w.to(memory_format=torch.channels_last)
            variants = {
                "block": partial(block.run, xin, False),
                "block_channels_last": partial(cl_block.run, xcl, False),
                "conv2d": partial(F.conv2d, xin, w, padding=1),
                "conv2d_channels_last": partial(F.conv2d, xcl, wcl, padding=1),
                "skipped_block_relu": partial(block.run, xin, True),
            }
            times: dict[str, list[float]] = {v: [] for v in variants}
            with torch.inference_mode():
                same_cl = bool(torch.equal(cl_block.run(xcl, False), block.run(xin, False)))
                for fn in variants.values():
                    fn()  # warm-up
                for _ in range(repeats):  # interleaved
                    for v, fn in variants.items():
                        _, _, cpu = timed(fn)
                        times[v].append(cpu)
            entry = {"bit_identical_channels_last": same_cl}
            for v, ts in times.items():
                t = statistics.median(ts)
                flops = conv_flops if v.startswith("conv") else block_flops
                entry[v] = {
                    "cpu_seconds_median": t,
                    "us_per_image": t / chunk * 1e6,
                    "images_per_second": chunk / t,
                    "gflops_per_second": None
                    if v.startswith("skipped")
                    else chunk * flops / t / 1e9,
                }
            entry["block_vs_conv2d_gflops"] = (
                entry["block"]["gflops_per_second"] / entry["conv2d"]["gflops_per_second"]
            )
            row["chunks"][str(chunk)] = entry
        out[stage] = row
    return out


def chunk_sizes(model, data, masks, sizes, threads: int, repeats: int) -> dict:
    """The prefix tree at each chunk size, interleaved; per-image results must agree."""
    evs = {
        str(c): paretoskip.Evaluator(
            model, data, settings=paretoskip.MeasureSettings(threads=threads, eval_batch=c)
        )
        for c in sizes
    }
    times: dict[str, list[float]] = {c: [] for c in evs}
    rows: dict = {}
    for ev in evs.values():
        ev.accuracy_many(masks[:1])  # warm-up (and the stem's cache)
    for _ in range(repeats):
        for c, ev in evs.items():
            rows[c], _, cpu = timed(ev.correct_many, masks)
            times[c].append(cpu)
    first = next(iter(rows.values()))
    base = times.get("256")
    out: dict = {
        "masks": len(masks),
        "validation_images": len(data.val),
        "identical_per_image_results": all(bool((r == first).all()) for r in rows.values()),
        "sizes": {},
    }
    for c, ev in evs.items():
        out["sizes"][c] = {
            "chunk_images": ev._chunk,
            "tree_cpu_seconds": med_iqr(times[c]),
            "speedup_vs_256": med_iqr([b / t for b, t in zip(base, times[c])]) if base else None,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--val", type=int, default=2000, help="validation images (default 2000)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    ap.add_argument("--block-repeats", type=int, default=7, help="timed block repeats")
    ap.add_argument("--chunks", default="256,1024", help="chunk sizes of the block timings")
    ap.add_argument(
        "--chunk-sizes", default="auto,64,128,256,500", help="chunk sizes of the tree timings"
    )
    ap.add_argument("--chunk-val", type=int, default=2000, help="images of the chunk timings")
    ap.add_argument("--chunk-masks", type=int, default=16, help="masks of the chunk timings")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "evaluator.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()

    try:
        data = load_dataset("fashion-mnist", seed=0, val_size=args.val, limit=args.val * 3)
    except DataNotFoundError:
        data = load_dataset("digits", seed=0, val_size=0.6, test_size=0.2)
    torch.manual_seed(0)
    model = paretoskip.create_model(
        "resnet56",
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        input_size=data.input_size,
    ).eval()
    n_units = len(paretoskip.models.skippable_units(model))
    print(
        f"resnet56 ({n_units} units) on {data.name}: {len(data.val)} validation images, "
        f"{args.threads} threads, load {load_start}"
    )
    settings = paretoskip.MeasureSettings(threads=args.threads)
    results: dict = {
        "command": "python benchmarks/evaluator.py "
        + f"--val {args.val} --threads {args.threads} --repeats {args.repeats} "
        + f"--block-repeats {args.block_repeats} --chunks {args.chunks} "
        + f"--chunk-sizes {args.chunk_sizes} --chunk-val {args.chunk_val} "
        + f"--chunk-masks {args.chunk_masks}",
        "model": "resnet56",
        "dataset": data.name,
        "validation_images": len(data.val),
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "weights": "random init, seed 0 (speed does not depend on the weights)",
        "populations": {},
    }
    probe = paretoskip.Evaluator(model, data, settings=settings)
    results["chunk_images"] = probe._chunk
    with tempfile.TemporaryDirectory() as tmp:
        for name, masks in populations(n_units).items():
            t: dict[str, list[float]] = {
                k: []
                for k in (
                    "naive_wall",
                    "naive_cpu",
                    "tree_wall",
                    "tree_cpu",
                    "tree_relu_wall",
                    "tree_relu_cpu",
                    "evaluate_many_wall",
                    "warm_wall",
                )
            }
            identical = True
            for r in range(args.repeats):
                ev = paretoskip.Evaluator(
                    model, data, settings=settings, cache=f"sqlite:///{tmp}/{name}-{r}.db"
                )
                with torch_threads(args.threads):
                    naive, w, c = timed(naive_all, ev, masks)
                t["naive_wall"].append(w)
                t["naive_cpu"].append(c)
                tree, w, c = timed(ev.accuracy_many, masks)
                t["tree_wall"].append(w)
                t["tree_cpu"].append(c)
                passes, ev._skip_passes = ev._skip_passes, [False] * n_units
                relu, w, c = timed(ev.accuracy_many, masks)
                ev._skip_passes = passes
                t["tree_relu_wall"].append(w)
                t["tree_relu_cpu"].append(c)
                evs, w, _ = timed(ev.evaluate_many, masks)
                t["evaluate_many_wall"].append(w)
                identical &= tree == naive == relu == [e["accuracy"] for e in evs]
                warm, w, _ = timed(ev.evaluate_many, masks)
                t["warm_wall"].append(w)
                assert all(x.cache_hit for x in warm)
            ratio = {
                kind: [n / x for n, x in zip(t[f"naive_{kind}"], t[f"tree_{kind}"])]
                for kind in ("wall", "cpu")
            }
            relu_ratio = [a / b for a, b in zip(t["tree_relu_cpu"], t["tree_cpu"])]
            row = {
                "masks": len(masks),
                "distinct_masks": len({tuple(m) for m in masks}),
                **floor(probe, masks),
                "measured_ratio_cpu": med_iqr(ratio["cpu"]),
                "measured_ratio_wall": med_iqr(ratio["wall"]),
                "naive_cpu_seconds": med_iqr(t["naive_cpu"]),
                "tree_cpu_seconds": med_iqr(t["tree_cpu"]),
                "tree_with_skipped_relu_cpu_seconds": med_iqr(t["tree_relu_cpu"]),
                "skipped_relu_pass_through_speedup_cpu": med_iqr(relu_ratio),
                "evaluate_many_wall_seconds": med_iqr(t["evaluate_many_wall"]),
                "identical_accuracies": identical,
                "warm_cache_masks_per_second": statistics.median(
                    len(masks) / x for x in t["warm_wall"]
                ),
            }
            row["distance_to_floor"] = (
                row["floor_ratio_flops"] / row["measured_ratio_cpu"]["median"]
            )
            results["populations"][name] = row
            print(
                f"{name:9s} floor x{row['floor_ratio_flops']:.2f} (FLOPs), "
                f"x{row['floor_ratio_block_runs']:.2f} (block runs); measured x"
                f"{row['measured_ratio_cpu']['median']:.2f} CPU "
                f"(IQR {row['measured_ratio_cpu']['q1']:.2f}-{row['measured_ratio_cpu']['q3']:.2f}), "
                f"x{row['measured_ratio_wall']['median']:.2f} wall; ReLU pass-through x"
                f"{row['skipped_relu_pass_through_speedup_cpu']['median']:.3f}; "
                f"identical={identical}",
                flush=True,
            )
    chunks = [int(c) for c in args.chunks.split(",")]
    with torch_threads(args.threads):
        results["per_stage_block_throughput"] = block_throughput(
            model, probe, data, chunks, args.block_repeats
        )
    for stage, row in results["per_stage_block_throughput"].items():
        for chunk, e in row["chunks"].items():
            print(
                f"{stage} {row['shape']} chunk {chunk}: block {e['block']['gflops_per_second']:.2f} "
                f"GFLOP/s ({e['block']['images_per_second']:.0f} img/s), channels_last "
                f"{e['block_channels_last']['gflops_per_second']:.2f}; conv2d "
                f"{e['conv2d']['gflops_per_second']:.2f} (channels_last "
                f"{e['conv2d_channels_last']['gflops_per_second']:.2f}); skipped block "
                f"{e['skipped_block_relu']['us_per_image']:.1f} us/image"
            )
    sizes = [c if c == "auto" else int(c) for c in args.chunk_sizes.split(",")]
    try:
        big = load_dataset(
            "fashion-mnist", seed=0, val_size=args.chunk_val, limit=args.chunk_val * 3
        )
    except DataNotFoundError:
        big = data
    masks = populations(n_units)["clustered"][: args.chunk_masks]
    results["chunk_sizes"] = chunk_sizes(model, big, masks, sizes, args.threads, args.repeats)
    for c, e in results["chunk_sizes"]["sizes"].items():
        sp = e["speedup_vs_256"]
        print(
            f"chunk {c} ({e['chunk_images']} images): tree {e['tree_cpu_seconds']['median']:.2f} s "
            f"CPU" + (f", x{sp['median']:.2f} against 256" if sp else "")
        )
    print(f"identical per-image results: {results['chunk_sizes']['identical_per_image_results']}")
    results["load_average_start"] = load_start
    results["load_average_end"] = os.getloadavg()
    results["note"] = (
        "timings under load: the ratios are interleaved within each repeat and use CPU "
        "seconds; block timings are CPU seconds, medians of interleaved repeats"
    )
    results["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
