"""Golden fixtures for recblocks' parity tests with RecTools (run by hand, never by CI).

Usage (from the repository root):

    python -m venv /tmp/venv-rt && /tmp/venv-rt/bin/pip install "rectools[torch]==0.19.0"
    python host/tests/parity/generate.py

Versions used for the committed fixtures are written to host/tests/parity/fixtures/versions.json
(rectools 0.19.0, torch 2.15.0, pytorch-lightning 2.5.2, numpy 1.26.4, CPU).

For each configuration in CONFIGS it builds the RecTools model on a tiny synthetic interaction
table (host/tests/parity/fixtures/interactions.csv, optionally with categorical item features from
item_features.csv), trains it for two epochs from a fixed seed (so that weights, layer norms and
biases are not at their initial values), then writes to host/tests/parity/fixtures/<name>/:

- config.json: the RecTools config (`get_config(simple_types=True)`), the dataset schema, the
  item id map, and the top-10 recommendations (`filter_viewed=True`) for every user;
- weights.safetensors: the Lightning state_dict under RecTools' names (`torch_model.` prefix);
- io.safetensors: one training batch (x, y, yw and, for sampled losses, the negatives the
  collate drew), and for it, in eval mode: the session encodings [B, L, d], the logits (full
  catalog, or positive + negatives) and the loss for the configured loss (f64 scalar).

Losses are computed in eval mode (dropout off), so they do not depend on dropout masks; the
negatives are stored, so they do not depend on RNG equality either.

Two configurations also get a real Lightning checkpoint (`checkpoint.ckpt`, written by the
model's own trainer) and `checkpoint_recos.csv` (RecTools' top-10 after loading it back with
`load_from_checkpoint`), for the `recblocks import-rectools` test. sasrec_cat_features keeps the
full checkpoint (optimizer and loop states included, as users' checkpoints are); bert4rec_default
is re-saved with `weights_only=True` after its recommendations were taken from the full one, to
keep the fixtures small (same weights and hyper-parameters).
"""

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_lightning import Trainer, seed_everything

import rectools
from rectools import Columns
from rectools.dataset import Dataset
from rectools.models import BERT4RecModel, SASRecModel
from rectools.models.nn.transformers.ligr import LiGRLayers

OUT = Path(__file__).resolve().parent / "fixtures"
SEED = 32
N_USERS = 14
N_ITEMS = 20
L = 8
D = 16


def tiny_interactions() -> pd.DataFrame:
    """Synthetic log: users 1..14, items 101..120, 4-11 interactions each, distinct times."""
    rng = np.random.default_rng(7)
    rows = []
    t0 = pd.Timestamp("2024-01-01")
    for u in range(1, N_USERS + 1):
        n = int(rng.integers(4, 12))
        items = rng.choice(np.arange(101, 101 + N_ITEMS), size=n, replace=False)
        for j, it in enumerate(items):
            w = float(rng.choice([1.0, 1.0, 2.0]))
            rows.append((u, int(it), w, t0 + pd.Timedelta(hours=int(u * 100 + j * 3 + rng.integers(0, 2)))))
    return pd.DataFrame(rows, columns=[Columns.User, Columns.Item, Columns.Weight, Columns.Datetime])


