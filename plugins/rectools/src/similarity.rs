//! Similarity: port of RecTools' `DistanceSimilarityModule`
//! (`rectools/models/nn/transformers/similarity.py`, docs/rectools.md §2.4).
//!
//! Dot product or cosine (both sides divided by `max(||x||, 1e-8)`) between session encodings and
//! item embeddings, against the whole catalog (PAD/MASK columns included) or gathered candidates.

use serde::{Deserialize, Serialize};

use recblocks_core::{
    candle::{Tensor, D},
    components::{Distance, Similarity},
    kwargs::decode_kwargs,
    nn::{gather_dot, gather_rows},
    serde_json::Value,
    BuildContext, ComponentKind, CoreError, Result,
};

const NAME: &str = "DistanceSimilarityModule";
/// Smallest norm a vector is divided by in cosine mode (RecTools' `epsilon`).
pub const COSINE_EPSILON: f64 = 1e-8;

/// Kwargs of [`DistanceSimilarityModule`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistanceSimilarityKwargs {
    /// `"dot"` or `"cosine"`.
    pub distance: String,
}

impl Default for DistanceSimilarityKwargs {
    fn default() -> Self {
        DistanceSimilarityKwargs {
            distance: "dot".into(),
        }
    }
}

/// RecTools' `DistanceSimilarityModule` (no parameters).
#[derive(Debug, Clone)]
pub struct DistanceSimilarityModule {
    distance: Distance,
}

impl DistanceSimilarityModule {
    /// A module ranking by `distance`.
    pub fn new(distance: Distance) -> Self {
        DistanceSimilarityModule { distance }
    }

    /// Parses the kwargs' `distance`, naming the allowed values on error.
    pub fn from_kwargs(kwargs: &DistanceSimilarityKwargs) -> Result<Self> {
        let distance = match kwargs.distance.as_str() {
            "dot" => Distance::Dot,
            "cosine" => Distance::Cosine,
            other => {
                return Err(CoreError::BadKwargs {
                    kind: ComponentKind::Similarity,
                    component: NAME.into(),
                    message: format!(
                        "field `distance`: unknown value `{other}`, expected `dot` or `cosine`"
                    ),
                })
            }
        };
        Ok(Self::new(distance))
    }

    /// `x / max(||x||, 1e-8)` over the last dimension in cosine mode; `x` in dot mode. Written as
    /// `x / sqrt(max(||x||², 1e-16))` so a zero vector has a finite gradient.
    fn normalise(&self, x: &Tensor) -> Result<Tensor> {
        match self.distance {
            Distance::Dot => Ok(x.clone()),
            Distance::Cosine => {
                let sq = x.sqr()?.sum_keepdim(D::Minus1)?;
                let norm = sq.maximum(COSINE_EPSILON * COSINE_EPSILON)?.sqrt()?;
                Ok(x.broadcast_div(&norm)?)
            }
        }
    }
}

impl Similarity for DistanceSimilarityModule {
    fn session_tower(&self, sessions: &Tensor) -> Result<Tensor> {
        self.normalise(sessions)
    }

    fn item_tower(&self, items: &Tensor) -> Result<Tensor> {
        self.normalise(items)
    }

