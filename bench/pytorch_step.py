"""Time one SASRec training step in plain PyTorch: eager, torch.compile, CUDA graph.

Dev-only reference point for recblocks' step time. The model mirrors RecTools'
SASRec (fp32, TF32 off): item embedding [n_items, d] (padding id 0) + learned
positional embedding [L, d], embedding dropout, `blocks` SASRec blocks
(LayerNorm query, causal nn.MultiheadAttention, residual, LayerNorm,
Linear-ReLU-Dropout-Linear-Dropout feed-forward, residual), timeline mask on
each block's input, final LayerNorm, full-catalog softmax logits (h @ E^T) and
cross-entropy with ignore_index=0; Adam(lr=1e-3, betas=(0.9, 0.98), eps=1e-8).

One "step" = forward + backward + optimizer step on one batch [batch, L] of
random left-padded sessions (~17% padding). Batches are generated on the device
up front, so data loading is not timed. Modes:
  eager    plain PyTorch;
  compile  torch.compile of forward+loss (backward via AOTAutograd, eager Adam);
  graph    whole step (forward, backward, Adam with capturable=True) captured
           once as a CUDA graph; each step copies the batch into static inputs
           and replays (CUDA only).
Reported: median and min ms/step over `repeats` runs of `steps` steps (warm-up
excluded), and peak device memory (torch.cuda.max_memory_allocated).

recblocks trains the same shapes with bench/specs/ml100k_sasrec.json (d=64,
2 blocks, 2 heads, L=50, batch 128, dropout 0.2; ML-100k: 1683 ids incl.
padding), so the default shape compares directly with recblocks' step time.

  python3 bench/pytorch_step.py --json out.json
  python3 bench/pytorch_step.py --shapes "1683:64:50:128;20000:128:200:256"
"""
import argparse
import gc
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, p):
        super().__init__()
        self.q_norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=p, batch_first=True)
        self.ff_norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(p),
                                nn.Linear(d, d), nn.Dropout(p))

    def forward(self, x, mask):
        q = self.q_norm(x)
        a, _ = self.attn(q, x, x, attn_mask=mask, need_weights=False)
        f = self.ff_norm(q + a)
        return self.ff(f) + f


class SASRec(nn.Module):
    def __init__(self, n_items, d, L, blocks, heads, p=0.2):
        super().__init__()
        self.item_emb = nn.Embedding(n_items, d, padding_idx=0)
        self.pos_emb = nn.Embedding(L, d)
        self.drop = nn.Dropout(p)
        self.blocks = nn.ModuleList(Block(d, heads, p) for _ in range(blocks))
        self.last_norm = nn.LayerNorm(d)
        causal = torch.full((L, L), float("-inf")).triu(1)  # 0 on/below diagonal
        self.register_buffer("causal", causal, persistent=False)
        for w in self.parameters():  # RecTools: xavier_normal_ on every >=2-D tensor
            if w.dim() >= 2:
                nn.init.xavier_normal_(w)

    def forward(self, ids):
        keep = (ids > 0).unsqueeze(-1).to(self.item_emb.weight.dtype)
        x = self.drop(self.item_emb(ids) + self.pos_emb.weight)
        for blk in self.blocks:
            x = blk(x * keep, self.causal)
        h = self.last_norm(x * keep)
        return h @ self.item_emb.weight.T  # [batch, L, n_items]


def step_loss(model, ids, targets):
    logits = model(ids)
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1),
                           ignore_index=0)


def make_batches(n, n_items, L, batch, device, gen):
    """n batches of (ids, targets): left-padded sessions of L+1, shifted by one."""
    out = []
    pad_max = min(L - 1, round(0.34 * L))  # uniform pad length -> ~17% zeros
    for _ in range(n):
        seq = torch.randint(1, n_items, (batch, L + 1), generator=gen)
        pad = torch.randint(0, pad_max + 1, (batch, 1), generator=gen)
        seq = seq.masked_fill(torch.arange(L + 1) < pad, 0)
        out.append((seq[:, :-1].contiguous().to(device), seq[:, 1:].contiguous().to(device)))
    return out


