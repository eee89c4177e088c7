//! Checks of module kinds: transformer layers, positional encodings, item net blocks and
//! constructors, similarity modules.

use candle_core::{Device, Tensor, Var};
use candle_nn::{Optimizer, SGD};
use recblocks_core::{
    components::{
        item_net::{ItemNetBlock, ItemNetConstructor},
        pos_encoding::PositionalEncoding,
        similarity::Similarity,
        transformer_layers::TransformerLayers,
    },
    serde_json::Value,
    ComponentInfo, ComponentKind, CoreError, Registry, Result,
};

use super::{catalog_factors, causality, gradcheck, unknown_kwarg_outcome, with_unknown_kwarg};
use crate::{
    env::{probe_loss, TestEnv},
    harness::{self, temp_path, Probe, D, MAX_LEN},
    report::{CheckResult, ConformanceError, Outcome},
};

/// A built module of one of the module kinds.
pub(super) enum Built {
    Layers(Box<dyn TransformerLayers>),
    Pos(Box<dyn PositionalEncoding>),
    Block(Box<dyn ItemNetBlock>),
    Ctor(Box<dyn ItemNetConstructor>),
    Sim(Box<dyn Similarity>),
}

impl Built {
    pub(super) fn build(
        h: &TestEnv,
        kind: ComponentKind,
        name: &str,
        kwargs: &Value,
        seed: u64,
    ) -> Result<Built> {
        let ctx = h.ctx(seed);
        let r = &h.registry;
        Ok(match kind {
            ComponentKind::TransformerLayers => {
                Built::Layers((r.transformer_layers(name)?.build)(&ctx, kwargs)?)
            }
            ComponentKind::PositionalEncoding => {
                Built::Pos((r.positional_encoding(name)?.build)(&ctx, kwargs)?)
            }
            ComponentKind::ItemNetBlock => match (r.item_net_block(name)?.build)(&ctx, kwargs)? {
                Some(block) => Built::Block(block),
                None => {
                    return Err(CoreError::Other(format!(
                        "item net block `{name}` does not apply to the harness catalog (ids and \
                         categorical features)"
                    )))
                }
            },
            ComponentKind::ItemNetConstructor => {
                Built::Ctor((r.item_net_constructor(name)?.build)(
                    &ctx,
                    &["IdEmbeddingsItemNet".to_string()],
                    kwargs,
                )?)
            }
            ComponentKind::Similarity => Built::Sim((r.similarity(name)?.build)(&ctx, kwargs)?),
            other => {
                return Err(CoreError::Other(format!("{other} is not a module kind")));
            }
        })
    }

    /// Whether the module's input is embeddings `[B, L, d]` (whose gradient can be checked), not
    /// item ids.
    pub(super) fn takes_embeddings(&self) -> bool {
        !matches!(self, Built::Block(_) | Built::Ctor(_))
    }

    pub(super) fn forward(&self, p: &Probe, train: bool) -> Result<Tensor> {
        match self {
            Built::Layers(m) => m.forward_t(&p.x, &p.masks()?, train),
            Built::Pos(m) => m.forward_t(&p.x, train),
            Built::Block(m) => m.forward_t(&p.ids, train),
            Built::Ctor(m) => {
                let all = m.all_embeddings(train)?;
                let (b, l) = p.ids.dims2()?;
                Ok(all
                    .index_select(&p.ids.flatten_all()?, 0)?
                    .reshape((b, l, all.dim(1)?))?)
            }
            Built::Sim(m) => m.full_catalog_logits(&p.x, &catalog()?),
        }
    }

    fn expected_shape(&self, p: &Probe) -> Result<Vec<usize>> {
        let (b, l) = p.ids.dims2()?;
        Ok(match self {
            Built::Sim(_) => vec![b, l, catalog()?.dim(0)?],
            _ => vec![b, l, D],
        })
    }

