#!/usr/bin/env python3
"""Tables for bench/compare.sh (stdlib only): reads <out>/<dataset>_<model>_<system>_s<seed>.json
and .time files and prints one Markdown table per dataset + model.

Usage: python3 bench/compare_table.py --out DIR --datasets A,B --models M,N --seeds 42,1
           --data-dir DIR [--header TEXT]

Columns: s/epoch = median of the epochs after the first (the only epoch when there is one);
sequences/s = training sequences per epoch / s/epoch, a training sequence being a user with at
least 2 train interactions (RecTools' `train_min_user_interactions`), i.e. at least 3 rows in the
log; peak RSS from `/usr/bin/time -v` (MiB); recommend s = top-10 for every test user; metrics
@10. With several seeds, the row shows medians and a line per seed follows. Systems: recblocks,
recblocks-graph (recblocks with `--cuda-graph`, the row "recblocks --cuda-graph") and rectools;
each recblocks row present gets a ratio row, that row / RecTools. The split check compares
train/test counts and the popularity baseline's metrics (which depend on every train and test
row) between recblocks (the uncaptured run, else the captured one) and RecTools.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
from collections import Counter


# The systems bench/compare.sh runs, RecTools last, and their rows' labels.
SYSTEMS = ("recblocks", "recblocks-graph", "rectools")
LABELS = {"recblocks": "recblocks", "recblocks-graph": "recblocks --cuda-graph", "rectools": "rectools"}


def s_per_epoch(epochs: list[float]) -> float | None:
    if not epochs:
        return None
    return statistics.median(epochs[1:] if len(epochs) > 1 else epochs)


def peak_rss_mib(time_file: str) -> float | None:
    try:
        with open(time_file) as f:
            for line in f:
                if "Maximum resident set size" in line:
                    return int(line.rsplit(":", 1)[1]) / 1024.0
    except OSError:
        pass
    return None


def train_sequences(csv_path: str) -> int:
    with open(csv_path, newline="") as f:
        counts = Counter(row["user_id"] for row in csv.DictReader(f))
    return sum(1 for n in counts.values() if n >= 3)


def load(out: str, ds: str, model: str, system: str, seed: str) -> dict | None:
    base = os.path.join(out, f"{ds}_{model}_{system}_s{seed}")
    try:
        with open(base + ".json") as f:
            text = f.read().strip()
    except OSError:
        return None
    try:
        report = json.loads(text)  # recblocks: one pretty-printed object
    except ValueError:
        try:
            report = json.loads(text.splitlines()[-1])  # RecTools: the last line
        except (ValueError, IndexError):
            return None
    report["_s_epoch"] = s_per_epoch(report.get("epoch_seconds", []))
    report["_rss"] = peak_rss_mib(base + ".time")
    return report


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def median_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def row(name: str, runs: list[dict], n_seq: int | None) -> tuple[str, dict]:
    agg = {
        "s_epoch": median_or_none([r["_s_epoch"] for r in runs]),
        "rss": median_or_none([r["_rss"] for r in runs]),
        "reco": median_or_none([r.get("recommend_seconds") for r in runs]),
        "recall": median_or_none([r["metrics"].get("recall@10") for r in runs]),
        "ndcg": median_or_none([r["metrics"].get("ndcg@10") for r in runs]),
    }
    agg["seq_s"] = n_seq / agg["s_epoch"] if n_seq and agg["s_epoch"] else None
    n_epochs = len(runs[0].get("epoch_seconds", []))
    label = f"{name} (median of {len(runs)})" if len(runs) > 1 else name
    line = (
        f"| {label} | {runs[0].get('n_params', 0):,} | {n_epochs} | {fmt(agg['s_epoch'])} | "
        f"{fmt(agg['seq_s'], 0)} | {fmt(agg['rss'], 0)} | {fmt(agg['reco'])} | "
        f"{fmt(agg['recall'], 4)} | {fmt(agg['ndcg'], 4)} |"
    )
    return line, agg


def split_check(a: dict, b: dict) -> str:
    keys = ("n_test_users", "n_test_interactions", "n_train_interactions")
    if any(a.get(k) != b.get(k) for k in keys):
        return "split check: DIFFERENT counts " + ", ".join(f"{k} {a.get(k)} vs {b.get(k)}" for k in keys)
    pa, pb = a.get("baseline_popular") or {}, b.get("baseline_popular") or {}
    if not pa or not pb:
        return "split check: counts equal; no popularity baseline to compare"
    diff = max(abs(pa[k] - pb.get(k, float("nan"))) for k in pa)
    verdict = "identical" if diff < 1e-12 else f"DIFFERENT (max diff {diff:.3g})"
    return (
        f"split check: {a['n_train_interactions']:,} train / {a['n_test_interactions']:,} test "
        f"interactions, {a['n_test_users']:,} test users on both sides; popularity baseline "
        f"Recall@10 {pa.get('recall@10', 0):.4f} NDCG@10 {pa.get('ndcg@10', 0):.4f}: {verdict}"
    )


def replays(report: dict) -> str:
    """How many of a `--cuda-graph` run's steps replayed its capture (none: it trained uncaptured,
    and its row is not a captured step's time)."""
    n = report.get("captured_steps")
    if n is None:
        return "recblocks --cuda-graph: the report has no count of replayed steps"
    if n == 0:
        return "recblocks --cuda-graph: **no step replayed** (the capture failed; the run trained uncaptured)"
    return f"recblocks --cuda-graph: {n:,} steps replayed"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--datasets", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--seeds", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--header", default="")
    a = p.parse_args()
    seeds = a.seeds.split(",")
    print(f"# recblocks vs RecTools\n\n{a.header}\n")
    for ds in a.datasets.split(","):
        csv_path = os.path.join(a.data_dir, "ml-100k.csv" if ds == "ml100k" else f"{ds}.csv")
        n_seq = train_sequences(csv_path) if os.path.exists(csv_path) else None
        for model in a.models.split(","):
            print(f"## {ds} / {model} ({n_seq:,} training sequences per epoch)\n" if n_seq else f"## {ds} / {model}\n")
            print("| system | params | epochs | s/epoch | sequences/s | peak RSS MiB | recommend s | Recall@10 | NDCG@10 |")
            print("|---|---|---|---|---|---|---|---|---|")
            aggs = {}
            firsts = {}
            for system in SYSTEMS:
                runs = [r for s in seeds if (r := load(a.out, ds, model, system, s)) is not None]
                if not runs:
                    continue
                firsts[system] = runs[0]
                line, aggs[system] = row(LABELS[system], runs, n_seq)
                print(line)
                if len(runs) > 1:
                    for s, r in zip(seeds, runs):
                        print(
                            f"| &nbsp; seed {s} | | | {fmt(r['_s_epoch'])} | | {fmt(r['_rss'], 0)} | "
                            f"{fmt(r.get('recommend_seconds'))} | {r['metrics'].get('recall@10', 0):.4f} | "
                            f"{r['metrics'].get('ndcg@10', 0):.4f} |"
                        )
            rt = aggs.get("rectools")
            if rt is not None:
                for system in SYSTEMS[:-1]:
                    rb = aggs.get(system)
                    if rb is None:
                        continue

                    def ratio(k: str, digits: int = 2) -> str:
                        return fmt(rb[k] / rt[k], digits) + "×" if rb[k] and rt[k] else "—"

                    print(
                        f"| {LABELS[system]} / RecTools | | | {ratio('s_epoch')} | {ratio('seq_s')} | "
                        f"{ratio('rss')} | {ratio('reco')} | {ratio('recall', 3)} | {ratio('ndcg', 3)} |"
                    )
                ours = next((firsts[s] for s in SYSTEMS[:-1] if s in firsts), None)
                if ours is not None:
                    print(f"\n{split_check(ours, firsts['rectools'])}")
            if "recblocks-graph" in firsts:
                print(f"\n{replays(firsts['recblocks-graph'])}")
            print()


if __name__ == "__main__":
    main()
