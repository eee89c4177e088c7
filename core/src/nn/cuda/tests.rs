//! Each CUDA op against the CPU op it stands beside, on the same inputs (and the same dropout
//! keys): forward to 1e-5 and gradients to 1e-4, relative (‖gpu − cpu‖ / ‖cpu‖), dropout exactly.
//!
//! These run only where a CUDA device opens. Without one they print that they were skipped, unless
//! `RECBLOCKS_CUDA_TESTS=1` (set by `bench/gpu/run.sh` on the GPU machine), where a missing device
//! fails them.

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::{
    context::SharedRng,
    nn::{catalog_softmax_loss, softmax::softmax_last_dim, Dropout, LayerNorm},
};

/// The GPU, or `None` (skip) where none opens and the tests were not required.
fn gpu(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            assert!(
                std::env::var("RECBLOCKS_CUDA_TESTS").as_deref() != Ok("1"),
                "{test}: RECBLOCKS_CUDA_TESTS=1 but no CUDA device opens: {e}"
            );
            eprintln!("{test}: skipped, no CUDA device ({e})");
            None
        }
    }
}

/// Deterministic values in about [-2, 2] (a different stream per `salt`).
fn values(n: usize, salt: u64) -> Vec<f32> {
    let mut s = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn rel_err(gpu: &Tensor, cpu: &Tensor) -> Result<f64> {
    let g = gpu
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let c = cpu.to_dtype(DType::F64)?.flatten_all()?;
    let diff = (g - &c)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = c.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let err = diff / norm.max(1e-30);
    assert!(err.is_finite(), "non-finite difference");
    Ok(err)
}

fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor, tol: f64) -> Result<()> {
    let err = rel_err(gpu, cpu)?;
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
    Ok(())
}

/// A variable with the same values on the CPU and the GPU.
fn pair(shape: &[usize], salt: u64, gpu: &Device) -> Result<(Var, Var)> {
    let n = shape.iter().product();
    let v = values(n, salt);
    Ok((
        Var::from_vec(v.clone(), shape, &Device::Cpu)?,
        Var::from_vec(v, shape, gpu)?,
    ))
}

/// `Σ y·r` for fixed weights `r`, so that every output element has its own upstream gradient.
fn weighted_sum(y: &Tensor, salt: u64) -> Result<Tensor> {
    let r = Tensor::from_vec(values(y.elem_count(), salt), y.shape(), y.device())?;
    (y * r)?.sum_all()
}

/// Each `(name, cpu variable, gpu variable)`'s gradient in `gg` against its CPU gradient in `gc`,
/// to 1e-4 relative.
fn assert_grads_close(
    what: &str,
    gc: &candle_core::backprop::GradStore,
    gg: &candle_core::backprop::GradStore,
    vars: &[(&str, &Var, &Var)],
) -> Result<()> {
    for (name, c, g) in vars {
        let (Some(a), Some(b)) = (gc.get(c.as_tensor()), gg.get(g.as_tensor())) else {
            return Err(candle_core::Error::Msg(format!(
                "{what}: no {name} gradient"
            )));
        };
        assert_close(&format!("{what}: {name} gradient"), b, a, 1e-4)?;
    }
    Ok(())
}

/// The backward pass of `loss`: the scope's where one was opened (then `weight`, a parameter of
/// `what`, must not be a graph node: its gradient was written to the scope), else candle's.
fn backward_in(
    scope: Option<crate::nn::ParamGradScope>,
    loss: &Tensor,
    weight: &Var,
    what: &str,
) -> Result<candle_core::backprop::GradStore> {
    let in_graph = loss.sorted_nodes().iter().any(|t| t.id() == weight.id());
    assert_eq!(
        in_graph,
        scope.is_none(),
        "{what}: the weight is a graph node"
    );
    match scope {
        Some(scope) => scope.backward(loss),
        None => loss.backward(),
    }
}

#[test]
fn cuda_dropout_draws_the_cpu_mask_forward_and_backward() -> Result<()> {
    let Some(dev) = gpu("cuda_dropout") else {
        return Ok(());
    };
    let shape = [7, 13, 111]; // 10,101 elements: a ragged last Philox block
    let (xc, xg) = pair(&shape, 1, &dev)?;
    for p in [0.1, 0.2, 0.5] {
        let yc = Dropout::new(p, SharedRng::new(99))
            .forward_t(xc.as_tensor(), true)
            .map_err(candle_core::Error::wrap)?;
        let yg = Dropout::new(p, SharedRng::new(99))
            .forward_t(xg.as_tensor(), true)
            .map_err(candle_core::Error::wrap)?;
        let (a, b) = (
            yc.flatten_all()?.to_vec1::<f32>()?,
            yg.to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        assert_eq!(a, b, "p = {p}: the GPU mask differs from the CPU mask");
        let gc = weighted_sum(&yc, 2)?.backward()?;
        let gg = weighted_sum(&yg, 2)?.backward()?;
        let (Some(gc), Some(gg)) = (gc.get(xc.as_tensor()), gg.get(xg.as_tensor())) else {
            return Err(candle_core::Error::Msg("dropout: no input gradient".into()));
        };
        assert_close("dropout input gradient", gg, gc, 0.0)?;
        // The same mask with a residual sum in one kernel (a block node's dropout and residual).
        let (rc, rg) = pair(&shape, 3, &dev)?;
        let draw = || {
            Dropout::new(p, SharedRng::new(98))
                .draw()
                .ok_or_else(|| candle_core::Error::Msg("no mask drawn".into()))
        };
        let zc = crate::nn::dropout::apply_mask_add(xc.as_tensor(), draw()?, rc.as_tensor())?;
        let zg = crate::nn::dropout::apply_mask_add(xg.as_tensor(), draw()?, rg.as_tensor())?;
        assert_eq!(
            zc.flatten_all()?.to_vec1::<f32>()?,
            zg.to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            "p = {p}: the GPU's dropout with a residual differs from the CPU's"
        );
    }
    Ok(())
}

#[test]
fn cuda_layer_norm_matches_the_cpu_op() -> Result<()> {
    let Some(dev) = gpu("cuda_layer_norm") else {
        return Ok(());
    };
    // `scoped`: the GPU norm built under a trainer's parameter-gradient scope, a node over its
    // input alone that writes the weight's and bias's gradients to the scope.
    let shapes = [&[300, 64][..], &[257, 100], &[3, 1024], &[4, 25, 64]];
    for (shape, scoped) in shapes.iter().flat_map(|s| [(*s, false), (*s, true)]) {
        let d = shape[shape.len() - 1];
        let rows = shape.iter().product::<usize>() / d;
        let (xc, xg) = pair(shape, 3, &dev)?;
        let (wc, wg) = pair(&[d], 4, &dev)?;
        let (bc, bg) = pair(&[d], 5, &dev)?;
        let lc = LayerNorm::from_tensors(wc.as_tensor().clone(), bc.as_tensor().clone(), 1e-5);
        let lg = LayerNorm::from_tensors(wg.as_tensor().clone(), bg.as_tensor().clone(), 1e-5);
        let yc = lc
            .forward(xc.as_tensor())
            .map_err(candle_core::Error::wrap)?;
        let scope = scoped.then(crate::nn::ParamGradScope::enter);
        let yg = lg
            .forward(xg.as_tensor())
            .map_err(candle_core::Error::wrap)?;
        assert_close("layer norm output", &yg, &yc, 1e-5)?;
        let gc = weighted_sum(&yc, 6)?.backward()?;
        let gg = backward_in(scope, &weighted_sum(&yg, 6)?, &wg, "layer norm")?;
        let vars = [
            ("input", &xc, &xg),
            ("weight", &wc, &wg),
            ("bias", &bc, &bg),
        ];
        let what = format!("layer norm [{rows}, {d}] (scoped {scoped})");
        assert_grads_close(&what, &gc, &gg, &vars)?;
    }
    Ok(())
}

#[test]
fn cuda_softmax_matches_the_cpu_op_with_masked_scores() -> Result<()> {
    let Some(dev) = gpu("cuda_softmax") else {
        return Ok(());
    };
    let (b, h, l) = (4, 2, 50);
    let (xc, xg) = pair(&[b, h, l, l], 7, &dev)?;
    // A causal mask: -inf above the diagonal, as the attention bias adds.
    let mut mask = vec![0f32; l * l];
    for i in 0..l {
        for j in i + 1..l {
            mask[i * l + j] = f32::NEG_INFINITY;
        }
    }
    let mc = Tensor::from_vec(mask.clone(), (1, 1, l, l), &Device::Cpu)?;
    let mg = Tensor::from_vec(mask, (1, 1, l, l), &dev)?;
    let yc = softmax_last_dim(&xc.as_tensor().broadcast_add(&mc)?)?;
    let yg = softmax_last_dim(&xg.as_tensor().broadcast_add(&mg)?)?;
    assert_close("softmax output", &yg, &yc, 1e-5)?;
    let gc = weighted_sum(&yc, 8)?.backward()?;
    let gg = weighted_sum(&yg, 8)?.backward()?;
    let (Some(a), Some(g)) = (gc.get(xc.as_tensor()), gg.get(xg.as_tensor())) else {
        return Err(candle_core::Error::Msg("softmax: no input gradient".into()));
    };
    assert_close("softmax input gradient", g, a, 1e-4)
}

/// Targets in `[0, n)` for `m` rows, a fifth of them 0 (padding, ignored), and weights in
/// `[0, 2)`: each as a (CPU, `dev`) pair.
#[allow(clippy::type_complexity)]
fn targets_and_weights(
    m: usize,
    n: usize,
    seed: u64,
    dev: &Device,
) -> Result<((Tensor, Tensor), (Tensor, Tensor))> {
    let targets: Vec<u32> = values(m, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if i % 5 == 0 {
                0
            } else {
                ((v + 2.0) / 4.0 * (n - 1) as f32) as u32 + 1
            }
        })
        .map(|t| t.min(n as u32 - 1))
        .collect();
    let weights: Vec<f32> = values(m, seed + 1).iter().map(|v| v / 2.0 + 1.0).collect();
    Ok((
        (
            Tensor::from_vec(targets.clone(), m, &Device::Cpu)?,
            Tensor::from_vec(targets, m, dev)?,
        ),
        (
            Tensor::from_vec(weights.clone(), m, &Device::Cpu)?,
            Tensor::from_vec(weights, m, dev)?,
        ),
    ))
}