    fn declared_params(&self) -> Option<usize> {
        match self {
            Built::Layers(m) => m.n_params(),
            Built::Pos(m) => m.n_params(),
            Built::Block(m) => m.n_params(),
            Built::Ctor(m) => m.n_params(),
            Built::Sim(m) => m.n_params(),
        }
    }

    /// Whether outputs at real positions are promised not to depend on padded inputs.
    fn promises_padding_invariance(&self) -> bool {
        self.takes_embeddings()
    }
}

/// Item embeddings the similarity check scores against.
fn catalog() -> Result<Tensor> {
    let n = crate::harness::N_REAL + 1;
    Ok(Tensor::arange(0f32, (n * D) as f32, &Device::Cpu)?
        .affine(0.23, 0.1)?
        .cos()?
        .reshape((n, D))?)
}

pub(super) fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn res(check: &'static str, outcome: Outcome) -> CheckResult {
    CheckResult { check, outcome }
}

fn outcome(result: Result<Outcome>) -> Outcome {
    result.unwrap_or_else(|e| Outcome::Fail(format!("error: {e}")))
}

pub(crate) fn run(
    registry: &Registry,
    kind: ComponentKind,
    info: &ComponentInfo,
) -> Result<Vec<CheckResult>, ConformanceError> {
    let name = info.name;
    let defaults = (info.default_kwargs)();
    let mut results = Vec::new();

    let h = harness::env(registry, 0.1)?;
    let module = match Built::build(&h, kind, name, &defaults, 1) {
        Ok(m) => {
            results.push(res("builds with default kwargs", Outcome::Pass));
            m
        }
        Err(e) => {
            results.push(res(
                "builds with default kwargs",
                Outcome::Fail(e.to_string()),
            ));
            return Ok(results);
        }
    };
    let scratch = harness::env(registry, 0.1)?;
    results.push(res(
        "rejects an unknown kwarg",
        unknown_kwarg_outcome(Built::build(
            &scratch,
            kind,
            name,
            &with_unknown_kwarg(&defaults),
            1,
        )),
    ));
    results.push(res("output shapes", outcome(shapes(&module))));
    results.push(res(
        "eval forward is deterministic",
        outcome(eval_deterministic(&module)),
    ));
    results.push(res(
        "static shapes (a captured step) give the same outputs",
        outcome(static_shapes_agree(&module)),
    ));
    results.push(res(
        "train forward is deterministic without dropout",
        outcome(train_without_dropout(registry, kind, name, &defaults)),
    ));
    results.push(res(
        "train forward is stochastic with dropout",
        if kind == ComponentKind::TransformerLayers {
            outcome(train_with_dropout(registry, kind, name, &defaults))
        } else {
            Outcome::Skipped(format!("a {kind} applies no dropout of its own"))
        },
    ));
    results.push(res(
        "train and eval forwards agree without dropout",
        outcome(train_eval_agree(registry, kind, name, &defaults)),
    ));
    let no_dropout = harness::env(registry, 0.0)?;
    let layers = match Built::build(&no_dropout, kind, name, &defaults, 1)? {
        Built::Layers(layers) => Some(layers),
        _ => None,
    };
    let not_layers = || Outcome::Skipped(format!("a {kind} has no attention mask"));
    results.push(res(
        "causal mask: outputs ignore later positions",
        match &layers {
            Some(l) => outcome(causality::causal(l.as_ref())),
            None => not_layers(),
        },
    ));
    results.push(res(
        "bidirectional mask: outputs depend on later positions",
        match &layers {
            Some(l) => outcome(causality::bidirectional(l.as_ref())),
            None => not_layers(),
        },
    ));
    results.push(res(
        "padding does not change outputs at real positions",
        if module.promises_padding_invariance() {
            outcome(padding_invariance(&module))
        } else {
            Outcome::Skipped("its input is item ids, not positions".into())
        },
    ));
    results.push(res(
        "last-position forward equals the full pass",
        match &module {
            Built::Layers(layers) => outcome(last_position(layers.as_ref())),
            _ => Outcome::Skipped(format!("a {kind} has no last-position forward")),
        },
    ));
    results.push(res(
        "catalog factors multiply to the full-catalog logits",
        match &module {
            Built::Sim(sim) => outcome(catalog_factors::check(sim.as_ref(), MAX_LEN, &catalog()?)),
            _ => Outcome::Skipped(format!("a {kind} is not a similarity module")),
        },
    ));
    results.push(res(
        "gradients reach every parameter",
        outcome(gradients(&h, &module)),
    ));
    results.push(res(
        "gradients match finite differences",
        outcome(gradcheck::check(registry, kind, name, &defaults)),
    ));
    results.push(res(
        "declared parameter count equals the VarMap",
        match module.declared_params() {
            None => Outcome::Skipped("the component declares no parameter count".into()),
            Some(n) if n == h.n_params() => Outcome::Pass,
            Some(n) => Outcome::Fail(format!(
                "declares {n} parameter elements, the VarMap holds {}",
                h.n_params()
            )),
        },
    ));
    results.push(res(
        "save → load round trip gives identical outputs",
        outcome(round_trip(registry, kind, name, &defaults)),
    ));
    results.push(res(
        "finite outputs for extreme inputs",
        outcome(finite(&module)),
    ));
    Ok(results)
}

