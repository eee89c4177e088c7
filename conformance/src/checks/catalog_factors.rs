//! Similarity modules: the factors a module gives the softmax objective
//! (`Similarity::catalog_factors`) must multiply to its full-catalog logits, since the objective
//! then computes the loss from the factors alone, in chunks, and never sees the logits.

use candle_core::Tensor;
use recblocks_core::{components::similarity::Similarity, Result};

use super::module::values;
use crate::{harness::Probe, report::Outcome};

/// Relative tolerance of the comparison (f32 products of the same operands in another order).
const TOL: f32 = 1e-5;

/// `s · eᵀ` against `full_catalog_logits` on the harness probe and catalog.
pub(super) fn check(sim: &dyn Similarity, probe_len: usize, catalog: &Tensor) -> Result<Outcome> {
    let p = Probe::new(3, probe_len, 1.0)?;
    let Some((s, e)) = sim.catalog_factors(&p.x, catalog)? else {
        return Ok(Outcome::Skipped(
            "the module gives no factors (the objective materialises its logits)".into(),
        ));
    };
    let logits = sim.full_catalog_logits(&p.x, catalog)?;
    let (n, width) = e.dims2()?;
    let dims = s.dims().to_vec();
    if dims[..dims.len().saturating_sub(1)] != p.x.dims()[..p.x.dims().len() - 1]
        || dims.last() != Some(&width)
        || n != catalog.dim(0)?
    {
        return Ok(Outcome::Fail(format!(
            "factors {dims:?} and [{n}, {width}] for sessions {:?} and a catalog {:?}; expected \
             the sessions' leading dimensions, one item row per catalog row, and one width",
            p.x.dims(),
            catalog.dims()
        )));
    }
    let rows = s.elem_count() / width.max(1);
    let product = values(&s.reshape((rows, width))?.matmul(&e.t()?)?)?;
    let want = values(&logits)?;
    if product.len() != want.len() {
        return Ok(Outcome::Fail(format!(
            "the factors give {} logits, full_catalog_logits {}",
            product.len(),
            want.len()
        )));
    }
    for (i, (a, b)) in product.iter().zip(&want).enumerate() {
        let close = (a - b).abs() <= TOL * (1.0 + b.abs());
        if !close {
            return Ok(Outcome::Fail(format!(
                "logit {i} (session row {}, item {}): the factors give {a}, \
                 full_catalog_logits {b}",
                i / n,
                i % n
            )));
        }
    }
    Ok(Outcome::Pass)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use candle_core::{Device, Tensor};
    use recblocks_core::components::{Distance, Similarity};

    use super::check;
    use crate::report::Outcome;

    /// Dot products; `factor_scale` scales the item factor it gives (1: correct).
    struct Dot {
        factor_scale: f64,
        factors: bool,
    }

    impl Similarity for Dot {
        fn full_catalog_logits(
            &self,
            sessions: &Tensor,
            items: &Tensor,
        ) -> recblocks_core::Result<Tensor> {
            Ok(sessions.broadcast_matmul(&items.t()?)?)
        }
        fn catalog_factors(
            &self,
            sessions: &Tensor,
            items: &Tensor,
        ) -> recblocks_core::Result<Option<(Tensor, Tensor)>> {
            if !self.factors {
                return Ok(None);
            }
            Ok(Some((sessions.clone(), (items * self.factor_scale)?)))
        }
        fn candidate_logits(
            &self,
            _s: &Tensor,
            _i: &Tensor,
            _c: &Tensor,
        ) -> recblocks_core::Result<Tensor> {
            unreachable!("not used by the check")
        }
        fn distance(&self) -> Distance {
            Distance::Dot
        }
    }

    fn catalog() -> Tensor {
        Tensor::arange(0f32, 7.0 * crate::harness::D as f32, &Device::Cpu)
            .unwrap()
            .affine(0.1, -1.0)
            .unwrap()
            .reshape((7, crate::harness::D))
            .unwrap()
    }

    #[test]
    fn right_factors_pass_wrong_ones_fail_naming_the_logit_and_none_is_skipped() {
        let run = |factor_scale, factors| {
            check(
                &Dot {
                    factor_scale,
                    factors,
                },
                4,
                &catalog(),
            )
            .unwrap()
        };
        assert_eq!(run(1.0, true), Outcome::Pass);
        match run(1.001, true) {
            Outcome::Fail(msg) => assert!(msg.contains("logit") && msg.contains("item"), "{msg}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(matches!(run(1.0, false), Outcome::Skipped(_)));
    }
}