/// RecTools' catalog softmax loss and its gradients on the GPU against the CPU's (chunked
/// there): in one chunk (the default size), in chunks of each size in `chunks`, and with the
/// sessions as `[1, M, d]` and targets and weights `[1, M]` (the softmax objective's shapes; no
/// reshape node). Sessions `(sc, sg)`, items `(ec, eg)`, targets and weights as CPU/GPU pairs.
fn catalog_loss_matches_the_cpu(
    (sc, sg): (&Var, &Var),
    (ec, eg): (&Var, &Var),
    (tc, tg): (&Tensor, &Tensor),
    (wc, wg): (&Tensor, &Tensor),
    chunks: &[usize],
) -> Result<()> {
    let lc = catalog_softmax_loss(sc.as_tensor(), ec.as_tensor(), tc, wc, 0.7)?;
    let gc = lc.backward()?;
    let ways = [None, Some(0)]
        .into_iter()
        .chain(chunks.iter().map(|&r| Some(r)));
    for rows in ways {
        let lg = match rows {
            None => catalog_softmax_loss(sg.as_tensor(), eg.as_tensor(), tg, wg, 0.7)?,
            Some(0) => catalog_softmax_loss(
                &sg.as_tensor().unsqueeze(0)?,
                eg.as_tensor(),
                &tg.unsqueeze(0)?,
                &wg.unsqueeze(0)?,
                0.7,
            )?,
            Some(r) => crate::nn::catalog_softmax::chunked_on_device(
                sg.as_tensor(),
                eg.as_tensor(),
                tg,
                wg,
                0.7,
                r,
            )?,
        };
        assert_close(
            &format!("catalog softmax loss, chunks {rows:?}"),
            &lg,
            &lc,
            1e-5,
        )?;
        let gg = lg.backward()?;
        for (what, c, g) in [("sessions", sc, sg), ("items", ec, eg)] {
            let (Some(a), Some(b)) = (gc.get(c.as_tensor()), gg.get(g.as_tensor())) else {
                return Err(candle_core::Error::Msg(format!(
                    "catalog loss: no {what} gradient"
                )));
            };
            assert_close(
                &format!("catalog loss {what} gradient, chunks {rows:?}"),
                b,
                a,
                1e-4,
            )?;
        }
    }
    Ok(())
}

#[test]
fn cuda_cross_entropy_and_catalog_loss_match_the_cpu_ops() -> Result<()> {
    let Some(dev) = gpu("cuda_cross_entropy") else {
        return Ok(());
    };
    let (m, d, n) = (333, 64, 1683);
    let (sc, sg) = pair(&[m, d], 9, &dev)?;
    let (ec, eg) = pair(&[n, d], 10, &dev)?;
    let ((tc, tg), (wc, wg)) = targets_and_weights(m, n, 11, &dev)?;
    // The per-row cross-entropy on materialised logits.
    let zc = sc.as_tensor().matmul(&ec.as_tensor().t()?)?;
    let zg = sg.as_tensor().matmul(&eg.as_tensor().t()?)?;
    let cc = crate::nn::softmax_cross_entropy_ignore_0(&zc, &tc)?;
    let cg = crate::nn::softmax_cross_entropy_ignore_0(&zg, &tg)?;
    assert_close("cross-entropy rows", &cg, &cc, 1e-5)?;
    let gc = weighted_sum(&cc, 13)?.backward()?;
    let gg = weighted_sum(&cg, 13)?.backward()?;
    for (what, c, g) in [("sessions", &sc, &sg), ("items", &ec, &eg)] {
        let (Some(a), Some(b)) = (gc.get(c.as_tensor()), gg.get(g.as_tensor())) else {
            return Err(candle_core::Error::Msg(format!(
                "cross-entropy: no {what} gradient"
            )));
        };
        assert_close(&format!("cross-entropy {what} gradient"), b, a, 1e-4)?;
    }
    // Rows of 1,683 logits: one block a row (`rb_catalog_rows`); seven chunks of 50 rows too.
    catalog_loss_matches_the_cpu((&sc, &sg), (&ec, &eg), (&tc, &tg), (&wc, &wg), &[50])
}

