//! The small world components are checked in: a resolved SASRec spec, a catalog, a parameter
//! map, and probe inputs with left padding.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use recblocks_core::{
    components::AttentionMasks, nn::masks, schema::CatFeatureSchema, serde_json::json,
    BuildContext, DatasetSchema, ModelSpec, ParamStore, Registry, Result, SharedRng,
};

/// Width of every component under test.
pub const D: usize = 8;
/// `session_max_len` of the spec.
pub const MAX_LEN: usize = 5;
/// Real items in the catalog (PAD is added).
pub const N_REAL: usize = 12;

/// What a build context borrows, plus the parameter map the component's parameters go into.
pub struct Harness<'r> {
    pub spec: ModelSpec,
    pub schema: DatasetSchema,
    pub registry: &'r Registry,
    pub varmap: VarMap,
    pub rng: SharedRng,
}

impl<'r> Harness<'r> {
    /// A harness whose spec has the given dropout rate.
    pub fn new(registry: &'r Registry, dropout_rate: f64) -> Result<Self> {
        let spec = ModelSpec::from_value(
            json!({
                "cls": "SASRecModel",
                "n_factors": D,
                "n_heads": 2,
                "n_blocks": 2,
                "session_max_len": MAX_LEN,
                "dropout_rate": dropout_rate,
            }),
            registry,
        )?;
        Ok(Harness {
            spec,
            schema: catalog_schema(),
            registry,
            varmap: VarMap::new(),
            rng: SharedRng::new(11),
        })
    }

    /// A build context whose parameters go into `self.varmap`, initialised from `seed`.
    pub fn ctx(&self, seed: u64) -> BuildContext<'_> {
        let vb = ParamStore::new(self.varmap.clone(), seed).into_var_builder(&Device::Cpu);
        BuildContext {
            spec: &self.spec,
            n_factors: D,
            schema: &self.schema,
            vb,
            rng: self.rng.clone(),
            registry: self.registry,
        }
    }

    /// Number of parameter elements in the map.
    pub fn n_params(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }
}

/// PAD plus [`N_REAL`] items; every real item has one or two of three categorical feature
/// values, so feature-based item nets apply.
fn catalog_schema() -> DatasetSchema {
    let mut schema = DatasetSchema::new(N_REAL, &["PAD"]);
    let mut offsets = vec![0u32, 0];
    let mut values = Vec::new();
    for i in 0..N_REAL {
        values.push((i % 3) as u32);
        if i % 2 == 0 {
            values.push(((i + 1) % 3) as u32);
        }
        offsets.push(values.len() as u32);
    }
    schema.cat_features = Some(CatFeatureSchema {
        value_names: vec!["genre__a".into(), "genre__b".into(), "country__x".into()],
        offsets,
        values,
    });
    schema
}

/// Probe inputs: item ids `[B, L]` (session `b` has `b` left PADs, at least one real item) and
/// embeddings `[B, L, D]` that are non-zero at padded positions too, scaled by `scale`.
#[derive(Clone)]
pub struct Probe {
    pub ids: Tensor,
    pub x: Tensor,
}

impl Probe {
    pub fn new(batch: usize, len: usize, scale: f64) -> Result<Self> {
        let mut ids = Vec::with_capacity(batch * len);
        for b in 0..batch {
            let pads = b.min(len.saturating_sub(1));
            for t in 0..len {
                ids.push(if t < pads {
                    0u32
                } else {
                    (1 + (3 * b + 5 * t) % N_REAL) as u32
                });
            }
        }
        let ids = Tensor::from_vec(ids, (batch, len), &Device::Cpu)?;
        let x = Tensor::arange(0f32, (batch * len * D) as f32, &Device::Cpu)?
            .affine(0.61, 0.3)?
            .sin()?
            .affine(scale, 0.0)?
            .reshape((batch, len, D))?;
        Ok(Probe { ids, x })
    }

    /// The same probe with different values at padded positions.
    pub fn perturb_padding(&self) -> Result<Self> {
        let pad = self.ids.eq(0u32)?.to_dtype(DType::F32)?.unsqueeze(2)?;
        let noise = self.x.affine(-3.0, 1.5)?;
        let x = (self.x.broadcast_mul(&pad.affine(-1.0, 1.0)?)? + noise.broadcast_mul(&pad)?)?;
        Ok(Probe {
            ids: self.ids.clone(),
            x,
        })
    }

    /// `[B, L, 1]`: 1 at real positions.
    pub fn real_positions(&self) -> Result<Tensor> {
        Ok(self.ids.ne(0u32)?.to_dtype(DType::F32)?.unsqueeze(2)?)
    }

    /// Causal attention with a key-padding mask, as a SASRec backbone gives them.
    pub fn masks(&self) -> Result<AttentionMasks> {
        Ok(AttentionMasks {
            timeline_mask: masks::timeline_mask(&self.ids)?,
            attn_bias: masks::attention_bias(&self.ids, true, true)?,
        })
    }
}

/// `Σ out ⊙ c` with `c` varying per element (so no normalisation makes the loss constant).
pub fn probe_loss(out: &Tensor) -> Result<Tensor> {
    let c = Tensor::arange(0f32, out.elem_count() as f32, out.device())?
        .affine(0.37, 0.0)?
        .sin()?
        .reshape(out.shape())?;
    Ok((out * c)?.sum_all()?)
}

/// A fresh path in the temporary directory.
pub fn temp_path(stem: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "recblocks-conformance-{}-{}-{stem}.safetensors",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}
