//! Item nets (RecTools `rectools/models/nn/item_net.py`): blocks give item embeddings from one
//! source (ids, categorical features); a constructor combines the blocks.

use candle_core::Tensor;
use serde_json::Value;

use crate::{context::BuildContext, Result};

/// One source of item embeddings (`IdEmbeddingsItemNet`, `CatFeaturesItemNet`).
pub trait ItemNetBlock: Send + Sync {
    /// Embeddings of the whole catalog, `[n_items, out_dim]` (row = internal item id).
    fn all_embeddings(&self, train: bool) -> Result<Tensor>;
    /// Embeddings of the given internal ids, `[.., out_dim]`.
    fn forward_t(&self, items: &Tensor, train: bool) -> Result<Tensor> {
        Ok(crate::nn::gather_rows(&self.all_embeddings(train)?, items)?)
    }
    /// Width of the embeddings.
    fn out_dim(&self) -> usize;
    /// The number of parameter elements the component created, when it declares it; the
    /// conformance suite compares it with the parameter map. `None`: not declared.
    fn n_params(&self) -> Option<usize> {
        None
    }
}

/// Builds a block at width `ctx.n_factors`. `Ok(None)` means "not applicable to this dataset"
/// (e.g. categorical features absent), as RecTools' `from_dataset` returning None.
pub type BuildItemNetBlock =
    fn(ctx: &BuildContext<'_>, kwargs: &Value) -> Result<Option<Box<dyn ItemNetBlock>>>;

/// Combines item net blocks into the item embeddings the model uses.
pub trait ItemNetConstructor: Send + Sync {
    /// Embeddings of the whole catalog, `[n_items, out_dim]`.
    fn all_embeddings(&self, train: bool) -> Result<Tensor>;
    /// Width of the embeddings (the model's `n_factors`).
    fn out_dim(&self) -> usize;
    /// The number of parameter elements the component created, when it declares it; the
    /// conformance suite compares it with the parameter map. `None`: not declared.
    fn n_params(&self) -> Option<usize> {
        None
    }
}

/// Builds a constructor from the spec's `item_net_block_types` (resolved through the registry by
/// the constructor itself, at the width it chooses) and its kwargs.
pub type BuildItemNetConstructor = fn(
    ctx: &BuildContext<'_>,
    block_types: &[String],
    kwargs: &Value,
) -> Result<Box<dyn ItemNetConstructor>>;

/// Builds every block of `block_types` at width `ctx.n_factors` under
/// `item_net_blocks.{i}` (i counts the blocks that applied, as RecTools' `ModuleList`), each with
/// its kwargs from the spec's `item_net_block_kwargs` (`null` when it has none there).
pub fn build_item_net_blocks(
    ctx: &BuildContext<'_>,
    block_types: &[String],
) -> Result<Vec<Box<dyn ItemNetBlock>>> {
    let mut blocks = Vec::new();
    for name in block_types {
        let registration = ctx.registry.item_net_block(name)?;
        let kwargs = ctx
            .spec
            .item_net_block_kwargs
            .get(registration.info.name)
            .unwrap_or(&Value::Null);
        let sub = ctx.pp("item_net_blocks").pp(blocks.len());
        if let Some(block) = (registration.build)(&sub, kwargs)? {
            blocks.push(block);
        }
    }
    if blocks.is_empty() {
        return Err(crate::CoreError::Spec(format!(
            "item_net_block_types {block_types:?}: no item net block applies to this dataset \
             (at least one is needed; IdEmbeddingsItemNet always applies)"
        )));
    }
    Ok(blocks)
}