#[test]
fn cuda_catalog_loss_over_rows_longer_than_a_segment_matches_the_cpu_op() -> Result<()> {
    // Rows of 9,000 logits: three segments of 4,096 a row, two launches
    // (`rb_catalog_row_parts`, `rb_catalog_row_grads`); in one chunk and in chunks of 40 rows.
    let Some(dev) = gpu("cuda_catalog_loss_long_rows") else {
        return Ok(());
    };
    let (m, d, n) = (150, 32, 9_000);
    let (sc, sg) = pair(&[m, d], 15, &dev)?;
    let (ec, eg) = pair(&[n, d], 16, &dev)?;
    let ((tc, tg), (wc, wg)) = targets_and_weights(m, n, 17, &dev)?;
    catalog_loss_matches_the_cpu((&sc, &sg), (&ec, &eg), (&tc, &tg), (&wc, &wg), &[40])?;
    // A target past the catalog makes the loss NaN, as on the CPU.
    let mut bad = tc.to_vec1::<u32>()?;
    bad[1] = n as u32 + 3;
    let bad = Tensor::from_vec(bad, m, &dev)?;
    let loss = crate::nn::catalog_softmax::chunked_on_device(
        sg.as_tensor(),
        eg.as_tensor(),
        &bad,
        &wg,
        1.0,
        m,
    )?;
    let loss = loss.to_scalar::<f32>()?;
    assert!(
        loss.is_nan(),
        "a target past the catalog gave the loss {loss}"
    );
    Ok(())
}

#[test]
fn cuda_cross_entropy_gives_nan_for_a_target_outside_the_catalog() -> Result<()> {
    let Some(dev) = gpu("cuda_cross_entropy_bad_target") else {
        return Ok(());
    };
    let z = Tensor::from_vec(values(2 * 5, 14), (2, 5), &dev)?;
    let t = Tensor::from_vec(vec![3u32, 5], 2, &dev)?;
    let ce = crate::nn::softmax_cross_entropy_ignore_0(&z, &t)?.to_vec1::<f32>()?;
    assert!(ce[0].is_finite() && ce[1].is_nan(), "{ce:?}");
    Ok(())
}

#[test]
fn cuda_attention_weights_match_the_cpu_op_with_each_bias_and_dropout() -> Result<()> {
    let Some(dev) = gpu("cuda_attention_weights") else {
        return Ok(());
    };
    let (b, h, l) = (4, 2, 37);
    // Ids padded on the left (row i has i + 1 padding positions).
    let ids: Vec<u32> = (0..b * l)
        .map(|i| if i % l <= i / l { 0 } else { 1 + i as u32 })
        .collect();
    let ids_c = Tensor::from_vec(ids.clone(), (b, l), &Device::Cpu)?;
    let ids_g = Tensor::from_vec(ids, (b, l), &dev)?;
    let wrap = candle_core::Error::wrap;
    let biases = [
        (
            "causal",
            Some(crate::nn::masks::causal_bias(l, &Device::Cpu).map_err(wrap)?),
            Some(crate::nn::masks::causal_bias(l, &dev).map_err(wrap)?),
        ),
        (
            "padding",
            Some(crate::nn::masks::key_padding_bias(&ids_c).map_err(wrap)?),
            Some(crate::nn::masks::key_padding_bias(&ids_g).map_err(wrap)?),
        ),
        (
            "merged",
            Some(crate::nn::masks::merged_bias(&ids_c).map_err(wrap)?),
            Some(crate::nn::masks::merged_bias(&ids_g).map_err(wrap)?),
        ),
        ("none", None, None),
    ];
    for (name, bc, bg) in &biases {
        for train in [false, true] {
            let (sc, sg) = pair(&[b, h, l, l], 15, &dev)?;
            let dc = Dropout::new(0.2, SharedRng::new(21));
            let dg = Dropout::new(0.2, SharedRng::new(21));
            let apply = |s: &Var, bias: Option<&Tensor>, d: &Dropout| -> Result<Tensor> {
                crate::nn::attention_weights::attention_weights(s.as_tensor(), bias, 0.3, d, train)?
                    .ok_or_else(|| candle_core::Error::Msg(format!("{name}: op not applied")))
            };
            let yc = apply(&sc, bc.as_ref(), &dc)?;
            let yg = apply(&sg, bg.as_ref(), &dg)?;
            assert_close(
                &format!("attention weights ({name}, train {train})"),
                &yg,
                &yc,
                1e-5,
            )?;
            let gc = weighted_sum(&yc, 16)?.backward()?;
            let gg = weighted_sum(&yg, 16)?.backward()?;
            let (Some(a), Some(g)) = (gc.get(sc.as_tensor()), gg.get(sg.as_tensor())) else {
                return Err(candle_core::Error::Msg(format!(
                    "attention weights ({name}): no gradient"
                )));
            };
            assert_close(
                &format!("attention weights gradient ({name}, train {train})"),
                g,
                a,
                1e-4,
            )?;
        }
    }
    Ok(())
}

#[test]
fn cuda_activation_dropout_matches_the_cpu_op() -> Result<()> {
    let Some(dev) = gpu("cuda_activation_dropout") else {
        return Ok(());
    };
    for act in [crate::nn::Activation::Relu, crate::nn::Activation::Gelu] {
        for train in [false, true] {
            let (xc, xg) = pair(&[50, 257], 17, &dev)?;
            let dc = Dropout::new(0.2, SharedRng::new(23));
            let dg = Dropout::new(0.2, SharedRng::new(23));
            let apply = |x: &Var, d: &Dropout| -> Result<Tensor> {
                crate::nn::activation_dropout::activation_dropout(x.as_tensor(), act, d, train)?
                    .ok_or_else(|| candle_core::Error::Msg("op not applied".into()))
            };
            let yc = apply(&xc, &dc)?;
            let yg = apply(&xg, &dg)?;
            assert_close(&format!("{act:?} dropout (train {train})"), &yg, &yc, 1e-5)?;
            let gc = weighted_sum(&yc, 18)?.backward()?;
            let gg = weighted_sum(&yg, 18)?.backward()?;
            let (Some(a), Some(g)) = (gc.get(xc.as_tensor()), gg.get(xg.as_tensor())) else {
                return Err(candle_core::Error::Msg(format!("{act:?}: no gradient")));
            };
            assert_close(
                &format!("{act:?} dropout gradient (train {train})"),
                g,
                a,
                1e-4,
            )?;
        }
    }
    Ok(())
}

#[test]
fn cuda_linear_node_matches_the_cpu_layer_with_and_without_a_scope() -> Result<()> {
    use candle_nn::Module;
    let Some(dev) = gpu("cuda_linear_node") else {
        return Ok(());
    };
    for scoped in [false, true] {
        let (xc, xg) = pair(&[4, 50, 64], 31, &dev)?;
        let (wc, wg) = pair(&[48, 64], 32, &dev)?;
        let (bc, bg) = pair(&[48], 33, &dev)?;
        let lc = crate::nn::Linear::new(wc.as_tensor().clone(), Some(bc.as_tensor().clone()));
        let lg = crate::nn::Linear::new(wg.as_tensor().clone(), Some(bg.as_tensor().clone()));
        let yc = lc.forward(xc.as_tensor())?;
        let scope = scoped.then(crate::nn::ParamGradScope::enter);
        let yg = lg.forward(xg.as_tensor())?;
        assert_close("linear output", &yg, &yc, 1e-5)?;
        let gc = weighted_sum(&yc, 34)?.backward()?;
        let gg = backward_in(scope, &weighted_sum(&yg, 34)?, &wg, "linear")?;
        let vars = [
            ("input", &xc, &xg),
            ("weight", &wc, &wg),
            ("bias", &bc, &bg),
        ];
        assert_grads_close(&format!("linear (scoped {scoped})"), &gc, &gg, &vars)?;
    }
    Ok(())
}

