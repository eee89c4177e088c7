"""RecTools custom components equal to recblocks' `albert` plugin (plugins/albert/src/), so that
ALSASRec / ALBERT-BERT4Rec specs run on RecTools too (run_rectools.py maps the spec's short
names `AlbertSumConstructor` and `AlbertLayers` to `albert.AlbertSumConstructor` and
`albert.AlbertLayers`; this directory must be on sys.path, which run_rectools.py ensures).

- AlbertSumConstructor: factorized item embeddings. Every item net block is built at width
  `emb_factors` (e), the blocks are summed and projected by `item_emb_proj` (Linear e → n_factors,
  with bias; HF's `embedding_hidden_mapping_in`). The weight is xavier-normal initialised by
  RecTools' lightning module like every >=2-D parameter, the bias keeps torch's default init.
- AlbertLayers: cross-layer sharing with HF ALBERT's groups: `n_hidden_groups` (G) groups of
  `n_inner_groups` (I) distinct layers; `n_blocks` steps, step s runs every inner layer of group
  `s * G // n_blocks`. `layer_type` "PreLN" wraps RecTools' PreLNTransformerLayer (no timeline
  masking, no final norm, as PreLNTransformerLayers); "SASRec" wraps SASRecTransformerLayer with
  the timeline mask before every application and after the last, then `last_layernorm`
  (eps 1e-8), as SASRecTransformerLayers.

Unlike the RecTools customization guide's version, every allocated layer runs, the schedule is
HF's, `out_dim` is n_factors, and both classes accept **kwargs (the current backbone passes
`batch=`).
"""

from __future__ import annotations

import typing as tp

import torch
from torch import nn

from rectools.models.nn.item_net import ItemNetBase, SumOfEmbeddingsConstructor
from rectools.models.nn.transformers.net_blocks import PreLNTransformerLayer, TransformerLayersBase
from rectools.models.nn.transformers.sasrec import SASRecTransformerLayer


class AlbertSumConstructor(SumOfEmbeddingsConstructor):
    """item_emb_proj(sum of item net blocks built at width emb_factors)."""

    def __init__(
        self,
        n_items: int,
        n_factors: int,
        item_net_blocks: tp.Sequence[ItemNetBase],
        emb_factors: int = 16,
        **kwargs: tp.Any,
    ) -> None:
        super().__init__(n_items=n_items, item_net_blocks=item_net_blocks)
        self.n_factors = n_factors
        self.emb_factors = emb_factors
        self.item_emb_proj = nn.Linear(emb_factors, n_factors)

    @classmethod
    def from_dataset(cls, dataset, n_factors, dropout_rate, item_net_block_types, emb_factors=16, **kwargs):
        blocks = []
        for block_type in item_net_block_types:
            block = block_type.from_dataset(dataset, emb_factors, dropout_rate)
            if block is not None:
                blocks.append(block)
        return cls(dataset.item_id_map.size, n_factors, blocks, emb_factors)

    @classmethod
    def from_dataset_schema(cls, dataset_schema, n_factors, dropout_rate, item_net_block_types, emb_factors=16, **kwargs):
        blocks = []
        for block_type in item_net_block_types:
            block = block_type.from_dataset_schema(dataset_schema, emb_factors, dropout_rate)
            if block is not None:
                blocks.append(block)
        return cls(dataset_schema.items.n_hot, n_factors, blocks, emb_factors)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_emb_proj(super().forward(items))

    @property
    def out_dim(self) -> int:
        return self.n_factors


class AlbertLayers(TransformerLayersBase):
    """G x I shared layers applied over n_blocks steps (HF ALBERT group schedule)."""

    def __init__(
        self,
        n_blocks: int,
        n_factors: int,
        n_heads: int,
        dropout_rate: float,
        ff_factors_multiplier: int = 4,
        n_hidden_groups: int = 1,
        n_inner_groups: int = 1,
        layer_type: str = "PreLN",
        **kwargs: tp.Any,
    ) -> None:
        super().__init__()
        if n_hidden_groups < 1 or n_inner_groups < 1 or n_blocks < 1 or n_blocks % n_hidden_groups:
            raise ValueError(
                f"AlbertLayers: n_blocks ({n_blocks}) must be a positive multiple of n_hidden_groups "
                f"({n_hidden_groups}), n_inner_groups ({n_inner_groups}) at least 1"
            )
        if layer_type not in ("PreLN", "SASRec"):
            raise ValueError(f'AlbertLayers: unknown layer_type `{layer_type}`; expected "PreLN", "SASRec"')
        self.sasrec = layer_type == "SASRec"

        def make() -> nn.Module:
            if self.sasrec:
                return SASRecTransformerLayer(n_factors, n_heads, dropout_rate)
            return PreLNTransformerLayer(n_factors, n_heads, dropout_rate, ff_factors_multiplier)

        self.albert_layer_groups = nn.ModuleList(
            [nn.ModuleList([make() for _ in range(n_inner_groups)]) for _ in range(n_hidden_groups)]
        )
        self.applications = [
            (step * n_hidden_groups // n_blocks, inner) for step in range(n_blocks) for inner in range(n_inner_groups)
        ]
        self.last_layernorm = nn.LayerNorm(n_factors, eps=1e-8) if self.sasrec else None

    def forward(self, seqs, timeline_mask, attn_mask, key_padding_mask, **kwargs):
        for group, inner in self.applications:
            if self.sasrec:
                seqs = seqs * timeline_mask
            seqs = self.albert_layer_groups[group][inner](seqs, attn_mask, key_padding_mask)
        if self.last_layernorm is not None:
            seqs = self.last_layernorm(seqs * timeline_mask)
        return seqs
