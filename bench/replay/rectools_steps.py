"""RecTools side of the training-step replay (`bench/replay/README.md`).

Fits RecTools' model of SPEC for --fit-epochs epochs (default 1; 0 keeps the initial xavier
weights) on DATA, then, from those weights, takes STEPS Adam steps on batches drawn by RecTools' own train
dataloader (with dropout 0 in SPEC a step depends only on the weights and the batch; dropout is
below), and writes to OUT/:

- config.json: model_config, dataset_schema, item_external_ids (the RecTools import format);
- weights.safetensors: the weights before the first replayed step (`torch_model.` names);
- batches.safetensors: x_i, y_i, yw_i (and negatives_i) of every step i;
- grads.safetensors: the gradient of every parameter at step 0;
- final.safetensors: the weights after the last step;
- losses.json: the loss of every step.

With --trajectory (dropout allowed) the model is trained on the leave-last-out train part of DATA
(as `bench/rectools/run_rectools.py` splits it) from its initial weights for STEPS steps (0: one
epoch), with RecTools' own dropout masks, recording the batches as above; `replay_steps` then
trains from the same weights on the same batches with its own masks. Both final models are scored
on the test part (trajectory.json holds RecTools' own figures; train.csv and test.csv the split),
which tells whether a quality difference lives in the batches or in the training step.

With dropout in SPEC a step depends on the masks, so there is no replay: instead the loss of the
first batch is computed under STEPS different dropout masks (train mode) and once in eval mode
(dropout_losses.json, batches.safetensors with that batch), which `replay_steps` compares with
its own masks: the mean train-mode loss must agree within its standard error.

Usage: python bench/replay/rectools_steps.py SPEC.json --data FILE.csv --out DIR [--steps N]
       [--fit-epochs N | --weights FILE.safetensors | --trajectory] [--threads T] [--seed S]
"""

import argparse
import json
import os
import struct
import sys

import numpy as np
import pandas as pd
import torch
from pytorch_lightning import seed_everything

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "rectools"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "host", "tests", "parity"))

from generate import write_safetensors  # noqa: E402
from run_rectools import (  # noqa: E402
    ITEM,
    USER,
    leave_last_out,
    make_trainer,
    ranked_lists,
    read_log,
    resolve_config,
    score,
)

from rectools.dataset import Dataset  # noqa: E402


