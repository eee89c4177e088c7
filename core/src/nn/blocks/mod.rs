//! Single transformer blocks that several layer stacks reuse: RecTools' `SASRecTransformerLayer`
//! (`rectools/models/nn/transformers/sasrec.py`), `PreLNTransformerLayer`
//! (`rectools/models/nn/transformers/net_blocks.py`) and `LiGRLayer`
//! (`rectools/models/nn/transformers/ligr.py`); `docs/rectools.md` §3 gives the exact math.
//! Each has a fused CPU form ([`crate::nn::fused`]) with its own backward pass.
//!
//! Only the blocks live here. The stacks built from them (RecTools' `*TransformerLayers`,
//! ALBERT's shared groups) and their registrations live in the plugins, which decide how many
//! blocks there are, how they are named and how padding is handled between them.

pub mod ligr;
pub mod preln;
pub mod sasrec;

pub use ligr::{LiGRActivation, LiGRFeedForward, LiGRLayer};
pub use preln::PreLNTransformerLayer;
pub use sasrec::{SASRecTransformerLayer, LAST_LAYER_NORM_EPS};

/// LayerNorm epsilon of torch's default `nn.LayerNorm` (every block norm).
pub const LAYER_NORM_EPS: f64 = 1e-5;

#[cfg(test)]
pub(crate) mod test_util {
    //! A parameter map the block tests can read and overwrite by name.

    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use crate::{context::ParamStore, CoreError, Result};

    /// A fresh map and a var builder over it, initialised from `seed`.
    pub(crate) fn store(seed: u64) -> (VarMap, VarBuilder<'static>) {
        let varmap = VarMap::new();
        let vb = ParamStore::new(varmap.clone(), seed).into_var_builder(&Device::Cpu);
        (varmap, vb)
    }

    /// Sorted parameter names.
    pub(crate) fn names(varmap: &VarMap) -> Vec<String> {
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = data.keys().cloned().collect();
        names.sort();
        names
    }

    /// Overwrites a parameter in place (modules holding it see the new value).
    pub(crate) fn set(varmap: &VarMap, name: &str, value: &Tensor) -> Result<()> {
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        match data.get(name) {
            Some(v) => Ok(v.set(&value.to_dtype(DType::F32)?)?),
            None => Err(CoreError::Other(format!("no parameter `{name}`"))),
        }
    }

    /// Zeroes every weight matrix except the norms' (so sub-layers reduce to their biases).
    pub(crate) fn zero_projection_weights(varmap: &VarMap) -> Result<()> {
        for name in names(varmap) {
            if name.ends_with("weight") && !name.contains("norm") {
                let shape = {
                    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
                    data.get(&name).map(|v| v.shape().clone())
                };
                if let Some(shape) = shape {
                    set(
                        varmap,
                        &name,
                        &Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// torch `nn.LayerNorm` without affine parameters, in f64.
    pub(crate) fn ln(v: &[f64]) -> Vec<f64> {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        v.iter()
            .map(|x| (x - mean) / (var + super::LAYER_NORM_EPS).sqrt())
            .collect()
    }

    /// Asserts two float slices agree within `tol`.
    pub(crate) fn assert_close(actual: &[f32], expected: &[f64], tol: f64) {
        assert_eq!(actual.len(), expected.len(), "lengths differ");
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!(
                (*a as f64 - e).abs() <= tol,
                "element {i}: got {a}, expected {e} (tol {tol})"
            );
        }
    }

    /// A block's eval-mode forward pass: `(x, attention bias) -> [B, L', d]`.
    pub(crate) type BlockFn<'a> = &'a dyn Fn(&Tensor, Option<&Tensor>) -> Result<Tensor>;

    /// Checks that `forward_last` gives `forward_t`'s last position, `[B, 1, d]`, under no mask,
    /// the causal, the key padding and the merged mask, on a batch with a padded session.
    pub(crate) fn check_last_position(
        forward_t: BlockFn,
        forward_last: BlockFn,
        d: usize,
    ) -> Result<()> {
        let ids = Tensor::new(&[[0u32, 0, 3, 4, 5], [1, 2, 3, 4, 5]], &Device::Cpu)?;
        let n = 2 * 5 * d;
        let v: Vec<f32> = (0..n).map(|i| ((i * 37 % 17) as f32 - 8.0) / 4.0).collect();
        let x = Tensor::from_vec(v, (2, 5, d), &Device::Cpu)?;
        for (causal, key_padding) in [(false, false), (true, false), (false, true), (true, true)] {
            let masks = crate::components::AttentionMasks {
                timeline_mask: crate::nn::masks::timeline_mask(&ids)?,
                attn_bias: crate::nn::masks::attention_bias(&ids, causal, key_padding)?,
            };
            let full = forward_t(&x, masks.attn_bias.as_ref())?;
            let want = crate::components::last_position(&full)?;
            let got = forward_last(&x, masks.last_query_bias()?.as_ref())?;
            assert_eq!(
                got.dims(),
                &[2, 1, d],
                "causal {causal}, key padding {key_padding}"
            );
            let want: Vec<f64> = want
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|&w| w as f64)
                .collect();
            assert_close(&got.flatten_all()?.to_vec1::<f32>()?, &want, 1e-5);
        }
        Ok(())
    }
}