fn shapes(m: &Built) -> Result<Outcome> {
    for (b, l) in [(1, 1), (3, 3), (4, MAX_LEN)] {
        let p = Probe::new(b, l, 1.0)?;
        let out = m.forward(&p, false)?;
        let want = m.expected_shape(&p)?;
        if out.dims() != want.as_slice() {
            return Ok(Outcome::Fail(format!(
                "batch {b}, length {l}: output shape {:?}, expected {want:?}",
                out.dims()
            )));
        }
    }
    Ok(Outcome::Pass)
}

/// `forward_last` (what recommending calls) against the last position of the eval forward.
fn last_position(layers: &dyn TransformerLayers) -> Result<Outcome> {
    for (b, l) in [(1, 1), (3, 3), (4, MAX_LEN)] {
        let p = Probe::new(b, l, 1.0)?;
        let masks = p.masks()?;
        let full = layers.forward_t(&p.x, &masks, false)?;
        let want = values(&full.narrow(1, l - 1, 1)?)?;
        let got = layers.forward_last(&p.x, &masks)?;
        if got.dims() != [b, 1, D] {
            return Ok(Outcome::Fail(format!(
                "batch {b}, length {l}: forward_last gave shape {:?}, expected [{b}, 1, {D}]",
                got.dims()
            )));
        }
        let diffs: Vec<f32> = values(&got)?
            .iter()
            .zip(&want)
            .map(|(a, w)| (a - w).abs())
            .collect();
        if diffs.iter().any(|d| d.is_nan()) {
            return Ok(Outcome::Fail(format!(
                "batch {b}, length {l}: forward_last or the full pass gave NaN"
            )));
        }
        let worst = diffs.iter().copied().fold(0f32, f32::max);
        if worst > 1e-4 {
            return Ok(Outcome::Fail(format!(
                "batch {b}, length {l}: forward_last differs from the full pass's last position \
                 by up to {worst}"
            )));
        }
    }
    Ok(Outcome::Pass)
}

/// The eval forward under `nn::capture::static_shapes()` (the rules of a step recorded as a CUDA
/// graph: fixed shapes, nothing read back) against the ordinary one: a module may take another
/// path there, but not give other shapes or values.
fn static_shapes_agree(m: &Built) -> Result<Outcome> {
    for (b, l) in [(1, 1), (3, MAX_LEN)] {
        let p = Probe::new(b, l, 1.0)?;
        let plain = m.forward(&p, false)?;
        let fixed = {
            let _static = recblocks_core::nn::capture::StaticShapes::enter();
            m.forward(&p, false)?
        };
        if fixed.dims() != plain.dims() {
            return Ok(Outcome::Fail(format!(
                "batch {b}, length {l}: shape {:?} under static shapes, {:?} without",
                fixed.dims(),
                plain.dims()
            )));
        }
        let (a, w) = (values(&fixed)?, values(&plain)?);
        let worst = a
            .iter()
            .zip(&w)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) });
        if worst.is_nan() || worst > 1e-5 {
            return Ok(Outcome::Fail(format!(
                "batch {b}, length {l}: outputs under static shapes differ by up to {worst} \
                 (relative to max(1, |value|))"
            )));
        }
    }
    Ok(Outcome::Pass)
}