#[test]
fn cuda_bias_add_matches_the_cpu_op() -> Result<()> {
    let Some(dev) = gpu("cuda_bias_add") else {
        return Ok(());
    };
    let (xc, xg) = pair(&[300, 97], 19, &dev)?;
    let (bc, bg) = pair(&[97], 20, &dev)?;
    let yc = crate::nn::linear::add_bias(xc.as_tensor(), bc.as_tensor())?;
    let yg = crate::nn::linear::add_bias(xg.as_tensor(), bg.as_tensor())?;
    assert_close("bias add", &yg, &yc, 1e-6)?;
    let gc = weighted_sum(&yc, 21)?.backward()?;
    let gg = weighted_sum(&yg, 21)?.backward()?;
    for (what, c, g) in [("input", &xc, &xg), ("bias", &bc, &bg)] {
        let (Some(a), Some(b)) = (gc.get(c.as_tensor()), gg.get(g.as_tensor())) else {
            return Err(candle_core::Error::Msg(format!(
                "bias add: no {what} gradient"
            )));
        };
        assert_close(&format!("bias add {what} gradient"), b, a, 1e-5)?;
    }
    Ok(())
}

#[test]
fn cuda_attention_core_matches_the_cpu_node() -> Result<()> {
    let Some(dev) = gpu("cuda_attention_core") else {
        return Ok(());
    };
    let (b, l, d, heads) = (5, 33, 64, 2);
    let causal_c =
        crate::nn::masks::causal_bias(l, &Device::Cpu).map_err(candle_core::Error::wrap)?;
    let causal_g = crate::nn::masks::causal_bias(l, &dev).map_err(candle_core::Error::wrap)?;
    for train in [false, true] {
        let (qc, qg) = pair(&[b, l, d], 31, &dev)?;
        let (kc, kg) = pair(&[b, l, d], 32, &dev)?;
        let (vc, vg) = pair(&[b, l, d], 33, &dev)?;
        let dc = Dropout::new(0.2, SharedRng::new(41));
        let dg = Dropout::new(0.2, SharedRng::new(41));
        let run = |q: &Var, k: &Var, v: &Var, bias: &Tensor, drop: &Dropout| -> Result<Tensor> {
            crate::nn::attention_core::attention_core(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                heads,
                Some(bias),
                0.125,
                train.then_some(drop),
            )?
            .ok_or_else(|| candle_core::Error::Msg("node not applied".into()))
        };
        let yc = run(&qc, &kc, &vc, &causal_c, &dc)?;
        let yg = run(&qg, &kg, &vg, &causal_g, &dg)?;
        assert_close(&format!("attention core (train {train})"), &yg, &yc, 1e-5)?;
        let gc = weighted_sum(&yc, 34)?.backward()?;
        let gg = weighted_sum(&yg, 34)?.backward()?;
        for (what, c, g) in [("q", &qc, &qg), ("k", &kc, &kg), ("v", &vc, &vg)] {
            let (Some(a), Some(x)) = (gc.get(c.as_tensor()), gg.get(g.as_tensor())) else {
                return Err(candle_core::Error::Msg(format!(
                    "attention core: no {what} gradient"
                )));
            };
            assert_close(
                &format!("attention core {what} gradient (train {train})"),
                x,
                a,
                1e-4,
            )?;
        }
    }
    Ok(())
}

#[test]
fn cuda_attention_biases_equal_the_cpu_masks() -> Result<()> {
    let Some(dev) = gpu("cuda_attention_biases") else {
        return Ok(());
    };
    let wrap = candle_core::Error::wrap;
    let (b, l) = (5, 23);
    // Left padding of 0..=4 positions, and a padded id inside one session.
    let mut ids: Vec<u32> = (0..b * l)
        .map(|i| if i % l < i / l { 0 } else { 1 + i as u32 })
        .collect();
    ids[3 * l + 10] = 0;
    let ids_c = Tensor::from_vec(ids.clone(), (b, l), &Device::Cpu)?;
    let ids_g = Tensor::from_vec(ids, (b, l), &dev)?;
    let host = |t: Tensor| -> Result<(Vec<usize>, Vec<f32>)> {
        Ok((
            t.dims().to_vec(),
            t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?,
        ))
    };
    use crate::nn::masks::{causal_bias, key_padding_bias, merged_bias};
    for len in [1, 7, l] {
        assert_eq!(
            host(causal_bias(len, &dev).map_err(wrap)?)?,
            host(causal_bias(len, &Device::Cpu).map_err(wrap)?)?,
            "causal bias, L = {len}"
        );
    }
    assert_eq!(
        host(key_padding_bias(&ids_g).map_err(wrap)?)?,
        host(key_padding_bias(&ids_c).map_err(wrap)?)?,
        "key padding bias"
    );
    assert_eq!(
        host(merged_bias(&ids_g).map_err(wrap)?)?,
        host(merged_bias(&ids_c).map_err(wrap)?)?,
        "merged bias"
    );
    Ok(())
}