    fn full_catalog_logits(&self, sessions: &Tensor, item_embs: &Tensor) -> Result<Tensor> {
        let s = self.normalise(sessions)?;
        let items = self.normalise(item_embs)?;
        let (n, d) = items.dims2()?;
        let dims = s.dims().to_vec();
        if dims.last() != Some(&d) {
            return Err(CoreError::invalid(
                ComponentKind::Similarity,
                NAME,
                format!("sessions {dims:?} and item embeddings [{n}, {d}] differ in width"),
            ));
        }
        let rows = s.elem_count() / d.max(1);
        let logits = s.reshape((rows, d))?.matmul(&items.t()?)?;
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = n;
        }
        Ok(logits.reshape(out_dims)?)
    }

    fn catalog_factors(
        &self,
        sessions: &Tensor,
        item_embs: &Tensor,
    ) -> Result<Option<(Tensor, Tensor)>> {
        Ok(Some((
            self.normalise(sessions)?,
            self.normalise(item_embs)?,
        )))
    }

    fn candidate_logits(
        &self,
        sessions: &Tensor,
        item_embs: &Tensor,
        candidates: &Tensor,
    ) -> Result<Tensor> {
        // [B, d] sessions with [B, K] candidates: treat as L = 1.
        if sessions.rank() == 2 && candidates.rank() == 2 {
            let out = self.candidate_logits(
                &sessions.unsqueeze(1)?,
                item_embs,
                &candidates.unsqueeze(1)?,
            )?;
            return Ok(out.squeeze(1)?);
        }
        let s = self.normalise(sessions)?;
        let items = self.normalise(item_embs)?;
        let (b, l, d) = s.dims3()?;
        let (cb, cl, k) = candidates.dims3()?;
        let (_, di) = items.dims2()?;
        if cb != b || (cl != l && cl != 1) || di != d {
            return Err(CoreError::invalid(
                ComponentKind::Similarity,
                NAME,
                format!(
                    "candidates {:?} do not fit sessions {:?} and item embeddings {:?} \
                     (expected [B, L, K] or [B, 1, K])",
                    candidates.dims(),
                    s.dims(),
                    items.dims()
                ),
            ));
        }
        if cl == 1 {
            // [B, L, d] x [B, d, K] -> [B, L, K]
            let cand = gather_rows(&items, &candidates.flatten_all()?)?
                .reshape((b, k, d))?
                .transpose(1, 2)?
                .contiguous()?;
            Ok(s.contiguous()?.matmul(&cand)?)
        } else {
            // Per position: `items[cand] @ s.unsqueeze(-1)`, fused (no [B, L, K, d] copy).
            let logits = gather_dot(
                &s.reshape((b * l, d))?,
                &items,
                &candidates.reshape((b * l, k))?,
            )?;
            Ok(logits.reshape((b, l, k))?)
        }
    }

    fn distance(&self) -> Distance {
        self.distance
    }
}

fn build(_ctx: &BuildContext<'_>, kwargs: &Value) -> Result<Box<dyn Similarity>> {
    let kw: DistanceSimilarityKwargs = decode_kwargs(ComponentKind::Similarity, NAME, kwargs)?;
    Ok(Box::new(DistanceSimilarityModule::from_kwargs(&kw)?))
}

