//! The training objective: ports the losses of RecTools' `TransformerLightningModule`
//! (`rectools/models/nn/transformers/lightning.py`; docs/rectools.md §1.2 and §2.8): `softmax`, `BCE`,
//! `gBCE` and `sampled_softmax`, with logits divided by the temperature `logits_t`.
//!
//! The module ([`TransformerLightningModule`]: loss choice, temperature, which logits each loss
//! scores) lives here; the losses themselves, as free functions over given logits, are in
//! [`losses`].

pub mod losses;

use recblocks_core::{
    batch::Batch,
    candle::{DType, Tensor, D},
    components::{Backbone, Objective},
    error::CoreError,
    kind::ComponentKind,
    kwargs::decode_kwargs,
    nn::{catalog_softmax_loss, gather_rows, host_targets},
    schema::DatasetSchema,
    serde_json::Value,
    spec::ModelSpec,
    Result,
};
use serde::{Deserialize, Serialize};

use losses::check_shapes;
pub use losses::{
    bce_loss, gbce_beta, gbce_loss, gbce_transform_logits, sampled_softmax_loss, softmax_loss,
    GBCE_EPSILON,
};

const NAME: &str = "TransformerLightningModule";

/// A RecTools loss name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// `softmax`: cross-entropy over the whole catalog (PAD/MASK columns included).
    Softmax,
    /// `BCE`: binary cross-entropy over the positive and the sampled negatives.
    Bce,
    /// `gBCE`: BCE with the positive logit recalibrated for the sampling rate (gSASRec).
    GBce,
    /// `sampled_softmax`: cross-entropy over the positive and the sampled negatives.
    SampledSoftmax,
}

impl Loss {
    /// Every loss name, as written in a spec.
    pub const NAMES: [&'static str; 4] = ["softmax", "BCE", "gBCE", "sampled_softmax"];

    /// Parses a spec's `loss` (case-sensitive, as RecTools).
    pub fn parse(name: &str) -> Result<Loss> {
        match name {
            "softmax" => Ok(Loss::Softmax),
            "BCE" => Ok(Loss::Bce),
            "gBCE" => Ok(Loss::GBce),
            "sampled_softmax" => Ok(Loss::SampledSoftmax),
            other => Err(CoreError::invalid(
                ComponentKind::Objective,
                NAME,
                format!(
                    "unknown loss `{other}`; supported losses: {}",
                    Loss::NAMES.join(", ")
                ),
            )),
        }
    }

    /// The name as written in a spec.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Softmax => "softmax",
            Loss::Bce => "BCE",
            Loss::GBce => "gBCE",
            Loss::SampledSoftmax => "sampled_softmax",
        }
    }

    /// Whether batches must carry negatives (RecTools `requires_negatives`).
    pub fn requires_negatives(self) -> bool {
        !matches!(self, Loss::Softmax)
    }
}

/// Kwargs of [`TransformerLightningModule`] (`lightning_module_kwargs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LightningKwargs {
    /// Temperature: logits are divided by it before the loss (default 1.0).
    pub logits_t: f64,
    /// Accepted only to reject it with a clear message: RecTools passes `adam_betas=(0.9, 0.98)`
    /// itself, so setting it here is an error there too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adam_betas: Option<Value>,
}

impl Default for LightningKwargs {
    fn default() -> Self {
        LightningKwargs {
            logits_t: 1.0,
            adam_betas: None,
        }
    }
}

/// RecTools' `TransformerLightningModule` as a recblocks [`Objective`].
#[derive(Debug, Clone)]
pub struct TransformerLightningModule {
    loss: Loss,
    logits_t: f64,
    /// gBCE's β (only for `gBCE`).
    gbce_beta: Option<f64>,
}

impl TransformerLightningModule {
    /// An objective for `loss` with temperature `logits_t`; `gbce_beta` is required for gBCE (see
    /// [`gbce_beta`]).
    pub fn new(loss: Loss, logits_t: f64, gbce_beta: Option<f64>) -> Result<Self> {
        if !(logits_t.is_finite() && logits_t > 0.0) {
            return Err(CoreError::BadKwargs {
                kind: ComponentKind::Objective,
                component: NAME.into(),
                message: format!("`logits_t` must be positive and finite, found {logits_t}"),
            });
        }
        if loss == Loss::GBce && gbce_beta.is_none() {
            return Err(CoreError::invalid(
                ComponentKind::Objective,
                NAME,
                "gBCE needs its beta (from n_negatives, gbce_t and the number of items)",
            ));
        }
        Ok(TransformerLightningModule {
            loss,
            logits_t,
            gbce_beta,
        })
    }

