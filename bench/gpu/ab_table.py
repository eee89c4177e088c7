#!/usr/bin/env python3
"""Two recblocks runs of the same dataset and model side by side, as a markdown table: a baseline
(A) and a variant (B), each a bench/compare.sh output folder, with s/epoch (the median of the
epochs after the first, as bench/compare_table.py takes it), the last epoch's training loss and
Recall@10 / NDCG@10, and the ratio B / A of s/epoch. bench/gpu/run.sh uses it for the lookups
stage (candle's index_select/index_add against nn::gather_rows on the GPU) and the nodes stage
(candle's gradient routing against block nodes and parameter gradients written to a scope).

Usage: ab_table.py --dataset ml100k --models sasrec,bert4rec --a LABEL=DIR --b LABEL=DIR [--seed 42]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from compare_table import load  # noqa: E402


def cell(x, digits):
    return "-" if x is None else f"{x:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--a", required=True, metavar="LABEL=DIR", help="the baseline (split at the last =)")
    ap.add_argument("--b", required=True, metavar="LABEL=DIR", help="the variant")
    ap.add_argument("--seed", default="42")
    args = ap.parse_args()
    sides = []
    for side in (args.a, args.b):
        if "=" not in side:
            ap.error(f"expected LABEL=DIR, found {side!r}")
        sides.append(side.rsplit("=", 1))
    print("| model | run | epochs | s/epoch | final train loss | Recall@10 | NDCG@10 |")
    print("|---|---|---|---|---|---|---|")
    found = 0
    for model in args.models.split(","):
        runs = [(label, load(d, args.dataset, model, "recblocks", args.seed)) for label, d in sides]
        for label, r in runs:
            if r is None:
                print(f"| {model} | {label} | - | - | - | - | - |")
                continue
            found += 1
            losses = r.get("train_loss") or [None]
            metrics = r.get("metrics", {})
            print(
                f"| {model} | {label} | {len(r.get('epoch_seconds', []))} | "
                f"{cell(r.get('_s_epoch'), 3)} | {cell(losses[-1], 5)} | "
                f"{cell(metrics.get('recall@10'), 4)} | {cell(metrics.get('ndcg@10'), 4)} |"
            )
        (la, a), (lb, b) = runs
        if a and b and a.get("_s_epoch") and b.get("_s_epoch"):
            print(f"| {model} | {lb} / {la} | | **{b['_s_epoch'] / a['_s_epoch']:.2f}×** | | | |")
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
