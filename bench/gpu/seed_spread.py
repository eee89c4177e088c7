#!/usr/bin/env python3
"""recblocks' metrics on a GPU against the CPU over several seeds, as a markdown table: each seed's
Recall@10 and NDCG@10 on both devices, then per device the mean, the sample standard deviation
and the range, the difference of the means and Welch's t for it.

A seed draws the same initial weights and the same dropout masks on both devices (Philox), so a
seed's two runs differ only by rounding that grows over training. The verdict "within the seed
spread" means |t| < 2.31 (two-sided 5% for about 8 degrees of freedom, i.e. 5 seeds a side).

Usage: seed_spread.py --dataset ml100k --model sasrec --run cuda=DIR --run cpu=DIR
DIR: a compare.sh output folder with <dataset>_<model>_recblocks_s<seed>.json for each seed.
"""

import argparse
import glob
import json
import math
import os
import re
import sys

METRICS = ("recall@10", "ndcg@10")
T_CRITICAL = 2.31


def runs(folder: str, dataset: str, model: str) -> dict:
    """seed -> metrics of the recblocks runs in `folder`."""
    out = {}
    pattern = os.path.join(folder, f"{dataset}_{model}_recblocks_s*.json")
    for path in glob.glob(pattern):
        m = re.search(r"_s(\d+)\.json$", path)
        try:
            with open(path) as f:
                metrics = json.load(f)["metrics"]
        except (OSError, ValueError, KeyError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        if m:
            out[int(m.group(1))] = metrics
    return out


def stats(values: list) -> tuple:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return n, mean, sd, min(values), max(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--run", action="append", required=True, metavar="DEVICE=DIR",
                    help="a device's compare.sh folder; give exactly two")
    a = ap.parse_args()
    if len(a.run) != 2 or any("=" not in r for r in a.run):
        ap.error("give --run DEVICE=DIR twice")
    devices = [r.split("=", 1) for r in a.run]
    found = {name: runs(folder, a.dataset, a.model) for name, folder in devices}
    names = [name for name, _ in devices]
    seeds = sorted(set(found[names[0]]) | set(found[names[1]]))
    if not seeds:
        print(f"no runs of {a.dataset} {a.model} in {', '.join(f for _, f in devices)}")
        return 1
    head = " | ".join(f"{m} {n}" for m in METRICS for n in names)
    print(f"| seed | {head} |")
    print("|---" * (1 + 2 * len(METRICS)) + "|")
    for s in seeds:
        cells = []
        for m in METRICS:
            for n in names:
                v = found[n].get(s, {}).get(m)
                cells.append(f"{v:.4f}" if isinstance(v, (int, float)) else "-")
        print(f"| {s} | " + " | ".join(cells) + " |")
    print()
    print("| metric | device | seeds | mean | sd | min | max |")
    print("|---|---|---|---|---|---|---|")
    verdicts = []
    for m in METRICS:
        st = {}
        for n in names:
            vals = [found[n][s][m] for s in seeds if s in found[n] and m in found[n][s]]
            if not vals:
                continue
            st[n] = stats(vals)
            k, mean, sd, lo, hi = st[n]
            print(f"| {m} | {n} | {k} | {mean:.4f} | {sd:.4f} | {lo:.4f} | {hi:.4f} |")
        if len(st) == 2:
            (n1, m1, s1, _, _), (n2, m2, s2, _, _) = st[names[0]], st[names[1]]
            se = math.sqrt(s1 ** 2 / n1 + s2 ** 2 / n2) if n1 > 1 and n2 > 1 else float("nan")
            t = (m1 - m2) / se if se > 0 else float("nan")
            within = abs(t) < T_CRITICAL if not math.isnan(t) else (m1 == m2)
            verdicts.append(
                f"{m}: {names[0]} − {names[1]} = {m1 - m2:+.4f}, Welch t = {t:+.2f}: "
                + ("within the seed spread" if within else "OUTSIDE the seed spread")
            )
    print()
    for v in verdicts:
        print(f"- {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