recblocks_core::register! {
    SimilarityRegistration {
        name: NAME,
        aliases: ["rectools.models.nn.transformers.similarity.DistanceSimilarityModule"],
        summary: "dot-product or cosine similarity between session encodings and item embeddings",
        kwargs: DistanceSimilarityKwargs,
        build: build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_close;
    use recblocks_core::{
        candle::{Device, Var},
        serde_json::json,
    };

    fn module(kwargs: Value) -> Result<DistanceSimilarityModule> {
        let kw: DistanceSimilarityKwargs = decode_kwargs(ComponentKind::Similarity, NAME, &kwargs)?;
        DistanceSimilarityModule::from_kwargs(&kw)
    }

    fn items() -> Result<Tensor> {
        // PAD, then [1, 0], [0, 1], [1, 1], and a zero item.
        Ok(Tensor::new(
            &[[0.5f32, 0.5], [1., 0.], [0., 1.], [1., 1.], [0., 0.]],
            &Device::Cpu,
        )?)
    }

    #[test]
    fn dot_logits_by_hand() -> Result<()> {
        let m = module(Value::Null)?;
        assert_eq!(m.distance(), Distance::Dot);
        let s = Tensor::new(&[[[1f32, 2.], [3., 4.]]], &Device::Cpu)?; // [1, 2, 2]
        let l = m.full_catalog_logits(&s, &items()?)?;
        assert_eq!(l.dims(), &[1, 2, 5]);
        assert_close(
            &l.flatten_all()?.to_vec1::<f32>()?,
            &[1.5, 1., 2., 3., 0., 3.5, 3., 4., 7., 0.],
            1e-6,
        );
        // [B, d] sessions give [B, N].
        let l2 = m.full_catalog_logits(&Tensor::new(&[[3f32, 4.]], &Device::Cpu)?, &items()?)?;
        assert_eq!(l2.to_vec2::<f32>()?, vec![vec![3.5, 3., 4., 7., 0.]]);
        Ok(())
    }

    #[test]
    fn cosine_logits_by_hand_with_zero_vectors() -> Result<()> {
        let m = module(json!({"distance": "cosine"}))?;
        assert_eq!(m.distance(), Distance::Cosine);
        // Session [3, 4] (norm 5) and a zero session.
        let s = Tensor::new(&[[[3f32, 4.], [0., 0.]]], &Device::Cpu)?;
        let l = m.full_catalog_logits(&s, &items()?)?;
        let r = 1.0 / 2f64.sqrt();
        assert_close(
            &l.flatten_all()?.to_vec1::<f32>()?,
            &[0.7 * 2.0 * r, 0.6, 0.8, 1.4 * r, 0., 0., 0., 0., 0., 0.],
            1e-6,
        );
        // The gradient through a zero vector is finite.
        let v = Var::new(&[[0f32, 0.], [1., 2.]], &Device::Cpu)?;
        let g = m
            .full_catalog_logits(v.as_tensor(), &items()?)?
            .sum_all()?
            .backward()?;
        let g = g
            .get(v.as_tensor())
            .ok_or_else(|| CoreError::Other("no gradient".into()))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
        // Towers normalise in cosine mode.
        let t = m.item_tower(&Tensor::new(&[[3f32, 4.]], &Device::Cpu)?)?;
        assert_close(&t.flatten_all()?.to_vec1::<f32>()?, &[0.6, 0.8], 1e-6);
        Ok(())
    }

    #[test]
    fn candidate_logits_equal_gathered_full_catalog_logits() -> Result<()> {
        let dev = Device::Cpu;
        let s = Tensor::new(
            &[
                [[1f32, 2.], [3., -4.], [0.5, 0.]],
                [[-1., 1.], [2., 2.], [0., 3.]],
            ],
            &dev,
        )?;
        for distance in ["dot", "cosine"] {
            let m = module(json!({ "distance": distance }))?;
            let full = m.full_catalog_logits(&s, &items()?)?.to_vec3::<f32>()?;
            // Per-position candidates [B, L, K].
            let per_pos = [[[1u32, 4], [0, 2], [3, 3]], [[2, 1], [4, 0], [1, 3]]];
            let c = m.candidate_logits(&s, &items()?, &Tensor::new(&per_pos, &dev)?)?;
            let c = c.to_vec3::<f32>()?;
            for b in 0..2 {
                for l in 0..3 {
                    for k in 0..2 {
                        let id = per_pos[b][l][k] as usize;
                        assert!((c[b][l][k] - full[b][l][id]).abs() < 1e-6);
                    }
                }
            }
            // Shared candidates [B, 1, K] broadcast over L.
            let shared = [[[3u32, 1, 2]], [[0, 4, 4]]];
            let c = m.candidate_logits(&s, &items()?, &Tensor::new(&shared, &dev)?)?;
            assert_eq!(c.dims(), &[2, 3, 3]);
            let c = c.to_vec3::<f32>()?;
            for b in 0..2 {
                for l in 0..3 {
                    for k in 0..3 {
                        let id = shared[b][0][k] as usize;
                        assert!((c[b][l][k] - full[b][l][id]).abs() < 1e-6);
                    }
                }
            }
        }
        // [B, d] with [B, K].
        let m = module(Value::Null)?;
        let c = m.candidate_logits(
            &Tensor::new(&[[1f32, 2.]], &dev)?,
            &items()?,
            &Tensor::new(&[[3u32, 2]], &dev)?,
        )?;
        assert_eq!(c.to_vec2::<f32>()?, vec![vec![3., 2.]]);
        Ok(())
    }

    #[test]
    fn unknown_distance_names_the_allowed_values() {
        let err = module(json!({"distance": "euclidean"}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("euclidean") && err.contains("dot") && err.contains("cosine"),
            "{err}"
        );
        let err = module(json!({"metric": "dot"}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("metric"), "{err}");
    }
}
