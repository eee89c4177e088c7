#!/usr/bin/env python3
"""Peak device memory of each run in a compare folder, as a markdown table: the high-water marks
each system reports in its JSON (`device_memory_fit`, `device_memory_recommend`: MiB in use by
allocations and held from the device). recblocks reads the CUDA driver's pool statistics
(`evaluate --json` on a CUDA device); RecTools, torch's caching allocator (bench/rectools/
run_rectools.py with --device cuda).

Usage: device_memory.py DIR   (DIR: <dataset>_<model>_<system>_s<seed>.json files)
"""

import glob
import json
import os
import sys


def load(path: str) -> dict | None:
    with open(path) as f:
        text = f.read().strip()
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


def fmt(peak: dict | None, key: str) -> str:
    return "-" if not peak or peak.get(key) is None else f"{peak[key]:,.0f}"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rows = []
    for path in sorted(glob.glob(os.path.join(sys.argv[1], "*_s*.json"))):
        report = load(path)
        if report is None:
            continue
        run = os.path.basename(path)[: -len(".json")]
        fit, reco = report.get("device_memory_fit"), report.get("device_memory_recommend")
        epochs = len(report.get("epoch_seconds", []))
        rows.append(f"| {run} | {epochs} | {fmt(fit, 'used_mib')} | {fmt(fit, 'reserved_mib')} "
                    f"| {fmt(reco, 'used_mib')} | {fmt(reco, 'reserved_mib')} |")
    print("| run | epochs | fit: in use MiB | fit: held MiB | recommend: in use MiB "
          "| recommend: held MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows) if rows else "| (no run) | | | | | |")


if __name__ == "__main__":
    main()
