#!/usr/bin/env python3
"""RecTools side of the recblocks benchmark: the same leave-last-out evaluation as
`recblocks evaluate SPEC --data CSV --json`, printed as one JSON line with the same keys.

Usage:
    python bench/rectools/run_rectools.py SPEC.json --data FILE.csv [--epochs N] [--seed S]
        [--threads T] [--device cpu] [-k 10] [--baseline-popular] [--dump-split FILE.tsv]
        [--save-model DIR]

SPEC is the recblocks spec file, i.e. a RecTools `get_config(simple_types=True)` config: our
extension key `seed` is dropped (it is the default of --seed), short component names are mapped
to RecTools' dotted paths, and the ALBERT components of our `albert` plugin
(`AlbertSumConstructor`, `AlbertLayers`) map to the port in `bench/rectools/albert.py`.

What it does, step by step, exactly as recblocks' `host/src/evaluate.rs`:
1. Reads the CSV (`user_id,item_id,weight,datetime`; ids as strings, datetimes as unix seconds or
   ISO-8601).
2. Leave-last-out: each user's last interaction by datetime (ties: the later row of the file) is
   the test item; users whose only row that is are not evaluated. Everything else is train.
3. Fits the model on the train part (`Dataset.construct` of the train rows), timing each epoch
   with a Lightning callback, with `torch.set_num_threads(--threads)` and
   `lightning.seed_everything(--seed)`.
4. Recommends top-k with `filter_viewed=True` for every test user (in order of first appearance
   in the test part).
5. Recall@k = hits / test items of the user; NDCG@k = DCG / IDCG(min(test items, k)) (standard
   NDCG, RecTools' `NDCG(divide_by_achievable=True)`), binary relevance, mean over test users; a
   test item unknown to the model is a miss. The script checks these against `rectools.metrics`.
   MRR@k and HitRate@k are reported too.

Output keys: metrics, n_params, fit_seconds, epoch_seconds, train_loss, recommend_seconds,
n_test_users, n_test_interactions, n_train_interactions, split_sha256, peak_rss_mib, seed, threads, versions,
and (with --baseline-popular) baseline_popular, the popularity baseline of recblocks'
`--baseline popular` (most interacted train items, ties by first appearance in the log, viewed
filtered), which depends on every train and test row and so cross-checks the split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import sys
import time
import warnings

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

USER, ITEM, WEIGHT, DATETIME = "user_id", "item_id", "weight", "datetime"

# Short names recblocks accepts (registry aliases) → RecTools dotted paths.
_NN = "rectools.models.nn"
_TR = "rectools.models.nn.transformers"
SHORT_NAMES = {
    "SASRecDataPreparator": f"{_TR}.sasrec.SASRecDataPreparator",
    "BERT4RecDataPreparator": f"{_TR}.bert4rec.BERT4RecDataPreparator",
    "SASRecTransformerLayers": f"{_TR}.sasrec.SASRecTransformerLayers",
    "PreLNTransformerLayers": f"{_TR}.net_blocks.PreLNTransformerLayers",
    "IdEmbeddingsItemNet": f"{_NN}.item_net.IdEmbeddingsItemNet",
    "CatFeaturesItemNet": f"{_NN}.item_net.CatFeaturesItemNet",
    "SumOfEmbeddingsConstructor": f"{_NN}.item_net.SumOfEmbeddingsConstructor",
    "LearnableInversePositionalEncoding": f"{_TR}.net_blocks.LearnableInversePositionalEncoding",
    "TransformerLightningModule": f"{_TR}.lightning.TransformerLightningModule",
    "CatalogUniformSampler": f"{_TR}.negative_sampler.CatalogUniformSampler",
    "DistanceSimilarityModule": f"{_TR}.similarity.DistanceSimilarityModule",
    "TransformerTorchBackbone": f"{_TR}.torch_backbone.TransformerTorchBackbone",
    # recblocks' albert plugin, ported in bench/rectools/albert.py.
    "AlbertSumConstructor": "albert.AlbertSumConstructor",
    "AlbertLayers": "albert.AlbertLayers",
}
TYPE_KEYS = (
    "data_preparator_type",
    "item_net_constructor_type",
    "pos_encoding_type",
    "transformer_layers_type",
    "lightning_module_type",
    "negative_sampler_type",
    "similarity_module_type",
    "backbone_type",
)

# Epoch timings of the current fit, filled by EpochTimer.
EPOCH_SECONDS: list[float] = []
TRAIN_LOSS: list[float] = []  # per epoch: mean of the batch losses weighted by batch size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="recblocks spec JSON (a RecTools simple-types config)")
    p.add_argument("--data", required=True, help="CSV: user_id,item_id,weight,datetime")
    p.add_argument("--epochs", type=int, help="number of epochs (overrides the spec)")
    p.add_argument("--seed", type=int, help="seed (default: the spec's `seed`, else 42)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="Lightning accelerator and recommend device")
    p.add_argument("-k", type=int, default=10, help="recommendations per user")
    p.add_argument("--baseline-popular", action="store_true", help="also score popularity")
    p.add_argument("--dump-split", help="write the test pairs (user<TAB>item) to this file")
    p.add_argument(
        "--max-steps",
        type=int,
        default=0,
        help="train at most this many batches an epoch (Lightning's limit_train_batches; 0: all): "
        "enough for the peak device memory of a large catalog without the whole epoch",
    )
    p.add_argument(
        "--save-model",
        metavar="DIR",
        help="write the fitted model's Lightning checkpoint (DIR/checkpoint.ckpt, for `recblocks "
        "import-rectools`), the train part (DIR/train.csv) and RecTools' top-k (DIR/reco.csv), "
        "so that recblocks can rank with the very same weights",
    )
    return p.parse_args(argv)


def read_log(path: str) -> pd.DataFrame:
    """Reads the log with string ids and integer unix-second datetimes, in file order."""
    df = pd.read_csv(path, dtype={USER: str, ITEM: str}, keep_default_na=False)
    missing = [c for c in (USER, ITEM, DATETIME) if c not in df.columns]
    if missing:
        raise SystemExit(f"{path}: missing column(s) {missing}")
    if WEIGHT not in df.columns:
        df[WEIGHT] = 1.0
    dt = df[DATETIME]
    if not pd.api.types.is_integer_dtype(dt):
        parsed = pd.to_datetime(dt, utc=True)
        dt = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    df[DATETIME] = dt.astype(np.int64)
    df[WEIGHT] = df[WEIGHT].astype(np.float32)
    return df[[USER, ITEM, WEIGHT, DATETIME]].reset_index(drop=True)


def leave_last_out(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """recblocks' `leave_last_out`: per user, the row with the greatest datetime, the later row
    among ties, is test; users with no other row are not evaluated. Both parts keep file order."""
    rows = np.arange(len(df))
    order = np.lexsort((rows, df[DATETIME].to_numpy(), df[USER].to_numpy()))
    users_sorted = df[USER].to_numpy()[order]
    is_last = np.ones(len(df), dtype=bool)
    is_last[:-1] = users_sorted[:-1] != users_sorted[1:]
    test_mask = np.zeros(len(df), dtype=bool)
    test_mask[order[is_last]] = True
    train = df[~test_mask]
    test = df[test_mask]
    test = test[test[USER].isin(set(train[USER].unique()))]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def split_hash(test: pd.DataFrame) -> str:
    """sha256 of the test pairs `user\\titem\\n` in file order (the same order on both sides)."""
    h = hashlib.sha256()
    for u, i in zip(test[USER], test[ITEM]):
        h.update(f"{u}\t{i}\n".encode())
    return h.hexdigest()


def resolve_config(path: str, epochs: int | None, seed: int | None):
    """The spec as a RecTools config dict, the model class, and the seed."""
    with open(path) as f:
        config = json.load(f)
    spec_seed = config.pop("seed", None)
    seed = seed if seed is not None else (spec_seed if spec_seed is not None else 42)
    cls_name = config.pop("cls", "SASRecModel")
    from rectools.models import BERT4RecModel, SASRecModel

    classes = {"SASRecModel": SASRecModel, "BERT4RecModel": BERT4RecModel}
    short = cls_name.rsplit(".", 1)[-1]
    if short not in classes:
        raise SystemExit(f"{path}: cls `{cls_name}` is not SASRecModel or BERT4RecModel")
    for key in TYPE_KEYS:
        if isinstance(config.get(key), str) and config[key] in SHORT_NAMES:
            config[key] = SHORT_NAMES[config[key]]
    if "item_net_block_types" in config:
        config["item_net_block_types"] = [SHORT_NAMES.get(t, t) for t in config["item_net_block_types"]]
    if epochs is not None:
        config["epochs"] = epochs
    return classes[short], config, int(seed)


def make_trainer(
    epochs: int, accelerator: str = "cpu", deterministic: bool = False, max_steps: int = 0
):
    """RecTools' default trainer (base.py `_init_trainer`) plus the epoch timer and an explicit
    accelerator."""
    from pytorch_lightning import Callback, Trainer

    class EpochTimer(Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # noqa: ARG002
            self._loss_sum, self._n = 0.0, 0
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ARG002
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            n = len(batch["x"])
            self._loss_sum = self._loss_sum + loss.detach() * n  # no device sync per step
            self._n += n

        def on_train_epoch_end(self, trainer, pl_module):  # noqa: ARG002
            EPOCH_SECONDS.append(time.perf_counter() - self._t)
            TRAIN_LOSS.append(float(self._loss_sum) / max(self._n, 1))

    return Trainer(
        max_epochs=epochs,
        min_epochs=epochs,
        deterministic=deterministic,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        devices=1,
        accelerator=accelerator,
        callbacks=[EpochTimer()],
        limit_train_batches=max_steps if max_steps > 0 else None,
    )


def device_peak(torch) -> dict:
    """torch's caching allocator's peaks since the last call, in MiB (allocated: in use by
    tensors; reserved: held from the device), then a reset for the next phase."""
    torch.cuda.synchronize()
    mib = 1024.0 * 1024.0
    peak = {
        "used_mib": torch.cuda.max_memory_allocated() / mib,
        "reserved_mib": torch.cuda.max_memory_reserved() / mib,
    }
    torch.cuda.reset_peak_memory_stats()
    return peak


def ranked_lists(reco: pd.DataFrame) -> dict[str, list[str]]:
    reco = reco.sort_values([USER, "rank"], kind="stable")
    return {u: list(g[ITEM]) for u, g in reco.groupby(USER, sort=False)}


def score(lists: dict[str, list[str]], test: pd.DataFrame, k: int) -> dict[str, float]:
    """recblocks' recall/ndcg/mrr/hitrate@k (host/src/metrics), mean over test users."""
    relevant: dict[str, set[str]] = {}
    for u, i in zip(test[USER], test[ITEM]):
        relevant.setdefault(u, set()).add(i)
    sums = {"recall": 0.0, "ndcg": 0.0, "mrr": 0.0, "hitrate": 0.0}
    for u, rel in relevant.items():
        ranks = [r for r, item in enumerate(lists.get(u, [])[:k], start=1) if item in rel]
        dcg = sum(1.0 / math.log2(r + 1) for r in ranks)
        idcg = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(rel), k) + 1))
        sums["recall"] += len(ranks) / len(rel)
        sums["ndcg"] += dcg / idcg
        sums["mrr"] += 1.0 / ranks[0] if ranks else 0.0
        sums["hitrate"] += 1.0 if ranks else 0.0
    n = len(relevant)
    return {f"{name}@{k}": s / n for name, s in sorted(sums.items())}


