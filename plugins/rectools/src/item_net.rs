//! Item nets: port of RecTools' `rectools/models/nn/item_net.py` (docs/rectools.md §2.1).
//!
//! - [`IdEmbeddingsItemNet`]: one learnable row per internal item id (`nn.Embedding` with
//!   `padding_idx=0`: the PAD row keeps its initial value and never gets a gradient).
//! - [`CatFeaturesItemNet`]: sum of the embeddings of an item's categorical (feature, value)
//!   columns (`nn.EmbeddingBag(mode="sum")`), then dropout.
//! - [`SumOfEmbeddingsConstructor`]: the sum of the blocks' embeddings.

use recblocks_core::{
    candle::{DType, Tensor},
    components::item_net::{build_item_net_blocks, ItemNetBlock, ItemNetConstructor},
    kwargs::{decode_kwargs, NoKwargs},
    nn::{gather_rows, init, padding_row::frozen_first_row, scatter_add_rows, Dropout},
    serde_json::Value,
    BuildContext, ComponentKind, CoreError, Result,
};

const ID_NAME: &str = "IdEmbeddingsItemNet";
const CAT_NAME: &str = "CatFeaturesItemNet";
const SUM_NAME: &str = "SumOfEmbeddingsConstructor";

/// RecTools' `IdEmbeddingsItemNet`: parameter `ids_emb.weight` `[n_items, d]` (xavier-normal,
/// PAD row included). Row 0 (PAD) gets no gradient, as with torch's `padding_idx=0`
/// ([`frozen_first_row`]): it keeps its value. No dropout (RecTools ≥ 0.16).
pub struct IdEmbeddingsItemNet {
    weight: Tensor,
    n_factors: usize,
}

impl IdEmbeddingsItemNet {
    /// Builds the table for `ctx.schema.n_items` rows at width `ctx.n_factors`.
    pub fn new(ctx: &BuildContext<'_>) -> Result<Self> {
        let (n, d) = (ctx.schema.n_items, ctx.n_factors);
        if n == 0 || d == 0 {
            return Err(CoreError::invalid(
                ComponentKind::ItemNetBlock,
                ID_NAME,
                format!("needs at least one item row and a positive width, found n_items = {n}, n_factors = {d}"),
            ));
        }
        let weight =
            ctx.vb
                .pp("ids_emb")
                .get_with_hints((n, d), "weight", init::xavier_normal(&[n, d]))?;
        Ok(IdEmbeddingsItemNet {
            weight,
            n_factors: d,
        })
    }
}

impl ItemNetBlock for IdEmbeddingsItemNet {
    fn all_embeddings(&self, _train: bool) -> Result<Tensor> {
        Ok(frozen_first_row(&self.weight)?)
    }

    fn out_dim(&self) -> usize {
        self.n_factors
    }
}

fn build_id_embeddings(
    ctx: &BuildContext<'_>,
    kwargs: &Value,
) -> Result<Option<Box<dyn ItemNetBlock>>> {
    let _: NoKwargs = decode_kwargs(ComponentKind::ItemNetBlock, ID_NAME, kwargs)?;
    Ok(Some(Box::new(IdEmbeddingsItemNet::new(ctx)?)))
}

/// RecTools' `CatFeaturesItemNet`: parameter `embedding_bag.weight` `[n_values, d]`
/// (xavier-normal); item `i` gets the sum of the rows of its (feature, value) columns, then
/// `Dropout(dropout_rate)` in training. Items without columns (PAD, MASK) get zero vectors.
pub struct CatFeaturesItemNet {
    weight: Tensor,
    /// Column of each stored value, `[nnz]` u32 (`None` when the catalog has no values).
    value_ids: Option<Tensor>,
    /// Item row each stored value belongs to, `[nnz]` u32.
    owner_ids: Option<Tensor>,
    n_items: usize,
    n_factors: usize,
    dropout: Dropout,
}

