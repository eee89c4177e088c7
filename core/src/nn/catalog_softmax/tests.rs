//! The chunked catalog loss against hand-computed values and against materialised logits.

use candle_core::{DType, Device, Result, Tensor, Var};

use super::{catalog_softmax_loss, chunked, materialised};

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}, element {i}: {x} vs {y}"
        );
    }
}

fn values(len: usize, salt: usize, spread: f32) -> Vec<f32> {
    (0..len)
        .map(|i| ((((i + salt) * 7919) % 997) as f32 / 997.0 - 0.5) * spread)
        .collect()
}

#[test]
fn the_loss_by_hand() -> Result<()> {
    // Two sessions, three items, d = 2; logits = s·eᵀ / 2.
    // s0 = [1, 0] → logits [0.5, 0, 1], target 2: ce = ln(e^0.5 + 1 + e) − 1, weight 2.
    // s1 = [0, 2] → logits [0, 1, 0], target 1: ce = ln(2 + e) − 1, weight 0.5.
    let dev = Device::Cpu;
    let s = Tensor::new(&[[1f32, 0.], [0., 2.]], &dev)?;
    let e = Tensor::new(&[[1f32, 0.], [0., 1.], [2., 0.]], &dev)?;
    let t = Tensor::new(&[2u32, 1], &dev)?;
    let w = Tensor::new(&[2f32, 0.5], &dev)?;
    let e1 = std::f64::consts::E;
    let ce0 = (0.5f64.exp() + 1.0 + e1).ln() - 1.0;
    let ce1 = (2.0 + e1).ln() - 1.0;
    let want = (2.0 * ce0 + 0.5 * ce1) / 2.0;
    let got = catalog_softmax_loss(&s, &e, &t, &w, 2.0)?.to_scalar::<f32>()?;
    assert!((f64::from(got) - want).abs() < 1e-6, "{got} vs {want}");
    Ok(())
}