#[test]
fn cuda_masks_read_from_a_key_slot_equal_masks_by_value() -> Result<()> {
    // A captured step's dropouts read their keys from device memory (a slot tape); the masks must
    // be those of the same keys passed by value, for every kernel that draws one.
    use crate::nn::capture::KeyTape;
    let Some(dev) = gpu("cuda_key_slots") else {
        return Ok(());
    };
    let keys = [0x0123_4567_89AB_CDEFu64, 0xFEDC_BA98_7654_3210, 42, 7];
    let pairs: Vec<u32> = keys
        .iter()
        .flat_map(|k| [*k as u32, (*k >> 32) as u32])
        .collect();
    let slots = Tensor::from_vec(pairs, 8, &dev)?;
    let base = super::graph::address(&slots)?;
    let x = Var::from_vec(values(3 * 1031, 31), (3, 1031), &dev)?;
    let scores = Tensor::from_vec(values(2 * 2 * 9 * 9, 32), (2, 2, 9, 9), &dev)?;
    let d = Dropout::new(0.3, SharedRng::new(5));
    // Plain dropout, activation + dropout, attention weights and dropout with a residual sum, each
    // drawing one mask, forward and backward.
    let run = || -> Result<Vec<Vec<f32>>> {
        let y1 = d
            .forward_t(x.as_tensor(), true)
            .map_err(candle_core::Error::wrap)?;
        let y2 = crate::nn::activation_dropout::activation_dropout(
            x.as_tensor(),
            crate::nn::feed_forward::Activation::Gelu,
            &d,
            true,
        )?
        .ok_or_else(|| candle_core::Error::Msg("activation dropout not applied".into()))?;
        let y3 = crate::nn::attention_weights::attention_weights(&scores, None, 0.5, &d, true)?
            .ok_or_else(|| candle_core::Error::Msg("attention weights not applied".into()))?;
        let y4 = match d.draw() {
            Some(draw) => crate::nn::dropout::apply_mask_add(x.as_tensor(), draw, &y1)?,
            None => return Err(candle_core::Error::Msg("no mask drawn".into())),
        };
        let g = (weighted_sum(&y1, 33)? + weighted_sum(&y2, 34)?)?.backward()?;
        let gx = g
            .get(x.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
        [y1, y2, y3, y4, gx.clone()]
            .iter()
            .map(|t| t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>())
            .collect()
    };
    let (by_slot, tape) = KeyTape::slots(base, keys.len()).run(run);
    tape.finish().map_err(candle_core::Error::Msg)?;
    let (by_value, given) = KeyTape::given(keys.to_vec()).run(run);
    given.finish().map_err(candle_core::Error::Msg)?;
    assert_eq!(by_slot?, by_value?);
    Ok(())
}

#[test]
fn cuda_peak_memory_counts_an_allocation_and_resets() -> Result<()> {
    let Some(dev) = gpu("cuda_peak_memory") else {
        return Ok(());
    };
    let Device::Cuda(cuda) = &dev else {
        return Err(candle_core::Error::Msg("not a CUDA device".into()));
    };
    use super::memory::{peak, reset_peak};
    dev.synchronize()?;
    reset_peak(cuda)?;
    let base = peak(cuda)?.used_high;
    let mib64 = 64u64 << 20;
    let big = Tensor::zeros(16usize << 20, DType::F32, &dev)?;
    dev.synchronize()?;
    let high = peak(cuda)?;
    assert!(
        high.used_high >= base + mib64,
        "64 MiB more in use: {} then {}",
        base,
        high.used_high
    );
    assert!(high.reserved_high >= high.used_high, "{high:?}");
    drop(big);
    dev.synchronize()?;
    reset_peak(cuda)?;
    let after = peak(cuda)?;
    assert!(
        after.used_high + mib64 <= high.used_high,
        "a reset after the free: {after:?} against {high:?}"
    );
    Ok(())
}

#[test]
fn cuda_catalog_loss_frees_each_chunks_buffer() -> Result<()> {
    // The chunked loss must hold about one chunk's logits at a time, not every chunk's: 20 chunks
    // of 100 rows × 50,000 items (20 MB each, 400 MB in all).
    let Some(dev) = gpu("cuda_catalog_loss_memory") else {
        return Ok(());
    };
    let Device::Cuda(cuda) = &dev else {
        return Err(candle_core::Error::Msg("not a CUDA device".into()));
    };
    use super::memory::{peak, reset_peak};
    let (m, n, d, rows) = (2_000, 50_000, 16, 100);
    let s = Var::from_vec(values(m * d, 71), (m, d), &dev)?;
    let e = Var::from_vec(values(n * d, 72), (n, d), &dev)?;
    let targets: Vec<u32> = (0..m).map(|i| 1 + (i * 7919 % (n - 1)) as u32).collect();
    let t = Tensor::from_vec(targets, m, &dev)?;
    let w = Tensor::ones(m, DType::F32, &dev)?;
    dev.synchronize()?;
    reset_peak(cuda)?;
    let base = peak(cuda)?.used_high;
    let loss = crate::nn::catalog_softmax::chunked_on_device(
        s.as_tensor(),
        e.as_tensor(),
        &t,
        &w,
        1.0,
        rows,
    )?;
    let grads = loss.backward()?;
    dev.synchronize()?;
    let high = peak(cuda)?.used_high;
    assert!(
        grads.get(e.as_tensor()).is_some() && loss.to_scalar::<f32>()?.is_finite(),
        "no item gradient or a non-finite loss"
    );
    let chunk = (rows * n * 4) as u64;
    assert!(
        high.saturating_sub(base) < 6 * chunk,
        "the loss's peak was {} MiB over its inputs; one chunk's logits are {} MiB",
        high.saturating_sub(base) >> 20,
        chunk >> 20
    );
    Ok(())
}

#[test]
fn cuda_frozen_first_row_matches_the_cpu_op() -> Result<()> {
    // The item table with its padding row frozen: the same values, and the gradient with row 0
    // zeroed, on both devices (exactly: a copy and a memset).
    let Some(dev) = gpu("cuda_frozen_first_row") else {
        return Ok(());
    };
    let (tc, tg) = pair(&[37, 24], 81, &dev)?;
    let yc = crate::nn::padding_row::frozen_first_row(tc.as_tensor())?;
    let yg = crate::nn::padding_row::frozen_first_row(tg.as_tensor())?;
    assert_close("frozen first row: values", &yg, &yc, 0.0)?;
    let gc = weighted_sum(&yc, 82)?.backward()?;
    let gg = weighted_sum(&yg, 82)?.backward()?;
    let (Some(gc), Some(gg)) = (gc.get(tc.as_tensor()), gg.get(tg.as_tensor())) else {
        return Err(candle_core::Error::Msg(
            "frozen first row: no gradient".into(),
        ));
    };
    assert_close("frozen first row: gradient", gg, gc, 0.0)?;
    let first = gg
        .narrow(0, 0, 1)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(first, vec![0f32; 24]);
    Ok(())
}

#[test]
fn cuda_timeline_mask_matches_the_cpu_op() -> Result<()> {
    // `seqs *= timeline_mask` as one node: the same values and input gradient on both devices
    // (exactly: a product by 0 or 1), and no gradient for the mask.
    let Some(dev) = gpu("cuda_timeline_mask") else {
        return Ok(());
    };
    let (b, l, d) = (5, 9, 33);
    let ids: Vec<u32> = (0..b * l)
        .map(|i| if i % l < i / l { 0 } else { 3 })
        .collect();
    let ids = Tensor::from_vec(ids, (b, l), &Device::Cpu)?;
    let tm_c = crate::nn::masks::timeline_mask(&ids).map_err(candle_core::Error::wrap)?;
    let tm_g = tm_c.to_device(&dev)?;
    let (xc, xg) = pair(&[b, l, d], 91, &dev)?;
    let yc = crate::nn::masks::apply_timeline_mask(xc.as_tensor(), &tm_c)
        .map_err(candle_core::Error::wrap)?;
    let yg = crate::nn::masks::apply_timeline_mask(xg.as_tensor(), &tm_g)
        .map_err(candle_core::Error::wrap)?;
    assert_close("timeline mask: values", &yg, &yc, 0.0)?;
    let gc = weighted_sum(&yc, 92)?.backward()?;
    let gg = weighted_sum(&yg, 92)?.backward()?;
    let (Some(gc), Some(gg)) = (gc.get(xc.as_tensor()), gg.get(xg.as_tensor())) else {
        return Err(candle_core::Error::Msg(
            "timeline mask: no input gradient".into(),
        ));
    };
    assert_close("timeline mask: input gradient", gg, gc, 0.0)?;
    Ok(())
}

#[test]
fn cuda_position_rows_match_the_cpu_op() -> Result<()> {
    // Sessions plus a table's rows by position, as one node: the same values (one addition) and
    // gradients on both devices; the table's rows that no position reads get none. The GPU's node
    // against the CPU's composed lookup and broadcast add.
    use crate::nn::position_rows::{add_position_rows, PositionRows};
    let Some(dev) = gpu("cuda_position_rows") else {
        return Ok(());
    };
    let wrap = candle_core::Error::wrap;
    let (b, l, d, n) = (6, 11, 33, 14);
    let (xc, xg) = pair(&[b, l, d], 93, &dev)?;
    let (tc, tg) = pair(&[n, d], 94, &dev)?;
    let rows_c = PositionRows::from_end(l, &Device::Cpu).map_err(wrap)?;
    let rows_g = PositionRows::from_end(l, &dev).map_err(wrap)?;
    let yc = add_position_rows(xc.as_tensor(), tc.as_tensor(), &rows_c).map_err(wrap)?;
    let yg = add_position_rows(xg.as_tensor(), tg.as_tensor(), &rows_g).map_err(wrap)?;
    assert_close("position rows: values", &yg, &yc, 0.0)?;
    let gc = weighted_sum(&yc, 95)?.backward()?;
    let gg = weighted_sum(&yg, 95)?.backward()?;
    assert_grads_close(
        "position rows",
        &gc,
        &gg,
        &[("sessions", &xc, &xg), ("table", &tc, &tg)],
    )?;
    let unread = gg
        .get(tg.as_tensor())
        .map(|g| g.narrow(0, l, n - l)?.flatten_all()?.to_vec1::<f32>())
        .transpose()?
        .unwrap_or_default();
    assert!(
        unread.len() == (n - l) * d && unread.iter().all(|&v| v == 0.0),
        "position rows: rows no position reads got a gradient"
    );
    Ok(())
}

/// A node that hands over a [`Precomputed`](crate::nn::precomputed::Precomputed) output.
struct HandOver(crate::nn::precomputed::Precomputed);

impl candle_core::CustomOp1 for HandOver {
    fn name(&self) -> &'static str {
        "hand-over"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        self.0.cpu()
    }

    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        self.0.cuda()
    }
}