def read_safetensors(path: str) -> dict:
    """The F32 tensors of a safetensors file (what `write_safetensors` writes for weights)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {meta['dtype']}, expected F32")
        a, b = meta["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=np.float32).copy()).reshape(meta["shape"])
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("spec")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--fit-epochs", type=int, default=1, help="epochs to fit before the replay (0: initial weights)")
    p.add_argument("--weights", help="start from these weights (a final.safetensors) instead of fitting")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--trajectory", action="store_true", help="train on the train part with dropout and score the result")
    a = p.parse_args()
    if a.trajectory or a.weights:
        a.fit_epochs = 0
    os.makedirs(a.out, exist_ok=True)
    model_cls, config, _ = resolve_config(a.spec, 1, a.seed)
    dropout = float(config.get("dropout_rate", 0.2))
    if dropout > 0.0 and not a.trajectory and a.steps < 2:
        raise SystemExit(f"with dropout_rate {dropout} the check draws --steps masks: need at least 2, got {a.steps}")
    torch.set_num_threads(a.threads)
    seed_everything(a.seed)
    log = read_log(a.data)
    if a.trajectory:
        log, test = leave_last_out(log)
        log.to_csv(os.path.join(a.out, "train.csv"), index=False)
        test[[USER, ITEM]].to_csv(os.path.join(a.out, "test.csv"), index=False)
    log["datetime"] = pd.to_datetime(log["datetime"], unit="s")
    dataset = Dataset.construct(log)
    config["get_trainer_func"] = make_trainer
    config["get_trainer_func_kwargs"] = {"epochs": a.fit_epochs}
    model = model_cls.from_config(config)
    model.fit(dataset)
    lm = model.lightning_model
    if a.weights:
        lm.load_state_dict(read_safetensors(a.weights))
    elif a.fit_epochs == 0:
        lm._xavier_normal_init()  # what on_train_start does before the first epoch
    tm = lm.torch_model
    write_safetensors(os.path.join(a.out, "weights.safetensors"), dict(lm.state_dict()))
    config = {
        "model_config": model.get_config(simple_types=True),
        "dataset_schema": lm.hparams["dataset_schema"],
        "item_external_ids": [str(i) for i in lm.hparams["item_external_ids"]],
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f)

    if dropout > 0.0 and not a.trajectory:
        # A step depends on the dropout masks: no replay, but the loss of one batch over many
        # masks (train mode) and without dropout (eval mode), for `replay_steps` to compare.
        batch = next(iter(model.data_preparator.get_dataloader_train()))
        batches = {f"{k}_0": batch[k].float() for k in ("x", "y", "yw", "negatives") if k in batch}
        write_safetensors(os.path.join(a.out, "batches.safetensors"), batches)
        draws = {}
        with torch.no_grad():
            for mode in ("train", "eval"):
                getattr(lm, mode)()
                n = a.steps if mode == "train" else 1
                draws[mode] = [
                    float(lm.loss_calculator(lm.get_batch_logits(batch), batch["y"], batch["yw"])) for _ in range(n)
                ]
        # Mean gradient over the same number of masks, and its standard error, per parameter.
        lm.train()
        acc, acc2 = {}, {}
        for _ in range(a.steps):
            lm.zero_grad()
            lm.loss_calculator(lm.get_batch_logits(batch), batch["y"], batch["yw"]).backward()
            for n_, q in tm.named_parameters():
                if q.grad is not None:
                    g = q.grad.double()
                    acc[n_] = acc.get(n_, 0) + g
                    acc2[n_] = acc2.get(n_, 0) + g * g
        stats = {}
        for n_, s1 in acc.items():
            mean = s1 / a.steps
            var = (acc2[n_] / a.steps - mean * mean).clamp(min=0) * a.steps / max(a.steps - 1, 1)
            stats[f"mean.torch_model.{n_}"] = mean.float()
            stats[f"se.torch_model.{n_}"] = (var / a.steps).sqrt().float()
        write_safetensors(os.path.join(a.out, "dropout_grads.safetensors"), stats)
        with open(os.path.join(a.out, "dropout_losses.json"), "w") as f:
            json.dump(draws, f)
        t = np.array(draws["train"])
        print(f"train-mode loss over {len(t)} masks {t.mean():.5f} +- {t.std(ddof=1) / np.sqrt(len(t)):.5f}, eval {draws['eval'][0]:.5f}")
        return
    opt = torch.optim.Adam(tm.parameters(), lr=lm.lr, betas=lm.adam_betas)
    lm.train()
    batches, losses, it = {}, [], None
    loader = model.data_preparator.get_dataloader_train()
    steps = a.steps if a.steps > 0 else len(loader)
    for step in range(steps):
        batch = next(it, None) if it is not None else None
        if batch is None:
            it = iter(loader)
            batch = next(it)
        for k in ("x", "y", "yw", "negatives"):
            if k in batch:
                t = batch[k]
                # ids below 2^24 are exact in f32, which halves the file against i64
                batches[f"{k}_{step}"] = t.float()
        logits = lm.get_batch_logits(batch)
        loss = lm.loss_calculator(logits, batch["y"], batch["yw"])
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grads = {f"torch_model.{n}": q.grad.clone() for n, q in tm.named_parameters() if q.grad is not None}
            write_safetensors(os.path.join(a.out, "grads.safetensors"), grads)
        opt.step()
        losses.append(loss.item())
    write_safetensors(os.path.join(a.out, "batches.safetensors"), batches)
    write_safetensors(os.path.join(a.out, "final.safetensors"), dict(lm.state_dict()))
    with open(os.path.join(a.out, "losses.json"), "w") as f:
        json.dump(losses, f)
    print(f"{steps} steps, loss {losses[0]:.5f} -> {losses[-1]:.5f}")
    if a.trajectory:
        lm.eval()
        users = list(pd.unique(test[USER]))
        reco = model.recommend(users=users, dataset=dataset, k=10, filter_viewed=True)
        reco = reco.astype({USER: str, ITEM: str})
        metrics = score(ranked_lists(reco), test, 10)
        with open(os.path.join(a.out, "trajectory.json"), "w") as f:
            json.dump({"steps": steps, "dropout_rate": dropout, "metrics": metrics}, f)
        print(f"RecTools after {steps} steps: {metrics}")


if __name__ == "__main__":
    main()