impl CatFeaturesItemNet {
    /// RecTools' buffers of this block in a state_dict (`…item_net_blocks.{i}.{name}`): item
    /// `i`'s (feature, value) columns are `emb_bag_inputs[offsets[i] .. offsets[i] +
    /// input_lengths[i]]`. They are catalog data, not parameters: recblocks keeps them in the
    /// dataset schema's categorical features.
    pub const RECTOOLS_BUFFERS: [&'static str; 3] = ["offsets", "emb_bag_inputs", "input_lengths"];

    /// Builds the block, or `None` when the schema has no categorical features (or no columns),
    /// as RecTools' `from_dataset` returns None.
    pub fn new(ctx: &BuildContext<'_>) -> Result<Option<Self>> {
        let Some(cat) = ctx.schema.cat_features.as_ref() else {
            return Ok(None);
        };
        let n_values = cat.n_values();
        if n_values == 0 {
            return Ok(None);
        }
        let n_items = ctx.schema.n_items;
        cat.check(n_items)
            .map_err(|m| CoreError::invalid(ComponentKind::ItemNetBlock, CAT_NAME, m))?;
        let d = ctx.n_factors;
        let weight = ctx.vb.pp("embedding_bag").get_with_hints(
            (n_values, d),
            "weight",
            init::xavier_normal(&[n_values, d]),
        )?;
        let dev = ctx.device();
        let (value_ids, owner_ids) = if cat.values.is_empty() {
            (None, None)
        } else {
            let owners: Vec<u32> = cat
                .offsets
                .windows(2)
                .enumerate()
                .flat_map(|(i, w)| std::iter::repeat_n(i as u32, (w[1] - w[0]) as usize))
                .collect();
            (
                Some(Tensor::new(cat.values.as_slice(), dev)?),
                Some(Tensor::new(owners.as_slice(), dev)?),
            )
        };
        Ok(Some(CatFeaturesItemNet {
            weight,
            value_ids,
            owner_ids,
            n_items,
            n_factors: d,
            dropout: Dropout::new(ctx.spec.dropout_rate, ctx.rng.clone()),
        }))
    }
}

impl ItemNetBlock for CatFeaturesItemNet {
    fn all_embeddings(&self, train: bool) -> Result<Tensor> {
        let bags = match (&self.value_ids, &self.owner_ids) {
            (Some(values), Some(owners)) => {
                let rows = gather_rows(&self.weight, values)?;
                scatter_add_rows(&rows, owners, self.n_items)?
            }
            _ => Tensor::zeros(
                (self.n_items, self.n_factors),
                DType::F32,
                self.weight.device(),
            )?,
        };
        self.dropout.forward_t(&bags, train)
    }

    fn out_dim(&self) -> usize {
        self.n_factors
    }
}

fn build_cat_features(
    ctx: &BuildContext<'_>,
    kwargs: &Value,
) -> Result<Option<Box<dyn ItemNetBlock>>> {
    let _: NoKwargs = decode_kwargs(ComponentKind::ItemNetBlock, CAT_NAME, kwargs)?;
    Ok(CatFeaturesItemNet::new(ctx)?.map(|b| Box::new(b) as Box<dyn ItemNetBlock>))
}

/// RecTools' `SumOfEmbeddingsConstructor`: the blocks of `item_net_block_types` (those that apply
/// to the dataset), built at `ctx.n_factors` under `item_net_blocks.{i}`, summed.
pub struct SumOfEmbeddingsConstructor {
    blocks: Vec<Box<dyn ItemNetBlock>>,
    n_factors: usize,
}

impl SumOfEmbeddingsConstructor {
    /// Builds the blocks through the registry.
    pub fn new(ctx: &BuildContext<'_>, block_types: &[String]) -> Result<Self> {
        let blocks = build_item_net_blocks(ctx, block_types)?;
        if let Some(b) = blocks.iter().find(|b| b.out_dim() != ctx.n_factors) {
            return Err(CoreError::invalid(
                ComponentKind::ItemNetConstructor,
                SUM_NAME,
                format!(
                    "every block must be {} wide to be summed, one is {} wide",
                    ctx.n_factors,
                    b.out_dim()
                ),
            ));
        }
        Ok(SumOfEmbeddingsConstructor {
            blocks,
            n_factors: ctx.n_factors,
        })
    }

    /// Number of blocks that applied to the dataset.
    pub fn n_blocks(&self) -> usize {
        self.blocks.len()
    }
}

impl ItemNetConstructor for SumOfEmbeddingsConstructor {
    fn all_embeddings(&self, train: bool) -> Result<Tensor> {
        let mut blocks = self.blocks.iter();
        let Some(first) = blocks.next() else {
            return Err(CoreError::invalid(
                ComponentKind::ItemNetConstructor,
                SUM_NAME,
                "no item net blocks",
            ));
        };
        let mut sum = first.all_embeddings(train)?;
        for b in blocks {
            sum = (sum + b.all_embeddings(train)?)?;
        }
        Ok(sum)
    }