fn eval_deterministic(m: &Built) -> Result<Outcome> {
    let p = Probe::new(3, MAX_LEN, 1.0)?;
    let a = values(&m.forward(&p, false)?)?;
    let b = values(&m.forward(&p, false)?)?;
    Ok(if a == b {
        Outcome::Pass
    } else {
        Outcome::Fail("two eval forwards of the same input differ".into())
    })
}

fn train_without_dropout(
    r: &Registry,
    kind: ComponentKind,
    name: &str,
    kwargs: &Value,
) -> Result<Outcome> {
    let h = harness::env(r, 0.0)?;
    let m = Built::build(&h, kind, name, kwargs, 1)?;
    let p = Probe::new(3, MAX_LEN, 1.0)?;
    let a = values(&m.forward(&p, true)?)?;
    let b = values(&m.forward(&p, true)?)?;
    Ok(if a == b {
        Outcome::Pass
    } else {
        Outcome::Fail("with dropout_rate 0, two train forwards of the same input differ".into())
    })
}

/// With dropout 0, the train-mode and eval-mode forwards give the same output (an eval path
/// that skips a layer norm or uses another mask differs).
fn train_eval_agree(
    r: &Registry,
    kind: ComponentKind,
    name: &str,
    kwargs: &Value,
) -> Result<Outcome> {
    let h = harness::env(r, 0.0)?;
    let m = Built::build(&h, kind, name, kwargs, 1)?;
    for (b, l) in [(3, MAX_LEN), (1, 1)] {
        let p = Probe::new(b, l, 1.0)?;
        let train = m.forward(&p, true)?;
        let eval = m.forward(&p, false)?;
        let dims = train.dims().to_vec();
        let (t, e) = (values(&train)?, values(&eval)?);
        let worst = t
            .iter()
            .zip(&e)
            .enumerate()
            .map(|(i, (a, b))| (i, (a - b).abs() / (1.0 + b.abs())))
            .fold(
                (0, 0f32),
                |w, (i, d)| if d > w.1 || d.is_nan() { (i, d) } else { w },
            );
        if worst.1 > 1e-5 || worst.1.is_nan() {
            let i = worst.0;
            let last = dims.last().copied().unwrap_or(1).max(1);
            let inner = dims.get(1).copied().unwrap_or(1).max(1);
            return Ok(Outcome::Fail(format!(
                "with dropout 0 (batch {b}, length {l}), the train forward gives {} at session \
                 {}, position {}, feature {}, the eval forward {} (expected equal)",
                t[i],
                i / (inner * last),
                (i / last) % inner,
                i % last,
                e[i]
            )));
        }
    }
    Ok(Outcome::Pass)
}

fn train_with_dropout(
    r: &Registry,
    kind: ComponentKind,
    name: &str,
    kwargs: &Value,
) -> Result<Outcome> {
    let h = harness::env(r, 0.5)?;
    let m = Built::build(&h, kind, name, kwargs, 1)?;
    let p = Probe::new(3, MAX_LEN, 1.0)?;
    let a = values(&m.forward(&p, true)?)?;
    let b = values(&m.forward(&p, true)?)?;
    Ok(if a != b {
        Outcome::Pass
    } else {
        Outcome::Fail(
            "with dropout_rate 0.5, two train forwards are identical (dropout not applied)".into(),
        )
    })
}

