//! Positional encoding: port of RecTools' `LearnableInversePositionalEncoding`
//! (`rectools/models/nn/transformers/net_blocks.py`, docs/rectools.md §2.2).
//!
//! Sessions are left-padded, so positions are counted from the end: in a length-`L` input,
//! position `j` gets `pos_emb[L - 1 - j]` and the most recent item always gets row 0.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use recblocks_core::{
    candle::Tensor,
    components::PositionalEncoding,
    kwargs::decode_kwargs,
    nn::{add_position_rows, init, PositionRows},
    serde_json::Value,
    BuildContext, ComponentKind, CoreError, Result,
};

const NAME: &str = "LearnableInversePositionalEncoding";

/// Kwargs of [`LearnableInversePositionalEncoding`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearnableInversePositionalEncodingKwargs {
    /// Multiply the session embeddings by `sqrt(n_factors)` before adding positions.
    pub use_scale_factor: bool,
}

/// RecTools' `LearnableInversePositionalEncoding`: parameter `pos_emb.weight`
/// `[session_max_len, d]` (xavier-normal) when the spec's `use_pos_emb` is on.
pub struct LearnableInversePositionalEncoding {
    pos_emb: Option<Tensor>,
    /// The rows `session_max_len − 1, …, 0` on the parameters' device, made once: the full-length
    /// input takes them without a copy to the device each step (a captured step could not make
    /// them when they pass 4 KiB, `recblocks_core::nn::capture`).
    full_rows: Option<PositionRows>,
    scale: Option<f64>,
    session_max_len: usize,
}

impl LearnableInversePositionalEncoding {
    /// Builds the encoding from `use_pos_emb`, `session_max_len` and the context's width.
    pub fn new(
        ctx: &BuildContext<'_>,
        kwargs: &LearnableInversePositionalEncodingKwargs,
    ) -> Result<Self> {
        let (l, d) = (ctx.spec.session_max_len, ctx.n_factors);
        let pos_emb = if ctx.spec.use_pos_emb {
            if l == 0 {
                return Err(CoreError::invalid(
                    ComponentKind::PositionalEncoding,
                    NAME,
                    "session_max_len must be at least 1",
                ));
            }
            Some(ctx.vb.pp("pos_emb").get_with_hints(
                (l, d),
                "weight",
                init::xavier_normal(&[l, d]),
            )?)
        } else {
            None
        };
        let full_rows = match &pos_emb {
            Some(p) => Some(PositionRows::from_end(l, p.device())?),
            None => None,
        };
        Ok(LearnableInversePositionalEncoding {
            pos_emb,
            full_rows,
            scale: kwargs.use_scale_factor.then(|| (d as f64).sqrt()),
            session_max_len: l,
        })
    }
}

impl PositionalEncoding for LearnableInversePositionalEncoding {
    fn forward_t(&self, sessions: &Tensor, _train: bool) -> Result<Tensor> {
        let (_, l, _) = sessions.dims3()?;
        let mut x = match self.scale {
            Some(s) => (sessions * s)?,
            None => sessions.clone(),
        };
        if let Some(pos_emb) = &self.pos_emb {
            if l > self.session_max_len {
                return Err(CoreError::invalid(
                    ComponentKind::PositionalEncoding,
                    NAME,
                    format!(
                        "sessions have {l} positions, more than session_max_len = {}",
                        self.session_max_len
                    ),
                ));
            }
            let rows = match &self.full_rows {
                Some(rows) if l == self.session_max_len => Cow::Borrowed(rows),
                _ => Cow::Owned(PositionRows::from_end(l, pos_emb.device())?),
            };
            // x[b, j] + pos_emb[L-1-j]: one graph node on a GPU.
            x = add_position_rows(&x, pos_emb, &rows)?;
        }
        Ok(x)
    }
}