/// Value and both gradients, chunked (`rows` rows per chunk) against materialised logits, with an
/// upstream gradient other than 1.
fn compare(rows: usize, temperature: f64) -> Result<()> {
    let dev = Device::Cpu;
    let (m, n, d) = (11, 37, 5);
    let t = Tensor::new(&[3u32, 0, 36, 1, 17, 0, 20, 5, 5, 9, 2], &dev)?;
    let w = Tensor::new(&[1f32, 1., 2., 0., 0.5, 1., 1., 3., 1., 0.25, 1.], &dev)?;
    let run = |in_chunks: bool| -> Result<(f32, Vec<f32>, Vec<f32>)> {
        let s = Var::from_vec(values(m * d, 1, 4.0), (m, d), &dev)?;
        let e = Var::from_vec(values(n * d, 5, 3.0), (n, d), &dev)?;
        let loss = if in_chunks {
            chunked(s.as_tensor(), e.as_tensor(), &t, &w, temperature, rows)?
        } else {
            materialised(s.as_tensor(), e.as_tensor(), &t, &w, temperature)?
        };
        let grads = (&loss * 2.5)?.backward()?;
        let g = |v: &Var| -> Result<Vec<f32>> {
            grads
                .get(v.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?
                .flatten_all()?
                .to_vec1()
        };
        Ok((loss.to_scalar()?, g(&s)?, g(&e)?))
    };
    let (l_c, gs_c, ge_c) = run(true)?;
    let (l_m, gs_m, ge_m) = run(false)?;
    close(&[l_c], &[l_m], 1e-6, "loss");
    close(&gs_c, &gs_m, 1e-5, "sessions' gradient");
    close(&ge_c, &ge_m, 1e-5, "items' gradient");
    // The ignored rows (targets 0) get no gradient; the weight-0 row neither.
    for row in [1, 3, 5] {
        assert!(
            gs_c[row * d..(row + 1) * d].iter().all(|&v| v == 0.0),
            "row {row}"
        );
    }
    Ok(())
}

#[test]
fn chunks_give_the_loss_and_gradients_of_materialised_logits() -> Result<()> {
    for rows in [1, 3, 4, 11, 64] {
        compare(rows, 1.0)?;
        compare(rows, 0.7)?;
    }
    Ok(())
}

#[test]
fn untracked_inputs_give_the_value_alone() -> Result<()> {
    let dev = Device::Cpu;
    let s = Tensor::from_vec(values(12, 2, 2.0), (4, 3), &dev)?;
    let e = Tensor::from_vec(values(18, 3, 2.0), (6, 3), &dev)?;
    let t = Tensor::new(&[1u32, 2, 0, 5], &dev)?;
    let w = Tensor::new(&[1f32, 1., 1., 2.], &dev)?;
    let got = chunked(&s, &e, &t, &w, 1.0, 2)?;
    assert!(!got.track_op());
    let want = materialised(&s, &e, &t, &w, 1.0)?;
    close(&[got.to_scalar()?], &[want.to_scalar()?], 1e-6, "loss");
    Ok(())
}

#[test]
fn no_positive_loss_gives_nan_as_in_rectools() -> Result<()> {
    let dev = Device::Cpu;
    let s = Tensor::ones((2, 3), candle_core::DType::F32, &dev)?;
    let e = Tensor::ones((4, 3), candle_core::DType::F32, &dev)?;
    let t = Tensor::new(&[0u32, 0], &dev)?;
    let w = Tensor::new(&[1f32, 1.], &dev)?;
    let got = catalog_softmax_loss(&s, &e, &t, &w, 1.0)?.to_scalar::<f32>()?;
    assert!(got.is_nan(), "{got}");
    Ok(())
}

#[test]
fn bad_inputs_are_refused_with_what_was_found() -> Result<()> {
    let dev = Device::Cpu;
    let s = Tensor::ones((2, 3), candle_core::DType::F32, &dev)?;
    let e = Tensor::ones((4, 3), candle_core::DType::F32, &dev)?;
    let w = Tensor::new(&[1f32, 1.], &dev)?;
    let msg = |r: Result<Tensor>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let t = Tensor::new(&[1u32, 4], &dev)?;
    let m = msg(catalog_softmax_loss(&s, &e, &t, &w, 1.0));
    assert!(
        m.contains("row 1 has target 4") && m.contains("4 items"),
        "{m}"
    );
    let t = Tensor::new(&[1u32, 2], &dev)?;
    let m = msg(catalog_softmax_loss(&s, &e, &t, &w, 0.0));
    assert!(m.contains("temperature 0"), "{m}");
    let narrow = Tensor::ones((4, 2), candle_core::DType::F32, &dev)?;
    let m = msg(catalog_softmax_loss(&s, &narrow, &t, &w, 1.0));
    assert!(m.contains("[2, 3]") && m.contains("[4, 2]"), "{m}");
    Ok(())
}

/// Sessions `[B, L, d]` with targets and weights `[B, L]` (or `[B·L]`): the loss and gradients of
/// the flattened call, bit for bit, the sessions' gradient in their own shape, and no reshape node
/// (the loss reads the sessions and the items directly); on the reference path (f64) the same
/// values as the flattened call.
#[test]
fn sessions_of_any_rank_give_the_flattened_loss_without_a_reshape_node() -> Result<()> {
    let dev = Device::Cpu;
    let (b, l, n, d) = (3, 4, 9, 5);
    let t = Tensor::new(&[[3u32, 0, 8, 1], [0, 0, 2, 5], [7, 7, 1, 0]], &dev)?;
    let w = Tensor::new(
        &[[1f32, 1., 2., 0.5], [1., 1., 1., 3.], [0.25, 1., 1., 1.]],
        &dev,
    )?;
    let run = |dtype: DType,
               shaped: bool,
               flat_targets: bool|
     -> Result<(f64, Vec<f64>, Vec<f64>, usize)> {
        let var = |v: Vec<f32>, dims: &[usize]| {
            Var::from_tensor(&Tensor::from_vec(v, dims, &dev)?.to_dtype(dtype)?)
        };
        let s = var(values(b * l * d, 1, 4.0), &[b, l, d])?;
        let e = var(values(n * d, 5, 3.0), &[n, d])?;
        let sessions = match shaped {
            true => s.as_tensor().clone(),
            false => s.as_tensor().reshape((b * l, d))?,
        };
        let (t, w) = match flat_targets {
            true => (t.flatten_all()?, w.flatten_all()?),
            false => (t.clone(), w.clone()),
        };
        let loss = catalog_softmax_loss(&sessions, e.as_tensor(), &t, &w, 0.7)?;
        let nodes = loss.sorted_nodes().len();
        let grads = (&loss * 2.5)?.backward()?;
        let g = |v: &Var, dims: &[usize]| -> Result<Vec<f64>> {
            let g = grads
                .get(v.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
            assert_eq!(g.dims(), dims);
            g.flatten_all()?.to_dtype(DType::F64)?.to_vec1()
        };
        let value = loss.to_dtype(DType::F64)?.to_scalar()?;
        Ok((value, g(&s, &[b, l, d])?, g(&e, &[n, d])?, nodes))
    };
    // f32: the chunked loss (when the fused paths are on, as in every test); f64: the reference.
    for dtype in [DType::F32, DType::F64] {
        let (loss, gs, ge, _) = run(dtype, false, true)?;
        assert!(loss.is_finite() && gs.iter().any(|&g| g != 0.0));
        for flat_targets in [false, true] {
            let (l2, gs2, ge2, nodes) = run(dtype, true, flat_targets)?;
            assert_eq!((l2, &gs2, &ge2), (loss, &gs, &ge), "{dtype:?}");
            if dtype == DType::F32 && crate::nn::fused::enabled() {
                // The loss, the sessions and the items.
                assert_eq!(nodes, 3);
            }
        }
    }
    let s = Tensor::ones((2, 2, 3), DType::F32, &dev)?;
    let e = Tensor::ones((4, 3), DType::F32, &dev)?;
    let m = catalog_softmax_loss(&s, &e, &Tensor::new(&[1u32, 2], &dev)?, &w, 1.0)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        m.contains("[4] or [2, 2]") && m.contains("found [2]"),
        "{m}"
    );
    Ok(())
}

/// The device path's total: RecTools' `Σ l / count(l > 0)` and the gradients' factor
/// `1 / (count · temperature)`, by hand; NaN when no row has a positive loss.
#[test]
fn the_total_of_the_rows_by_hand() -> Result<()> {
    let dev = Device::Cpu;
    let total = |l: &[f32], t: f64| -> Result<Vec<f32>> {
        Tensor::new(l, &dev)?
            .apply_op1_no_bwd(&super::LossTotal { temperature: t })?
            .to_vec1()
    };
    // Rows 2 and 3 have a loss (sum 5, count 2); ignored rows have 0.
    assert_eq!(total(&[2.0, 0.0, 3.0, 0.0], 0.5)?, [2.5, 1.0]);
    assert_eq!(total(&[1.5], 1.0)?, [1.5, 1.0]);
    let none = total(&[0.0, 0.0], 1.0)?;
    assert!(none[0].is_nan() && none[1].is_infinite(), "{none:?}");
    Ok(())
}