def check_with_rectools_metrics(reco: pd.DataFrame, test: pd.DataFrame, k: int, ours: dict) -> None:
    """Asserts that rectools.metrics gives the same Recall@k and standard NDCG@k."""
    from rectools.metrics import NDCG, Recall, calc_metrics

    theirs = calc_metrics(
        {"recall": Recall(k=k), "ndcg": NDCG(k=k, divide_by_achievable=True)},
        reco=reco.rename(columns={USER: "user_id", ITEM: "item_id"})[["user_id", "item_id", "rank"]],
        interactions=test[[USER, ITEM]].rename(columns={USER: "user_id", ITEM: "item_id"}),
    )
    for name in ("recall", "ndcg"):
        if abs(theirs[name] - ours[f"{name}@{k}"]) > 1e-9:
            raise SystemExit(f"metric mismatch: rectools {name}={theirs[name]} vs ours {ours[f'{name}@{k}']}")


def popular_lists(train: pd.DataFrame, full: pd.DataFrame, users: list[str], k: int) -> dict:
    """recblocks' popularity baseline: train counts, ties by first appearance in the full log."""
    first_seen = {item: n for n, item in enumerate(pd.unique(full[ITEM]))}
    counts = train[ITEM].value_counts()
    order = sorted(counts.index, key=lambda i: (-counts[i], first_seen[i]))
    seen = train.groupby(USER)[ITEM].agg(set).to_dict()
    out = {}
    for u in users:
        viewed = seen.get(u, set())
        lst = []
        for i in order:
            if i not in viewed:
                lst.append(i)
                if len(lst) == k:
                    break
        out[u] = lst
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    import pytorch_lightning as pl
    import rectools
    import torch
    from rectools.dataset import Dataset

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model_cls, config, seed = resolve_config(args.spec, args.epochs, args.seed)
    config["get_trainer_func"] = make_trainer
    config["get_trainer_func_kwargs"] = {
        "epochs": int(config.get("epochs", 3)),
        "accelerator": args.device,
        "deterministic": bool(config.get("deterministic", False)),
        "max_steps": args.max_steps,
    }
    config.setdefault("recommend_torch_device", args.device)

    full = read_log(args.data)
    train, test = leave_last_out(full)
    if args.dump_split:
        test[[USER, ITEM]].to_csv(args.dump_split, sep="\t", header=False, index=False)
    test_users = list(pd.unique(test[USER]))

    pl.seed_everything(seed, workers=True, verbose=False)
    train_rt = train.rename(columns={USER: "user_id", ITEM: "item_id", WEIGHT: "weight"}).copy()
    train_rt[DATETIME] = pd.to_datetime(train_rt[DATETIME], unit="s")
    dataset = Dataset.construct(train_rt)
    model = model_cls.from_config(config)

    EPOCH_SECONDS.clear()
    TRAIN_LOSS.clear()
    on_gpu = args.device.startswith("cuda") and torch.cuda.is_available()
    started = time.perf_counter()
    model.fit(dataset)
    fit_seconds = time.perf_counter() - started
    memory = {}
    if on_gpu:
        memory["device_memory_fit"] = device_peak(torch)

    started = time.perf_counter()
    reco = model.recommend(users=test_users, dataset=dataset, k=args.k, filter_viewed=True)
    recommend_seconds = time.perf_counter() - started
    if on_gpu:
        memory["device_memory_recommend"] = device_peak(torch)

    reco = reco.astype({USER: str, ITEM: str})
    if args.save_model:
        os.makedirs(args.save_model, exist_ok=True)
        model.fit_trainer.save_checkpoint(os.path.join(args.save_model, "checkpoint.ckpt"))
        train.to_csv(os.path.join(args.save_model, "train.csv"), index=False)
        reco.to_csv(os.path.join(args.save_model, "reco.csv"), index=False)
    metrics = score(ranked_lists(reco), test, args.k)
    check_with_rectools_metrics(reco, test, args.k, metrics)
    torch_model = model.lightning_model.torch_model
    n_params = sum(p.numel() for p in torch_model.parameters() if p.requires_grad)

    report = {
        "metrics": metrics,
        "n_params": int(n_params),
        "fit_seconds": fit_seconds,
        "epoch_seconds": list(EPOCH_SECONDS),
        "train_loss": list(TRAIN_LOSS),
        "recommend_seconds": recommend_seconds,
        "n_test_users": len(test_users),
        "n_test_interactions": len(test),
        "n_train_interactions": len(train),
        "split_sha256": split_hash(test),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        **memory,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "versions": {
            "rectools": rectools.__version__,
            "torch": torch.__version__,
            "pytorch_lightning": pl.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
    }
    if args.baseline_popular:
        report["baseline_popular"] = score(popular_lists(train, full, test_users, args.k), test, args.k)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