def timed(device, run_steps, steps):
    """ms/step of run_steps(steps): CUDA events on GPU, perf_counter on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run_steps(steps)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / steps
    t0 = time.perf_counter()
    run_steps(steps)
    return (time.perf_counter() - t0) * 1e3 / steps


def build_runner(mode, model, batches, device, compile_mode):
    """Returns run_steps(n) that performs n training steps in the given mode."""
    it = {"i": 0}

    def next_batch():
        it["i"] += 1
        return batches[it["i"] % len(batches)]

    adam = dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-8)
    if mode in ("eager", "compile"):
        opt = torch.optim.Adam(model.parameters(), **adam)
        fn = step_loss if mode == "eager" else torch.compile(step_loss, mode=compile_mode)

        def run_steps(n):
            for _ in range(n):
                ids, tgt = next_batch()
                opt.zero_grad(set_to_none=True)
                fn(model, ids, tgt).backward()
                opt.step()
        return run_steps

    if mode != "graph":
        raise ValueError(f"unknown mode {mode!r}")
    opt = torch.optim.Adam(model.parameters(), capturable=True, **adam)
    s_ids, s_tgt = (t.clone() for t in batches[0])
    # Warm up on a side stream (allocator, cuBLAS workspaces, Adam state), then capture.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step_loss(model, s_ids, s_tgt).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = step_loss(model, s_ids, s_tgt)
        static_loss.backward()
        opt.step()

    def run_steps(n):
        for _ in range(n):
            ids, tgt = next_batch()
            s_ids.copy_(ids)
            s_tgt.copy_(tgt)
            graph.replay()
    run_steps.static_loss = static_loss  # graph output; keep alive for inspection
    return run_steps


def run_mode(mode, shape, args, device):
    n_items, d, L, batch = shape
    torch.manual_seed(0)
    model = SASRec(n_items, d, L, args.blocks, args.heads).to(device).train()
    batches = make_batches(8, n_items, L, batch, device, torch.Generator().manual_seed(1))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    run_steps = build_runner(mode, model, batches, device, args.compile_mode)
    run_steps(args.warmup)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_rep = [timed(device, run_steps, args.steps) for _ in range(args.repeats)]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"ms_median": statistics.median(per_rep), "ms_min": min(per_rep),
            "ms_repeats": per_rep, "peak_mib": peak}


def parse_shapes(args):
    if not args.shapes:
        return [(args.items, args.d, args.L, args.batch)]
    shapes = []
    for part in filter(None, (p.strip() for p in args.shapes.split(";"))):
        shapes.append(tuple(int(v) for v in part.split(":")))
        if len(shapes[-1]) != 4:
            raise SystemExit(f"bad shape {part!r}: want items:d:L:batch")
    return shapes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1683, help="catalog size incl. padding id 0")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--L", type=int, default=50)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--modes", default="eager,compile,graph")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    choices=["cuda", "cpu"])
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode (default, max-autotune-no-cudagraphs, ...)")
    ap.add_argument("--shapes", default=None, help="items:d:L:batch;items:d:L:batch")
    ap.add_argument("--json", default=None, help="write all results to this path")
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    device = torch.device(args.device)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {dev_name}; blocks={args.blocks} heads={args.heads} "
          f"steps={args.steps} warmup={args.warmup} repeats={args.repeats}", flush=True)

    results = []
    for shape in parse_shapes(args):
        for mode in modes:
            tag = "items={} d={} L={} batch={}".format(*shape)
            print(f"[{tag}] {mode} ...", flush=True)
            rec = {"items": shape[0], "d": shape[1], "L": shape[2], "batch": shape[3], "mode": mode}
            if mode == "graph" and device.type != "cuda":
                rec.update(status="skipped", error="CUDA graphs need a CUDA device")
                print(f"[{tag}] {mode}: skipped ({rec['error']})", flush=True)
                results.append(rec)
                continue
            try:
                rec.update(status="ok", **run_mode(mode, shape, args, device))
                print(f"[{tag}] {mode}: {rec['ms_median']:.3f} ms/step (min {rec['ms_min']:.3f})",
                      flush=True)
            except Exception as e:  # report and continue with the next mode
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
                rec.update(status="failed", error=f"{type(e).__name__}: {msg}")
                print(f"[{tag}] {mode}: FAILED {rec['error']}", flush=True)
            results.append(rec)
            if mode == "compile":
                torch._dynamo.reset()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()

    print("\n| shape (items:d:L:batch) | mode | ms/step (median) | min | peak MiB |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        shape = f"{r['items']}:{r['d']}:{r['L']}:{r['batch']}"
        if r["status"] != "ok":
            print(f"| {shape} | {r['mode']} | {r['status']}: {r['error']} | | |")
            continue
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        print(f"| {shape} | {r['mode']} | {r['ms_median']:.3f} | {r['ms_min']:.3f} | {peak} |")
    sys.stdout.flush()
    if args.json:
        meta = dict(vars(args), torch=torch.__version__, device_name=dev_name, tf32=False)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
        print(f"wrote {args.json}", flush=True)


if __name__ == "__main__":
    main()