#[test]
fn cuda_precomputed_outputs_hand_over_a_views_own_values() -> Result<()> {
    let Some(dev) = gpu("cuda_precomputed_outputs") else {
        return Ok(());
    };
    let (cpu, gpu_t) = pair(&[6, 4], 91, &dev)?;
    type View = fn(&Tensor) -> Result<Tensor>;
    let views: [(&str, View); 4] = [
        ("whole", |t| Ok(t.clone())),
        ("rows past the start", |t| t.narrow(0, 2, 3)),
        ("columns", |t| t.narrow(1, 1, 2)),
        ("transposed", |t| t.t()),
    ];
    for (what, view) in views {
        let want = view(cpu.as_tensor())?;
        let out = view(gpu_t.as_tensor())?;
        let got = gpu_t.as_tensor().apply_op1_no_bwd(&HandOver(
            crate::nn::precomputed::Precomputed::new("test", out),
        ))?;
        assert_eq!(got.dims(), want.dims(), "{what}");
        assert_eq!(
            got.to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?,
            "{what}"
        );
    }
    Ok(())
}

/// `m` ids below `n`: every third entry is id 0 (a long run, as a padding id makes), the others
/// spread with repeats; id `n - 1` is never named.
fn spread_ids(m: usize, n: usize, salt: u64) -> Vec<u32> {
    values(m, salt)
        .iter()
        .enumerate()
        .map(|(p, v)| {
            if p % 3 == 0 {
                0
            } else {
                ((v + 2.0) * 1000.0) as u32 % (n as u32 - 1)
            }
        })
        .collect()
}

#[test]
fn cuda_gather_rows_and_sums_by_id_match_the_cpu_ops() -> Result<()> {
    use crate::nn::{gather_rows, scatter_add_rows};
    let Some(dev) = gpu("cuda_gather_rows") else {
        return Ok(());
    };
    // One tile; a SASRec batch over ML-100k (7 tiles, 3 merge passes); a width that is not a
    // multiple of 32.
    for (n, d, m) in [(50, 64, 700), (1683, 64, 6400), (300, 33, 5000)] {
        let what = format!("n {n}, d {d}, m {m}");
        let ids = spread_ids(m, n, 3);
        let (ic, ig) = (
            Tensor::from_vec(ids.clone(), m, &Device::Cpu)?,
            Tensor::from_vec(ids, m, &dev)?,
        );
        let (tc, tg) = pair(&[n, d], 4, &dev)?;
        let (yc, yg) = (gather_rows(&tc, &ic)?, gather_rows(&tg, &ig)?);
        assert_close(&format!("{what}: lookup"), &yg, &yc, 0.0)?;
        let gc = weighted_sum(&yc, 5)?.backward()?;
        let grad = |g: &Tensor| -> Result<Tensor> {
            let gg = weighted_sum(g, 5)?.backward()?;
            gg.get(&tg)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("no table gradient".into()))
        };
        let (g1, g2) = (grad(&yg)?, grad(&gather_rows(&tg, &ig)?)?);
        let want = gc
            .get(&tc)
            .ok_or_else(|| candle_core::Error::Msg("no CPU table gradient".into()))?;
        assert_close(&format!("{what}: lookup gradient"), &g1, want, 1e-5)?;
        // The same bits on every run, and nothing for the row no entry names.
        let (v1, v2) = (
            g1.flatten_all()?.to_vec1::<f32>()?,
            g2.flatten_all()?.to_vec1::<f32>()?,
        );
        assert!(v1 == v2, "{what}: two runs of the backward differ");
        assert!(
            v1[(n - 1) * d..].iter().all(|&x| x == 0.0),
            "{what}: a row no id names has a gradient"
        );

        let (sc, sg) = pair(&[m, d], 6, &dev)?;
        let (oc, og) = (
            scatter_add_rows(&sc, &ic, n)?,
            scatter_add_rows(&sg, &ig, n)?,
        );
        assert_close(&format!("{what}: sum by id"), &og, &oc, 1e-5)?;
        let (bc, bg) = (
            weighted_sum(&oc, 7)?.backward()?,
            weighted_sum(&og, 7)?.backward()?,
        );
        match (bc.get(&sc), bg.get(&sg)) {
            (Some(c), Some(g)) => assert_close(&format!("{what}: sum by id gradient"), g, c, 0.0)?,
            _ => return Err(candle_core::Error::Msg(format!("{what}: no src gradient"))),
        }
    }
    // Ids `[B, L]` into a table `[2, N/2, d]`, read as its N rows: rows `[B, L, d]`, and the
    // table's gradient in its own shape.
    let (n, d, b, l) = (40, 8, 6, 5);
    let ids = spread_ids(b * l, n, 4);
    let (ic, ig) = (
        Tensor::from_vec(ids.clone(), (b, l), &Device::Cpu)?,
        Tensor::from_vec(ids, (b, l), &dev)?,
    );
    let (tc, tg) = pair(&[2, n / 2, d], 8, &dev)?;
    let (yc, yg) = (gather_rows(&tc, &ic)?, gather_rows(&tg, &ig)?);
    assert_eq!(yg.dims(), [b, l, d]);
    assert_close("shaped lookup", &yg, &yc, 0.0)?;
    let (gc, gg) = (
        weighted_sum(&yc, 9)?.backward()?,
        weighted_sum(&yg, 9)?.backward()?,
    );
    assert_grads_close("shaped lookup", &gc, &gg, &[("table", &tc, &tg)])?;
    Ok(())
}

