//! The small world components are checked in: a resolved SASRec spec, a catalog, a parameter
//! map, and probe inputs with left padding.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use recblocks_core::{
    components::AttentionMasks, nn::masks, schema::CatFeatureSchema, serde_json::json,
    DatasetSchema, Registry, Result, SharedRng, SpecInput,
};

use crate::env::TestEnv;

/// Width of every component under test.
pub const D: usize = 8;
/// `session_max_len` of the spec.
pub const MAX_LEN: usize = 5;
/// Real items in the catalog (PAD is added).
pub const N_REAL: usize = 12;

/// A test environment for the checks: a resolved SASRec spec of width [`D`] (2 heads, 2 blocks,
/// `session_max_len` [`MAX_LEN`]) with the given dropout rate, over [`catalog_schema`] and a copy
/// of `registry`.
pub fn env(registry: &Registry, dropout_rate: f64) -> Result<TestEnv> {
    let spec = SpecInput::from_value(json!({
        "cls": "SASRecModel",
        "n_factors": D,
        "n_heads": 2,
        "n_blocks": 2,
        "session_max_len": MAX_LEN,
        "dropout_rate": dropout_rate,
    }))?
    .resolve(registry)?;
    let mut env = TestEnv::new(spec, catalog_schema(), registry.clone());
    env.rng = SharedRng::new(11);
    Ok(env)
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

    /// `t` `[B, L, ...]` with 0 at padded positions, selected (not multiplied: NaN or infinity a
    /// component leaves at padded positions, as torch does for fully masked rows, is dropped).
    pub fn at_real_positions(&self, t: &Tensor) -> Result<Tensor> {
        let (b, l) = self.ids.dims2()?;
        let mut shape = vec![b, l];
        shape.extend(std::iter::repeat_n(1, t.rank().saturating_sub(2)));
        let real = self.ids.ne(0u32)?.reshape(shape)?.broadcast_as(t.shape())?;
        Ok(real.where_cond(t, &t.zeros_like()?)?)
    }

    /// Causal attention with a key-padding mask, as a SASRec backbone gives them.
    pub fn masks(&self) -> Result<AttentionMasks> {
        Ok(AttentionMasks {
            timeline_mask: masks::timeline_mask(&self.ids)?,
            attn_bias: masks::attention_bias(&self.ids, true, true)?,
        })
    }
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