    /// Builds from the spec (`loss`, `gbce_t`, `n_negatives`), the schema (number of real items,
    /// for gBCE) and `lightning_module_kwargs`.
    pub fn from_spec(spec: &ModelSpec, schema: &DatasetSchema, kwargs: &Value) -> Result<Self> {
        let kw: LightningKwargs = decode_kwargs(ComponentKind::Objective, NAME, kwargs)?;
        if kw.adam_betas.is_some() {
            return Err(CoreError::BadKwargs {
                kind: ComponentKind::Objective,
                component: NAME.into(),
                message: "`adam_betas` cannot be set: RecTools hard-codes Adam betas (0.9, 0.98) \
                          (passing it in lightning_module_kwargs is a duplicate-argument error \
                          there); remove it"
                    .into(),
            });
        }
        let loss = Loss::parse(&spec.loss)?;
        let invalid = |m: String| CoreError::invalid(ComponentKind::Objective, NAME, m);
        let gbce = match loss {
            Loss::GBce => {
                let n_real = schema.n_items.saturating_sub(schema.n_extra_tokens());
                if n_real < 2 {
                    return Err(invalid(format!(
                        "gBCE needs at least 2 real items (its sampling rate is \
                         n_negatives / (n_items - 1)); the catalog has {n_real}"
                    )));
                }
                if spec.n_negatives == 0 {
                    return Err(invalid("gBCE needs n_negatives >= 1".into()));
                }
                if !(0.0..=1.0).contains(&spec.gbce_t) {
                    return Err(invalid(format!(
                        "gbce_t must be in [0, 1] (gSASRec's calibration: 0 is plain BCE, 1 \
                         fully corrects the sampling), found {}",
                        spec.gbce_t
                    )));
                }
                Some(gbce_beta(n_real, spec.n_negatives, spec.gbce_t))
            }
            Loss::SampledSoftmax if spec.n_negatives == 0 => {
                return Err(invalid("sampled_softmax needs n_negatives >= 1".into()));
            }
            _ => None,
        };
        Self::new(loss, kw.logits_t, gbce)
    }

    /// The configured loss.
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// The temperature.
    pub fn logits_t(&self) -> f64 {
        self.logits_t
    }

    /// The configured loss over given (already temperature-scaled) logits: `[B, L, N]` for
    /// softmax, `[B, L, 1 + K]` (positive first) otherwise; `y`, `w` `[B, L]`.
    pub fn loss_from_logits(&self, logits: &Tensor, y: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self.loss {
            Loss::Softmax => softmax_loss(logits, y, w),
            Loss::Bce => bce_loss(logits, y, w),
            Loss::GBce => gbce_loss(logits, y, w, self.gbce_beta.unwrap_or(1.0)),
            Loss::SampledSoftmax => sampled_softmax_loss(logits, y, w),
        }
    }

    /// The logits of the positions that have a target (`y != 0`), divided by `logits_t`
    /// (RecTools `get_batch_logits`), with their targets and weights: `[1, M, C]`, `[1, M]`,
    /// `[1, M]`; with static shapes every position, `[B, L, C]`, `[B, L]`, `[B, L]` (see
    /// [`TargetRows`]).
    fn target_logits(
        &self,
        backbone: &dyn Backbone,
        batch: &Batch,
        train: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let rows = TargetRows::encode(backbone, batch, train)?;
        let logits = if self.loss.requires_negatives() {
            rows.candidate_logits(backbone, batch, self.loss)?
        } else {
            backbone
                .similarity()
                .full_catalog_logits(&rows.h, &rows.item_embs)?
        };
        let logits = if self.logits_t == 1.0 {
            logits
        } else {
            (logits / self.logits_t)?
        };
        Ok((logits, rows.y, rows.w))
    }

    /// The `softmax` loss without the `[M, N]` logits, when the similarity gives the logits'
    /// factors ([`Similarity::catalog_factors`](recblocks_core::components::Similarity)): the
    /// loss in chunks of rows ([`catalog_softmax_loss`]). `None`: the similarity has no factors.
    fn chunked_softmax_loss(
        &self,
        backbone: &dyn Backbone,
        batch: &Batch,
    ) -> Result<Option<Tensor>> {
        let rows = TargetRows::encode(backbone, batch, true)?;
        let Some((s, e)) = backbone
            .similarity()
            .catalog_factors(&rows.h, &rows.item_embs)?
        else {
            return Ok(None);
        };
        // The sessions as they come ([1, M, d], or [B, L, d] with static shapes): a reshape
        // would be one more graph node, a zero-filled gradient buffer and an add on a GPU.
        let loss = catalog_softmax_loss(&s, &e, &rows.y, &rows.w, self.logits_t)?;
        Ok(Some(loss))
    }
}

