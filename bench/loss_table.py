#!/usr/bin/env python3
"""Mean training loss per epoch of recblocks and RecTools over the seeds of harness runs.

Reads the `<dataset>_<model>_<system>_s<seed>.json` files that `bench/compare.sh` writes (their
`train_loss` list: the per-epoch mean of the batch losses weighted by batch size) from one or more
output folders, and prints a Markdown table: per epoch, each system's mean ± standard error over
the seeds found for it, and the difference. Equal curves within the seed spread say the two
systems train alike, whatever a small evaluation set says about the final metrics.

Usage: bench/loss_table.py --dataset ml100k --model sasrec DIR [DIR ...]
"""
import argparse
import glob
import json
import math
import os
import re
import statistics


def curves(dirs: list[str], dataset: str, model: str, system: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    pattern = re.compile(rf"{re.escape(dataset)}_{re.escape(model)}_{system}_s(\d+)\.json$")
    for d in dirs:
        for path in glob.glob(os.path.join(d, f"{dataset}_{model}_{system}_s*.json")):
            m = pattern.search(os.path.basename(path))
            if not m:
                continue
            try:
                with open(path) as f:
                    loss = json.load(f).get("train_loss")
            except (OSError, json.JSONDecodeError):
                continue
            if loss:
                out[int(m.group(1))] = loss
    return out


def mean_se(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], float("nan")
    return statistics.mean(xs), statistics.stdev(xs) / math.sqrt(len(xs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    a = p.parse_args()
    rb = curves(a.dirs, a.dataset, a.model, "recblocks")
    rt = curves(a.dirs, a.dataset, a.model, "rectools")
    if not rb or not rt:
        raise SystemExit("no train_loss found for both systems in " + ", ".join(a.dirs))
    epochs = min(min(len(v) for v in rb.values()), min(len(v) for v in rt.values()))
    print(f"seeds: recblocks {sorted(rb)}, RecTools {sorted(rt)}\n")
    print("| epoch | recblocks train loss | RecTools train loss | difference |")
    print("|---|---|---|---|")
    for e in range(epochs):
        m1, s1 = mean_se([v[e] for v in rb.values()])
        m2, s2 = mean_se([v[e] for v in rt.values()])
        se = math.sqrt(s1 * s1 + s2 * s2)
        print(f"| {e + 1} | {m1:.4f} ± {s1:.4f} | {m2:.4f} ± {s2:.4f} | {m1 - m2:+.4f} ± {se:.4f} |")


if __name__ == "__main__":
    main()