fn padding_invariance(m: &Built) -> Result<Outcome> {
    let p = Probe::new(4, MAX_LEN, 1.0)?;
    let q = p.perturb_padding()?;
    let real = p.real_positions()?;
    let a = values(&m.forward(&p, false)?.broadcast_mul(&real)?)?;
    let b = values(&m.forward(&q, false)?.broadcast_mul(&real)?)?;
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    Ok(if worst <= 1e-5 {
        Outcome::Pass
    } else {
        Outcome::Fail(format!(
            "changing the inputs at padded positions changes outputs at real positions by up to {worst}"
        ))
    })
}

pub(super) fn sorted_vars(h: &TestEnv) -> Vec<(String, Var)> {
    let data = h.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn gradients(h: &TestEnv, m: &Built) -> Result<Outcome> {
    let vars = sorted_vars(h);
    if vars.is_empty() {
        return Ok(Outcome::Skipped("the component has no parameters".into()));
    }
    let p = Probe::new(3, MAX_LEN, 1.0)?;
    let loss = probe_loss(&m.forward(&p, true)?)?;
    let grads = loss.backward()?;
    let missing: Vec<&str> = vars
        .iter()
        .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    if !missing.is_empty() {
        return Ok(Outcome::Fail(format!(
            "no gradient reaches parameter(s) {}",
            missing
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let before: Vec<Vec<f32>> = vars
        .iter()
        .map(|(_, v)| values(v.as_tensor()))
        .collect::<Result<_>>()?;
    let mut sgd = SGD::new(vars.iter().map(|(_, v)| v.clone()).collect(), 0.1)?;
    sgd.step(&grads)?;
    let mut changed = 0;
    for ((name, var), old) in vars.iter().zip(&before) {
        let grad_nonzero = match grads.get(var.as_tensor()) {
            Some(g) => values(g)?.iter().any(|x| *x != 0.0),
            None => false,
        };
        let moved = values(var.as_tensor())? != *old;
        if grad_nonzero && !moved {
            return Ok(Outcome::Fail(format!(
                "parameter `{name}` has a non-zero gradient but did not change after one optimizer step"
            )));
        }
        changed += usize::from(moved);
    }
    Ok(if changed > 0 {
        Outcome::Pass
    } else {
        Outcome::Fail(
            "no parameter changed after one optimizer step (every gradient is zero)".into(),
        )
    })
}

fn round_trip(r: &Registry, kind: ComponentKind, name: &str, kwargs: &Value) -> Result<Outcome> {
    let a = harness::env(r, 0.1)?;
    let ma = Built::build(&a, kind, name, kwargs, 1)?;
    if a.varmap.all_vars().is_empty() {
        return Ok(Outcome::Skipped("the component has no parameters".into()));
    }
    let path = temp_path("round-trip");
    a.varmap.save(&path)?;
    let mut b = harness::env(r, 0.1)?;
    let mb = Built::build(&b, kind, name, kwargs, 2)?;
    let loaded = b.varmap.load(&path);
    let _ = std::fs::remove_file(&path);
    loaded?;
    let p = Probe::new(3, MAX_LEN, 1.0)?;
    let ya = values(&ma.forward(&p, false)?)?;
    let yb = values(&mb.forward(&p, false)?)?;
    Ok(if ya == yb {
        Outcome::Pass
    } else {
        Outcome::Fail("a copy built with another seed and loaded from the saved weights gives different outputs".into())
    })
}

fn finite(m: &Built) -> Result<Outcome> {
    // Batch MAX_LEN: the last session has a single real item.
    for (scale, b) in [(1e3, MAX_LEN), (1e-3, MAX_LEN), (1.0, 1)] {
        let p = Probe::new(b, MAX_LEN, scale)?;
        for train in [false, true] {
            let out = values(&m.forward(&p, train)?)?;
            if let Some(bad) = out.iter().find(|x| !x.is_finite()) {
                return Ok(Outcome::Fail(format!(
                    "output {bad} for inputs scaled by {scale} (batch {b}, train {train})"
                )));
            }
        }
    }
    Ok(Outcome::Pass)
}