def tiny_item_features() -> pd.DataFrame:
    """Two categorical features per item (long format, RecTools' `id, feature, value`)."""
    rows = []
    for it in range(101, 101 + N_ITEMS):
        rows.append((it, "genre", ["drama", "comedy", "action"][it % 3]))
        rows.append((it, "studio", ["a", "b"][(it // 3) % 2]))
    return pd.DataFrame(rows, columns=["id", "feature", "value"])


def trainer() -> Trainer:
    """Deterministic CPU trainer; `enable_checkpointing=False` as RecTools' default."""
    return Trainer(
        max_epochs=2,
        min_epochs=2,
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
    )


COMMON = dict(n_factors=D, n_heads=4, n_blocks=2, session_max_len=L, batch_size=6, epochs=2, lr=0.01)

# name -> (model class, kwargs, use item features, checkpoint: None, "full" or "weights_only")
CONFIGS = {
    "sasrec_default": (SASRecModel, {}, False, False),
    "bert4rec_default": (BERT4RecModel, {}, False, "weights_only"),
    "sasrec_kpm_causal": (SASRecModel, dict(use_key_padding_mask=True, use_causal_attn=True), False, False),
    "bert4rec_kpm_causal": (BERT4RecModel, dict(use_key_padding_mask=True, use_causal_attn=True), False, False),
    "sasrec_cosine": (SASRecModel, dict(similarity_module_kwargs={"distance": "cosine"}), False, False),
    "sasrec_ligr": (
        SASRecModel,
        dict(transformer_layers_type=LiGRLayers),
        False,
        False,
    ),
    "sasrec_ligr_gelu_bias": (
        SASRecModel,
        dict(
            transformer_layers_type=LiGRLayers,
            transformer_layers_kwargs={"ff_activation": "gelu", "bias_in_ff": True, "ff_factors_multiplier": 2},
        ),
        False,
        False,
    ),
    "sasrec_cat_features": (SASRecModel, {}, True, "full"),
    "bert4rec_cat_features": (BERT4RecModel, {}, True, False),
    # One block is enough to check a loss or the positional scaling (keeps the fixtures small).
    "sasrec_bce": (SASRecModel, dict(loss="BCE", n_negatives=3, n_blocks=1), False, False),
    "sasrec_gbce": (SASRecModel, dict(loss="gBCE", n_negatives=3, gbce_t=0.3, n_blocks=1), False, False),
    "sasrec_sampled_softmax": (SASRecModel, dict(loss="sampled_softmax", n_negatives=3, n_blocks=1), False, False),
    "bert4rec_gbce": (BERT4RecModel, dict(loss="gBCE", n_negatives=2, n_blocks=1), False, False),
    "sasrec_scaled_pos": (
        SASRecModel,
        dict(pos_encoding_kwargs={"use_scale_factor": True}, n_blocks=1),
        False,
        False,
    ),
}


def write_safetensors(path: Path, tensors: dict) -> None:
    """Minimal safetensors writer (keeps the generator free of extra dependencies)."""
    dtypes = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def ext_id(x) -> str:
    return str(x)


def top10(model, dataset) -> dict:
    users = sorted(dataset.user_id_map.external_ids.tolist())
    reco = model.recommend(users=users, dataset=dataset, k=10, filter_viewed=True)
    out = {}
    for u, grp in reco.groupby(Columns.User, sort=True):
        out[ext_id(u)] = [ext_id(i) for i in grp.sort_values(Columns.Rank)[Columns.Item]]
    return out


def recos_table(model, dataset) -> pd.DataFrame:
    users = sorted(dataset.user_id_map.external_ids.tolist())
    return model.recommend(users=users, dataset=dataset, k=10, filter_viewed=True)


def generate(name, cls, kwargs, with_features, with_ckpt, interactions, features) -> None:
    seed_everything(SEED, workers=True)
    dataset = Dataset.construct(
        interactions,
        item_features_df=features if with_features else None,
        cat_item_features=["genre", "studio"] if with_features else (),
    )
    model = cls(**{**COMMON, **kwargs}, get_trainer_func=trainer, deterministic=True)
    model.fit(dataset)
    lm = model.lightning_model
    lm.eval()
    torch_model = lm.torch_model

    # One training batch as the collate makes it (masking and negatives drawn here, then stored).
    seed_everything(SEED + 1)
    batch = next(iter(model.data_preparator.get_dataloader_train()))
    with torch.no_grad():
        item_embs = torch_model.item_model.get_all_embeddings()
        enc = torch_model.encode_sessions(batch, item_embs)
        logits = lm.get_batch_logits(batch)
        # clone: sampled_softmax swaps columns in place
        loss = lm.loss_calculator(logits.clone(), batch["y"], batch["yw"])
    io = {"x": batch["x"], "y": batch["y"], "yw": batch["yw"].float(), "encodings": enc, "logits": logits,
          "loss": loss.detach().double().reshape(1)}
    if "negatives" in batch:
        io["negatives"] = batch["negatives"]

    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    write_safetensors(d / "weights.safetensors", dict(lm.state_dict()))
    write_safetensors(d / "io.safetensors", io)
    config = {
        "name": name,
        "features": with_features,
        "model_config": model.get_config(simple_types=True),
        "dataset_schema": lm.hparams["dataset_schema"],
        "item_external_ids": [ext_id(i) for i in lm.hparams["item_external_ids"]],
        "top10_filter_viewed": top10(model, dataset),
    }
    (d / "config.json").write_text(json.dumps(config, indent=1) + "\n")

    if with_ckpt:
        ckpt = d / "checkpoint.ckpt"
        model.fit_trainer.save_checkpoint(ckpt)
        loaded = cls.load_from_checkpoint(ckpt)
        reco = recos_table(loaded, dataset)
        reco[Columns.Score] = reco[Columns.Score].round(5)
        reco.to_csv(d / "checkpoint_recos.csv", index=False)
        if with_ckpt == "weights_only":
            # Same weights and hyper-parameters, without optimizer and loop states (smaller).
            model.fit_trainer.save_checkpoint(ckpt, weights_only=True)
    print(f"{name}: loss {float(loss):.6f}, encodings {tuple(enc.shape)}, logits {tuple(logits.shape)}")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    interactions = tiny_interactions()
    features = tiny_item_features()
    interactions.to_csv(OUT / "interactions.csv", index=False, date_format="%Y-%m-%d %H:%M:%S")
    features.to_csv(OUT / "item_features.csv", index=False)
    only = set(sys.argv[1:])
    for name, (cls, kwargs, with_features, with_ckpt) in CONFIGS.items():
        if only and name not in only:
            continue
        generate(name, cls, kwargs, with_features, with_ckpt, interactions, features)
    import pytorch_lightning

    versions = {
        "python": sys.version.split()[0],
        "rectools": rectools.__version__,
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "device": "cpu",
    }
    (OUT / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    main()
