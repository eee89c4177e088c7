#!/usr/bin/env python3
"""recblocks' time per training step, uncaptured and replayed as a CUDA graph (`--cuda-graph`),
against a plain PyTorch step of the same shape (bench/pytorch_step.py), as a markdown table.

Two figures per run. "epoch / batches": an epoch's training seconds (the median of the epochs
after the first, as bench/compare_table.py takes them) over its batches; it counts everything an
epoch does between steps (its start, waiting for collated batches, an epoch's last and shorter
batch), so it is an upper bound of the step itself. "step median": the median over the same
epochs of each epoch's median step time (`step_ms_median` in `evaluate --json`: a step from its
batch in hand to its loss read back, which on a GPU waits for the step's work). PyTorch's figure
is its timed loop of steps on one fixed batch, which the step median matches best.

Usage: step_times.py --dataset ml100k --models sasrec,bert4rec --runs DIR --data-dir DIR
           [--pytorch pytorch_step.json] [--seed 42]
DIR: a bench/compare.sh output folder of a run with `--systems recblocks,recblocks-graph,...`
(<dataset>_<model>_recblocks_s<seed>.json and <dataset>_<model>_recblocks-graph_s<seed>.json).
"""

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from compare_table import load, train_sequences  # noqa: E402

CSV = {"ml100k": "ml-100k.csv"}
# The catalog size (ids plus the padding id 0) of the PyTorch step each dataset is compared with
# (bench/gpu/run.sh's PT_SHAPES).
PT_ITEMS = {"ml100k": 1683, "synth20k": 10001}


def spec(dataset: str, model: str) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "specs", f"{dataset}_{model}.json")) as f:
        return json.load(f)


def pytorch_ms(path: str | None, shape: tuple) -> float | None:
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        results = json.load(f).get("results", [])
    for r in results:
        if r.get("mode") == "graph" and r.get("status") == "ok":
            if (r["items"], r["d"], r["L"], r["batch"]) == shape:
                return r["ms_median"]
    return None


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def step_median(report: dict | None) -> float | None:
    """The median of the epochs' median step times, leaving out the first epoch (as the epoch
    times do) when there are more."""
    if report is None:
        return None
    per_epoch = report.get("step_ms_median") or []
    later = per_epoch[1:] if len(per_epoch) > 1 else per_epoch
    values = sorted(v for v in later if v is not None)
    return values[len(values) // 2] if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--pytorch", default=None)
    ap.add_argument("--seed", default="42")
    a = ap.parse_args()
    csv = os.path.join(a.data_dir, CSV.get(a.dataset, f"{a.dataset}.csv"))
    n_seq = train_sequences(csv)
    print(f"{a.dataset}: {n_seq} training sequences")
    print()
    print("| model | batches | ms/step: uncaptured, epoch / batches | graph, epoch / batches "
          "| uncaptured, step median | graph, step median | replayed steps "
          "| graph / uncaptured (step median) | PyTorch graph ms/step "
          "| graph / PyTorch: epoch / batches | graph / PyTorch: step median |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in a.models.split(","):
        s = spec(a.dataset, model)
        batches = math.ceil(n_seq / s["batch_size"])
        eager = load(a.runs, a.dataset, model, "recblocks", a.seed)
        graph = load(a.runs, a.dataset, model, "recblocks-graph", a.seed)
        ms = [None if r is None or r["_s_epoch"] is None else 1000.0 * r["_s_epoch"] / batches
              for r in (eager, graph)]
        pt = None
        items = PT_ITEMS.get(a.dataset)
        if s.get("cls") == "SASRecModel" and items is not None:
            pt = pytorch_ms(a.pytorch, (items, s["n_factors"], s["session_max_len"],
                                        s["batch_size"]))
        steps = [step_median(r) for r in (eager, graph)]
        # A run whose capture failed trained uncaptured: its figure is not a replay's.
        replays = None if graph is None else graph.get("captured_steps")
        replayed = "-" if replays is None else (f"{replays}" if replays else "0 (fell back)")
        print(f"| {model} | {batches} | {fmt(ms[0])} | {fmt(ms[1])} | {fmt(steps[0])} "
              f"| {fmt(steps[1])} | {replayed} | {fmt(ratio(steps[1], steps[0]))} | {fmt(pt)} "
              f"| {fmt(ratio(ms[1], pt))} | {fmt(ratio(steps[1], pt))} |")


if __name__ == "__main__":
    main()