/// The positions of a batch that have a target (`y != 0`), encoded: `h` `[1, M, d]`, their
/// targets `y` and weights `w` `[1, M]`, and the item embeddings they are scored against.
/// Positions without a target add nothing to any of the four losses (neither to the sum nor to
/// the denominator), so dropping them before the catalog product gives the same loss while never
/// scoring padding. With static shapes, the trainer's fixed-length buffer of them
/// (`host_targets::fixed`, `[1, capacity, …]`), or else every position: `h` `[B, L, d]`, `y` and
/// `w` `[B, L]`.
struct TargetRows {
    h: Tensor,
    y: Tensor,
    w: Tensor,
    item_embs: Tensor,
    /// The kept flat positions (`b · L + l`), `[M]` (with static shapes, the trainer's fixed
    /// buffer of them); `None`: every position, in order (a step with static shapes and no such
    /// buffer, [`recblocks_core::nn::capture`]).
    idx: Option<Tensor>,
}

impl TargetRows {
    fn encode(backbone: &dyn Backbone, batch: &Batch, train: bool) -> Result<Self> {
        if recblocks_core::nn::capture::static_shapes() {
            let item_embs = backbone.item_embeddings(train)?;
            let sessions = backbone.encode_sessions(&batch.x, &item_embs, train)?;
            // A step that may be captured keeps its shapes. Where the trainer gave buffers of a
            // fixed length with the positions that have a target (`host_targets::fixed`): those
            // positions, then slots with no target and weight 0, which add nothing to any loss.
            if let Some(fixed) = host_targets::fixed() {
                let h = gather_rows(&sessions, &fixed.positions.unsqueeze(0)?)?;
                return Ok(Self {
                    h,
                    y: fixed.y.unsqueeze(0)?,
                    w: fixed.w.to_dtype(batch.yw.dtype())?.unsqueeze(0)?,
                    item_embs,
                    idx: Some(fixed.positions),
                });
            }
            // Otherwise every position, in the batch's own shape (padding has weight 0 and adds
            // nothing to any loss, as when it is dropped).
            return Ok(Self {
                h: sessions,
                y: batch.y.to_dtype(DType::U32)?,
                w: batch.yw.clone(),
                item_embs,
                idx: None,
            });
        }
        let y = batch.y.to_dtype(DType::U32)?.flatten_all()?;
        // The positions with a target: from the trainer, which found them on the host
        // (`host_targets`), else read here. On a GPU a read waits for everything queued before
        // it, so it comes before the sessions are encoded (the host would otherwise queue the
        // loss and the backward pass while the GPU sat idle); the trainer's positions spare even
        // that wait, which would otherwise include the previous step still running.
        let keep: Vec<u32> = match host_targets::given() {
            Some(given) => {
                let n = y.elem_count();
                if let Some(&bad) = given.iter().find(|&&p| p as usize >= n) {
                    return Err(CoreError::invalid(
                        ComponentKind::Objective,
                        NAME,
                        format!(
                            "the trainer gave target position {bad} for a batch of {n} positions"
                        ),
                    ));
                }
                given.to_vec()
            }
            None => host_targets::positions_with_a_target(&y)?,
        };
        let m = keep.len();
        let idx = Tensor::from_vec(keep, m, y.device())?;
        let item_embs = backbone.item_embeddings(train)?;
        let sessions = backbone.encode_sessions(&batch.x, &item_embs, train)?;
        // As one session of M positions ([1, M, ...]): candidates then take the per-position
        // path of the similarity (a gather), not M one-row matmuls. The lookup reads the
        // [B, L, d] sessions as their B·L rows and gives [1, M, d] (no reshape nodes).
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.index_select(&idx, 0)?.unsqueeze(0)?) };
        let h = gather_rows(&sessions, &idx.unsqueeze(0)?)?;
        let y_sel = pick(&y)?;
        let w_sel = pick(&batch.yw.flatten_all()?)?;
        Ok(Self {
            h,
            y: y_sel,
            w: w_sel,
            item_embs,
            idx: Some(idx),
        })
    }

    /// Logits `[1, M, 1 + K]` against each kept position's positive then its negatives.
    fn candidate_logits(
        &self,
        backbone: &dyn Backbone,
        batch: &Batch,
        loss: Loss,
    ) -> Result<Tensor> {
        let negatives = batch.negatives.as_ref().ok_or_else(|| {
            CoreError::invalid(
                ComponentKind::Objective,
                NAME,
                format!(
                    "loss `{}` needs negatives, but the batch has none (configure a negative \
                     sampler)",
                    loss.name()
                ),
            )
        })?;
        let (b, l) = batch.y.dims2()?;
        let pos = batch.y.unsqueeze(D::Minus1)?.to_dtype(negatives.dtype())?;
        let k = negatives.dim(D::Minus1)?;
        let negatives = negatives.broadcast_as((b, l, k))?;
        let candidates = Tensor::cat(&[&pos, &negatives], D::Minus1)?;
        let candidates = match &self.idx {
            Some(idx) => candidates
                .reshape((b * l, k + 1))?
                .index_select(idx, 0)?
                .unsqueeze(0)?,
            None => candidates,
        };
        backbone
            .similarity()
            .candidate_logits(&self.h, &self.item_embs, &candidates)
    }
}