    fn out_dim(&self) -> usize {
        self.n_factors
    }
}

fn build_sum(
    ctx: &BuildContext<'_>,
    block_types: &[String],
    kwargs: &Value,
) -> Result<Box<dyn ItemNetConstructor>> {
    let _: NoKwargs = decode_kwargs(ComponentKind::ItemNetConstructor, SUM_NAME, kwargs)?;
    Ok(Box::new(SumOfEmbeddingsConstructor::new(ctx, block_types)?))
}

recblocks_core::register! {
    ItemNetBlockRegistration {
        name: ID_NAME,
        aliases: ["rectools.models.nn.item_net.IdEmbeddingsItemNet"],
        summary: "one learnable embedding per item id (PAD row frozen, as padding_idx=0)",
        build: build_id_embeddings,
    }
}

recblocks_core::register! {
    ItemNetBlockRegistration {
        name: CAT_NAME,
        aliases: ["rectools.models.nn.item_net.CatFeaturesItemNet"],
        summary: "sum of the embeddings of an item's categorical feature values, then dropout (skipped without features)",
        build: build_cat_features,
    }
}

recblocks_core::register! {
    ItemNetConstructorRegistration {
        name: SUM_NAME,
        aliases: ["rectools.models.nn.item_net.SumOfEmbeddingsConstructor"],
        summary: "item embeddings = sum of the item net blocks' embeddings",
        build: build_sum,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, env, Env};
    use recblocks_core::{
        candle::Device, schema::CatFeatureSchema, serde_json::json, DatasetSchema,
    };

    /// PAD + 3 items; 3 columns: item 1 has {0, 2}, item 2 has {1}, item 3 has none.
    fn cat_schema() -> DatasetSchema {
        let mut s = DatasetSchema::new(3, &["PAD"]);
        s.cat_features = Some(CatFeatureSchema {
            value_names: vec!["genre__a".into(), "genre__b".into(), "country__x".into()],
            offsets: vec![0, 0, 2, 3, 3],
            values: vec![0, 2, 1],
        });
        s
    }

    fn small_env(schema: DatasetSchema, dropout: f64) -> Result<Env> {
        env(
            json!({"n_factors": 2, "n_heads": 1, "dropout_rate": dropout}),
            schema,
        )
    }

    #[test]
    fn id_embeddings_pad_row_keeps_its_value_and_gets_no_gradient() -> Result<()> {
        let env = env(
            json!({"n_factors": 4, "n_heads": 1}),
            DatasetSchema::new(3, &["PAD"]),
        )?;
        let net = IdEmbeddingsItemNet::new(&env.ctx(1))?;
        let weight = env.param("ids_emb.weight")?;
        assert_eq!(weight.dims(), &[4, 4]);
        let all = net.all_embeddings(true)?;
        assert_eq!(all.to_vec2::<f32>()?, weight.to_vec2::<f32>()?);
        assert!(all.get(0)?.to_vec1::<f32>()?.iter().any(|v| *v != 0.0));

        // loss = Σ c ⊙ E with c = 1..16: d loss / d E[i] = c[i], except PAD (frozen).
        let c = Tensor::arange(1f32, 17., &Device::Cpu)?.reshape((4, 4))?;
        let ids = Tensor::new(&[0u32, 2, 0, 3, 1], &Device::Cpu)?;
        let loss = ((all * &c)?.sum_all()? + net.forward_t(&ids, true)?.sum_all()?)?;
        let grads = loss.backward()?;
        let g = grads
            .get(&weight)
            .ok_or_else(|| CoreError::Other("no gradient".into()))?
            .to_vec2::<f32>()?;
        assert_eq!(g[0], vec![0.0; 4]);
        assert_eq!(g[1], vec![5.0 + 1.0, 6.0 + 1.0, 7.0 + 1.0, 8.0 + 1.0]);
        assert_eq!(g[2], vec![10.0, 11.0, 12.0, 13.0]);
        assert_eq!(g[3], vec![14.0, 15.0, 16.0, 17.0]);
        Ok(())
    }

    #[test]
    fn id_embeddings_init_is_xavier_normal() -> Result<()> {
        // std = sqrt(2 / (n + d)) = sqrt(2 / 600) ≈ 0.0577 for a [400, 200] table.
        let env = env(
            json!({"n_factors": 200, "n_heads": 1}),
            DatasetSchema::new(399, &["PAD"]),
        )?;
        IdEmbeddingsItemNet::new(&env.ctx(5))?;
        let w = env.param("ids_emb.weight")?;
        let var = w.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
        let expected = 2.0 / 600.0;
        assert!(
            (var / expected - 1.0).abs() < 0.02,
            "var {var} vs {expected}"
        );
        Ok(())
    }

    #[test]
    fn cat_features_absent_gives_no_block() -> Result<()> {
        let env = small_env(DatasetSchema::new(3, &["PAD"]), 0.0)?;
        assert!(build_cat_features(&env.ctx(0), &Value::Null)?.is_none());
        assert!(env.param_names().is_empty());
        Ok(())
    }

    #[test]
    fn cat_features_sum_each_items_values() -> Result<()> {
        let env = small_env(cat_schema(), 0.5)?;
        let net = CatFeaturesItemNet::new(&env.ctx(0))?
            .ok_or_else(|| CoreError::Other("block expected".into()))?;
        let w = Tensor::new(&[[1f32, 2.], [10., 20.], [100., 200.]], &Device::Cpu)?;
        env.set_param("embedding_bag.weight", &w)?;
        // Item 1 = w0 + w2, item 2 = w1, item 3 and PAD = 0.
        let eval = net.all_embeddings(false)?;
        assert_eq!(
            eval.to_vec2::<f32>()?,
            vec![vec![0., 0.], vec![101., 202.], vec![10., 20.], vec![0., 0.]]
        );
        // Training applies dropout(0.5) after the sum: every entry is 0 or doubled.
        let train = net.all_embeddings(true)?.flatten_all()?.to_vec1::<f32>()?;
        let e = eval.flatten_all()?.to_vec1::<f32>()?;
        assert!(train
            .iter()
            .zip(&e)
            .all(|(t, e)| *t == 0.0 || (t - 2.0 * e).abs() < 1e-4));
        let mut differs = false;
        for _ in 0..5 {
            differs |= net.all_embeddings(true)?.flatten_all()?.to_vec1::<f32>()? != e;
        }
        assert!(differs);
        Ok(())
    }

    #[test]
    fn cat_features_gradient_reaches_used_columns() -> Result<()> {
        let env = small_env(cat_schema(), 0.0)?;
        let net = CatFeaturesItemNet::new(&env.ctx(0))?
            .ok_or_else(|| CoreError::Other("block expected".into()))?;
        let w = env.param("embedding_bag.weight")?;
        assert_eq!(w.dims(), &[3, 2]);
        // loss = Σ_i s_i · E[i] with s = [1, 2, 3, 4]: column 0 and 2 get 2, column 1 gets 3.
        let s = Tensor::new(&[[1f32], [2.], [3.], [4.]], &Device::Cpu)?;
        let loss = net.all_embeddings(true)?.broadcast_mul(&s)?.sum_all()?;
        let g = loss
            .backward()?
            .get(&w)
            .ok_or_else(|| CoreError::Other("no gradient".into()))?
            .to_vec2::<f32>()?;
        assert_eq!(g, vec![vec![2., 2.], vec![3., 3.], vec![2., 2.]]);
        Ok(())
    }

    #[test]
    fn cat_features_reject_a_broken_csr() -> Result<()> {
        let mut schema = cat_schema();
        if let Some(c) = schema.cat_features.as_mut() {
            c.offsets.pop();
        }
        let env = small_env(schema, 0.0)?;
        assert!(CatFeaturesItemNet::new(&env.ctx(0)).is_err());
        Ok(())
    }

    #[test]
    fn sum_constructor_adds_ids_and_features() -> Result<()> {
        let env = small_env(cat_schema(), 0.0)?;
        let types = vec![ID_NAME.to_string(), CAT_NAME.to_string()];
        let net = build_sum(&env.ctx(0), &types, &Value::Null)?;
        assert_eq!(net.out_dim(), 2);
        assert_eq!(
            env.param_names(),
            vec![
                "item_net_blocks.0.ids_emb.weight",
                "item_net_blocks.1.embedding_bag.weight"
            ]
        );
        let ids = Tensor::new(&[[0f32, 1.], [2., 3.], [4., 5.], [6., 7.]], &Device::Cpu)?;
        env.set_param("item_net_blocks.0.ids_emb.weight", &ids)?;
        let bag = Tensor::new(&[[1f32, 2.], [10., 20.], [100., 200.]], &Device::Cpu)?;
        env.set_param("item_net_blocks.1.embedding_bag.weight", &bag)?;
        let all = net.all_embeddings(false)?.flatten_all()?.to_vec1::<f32>()?;
        assert_close(&all, &[0., 1., 103., 205., 14., 25., 6., 7.], 0.0);
        Ok(())
    }

    #[test]
    fn sum_constructor_skips_inapplicable_blocks_and_checks_kwargs() -> Result<()> {
        let env = small_env(DatasetSchema::new(3, &["PAD"]), 0.0)?;
        let types = vec![
            "rectools.models.nn.item_net.IdEmbeddingsItemNet".to_string(),
            "rectools.models.nn.item_net.CatFeaturesItemNet".to_string(),
        ];
        let net = SumOfEmbeddingsConstructor::new(&env.ctx(0), &types)?;
        assert_eq!(net.n_blocks(), 1);
        assert_eq!(env.n_params(), 4 * 2);
        let only_cat = vec![CAT_NAME.to_string()];
        assert!(SumOfEmbeddingsConstructor::new(&env.ctx(0), &only_cat).is_err());
        let err = build_sum(&env.ctx(0), &types, &json!({"n_factors": 3}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("n_factors"), "{err}");
        Ok(())
    }
}
