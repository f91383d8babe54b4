"""Latency spread on this machine: IQR/median of timed runs at several batch sizes.

For resnet20 and resnet56 (32×32 input), a mask skipping every other unit is timed against
the full model, interleaved, at each batch size.  Reports median seconds, IQR/median of the
candidate and of the full model, and the candidate/full ratio with its IQR.  Writes
benchmarks/results/latency_spread.json.

    python benchmarks/latency_spread.py [--batches 1,64] [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

import paretoskip
from paretoskip.measure import hardware_info, measure_latency


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency_spread.json"))
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        model = paretoskip.create_model(name).eval()
        n = len(paretoskip.models.skippable_units(model))
        mask = [i % 2 for i in range(n)]
        for batch in (int(b) for b in args.batches.split(",")):
            s = measure_latency(
                model, mask, batch_size=batch, repeats=args.repeats, warmup=5, threads=args.threads
            )
            row = {
                "model": name,
                **asdict(s),
                "iqr_over_median": s.iqr / s.median,
                "full_iqr_over_median": s.full_iqr / s.full_median,
            }
            rows.append(row)
            print(
                f"{name:9s} batch {batch:3d}: candidate {s.median * 1e3:8.2f} ms (IQR/median {row['iqr_over_median']:.1%}), "
                f"full {s.full_median * 1e3:8.2f} ms (IQR/median {row['full_iqr_over_median']:.1%}), "
                f"ratio {s.ratio:.3f} ± IQR {s.ratio_iqr:.3f}"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"hardware": hardware_info(), "threads": args.threads, "rows": rows}, indent=2)
        + "\n"
    )


if __name__ == "__main__":
    main()