impl TransformerLightningModule {
    /// The training loss in RecTools' order of operations: logits for every `[B, L]` position
    /// against the whole catalog (or the candidates), then candle's composed `log_softmax` for
    /// the catalog softmax. The reference that [`Objective::train_loss`] (target positions only,
    /// fused kernel) is tested and benchmarked against; same value and gradients within f32
    /// rounding.
    pub fn reference_train_loss(&self, backbone: &dyn Backbone, batch: &Batch) -> Result<Tensor> {
        let candidates = match (&batch.negatives, self.loss.requires_negatives()) {
            (Some(negatives), true) => {
                let pos = batch.y.unsqueeze(D::Minus1)?.to_dtype(negatives.dtype())?;
                Some(Tensor::cat(&[&pos, negatives], D::Minus1)?)
            }
            _ => None,
        };
        let logits = backbone.logits(&batch.x, candidates.as_ref(), true)?;
        let logits = if self.logits_t == 1.0 {
            logits
        } else {
            (logits / self.logits_t)?
        };
        if self.loss != Loss::Softmax {
            return self.loss_from_logits(&logits, &batch.y, &batch.yw);
        }
        check_shapes("softmax", &logits, &batch.y, &batch.yw)?;
        let (b, l, c) = logits.dims3()?;
        let ce = recblocks_core::nn::cross_entropy::composed(
            &logits.reshape((b * l, c))?,
            &batch.y.flatten_all()?,
        )?
        .reshape((b, l))?;
        let lw = ce.mul(&batch.yw.to_dtype(ce.dtype())?)?;
        let n = lw.gt(0.0)?.to_dtype(ce.dtype())?.sum_all()?;
        Ok(lw.sum_all()?.div(&n)?)
    }
}

impl Objective for TransformerLightningModule {
    fn requires_negatives(&self) -> bool {
        self.loss.requires_negatives()
    }

    fn train_loss(&self, backbone: &dyn Backbone, batch: &Batch) -> Result<Tensor> {
        if self.loss == Loss::Softmax {
            if let Some(loss) = self.chunked_softmax_loss(backbone, batch)? {
                return Ok(loss);
            }
        }
        let (logits, y, w) = self.target_logits(backbone, batch, true)?;
        self.loss_from_logits(&logits, &y, &w)
    }

    fn val_loss(&self, backbone: &dyn Backbone, batch: &Batch) -> Result<Tensor> {
        let l = batch.x.dim(1)?;
        if l == 0 || batch.y.dim(1)? != 1 {
            return Err(CoreError::invalid(
                ComponentKind::Objective,
                NAME,
                format!(
                    "a validation batch has one target per session (y [B, 1]) and at least one \
                     position; found x {:?}, y {:?}",
                    batch.x.dims(),
                    batch.y.dims()
                ),
            ));
        }
        // Only the last position is scored: keep its encoding.
        let item_embs = backbone.item_embeddings(false)?;
        let sessions = backbone.encode_sessions(&batch.x, &item_embs, false)?;
        let last = sessions.narrow(1, l - 1, 1)?;
        let logits = match (&batch.negatives, self.loss.requires_negatives()) {
            (Some(negatives), true) => {
                let pos = batch.y.unsqueeze(D::Minus1)?.to_dtype(negatives.dtype())?;
                let candidates = Tensor::cat(&[&pos, negatives], D::Minus1)?;
                backbone
                    .similarity()
                    .candidate_logits(&last, &item_embs, &candidates)?
            }
            (None, true) => {
                return Err(CoreError::invalid(
                    ComponentKind::Objective,
                    NAME,
                    format!(
                        "loss `{}` needs negatives, but the validation batch has none",
                        self.loss.name()
                    ),
                ))
            }
            _ => backbone
                .similarity()
                .full_catalog_logits(&last, &item_embs)?,
        };
        let logits = if self.logits_t == 1.0 {
            logits
        } else {
            (logits / self.logits_t)?
        };
        self.loss_from_logits(&logits, &batch.y, &batch.yw)
    }
}

fn build(spec: &ModelSpec, schema: &DatasetSchema, kwargs: &Value) -> Result<Box<dyn Objective>> {
    Ok(Box::new(TransformerLightningModule::from_spec(
        spec, schema, kwargs,
    )?))
}

