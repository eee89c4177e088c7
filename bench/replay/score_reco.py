"""Scores a recommendation CSV (`recblocks recommend` output: user_id, item_id, score, rank) on
a test part (`user_id,item_id`, as `rectools_steps.py --trajectory` writes it) with the
benchmark's metrics (`bench/rectools/run_rectools.py` `score`), printed as JSON.

Usage: python bench/replay/score_reco.py RECO.csv TEST.csv [-k 10]
"""

import argparse
import json
import os
import sys

import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "rectools"))

from run_rectools import ITEM, USER, ranked_lists, score  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("reco")
    p.add_argument("test")
    p.add_argument("-k", type=int, default=10)
    a = p.parse_args()
    reco = pd.read_csv(a.reco, dtype={USER: str, ITEM: str}, keep_default_na=False)
    test = pd.read_csv(a.test, dtype={USER: str, ITEM: str}, keep_default_na=False)
    print(json.dumps(score(ranked_lists(reco), test, a.k)))


if __name__ == "__main__":
    main()