fn build(ctx: &BuildContext<'_>, kwargs: &Value) -> Result<Box<dyn PositionalEncoding>> {
    let kw: LearnableInversePositionalEncodingKwargs =
        decode_kwargs(ComponentKind::PositionalEncoding, NAME, kwargs)?;
    Ok(Box::new(LearnableInversePositionalEncoding::new(ctx, &kw)?))
}

recblocks_core::register! {
    PositionalEncodingRegistration {
        name: NAME,
        aliases: ["rectools.models.nn.transformers.net_blocks.LearnableInversePositionalEncoding"],
        summary: "learnable positional embeddings counted from the most recent item (row 0 = last position)",
        kwargs: LearnableInversePositionalEncodingKwargs,
        build: build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{self, assert_close, Env};
    use recblocks_core::{candle::Device, serde_json::json, DatasetSchema};

    fn env(use_pos_emb: bool) -> Result<Env> {
        test_util::env(
            json!({"n_factors": 2, "n_heads": 1, "session_max_len": 3, "use_pos_emb": use_pos_emb}),
            DatasetSchema::new(4, &["PAD"]),
        )
    }

    fn set_rows(env: &Env) -> Result<()> {
        let rows = Tensor::new(&[[1f32, 10.], [2., 20.], [3., 30.]], &Device::Cpu)?;
        env.set_param("pos_emb.weight", &rows)
    }

    #[test]
    fn most_recent_position_gets_row_zero() -> Result<()> {
        let env = env(true)?;
        let pe = build(&env.ctx(0), &Value::Null)?;
        set_rows(&env)?;
        // L = 2 < session_max_len: positions [0, 1] get rows [1, 0].
        let x = Tensor::new(&[[[0.5f32, 0.5], [0., 0.]]], &Device::Cpu)?;
        let y = pe.forward_t(&x, true)?.flatten_all()?.to_vec1::<f32>()?;
        assert_close(&y, &[2.5, 20.5, 1., 10.], 1e-6);
        // L = 3: rows [2, 1, 0], tiled over the batch.
        let x = Tensor::zeros((2, 3, 2), recblocks_core::candle::DType::F32, &Device::Cpu)?;
        let y = pe.forward_t(&x, false)?.to_vec3::<f32>()?;
        for b in y {
            assert_eq!(b, vec![vec![3., 30.], vec![2., 20.], vec![1., 10.]]);
        }
        Ok(())
    }

    #[test]
    fn scale_factor_multiplies_by_sqrt_d_before_adding() -> Result<()> {
        let env = env(true)?;
        let pe = build(&env.ctx(0), &json!({"use_scale_factor": true}))?;
        set_rows(&env)?;
        let x = Tensor::new(&[[[1f32, -2.]]], &Device::Cpu)?;
        let y = pe.forward_t(&x, false)?.flatten_all()?.to_vec1::<f32>()?;
        let s = 2f64.sqrt();
        assert_close(&y, &[s + 1.0, -2.0 * s + 10.0], 1e-6);
        Ok(())
    }

    #[test]
    fn without_pos_emb_it_is_the_identity_and_has_no_parameters() -> Result<()> {
        let env = env(false)?;
        let pe = build(&env.ctx(0), &Value::Null)?;
        assert!(env.param_names().is_empty());
        let x = Tensor::new(&[[[1f32, -2.], [3., 4.], [5., 6.], [7., 8.]]], &Device::Cpu)?;
        assert_eq!(
            pe.forward_t(&x, false)?.to_vec3::<f32>()?,
            x.to_vec3::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn parameter_shape_and_errors() -> Result<()> {
        let env = env(true)?;
        let pe = build(&env.ctx(0), &Value::Null)?;
        assert_eq!(env.param("pos_emb.weight")?.dims(), &[3, 2]);
        let too_long = Tensor::zeros((1, 4, 2), recblocks_core::candle::DType::F32, &Device::Cpu)?;
        let err = pe.forward_t(&too_long, false).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("session_max_len"));
        let err = build(&env.ctx(0), &json!({"use_scale": true}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("use_scale") && err.contains("use_scale_factor"),
            "{err}"
        );
        Ok(())
    }
}