recblocks_core::register! {
    ObjectiveRegistration {
        name: NAME,
        aliases: ["rectools.models.nn.transformers.lightning.TransformerLightningModule"],
        summary: "RecTools' training objective: softmax, BCE, gBCE or sampled_softmax loss on temperature-scaled logits",
        kwargs: LightningKwargs,
        build: build,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use recblocks_core::kwargs::default_kwargs_json;
    use std::sync::Mutex;

    use recblocks_core::{
        candle::{Device, Var},
        components::{Distance, Similarity},
        serde_json::{json, Map},
    };

    use super::{losses::tests::*, *};

    const TOL: f64 = 1e-5;

    // --- Wiring through a backbone -------------------------------------------------------------

    /// Dot-product similarity; with `factors`, it gives the softmax objective the logits'
    /// factors (the chunked catalog loss), without them the logits.
    struct Dot {
        factors: bool,
    }

    impl Similarity for Dot {
        fn full_catalog_logits(&self, sessions: &Tensor, item_embs: &Tensor) -> Result<Tensor> {
            Ok(sessions.broadcast_matmul(&item_embs.t()?)?)
        }
        fn catalog_factors(
            &self,
            sessions: &Tensor,
            item_embs: &Tensor,
        ) -> Result<Option<(Tensor, Tensor)>> {
            Ok(self.factors.then(|| (sessions.clone(), item_embs.clone())))
        }
        fn candidate_logits(
            &self,
            sessions: &Tensor,
            item_embs: &Tensor,
            candidates: &Tensor,
        ) -> Result<Tensor> {
            let (b, lc, k) = candidates.dims3()?;
            let d = item_embs.dim(1)?;
            let c = item_embs
                .index_select(&candidates.flatten_all()?, 0)?
                .reshape((b, lc, k, d))?;
            Ok(c.broadcast_mul(&sessions.unsqueeze(2)?)?.sum(D::Minus1)?)
        }
        fn distance(&self) -> Distance {
            Distance::Dot
        }
    }

    /// Session encoding = the embedding of the input item; records the `train` flags it sees.
    struct Lookup {
        embs: Var,
        sim: Dot,
        trains: Mutex<Vec<bool>>,
    }

    impl Backbone for Lookup {
        fn item_embeddings(&self, train: bool) -> Result<Tensor> {
            self.trains.lock().expect("lock").push(train);
            Ok(self.embs.as_tensor().clone())
        }
        fn encode_sessions(&self, x: &Tensor, item_embs: &Tensor, _train: bool) -> Result<Tensor> {
            let (b, l) = x.dims2()?;
            let d = item_embs.dim(1)?;
            Ok(item_embs
                .index_select(&x.flatten_all()?, 0)?
                .reshape((b, l, d))?)
        }
        fn similarity(&self) -> &dyn Similarity {
            &self.sim
        }
    }

    const EMBS: [[f32; 2]; 5] = [[0.0, 0.0], [0.0, 0.0], [1.0, 0.5], [-0.5, 2.0], [0.3, -1.0]];

    fn lookup() -> Lookup {
        let flat: Vec<f32> = EMBS.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (5, 2), &Device::Cpu).expect("embs");
        Lookup {
            embs: Var::from_tensor(&t).expect("var"),
            sim: Dot { factors: true },
            trains: Mutex::new(vec![]),
        }
    }

    fn dot(a: u32, b: u32) -> f64 {
        let (a, b) = (EMBS[a as usize], EMBS[b as usize]);
        (a[0] * b[0] + a[1] * b[1]) as f64
    }

    fn spec(overrides: Value) -> ModelSpec {
        let mut m: Map<String, Value> = crate::presets::bert4rec_defaults();
        if let Value::Object(o) = overrides {
            m.extend(o);
        }
        serde_json::from_value(Value::Object(m)).expect("spec")
    }

    fn schema() -> DatasetSchema {
        DatasetSchema::new(3, &["PAD", "MASK"])
    }

    #[test]
    fn bce_objective_scores_positive_then_negatives_with_temperature() {
        let s = spec(json!({"loss": "BCE", "n_negatives": 2}));
        let obj = TransformerLightningModule::from_spec(&s, &schema(), &json!({"logits_t": 2.0}))
            .expect("build");
        assert!(obj.requires_negatives());
        let bb = lookup();
        // One session: x = [2, 3], y = [3, 4], negatives [[2, 4], [3, 2]].
        let batch = Batch {
            x: u2(&[2, 3], (1, 2)),
            y: u2(&[3, 4], (1, 2)),
            yw: f2(&[1.0, 0.5], (1, 2)),
            negatives: Some(
                Tensor::from_vec(vec![2u32, 4, 3, 2], (1, 2, 2), &Device::Cpu).expect("negs"),
            ),
        };
        let row = |x: u32, cands: [u32; 3]| -> Vec<f64> {
            cands.iter().map(|&c| dot(x, c) / 2.0).collect()
        };
        let r0 = row(2, [3, 2, 4]);
        let r1 = row(3, [4, 3, 2]);
        let expected = (mean_bce(&r0) + 0.5 * mean_bce(&r1)) / 2.0;
        let got = scalar(&obj.train_loss(&bb, &batch).expect("loss"));
        assert!((got - expected).abs() < TOL, "{got} vs {expected}");

        // Validation: last position only, [B, 1] targets, [B, 1, K] negatives, train = false.
        let val = Batch {
            x: u2(&[2, 3], (1, 2)),
            y: u2(&[2], (1, 1)),
            yw: f2(&[2.0], (1, 1)),
            negatives: Some(
                Tensor::from_vec(vec![4u32, 3], (1, 1, 2), &Device::Cpu).expect("negs"),
            ),
        };
        let expected = mean_bce(&row(3, [2, 4, 3])) * 2.0;
        let got = scalar(&obj.val_loss(&bb, &val).expect("val loss"));
        assert!((got - expected).abs() < TOL, "{got} vs {expected}");
        assert_eq!(*bb.trains.lock().expect("lock"), vec![true, false]);

        // Missing negatives: a clear error.
        let no_negs = Batch {
            negatives: None,
            ..val
        };
        let err = obj.val_loss(&bb, &no_negs).expect_err("no negatives");
        assert!(err.to_string().contains("needs negatives"), "{err}");
    }

    #[test]
    fn softmax_objective_uses_the_full_catalog() {
        let s = spec(json!({"loss": "softmax"}));
        let obj =
            TransformerLightningModule::from_spec(&s, &schema(), &Value::Null).expect("build");
        assert!(!obj.requires_negatives());
        assert_eq!(obj.logits_t(), 1.0);
        let bb = lookup();
        let batch = Batch {
            x: u2(&[0, 2, 3], (1, 3)),
            y: u2(&[0, 3, 4], (1, 3)),
            yw: f2(&[0.0, 1.0, 1.0], (1, 3)),
            negatives: None,
        };
        let ce = |x: u32, t: u32| {
            let row: Vec<f64> = (0..5).map(|c| dot(x, c)).collect();
            lse(&row) - dot(x, t)
        };
        let expected = (ce(2, 3) + ce(3, 4)) / 2.0;
        let loss = obj.train_loss(&bb, &batch).expect("loss");
        let got = scalar(&loss);
        assert!((got - expected).abs() < TOL, "{got} vs {expected}");
        let grads = loss.backward().expect("backward");
        assert!(grads.get(bb.embs.as_tensor()).is_some());
    }

    /// A lookup backbone over `n` pseudo-random 3-wide item embeddings; `factors`: whether its
    /// similarity gives the logits' factors.
    fn random_lookup(n: usize, factors: bool) -> Lookup {
        let flat: Vec<f32> = (0..n * 3)
            .map(|i| (((i * 7919 + 13) % 101) as f32 / 101.0 - 0.5) * 3.0)
            .collect();
        let t = Tensor::from_vec(flat, (n, 3), &Device::Cpu).expect("embs");
        Lookup {
            embs: Var::from_tensor(&t).expect("var"),
            sim: Dot { factors },
            trains: Mutex::new(vec![]),
        }
    }

    #[test]
    fn scoring_only_target_positions_changes_no_loss_or_gradient() {
        // 3 sessions of 4 positions over 11 items; padded and weightless positions included.
        let n = 11;
        let x = u2(&[0, 0, 2, 3, 4, 5, 6, 7, 0, 8, 9, 10], (3, 4));
        let y = u2(&[0, 0, 3, 4, 5, 6, 7, 8, 0, 9, 10, 2], (3, 4));
        let yw = f2(
            &[1.0, 1.0, 2.0, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 3.0, 1.0],
            (3, 4),
        );
        let negatives: Vec<u32> = (0..3 * 4 * 3).map(|i| 2 + (i * 5 % 9) as u32).collect();
        let negatives = Tensor::from_vec(negatives, (3, 4, 3), &Device::Cpu).expect("negs");
        // softmax twice: the chunked catalog loss (factors), then materialised logits.
        for (loss, factors) in [
            ("softmax", true),
            ("softmax", false),
            ("BCE", true),
            ("gBCE", true),
            ("sampled_softmax", true),
        ] {
            let s = spec(json!({"loss": loss, "n_negatives": 3}));
            let obj = TransformerLightningModule::from_spec(
                &s,
                &DatasetSchema::new(n - 2, &["PAD", "MASK"]),
                &json!({"logits_t": 0.7}),
            )
            .expect("build");
            let negs = obj.requires_negatives().then(|| negatives.clone());
            let batch = Batch {
                x: x.clone(),
                y: y.clone(),
                yw: yw.clone(),
                negatives: negs.clone(),
            };
            let bb = random_lookup(n, factors);
            let got = obj.train_loss(&bb, &batch).expect("loss");
            let g_got = got.backward().expect("backward");
            let g_got = g_got.get(bb.embs.as_tensor()).expect("grad").clone();

            // Reference: all [B, L, C] logits (RecTools' order of operations).
            let bb_ref = random_lookup(n, factors);
            let want = obj
                .reference_train_loss(&bb_ref, &batch)
                .expect("reference");
            let g_want = want.backward().expect("backward");
            let g_want = g_want.get(bb_ref.embs.as_tensor()).expect("grad").clone();

            // A step with static shapes (one that may be captured) scores every position.
            let bb_static = random_lookup(n, factors);
            let fixed = {
                let _static = recblocks_core::nn::capture::StaticShapes::enter();
                obj.train_loss(&bb_static, &batch).expect("static loss")
            };
            let g_fixed = fixed.backward().expect("backward");
            let g_fixed = g_fixed
                .get(bb_static.embs.as_tensor())
                .expect("grad")
                .clone();

            let (a, b) = (scalar(&got), scalar(&want));
            assert!(
                (a - b).abs() < 1e-6 * b.abs().max(1.0),
                "{loss}: {a} vs {b}"
            );
            let c = scalar(&fixed);
            assert!(
                (c - b).abs() < 1e-6 * b.abs().max(1.0),
                "{loss}, static shapes: {c} vs {b}"
            );
            let max_diff = |g: &Tensor| {
                (g - &g_want)
                    .and_then(|d| d.abs())
                    .and_then(|d| d.max_all())
                    .and_then(|d| d.to_scalar::<f32>())
                    .expect("diff")
            };
            let diff = max_diff(&g_got);
            assert!(diff < 1e-6, "{loss}: gradients differ by {diff}");
            let diff = max_diff(&g_fixed);
            assert!(
                diff < 1e-6,
                "{loss}, static shapes: gradients differ by {diff}"
            );
        }
    }

    /// Ids of the target-position cases: a catalog of 9 items plus PAD and MASK.
    const TARGET_CASE_IDS: usize = 11;

    /// Three sessions of four positions, 9 of them with a target (padding has none), weighted
    /// by `yw`, and RecTools' softmax objective over [`TARGET_CASE_IDS`] ids.
    fn target_case(yw: &[f32]) -> (Batch, TransformerLightningModule) {
        let batch = Batch {
            x: u2(&[0, 0, 2, 3, 4, 5, 6, 7, 0, 8, 9, 10], (3, 4)),
            y: u2(&[0, 0, 3, 4, 5, 6, 7, 8, 0, 9, 10, 2], (3, 4)),
            yw: f2(yw, (3, 4)),
            negatives: None,
        };
        let obj = TransformerLightningModule::from_spec(
            &spec(json!({"loss": "softmax"})),
            &DatasetSchema::new(TARGET_CASE_IDS - 2, &["PAD", "MASK"]),
            &json!({}),
        )
        .expect("build");
        (batch, obj)
    }

    /// One training loss of `obj` on `batch` from the same seeded backbone, and its item table's
    /// gradient.
    fn loss_and_table_grad(
        obj: &TransformerLightningModule,
        batch: &Batch,
    ) -> std::result::Result<(f32, Vec<f32>), CoreError> {
        let bb = random_lookup(TARGET_CASE_IDS, true);
        let loss = obj.train_loss(&bb, batch)?;
        let grads = loss.backward()?;
        let g = grads
            .get(bb.embs.as_tensor())
            .ok_or_else(|| CoreError::Other("no gradient".into()))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((loss.to_scalar::<f32>()?, g))
    }

    #[test]
    fn positions_given_by_the_trainer_replace_the_read_of_the_targets() {
        // The positions the trainer found on the host give the loss and gradients of the
        // objective's own read, to the bit; they are what the objective scores (other positions
        // give another loss), and one past the batch is refused.
        use recblocks_core::nn::host_targets::{positions_with_a_target, HostTargets};
        use std::rc::Rc;
        let (batch, obj) = target_case(&[1.0; 12]);
        let run = |given: Option<Vec<u32>>| {
            let _given = given.map(|p| HostTargets::enter(Rc::from(p)));
            loss_and_table_grad(&obj, &batch)
        };
        let positions = positions_with_a_target(&batch.y).expect("positions");
        assert_eq!(positions, vec![2, 3, 4, 5, 6, 7, 9, 10, 11]);
        let read = run(None).expect("read");
        let given = run(Some(positions.clone())).expect("given");
        assert_eq!(read.0.to_bits(), given.0.to_bits());
        assert_eq!(read.1, given.1);
        let fewer = run(Some(positions[1..].to_vec())).expect("fewer");
        assert_ne!(read.0.to_bits(), fewer.0.to_bits());
        let err = run(Some(vec![2, 12])).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|m| m.contains("target position 12 for a batch of 12 positions")),
            "{err:?}"
        );
    }

    #[test]
    fn fixed_target_buffers_give_the_loss_of_the_positions_with_a_target() {
        // Under static shapes (a step that may be captured), the trainer's fixed-length buffers
        // of the positions with a target give the loss and gradients of the uncaptured step,
        // which scores those positions alone: the unused slots add nothing. The buffers are what
        // is scored: other values give another loss.
        use recblocks_core::nn::{
            capture::StaticShapes,
            host_targets::{positions_with_a_target, FixedTargets},
        };
        let (batch, obj) =
            target_case(&[1.0, 1.0, 0.5, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.25, 1.0]);
        let positions = positions_with_a_target(&batch.y).expect("positions");
        let run = |capacity: usize, kept: &[u32]| {
            let _static = StaticShapes::enter();
            let v = FixedTargets::values(&batch.y, &batch.yw, kept, capacity)?
                .ok_or_else(|| CoreError::Other("over capacity".into()))?;
            let dev = &Device::Cpu;
            let buffers = FixedTargets {
                positions: Tensor::from_vec(v.positions, capacity, dev)?,
                y: Tensor::from_vec(v.y, capacity, dev)?,
                w: Tensor::from_vec(v.w, capacity, dev)?,
            };
            let _given = buffers.enter();
            loss_and_table_grad(&obj, &batch)
        };
        let uncaptured = loss_and_table_grad(&obj, &batch).expect("uncaptured");
        for capacity in [positions.len(), positions.len() + 3, 12] {
            let fixed = run(capacity, &positions).expect("fixed");
            assert_eq!(
                uncaptured.0.to_bits(),
                fixed.0.to_bits(),
                "capacity {capacity}"
            );
            assert_eq!(uncaptured.1, fixed.1, "capacity {capacity}");
        }
        let fewer = run(12, &positions[1..]).expect("fewer");
        assert_ne!(uncaptured.0.to_bits(), fewer.0.to_bits());
    }

    #[test]
    fn build_checks_kwargs_and_loss() {
        assert_eq!(
            default_kwargs_json::<LightningKwargs>(),
            json!({"logits_t": 1.0})
        );
        let s = spec(json!({"loss": "softmax"}));
        let err = TransformerLightningModule::from_spec(
            &s,
            &schema(),
            &json!({"adam_betas": [0.9, 0.999]}),
        )
        .expect_err("adam_betas");
        assert!(err.to_string().contains("hard-codes"), "{err}");
        let err = TransformerLightningModule::from_spec(&s, &schema(), &json!({"lr": 0.1}))
            .expect_err("unknown");
        assert!(err.to_string().contains("lr"), "{err}");
        let err = TransformerLightningModule::from_spec(&s, &schema(), &json!({"logits_t": 0.0}))
            .expect_err("t = 0");
        assert!(err.to_string().contains("logits_t"), "{err}");

        let err = TransformerLightningModule::from_spec(
            &spec(json!({"loss": "focal"})),
            &schema(),
            &Value::Null,
        )
        .expect_err("unknown loss");
        let msg = err.to_string();
        for name in Loss::NAMES {
            assert!(msg.contains(name), "{msg}");
        }

        for (loss, neg) in [("BCE", true), ("gBCE", true), ("sampled_softmax", true)] {
            let o = TransformerLightningModule::from_spec(
                &spec(json!({"loss": loss})),
                &schema(),
                &Value::Null,
            )
            .expect("build");
            assert_eq!(o.requires_negatives(), neg);
            assert_eq!(o.loss().name(), loss);
        }
        // gBCE: beta from the real items (the schema has 3 real items besides PAD and MASK).
        let o = TransformerLightningModule::from_spec(
            &spec(json!({"loss": "gBCE", "n_negatives": 2, "gbce_t": 0.5})),
            &schema(),
            &Value::Null,
        )
        .expect("build");
        assert_eq!(o.gbce_beta, Some(gbce_beta(3, 2, 0.5)));
        let err = TransformerLightningModule::from_spec(
            &spec(json!({"loss": "gBCE"})),
            &DatasetSchema::new(1, &["PAD"]),
            &Value::Null,
        )
        .expect_err("one item");
        assert!(err.to_string().contains("at least 2 real items"), "{err}");
        let err = TransformerLightningModule::from_spec(
            &spec(json!({"loss": "sampled_softmax", "n_negatives": 0})),
            &schema(),
            &Value::Null,
        )
        .expect_err("K = 0");
        assert!(err.to_string().contains("n_negatives >= 1"), "{err}");
    }

    #[test]
    fn registered_under_class_name_and_dotted_path() {
        let reg = recblocks_core::Registry::from_inventory().expect("registry");
        let r = reg
            .objective("rectools.models.nn.transformers.lightning.TransformerLightningModule")
            .expect("alias");
        assert_eq!(r.info.name, NAME);
    }
}