#[test]
fn cuda_gather_dot_matches_the_cpu_op() -> Result<()> {
    use crate::nn::gather_dot;
    let Some(dev) = gpu("cuda_gather_dot") else {
        return Ok(());
    };
    // 300 positions with 65 candidates (positive + 64 negatives): 19,500 ids, 20 tiles.
    let (m, k, n, d) = (300, 65, 1000, 64);
    let ids = spread_ids(m * k, n, 8);
    let (ic, ig) = (
        Tensor::from_vec(ids.clone(), (m, k), &Device::Cpu)?,
        Tensor::from_vec(ids, (m, k), &dev)?,
    );
    let (hc, hg) = pair(&[m, d], 9, &dev)?;
    let (tc, tg) = pair(&[n, d], 10, &dev)?;
    let (yc, yg) = (gather_dot(&hc, &tc, &ic)?, gather_dot(&hg, &tg, &ig)?);
    assert_close("scores", &yg, &yc, 1e-5)?;
    let (gc, gg) = (
        weighted_sum(&yc, 11)?.backward()?,
        weighted_sum(&yg, 11)?.backward()?,
    );
    for (what, c, g) in [("rows", &hc, &hg), ("table", &tc, &tg)] {
        match (gc.get(c), gg.get(g)) {
            (Some(c), Some(g)) => assert_close(&format!("{what} gradient"), g, c, 1e-4)?,
            _ => return Err(candle_core::Error::Msg(format!("no {what} gradient"))),
        }
    }
    // No candidates: no scores, and a table gradient of zeros, as on the CPU.
    let none = Tensor::zeros((m, 0), DType::U32, &dev)?;
    let y0 = gather_dot(&hg, &tg, &none)?;
    assert_eq!(y0.dims(), [m, 0]);
    let g0 = (y0.sum_all()? + tg.as_tensor().sum_all()?)?.backward()?;
    let Some(table) = g0.get(&tg) else {
        return Err(candle_core::Error::Msg(
            "no table gradient without candidates".into(),
        ));
    };
    assert_eq!(
        table
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?,
        vec![1f32; n * d]
    );
    Ok(())
}

#[test]
fn cuda_lookups_give_nan_for_an_id_outside_the_table() -> Result<()> {
    use crate::nn::{gather_dot, gather_rows};
    let Some(dev) = gpu("cuda_lookups_nan") else {
        return Ok(());
    };
    let table = Tensor::from_vec(values(12, 12), (4, 3), &dev)?;
    let rows = gather_rows(&table, &Tensor::new(&[1u32, 4], &dev)?)?.to_vec2::<f32>()?;
    assert!(rows[0].iter().all(|x| x.is_finite()) && rows[1].iter().all(|x| x.is_nan()));
    let h = Tensor::from_vec(values(6, 13), (2, 3), &dev)?;
    let scores = gather_dot(&h, &table, &Tensor::new(&[[0u32], [7]], &dev)?)?.to_vec2::<f32>()?;
    assert!(scores[0][0].is_finite() && scores[1][0].is_nan());
    Ok(())
}

/// A block's parameters on the GPU: every variable of `cpu` copied into a new map there.
fn gpu_varmap(cpu: &candle_nn::VarMap, dev: &Device) -> Result<candle_nn::VarMap> {
    let out = candle_nn::VarMap::new();
    {
        let src = cpu.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut dst = out.data().lock().unwrap_or_else(|e| e.into_inner());
        for (name, var) in src.iter() {
            dst.insert(
                name.clone(),
                Var::from_tensor(&var.as_tensor().to_device(dev)?)?,
            );
        }
    }
    Ok(out)
}

/// A block's training pass over `(x, timeline mask, attention bias)`.
type BlockPass = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> crate::Result<Tensor>>;

#[test]
fn cuda_block_nodes_match_the_cpu_blocks() -> Result<()> {
    // The SASRec and pre-LN blocks as one node each (a trainer's scope open, as `fit` opens it),
    // against the fused CPU blocks: the same dropout masks, outputs to 1e-5, gradients to 1e-4.
    use crate::nn::{PreLNTransformerLayer, SASRecTransformerLayer};
    let Some(dev) = gpu("cuda_block_nodes") else {
        return Ok(());
    };
    let (b, l, d) = (16, 50, 64);
    let ids: Vec<u32> = (0..b * l)
        .map(|i| {
            if i % l < (i / l) % l {
                0
            } else {
                1 + i as u32 % 97
            }
        })
        .collect();
    let ids = Tensor::from_vec(ids, (b, l), &Device::Cpu)?;
    let bias_c = crate::nn::masks::attention_bias(&ids, true, true)
        .map_err(candle_core::Error::wrap)?
        .ok_or_else(|| candle_core::Error::Msg("no bias".into()))?;
    let tm_c = crate::nn::masks::timeline_mask(&ids).map_err(candle_core::Error::wrap)?;
    let (bias_g, tm_g) = (bias_c.to_device(&dev)?, tm_c.to_device(&dev)?);
    for kind in ["SASRec", "pre-LN"] {
        let (vm_c, vb_c) = crate::nn::blocks::test_util::store(23);
        let build = |vb: &candle_nn::VarBuilder, rng: SharedRng| -> Result<BlockPass> {
            Ok(if kind == "SASRec" {
                let blk = SASRecTransformerLayer::new(d, 2, 0.2, vb, rng)
                    .map_err(candle_core::Error::wrap)?;
                Box::new(move |x: &Tensor, tm: &Tensor, bias: &Tensor| {
                    blk.forward_masked_t(x, tm, Some(bias), true)
                })
            } else {
                let blk = PreLNTransformerLayer::new(d, 2, 0.2, 4, vb, rng)
                    .map_err(candle_core::Error::wrap)?;
                Box::new(move |x: &Tensor, _tm: &Tensor, bias: &Tensor| {
                    blk.forward_t(x, Some(bias), true)
                })
            })
        };
        let block_c = build(&vb_c, SharedRng::new(9))?;
        let vm_g = gpu_varmap(&vm_c, &dev)?;
        let block_g = build(
            &candle_nn::VarBuilder::from_varmap(&vm_g, DType::F32, &dev),
            SharedRng::new(9),
        )?;
        let (xc, xg) = pair(&[b, l, d], 51, &dev)?;
        let yc = block_c(xc.as_tensor(), &tm_c, &bias_c).map_err(candle_core::Error::wrap)?;
        let scope = crate::nn::ParamGradScope::enter();
        let yg = block_g(xg.as_tensor(), &tm_g, &bias_g).map_err(candle_core::Error::wrap)?;
        assert_close(&format!("{kind} block output"), &yg, &yc, 1e-5)?;
        let gc = weighted_sum(&yc, 52)?.backward()?;
        let loss_g = weighted_sum(&yg, 52)?;
        let nodes = loss_g.sorted_nodes().len();
        // The input, the node and the loss's own ops: no parameter and no inner op in the graph.
        assert!(nodes <= 4, "{kind}: {nodes} graph nodes");
        let gg = scope.backward(&loss_g)?;
        let want = |t: &Tensor| {
            gc.get(t)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("{kind}: no CPU gradient")))
        };
        let got = |t: &Tensor| {
            gg.get(t)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("{kind}: no GPU gradient")))
        };
        assert_close(
            &format!("{kind} input gradient"),
            &got(xg.as_tensor())?,
            &want(xc.as_tensor())?,
            1e-4,
        )?;
        let data_c = vm_c.data().lock().unwrap_or_else(|e| e.into_inner());
        let data_g = vm_g.data().lock().unwrap_or_else(|e| e.into_inner());
        for (name, vc) in data_c.iter() {
            let vg = data_g
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no {name}")))?;
            assert_close(
                &format!("{kind} gradient of {name}"),
                &got(vg.as_tensor())?,
                &want(vc.as_tensor())?,
                1e-4,
            )?;
        }
    }
    Ok(())
}

