//! `AlbertSumConstructor`: ALBERT's factorized embeddings for item nets, the constructor of
//! RecTools' customization guide (docs/rectools.md §5) with the E → H mapping of HuggingFace's
//! `AlbertTransformer.embedding_hidden_mapping_in`
//! ([`modeling_albert.py`](https://github.com/huggingface/transformers/blob/main/src/transformers/models/albert/modeling_albert.py),
//! docs/rectools.md §8).
//!
//! Every item net block of `item_net_block_types` is built at width `emb_factors` (e), the
//! blocks are summed, and a linear layer `item_emb_proj` (e → `n_factors`, with bias) maps the
//! sum to the model's width: `N·e + e·d + d` parameters instead of `N·d` for the id table
//! (plus categorical feature tables at width e).
//!
//! PAD row: as in RecTools, the projection bias makes the PAD (and MASK) embedding non-zero,
//! `W·pad_row + b`, even though the id block's PAD row is frozen (no gradient reaches it). Kept
//! for parity, not corrected: whether padded positions reach real ones is decided downstream,
//! by SASRec's timeline masking or BERT4Rec's key padding mask, exactly as with RecTools' own
//! layers.

use serde::{Deserialize, Serialize};

use recblocks_core::{
    candle::Tensor,
    candle_nn::Module,
    components::item_net::{build_item_net_blocks, ItemNetBlock, ItemNetConstructor},
    kwargs::decode_kwargs,
    nn::{linear, Linear},
    serde_json::Value,
    BuildContext, ComponentKind, CoreError, Result,
};

const NAME: &str = "AlbertSumConstructor";

/// Kwargs of [`AlbertSumConstructor`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlbertSumConstructorKwargs {
    /// Width e of the item net blocks (ALBERT's `embedding_size`); default 16, as the guide's
    /// `AlbertSumConstructor.__init__`.
    pub emb_factors: usize,
}

impl Default for AlbertSumConstructorKwargs {
    fn default() -> Self {
        AlbertSumConstructorKwargs { emb_factors: 16 }
    }
}

/// Factorized item embeddings: `item_emb_proj(Σ_blocks block_embeddings)`, with blocks
/// `item_net_blocks.{i}` at width `emb_factors` and `item_emb_proj` a Linear
/// (`emb_factors → n_factors`, xavier-normal weight, torch-default bias).
pub struct AlbertSumConstructor {
    item_net_blocks: Vec<Box<dyn ItemNetBlock>>,
    item_emb_proj: Linear,
    emb_factors: usize,
    n_factors: usize,
}

impl AlbertSumConstructor {
    /// Builds the blocks of `block_types` (those that apply to the dataset) at width
    /// `kwargs.emb_factors` through the registry, then the projection to `ctx.n_factors`.
    pub fn new(
        ctx: &BuildContext<'_>,
        block_types: &[String],
        kwargs: &AlbertSumConstructorKwargs,
    ) -> Result<Self> {
        let (e, d) = (kwargs.emb_factors, ctx.n_factors);
        if e == 0 || d == 0 {
            return Err(CoreError::invalid(
                ComponentKind::ItemNetConstructor,
                NAME,
                format!("emb_factors ({e}) and n_factors ({d}) must both be at least 1"),
            ));
        }
        let item_net_blocks = build_item_net_blocks(&ctx.with_width(e), block_types)?;
        if let Some(b) = item_net_blocks.iter().find(|b| b.out_dim() != e) {
            return Err(CoreError::invalid(
                ComponentKind::ItemNetConstructor,
                NAME,
                format!(
                    "every item net block must be emb_factors = {e} wide to be summed, one is {} \
                     wide",
                    b.out_dim()
                ),
            ));
        }
        let item_emb_proj = linear(e, d, true, &ctx.vb.pp("item_emb_proj"))?;
        Ok(AlbertSumConstructor {
            item_net_blocks,
            item_emb_proj,
            emb_factors: e,
            n_factors: d,
        })
    }

    /// Width e of the blocks, before the projection.
    pub fn emb_factors(&self) -> usize {
        self.emb_factors
    }

    /// Number of blocks that applied to the dataset.
    pub fn n_blocks(&self) -> usize {
        self.item_net_blocks.len()
    }

    /// The summed block embeddings before the projection, `[n_items, emb_factors]`.
    pub fn factorized_embeddings(&self, train: bool) -> Result<Tensor> {
        let mut blocks = self.item_net_blocks.iter();
        let Some(first) = blocks.next() else {
            return Err(CoreError::invalid(
                ComponentKind::ItemNetConstructor,
                NAME,
                "no item net blocks",
            ));
        };
        let mut sum = first.all_embeddings(train)?;
        for b in blocks {
            sum = (sum + b.all_embeddings(train)?)?;
        }
        Ok(sum)
    }
}

impl ItemNetConstructor for AlbertSumConstructor {
    fn all_embeddings(&self, train: bool) -> Result<Tensor> {
        Ok(self
            .item_emb_proj
            .forward(&self.factorized_embeddings(train)?)?)
    }

    /// `n_factors`: the projection's width (RecTools' guide reports `emb_factors` here, a bug).
    fn out_dim(&self) -> usize {
        self.n_factors
    }
}

fn build(
    ctx: &BuildContext<'_>,
    block_types: &[String],
    kwargs: &Value,
) -> Result<Box<dyn ItemNetConstructor>> {
    let kw: AlbertSumConstructorKwargs =
        decode_kwargs(ComponentKind::ItemNetConstructor, NAME, kwargs)?;
    Ok(Box::new(AlbertSumConstructor::new(ctx, block_types, &kw)?))
}

recblocks_core::register! {
    ItemNetConstructorRegistration {
        name: NAME,
        summary: "ALBERT factorized embeddings: item net blocks at width emb_factors, summed, projected to n_factors by item_emb_proj",
        kwargs: AlbertSumConstructorKwargs,
        build: build,
    }
}

#[cfg(test)]
mod tests {
    use recblocks_core::kwargs::default_kwargs_json;

    use super::*;
    use recblocks_core::serde_json::json;

    #[test]
    fn kwargs_default_to_the_guides_width_and_reject_unknown_fields() -> Result<()> {
        assert_eq!(
            default_kwargs_json::<AlbertSumConstructorKwargs>(),
            json!({"emb_factors": 16})
        );
        let kw: AlbertSumConstructorKwargs = decode_kwargs(
            ComponentKind::ItemNetConstructor,
            NAME,
            &json!({"emb_factors": 64}),
        )?;
        assert_eq!(kw.emb_factors, 64);
        let err = decode_kwargs::<AlbertSumConstructorKwargs>(
            ComponentKind::ItemNetConstructor,
            NAME,
            &json!({"embedding_size": 64}),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("embedding_size") && err.contains("emb_factors"),
            "{err}"
        );
        Ok(())
    }
}