#[test]
fn cuda_block_nodes_read_their_keys_from_slots() -> Result<()> {
    // A captured step's block nodes take their dropout keys from device memory (a slot tape);
    // forward and backward must be those of the same keys passed by value, bit for bit.
    use crate::nn::{capture::KeyTape, PreLNTransformerLayer, SASRecTransformerLayer};
    let Some(dev) = gpu("cuda_block_node_key_slots") else {
        return Ok(());
    };
    let (b, l, d) = (4, 12, 16);
    let ids: Vec<u32> = (0..b * l)
        .map(|i| if i % l < i / l { 0 } else { 1 + i as u32 % 7 })
        .collect();
    let ids = Tensor::from_vec(ids, (b, l), &Device::Cpu)?;
    let bias = crate::nn::masks::attention_bias(&ids, true, true)
        .map_err(candle_core::Error::wrap)?
        .ok_or_else(|| candle_core::Error::Msg("no bias".into()))?
        .to_device(&dev)?;
    let tm = crate::nn::masks::timeline_mask(&ids)
        .map_err(candle_core::Error::wrap)?
        .to_device(&dev)?;
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let sasrec = SASRecTransformerLayer::new(d, 2, 0.3, &vb.pp("sasrec"), SharedRng::new(3))
        .map_err(candle_core::Error::wrap)?;
    let preln = PreLNTransformerLayer::new(d, 2, 0.3, 4, &vb.pp("preln"), SharedRng::new(4))
        .map_err(candle_core::Error::wrap)?;
    let x = Var::from_vec(values(b * l * d, 61), (b, l, d), &dev)?;
    let vars = vm.all_vars();
    let run = || -> Result<Vec<Vec<f32>>> {
        let scope = crate::nn::ParamGradScope::enter();
        let y1 = sasrec
            .forward_masked_t(x.as_tensor(), &tm, Some(&bias), true)
            .map_err(candle_core::Error::wrap)?;
        let y2 = preln
            .forward_t(&y1, Some(&bias), true)
            .map_err(candle_core::Error::wrap)?;
        let loss = weighted_sum(&y2, 62)?;
        // The two block nodes, the input and the loss's own ops: the blocks ran as nodes.
        let nodes = loss.sorted_nodes().len();
        assert!(nodes <= 6, "{nodes} graph nodes");
        let g = scope.backward(&loss)?;
        let mut out = vec![y2
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?];
        for t in std::iter::once(x.as_tensor()).chain(vars.iter().map(|v| v.as_tensor())) {
            let gt = g
                .get(t)
                .ok_or_else(|| candle_core::Error::Msg("a gradient is missing".into()))?;
            out.push(
                gt.flatten_all()?
                    .to_device(&Device::Cpu)?
                    .to_vec1::<f32>()?,
            );
        }
        Ok(out)
    };
    let (first, counted) = KeyTape::counting().run(run);
    first?;
    let n = counted.used();
    assert!(n >= 5, "the two blocks drew {n} dropout keys");
    let keys: Vec<u64> = (1..=n as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let pairs: Vec<u32> = keys
        .iter()
        .flat_map(|k| [*k as u32, (*k >> 32) as u32])
        .collect();
    let slots = Tensor::from_vec(pairs, 2 * n, &dev)?;
    let base = super::graph::address(&slots)?;
    let (by_slot, tape) = KeyTape::slots(base, n).run(run);
    tape.finish().map_err(candle_core::Error::Msg)?;
    let (by_value, given) = KeyTape::given(keys).run(run);
    given.finish().map_err(candle_core::Error::Msg)?;
    assert_eq!(by_slot?, by_value?);
    Ok(())
}

#[test]
fn cuda_allocator_setup_keeps_pool_memory_and_drops_events() -> Result<()> {
    // After `prepare`: buffers carry no events, the pool keeps a freed 64 MiB through a
    // synchronisation, ops still give the CPU's values, and a peak reset gives the memory back.
    // The pool is the device's: run the GPU tests one at a time (`bench/gpu/run.sh` does), or a
    // test allocating in parallel can move these figures. The threshold stays raised for the
    // tests after it, as in a training run.
    let Some(dev) = gpu("cuda_allocator_setup") else {
        return Ok(());
    };
    let Device::Cuda(cuda) = &dev else {
        return Err(candle_core::Error::Msg("not a CUDA device".into()));
    };
    use super::{
        allocator::{prepare, AllocatorSetup},
        memory::{release_threshold, reserved_now, reset_peak},
    };
    let setup = prepare(cuda)?;
    if super::allocator::driver_defaults_requested() {
        assert_eq!(setup, AllocatorSetup::DriverDefaults);
        return Ok(());
    }
    assert_eq!(setup, AllocatorSetup::Kept);
    assert!(!cuda.is_event_tracking(), "event tracking still on");
    assert_eq!(release_threshold(cuda)?, u64::MAX);
    let mib64 = 64u64 << 20;
    let big = Tensor::zeros(16usize << 20, DType::F32, &dev)?;
    dev.synchronize()?;
    drop(big);
    dev.synchronize()?;
    let kept = reserved_now(cuda)?;
    assert!(
        kept >= mib64,
        "the pool kept {kept} bytes of a freed 64 MiB"
    );
    let (m, k, n) = (33, 17, 29);
    let a = Tensor::from_vec(values(m * k, 81), (m, k), &Device::Cpu)?;
    let b = Tensor::from_vec(values(k * n, 82), (k, n), &Device::Cpu)?;
    let on_gpu = a.to_device(&dev)?.matmul(&b.to_device(&dev)?)?.exp()?;
    assert_close("matmul + exp", &on_gpu, &a.matmul(&b)?.exp()?, 1e-5)?;
    drop(on_gpu);
    reset_peak(cuda)?;
    let after = reserved_now(cuda)?;
    assert!(
        after + mib64 <= kept,
        "a peak reset gives kept memory back: {after} bytes against {kept}"
    );
    Ok(())
}

#[test]
fn cuda_loss_reads_come_back_in_order_while_later_work_is_queued() -> Result<()> {
    // Two losses copied into page-locked slots, each behind work that takes the GPU milliseconds:
    // each read waits for its copy and gives its own value (a read that did not wait would find
    // the slot's old contents), the first while the second and more work are still queued; a
    // copy overwritten by two later ones is refused.
    let Some(dev) = gpu("cuda_loss_reads") else {
        return Ok(());
    };
    let Device::Cuda(cuda) = &dev else {
        return Err(candle_core::Error::Msg("not a CUDA device".into()));
    };
    let mut reads = super::loss_reads::LossReads::new(cuda)?;
    let m = Tensor::from_vec(values(2048 * 2048, 91), (2048, 2048), &dev)?;
    let slow = |v: f64| -> Result<Tensor> {
        let mut x = m.clone();
        for _ in 0..8 {
            x = x.matmul(&m)?.tanh()?;
        }
        // 0 · finite + v: the value is v, known only once the products are done.
        x.sum_all()?.affine(0.0, v)
    };
    let a = Tensor::cat(&[&slow(1.25)?.reshape(1)?, &slow(7.5)?.reshape(1)?], 0)?;
    let first = reads.queue(&a.narrow(0, 1, 1)?)?;
    let b = slow(-6.0)?;
    let second = reads.queue(&b)?;
    let _busy = slow(0.0)?;
    assert_eq!(reads.take(first)?, 7.5);
    assert_eq!(reads.take(second)?, -6.0);
    let old = reads.queue(&slow(2.0)?)?;
    reads.queue(&b)?;
    reads.queue(&b)?;
    let err = reads.take(old).err().map(|e| e.to_string());
    assert!(err.is_some_and(|m| m.contains("overwritten")));
    let two = reads.queue(&a).err().map(|e| e.to_string());
    assert!(two.is_some_and(|m| m.contains("expected one f32 value")));
    Ok(())
}
